package escrow

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/escrowd/escrowd/escrow/bundle"
	"github.com/escrowd/escrowd/hsm"
	"github.com/escrowd/escrowd/store"
)

// Key versions follow Vault Transit's model. Every escrow slot names the
// escrow key version it was sealed to, and every unlock-code epoch the
// unlock key version its codes derive from. Rotation adds a version; new
// slots and epochs use the newest. A group's minimum decryption version
// retires older versions: they are never opened again, and what names them
// is refused with ErrRetired (the sync backend re-wraps escrow slots with
// RewrapToEscrow while their version is still allowed). Destroying a
// retired version erases its wrapped key from the store: crypto-shredding.

// KeyKind names a group key: escrow or unlock.
type KeyKind string

const (
	KindEscrow KeyKind = "escrow"
	KindUnlock KeyKind = "unlock"
)

// KeyVersions is what the HSM must offer for rotations on top of HSM.
type KeyVersions interface {
	HSM
	RewrapKEK(ctx context.Context, kind hsm.KeyKind, w hsm.WrappedKey, to uint32) (hsm.WrappedKey, error)
}

// RetiredError is an ErrRetired that says which version, so that the
// daemon can send the numbers as a status detail.
type RetiredError struct {
	Group                       string
	Kind                        KeyKind
	Version, MinVersion, Latest uint32
	next                        string
}

func (e *RetiredError) Error() string {
	return fmt.Sprintf("%v: %s key version %d of group %s is below its minimum decryption version %d (latest %d); %s",
		ErrRetired, e.Kind, e.Version, e.Group, e.MinVersion, e.Latest, e.next)
}

func (e *RetiredError) Unwrap() error { return ErrRetired }

func usableEscrow(g *store.Group, k store.EscrowKey) error {
	latest, _ := g.LatestEscrow()
	switch {
	case !k.Destroyed.IsZero():
		return fmt.Errorf("%w: escrow key version %d of group %s was destroyed on %s and can never be opened again; the escrow slot must be sealed again to version %d",
			ErrDestroyed, k.Version, g.ID, k.Destroyed.UTC().Format(time.RFC3339), latest.Version)
	case k.Version < g.MinEscrowVersion:
		return &RetiredError{Group: g.ID, Kind: KindEscrow, Version: k.Version, MinVersion: g.MinEscrowVersion, Latest: latest.Version,
			next: "the slot can no longer be re-wrapped"}
	}
	return nil
}

func usableUnlock(g *store.Group, k store.UnlockKey) error {
	latest, _ := g.LatestUnlock()
	switch {
	case !k.Destroyed.IsZero():
		return fmt.Errorf("%w: unlock key version %d of group %s was destroyed on %s; issue a new epoch of codes (version %d)",
			ErrDestroyed, k.Version, g.ID, k.Destroyed.UTC().Format(time.RFC3339), latest.Version)
	case k.Version < g.MinUnlockVersion:
		return &RetiredError{Group: g.ID, Kind: KindUnlock, Version: k.Version, MinVersion: g.MinUnlockVersion, Latest: latest.Version,
			next: "issue a new epoch of codes"}
	}
	return nil
}

// newKeys generates the keys of a rotation (outside any store transaction:
// an RSA key takes about a second).
type newKeys struct {
	escrow *store.EscrowKey
	unlock *store.UnlockKey
}

func (s *Service) generate(ctx context.Context, suite string, escrowKey, unlockKey bool) (newKeys, error) {
	var nk newKeys
	now := s.now().UTC()
	if escrowKey {
		pub, priv, err := s.hsm.GenerateEscrowKey(ctx, hsm.Suite(suite))
		if err != nil {
			return nk, hsmErr(err)
		}
		nk.escrow = &store.EscrowKey{Suite: suite, PublicKey: pub, Private: storeKey(priv), Created: now}
	}
	if unlockKey {
		w, err := s.hsm.GenerateUnlockKey(ctx)
		if err != nil {
			return nk, hsmErr(err)
		}
		nk.unlock = &store.UnlockKey{Key: storeKey(w), Created: now}
	}
	return nk, nil
}

// apply appends the new keys to g as its next versions.
func (nk newKeys) apply(g *store.Group) {
	if nk.escrow != nil {
		k := *nk.escrow
		last, _ := g.LatestEscrow()
		k.Version = last.Version + 1
		g.Escrow = append(g.Escrow, k)
	}
	if nk.unlock != nil {
		k := *nk.unlock
		last, _ := g.LatestUnlock()
		k.Version = last.Version + 1
		g.Unlock = append(g.Unlock, k)
	}
}

// RotateGroup adds a new version of the group's escrow key, unlock key or
// both. The escrow key keeps the suite of the newest version. Concurrent
// rotations each add their own version.
func (s *Service) RotateGroup(ctx context.Context, group string, escrowKey, unlockKey bool) (store.Group, error) {
	if !escrowKey && !unlockKey {
		return store.Group{}, fmt.Errorf("%w: rotate neither the escrow nor the unlock key", ErrInvalid)
	}
	g, err := s.group(ctx, group)
	if err != nil {
		return g, err
	}
	latest, _ := g.LatestEscrow()
	suite := latest.Suite
	if suite == "" {
		suite = s.cfg.DefaultSuite
	}
	nk, err := s.generate(ctx, suite, escrowKey, unlockKey)
	if err != nil {
		return store.Group{}, err
	}
	g, err = s.store.UpdateGroup(ctx, group, func(g *store.Group) error {
		nk.apply(g)
		return nil
	})
	if err != nil {
		return g, s.updateErr(group, err)
	}
	if escrowKey {
		s.dropHotKeys()
	}
	return g, nil
}

// hotKeyDropper is an HSM that keeps unwrapped escrow keys between calls
// (hsm.HSM with Config.HotKeys set).
type hotKeyDropper interface{ DropHotKeys() }

// dropHotKeys makes the HSM destroy the escrow keys it keeps: after an
// escrow key rotation or a version destroyed, no unwrapped copy of a
// retired or shredded key outlives the act (docs/HSM.md, "Hot escrow
// keys").
func (s *Service) dropHotKeys() {
	if d, ok := s.hsm.(hotKeyDropper); ok {
		d.DropHotKeys()
	}
}

// RotatedGroup is the step of a bulk rotation: g with new versions of the
// chosen keys appended, unless g's newest versions were made at or after
// since (already rotated by this job: a resumed job never rotates twice).
func (s *Service) RotatedGroup(ctx context.Context, g store.Group, escrowKey, unlockKey bool, since time.Time) (store.Group, bool, error) {
	if e, ok := g.LatestEscrow(); ok && !e.Created.Before(since) {
		escrowKey = false
	}
	if u, ok := g.LatestUnlock(); ok && !u.Created.Before(since) {
		unlockKey = false
	}
	if !escrowKey && !unlockKey {
		return g, false, nil
	}
	latest, _ := g.LatestEscrow()
	nk, err := s.generate(ctx, latest.Suite, escrowKey, unlockKey)
	if err != nil {
		return g, false, err
	}
	out := cloneGroup(g)
	nk.apply(&out)
	if escrowKey {
		s.dropHotKeys()
	}
	return out, true, nil
}

// RewrapGroupKEK is the step of a master KEK rotation: g with every live
// wrapped key re-wrapped under KEK version to, inside the HSM. Keys already
// under to are kept; destroyed versions hold nothing to re-wrap.
func (s *Service) RewrapGroupKEK(ctx context.Context, h KeyVersions, g store.Group, to uint32) (store.Group, bool, error) {
	out := cloneGroup(g)
	changed := false
	for i, k := range out.Escrow {
		if !k.Destroyed.IsZero() || k.Private.KEKVersion == to {
			continue
		}
		w, err := h.RewrapKEK(ctx, EscrowKeyKind(k.Suite), hsmKey(k.Private), to)
		if err != nil {
			return g, false, fmt.Errorf("group %s escrow key version %d: %w", g.ID, k.Version, hsmErr(err))
		}
		out.Escrow[i].Private, changed = storeKey(w), true
	}
	for i, k := range out.Unlock {
		if !k.Destroyed.IsZero() || k.Key.KEKVersion == to {
			continue
		}
		w, err := h.RewrapKEK(ctx, hsm.KeyUnlock, hsmKey(k.Key), to)
		if err != nil {
			return g, false, fmt.Errorf("group %s unlock key version %d: %w", g.ID, k.Version, hsmErr(err))
		}
		out.Unlock[i].Key, changed = storeKey(w), true
	}
	return out, changed, nil
}

// EscrowKeyKind is the HSM key kind of an escrow key of suite: the HSM
// must know the key type to unwrap it.
func EscrowKeyKind(suite string) hsm.KeyKind {
	if suite == bundle.SuiteECDHP256 {
		return hsm.KeyEscrowEC
	}
	return hsm.KeyEscrow
}

func cloneGroup(g store.Group) store.Group {
	g.Escrow = append([]store.EscrowKey(nil), g.Escrow...)
	g.Unlock = append([]store.UnlockKey(nil), g.Unlock...)
	return g
}

// SetMinVersions sets the group's minimum decryption versions; 0 leaves one
// unchanged. A minimum may not pass the newest version (which must always
// open), nor go back below a destroyed version.
func (s *Service) SetMinVersions(ctx context.Context, group string, minEscrow, minUnlock uint32) (store.Group, error) {
	if minEscrow == 0 && minUnlock == 0 {
		return store.Group{}, fmt.Errorf("%w: set min_escrow_version, min_unlock_version or both", ErrInvalid)
	}
	if err := checkID("group_id", group); err != nil {
		return store.Group{}, err
	}
	g, err := s.store.UpdateGroup(ctx, group, func(g *store.Group) error {
		if minEscrow != 0 {
			latest, _ := g.LatestEscrow()
			if minEscrow > latest.Version {
				return fmt.Errorf("%w: minimum escrow version %d is above the newest version %d: rotate first", ErrPrecondition, minEscrow, latest.Version)
			}
			for _, k := range g.Escrow {
				if !k.Destroyed.IsZero() && k.Version >= minEscrow {
					return fmt.Errorf("%w: escrow key version %d is destroyed: the minimum cannot go back to %d", ErrPrecondition, k.Version, minEscrow)
				}
			}
			g.MinEscrowVersion = minEscrow
		}
		if minUnlock != 0 {
			latest, _ := g.LatestUnlock()
			if minUnlock > latest.Version {
				return fmt.Errorf("%w: minimum unlock version %d is above the newest version %d: rotate first", ErrPrecondition, minUnlock, latest.Version)
			}
			for _, k := range g.Unlock {
				if !k.Destroyed.IsZero() && k.Version >= minUnlock {
					return fmt.Errorf("%w: unlock key version %d is destroyed: the minimum cannot go back to %d", ErrPrecondition, k.Version, minUnlock)
				}
			}
			g.MinUnlockVersion = minUnlock
		}
		return nil
	})
	if err != nil {
		return g, s.updateErr(group, err)
	}
	return g, nil
}

// DestroyVersion crypto-shreds one version of a group key: its wrapped
// private key is erased from the store, so no path of escrowd can open it
// again (the public key and the version's metadata stay, for the record).
// Only a retired version (below the minimum decryption version) may be
// destroyed. Destroying a destroyed version is a no-op.
func (s *Service) DestroyVersion(ctx context.Context, group string, kind KeyKind, version uint32) (store.Group, error) {
	if err := checkID("group_id", group); err != nil {
		return store.Group{}, err
	}
	now := s.now().UTC()
	g, err := s.store.UpdateGroup(ctx, group, func(g *store.Group) error {
		switch kind {
		case KindEscrow:
			for i, k := range g.Escrow {
				if k.Version != version {
					continue
				}
				if !k.Destroyed.IsZero() {
					return nil
				}
				if version >= g.MinEscrowVersion {
					return fmt.Errorf("%w: escrow key version %d of group %s is not retired (minimum decryption version %d): raise the minimum first",
						ErrPrecondition, version, g.ID, g.MinEscrowVersion)
				}
				clear(g.Escrow[i].Private.Blob)
				g.Escrow[i].Private = store.WrappedKey{}
				g.Escrow[i].Destroyed = now
				return nil
			}
		case KindUnlock:
			for i, k := range g.Unlock {
				if k.Version != version {
					continue
				}
				if !k.Destroyed.IsZero() {
					return nil
				}
				if version >= g.MinUnlockVersion {
					return fmt.Errorf("%w: unlock key version %d of group %s is not retired (minimum decryption version %d): raise the minimum first",
						ErrPrecondition, version, g.ID, g.MinUnlockVersion)
				}
				clear(g.Unlock[i].Key.Blob)
				g.Unlock[i].Key = store.WrappedKey{}
				g.Unlock[i].Destroyed = now
				return nil
			}
		default:
			return fmt.Errorf("%w: key kind %q, want escrow or unlock", ErrInvalid, kind)
		}
		return fmt.Errorf("%w: group %s has no %s key version %d", ErrKeyVersion, g.ID, kind, version)
	})
	if err != nil {
		return g, s.updateErr(group, err)
	}
	if kind == KindEscrow {
		s.dropHotKeys()
	}
	return g, nil
}

// KEKUse counts the stored keys wrapped under each master KEK version.
func (s *Service) KEKUse(ctx context.Context) (map[uint32]int64, error) {
	use := map[uint32]int64{}
	after := ""
	for {
		page, err := s.store.ListGroups(ctx, after, 500)
		if err != nil {
			return nil, storeErr(err)
		}
		if len(page) == 0 {
			return use, nil
		}
		for _, g := range page {
			for _, k := range g.Escrow {
				if k.Destroyed.IsZero() {
					use[k.Private.KEKVersion]++
				}
			}
			for _, k := range g.Unlock {
				if k.Destroyed.IsZero() {
					use[k.Key.KEKVersion]++
				}
			}
		}
		after = page[len(page)-1].ID
	}
}

func (s *Service) updateErr(group string, err error) error {
	switch {
	case errors.Is(err, store.ErrNotFound):
		return fmt.Errorf("%w: %s", ErrNotFound, group)
	case errors.Is(err, ErrInvalid), errors.Is(err, ErrPrecondition), errors.Is(err, ErrKeyVersion),
		errors.Is(err, ErrUnavailable), errors.Is(err, ErrUnsupported):
		return err
	}
	return storeErr(err)
}
