package hsm_test

import (
	"context"
	"testing"
	"time"

	"github.com/escrowd/escrowd/format"
	"github.com/escrowd/escrowd/hsm"
)

// hotFixture is an HSM of one session keeping hot escrow keys, and
// ecdh-p256 escrow slots of three groups.
type hotFixture struct {
	t    *testing.T
	h    *hsm.HSM
	obs  *callCounter
	srcs []hsm.Source
	tg   []hsm.Target
}

func newHotFixture(t *testing.T, hot int, ttl time.Duration) *hotFixture {
	return newHotFixtureSessions(t, hot, ttl, 1)
}

func newHotFixtureSessions(t *testing.T, hot int, ttl time.Duration, sessions int) *hotFixture {
	tok := newToken(t)
	// KEK version 2 for the KEK change, made before the user logs in.
	if _, err := hsm.InitKEKVersion(tok.Module, tok.Label, tok.SOPIN, tok.UserPIN, tok.KEKLabel, 2); err != nil {
		t.Fatal(err)
	}
	f := &hotFixture{t: t, obs: &callCounter{}}
	// One session unless asked: every operation runs on it, so which cache
	// it meets is known.
	f.h = openToken(t, tok, func(c *hsm.Config) { c.Sessions = sessions; c.Observer = f.obs; c.HotKeys = hot; c.HotKeyTTL = ttl })
	ctx := context.Background()
	for i := range 3 {
		pub, priv, err := f.h.GenerateEscrowKey(ctx, hsm.SuiteECDHP256)
		if err != nil {
			t.Fatal(err)
		}
		f.srcs = append(f.srcs, escrowSource(t, pub, priv, "g", 1, randBytes(t, 32)))
		_ = i
	}
	dev := randBytes(t, 32)
	f.tg = []hsm.Target{{AESKey: dev, Context: &format.SlotContext{Kind: "unlock", Suite: "pbkdf2-sha256-aes-kw", Group: "g", GDKVersion: 1, KeyVersion: 1, ID: "u"}}}
	return f
}

// Calls of a re-wrap to one AES-KW target (5 calls, as an ecdh-p256
// target): with the escrow key unwrapped and destroyed (no cache),
// unwrapped and kept (cold), or found kept (hot).
const (
	uncached = 21
	cold     = 20
	hot      = 19
)

// rewrap re-wraps group i's slot and checks how many PKCS#11 calls it
// took.
func (f *hotFixture) rewrap(i int, want int, why string) {
	f.t.Helper()
	if _, err := f.h.RewrapSlot(context.Background(), f.srcs[i], f.tg); err != nil {
		f.t.Fatalf("%s: RewrapSlot: %v", why, err)
	}
	if got := f.obs.take(hsm.OpRewrap); got != want {
		f.t.Errorf("%s: re-wrap of group %d took %d PKCS#11 calls, want %d", why, i, got, want)
	}
}

// escrowObjects counts the private-key session objects of this process
// on the token: the hot escrow keys.
func (f *hotFixture) escrowObjects(want int, why string) {
	f.t.Helper()
	objs, err := f.h.Objects(context.Background())
	if err != nil {
		f.t.Fatal(err)
	}
	n := 0
	for _, o := range objs {
		if o.Class == "private-key" && !o.Token {
			n++
			// The escrow key class template: sensitive, extractable
			// only under a trusted key (a KEK).
			if !o.Sensitive || !o.WrapWithTrusted {
				f.t.Errorf("hot escrow key not sensitive, or extractable under any key: %+v", o)
			}
		}
	}
	if n != want {
		f.t.Errorf("%s: %d escrow keys in the token, want %d", why, n, want)
	}
}

// TestHotEscrowKeys: on real SoftHSM, a group re-wrapped again finds its
// escrow key kept in the token (two calls fewer); the cache holds at most
// HotKeys keys, least recently used out first; and every invalidation
// destroys the kept objects: DropHotKeys (escrow key rotation, version
// destroyed), a KEK change, a logout, the loss of every session (token
// loss), the TTL, and Close.
func TestHotEscrowKeys(t *testing.T) {
	ctx := context.Background()
	f := newHotFixture(t, 2, time.Minute)
	f.escrowObjects(0, "before any re-wrap")
	f.rewrap(0, cold, "first re-wrap")
	f.rewrap(0, hot, "second re-wrap")
	f.rewrap(0, hot, "third re-wrap")
	f.escrowObjects(1, "after three re-wraps of one group")

	f.rewrap(1, cold, "another group")
	f.rewrap(2, cold+1, "a third group") // + destroying the least recently used
	f.escrowObjects(2, "three groups, HotKeys 2")
	f.rewrap(2, hot, "the most recent group")
	f.rewrap(0, cold+1, "the least recently used group, pushed out")

	f.h.DropHotKeys()
	f.escrowObjects(0, "after DropHotKeys")
	f.rewrap(0, cold, "after DropHotKeys")
	f.rewrap(0, hot, "after DropHotKeys, again")

	if err := f.h.UseKEK(ctx, 2); err != nil {
		t.Fatal(err)
	}
	f.escrowObjects(0, "after a KEK change")
	f.rewrap(0, cold, "after a KEK change")

	if err := f.h.LogoutForTest(ctx); err != nil {
		t.Fatal(err)
	}
	if err := f.h.Healthy(ctx); err != nil { // recovers the login
		t.Fatal(err)
	}
	f.escrowObjects(0, "after a logout and the recovery")
	f.rewrap(0, cold, "after a logout")
	f.rewrap(0, hot, "after a logout, again")

	if err := f.h.CloseAllSessionsForTest(); err != nil {
		t.Fatal(err)
	}
	if err := f.h.Healthy(ctx); err != nil {
		t.Fatal(err)
	}
	f.escrowObjects(0, "after every session was lost and the pool reconnected")
	f.rewrap(0, cold, "after the sessions were lost")
	f.rewrap(0, hot, "after the sessions were lost, again")
}

// TestHotEscrowKeysTTL: a kept key is destroyed once its TTL has passed,
// even when no operation comes (the pool sweeps idle sessions).
func TestHotEscrowKeysTTL(t *testing.T) {
	f := newHotFixture(t, 4, 200*time.Millisecond)
	f.rewrap(0, cold, "first re-wrap")
	f.rewrap(0, hot, "within the TTL")
	deadline := time.Now().Add(10 * time.Second)
	for {
		objs, err := f.h.Objects(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, o := range objs {
			if o.Class == "private-key" && !o.Token {
				n++
			}
		}
		if n == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d hot escrow keys left 10s after a TTL of 200ms", n)
		}
		time.Sleep(100 * time.Millisecond)
	}
	f.rewrap(0, cold, "after the TTL")
}

// TestHotEscrowKeysOff: with HotKeys 0 nothing is kept.
func TestHotEscrowKeysOff(t *testing.T) {
	f := newHotFixture(t, 0, 0)
	f.rewrap(0, uncached, "first re-wrap")
	f.rewrap(0, uncached, "second re-wrap, nothing kept")
	f.escrowObjects(0, "with HotKeys 0")
}

// TestHotEscrowKeysAffinity: with two sessions, a re-wrap runs on the idle
// session that keeps its group's escrow key, not on whichever session was
// returned last.
func TestHotEscrowKeysAffinity(t *testing.T) {
	ctx := context.Background()
	f := newHotFixtureSessions(t, 4, time.Minute, 2)
	f.rewrap(0, cold, "group 0 on the first session")
	release, err := f.h.HoldSessionForTest(ctx) // the first session
	if err != nil {
		t.Fatal(err)
	}
	f.rewrap(1, cold, "group 1 on the second session")
	release() // idle: the second session, then the first (returned last)
	f.rewrap(1, hot, "group 1 again: the second session, which keeps its key")
	f.rewrap(0, hot, "group 0 again: the first session, which keeps its key")
	f.rewrap(1, hot, "group 1 once more")
}
