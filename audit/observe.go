package audit

import "time"

// Observer learns what the Vault writer does, so that an operator sees the
// batch sizes group commit reaches, what a Vault write costs, and when
// Vault fails. escrowd's metrics package satisfies it; this package knows
// nothing of how the numbers are kept.
//
// Its methods run on the writer goroutine (between two Vault writes) and in
// Healthy, so they must be cheap and must not block. They receive counts,
// times and errors, never a record.
type Observer interface {
	// ObserveAuditBatch reports one Vault write of a batch of records:
	// how long it took (finding the head and chaining after other
	// replicas' batches included), and err, nil once Vault holds them.
	ObserveAuditBatch(records int, took time.Duration, err error)
	// ObserveVaultHealth reports the result of one health check of Vault.
	ObserveVaultHealth(err error)
}

type nopObserver struct{}

func (nopObserver) ObserveAuditBatch(int, time.Duration, error) {}
func (nopObserver) ObserveVaultHealth(error)                    {}

// PoisonObserver, if the Observer implements it, learns of every trail
// position the writer skipped because it held something it would not
// chain after: not a batch, or, in a keyed trail, a batch whose MAC does
// not verify. Someone other than escrowd wrote there.
type PoisonObserver interface {
	ObservePoisonedBatch()
}
