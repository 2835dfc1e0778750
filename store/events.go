package store

import (
	"context"
	"time"
)

// The event outbox. Every change a user should hear of — a code of theirs
// revealed, a reveal approved, a new epoch of codes, a new group data key,
// a new version of their group's keys — writes an Event in the same
// transaction as the change itself: an event exists if and only if its
// change was committed, and a crash loses neither. The sync backend reads
// the events in order (SyncService.ListEvents) and tells the users.
//
// Events never hold a code, a key, a nonce or a wrapped value: only who,
// what, when and which version.

// Event kinds.
const (
	// EventCodeRevealed: ClaimCode marked a code revealed. The code was
	// handed to the technician, or burnt if the request failed after the
	// claim (docs/AUDIT.md): either way the user should be told.
	EventCodeRevealed = "code_revealed"
	// EventRevealApproved: Approve approved a pending reveal (dual
	// control); its code_revealed follows when the waiting reveal claims.
	EventRevealApproved = "reveal_approved"
	// EventEpochIssued: StartEpoch or RecordGDKRotation started a new
	// epoch of unlock codes; the user's earlier codes are dead.
	EventEpochIssued = "epoch_issued"
	// EventGDKRotated: RecordGDKRotation recorded a new group data key.
	EventGDKRotated = "gdk_rotated"
	// EventKeyRotated: UpdateGroup or CommitBatch added a new version of the
	// group's escrow key, unlock key or both.
	EventKeyRotated = "key_rotated"
)

// OperationReveal is the operation name of an unlock-code reveal: only
// approvals of it are reported (EventRevealApproved).
const OperationReveal = "RevealUnlockCode"

// Event is one entry of the outbox. Fields a kind does not use are zero.
type Event struct {
	// Seq numbers the store's events 1, 2, 3, … in the order readers see
	// them, with no gaps but those pruning leaves at the start. It is the
	// cursor of Events.
	Seq  uint64    `json:"seq,omitempty"`
	Time time.Time `json:"time"`
	Kind string    `json:"kind"`

	Group string `json:"group"`
	User  string `json:"user,omitempty"`
	// Epoch and Index: the code revealed (code_revealed), the new epoch
	// (epoch_issued).
	Epoch uint32 `json:"epoch,omitempty"`
	Index uint32 `json:"index,omitempty"`
	// Codes: the number of codes of a new epoch.
	Codes int `json:"codes,omitempty"`
	// UnlockVersion: the unlock key version the codes derive from
	// (code_revealed, epoch_issued), or the new one (key_rotated, 0 when
	// only the escrow key was rotated).
	UnlockVersion uint32 `json:"unlock_version,omitempty"`
	// EscrowVersion: the new escrow key version (key_rotated, 0 when only
	// the unlock key was rotated).
	EscrowVersion uint32 `json:"escrow_version,omitempty"`
	// OldGDKVersion and GDKVersion: the group data key versions of a
	// rotation (gdk_rotated; GDKVersion also on the epochs it issued).
	OldGDKVersion uint32 `json:"old_gdk_version,omitempty"`
	GDKVersion    uint32 `json:"gdk_version,omitempty"`

	// Ticket: the support ticket of a reveal or an approved reveal.
	Ticket string `json:"ticket,omitempty"`
	// Requester and RequesterName: the technician whose reveal was
	// approved (reveal_approved), as identity and person.
	Requester     string `json:"requester,omitempty"`
	RequesterName string `json:"requester_name,omitempty"`
	// RevealID: the approved reveal's request id (reveal_approved), which
	// is also the RequestID of the code_revealed that follows it.
	RevealID string `json:"reveal_id,omitempty"`

	// Caller and CallerName: the policy identity and person whose request
	// made the change (the technician of a reveal, the approver of an
	// approval, the sync backend, a security engineer); empty for a job.
	Caller     string `json:"caller,omitempty"`
	CallerName string `json:"caller_name,omitempty"`
	// Approver and ApproverName: who approved a reveal under dual control
	// (code_revealed).
	Approver     string `json:"approver,omitempty"`
	ApproverName string `json:"approver_name,omitempty"`
	// RequestID: the request's id, which is its audit record's id.
	RequestID string `json:"request_id,omitempty"`
	// Job: the job that made the change (key_rotated by a group-rotation
	// job).
	Job string `json:"job,omitempty"`
}

// Origin is what the daemon knows of the request, or job, behind a store
// call; the store copies it into the events the call writes. It travels
// in the call's context (WithOrigin), as request-scoped data: a call
// without one still writes its events, with no caller.
type Origin struct {
	RequestID  string
	Caller     string
	CallerName string
	// Ticket of a reveal.
	Ticket string
	// Approver and ApproverName of a reveal under dual control.
	Approver     string
	ApproverName string
	// RequesterName is the person of the technician whose reveal an
	// approval approves.
	RequesterName string
	Job           string
}

type originKey struct{}

// WithOrigin returns ctx carrying o.
func WithOrigin(ctx context.Context, o Origin) context.Context {
	return context.WithValue(ctx, originKey{}, o)
}

// OriginOf returns the Origin ctx carries, or none.
func OriginOf(ctx context.Context) Origin {
	o, _ := ctx.Value(originKey{}).(Origin)
	return o
}

// NewEvent starts an event of kind for group at now, with the caller,
// request and job of ctx's Origin. Back ends call it inside the
// transaction that makes the change.
func NewEvent(ctx context.Context, kind, group string, now time.Time) Event {
	o := OriginOf(ctx)
	return Event{Time: now.UTC(), Kind: kind, Group: group,
		Caller: o.Caller, CallerName: o.CallerName, RequestID: o.RequestID, Job: o.Job}
}

// RevealEvent is the code_revealed event of a claim of code index of c.
func RevealEvent(ctx context.Context, c *Codes, index int, now time.Time) Event {
	o := OriginOf(ctx)
	e := NewEvent(ctx, EventCodeRevealed, c.Group, now)
	e.User, e.Epoch, e.Index, e.UnlockVersion = c.User, c.Epoch, uint32(index), c.UnlockVersion
	e.Ticket, e.Approver, e.ApproverName = o.Ticket, o.Approver, o.ApproverName
	return e
}

// EpochEvent is the epoch_issued event of the new epoch c; gdkVersion is
// the GDK version of a rotation that issued it, else 0.
func EpochEvent(ctx context.Context, c *Codes, gdkVersion uint32, now time.Time) Event {
	e := NewEvent(ctx, EventEpochIssued, c.Group, now)
	e.User, e.Epoch, e.Codes, e.UnlockVersion, e.GDKVersion = c.User, c.Epoch, len(c.Revealed), c.UnlockVersion, gdkVersion
	return e
}

// ApprovalEvent is the reveal_approved event of a, just approved; ok is
// false for an approval of another operation than a reveal.
func ApprovalEvent(ctx context.Context, a *Approval, now time.Time) (Event, bool) {
	if a.Operation != OperationReveal {
		return Event{}, false
	}
	e := NewEvent(ctx, EventRevealApproved, a.Group, now)
	e.User, e.Ticket, e.Requester, e.RequesterName, e.RevealID = a.User, a.Ticket, a.Requester, OriginOf(ctx).RequesterName, a.ID
	return e, true
}

// LatestVersions returns g's newest escrow and unlock key versions (0
// for none), as KeyEvent compares them.
func LatestVersions(g *Group) (escrow, unlock uint32) {
	e, _ := g.LatestEscrow()
	u, _ := g.LatestUnlock()
	return e.Version, u.Version
}

// KeyEvent is the key_rotated event of a group update to after, whose
// newest versions were escrow and unlock before it (LatestVersions); ok
// is false when the update added no key version.
func KeyEvent(ctx context.Context, after *Group, escrow, unlock uint32, now time.Time) (Event, bool) {
	e := NewEvent(ctx, EventKeyRotated, after.ID, now)
	ae, au := LatestVersions(after)
	if ae > escrow {
		e.EscrowVersion = ae
	}
	if au > unlock {
		e.UnlockVersion = au
	}
	return e, e.EscrowVersion != 0 || e.UnlockVersion != 0
}

// GDKRotation is what RecordGDKRotation records: a group's new data key
// and the new unlock-code epochs made with it.
type GDKRotation struct {
	Group         string
	OldGDKVersion uint32
	GDKVersion    uint32
	Epochs        []EpochStart
}

// EpochStart is one user's new epoch, as StartEpoch takes it.
type EpochStart struct {
	User          string
	PrevEpoch     uint32
	UnlockVersion uint32
	Codes         int
	Nonce         []byte
}

// GDKEvent is the gdk_rotated event of r.
func GDKEvent(ctx context.Context, r *GDKRotation, now time.Time) Event {
	e := NewEvent(ctx, EventGDKRotated, r.Group, now)
	e.OldGDKVersion, e.GDKVersion = r.OldGDKVersion, r.GDKVersion
	return e
}

// EventPage is a page of Events.
type EventPage struct {
	// Events have Seq > the cursor asked for, in Seq order.
	Events []Event
	// Last is the highest Seq the store has given an event readers can see
	// (0 for none yet); pruned events keep their numbers.
	Last uint64
}

// Event retention defaults (Retention).
const (
	DefaultEventRetention = 30 * 24 * time.Hour
	DefaultEventMax       = 1_000_000
)

// MaxEventPage bounds a page of Events.
const MaxEventPage = 1000
