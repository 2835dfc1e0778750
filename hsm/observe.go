package hsm

import "time"

// Observer learns how long HSM operations take and how long callers wait
// for a pooled session, so that an operator can tell a slow token from a
// pool that is too small. escrowd's metrics package satisfies it; this
// package knows nothing of how the numbers are kept.
//
// Every operation calls it, so its methods must be cheap, must not block
// and must be safe for concurrent use. They receive no key, PIN or data.
type Observer interface {
	// ObserveHSMOp reports one operation (one of the Op* names): the whole
	// call, including the wait for a session and a recovery retry; err is
	// the call's result.
	ObserveHSMOp(op string, took time.Duration, err error)
	// ObserveSessionWait reports a caller that found every session checked
	// out and had to wait: how long, and whether it got one (false: the
	// wait timed out or the caller gave up).
	ObserveSessionWait(waited time.Duration, got bool)
}

// CallObserver is an Observer that also learns how many PKCS#11 calls
// each operation made: on a network HSM every call is a round trip, so
// the count, more than the token's speed, is what callers wait for.
// docs/HSM.md lists the minimum of each operation and the tests pin it.
// The count covers every call made on the operation's session, a retry
// after recovery included; not the pool's own session management.
type CallObserver interface {
	ObserveHSMCalls(op string, calls int, err error)
}

// Operation names passed to Observer.ObserveHSMOp. They are a fixed set,
// fit for a metric label.
const (
	OpHealthy           = "healthy"
	OpKEKVersions       = "kek_versions"
	OpUseKEK            = "use_kek"
	OpRewrapKEK         = "rewrap_kek"
	OpCheckKey          = "check_key"
	OpDestroyKEK        = "destroy_kek"
	OpObjects           = "objects"
	OpGenerateEscrowKey = "generate_escrow_key"
	OpGenerateUnlockKey = "generate_unlock_key"
	OpHMAC              = "hmac"
	OpRewrap            = "rewrap"
	OpRotate            = "rotate"
)

// Ops lists every operation name, for observers that set their series up
// front.
func Ops() []string {
	return []string{OpHealthy, OpKEKVersions, OpUseKEK, OpRewrapKEK, OpCheckKey, OpDestroyKEK, OpObjects,
		OpGenerateEscrowKey, OpGenerateUnlockKey, OpHMAC, OpRewrap, OpRotate}
}

type nopObserver struct{}

func (nopObserver) ObserveHSMOp(string, time.Duration, error) {}
func (nopObserver) ObserveSessionWait(time.Duration, bool)    {}
