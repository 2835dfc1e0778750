package escrow

import (
	"context"
	"errors"
	"fmt"

	"github.com/escrowd/escrowd/escrow/bundle"
	"github.com/escrowd/escrowd/format"
	"github.com/escrowd/escrowd/hsm"
	"github.com/escrowd/escrowd/store"
)

// MaxRotateRecipients bounds the recipients and unlock users of one
// rotation.
const MaxRotateRecipients = 64

// Rotation asks for a new GDK when a member leaves.
type Rotation struct {
	// EscrowSlot holds the current GDK (version OldGDKVersion).
	EscrowSlot    []byte
	OldGDKVersion uint32
	// Recipients get the new GDK (the remaining members and devices).
	Recipients []Recipient
	// UnlockUsers each get a new epoch of unlock codes for the new GDK.
	UnlockUsers []string
	// CodesPerUser; 0 selects the default.
	CodesPerUser int
}

// UserCodes is one user's new unlock-code epoch.
type UserCodes struct {
	User  string
	Epoch uint32
	Slots [][]byte
}

// Rotated is the outcome of a rotation: every slot of the new GDK.
type Rotated struct {
	GDKVersion uint32
	// EscrowSlot wraps the new GDK to the group's newest escrow key.
	EscrowSlot []byte
	// Slots wrap the new GDK to the recipients, in request order.
	Slots  [][]byte
	Unlock []UserCodes
	// Chain wraps the old GDK under the new one's chain key.
	Chain []byte
	// Commit is the new GDK's commitment (format.Commitment), which every
	// slot of the new GDK carries: the sync backend hands it to devices as
	// the commitment to pin for the new version.
	Commit []byte
	Used   Used
}

// Rotate makes a new GDK in the HSM, wraps it to the recipients, to the
// group's newest escrow key and to a new unlock-code epoch for each user,
// and wraps the old GDK (opened from EscrowSlot inside the HSM) under the
// new one as a chain slot. Neither GDK enters the daemon's memory.
//
// The rotation and the users' new epochs are recorded in one store
// transaction after the HSM work (store.RecordGDKRotation), with their
// events: if one user's epoch cannot start (a concurrent issue for that
// user), Rotate returns the error, nothing is recorded, every user keeps
// the codes they had, and the new GDK is never handed out.
func (s *Service) Rotate(ctx context.Context, group string, r Rotation) (Rotated, error) {
	if r.OldGDKVersion == 0 {
		return Rotated{}, fmt.Errorf("%w: old_gdk_version must be at least 1", ErrInvalid)
	}
	if r.OldGDKVersion == ^uint32(0) {
		return Rotated{}, fmt.Errorf("%w: old_gdk_version is the last one", ErrInvalid)
	}
	if len(r.Recipients)+len(r.UnlockUsers) > MaxRotateRecipients {
		return Rotated{}, fmt.Errorf("%w: %d recipients and unlock users, more than %d", ErrInvalid, len(r.Recipients)+len(r.UnlockUsers), MaxRotateRecipients)
	}
	for i, rc := range r.Recipients {
		if err := checkRecipient(rc); err != nil {
			return Rotated{}, fmt.Errorf("recipients[%d]: %w", i, err)
		}
	}
	seen := map[string]bool{}
	for _, u := range r.UnlockUsers {
		if err := checkID("unlock_users", u); err != nil {
			return Rotated{}, err
		}
		if seen[u] {
			return Rotated{}, fmt.Errorf("%w: unlock_users names %s twice", ErrInvalid, u)
		}
		seen[u] = true
	}
	n := r.CodesPerUser
	if n == 0 {
		n = s.cfg.CodesPerEpoch
	}
	if n < 1 || n > maxCodes {
		return Rotated{}, fmt.Errorf("%w: count %d outside 1 to %d", ErrInvalid, n, maxCodes)
	}
	g, src, key, err := s.escrowSlot(ctx, group, r.EscrowSlot)
	if err != nil {
		return Rotated{}, err
	}
	if src.Context.GDKVersion != r.OldGDKVersion {
		return Rotated{}, fmt.Errorf("%w: old_gdk_version is %d, but the escrow slot holds GDK version %d", ErrInvalid, r.OldGDKVersion, src.Context.GDKVersion)
	}
	next := r.OldGDKVersion + 1
	newest, _ := g.LatestEscrow()
	used := Used{EscrowVersion: key.Version, TargetEscrowVersion: newest.Version}
	targets := []hsm.Target{escrowRecipient(newest).target(group, next)}
	for _, rc := range r.Recipients {
		targets = append(targets, rc.target(group, next))
	}
	var pending []*pendingCodes
	defer func() {
		for _, p := range pending {
			p.clear()
		}
	}()
	if len(r.UnlockUsers) > 0 {
		uk, ok := g.LatestUnlock()
		if !ok {
			return Rotated{}, fmt.Errorf("%w: group %s has no unlock key", ErrNotFound, group)
		}
		used.UnlockVersion = uk.Version
		for _, u := range r.UnlockUsers {
			prev, err := s.currentEpoch(ctx, group, u)
			if err != nil {
				return Rotated{}, err
			}
			p, err := s.prepareCodes(ctx, group, u, next, prev+1, n, uk)
			if err != nil {
				return Rotated{}, err
			}
			pending = append(pending, p)
			targets = append(targets, p.targets...)
		}
	}
	chainCtx := &format.SlotContext{Kind: string(bundle.KindChain), Suite: bundle.SuiteAESKW, Group: group, GDKVersion: r.OldGDKVersion, KeyVersion: next}
	chain, out, err := s.hsm.Rotate(ctx, src, chainCtx, targets)
	if err != nil {
		return Rotated{Used: used}, hsmErr(err)
	}
	res := Rotated{GDKVersion: next, Used: used, Commit: out[0].Commit}
	if res.EscrowSlot, err = encodeSealed(targets[0].Context, out[0]); err != nil {
		return Rotated{}, err
	}
	for i := range r.Recipients {
		b, err := encodeSealed(targets[1+i].Context, out[1+i])
		if err != nil {
			return Rotated{}, err
		}
		res.Slots = append(res.Slots, b)
	}
	out = out[1+len(r.Recipients):]
	if res.Chain, err = encodeSealed(chainCtx, chain); err != nil {
		return Rotated{}, err
	}
	for _, p := range pending {
		slots, err := p.slots(out[:len(p.targets)])
		if err != nil {
			return Rotated{}, err
		}
		out = out[len(p.targets):]
		res.Unlock = append(res.Unlock, UserCodes{User: p.user, Epoch: p.epoch, Slots: slots})
	}
	rec := store.GDKRotation{Group: group, OldGDKVersion: r.OldGDKVersion, GDKVersion: next}
	for _, p := range pending {
		rec.Epochs = append(rec.Epochs, p.start())
	}
	if _, err := s.store.RecordGDKRotation(ctx, rec); err != nil {
		switch {
		case errors.Is(err, store.ErrConflict):
			return Rotated{}, fmt.Errorf("%w: codes were issued concurrently: %w", ErrConflict, err)
		case errors.Is(err, store.ErrNotFound):
			return Rotated{}, fmt.Errorf("%w: %s", ErrNotFound, group)
		}
		return Rotated{}, storeErr(err)
	}
	return res, nil
}

// ConsumeCode records that a device used code index of the user's epoch.
func (s *Service) ConsumeCode(ctx context.Context, group, user string, epoch, index uint32) (store.Codes, error) {
	if err := checkID("user_id", user); err != nil {
		return store.Codes{}, err
	}
	if _, err := s.group(ctx, group); err != nil {
		return store.Codes{}, err
	}
	if index > maxCodes {
		return store.Codes{}, fmt.Errorf("%w: index %d: an epoch has at most %d codes", ErrInvalid, index, maxCodes)
	}
	c, err := s.store.ConsumeCode(ctx, group, user, epoch, int(index))
	switch {
	case errors.Is(err, store.ErrNoEpoch):
		return c, fmt.Errorf("%w: user %s", ErrNoCodes, user)
	case errors.Is(err, store.ErrConflict):
		return c, fmt.Errorf("%w: user %s: epoch %d is not the current epoch; its codes are dead already", ErrStale, user, epoch)
	case errors.Is(err, store.ErrNotFound):
		return c, fmt.Errorf("%w: user %s epoch %d has no code %d", ErrInvalid, user, epoch, index)
	case errors.Is(err, store.ErrNotRevealed):
		return c, fmt.Errorf("%w: user %s epoch %d index %d", ErrNotRevealed, user, epoch, index)
	case err != nil:
		return c, storeErr(err)
	}
	return c, nil
}
