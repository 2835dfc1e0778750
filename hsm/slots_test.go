package hsm_test

import (
	"bytes"
	"context"
	"crypto/ecdh"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/x509"
	"errors"
	"testing"
	"time"

	"github.com/escrowd/escrowd/escrow/device"
	"github.com/escrowd/escrowd/format"
	"github.com/escrowd/escrowd/hsm"
)

// sealECDH is what a device does to seal gdk to a P-256 public key.
func sealECDH(t testing.TB, pubDER []byte, gdk []byte) (epk, wrapped []byte) {
	t.Helper()
	pub, err := hsm.ParseP256(pubDER)
	if err != nil {
		t.Fatal(err)
	}
	eph, err := ecdh.P256().GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	z, err := eph.ECDH(pub)
	if err != nil {
		t.Fatal(err)
	}
	info, err := format.ECDHInfo(eph.PublicKey().Bytes(), pub.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	k, _ := format.ECDHKey(z, info)
	w, err := device.WrapKey(k, gdk)
	if err != nil {
		t.Fatal(err)
	}
	return eph.PublicKey().Bytes(), w
}

// openECDH is what a device does to open an ecdh-p256 slot.
func openECDH(t testing.TB, priv *ecdh.PrivateKey, s hsm.Sealed) []byte {
	t.Helper()
	peer, err := ecdh.P256().NewPublicKey(s.EPK)
	if err != nil {
		t.Fatal(err)
	}
	z, err := priv.ECDH(peer)
	if err != nil {
		t.Fatal(err)
	}
	info, _ := format.ECDHInfo(s.EPK, priv.PublicKey().Bytes())
	k, _ := format.ECDHKey(z, info)
	gdk, err := device.UnwrapKey(k, s.Wrapped)
	if err != nil {
		t.Fatalf("open ecdh-p256 slot: %v", err)
	}
	return gdk
}

// TestECDHEscrowKey: a P-256 escrow key made in SoftHSM opens an ecdh-p256
// escrow slot sealed in Go, and the GDK goes to an RSA member, an ecdh-p256
// device and an AES-KW target; a tampered slot fails with ErrBadCiphertext;
// no object is left on the token.
func TestECDHEscrowKey(t *testing.T) {
	h := openToken(t, newToken(t), nil)
	ctx := context.Background()
	before, err := h.Objects(ctx)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	pubDER, priv, err := h.GenerateEscrowKey(ctx, hsm.SuiteECDHP256)
	if err != nil {
		t.Fatalf("GenerateEscrowKey(ecdh-p256): %v", err)
	}
	t.Logf("P-256 escrow key generated, self-tested and wrapped in %v", time.Since(start))

	gdk := randBytes(t, 32)
	epk, wrapped := sealECDH(t, pubDER, gdk)
	src := hsm.Source{EscrowPrivate: priv, EscrowPublicDER: pubDER, Suite: hsm.SuiteECDHP256, Wrapped: wrapped, EPK: epk}

	member, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	memberDER, _ := x509.MarshalPKIXPublicKey(&member.PublicKey)
	dev, _ := ecdh.P256().GenerateKey(rand.Reader)
	devDER, _ := x509.MarshalPKIXPublicKey(dev.PublicKey())
	aesKey := randBytes(t, 32)

	out, err := h.RewrapSlot(ctx, src, []hsm.Target{
		{PublicKeyDER: memberDER, Suite: hsm.SuiteRSAOAEPSHA1, Context: &format.SlotContext{Kind: "member", Suite: "ecdh-p256", Group: "g", GDKVersion: 1, KeyVersion: 1, ID: "m"}},
		{PublicKeyDER: devDER, Suite: hsm.SuiteECDHP256},
		{AESKey: aesKey},
	})
	if err != nil {
		t.Fatalf("RewrapSlot: %v", err)
	}
	if got, err := rsa.DecryptOAEP(sha1.New(), nil, member, out[0].Wrapped, nil); err != nil || !bytes.Equal(got, gdk) {
		t.Fatalf("RSA target: %x, %v", got, err)
	}
	if got := openECDH(t, dev, out[1]); !bytes.Equal(got, gdk) {
		t.Fatal("ECDH target holds another key")
	}
	if got, err := device.UnwrapKey(aesKey, out[2].Wrapped); err != nil || !bytes.Equal(got, gdk) {
		t.Fatalf("AES target: %v", err)
	}

	// Tampering: the wrapped GDK, the ephemeral key, another escrow key.
	bad := bytes.Clone(wrapped)
	bad[5] ^= 1
	badEPK, _ := sealECDH(t, pubDER, gdk)
	for name, s := range map[string]hsm.Source{
		"wrapped":   {EscrowPrivate: priv, EscrowPublicDER: pubDER, Suite: hsm.SuiteECDHP256, Wrapped: bad, EPK: epk},
		"epk":       {EscrowPrivate: priv, EscrowPublicDER: pubDER, Suite: hsm.SuiteECDHP256, Wrapped: wrapped, EPK: badEPK},
		"bad point": {EscrowPrivate: priv, EscrowPublicDER: pubDER, Suite: hsm.SuiteECDHP256, Wrapped: wrapped, EPK: append([]byte{4}, make([]byte, 64)...)},
	} {
		if _, err := h.RewrapSlot(ctx, s, []hsm.Target{{AESKey: aesKey}}); !errors.Is(err, hsm.ErrBadCiphertext) {
			t.Errorf("tampered %s: %v, want ErrBadCiphertext", name, err)
		}
	}

	after, err := h.Objects(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(after) != len(before) {
		t.Fatalf("%d objects before, %d after", len(before), len(after))
	}
}

// TestRotate: a new GDK is made in the HSM and wrapped to the targets; the
// chain holds the old GDK under the new one; both suites of escrow key.
func TestRotate(t *testing.T) {
	h, rsaPub, rsaPriv := sharedHSM(t)
	ctx := context.Background()
	ecPub, ecPriv, err := h.GenerateEscrowKey(ctx, hsm.SuiteECDHP256)
	if err != nil {
		t.Fatal(err)
	}
	old := randBytes(t, 32)
	epk, w := sealECDH(t, ecPub, old)
	sources := map[string]hsm.Source{
		"rsa-oaep-sha1": {EscrowPrivate: rsaPriv, EscrowPublicDER: rsaPub, Suite: hsm.SuiteRSAOAEPSHA1, Wrapped: deviceWrap(t, rsaPub, old)},
		"ecdh-p256":     {EscrowPrivate: ecPriv, EscrowPublicDER: ecPub, Suite: hsm.SuiteECDHP256, Wrapped: w, EPK: epk},
	}
	for name, src := range sources {
		t.Run(name, func(t *testing.T) {
			aesKey := randBytes(t, 32)
			dev, _ := ecdh.P256().GenerateKey(rand.Reader)
			devDER, _ := x509.MarshalPKIXPublicKey(dev.PublicKey())
			chainCtx := &format.SlotContext{Kind: "chain", Suite: "aes-kw", Group: "g", GDKVersion: 1, KeyVersion: 2}
			memberCtx := &format.SlotContext{Kind: "member", Suite: "ecdh-p256", Group: "g", GDKVersion: 2, KeyVersion: 1, ID: "m"}
			chain, out, err := h.Rotate(ctx, src, chainCtx, []hsm.Target{{AESKey: aesKey}, {PublicKeyDER: devDER, Suite: hsm.SuiteECDHP256, Context: memberCtx}})
			if err != nil {
				t.Fatalf("Rotate: %v", err)
			}
			next, err := device.UnwrapKey(aesKey, out[0].Wrapped)
			if err != nil {
				t.Fatal(err)
			}
			if bytes.Equal(next, old) {
				t.Fatal("the new GDK is the old one")
			}
			if got := openECDH(t, dev, out[1]); !bytes.Equal(got, next) {
				t.Fatal("targets hold different new GDKs")
			}
			// The chain slot is wrapped under the new GDK's chain key, never
			// under the GDK itself (key separation).
			kc, _ := format.DK(next, format.LabelChain)
			back, err := device.UnwrapKey(kc, chain.Wrapped)
			if err != nil || !bytes.Equal(back, old) {
				t.Fatalf("chain gave %x, %v; want the old GDK", back, err)
			}
			if _, err := device.UnwrapKey(next, chain.Wrapped); err == nil {
				t.Fatal("the chain slot opens under the GDK itself")
			}
			// Commitments and bindings: the chain's under the old GDK, the
			// member's under the new one.
			checkSealed(t, chainCtx, chain, old)
			checkSealed(t, memberCtx, out[1], next)
		})
	}
}

// checkSealed verifies what the HSM returned for an output slot as a
// device would: the commitment names gdk, the binding verifies under it.
func checkSealed(t *testing.T, c *format.SlotContext, s hsm.Sealed, gdk []byte) {
	t.Helper()
	if !bytes.Equal(s.Commit, format.Commitment(c.Group, c.GDKVersion, gdk)) {
		t.Fatalf("%s slot: the commitment does not name its GDK", c.Kind)
	}
	full := *c
	full.Commit, full.EPK, full.Wrapped = s.Commit, s.EPK, s.Wrapped
	want, _ := format.Bind(gdk, &full)
	if !bytes.Equal(s.Bind, want) {
		t.Fatalf("%s slot: the HSM's binding differs from Go's", c.Kind)
	}
}

// escrowSource makes an escrow slot of gdk as a device would in format
// v2, with its context, commitment and binding.
func escrowSource(t testing.TB, pubDER []byte, priv hsm.WrappedKey, group string, version uint32, gdk []byte) hsm.Source {
	t.Helper()
	epk, w := sealECDH(t, pubDER, gdk)
	c := &format.SlotContext{Kind: "escrow", Suite: "ecdh-p256", Group: group, GDKVersion: version, KeyVersion: 1,
		EPK: epk, Commit: format.Commitment(group, version, gdk), Wrapped: w}
	bind, err := format.Bind(gdk, c)
	if err != nil {
		t.Fatal(err)
	}
	return hsm.Source{EscrowPrivate: priv, EscrowPublicDER: pubDER, Suite: hsm.SuiteECDHP256, Wrapped: w, EPK: epk, Context: c, Bind: bind}
}

// TestBinding: an escrow slot opens only in the context it was bound to.
// Moved to another group, GDK version, kind or key version, or holding a
// GDK other than the one its commitment names (substituted, or with a
// tampered commitment), it fails with ErrBinding; and the HSM refuses to
// label its output with another group or GDK version than the source's.
func TestBinding(t *testing.T) {
	h, _, _ := sharedHSM(t)
	ctx := context.Background()
	pub, priv, err := h.GenerateEscrowKey(ctx, hsm.SuiteECDHP256)
	if err != nil {
		t.Fatal(err)
	}
	gdk := randBytes(t, 32)
	aes := randBytes(t, 32)
	target := func(group string, version uint32) []hsm.Target {
		return []hsm.Target{{AESKey: aes, Context: &format.SlotContext{Kind: "unlock", Suite: "pbkdf2-sha256-aes-kw", Group: group, GDKVersion: version, KeyVersion: 1, ID: "u"}}}
	}
	good := escrowSource(t, pub, priv, "group-a", 3, gdk)
	out, err := h.RewrapSlot(ctx, good, target("group-a", 3))
	if err != nil {
		t.Fatalf("the bound slot: %v", err)
	}
	checkSealed(t, target("group-a", 3)[0].Context, out[0], gdk)

	moved := func(f func(c *format.SlotContext)) hsm.Source {
		s := good
		c := *good.Context
		f(&c)
		s.Context = &c
		return s
	}
	substituted := escrowSource(t, pub, priv, "group-a", 3, randBytes(t, 32))
	substituted.Context.Commit = good.Context.Commit
	forged := escrowSource(t, pub, priv, "group-a", 3, gdk)
	forged.Bind = bytes.Clone(forged.Bind)
	forged.Bind[0] ^= 1
	for name, src := range map[string]hsm.Source{
		"moved to another group":       moved(func(c *format.SlotContext) { c.Group = "group-b" }),
		"relabelled GDK version":       moved(func(c *format.SlotContext) { c.GDKVersion = 2 }),
		"relabelled kind":              moved(func(c *format.SlotContext) { c.Kind = "member"; c.ID = "m" }),
		"relabelled key version":       moved(func(c *format.SlotContext) { c.KeyVersion = 2 }),
		"tampered commitment":          moved(func(c *format.SlotContext) { c.Commit = bytes.Clone(c.Commit); c.Commit[31] ^= 1 }),
		"a substituted GDK":            substituted,
		"a binding of another message": forged,
	} {
		t.Run(name, func(t *testing.T) {
			_, err := h.RewrapSlot(ctx, src, target(src.Context.Group, src.Context.GDKVersion))
			if !errors.Is(err, hsm.ErrBinding) {
				t.Fatalf("RewrapSlot = %v, want ErrBinding", err)
			}
			t.Log(err)
		})
	}
	for name, tg := range map[string][]hsm.Target{
		"output to another group":       target("group-b", 3),
		"output of another GDK version": target("group-a", 4),
	} {
		if _, err := h.RewrapSlot(ctx, good, tg); !errors.Is(err, hsm.ErrInvalidInput) {
			t.Errorf("%s: %v, want ErrInvalidInput", name, err)
		}
	}
}

// BenchmarkGenerateEscrowKey: the provisioning cost of one group's escrow
// key per suite (go test -run XXX -bench GenerateEscrowKey ./hsm).
func BenchmarkGenerateEscrowKey(b *testing.B) {
	h, _, _ := sharedHSM(b)
	for _, suite := range []hsm.Suite{hsm.SuiteECDHP256, hsm.SuiteRSAOAEPSHA1} {
		b.Run(string(suite), func(b *testing.B) {
			for b.Loop() {
				if _, _, err := h.GenerateEscrowKey(context.Background(), suite); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkRewrapSlotECDH: open an ecdh-p256 escrow slot, check its
// commitment and binding, and wrap to one ecdh-p256 member with its own, in
// the HSM: what a re-wrap costs in format v2.
func BenchmarkRewrapSlotECDH(b *testing.B) {
	h, _, _ := sharedHSM(b)
	ctx := context.Background()
	pub, priv, err := h.GenerateEscrowKey(ctx, hsm.SuiteECDHP256)
	if err != nil {
		b.Fatal(err)
	}
	src := escrowSource(b, pub, priv, "g", 1, randBytes(b, 32))
	dev, _ := ecdh.P256().GenerateKey(rand.Reader)
	devDER, _ := x509.MarshalPKIXPublicKey(dev.PublicKey())
	tg := []hsm.Target{{PublicKeyDER: devDER, Suite: hsm.SuiteECDHP256, Context: &format.SlotContext{Kind: "member", Suite: "ecdh-p256", Group: "g", GDKVersion: 1, KeyVersion: 1, ID: "m"}}}
	for b.Loop() {
		if _, err := h.RewrapSlot(ctx, src, tg); err != nil {
			b.Fatal(err)
		}
	}
}

// TestConcurrentECDH: 8 goroutines re-wrap ecdh-p256 slots at once (SoftHSM
// once answered CKR_OBJECT_HANDLE_INVALID to ECDH under 8 goroutines); every
// call succeeds and no object is left.
func TestConcurrentECDH(t *testing.T) {
	h := openToken(t, newToken(t), nil)
	ctx := context.Background()
	pub, priv, err := h.GenerateEscrowKey(ctx, hsm.SuiteECDHP256)
	if err != nil {
		t.Fatal(err)
	}
	before, _ := h.Objects(ctx)
	gdk := randBytes(t, 32)
	src := escrowSource(t, pub, priv, "g", 1, gdk)
	errs := make(chan error, 8*40)
	done := make(chan struct{})
	for range 8 {
		go func() {
			defer func() { done <- struct{}{} }()
			for range 40 {
				key := make([]byte, 32)
				rand.Read(key)
				out, err := h.RewrapSlot(ctx, src, []hsm.Target{{AESKey: key}})
				if err == nil {
					var got []byte
					if got, err = device.UnwrapKey(key, out[0].Wrapped); err == nil && !bytes.Equal(got, gdk) {
						err = errors.New("wrong GDK")
					}
				}
				errs <- err
			}
		}()
	}
	for range 8 {
		<-done
	}
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	after, _ := h.Objects(ctx)
	if len(after) != len(before) {
		t.Fatalf("%d objects before, %d after", len(before), len(after))
	}
}
