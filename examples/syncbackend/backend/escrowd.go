package backend

import (
	"context"
	"errors"
	"time"
)

// Escrowd is every escrowd operation the backend uses, and nothing more.
// escrowdclient implements it with escrowd's Go client package (mutual TLS
// as the sync-backend identity); the backend's tests use a fake. Errors wrap one
// of the Escrowd sentinels below.
type Escrowd interface {
	// ProvisionGroup makes the group's escrow and unlock keys in the HSM
	// and returns the escrow public key devices seal the GDK to.
	ProvisionGroup(ctx context.Context, group string) (EscrowKey, error)
	// Rewrap opens an escrow slot in the HSM and wraps its GDK to a
	// member or device key.
	Rewrap(ctx context.Context, group string, escrowSlot []byte, to Recipient) ([]byte, error)
	// IssueUnlockCodes starts a new epoch of unlock codes for user: one
	// unlock slot per code. Earlier epochs' codes are dead.
	IssueUnlockCodes(ctx context.Context, group, user string, escrowSlot []byte) (UnlockEpoch, error)
	// MarkUnlockCodeConsumed records that a device used a revealed code.
	MarkUnlockCodeConsumed(ctx context.Context, group, user string, epoch, index uint32) error
	// RotateGroupKey makes a new GDK in the HSM when a member leaves.
	RotateGroupKey(ctx context.Context, r RotateRequest) (Rotation, error)
	// RewrapToEscrow re-seals an escrow slot to the group's newest escrow
	// key, and says which version that is.
	RewrapToEscrow(ctx context.Context, group string, escrowSlot []byte) (slot []byte, keyVersion uint32, err error)
	// BatchRewrap runs up to MaxBatch re-wraps; each result has its own
	// error.
	BatchRewrap(ctx context.Context, items []BatchItem) ([]BatchResult, error)
	// ListEvents pages through escrowd's event feed after a cursor.
	ListEvents(ctx context.Context, after uint64, limit int) (EventPage, error)
}

// MaxBatch is the most items of one BatchRewrap call.
const MaxBatch = 256

// Errors of an Escrowd: what the backend does next depends only on these.
var (
	// ErrEscrowdUnavailable: try again later (network, escrowd or its
	// audit down, rate limited).
	ErrEscrowdUnavailable = errors.New("escrowd is unavailable")
	// ErrEscrowdRefused: the request is wrong or not allowed; trying again
	// will not help.
	ErrEscrowdRefused = errors.New("escrowd refused the request")
	// ErrEscrowdExists: the group is already provisioned.
	ErrEscrowdExists = errors.New("escrowd already has this group")
	// ErrEscrowdNotFound: escrowd does not know the group or user.
	ErrEscrowdNotFound = errors.New("escrowd does not know it")
)

// EscrowKey is a group's escrow public key.
type EscrowKey struct {
	Version   uint32
	Suite     string
	PublicKey []byte // PKIX DER
}

// RecipientKind says whether a slot is for a member (an account) or for
// one of its devices.
type RecipientKind int

const (
	Member RecipientKind = iota + 1
	Device
)

func (k RecipientKind) String() string {
	switch k {
	case Member:
		return "member"
	case Device:
		return "device"
	}
	return "unknown"
}

// Recipient is a public key to wrap a GDK to.
type Recipient struct {
	Kind       RecipientKind
	ID         string
	KeyVersion uint32
	Suite      string
	PublicKey  []byte // PKIX DER
}

// UnlockEpoch is one user's epoch of unlock slots, in index order.
type UnlockEpoch struct {
	User  string
	Epoch uint32
	Slots [][]byte
}

// RotateRequest asks for a new GDK: the recipients and the users who keep
// access.
type RotateRequest struct {
	Group         string
	EscrowSlot    []byte
	OldGDKVersion uint32
	Recipients    []Recipient
	UnlockUsers   []string
}

// Rotation is a new GDK's slots and commitment.
type Rotation struct {
	GDKVersion       uint32
	EscrowSlot       []byte
	EscrowKeyVersion uint32
	RecipientSlots   [][]byte // in request order
	ChainSlot        []byte
	Unlock           []UnlockEpoch
	Commitment       []byte
}

// BatchItem is one re-wrap of a batch: to a recipient, or, with To nil, to
// the group's newest escrow key.
type BatchItem struct {
	Ref        string
	Group      string
	EscrowSlot []byte
	To         *Recipient
}

// BatchResult is one item's slot or error.
type BatchResult struct {
	Ref  string
	Slot []byte
	Err  error
}

// Event is one entry of escrowd's event feed, with the fields the backend
// reads.
type Event struct {
	Sequence         uint64
	Time             time.Time
	Kind             string
	Group            string
	User             string
	Epoch            uint32
	Index            uint32
	Ticket           string
	EscrowKeyVersion uint32
}

// The event kinds the backend acts on.
const (
	EventCodeRevealed = "code_revealed"
	EventKeyRotated   = "key_rotated"
)

// EventPage is one page of the feed.
type EventPage struct {
	Events []Event
	// Next is the cursor to pass next; Missed counts events pruned
	// before they could be read; Last is the newest sequence.
	Next, Missed, Last uint64
}
