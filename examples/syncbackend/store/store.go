// Package store is the sync backend's storage: accounts and their
// devices, groups with their key bundle, encrypted records, the
// notifications of the event feed and the nonces of signed requests.
//
// Everything the store holds is either public (public keys, ids) or
// encrypted on a device under a key the backend never has (bundles,
// records). The store is one interface with two back ends: bbolt in this
// package (the default, one file) and PostgreSQL (store/postgres), for
// several replicas. Both pass store/storetest.
package store

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Sentinel errors of every back end.
var (
	ErrNotFound = errors.New("not found")
	ErrExists   = errors.New("already exists")
	// ErrConflict is a compare-and-set that lost: *ConflictError says
	// which version is current.
	ErrConflict = errors.New("version conflict")
	// ErrReplay is a nonce seen before within its window.
	ErrReplay = errors.New("nonce already used")
)

// ConflictError is a write that named a version other than the current
// one. It matches ErrConflict.
type ConflictError struct {
	Current uint64
}

func (e *ConflictError) Error() string {
	return fmt.Sprintf("version conflict: the current version is %d", e.Current)
}

func (e *ConflictError) Is(target error) bool { return target == ErrConflict }

// Account is a user. MemberKey is the PKIX DER of the account's P-256
// member public key: the member slots of its groups are wrapped to it.
type Account struct {
	ID               string
	MemberKey        []byte
	MemberKeyVersion uint32
	Created          time.Time
}

// Device is one enrolled device of an account. SignKey (ECDSA P-256,
// PKIX DER) verifies its requests; WrapKey (P-256 for ECDH, PKIX DER)
// receives its device slots.
type Device struct {
	ID             string
	Account        string
	SignKey        []byte
	WrapKey        []byte
	WrapKeyVersion uint32
	Created        time.Time
}

// Group is a surrogate group: its owner (the main account), its
// surrogates, its key bundle and what the backend knows of its keys.
// Version counts every change; UpdateGroup compares and sets it.
type Group struct {
	ID      string
	Version uint64
	Owner   string
	// Surrogates are the members besides the owner, in the order they
	// joined.
	Surrogates []string
	// Bundle is the key bundle (docs/FORMAT.md), as the last writer
	// stored it; nil until the owner's device uploads the first one.
	Bundle []byte
	// GDKVersion is the group data key version devices must write under.
	GDKVersion uint32
	// Commitments are the GDK commitments the backend hands to devices
	// it enrols, by GDK version (index 0 is version 1).
	Commitments [][]byte
	// EscrowKey is the newest escrow public key escrowd gave for the
	// group; EscrowKeyVersion may be newer, from the event feed, until
	// the cycle re-seals.
	EscrowKey        []byte
	EscrowSuite      string
	EscrowKeyVersion uint32
	// Reseal asks the cycle job to re-seal the escrow slot to the newest
	// escrow key whatever version the backend knows: set when events
	// were lost, so a key rotation may have gone unseen.
	Reseal bool
	// Epochs are the unlock-code epochs issued, by user.
	Epochs map[string]uint32
	// NeedEpoch are users who reported a consumed code and wait for a
	// new epoch of codes: the backend retries until escrowd issued it.
	NeedEpoch []string
	// Reports are the consumed-code reports received, newest last.
	Reports []Report
	Created time.Time
}

// Members returns the owner followed by the surrogates.
func (g *Group) Members() []string {
	return append([]string{g.Owner}, g.Surrogates...)
}

// IsMember reports whether account is the owner or a surrogate.
func (g *Group) IsMember(account string) bool {
	for _, m := range g.Members() {
		if m == account {
			return true
		}
	}
	return false
}

// Report is a device's report that it used an unlock code.
type Report struct {
	User   string
	Device string
	Epoch  uint32
	Index  uint32
	Time   time.Time
}

// Record is one encrypted record (docs/FORMAT.md, "Encrypted records") as
// a device stored it. Version counts its writes.
type Record struct {
	Group   string
	ID      string
	Version uint64
	Data    []byte
	Updated time.Time
}

// Notification is something a user should hear of, taken from escrowd's
// event feed. Sequence is the event's, so a page read twice adds nothing.
type Notification struct {
	Account  string
	Sequence uint64
	Kind     string
	Group    string
	Epoch    uint32
	Index    uint32
	Ticket   string
	Time     time.Time
}

// Store is what the backend needs of storage. Each method is one
// transaction.
type Store interface {
	// CreateAccount creates an account with its first device: ErrExists
	// if either id is taken.
	CreateAccount(ctx context.Context, a Account, d Device) error
	// Account: ErrNotFound if there is none.
	Account(ctx context.Context, id string) (Account, error)
	// AddDevice enrols another device of an existing account: ErrExists
	// if the id is taken, ErrNotFound if the account is unknown.
	AddDevice(ctx context.Context, d Device) error
	// Device: ErrNotFound if there is none.
	Device(ctx context.Context, id string) (Device, error)
	// Devices lists an account's devices, by id.
	Devices(ctx context.Context, account string) ([]Device, error)
	// UseNonce records a request nonce of a device until expires:
	// ErrReplay if it was recorded before and has not expired. Nonces
	// that expired before now are forgotten.
	UseNonce(ctx context.Context, device, nonce string, expires, now time.Time) error

	// CreateGroup stores a new group at version 1: ErrExists if the id
	// is taken.
	CreateGroup(ctx context.Context, g Group) error
	// Group: ErrNotFound if there is none.
	Group(ctx context.Context, id string) (Group, error)
	// UpdateGroup replaces the group if its stored version is still
	// g.Version, and stores it as g.Version+1, which it returns:
	// *ConflictError otherwise.
	UpdateGroup(ctx context.Context, g Group) (uint64, error)
	// Groups pages through every group id above after, in order.
	Groups(ctx context.Context, after string, limit int) ([]string, error)
	// GroupsOf lists the groups an account is a member of, by id.
	GroupsOf(ctx context.Context, account string) ([]string, error)

	// PutRecord stores r if the stored version is r.Version (0: no
	// record yet) and returns the new version: *ConflictError otherwise.
	PutRecord(ctx context.Context, r Record) (uint64, error)
	// Record: ErrNotFound if there is none.
	Record(ctx context.Context, group, id string) (Record, error)
	// Records pages through a group's records with ids above after.
	Records(ctx context.Context, group, after string, limit int) ([]Record, error)

	// AddNotifications stores the notifications of one page of the
	// event feed and moves the feed's cursor to cursor, in one
	// transaction. A notification already stored is kept as it is.
	AddNotifications(ctx context.Context, ns []Notification, cursor uint64) error
	// Cursor is the last event sequence handled (0 at first).
	Cursor(ctx context.Context) (uint64, error)
	// Notifications lists an account's notifications with sequences
	// above after, oldest first.
	Notifications(ctx context.Context, account string, after uint64, limit int) ([]Notification, error)

	Close() error
}
