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
	"github.com/escrowd/escrowd/escrow/kdf"
	"github.com/escrowd/escrowd/hsm"
)

// sealECDH is what a device does to seal gdk to a P-256 public key.
func sealECDH(t testing.TB, pubDER []byte, kind string, gdk []byte) (epk, wrapped []byte) {
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
	msg, err := kdf.ECDHMessage(kind, eph.PublicKey().Bytes(), pub.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	k, _ := kdf.ECDHKey(z, msg)
	w, err := device.WrapKey(k, gdk)
	if err != nil {
		t.Fatal(err)
	}
	return eph.PublicKey().Bytes(), w
}

// openECDH is what a device does to open an ecdh-p256 slot.
func openECDH(t testing.TB, priv *ecdh.PrivateKey, kind string, s hsm.Sealed) []byte {
	t.Helper()
	peer, err := ecdh.P256().NewPublicKey(s.EPK)
	if err != nil {
		t.Fatal(err)
	}
	z, err := priv.ECDH(peer)
	if err != nil {
		t.Fatal(err)
	}
	msg, _ := kdf.ECDHMessage(kind, s.EPK, priv.PublicKey().Bytes())
	k, _ := kdf.ECDHKey(z, msg)
	gdk, err := device.UnwrapKey(k, s.Wrapped)
	if err != nil {
		t.Fatalf("open %s slot: %v", kind, err)
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
	epk, wrapped := sealECDH(t, pubDER, "escrow", gdk)
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
		{PublicKeyDER: memberDER, Suite: hsm.SuiteRSAOAEPSHA1, Kind: "member"},
		{PublicKeyDER: devDER, Suite: hsm.SuiteECDHP256, Kind: "device"},
		{AESKey: aesKey},
	})
	if err != nil {
		t.Fatalf("RewrapSlot: %v", err)
	}
	if got, err := rsa.DecryptOAEP(sha1.New(), nil, member, out[0].Wrapped, nil); err != nil || !bytes.Equal(got, gdk) {
		t.Fatalf("RSA target: %x, %v", got, err)
	}
	if got := openECDH(t, dev, "device", out[1]); !bytes.Equal(got, gdk) {
		t.Fatal("ECDH target holds another key")
	}
	if got, err := device.UnwrapKey(aesKey, out[2].Wrapped); err != nil || !bytes.Equal(got, gdk) {
		t.Fatalf("AES target: %v", err)
	}
	// The kind is bound: a device slot's key is not a member slot's.
	if _, err := device.UnwrapKey(mustKey(t, dev, "member", out[1]), out[1].Wrapped); err == nil {
		t.Fatal("a device slot opened as a member slot")
	}

	// Tampering: the wrapped GDK, the ephemeral key, another escrow key.
	bad := bytes.Clone(wrapped)
	bad[5] ^= 1
	badEPK, _ := sealECDH(t, pubDER, "escrow", gdk)
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

func mustKey(t testing.TB, priv *ecdh.PrivateKey, kind string, s hsm.Sealed) []byte {
	peer, _ := ecdh.P256().NewPublicKey(s.EPK)
	z, _ := priv.ECDH(peer)
	msg, _ := kdf.ECDHMessage(kind, s.EPK, priv.PublicKey().Bytes())
	k, _ := kdf.ECDHKey(z, msg)
	return k
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
	epk, w := sealECDH(t, ecPub, "escrow", old)
	sources := map[string]hsm.Source{
		"rsa-oaep-sha1": {EscrowPrivate: rsaPriv, EscrowPublicDER: rsaPub, Suite: hsm.SuiteRSAOAEPSHA1, Wrapped: deviceWrap(t, rsaPub, old)},
		"ecdh-p256":     {EscrowPrivate: ecPriv, EscrowPublicDER: ecPub, Suite: hsm.SuiteECDHP256, Wrapped: w, EPK: epk},
	}
	for name, src := range sources {
		t.Run(name, func(t *testing.T) {
			aesKey := randBytes(t, 32)
			dev, _ := ecdh.P256().GenerateKey(rand.Reader)
			devDER, _ := x509.MarshalPKIXPublicKey(dev.PublicKey())
			chain, out, err := h.Rotate(ctx, src, []hsm.Target{{AESKey: aesKey}, {PublicKeyDER: devDER, Suite: hsm.SuiteECDHP256, Kind: "member"}})
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
			if got := openECDH(t, dev, "member", out[1]); !bytes.Equal(got, next) {
				t.Fatal("targets hold different new GDKs")
			}
			back, err := device.UnwrapKey(next, chain)
			if err != nil || !bytes.Equal(back, old) {
				t.Fatalf("chain gave %x, %v; want the old GDK", back, err)
			}
		})
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

// BenchmarkRewrapSlotECDH: open an ecdh-p256 escrow slot and wrap to one
// ecdh-p256 member, in the HSM.
func BenchmarkRewrapSlotECDH(b *testing.B) {
	h, _, _ := sharedHSM(b)
	ctx := context.Background()
	pub, priv, err := h.GenerateEscrowKey(ctx, hsm.SuiteECDHP256)
	if err != nil {
		b.Fatal(err)
	}
	epk, w := sealECDH(b, pub, "escrow", randBytes(b, 32))
	dev, _ := ecdh.P256().GenerateKey(rand.Reader)
	devDER, _ := x509.MarshalPKIXPublicKey(dev.PublicKey())
	src := hsm.Source{EscrowPrivate: priv, EscrowPublicDER: pub, Suite: hsm.SuiteECDHP256, Wrapped: w, EPK: epk}
	tg := []hsm.Target{{PublicKeyDER: devDER, Suite: hsm.SuiteECDHP256, Kind: "member"}}
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
	epk, w := sealECDH(t, pub, "escrow", gdk)
	src := hsm.Source{EscrowPrivate: priv, EscrowPublicDER: pub, Suite: hsm.SuiteECDHP256, Wrapped: w, EPK: epk}
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
