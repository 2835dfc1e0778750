package backend

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"

	"github.com/escrowd/escrowd/escrow/bundle"
	"github.com/escrowd/escrowd/examples/syncbackend/auth"
	"github.com/escrowd/escrowd/examples/syncbackend/store"
)

// The operations behind each API call. Each takes the authenticated
// device (or, for the calls that enrol one, the request it signed).

func (s *Server) createAccount(ctx context.Context, r createAccount) error {
	now := s.cfg.Now().UTC()
	a := store.Account{ID: r.Account, MemberKey: r.MemberKey, MemberKeyVersion: 1, Created: now}
	d := store.Device{ID: r.Device.ID, Account: r.Account, SignKey: r.Device.SignKey, WrapKey: r.Device.WrapKey, WrapKeyVersion: 1, Created: now}
	return s.st.CreateAccount(ctx, a, d)
}

// enrolDevice adds a device approved by another device of the account,
// then gives it a device slot in every group of the account.
func (s *Server) enrolDevice(ctx context.Context, r enrolDevice) error {
	approver, err := s.st.Device(ctx, r.Approver)
	if err != nil || approver.Account != r.Account {
		return fmt.Errorf("%w: the approver is not a device of account %s", ErrForbidden, r.Account)
	}
	if err := auth.Verify(approver.SignKey, auth.ApprovalMessage(r.Account, r.Device.ID, r.Device.SignKey, r.Device.WrapKey), r.Approval); err != nil {
		return fmt.Errorf("%w: the approval does not verify", ErrForbidden)
	}
	d := store.Device{ID: r.Device.ID, Account: r.Account, SignKey: r.Device.SignKey, WrapKey: r.Device.WrapKey, WrapKeyVersion: 1, Created: s.cfg.Now().UTC()}
	if err := s.st.AddDevice(ctx, d); err != nil {
		return err
	}
	// The device is enrolled; slots that escrowd could not make now are
	// the cycle job's.
	if err := s.reconcileAccount(ctx, r.Account); err != nil {
		s.log.Warn("device enrolled, some of its slots left to the cycle job", "device", d.ID, "err", err)
	}
	return nil
}

func (s *Server) reconcileAccount(ctx context.Context, account string) error {
	groups, err := s.st.GroupsOf(ctx, account)
	if err != nil {
		return err
	}
	var errs []error
	for _, g := range groups {
		errs = append(errs, s.reconcile(ctx, g))
	}
	return errors.Join(errs...)
}

// createGroup provisions the group at escrowd and stores it with the
// device's account as its owner. The owner's device then uploads the
// first bundle, sealed to the escrow key returned here.
func (s *Server) createGroup(ctx context.Context, dev store.Device, id string) (store.Group, error) {
	if _, err := s.st.Group(ctx, id); err == nil {
		return store.Group{}, fmt.Errorf("group %s: %w", id, store.ErrExists)
	}
	k, err := s.esc.ProvisionGroup(ctx, id)
	if err != nil {
		return store.Group{}, err
	}
	g := store.Group{ID: id, Owner: dev.Account, GDKVersion: 1, EscrowKey: k.PublicKey, EscrowSuite: k.Suite,
		EscrowKeyVersion: k.Version, Epochs: map[string]uint32{}, Created: s.cfg.Now().UTC()}
	if err := s.st.CreateGroup(ctx, g); err != nil {
		return g, err
	}
	return s.st.Group(ctx, id)
}

// putBundle stores a bundle a device wrote, if the group is still at the
// version it read. The first bundle is the owner's: every slot of GDK
// version 1, an escrow slot among them, and its commitment is pinned for
// every device enrolled later. After that a device may change only its
// own account's password and passkey slots.
func (s *Server) putBundle(ctx context.Context, dev store.Device, group string, r putBundle) (store.Group, error) {
	g, err := s.member(ctx, group, dev.Account)
	if err != nil {
		return g, err
	}
	if g.Version != uint64(r.Version) {
		return g, &store.ConflictError{Current: g.Version}
	}
	b, err := bundle.Parse(r.Bundle)
	if err != nil {
		return g, fmt.Errorf("%w: bundle: %s: %w", ErrBadRequest, bundle.Class(err), err)
	}
	if b.Group != group {
		return g, fmt.Errorf("%w: the bundle is of group %s", ErrBadRequest, b.Group)
	}
	if g.Bundle == nil {
		if dev.Account != g.Owner {
			return g, fmt.Errorf("%w: the owner uploads a group's first bundle", ErrForbidden)
		}
		es, _, err := escrowSlot(b, 1)
		if err != nil {
			return g, fmt.Errorf("%w: %w", ErrBadRequest, err)
		}
		if es.KeyVersion != g.EscrowKeyVersion || es.Suite != g.EscrowSuite {
			return g, fmt.Errorf("%w: the escrow slot is for key version %d, the group's is %d", ErrBadRequest, es.KeyVersion, g.EscrowKeyVersion)
		}
		for _, sl := range b.Slots {
			if sl.GDKVersion != 1 {
				return g, fmt.Errorf("%w: a first bundle holds GDK version 1 only", ErrBadRequest)
			}
		}
		g.Commitments = [][]byte{es.Commit}
	} else {
		old, err := bundle.Parse(g.Bundle)
		if err != nil {
			return g, err
		}
		if err := othersUnchanged(old, b, dev.Account); err != nil {
			return g, err
		}
		for _, sl := range b.Slots {
			if sl.Kind == bundle.KindChain {
				continue
			}
			if sl.GDKVersion < 1 || int(sl.GDKVersion) > len(g.Commitments) || !bytes.Equal(sl.Commit, g.Commitments[sl.GDKVersion-1]) {
				return g, fmt.Errorf("%w: a slot of GDK version %d does not carry the group's commitment", ErrForbidden, sl.GDKVersion)
			}
		}
	}
	if err := storeBundle(&g, b); err != nil {
		return g, err
	}
	v, err := s.st.UpdateGroup(ctx, g)
	if err != nil {
		return g, err
	}
	g.Version = v
	if err := s.reconcile(ctx, group); err != nil {
		s.log.Warn("re-wraps after a bundle upload left to the cycle", "group", group, "err", err)
	}
	return s.st.Group(ctx, group)
}

// addMember makes account a surrogate of the group: re-wraps through the
// escrow slot to its member key and devices, and an epoch of codes.
func (s *Server) addMember(ctx context.Context, dev store.Device, group, account string) (store.Group, error) {
	if _, err := s.st.Account(ctx, account); err != nil {
		return store.Group{}, err
	}
	g, err := s.member(ctx, group, dev.Account)
	if err != nil {
		return g, err
	}
	if g.Owner != dev.Account {
		return g, fmt.Errorf("%w: only the owner's devices manage members", ErrForbidden)
	}
	if g.Bundle == nil {
		return g, fmt.Errorf("%w: the group has no bundle yet", ErrBadRequest)
	}
	if !g.IsMember(account) {
		if _, err := s.mutate(ctx, group, func(g *store.Group) error {
			if !g.IsMember(account) {
				g.Surrogates = append(g.Surrogates, account)
			}
			return nil
		}); err != nil {
			return g, err
		}
	}
	// A failure here leaves the work to the cycle job; the caller sees it.
	err = s.reconcile(ctx, group)
	g2, gerr := s.st.Group(ctx, group)
	if gerr != nil {
		return g2, gerr
	}
	return g2, err
}

// removeMember removes a surrogate and rotates the GDK, so that nothing
// written from now on opens with what the surrogate's devices hold.
func (s *Server) removeMember(ctx context.Context, dev store.Device, group, account string) (store.Group, error) {
	g, err := s.member(ctx, group, dev.Account)
	if err != nil {
		return g, err
	}
	if g.Owner != dev.Account || account == g.Owner {
		return g, fmt.Errorf("%w: only the owner's devices remove surrogates, and the owner stays", ErrForbidden)
	}
	if !slices.Contains(g.Surrogates, account) {
		return g, fmt.Errorf("member %s: %w", account, store.ErrNotFound)
	}
	// One rotation of a group at a time in this process: two would each
	// start an unlock epoch at escrowd, and only one set of slots can be
	// stored. Several replicas need a lease in the store for the same.
	mu, _ := s.rotating.LoadOrStore(group, new(sync.Mutex))
	mu.(*sync.Mutex).Lock()
	defer mu.(*sync.Mutex).Unlock()
	if g, err = s.member(ctx, group, dev.Account); err != nil {
		return g, err
	}
	if !slices.Contains(g.Surrogates, account) {
		return g, fmt.Errorf("member %s: %w", account, store.ErrNotFound)
	}
	g.Surrogates = slices.DeleteFunc(slices.Clone(g.Surrogates), func(m string) bool { return m == account })
	b, err := bundle.Parse(g.Bundle)
	if err != nil {
		return g, err
	}
	_, raw, err := escrowSlot(b, g.GDKVersion)
	if err != nil {
		return g, err
	}
	req := RotateRequest{Group: group, EscrowSlot: raw, OldGDKVersion: g.GDKVersion, UnlockUsers: g.Members()}
	for _, m := range g.Members() {
		a, err := s.st.Account(ctx, m)
		if err != nil {
			return g, err
		}
		req.Recipients = append(req.Recipients, Recipient{Kind: Member, ID: m, KeyVersion: a.MemberKeyVersion, Suite: bundle.SuiteECDHP256, PublicKey: a.MemberKey})
		ds, err := s.st.Devices(ctx, m)
		if err != nil {
			return g, err
		}
		for _, d := range ds {
			req.Recipients = append(req.Recipients, Recipient{Kind: Device, ID: d.ID, KeyVersion: d.WrapKeyVersion, Suite: bundle.SuiteECDHP256, PublicKey: d.WrapKey})
		}
	}
	rot, err := s.esc.RotateGroupKey(ctx, req)
	if err != nil {
		return g, err
	}
	return s.mutate(ctx, group, func(g *store.Group) error {
		if g.GDKVersion != req.OldGDKVersion {
			// Another replica rotated meanwhile: its bundle stands.
			return &store.ConflictError{Current: g.Version}
		}
		old, err := bundle.Parse(g.Bundle)
		if err != nil {
			return err
		}
		// The new bundle: every chain slot, and the new GDK's slots.
		nb := &bundle.Bundle{Group: group}
		for _, sl := range old.Slots {
			if sl.Kind == bundle.KindChain {
				nb.Slots = append(nb.Slots, sl)
			}
		}
		raws := append([][]byte{rot.ChainSlot, rot.EscrowSlot}, rot.RecipientSlots...)
		for _, u := range rot.Unlock {
			raws = append(raws, u.Slots...)
		}
		for _, raw := range raws {
			sl, err := bundle.ParseSlot(raw)
			if err != nil {
				return fmt.Errorf("escrowd returned a slot the backend cannot parse: %w", err)
			}
			nb.Slots = append(nb.Slots, *sl)
		}
		g.Surrogates = slices.DeleteFunc(g.Surrogates, func(m string) bool { return m == account })
		g.GDKVersion = rot.GDKVersion
		g.Commitments = append(g.Commitments, rot.Commitment)
		g.EscrowKeyVersion = max(g.EscrowKeyVersion, rot.EscrowKeyVersion)
		g.Epochs = map[string]uint32{}
		for _, u := range rot.Unlock {
			g.Epochs[u.User] = u.Epoch
		}
		g.NeedEpoch = nil
		return storeBundle(g, nb)
	})
}

// putRecord stores a record written under the group's current GDK.
func (s *Server) putRecord(ctx context.Context, dev store.Device, group, id string, r putRecord) (store.Record, error) {
	g, err := s.member(ctx, group, dev.Account)
	if err != nil {
		return store.Record{}, err
	}
	rec, err := bundle.ParseRecord(r.Record)
	if err != nil {
		return store.Record{}, fmt.Errorf("%w: record: %s: %w", ErrBadRequest, bundle.Class(err), err)
	}
	if rec.Group != group || rec.ID != id {
		return store.Record{}, fmt.Errorf("%w: the record names group %s, id %s", ErrBadRequest, rec.Group, rec.ID)
	}
	if rec.GDKVersion != g.GDKVersion {
		return store.Record{}, fmt.Errorf("%w: record under GDK version %d, the group's is %d", ErrStaleGDK, rec.GDKVersion, g.GDKVersion)
	}
	out := store.Record{Group: group, ID: id, Version: uint64(r.Version), Data: r.Record, Updated: s.cfg.Now().UTC()}
	v, err := s.st.PutRecord(ctx, out)
	out.Version = v
	return out, err
}

// codeConsumed records that a device of user used an unlock code: escrowd
// marks it consumed and issues a new epoch, whose slots replace the old.
func (s *Server) codeConsumed(ctx context.Context, dev store.Device, group string, c consumed) (store.Group, error) {
	g, err := s.member(ctx, group, dev.Account)
	if err != nil {
		return g, err
	}
	user := dev.Account
	current := g.Epochs[user]
	if c.Epoch > current {
		return g, fmt.Errorf("%w: epoch %d was never issued to %s", ErrBadRequest, c.Epoch, user)
	}
	if err := s.esc.MarkUnlockCodeConsumed(ctx, group, user, c.Epoch, c.Index); err != nil {
		if !errors.Is(err, ErrEscrowdRefused) {
			return g, err
		}
		// A code escrowd never revealed opened the data: it leaked or
		// was guessed. The epoch is burnt either way.
		s.log.Warn("consumed code refused by escrowd", "group", group, "user", user, "epoch", c.Epoch, "index", c.Index, "err", err)
	}
	g, err = s.mutate(ctx, group, func(g *store.Group) error {
		g.Reports = append(g.Reports, store.Report{User: user, Device: dev.ID, Epoch: c.Epoch, Index: c.Index, Time: s.cfg.Now().UTC()})
		if len(g.Reports) > 100 {
			g.Reports = g.Reports[len(g.Reports)-100:]
		}
		if c.Epoch == g.Epochs[user] && !slices.Contains(g.NeedEpoch, user) {
			g.NeedEpoch = append(g.NeedEpoch, user)
		}
		return nil
	})
	if err != nil {
		return g, err
	}
	if slices.Contains(g.NeedEpoch, user) {
		if err := s.issueEpoch(ctx, group, user); err != nil {
			return g, err
		}
	}
	return s.st.Group(ctx, group)
}
