package backend

import (
	"bytes"
	"fmt"
	"slices"

	"github.com/escrowd/escrowd/escrow/bundle"
	"github.com/escrowd/escrowd/examples/syncbackend/store"
)

// The backend reads key bundles but cannot open a single slot: it finds
// the escrow slot to hand escrowd, sees which recipients lack a slot, and
// adds the slots escrowd returns. Every bundle it stores went through
// bundle.Parse, so slots of one GDK version agree on its commitment.

// escrowSlot returns the group's escrow slot of GDK version gdk with the
// newest escrow key version, encoded.
func escrowSlot(b *bundle.Bundle, gdk uint32) (*bundle.Slot, []byte, error) {
	var best *bundle.Slot
	for i := range b.Slots {
		s := &b.Slots[i]
		if s.Kind == bundle.KindEscrow && s.GDKVersion == gdk && (best == nil || s.KeyVersion > best.KeyVersion) {
			best = s
		}
	}
	if best == nil {
		return nil, nil, fmt.Errorf("the bundle has no escrow slot of GDK version %d", gdk)
	}
	raw, err := best.Marshal()
	return best, raw, err
}

func hasSlot(b *bundle.Bundle, kind bundle.Kind, id string, gdk, keyVersion uint32) bool {
	return slices.ContainsFunc(b.Slots, func(s bundle.Slot) bool {
		return s.Kind == kind && s.ID == id && s.GDKVersion == gdk && s.KeyVersion == keyVersion
	})
}

// addSlots adds slots escrowd made for g's current GDK to b. A slot of
// another group or of an older GDK (the group rotated meanwhile) is
// dropped; a newer escrow slot replaces the older ones of its GDK; an
// unlock epoch replaces the user's earlier unlock slots.
func addSlots(g *store.Group, b *bundle.Bundle, raws [][]byte) error {
	for _, raw := range raws {
		s, err := bundle.ParseSlot(raw)
		if err != nil {
			return fmt.Errorf("escrowd returned a slot the backend cannot parse: %w", err)
		}
		if s.Group != g.ID || s.GDKVersion != g.GDKVersion {
			continue
		}
		switch s.Kind {
		case bundle.KindEscrow:
			b.Slots = slices.DeleteFunc(b.Slots, func(o bundle.Slot) bool {
				return o.Kind == bundle.KindEscrow && o.GDKVersion == s.GDKVersion && o.KeyVersion < s.KeyVersion
			})
			g.EscrowKeyVersion = max(g.EscrowKeyVersion, s.KeyVersion)
			g.Reseal = false
		case bundle.KindUnlock:
			b.Slots = slices.DeleteFunc(b.Slots, func(o bundle.Slot) bool {
				return o.Kind == bundle.KindUnlock && o.ID == s.ID && o.Unlock.Epoch < s.Unlock.Epoch
			})
		}
		if !hasSlot(b, s.Kind, s.ID, s.GDKVersion, s.KeyVersion) || s.Kind == bundle.KindUnlock {
			b.Slots = append(b.Slots, *s)
		}
	}
	return nil
}

// storeBundle re-encodes b, checks it as a device would read it, and sets
// it on g.
func storeBundle(g *store.Group, b *bundle.Bundle) error {
	raw, err := b.Marshal()
	if err != nil {
		return fmt.Errorf("failed to encode the bundle of %s: %w", g.ID, err)
	}
	if _, err := bundle.Parse(raw); err != nil {
		return fmt.Errorf("the bundle of %s would not parse: %w", g.ID, err)
	}
	g.Bundle = raw
	return nil
}

// ownSlot reports whether a device of account may change slot s: the
// account's own password and passkey slots. Every other slot is made by
// escrowd through the backend, or by the group's creator at the first
// upload.
func ownSlot(s *bundle.Slot, account string) bool {
	return (s.Kind == bundle.KindPassword || s.Kind == bundle.KindPasskeyPRF) && s.ID == account
}

// othersUnchanged checks that next keeps every slot of old that account
// may not change, and adds none.
func othersUnchanged(old, next *bundle.Bundle, account string) error {
	enc := func(b *bundle.Bundle) ([][]byte, error) {
		var out [][]byte
		for i := range b.Slots {
			if ownSlot(&b.Slots[i], account) {
				continue
			}
			raw, err := b.Slots[i].Marshal()
			if err != nil {
				return nil, err
			}
			out = append(out, raw)
		}
		slices.SortFunc(out, bytes.Compare)
		return out, nil
	}
	a, err := enc(old)
	if err != nil {
		return err
	}
	n, err := enc(next)
	if err != nil {
		return err
	}
	if !slices.EqualFunc(a, n, bytes.Equal) {
		return fmt.Errorf("%w: a device may change only its own account's password and passkey slots", ErrForbidden)
	}
	return nil
}
