package daemon

import "time"

// Observer learns the latency and status of every RPC, every denial and
// every dependency check, so that an operator can see load, errors and
// refusals without reading the audit trail. escrowd's metrics package
// satisfies it; this package knows nothing of how the numbers are kept.
//
// Every request calls it, so its methods must be cheap, must not block and
// must be safe for concurrent use. Every argument comes from a fixed set
// (method names, status code names, the Denial* reasons, dependency
// names): never an identity, a group or a message.
type Observer interface {
	// ObserveRPC reports one finished RPC: its full method name, the
	// status code name returned to the caller (e.g. "OK", "Unavailable")
	// and its duration, the audit commit and any dual-control wait
	// included.
	ObserveRPC(method, code string, took time.Duration)
	// ObserveDenial reports a request refused by the rules: the
	// operation (method name without service) and one of the Denial*
	// reasons.
	ObserveDenial(operation, reason string)
	// ObserveCheck reports one health check of a dependency (a key of
	// Config.Checks).
	ObserveCheck(dependency string, healthy bool)
}

// The reasons ObserveDenial reports.
const (
	DenialCertificate = "certificate" // no, expired or foreign client certificate
	DenialIdentity    = "identity"    // the certificate's identity is not in the policy
	DenialRole        = "role"        // no role of the identity grants the operation
	DenialTicket      = "ticket"      // the operation needs a ticket reference
	DenialRateLimit   = "rate_limit"  // a rate limit is full
	DenialApproval    = "approval"    // no second technician approved in time
	// DenialDualControl: a BatchRewrap item of a group under dual
	// control, which a batch cannot wait for: refused at once.
	DenialDualControl = "dual_control"
)

// DenialReasons lists every reason ObserveDenial reports.
func DenialReasons() []string {
	return []string{DenialCertificate, DenialIdentity, DenialRole, DenialTicket, DenialRateLimit, DenialApproval, DenialDualControl}
}

type nopObserver struct{}

func (nopObserver) ObserveRPC(string, string, time.Duration) {}
func (nopObserver) ObserveDenial(string, string)             {}
func (nopObserver) ObserveCheck(string, bool)                {}
