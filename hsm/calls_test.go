package hsm_test

import (
	"context"
	"crypto/ecdh"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/escrowd/escrowd/format"
	"github.com/escrowd/escrowd/hsm"
)

// callCounter is an hsm.CallObserver that keeps the call count of the
// last operation of each name.
type callCounter struct {
	opRecorder
	mu   sync.Mutex
	last map[string]int
}

func (c *callCounter) ObserveHSMCalls(op string, calls int, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.last == nil {
		c.last = map[string]int{}
	}
	if err != nil {
		calls = -1
	}
	c.last[op] = calls
}

func (c *callCounter) take(op string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n, ok := c.last[op]
	if !ok {
		return -2
	}
	delete(c.last, op)
	return n
}

// rsaEscrowSource is escrowSource for an rsa-oaep-sha1 escrow key.
func rsaEscrowSource(t testing.TB, pubDER []byte, priv hsm.WrappedKey, group string, version uint32, gdk []byte) hsm.Source {
	t.Helper()
	w := deviceWrap(t, pubDER, gdk)
	c := &format.SlotContext{Kind: "escrow", Suite: "rsa-oaep-sha1", Group: group, GDKVersion: version, KeyVersion: 1,
		Commit: format.Commitment(group, version, gdk), Wrapped: w}
	bind, err := format.Bind(gdk, c)
	if err != nil {
		t.Fatal(err)
	}
	return hsm.Source{EscrowPrivate: priv, EscrowPublicDER: pubDER, Suite: hsm.SuiteRSAOAEPSHA1, Wrapped: w, Context: c, Bind: bind}
}

// CallsPerOperation pins the PKCS#11 calls each operation makes, as the
// daemon calls it (format v2 slots with their contexts), on real SoftHSM.
// On a network HSM every call is a round trip: a change that adds one
// fails here and must update docs/HSM.md ("PKCS#11 calls per operation"),
// which says why each call is needed.
func TestCallsPerOperation(t *testing.T) {
	tok := newToken(t)
	// KEK version 2, for the KEK re-wrap, made before the user logs in
	// (the SO login needs that); version 1 stays current.
	if _, err := hsm.InitKEKVersion(tok.Module, tok.Label, tok.SOPIN, tok.UserPIN, tok.KEKLabel, 2); err != nil {
		t.Fatal(err)
	}
	obs := &callCounter{}
	h := openToken(t, tok, func(c *hsm.Config) { c.Observer = obs })
	ctx := context.Background()

	ecPub, ecPriv, err := h.GenerateEscrowKey(ctx, hsm.SuiteECDHP256)
	if err != nil {
		t.Fatal(err)
	}
	provisionEscrow := obs.take(hsm.OpGenerateEscrowKey)
	unlock, err := h.GenerateUnlockKey(ctx)
	if err != nil {
		t.Fatal(err)
	}
	provisionUnlock := obs.take(hsm.OpGenerateUnlockKey)
	rsaPub, rsaPriv, err := h.GenerateEscrowKey(ctx, hsm.SuiteRSAOAEPSHA1)
	if err != nil {
		t.Fatal(err)
	}
	obs.take(hsm.OpGenerateEscrowKey)

	member := func(suite hsm.Suite, i int) hsm.Target {
		var der []byte
		if suite == hsm.SuiteECDHP256 {
			k, _ := ecdh.P256().GenerateKey(rand.Reader)
			der, _ = x509.MarshalPKIXPublicKey(k.PublicKey())
		} else {
			k, _ := rsa.GenerateKey(rand.Reader, 2048)
			der, _ = x509.MarshalPKIXPublicKey(&k.PublicKey)
		}
		return hsm.Target{PublicKeyDER: der, Suite: suite,
			Context: &format.SlotContext{Kind: "member", Suite: string(suite), Group: "g", GDKVersion: 1, KeyVersion: 1, ID: fmt.Sprint("m", i)}}
	}
	members := func(suite hsm.Suite, n int) []hsm.Target {
		var ts []hsm.Target
		for i := range n {
			ts = append(ts, member(suite, i))
		}
		return ts
	}
	gdk := randBytes(t, 32)
	ecSrc := escrowSource(t, ecPub, ecPriv, "g", 1, gdk)
	rsaSrc := rsaEscrowSource(t, rsaPub, rsaPriv, "g", 1, gdk)
	rsaMember := member(hsm.SuiteRSAOAEPSHA1, 0)

	run := func(op string, f func() error) int {
		t.Helper()
		if err := f(); err != nil {
			t.Fatalf("%s: %v", op, err)
		}
		return obs.take(op)
	}
	rewrap := func(src hsm.Source, ts []hsm.Target) func() error {
		return func() error { _, err := h.RewrapSlot(ctx, src, ts); return err }
	}
	rotate := func(src hsm.Source, ts []hsm.Target) func() error {
		return func() error {
			chain := &format.SlotContext{Kind: "chain", Suite: "aes-kw", Group: "g", GDKVersion: 1, KeyVersion: 2}
			for i := range ts {
				c := *ts[i].Context
				c.GDKVersion = 2
				ts[i].Context = &c
			}
			_, _, err := h.Rotate(ctx, src, chain, ts)
			return err
		}
	}
	type count struct {
		name        string
		calls, want int
	}
	got := []count{
		{name: "provision ecdh-p256: escrow key", calls: provisionEscrow, want: 11},
		{name: "provision: unlock key", calls: provisionUnlock, want: 3},
		{name: "reveal (HMAC)", calls: run(hsm.OpHMAC, func() error { _, err := h.HMAC(ctx, unlock, []byte("m")); return err }), want: 4},
		{name: "rewrap ecdh-p256 to 1 ecdh-p256 member", calls: run(hsm.OpRewrap, rewrap(ecSrc, members(hsm.SuiteECDHP256, 1))), want: 21},
		{name: "rewrap ecdh-p256 to 8 ecdh-p256 members", calls: run(hsm.OpRewrap, rewrap(ecSrc, members(hsm.SuiteECDHP256, 8))), want: 21 + 7*5},
		{name: "rewrap ecdh-p256 to 1 rsa member", calls: run(hsm.OpRewrap, rewrap(ecSrc, []hsm.Target{rsaMember})), want: 21},
		{name: "rewrap rsa-oaep-sha1 to 1 rsa member", calls: run(hsm.OpRewrap, rewrap(rsaSrc, []hsm.Target{rsaMember})), want: 18},
		{name: "rewrap rsa-oaep-sha1 to 1 ecdh-p256 member", calls: run(hsm.OpRewrap, rewrap(rsaSrc, members(hsm.SuiteECDHP256, 1))), want: 18},
		{name: "rotate ecdh-p256 GDK to 1 ecdh-p256 member", calls: run(hsm.OpRotate, rotate(ecSrc, members(hsm.SuiteECDHP256, 1))), want: 34},
		{name: "rotate rsa-oaep-sha1 GDK to 1 ecdh-p256 member", calls: run(hsm.OpRotate, rotate(rsaSrc, members(hsm.SuiteECDHP256, 1))), want: 31},
	}
	// With hot escrow keys and hot slots on (docs/HSM.md, "Hot slots"): the
	// first re-wrap of a slot keeps its escrow key, GDK and binding key
	// (3 destroys fewer); the next re-wrap of the same slot is its
	// targets' calls alone.
	hh := openToken(t, tok, func(c *hsm.Config) { c.Observer = obs; c.Sessions = 1; c.HotKeys = 4; c.HotSlots = 4 })
	hotRewrap := func(src hsm.Source, ts []hsm.Target) func() error {
		return func() error { _, err := hh.RewrapSlot(ctx, src, ts); return err }
	}
	ecOne := members(hsm.SuiteECDHP256, 1)
	got = append(got, []count{
		{name: "rewrap ecdh-p256, slot opened and kept", calls: run(hsm.OpRewrap, hotRewrap(ecSrc, ecOne)), want: 18},
		{name: "rewrap ecdh-p256, slot kept, to 1 member", calls: run(hsm.OpRewrap, hotRewrap(ecSrc, ecOne)), want: 5},
		{name: "rewrap ecdh-p256, slot kept, to 8 members", calls: run(hsm.OpRewrap, hotRewrap(ecSrc, members(hsm.SuiteECDHP256, 8))), want: 8 * 5},
		{name: "rewrap rsa-oaep-sha1, slot opened and kept", calls: run(hsm.OpRewrap, hotRewrap(rsaSrc, []hsm.Target{rsaMember})), want: 15},
		{name: "rewrap rsa-oaep-sha1, slot kept, to 1 member", calls: run(hsm.OpRewrap, hotRewrap(rsaSrc, []hsm.Target{rsaMember})), want: 5},
	}...)
	kekEC := run(hsm.OpRewrapKEK, func() error { _, err := h.RewrapKEK(ctx, hsm.KeyEscrowEC, ecPriv, 2); return err })
	kekUnlock := run(hsm.OpRewrapKEK, func() error { _, err := h.RewrapKEK(ctx, hsm.KeyUnlock, unlock, 2); return err })
	got = append(got, []count{
		{name: "KEK re-wrap: EC escrow key", calls: kekEC, want: 3},
		{name: "KEK re-wrap: unlock key", calls: kekUnlock, want: 3},
	}...)
	// An ecdh-p256 slot whose GDK is not 32 bytes is refused before any
	// call: AES-KW gives exactly len(wrapped)-8 bytes.
	for _, n := range []int{16, 24, 40} {
		bad := escrowSource(t, ecPub, ecPriv, "g", 1, randBytes(t, 32))
		bad.Wrapped = make([]byte, n+8)
		bad.Context.Wrapped = bad.Wrapped
		_, err := h.RewrapSlot(ctx, bad, members(hsm.SuiteECDHP256, 1))
		if !errors.Is(err, hsm.ErrBadCiphertext) || !strings.Contains(err.Error(), "does not hold a 32-byte GDK") {
			t.Errorf("ecdh-p256 slot of a %d-byte GDK: %v, want ErrBadCiphertext (not a 32-byte GDK)", n, err)
		}
		if c := obs.take(hsm.OpRewrap); c != -2 {
			t.Errorf("ecdh-p256 slot of a %d-byte GDK: %d PKCS#11 calls, want none", n, c)
		}
	}
	for _, g := range got {
		t.Logf("%-48s %3d PKCS#11 calls", g.name, g.calls)
		if g.calls != g.want {
			t.Errorf("%s: %d PKCS#11 calls, want %d", g.name, g.calls, g.want)
		}
	}
}
