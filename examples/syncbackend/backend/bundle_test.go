package backend

import (
	"context"
	"crypto/ecdh"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"strings"
	"testing"

	"github.com/escrowd/escrowd/escrow/bundle"
	"github.com/escrowd/escrowd/escrow/device"
	"github.com/escrowd/escrowd/examples/syncbackend/store"
)

// TestBundleRules: what a device may store as a group's bundle.
func TestBundleRules(t *testing.T) {
	ctx := context.Background()
	srv, _, _ := newCycleTest(t, 1)
	st := srv.st
	pub := func() []byte {
		k, _ := ecdh.P256().GenerateKey(rand.Reader)
		der, _ := x509.MarshalPKIXPublicKey(k.PublicKey())
		return der
	}
	if err := st.CreateAccount(ctx, store.Account{ID: "bob", MemberKey: pub(), MemberKeyVersion: 1}, store.Device{ID: "bob-phone", Account: "bob", SignKey: pub(), WrapKey: pub(), WrapKeyVersion: 1}); err != nil {
		t.Fatal(err)
	}
	ann, _ := st.Device(ctx, "d0")
	bob, _ := st.Device(ctx, "bob-phone")

	// A fresh group: the first upload's rules.
	g, err := srv.createGroup(ctx, ann, "fresh")
	if err != nil {
		t.Fatal(err)
	}
	gdk, _ := device.NewGDK()
	slot := func(raw []byte, err error) bundle.Slot {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		s, err := bundle.ParseSlot(raw)
		if err != nil {
			t.Fatal(err)
		}
		return *s
	}
	escrow := func(gdk []byte, gdkVersion, keyVersion uint32) bundle.Slot {
		return slot(device.SealEscrow(g.EscrowKey, device.To{Group: "fresh", GDKVersion: gdkVersion, KeyVersion: keyVersion}, bundle.SuiteECDHP256, gdk))
	}
	// enc writes a bundle by hand, so that it may break the rules
	// Marshal checks.
	enc := func(group string, slots ...bundle.Slot) []byte {
		var parts []string
		for _, s := range slots {
			raw, err := s.Marshal()
			if err != nil {
				t.Fatal(err)
			}
			parts = append(parts, string(raw))
		}
		return []byte(`{"v":2,"group":"` + group + `","slots":[` + strings.Join(parts, ",") + `]}`)
	}
	devSlot := func(gdk []byte, v uint32) bundle.Slot {
		return slot(device.SealPublic(bundle.KindDevice, device.To{Group: "fresh", GDKVersion: v, KeyVersion: 1, ID: "d0"}, bundle.SuiteECDHP256, ann.WrapKey, gdk))
	}
	for _, tc := range []struct {
		name string
		dev  store.Device
		raw  []byte
		want error
	}{
		{"not a bundle", ann, []byte(`{"v":1}`), ErrBadRequest},
		{"another group's bundle", ann, enc("g", slot(device.SealEscrow(g.EscrowKey, device.To{Group: "g", GDKVersion: 1, KeyVersion: 1}, bundle.SuiteECDHP256, gdk))), ErrBadRequest},
		{"no escrow slot", ann, enc("fresh", devSlot(gdk, 1)), ErrBadRequest},
		{"escrow slot of a key version escrowd never made", ann, enc("fresh", escrow(gdk, 1, 2)), ErrBadRequest},
		{"a slot of GDK version 2", ann, enc("fresh", escrow(gdk, 1, 1), devSlot(gdk, 2)), ErrBadRequest},
		{"two GDKs for version 1", ann, enc("fresh", escrow(gdk, 1, 1), devSlot(make([]byte, 32), 1)), ErrBadRequest},
		{"a non-member", bob, enc("fresh", escrow(gdk, 1, 1)), store.ErrNotFound},
	} {
		if _, err := srv.putBundle(ctx, tc.dev, "fresh", putBundle{Version: 1, Bundle: tc.raw}); !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.want)
		}
	}
	g, err = srv.putBundle(ctx, ann, "fresh", putBundle{Version: 1, Bundle: enc("fresh", escrow(gdk, 1, 1), devSlot(gdk, 1))})
	if err != nil {
		t.Fatal(err)
	}

	// Later uploads: only the account's own password and passkey slots may
	// change,
	// and only under the pinned GDK.
	b, _ := bundle.Parse(g.Bundle)
	// Passkey slots rather than password slots: the same rules, without
	// 600,000 PBKDF2 iterations a slot.
	prf := func(in []byte) ([]byte, error) { return append(make([]byte, 0, 32), in[:32]...), nil }
	passkey := func(user string, gdk []byte, v uint32) bundle.Slot {
		return slot(device.SealPasskey(gdk, device.To{Group: "fresh", GDKVersion: v, KeyVersion: 1, ID: user}, []byte("credential-"+user), prf))
	}
	pw := func(user string, gdk []byte) bundle.Slot { return passkey(user, gdk, 1) }
	other, _ := device.NewGDK()
	mine := pw("ann", gdk)
	withSlots := func(extra ...bundle.Slot) []byte {
		return enc("fresh", append(append([]bundle.Slot{}, b.Slots...), extra...)...)
	}
	without := func(kind bundle.Kind) []byte {
		var keep []bundle.Slot
		for _, s := range b.Slots {
			if s.Kind != kind {
				keep = append(keep, s)
			}
		}
		return enc("fresh", keep...)
	}
	for _, tc := range []struct {
		name string
		raw  []byte
		want error
	}{
		{"a passkey slot of another user", withSlots(pw("bob", gdk)), ErrForbidden},
		{"a passkey slot of another GDK", withSlots(pw("ann", other)), ErrBadRequest}, // the bundle's commitments disagree
		{"a passkey slot of a GDK version not made yet", withSlots(passkey("ann", other, 2)), ErrForbidden},
		{"dropping the unlock slots", without(bundle.KindUnlock), ErrForbidden},
		{"dropping the member slot", without(bundle.KindMember), ErrForbidden},
	} {
		if _, err := srv.putBundle(ctx, ann, "fresh", putBundle{Version: uint32(g.Version), Bundle: tc.raw}); !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.want)
		}
	}
	g, err = srv.putBundle(ctx, ann, "fresh", putBundle{Version: uint32(g.Version), Bundle: withSlots(mine)})
	if err != nil {
		t.Fatalf("ann adds her passkey slot: %v", err)
	}
	// A whole bundle re-made under another GDK, with consistent
	// commitments of its own, is refused: it replaces the slots the
	// backend manages.
	forged := []bundle.Slot{mine}
	forged[0] = pw("ann", other)
	fb := enc("fresh", escrow(other, 1, 1), forged[0])
	if _, err := srv.putBundle(ctx, ann, "fresh", putBundle{Version: uint32(g.Version), Bundle: fb}); !errors.Is(err, ErrForbidden) {
		t.Fatalf("a bundle of another GDK: %v, want ErrForbidden", err)
	}
}
