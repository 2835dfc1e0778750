package hsm_test

import (
	"bytes"
	"context"
	"errors"
	"testing"
	"time"

	"github.com/escrowd/escrowd/escrow/device"
	"github.com/escrowd/escrowd/format"
	"github.com/escrowd/escrowd/hsm"
)

// slotFixture is an HSM keeping opened slots (and no escrow keys, so that
// every count below is the slot cache's alone), with the ecdh-p256 escrow
// slots of three groups and their GDKs.
type slotFixture struct {
	*hotFixture
	gdks [][]byte
	pubs [][]byte
	keys []hsm.WrappedKey
}

func newSlotFixture(t *testing.T, slots int, ttl time.Duration, sessions int) *slotFixture {
	tok := newToken(t)
	if _, err := hsm.InitKEKVersion(tok.Module, tok.Label, tok.SOPIN, tok.UserPIN, tok.KEKLabel, 2); err != nil {
		t.Fatal(err)
	}
	f := &slotFixture{hotFixture: &hotFixture{t: t, obs: &callCounter{}}}
	f.h = openToken(t, tok, func(c *hsm.Config) {
		c.Sessions = sessions
		c.Observer = f.obs
		c.HotSlots = slots
		c.HotKeyTTL = ttl
	})
	ctx := context.Background()
	for range 3 {
		pub, priv, err := f.h.GenerateEscrowKey(ctx, hsm.SuiteECDHP256)
		if err != nil {
			t.Fatal(err)
		}
		gdk := randBytes(t, 32)
		f.gdks, f.pubs, f.keys = append(f.gdks, gdk), append(f.pubs, pub), append(f.keys, priv)
		f.srcs = append(f.srcs, escrowSource(t, pub, priv, "g", 1, gdk))
	}
	f.tg = []hsm.Target{{AESKey: randBytes(t, 32), Context: &format.SlotContext{Kind: "unlock", Suite: "pbkdf2-sha256-aes-kw", Group: "g", GDKVersion: 1, KeyVersion: 1, ID: "u"}}}
	return f
}

// Calls of a re-wrap of an ecdh-p256 slot to one AES-KW target (5 calls):
// opened and then destroyed (no slot kept: 21), opened and kept (the GDK
// and its binding key are not destroyed: 19), or found opened (5: the
// target's alone).
const (
	slotOpened = 19
	slotHit    = 5
)

// rewrapSrc re-wraps src, checks the call count and that the output holds
// gdk, bound as asked.
func (f *slotFixture) rewrapSrc(src hsm.Source, gdk []byte, want int, why string) {
	f.t.Helper()
	out, err := f.h.RewrapSlot(context.Background(), src, f.tg)
	if err != nil {
		f.t.Fatalf("%s: RewrapSlot: %v", why, err)
	}
	if got := f.obs.take(hsm.OpRewrap); got != want {
		f.t.Errorf("%s: %d PKCS#11 calls, want %d", why, got, want)
	}
	checkSealed(f.t, f.tg[0].Context, out[0], gdk)
	if got, err := device.UnwrapKey(f.tg[0].AESKey, out[0].Wrapped); err != nil || !bytes.Equal(got, gdk) {
		f.t.Fatalf("%s: the output does not hold the slot's GDK (%v)", why, err)
	}
}

func (f *slotFixture) rewrap(i, want int, why string) {
	f.t.Helper()
	f.rewrapSrc(f.srcs[i], f.gdks[i], want, why)
}

// gdkObjects counts the secret-key session objects of this process on the
// token: two per kept slot (its GDK and binding key).
func (f *slotFixture) gdkObjects(want int, why string) {
	f.t.Helper()
	objs, err := f.h.Objects(context.Background())
	if err != nil {
		f.t.Fatal(err)
	}
	n := 0
	for _, o := range objs {
		if o.Class == "secret-key" && !o.Token {
			n++
			if !o.Sensitive {
				f.t.Errorf("kept slot object not sensitive: %+v", o)
			}
			if o.KeyType == "generic-secret" && o.Extractable {
				f.t.Errorf("kept binding key extractable: %+v", o)
			}
		}
	}
	if n != want {
		f.t.Errorf("%s: %d secret-key session objects in the token, want %d", why, n, want)
	}
}

// TestHotSlots: on real SoftHSM, a slot re-wrapped again is found opened
// (5 calls: its targets' alone) and gives the same outputs as a full
// opening; the cache holds at most HotSlots slots, least recently used out
// first; and every invalidation destroys the kept GDKs: DropHotKeys
// (escrow key rotation, version destroyed), a GDK rotation, a KEK change,
// a logout, the loss of every session (token loss), and Close.
func TestHotSlots(t *testing.T) {
	ctx := context.Background()
	f := newSlotFixture(t, 2, time.Minute, 1)
	f.gdkObjects(0, "before any re-wrap")
	f.rewrap(0, slotOpened, "first re-wrap")
	f.rewrap(0, slotHit, "second re-wrap")
	f.rewrap(0, slotHit, "third re-wrap")
	f.gdkObjects(2, "one slot kept")

	f.rewrap(1, slotOpened, "another slot")
	f.rewrap(2, slotOpened+2, "a third slot") // + destroying the least recently used
	f.gdkObjects(4, "three slots, HotSlots 2")
	f.rewrap(2, slotHit, "the most recent slot")
	f.rewrap(0, slotOpened+2, "the least recently used slot, pushed out")

	f.h.DropHotKeys()
	f.gdkObjects(0, "after DropHotKeys")
	f.rewrap(0, slotOpened, "after DropHotKeys")
	f.rewrap(0, slotHit, "after DropHotKeys, again")

	// A GDK rotation (of any group) retires a GDK: every kept slot goes.
	chain := &format.SlotContext{Kind: "chain", Suite: "aes-kw", Group: "g", GDKVersion: 1, KeyVersion: 2}
	next := []hsm.Target{{AESKey: randBytes(t, 32), Context: &format.SlotContext{Kind: "unlock", Suite: "pbkdf2-sha256-aes-kw", Group: "g", GDKVersion: 2, KeyVersion: 1, ID: "u"}}}
	if _, _, err := f.h.Rotate(ctx, f.srcs[1], chain, next); err != nil {
		t.Fatal(err)
	}
	f.obs.take(hsm.OpRotate)
	f.gdkObjects(0, "after a GDK rotation")
	f.rewrap(0, slotOpened, "after a GDK rotation")

	if err := f.h.UseKEK(ctx, 2); err != nil {
		t.Fatal(err)
	}
	f.gdkObjects(0, "after a KEK change")
	f.rewrap(0, slotOpened, "after a KEK change")

	if err := f.h.LogoutForTest(ctx); err != nil {
		t.Fatal(err)
	}
	if err := f.h.Healthy(ctx); err != nil { // recovers the login
		t.Fatal(err)
	}
	f.gdkObjects(0, "after a logout and the recovery")
	f.rewrap(0, slotOpened, "after a logout")
	f.rewrap(0, slotHit, "after a logout, again")

	if err := f.h.CloseAllSessionsForTest(); err != nil {
		t.Fatal(err)
	}
	if err := f.h.Healthy(ctx); err != nil {
		t.Fatal(err)
	}
	f.gdkObjects(0, "after every session was lost and the pool reconnected")
	f.rewrap(0, slotOpened, "after the sessions were lost")
	f.rewrap(0, slotHit, "after the sessions were lost, again")

	if err := f.h.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := f.h.RewrapSlot(ctx, f.srcs[0], f.tg); !errors.Is(err, hsm.ErrClosed) {
		t.Errorf("re-wrap after Close: %v, want ErrClosed", err)
	}
}

// TestHotSlotsNeverMatchAnother: with a slot kept opened, no other slot
// meets it. The same GDK sealed again (other ephemeral key), to another
// group or GDK version, or under the escrow key wrapped anew, is opened
// and checked in full; a copy of the kept slot with one byte changed
// (the wrapped GDK, the ephemeral key, the binding, the commitment, the
// key version) fails as it does with nothing kept.
func TestHotSlotsNeverMatchAnother(t *testing.T) {
	ctx := context.Background()
	f := newSlotFixture(t, 8, time.Minute, 1)
	good, gdk, pub, priv := f.srcs[0], f.gdks[0], f.pubs[0], f.keys[0]
	f.rewrap(0, slotOpened, "the slot")
	f.rewrap(0, slotHit, "the slot again")

	f.rewrapSrc(escrowSource(t, pub, priv, "g", 1, gdk), gdk, slotOpened, "the same GDK sealed again")
	other := escrowSource(t, pub, priv, "g2", 1, gdk)
	if _, err := f.h.RewrapSlot(ctx, other, f.tg); err == nil {
		t.Error("a slot of group g2 re-wrapped to an output of group g")
	}
	f.obs.take(hsm.OpRewrap)
	v2 := escrowSource(t, pub, priv, "g", 2, gdk)
	tg2 := []hsm.Target{{AESKey: f.tg[0].AESKey, Context: &format.SlotContext{Kind: "unlock", Suite: "pbkdf2-sha256-aes-kw", Group: "g", GDKVersion: 2, KeyVersion: 1, ID: "u"}}}
	if _, err := f.h.RewrapSlot(ctx, v2, tg2); err != nil {
		t.Fatal(err)
	}
	if got := f.obs.take(hsm.OpRewrap); got != slotOpened {
		t.Errorf("the same GDK as version 2: %d calls, want %d (opened in full)", got, slotOpened)
	}
	rewrapped, err := f.h.RewrapKEK(ctx, hsm.KeyEscrowEC, priv, 2)
	if err != nil {
		t.Fatal(err)
	}
	anew := good
	anew.EscrowPrivate = rewrapped
	f.rewrapSrc(anew, gdk, slotOpened, "the slot, its escrow key wrapped under KEK 2")

	flip := func(b []byte, i int) []byte {
		c := append([]byte(nil), b...)
		c[i%len(c)] ^= 1
		return c
	}
	// after is the good slot's calls after the tampered one: a failure
	// in the module closes the session, and what it kept with it.
	tampered := []struct {
		name  string
		edit  func(s *hsm.Source)
		want  error
		after int
	}{
		{"wrapped GDK", func(s *hsm.Source) {
			s.Wrapped = flip(s.Wrapped, 9)
			c := *s.Context
			c.Wrapped = s.Wrapped
			s.Context = &c
		}, hsm.ErrBadCiphertext, slotOpened},
		{"binding", func(s *hsm.Source) { s.Bind = flip(s.Bind, 3) }, hsm.ErrBinding, slotHit},
		{"commitment", func(s *hsm.Source) {
			c := *s.Context
			c.Commit = flip(c.Commit, 0)
			s.Context = &c
		}, hsm.ErrBinding, slotHit},
		{"key version", func(s *hsm.Source) {
			c := *s.Context
			c.KeyVersion = 2
			s.Context = &c
		}, hsm.ErrBinding, slotHit},
		{"ephemeral key", func(s *hsm.Source) {
			k, _ := sealECDH(t, pub, gdk)
			s.EPK = k
			c := *s.Context
			c.EPK = k
			s.Context = &c
		}, hsm.ErrBadCiphertext, slotOpened},
	}
	for _, tc := range tampered {
		s := good
		tc.edit(&s)
		_, err := f.h.RewrapSlot(ctx, s, f.tg)
		if !errors.Is(err, tc.want) {
			t.Errorf("the kept slot with its %s changed: %v, want %v", tc.name, err, tc.want)
		}
		f.obs.take(hsm.OpRewrap)
		f.rewrap(0, tc.after, "the slot, after a copy with its "+tc.name+" changed")
	}
}

// TestHotSlotsTTL: a kept slot is destroyed once the TTL has passed, even
// when no operation comes.
func TestHotSlotsTTL(t *testing.T) {
	f := newSlotFixture(t, 4, 200*time.Millisecond, 1)
	f.rewrap(0, slotOpened, "first re-wrap")
	f.rewrap(0, slotHit, "within the TTL")
	deadline := time.Now().Add(10 * time.Second)
	for {
		objs, err := f.h.Objects(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, o := range objs {
			if o.Class == "secret-key" && !o.Token {
				n++
			}
		}
		if n == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d kept slot objects left 10s after a TTL of 200ms", n)
		}
		time.Sleep(100 * time.Millisecond)
	}
	f.rewrap(0, slotOpened, "after the TTL")
}

// TestHotSlotsOff: with HotSlots 0 nothing is kept.
func TestHotSlotsOff(t *testing.T) {
	f := newSlotFixture(t, 0, 0, 1)
	f.rewrap(0, uncached, "first re-wrap")
	f.rewrap(0, uncached, "second re-wrap, nothing kept")
	f.gdkObjects(0, "with HotSlots 0")
}

// TestHotSlotsAffinity: with two sessions, a re-wrap runs on the idle
// session that keeps its slot opened.
func TestHotSlotsAffinity(t *testing.T) {
	ctx := context.Background()
	f := newSlotFixture(t, 4, time.Minute, 2)
	f.rewrap(0, slotOpened, "slot 0 on the first session")
	release, err := f.h.HoldSessionForTest(ctx)
	if err != nil {
		t.Fatal(err)
	}
	f.rewrap(1, slotOpened, "slot 1 on the second session")
	release()
	f.rewrap(1, slotHit, "slot 1 again: the second session")
	f.rewrap(0, slotHit, "slot 0 again: the first session")
	f.rewrap(1, slotHit, "slot 1 once more")
}
