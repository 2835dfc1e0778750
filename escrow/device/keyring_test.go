package device

import (
	"bytes"
	"errors"
	"testing"

	"github.com/escrowd/escrowd/escrow/bundle"
	"github.com/escrowd/escrowd/format"
)

// member seals gdk of version v to the test device's P-256 key and opens
// it again, as a device does before it offers a GDK to its keyring.
func member(t *testing.T, grp string, v uint32, gdk []byte) *bundle.Slot {
	t.Helper()
	k := getKeys(t)
	slot := ok(t)(SealPublic(bundle.KindDevice, To{Group: grp, GDKVersion: v, KeyVersion: 1, ID: "phone-1"}, bundle.SuiteECDHP256, k.ecPub, gdk))
	got, s, err := OpenPublic(slot, Want{Group: grp, ID: "phone-1"}, k.ec)
	if err != nil || !bytes.Equal(got, gdk) {
		t.Fatalf("open: %v", err)
	}
	return s
}

func held(t *testing.T, kr *Keyring, v uint32, want []byte) {
	t.Helper()
	got, ok := kr.GDK(v)
	if want == nil {
		if ok {
			t.Fatalf("the keyring holds a GDK %d", v)
		}
		return
	}
	if !ok || !bytes.Equal(got, want) {
		t.Fatalf("GDK %d = %x, %v; want %x", v, got, ok, want)
	}
}

func TestKeyringPinAndAdd(t *testing.T) {
	gdk1 := newGDK(t)
	kr := NewKeyring(group)
	s1 := member(t, group, 1, gdk1)
	// Nothing pinned: a consistent slot is not enough.
	if err := kr.Add(s1, gdk1); !errors.Is(err, ErrUntrusted) {
		t.Fatalf("Add before Pin: %v", err)
	}
	held(t, kr, 1, nil)
	if err := kr.Pin(1, format.Commitment(group, 1, gdk1)); err != nil {
		t.Fatal(err)
	}
	// Pinning the same commitment again is fine, another one is not.
	if err := kr.Pin(1, format.Commitment(group, 1, gdk1)); err != nil {
		t.Fatalf("Pin again: %v", err)
	}
	if err := kr.Pin(1, format.Commitment(group, 1, newGDK(t))); !errors.Is(err, ErrUntrusted) {
		t.Fatalf("Pin of another commitment: %v", err)
	}
	// A substituted GDK: a well-formed slot of the group and version, made
	// by whoever writes the bundle, with their own GDK. It opens and
	// verifies, but the keyring refuses it.
	evil := newGDK(t)
	se := member(t, group, 1, evil)
	if err := kr.Add(se, evil); !errors.Is(err, ErrUntrusted) {
		t.Fatalf("Add of a substituted GDK: %v", err)
	}
	held(t, kr, 1, nil)
	if err := kr.Add(s1, gdk1); err != nil {
		t.Fatalf("Add of the pinned GDK: %v", err)
	}
	held(t, kr, 1, gdk1)
	if err := kr.Add(se, evil); !errors.Is(err, ErrUntrusted) {
		t.Fatalf("Add of a substituted GDK after the real one: %v", err)
	}
	held(t, kr, 1, gdk1)
	// A slot of another group, even with a GDK the keyring holds.
	if err := kr.Add(member(t, "family-7", 1, gdk1), gdk1); !errors.Is(err, ErrBinding) {
		t.Fatalf("Add of another group's slot: %v", err)
	}
	// A version nobody pinned.
	if err := kr.Add(member(t, group, 2, gdk1), gdk1); !errors.Is(err, ErrUntrusted) {
		t.Fatalf("Add of an unpinned version: %v", err)
	}
	held(t, kr, 2, nil)
}

// rotation is a group's GDKs 1..n and the chain slots between them.
type rotation struct {
	gdks   map[uint32][]byte
	chains map[uint32][]byte // chains[v] holds GDK v under GDK v+1
}

func rotate(t *testing.T, n uint32) *rotation {
	r := &rotation{gdks: map[uint32][]byte{}, chains: map[uint32][]byte{}}
	for v := uint32(1); v <= n; v++ {
		r.gdks[v] = newGDK(t)
		if v > 1 {
			r.chains[v-1] = ok(t)(SealChain(r.gdks[v-1], r.gdks[v], group, v-1))
		}
	}
	return r
}

// pinned returns a keyring that made (and so pinned) GDK 1.
func (r *rotation) pinned(t *testing.T) *Keyring {
	kr := NewKeyring(group)
	if err := kr.Pin(1, format.Commitment(group, 1, r.gdks[1])); err != nil {
		t.Fatal(err)
	}
	if err := kr.Add(member(t, group, 1, r.gdks[1]), r.gdks[1]); err != nil {
		t.Fatal(err)
	}
	return kr
}

func TestKeyringAdoptNewer(t *testing.T) {
	r := rotate(t, 3)
	kr := r.pinned(t)
	s2, s3 := member(t, group, 2, r.gdks[2]), member(t, group, 3, r.gdks[3])

	// GDK 3 cannot skip GDK 2.
	if err := kr.AdoptNewer(s3, r.gdks[3], r.chains[2]); !errors.Is(err, ErrUntrusted) {
		t.Fatalf("AdoptNewer over a gap: %v", err)
	}
	// A substituted GDK 2 with the real chain: the chain does not open.
	evil := newGDK(t)
	se := member(t, group, 2, evil)
	if err := kr.AdoptNewer(se, evil, r.chains[1]); !errors.Is(err, ErrWrongKey) {
		t.Fatalf("substituted GDK with the real chain: %v", err)
	}
	// A substituted GDK 2 with the attacker's own chain, which opens but
	// does not lead to the GDK 1 held here.
	evilChain := ok(t)(SealChain(newGDK(t), evil, group, 1))
	if err := kr.AdoptNewer(se, evil, evilChain); !errors.Is(err, ErrUntrusted) {
		t.Fatalf("substituted GDK with its own chain: %v", err)
	}
	// The real chain of another version.
	if err := kr.AdoptNewer(s2, r.gdks[2], r.chains[2]); err == nil {
		t.Fatal("AdoptNewer with the chain of another version")
	}
	held(t, kr, 2, nil)

	// The real GDK 2, then 3.
	if err := kr.AdoptNewer(s2, r.gdks[2], r.chains[1]); err != nil {
		t.Fatalf("AdoptNewer GDK 2: %v", err)
	}
	held(t, kr, 2, r.gdks[2])
	if err := kr.AdoptNewer(s3, r.gdks[3], r.chains[2]); err != nil {
		t.Fatalf("AdoptNewer GDK 3: %v", err)
	}
	held(t, kr, 3, r.gdks[3])
	// Now pinned: a substitute is refused by Add and by AdoptNewer.
	if err := kr.Add(se, evil); !errors.Is(err, ErrUntrusted) {
		t.Fatalf("Add of a substitute of an adopted version: %v", err)
	}
	held(t, kr, 2, r.gdks[2])
	// A keyring that holds no GDK 1 cannot adopt GDK 2 by chain.
	if err := NewKeyring(group).AdoptNewer(s2, r.gdks[2], r.chains[1]); !errors.Is(err, ErrUntrusted) {
		t.Fatalf("AdoptNewer without GDK 1: %v", err)
	}
	if err := NewKeyring(group).AdoptNewer(member(t, group, 1, r.gdks[1]), r.gdks[1], r.chains[1]); !errors.Is(err, ErrUntrusted) {
		t.Fatalf("AdoptNewer of GDK 1: %v", err)
	}
}

// TestKeyringAdoptNewerFailsCleanly: an AdoptNewer that fails leaves the
// keyring as it was, so the real GDK can still be adopted after it.
func TestKeyringAdoptNewerFailsCleanly(t *testing.T) {
	r := rotate(t, 2)
	s2 := member(t, group, 2, r.gdks[2])
	for name, f := range map[string]func(kr *Keyring) error{
		// A slot of another group holding a GDK whose chain leads to the
		// held GDK 1 (made by someone who knows GDK 1).
		"slot of another group": func(kr *Keyring) error {
			other := newGDK(t)
			return kr.AdoptNewer(member(t, "family-7", 2, other), other, ok(t)(SealChain(r.gdks[1], other, group, 1)))
		},
		// The real GDK 2 and chain, with a slot whose commitment was
		// altered and not verified by the caller.
		"unverified slot with another commitment": func(kr *Keyring) error {
			s := *s2
			s.Commit = bytes.Clone(s.Commit)
			s.Commit[0] ^= 1
			return kr.AdoptNewer(&s, r.gdks[2], r.chains[1])
		},
	} {
		t.Run(name, func(t *testing.T) {
			kr := r.pinned(t)
			if err := f(kr); err == nil {
				t.Fatal("accepted")
			}
			held(t, kr, 2, nil)
			if err := kr.AdoptNewer(s2, r.gdks[2], r.chains[1]); err != nil {
				t.Fatalf("the real GDK 2 after a failed AdoptNewer: %v", err)
			}
			held(t, kr, 2, r.gdks[2])
		})
	}
}

func TestKeyringAdoptOlder(t *testing.T) {
	r := rotate(t, 3)
	// A device enrolled at GDK 3 (pinned) reads old records: it walks the
	// chain down.
	kr := NewKeyring(group)
	if err := kr.Pin(3, format.Commitment(group, 3, r.gdks[3])); err != nil {
		t.Fatal(err)
	}
	if err := kr.Add(member(t, group, 3, r.gdks[3]), r.gdks[3]); err != nil {
		t.Fatal(err)
	}
	// GDK 1 needs GDK 2 first.
	if _, err := kr.AdoptOlder(r.chains[1]); !errors.Is(err, ErrUntrusted) {
		t.Fatalf("AdoptOlder over a gap: %v", err)
	}
	for _, v := range []uint32{2, 1} {
		got, err := kr.AdoptOlder(r.chains[v])
		if err != nil || !bytes.Equal(got, r.gdks[v]) {
			t.Fatalf("AdoptOlder %d: %x, %v", v, got, err)
		}
		held(t, kr, v, r.gdks[v])
	}
	// Records of GDK 1 open with what the chain gave.
	rec := ok(t)(SealRecord(r.gdks[1], group, "note-1", 1, []byte("old")))
	g1, _ := kr.GDK(1)
	if _, pt, err := OpenRecord(rec, g1); err != nil || string(pt) != "old" {
		t.Fatalf("old record: %q, %v", pt, err)
	}
	// A chain that gives another GDK for a version the keyring has: only
	// someone holding GDK 2 can make it, and it is still refused.
	forged := ok(t)(SealChain(newGDK(t), r.gdks[2], group, 1))
	if _, err := kr.AdoptOlder(forged); !errors.Is(err, ErrUntrusted) {
		t.Fatalf("forged chain: %v", err)
	}
	held(t, kr, 1, r.gdks[1])
	// A chain that does not open under the held GDK 2.
	other := rotate(t, 2)
	kr2 := NewKeyring(group)
	kr2.Pin(2, format.Commitment(group, 2, r.gdks[2]))
	kr2.Add(member(t, group, 2, r.gdks[2]), r.gdks[2])
	if _, err := kr2.AdoptOlder(other.chains[1]); !errors.Is(err, ErrWrongKey) {
		t.Fatalf("chain of another GDK 2: %v", err)
	}
	// A chain of another group, a malformed chain.
	if _, err := NewKeyring("family-7").AdoptOlder(r.chains[1]); !errors.Is(err, ErrUntrusted) {
		t.Fatalf("AdoptOlder in an empty keyring: %v", err)
	}
	if _, err := kr.AdoptOlder([]byte(`{"v":2}`)); OpenClass(err) != "missing-key" {
		t.Fatalf("malformed chain: %v", err)
	}
}
