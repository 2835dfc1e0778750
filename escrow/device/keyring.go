package device

import (
	"bytes"
	"crypto/subtle"
	"fmt"

	"github.com/escrowd/escrowd/escrow/bundle"
	"github.com/escrowd/escrowd/format"
)

// Keyring is the GDKs a device holds for one group, and the commitments it
// trusts. It applies the adoption rule of docs/FORMAT.md ("Which GDK a
// device trusts"): a GDK version is adopted only
//
//   - if its commitment was pinned from a trusted source (Pin: the device
//     made the GDK, or got the commitment over its authenticated enrolment
//     channel), or
//   - through a chain slot from a GDK the keyring already holds: GDK v is
//     adopted if the chain slot of version v−1, opened under GDK v, gives
//     exactly the GDK v−1 held here; and GDK v−1 is adopted if the chain
//     slot opened under a held GDK v gives it.
//
// So bundle storage, which can write any slot it likes, cannot make a
// device that holds a group's key take another key for it; it can only
// withhold slots.
type Keyring struct {
	group   string
	gdks    map[uint32][]byte
	commits map[uint32][]byte
}

// NewKeyring returns an empty keyring for group.
func NewKeyring(group string) *Keyring {
	return &Keyring{group: group, gdks: map[uint32][]byte{}, commits: map[uint32][]byte{}}
}

// Pin trusts commit for GDK version: from now on only that GDK is taken
// for that version. Pinning another commitment for a pinned version fails.
func (k *Keyring) Pin(version uint32, commit []byte) error {
	if c, ok := k.commits[version]; ok && subtle.ConstantTimeCompare(c, commit) != 1 {
		return fmt.Errorf("%w: GDK version %d of group %s has another commitment already", ErrUntrusted, version, k.group)
	}
	k.commits[version] = commit
	return nil
}

// GDK returns a copy of the held GDK of version, if any.
func (k *Keyring) GDK(version uint32) ([]byte, bool) {
	g, ok := k.gdks[version]
	return bytes.Clone(g), ok
}

// Add offers a GDK opened (and verified) from slot s. It is kept if its
// commitment is pinned; otherwise Add returns ErrUntrusted and the caller
// must prove it with AdoptNewer.
func (k *Keyring) Add(s *bundle.Slot, gdk []byte) error {
	if s.Group != k.group {
		return fmt.Errorf("%w: a slot of another group", ErrBinding)
	}
	c, ok := k.commits[s.GDKVersion]
	if !ok {
		return fmt.Errorf("%w: GDK version %d of group %s is neither pinned nor chained to a held GDK", ErrUntrusted, s.GDKVersion, k.group)
	}
	if subtle.ConstantTimeCompare(c, format.Commitment(k.group, s.GDKVersion, gdk)) != 1 {
		return fmt.Errorf("%w: GDK version %d of group %s is not the one this device trusts", ErrUntrusted, s.GDKVersion, k.group)
	}
	k.gdks[s.GDKVersion] = bytes.Clone(gdk)
	return nil
}

// AdoptNewer adopts gdk, opened from slot s of version v, through chain,
// the chain slot of version v−1: the chain must open under gdk and give
// the GDK v−1 this keyring holds.
func (k *Keyring) AdoptNewer(s *bundle.Slot, gdk []byte, chain []byte) error {
	// Check what Add will check before anything is pinned, so that a
	// refused call leaves the keyring as it was.
	if s.Group != k.group {
		return fmt.Errorf("%w: a slot of another group", ErrBinding)
	}
	commit := format.Commitment(k.group, s.GDKVersion, gdk)
	if subtle.ConstantTimeCompare(commit, s.Commit) != 1 {
		return ErrCommitment
	}
	prev, ok := k.gdks[s.GDKVersion-1]
	if !ok || s.GDKVersion < 2 {
		return fmt.Errorf("%w: no held GDK of version %d to chain GDK %d to", ErrUntrusted, s.GDKVersion-1, s.GDKVersion)
	}
	old, cs, err := OpenChain(chain, k.group, gdk)
	if err != nil {
		return err
	}
	defer clear(old)
	if cs.GDKVersion != s.GDKVersion-1 || subtle.ConstantTimeCompare(old, prev) != 1 {
		return fmt.Errorf("%w: the chain slot of GDK %d does not lead to the GDK %d this device holds", ErrUntrusted, s.GDKVersion, s.GDKVersion-1)
	}
	if err := k.Pin(s.GDKVersion, commit); err != nil {
		return err
	}
	return k.Add(s, gdk)
}

// AdoptOlder opens chain with the held GDK of version v+1 and keeps the
// GDK v it holds: a held key vouches for the older keys it chains to.
func (k *Keyring) AdoptOlder(chain []byte) ([]byte, error) {
	s, err := bundle.ParseSlot(chain)
	if err != nil {
		return nil, err
	}
	next, ok := k.gdks[s.GDKVersion+1]
	if !ok {
		return nil, fmt.Errorf("%w: no held GDK of version %d to open the chain with", ErrUntrusted, s.GDKVersion+1)
	}
	old, cs, err := OpenChain(chain, k.group, next)
	if err != nil {
		return nil, err
	}
	if err := k.Pin(cs.GDKVersion, cs.Commit); err != nil {
		return nil, err
	}
	k.gdks[cs.GDKVersion] = bytes.Clone(old)
	return old, nil
}
