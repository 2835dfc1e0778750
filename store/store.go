// Package store keeps escrowd's state: groups, their key versions (wrapped
// under the HSM's master KEK, never in clear) and unlock-code state.
//
// Every back end passes the conformance suite in store/storetest. Each
// method is one transaction, so a crash leaves either the state before the
// call or the state after it. The methods that change what a user should
// hear of write its Event in that same transaction (events.go).
package store

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Sentinel errors. Back ends wrap them with %w.
var (
	ErrNotFound = errors.New("not found")
	ErrExists   = errors.New("already exists")
	// ErrConflict: the state changed under a compare-and-set; read again.
	ErrConflict = errors.New("conflicting update")
	// ErrExhausted: every code of the current epoch has been revealed.
	ErrExhausted = errors.New("no unrevealed unlock code left in this epoch")
	// ErrNoEpoch: the user has no unlock codes yet.
	ErrNoEpoch = errors.New("no unlock codes issued for this user")
	// ErrRateLimited: a rate limit has no room.
	ErrRateLimited = errors.New("rate limit reached")
	// ErrInvalidLimit: a rate limit no back end may store (CheckRateLimits).
	ErrInvalidLimit = errors.New("invalid rate limit")
	// ErrSelfApproval: the requester tried to approve their own request.
	ErrSelfApproval = errors.New("a request cannot be approved by its requester")
	// ErrExpired: the approval window has closed.
	ErrExpired = errors.New("approval window closed")
	// ErrNotPending: the request was approved already.
	ErrNotPending = errors.New("request is not pending")
	// ErrLeaseHeld: another owner holds the job's lease, or the caller's
	// lease was taken over: stop working on the job.
	ErrLeaseHeld = errors.New("job lease held by another owner")
	// ErrNotRevealed: a code was reported used before it was revealed.
	ErrNotRevealed = errors.New("unlock code was never revealed")
	ErrClosed      = errors.New("store closed")
)

// WrappedKey is a group key wrapped under master KEK version KEKVersion.
type WrappedKey struct {
	KEKVersion uint32 `json:"kek_version"`
	Blob       []byte `json:"blob"`
}

// EscrowKey is one version of a group's escrow key pair.
type EscrowKey struct {
	Version   uint32     `json:"version"`
	Suite     string     `json:"suite"`
	PublicKey []byte     `json:"public_key"`
	Private   WrappedKey `json:"private"`
	Created   time.Time  `json:"created"`
	// Destroyed is when the version was crypto-shredded: Private is empty
	// from then on, and the version can never be opened again.
	Destroyed time.Time `json:"destroyed,omitzero"`
}

// UnlockKey is one version of a group's unlock-code key.
type UnlockKey struct {
	Version   uint32     `json:"version"`
	Key       WrappedKey `json:"key"`
	Created   time.Time  `json:"created"`
	Destroyed time.Time  `json:"destroyed,omitzero"`
}

// Group is a surrogate group's key material, versions in ascending order.
type Group struct {
	ID      string      `json:"id"`
	Created time.Time   `json:"created"`
	Escrow  []EscrowKey `json:"escrow"`
	Unlock  []UnlockKey `json:"unlock"`
	// MinEscrowVersion and MinUnlockVersion are the minimum decryption
	// versions (Vault Transit's min_decryption_version): versions below
	// them are retired and never opened. 0 means every version.
	MinEscrowVersion uint32 `json:"min_escrow_version,omitempty"`
	MinUnlockVersion uint32 `json:"min_unlock_version,omitempty"`
	// Rev is the store's revision of the record, starting at 1 and raised by
	// every update; back ends set it, callers compare it (CommitBatch).
	Rev uint64 `json:"rev"`
}

// LatestEscrow returns the newest escrow key version.
func (g *Group) LatestEscrow() (EscrowKey, bool) {
	if len(g.Escrow) == 0 {
		return EscrowKey{}, false
	}
	return g.Escrow[len(g.Escrow)-1], true
}

// EscrowVersion returns escrow key version v.
func (g *Group) EscrowVersion(v uint32) (EscrowKey, bool) {
	for _, k := range g.Escrow {
		if k.Version == v {
			return k, true
		}
	}
	return EscrowKey{}, false
}

// LatestUnlock returns the newest unlock key version.
func (g *Group) LatestUnlock() (UnlockKey, bool) {
	if len(g.Unlock) == 0 {
		return UnlockKey{}, false
	}
	return g.Unlock[len(g.Unlock)-1], true
}

// UnlockVersion returns unlock key version v.
func (g *Group) UnlockVersion(v uint32) (UnlockKey, bool) {
	for _, k := range g.Unlock {
		if k.Version == v {
			return k, true
		}
	}
	return UnlockKey{}, false
}

// Codes is the unlock-code state of one user of one group. It never holds a
// code: codes are derived again from the unlock key when revealed.
type Codes struct {
	Group string `json:"group"`
	User  string `json:"user"`
	// Epoch counts issues of codes for this user, from 1.
	Epoch uint32 `json:"epoch"`
	// UnlockVersion is the unlock key version the epoch's codes derive from.
	UnlockVersion uint32 `json:"unlock_version"`
	// Nonce is the epoch's random nonce (format.CodeNonceSize bytes), drawn
	// when the epoch was issued and bound into every code of it. An epoch
	// issued again under the same number after the store was restored from
	// a backup has another nonce, so codes revealed before the restore do
	// not open its slots. Empty for an epoch stored before nonces existed
	// (such an epoch's codes cannot be revealed: issue a new epoch).
	Nonce []byte `json:"nonce,omitempty"`
	// Revealed has one entry per code of the epoch.
	Revealed []bool `json:"revealed"`
	// Consumed marks codes a device has used (reported by the sync
	// backend); a consumed code is revealed. Nil until one is consumed.
	Consumed []bool    `json:"consumed,omitempty"`
	Updated  time.Time `json:"updated"`
}

// NonceSize is the size of an epoch's nonce (format.CodeNonceSize; the
// store does not import the format package).
const NonceSize = 16

// CheckNonce refuses an epoch nonce of the wrong size; every back end's
// StartEpoch calls it, so none stores an epoch without one.
func CheckNonce(nonce []byte) error {
	if len(nonce) != NonceSize {
		return fmt.Errorf("store: an epoch nonce is %d bytes, not %d", NonceSize, len(nonce))
	}
	return nil
}

// Remaining counts the codes not yet revealed.
func (c *Codes) Remaining() int {
	n := 0
	for _, r := range c.Revealed {
		if !r {
			n++
		}
	}
	return n
}

// Job states.
const (
	JobRunning  = "running"
	JobDone     = "done"
	JobFailed   = "failed"
	JobCanceled = "canceled"
)

// Job is a long-running operation over every group (master KEK rotation,
// bulk group-key rotation). Its progress is checkpointed in the store
// together with the groups it changed (CommitBatch), so a job resumes where
// it stopped after a crash, and one replica at a time runs it: the one
// holding its lease.
type Job struct {
	ID     string            `json:"id"`
	Kind   string            `json:"kind"`
	Params map[string]string `json:"params,omitempty"`
	State  string            `json:"state"`
	// Pass counts scans over the groups, from 1; a job ends after a pass
	// that changed nothing.
	Pass int `json:"pass"`
	// Cursor is the id of the last group the current pass finished; groups
	// are scanned in id order.
	Cursor string `json:"cursor"`
	// Done counts the groups the current pass finished, Changed those it
	// changed; Total is the number of groups when the pass began.
	Done    int64 `json:"done"`
	Changed int64 `json:"changed"`
	Total   int64 `json:"total"`
	// Owner holds the lease until LeaseUntil; another replica may take the
	// job over once the lease has expired.
	Owner      string    `json:"owner,omitempty"`
	LeaseUntil time.Time `json:"lease_until,omitzero"`
	Error      string    `json:"error,omitempty"`
	Created    time.Time `json:"created"`
	Updated    time.Time `json:"updated"`
	// RunStarted and RunDone are when the current lease holder started and
	// how far the pass was then, for an estimate of the time left.
	RunStarted time.Time `json:"run_started,omitzero"`
	RunDone    int64     `json:"run_done"`
}

// Batch is one checkpoint of a job: group records to replace and the job's
// new progress, committed in one transaction.
type Batch struct {
	JobID string
	// Owner must hold the job's lease (the job's Owner field): a replica
	// that lost its lease cannot commit (ErrLeaseHeld), which fences it off.
	Owner string
	// Groups replace the stored records with the same id, each only if the
	// stored Rev still equals the replacement's Rev (ErrConflict otherwise,
	// and nothing of the batch is written).
	Groups  []Group
	Cursor  string
	Done    int64
	Changed int64
}

// IsConsumed reports whether code i was consumed.
func (c *Codes) IsConsumed(i int) bool {
	return i >= 0 && i < len(c.Consumed) && c.Consumed[i]
}

// Consume marks code index of epoch consumed. It reports false, with no
// error, when the code was consumed already: consuming is idempotent, so a
// sync backend may repeat the call after a lost answer. Every back end
// calls it inside its own transaction, so the rules are the same on all.
func (c *Codes) Consume(epoch uint32, index int) (bool, error) {
	switch {
	case c.Epoch != epoch:
		return false, fmt.Errorf("epoch is %d, not %d: %w", c.Epoch, epoch, ErrConflict)
	case index < 0 || index >= len(c.Revealed):
		return false, fmt.Errorf("epoch %d has %d codes, no index %d: %w", epoch, len(c.Revealed), index, ErrNotFound)
	case !c.Revealed[index]:
		return false, fmt.Errorf("epoch %d index %d: %w", epoch, index, ErrNotRevealed)
	case c.IsConsumed(index):
		return false, nil
	}
	if c.Consumed == nil {
		c.Consumed = make([]bool, len(c.Revealed))
	}
	c.Consumed[index] = true
	return true, nil
}

// Store is implemented by every back end.
type Store interface {
	// CreateGroup stores a new group; ErrExists if the id is taken.
	CreateGroup(ctx context.Context, g Group) error
	// Group reads a group; ErrNotFound if absent.
	Group(ctx context.Context, id string) (Group, error)
	// Codes reads a user's code state; ErrNoEpoch if none was issued.
	Codes(ctx context.Context, group, user string) (Codes, error)
	// StartEpoch replaces the user's code state with a new epoch of n
	// unrevealed codes and the epoch's nonce, if the current epoch is still
	// prevEpoch (0 for none): ErrConflict otherwise. A nonce of another size
	// than NonceSize is refused (CheckNonce). It returns the new state, and
	// writes an epoch_issued event.
	StartEpoch(ctx context.Context, group, user string, prevEpoch, unlockVersion uint32, n int, nonce []byte) (Codes, error)
	// ClaimCode marks the lowest unrevealed code of the current epoch
	// revealed and returns its index with the new state. Two concurrent
	// claims never get the same index. ErrExhausted when none is left,
	// ErrNoEpoch when no codes were issued. It writes a code_revealed
	// event.
	ClaimCode(ctx context.Context, group, user string) (index int, c Codes, err error)
	// RecordGDKRotation records a new group data key of r.Group: a
	// gdk_rotated event, then each of r.Epochs as StartEpoch would start it,
	// with its epoch_issued event, all in one transaction: ErrNotFound for
	// a missing group, ErrConflict if any user's epoch is no longer its
	// PrevEpoch, a bad nonce refused, and then nothing is written. It
	// returns the users' new code states in r.Epochs' order.
	RecordGDKRotation(ctx context.Context, r GDKRotation) ([]Codes, error)

	// TakeRate counts one request against every limit, atomically: if any
	// limit has no room, nothing is counted and it returns the index of
	// the first such limit with ErrRateLimited. Each limit is a GCRA
	// (RateLimit.Take): a burst of Max, then one per Window/Max. The time
	// is the store's, not the caller's: the process's clock for a store
	// that one process holds, the database's for a shared one, so that
	// replicas with skewed clocks agree. Limits that CheckRateLimits
	// refuses are refused whole (ErrInvalidLimit), and nothing is counted.
	TakeRate(ctx context.Context, limits []RateLimit) (int, error)

	// CreateApproval stores a pending dual-control request; ErrExists if
	// the id is taken.
	CreateApproval(ctx context.Context, a Approval) error
	// Approval reads one; ErrNotFound if absent.
	Approval(ctx context.Context, id string) (Approval, error)
	// Approve records approver's approval at now. ErrSelfApproval if the
	// approver is the requester, ErrExpired past Expires, ErrNotPending if
	// approved already, ErrNotFound if absent. Approving a reveal writes a
	// reveal_approved event.
	Approve(ctx context.Context, id, approver string, now time.Time) (Approval, error)
	// PendingApprovals lists unapproved, unexpired requests, oldest first.
	PendingApprovals(ctx context.Context, now time.Time) ([]Approval, error)
	// UpdateGroup reads group id, calls fn on it and stores the result, in
	// one transaction that excludes every other update of the group. An
	// error from fn aborts the update and is returned as is. ErrNotFound
	// if absent. The id and Rev are the store's: fn cannot change them. An
	// update that adds a key version writes a key_rotated event.
	UpdateGroup(ctx context.Context, id string, fn func(*Group) error) (Group, error)
	// ListGroups returns up to limit groups whose id sorts after after
	// (byte order), in id order.
	ListGroups(ctx context.Context, after string, limit int) ([]Group, error)
	// CountGroups counts the groups.
	CountGroups(ctx context.Context) (int64, error)

	// CreateJob stores a new job; ErrExists if the id is taken.
	CreateJob(ctx context.Context, j Job) error
	// Job reads a job; ErrNotFound if absent.
	Job(ctx context.Context, id string) (Job, error)
	// Jobs lists every job, oldest first.
	Jobs(ctx context.Context) ([]Job, error)
	// UpdateJob is UpdateGroup for a job (lease, state); fn cannot change
	// the id.
	UpdateJob(ctx context.Context, id string, fn func(*Job) error) (Job, error)
	// CommitBatch writes a job's checkpoint with the groups it changed, in
	// one transaction: ErrLeaseHeld if b.Owner does not hold the job,
	// ErrConflict if a group changed since it was read. Each group given a
	// new key version writes a key_rotated event.
	CommitBatch(ctx context.Context, b Batch) (Job, error)

	// ConsumeCode marks code index of epoch consumed; consuming it again
	// is not an error. ErrNoEpoch when no codes were issued, ErrConflict
	// when epoch is not the current one, ErrNotFound for an index outside
	// the epoch, ErrNotRevealed for a code never revealed.
	ConsumeCode(ctx context.Context, group, user string, epoch uint32, index int) (Codes, error)

	// Events returns up to limit (at most MaxEventPage) events with
	// Seq > after, in Seq order, and the highest Seq given so far. An event
	// is listed only once every event with a lower Seq can be listed too,
	// so a reader that keeps the last Seq it handled and asks for what
	// follows never skips an event, whatever order concurrent
	// transactions commit in.
	Events(ctx context.Context, after uint64, limit int) (EventPage, error)
	// PruneEvents deletes the events written before before, and the oldest
	// beyond the newest max (0: no count bound), always a prefix in Seq
	// order, and returns how many it deleted. Numbers are never reused.
	PruneEvents(ctx context.Context, before time.Time, max int) (int, error)
	Close() error
}

// RateLimit is one limit: a burst of at most Max requests for Key, then
// one per Window/Max (RateLimit.Take).
type RateLimit struct {
	Key    string
	Max    int
	Window time.Duration
}

// Bounds of a RateLimit (CheckRateLimits).
const (
	// MaxRateKey bounds a key, in bytes. The policy builds keys only from
	// validated, bounded parts (policy.MaxLimitKey is within it), and the
	// bound keeps a key inside every back end's limit on an index entry
	// (PostgreSQL's B-tree takes about 2,700 bytes; bbolt 32 KiB).
	MaxRateKey = 2304
	// MaxRateMax bounds Max.
	MaxRateMax = 1_000_000_000
	// MaxRateWindow bounds Window.
	MaxRateWindow = 366 * 24 * time.Hour
)

// CheckRateLimits refuses limits a back end must not store: an empty key
// or one longer than MaxRateKey, Max outside 1 to MaxRateMax, Window
// outside 1 ns to MaxRateWindow. Every back end's TakeRate calls it first.
func CheckRateLimits(limits []RateLimit) error {
	for i, l := range limits {
		switch {
		case l.Key == "" || len(l.Key) > MaxRateKey:
			return fmt.Errorf("%w: limit %d: key of %d bytes, want 1 to %d", ErrInvalidLimit, i, len(l.Key), MaxRateKey)
		case l.Max < 1 || l.Max > MaxRateMax:
			return fmt.Errorf("%w: limit %d: max %d outside 1 to %d", ErrInvalidLimit, i, l.Max, MaxRateMax)
		case l.Window <= 0 || l.Window > MaxRateWindow:
			return fmt.Errorf("%w: limit %d: window %s outside 1ns to %s", ErrInvalidLimit, i, l.Window, MaxRateWindow)
		}
	}
	return nil
}

// Interval is the limit's emission interval T: Window/Max, rounded up to
// the nanosecond, so that the long-run rate is never above Max per
// Window.
func (l RateLimit) Interval() time.Duration {
	return (l.Window + time.Duration(l.Max) - 1) / time.Duration(l.Max)
}

// Take applies the generic cell rate algorithm (GCRA) to one request at
// now, for a key whose theoretical arrival time is tat (both nanoseconds
// since the Unix epoch; tat 0 for a key never used). It returns whether
// the request conforms, and the key's tat after it: counted if it
// conforms; if not, only clamped (below).
//
// With T = Interval(), a request conforms if max(tat, now) − now ≤
// (Max − 1)·T, and then moves tat to max(tat, now) + T. So an idle key
// takes a burst of exactly Max requests at once, then one per T: in any
// span of length L at most Max + ⌊L/T⌋ conform, wherever the span
// starts; there are no window boundaries.
//
// A tat more than Max·T ahead of now cannot come from this rule at this
// clock: the clock went back, or the window was shortened. It is clamped
// to Max·T ahead (the burst used up). A back end stores a clamped tat even
// for a refused request (which counts nothing), so that neither locks a
// key out for longer than one window.
func (l RateLimit) Take(tat, now int64) (next int64, ok bool) {
	t := int64(l.Interval())
	burst := int64(l.Max) * t
	tat = min(max(tat, now), now+burst)
	if tat-now > burst-t {
		return tat, false
	}
	return tat + t, true
}

// TakeAll takes one request against every limit, in order, at now, for
// keys whose tats are in tats (a key absent: never used). If all conform
// it returns the new tat of every key and full −1: the back end stores
// them all. Otherwise it returns the index of the first limit without
// room, and in write only that key's clamped tat if Take clamped it (the
// back end stores it and nothing else: the request counts against no
// limit). Every back end's TakeRate calls it inside its transaction.
func TakeAll(limits []RateLimit, tats map[string]int64, now int64) (write map[string]int64, full int) {
	write = make(map[string]int64, len(limits))
	for i, l := range limits {
		cur, counted := write[l.Key]
		if !counted {
			cur = tats[l.Key]
		}
		next, ok := l.Take(cur, now)
		if !ok {
			clear(write)
			if next < tats[l.Key] {
				write[l.Key] = next
			}
			return write, i
		}
		write[l.Key] = next
	}
	return write, -1
}

// LegacyTAT converts the state of a key stored as a fixed window
// (escrowd before GCRA: count requests in the window that starts at
// start, in nanoseconds) into a tat at now, conservatively: the window's
// requests are taken as made at now. A window that is over gives no debt.
func (l RateLimit) LegacyTAT(start int64, count int, now int64) (tat int64) {
	if count <= 0 || start+int64(l.Window) <= now {
		return 0
	}
	return now + int64(min(count, l.Max))*int64(l.Interval())
}

// Approval is a request waiting for a second identity's approval.
type Approval struct {
	ID        string    `json:"id"`
	Operation string    `json:"operation"`
	Group     string    `json:"group"`
	User      string    `json:"user"`
	Ticket    string    `json:"ticket"`
	Requester string    `json:"requester"`
	Created   time.Time `json:"created"`
	Expires   time.Time `json:"expires"`
	Approver  string    `json:"approver,omitempty"`
	Approved  time.Time `json:"approved,omitzero"`
}

// Pending reports whether a is waiting and still in its window at now.
func (a *Approval) Pending(now time.Time) bool {
	return a.Approver == "" && now.Before(a.Expires)
}

// CheckApproval applies Approve's rules; back ends call it inside their
// transaction so every store refuses the same things.
func CheckApproval(a *Approval, approver string, now time.Time) error {
	switch {
	case a.Approver != "":
		return fmt.Errorf("%w: approved by %s already", ErrNotPending, a.Approver)
	case approver == a.Requester:
		return ErrSelfApproval
	case !now.Before(a.Expires):
		return fmt.Errorf("%w at %s", ErrExpired, a.Expires.UTC().Format(time.RFC3339))
	}
	return nil
}
