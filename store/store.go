// Package store keeps escrowd's state: groups, their key versions (wrapped
// under the HSM's master KEK, never in clear) and unlock-code state.
//
// Every back end passes the conformance suite in store/storetest. Each
// method is one transaction, so a crash leaves either the state before the
// call or the state after it.
package store

import (
	"context"
	"errors"
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
	ErrClosed  = errors.New("store closed")
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
}

// UnlockKey is one version of a group's unlock-code key.
type UnlockKey struct {
	Version uint32     `json:"version"`
	Key     WrappedKey `json:"key"`
	Created time.Time  `json:"created"`
}

// Group is a surrogate group's key material, versions in ascending order.
type Group struct {
	ID      string      `json:"id"`
	Created time.Time   `json:"created"`
	Escrow  []EscrowKey `json:"escrow"`
	Unlock  []UnlockKey `json:"unlock"`
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
	// Revealed has one entry per code of the epoch.
	Revealed []bool    `json:"revealed"`
	Updated  time.Time `json:"updated"`
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

// Store is implemented by every back end.
type Store interface {
	// CreateGroup stores a new group; ErrExists if the id is taken.
	CreateGroup(ctx context.Context, g Group) error
	// Group reads a group; ErrNotFound if absent.
	Group(ctx context.Context, id string) (Group, error)
	// Codes reads a user's code state; ErrNoEpoch if none was issued.
	Codes(ctx context.Context, group, user string) (Codes, error)
	// StartEpoch replaces the user's code state with a new epoch of n
	// unrevealed codes, if the current epoch is still prevEpoch (0 for
	// none): ErrConflict otherwise. It returns the new state.
	StartEpoch(ctx context.Context, group, user string, prevEpoch, unlockVersion uint32, n int) (Codes, error)
	// ClaimCode marks the lowest unrevealed code of the current epoch
	// revealed and returns its index with the new state. Two concurrent
	// claims never get the same index. ErrExhausted when none is left,
	// ErrNoEpoch when no codes were issued.
	ClaimCode(ctx context.Context, group, user string) (index int, c Codes, err error)
	Close() error
}
