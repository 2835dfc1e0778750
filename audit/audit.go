// Package audit records what escrowd did, for whom, and why, in HashiCorp
// Vault. A record is committed before the daemon releases the result it
// describes: when Vault cannot take it, the operation does not complete.
//
// A Record has no field for a code, a key, a PIN or a wrapped value, so no
// caller can put one there by mistake.
package audit

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"time"
)

// ErrUnavailable: the record was not committed. Callers must not release
// the result the record describes.
var ErrUnavailable = errors.New("audit trail unavailable")

// The phases of a request that changes state. Its intent record is
// committed before it acts: what is about to happen, by whom, for which
// group, user and ticket, with an empty outcome and code. Its outcome
// record, with the same id, follows once it has acted. An intent with no
// record of the same id after it means the request may or may not have
// taken effect (the process died, or Vault failed after the intent).
const (
	PhaseIntent  = "intent"
	PhaseOutcome = "outcome"
)

// Outcome of a request.
type Outcome string

const (
	OutcomeOK     Outcome = "ok"
	OutcomeDenied Outcome = "denied"
	OutcomeError  Outcome = "error"
)

// Record is one request. The schema is documented in docs/AUDIT.md.
type Record struct {
	// ID is the request id, also returned to the caller in the
	// "x-request-id" response header so both sides can find the record.
	ID        string    `json:"id"`
	Time      time.Time `json:"time"`
	Caller    string    `json:"caller"`
	Operation string    `json:"operation"`
	// Phase is PhaseIntent or PhaseOutcome for a request that changes
	// state (write-ahead: its intent is committed before it acts), empty
	// for any other request, which has one record.
	Phase  string `json:"phase,omitempty"`
	Group  string `json:"group,omitempty"`
	User   string `json:"user,omitempty"`
	Ticket string `json:"ticket,omitempty"`
	// KeyVersions names the key versions used, e.g. "escrow:2", "unlock:1".
	KeyVersions []string `json:"key_versions,omitempty"`
	// Detail holds non-secret facts of the operation, e.g. "epoch:3",
	// "index:1", "recipient:member/alice".
	Detail  []string `json:"detail,omitempty"`
	Outcome Outcome  `json:"outcome"`
	// Code is the gRPC status code name returned to the caller.
	Code   string `json:"code"`
	Reason string `json:"reason,omitempty"`
}

// NewID returns a request id that sorts by time: 16 hex digits of
// nanoseconds since the epoch, then 8 random bytes.
func NewID(now time.Time) string {
	var r [8]byte
	if _, err := rand.Read(r[:]); err != nil {
		panic(fmt.Sprintf("crypto/rand failed: %v", err))
	}
	return fmt.Sprintf("%016x-%s", now.UnixNano(), hex.EncodeToString(r[:]))
}

// Sink commits records.
type Sink interface {
	Commit(ctx context.Context, r *Record) error
}
