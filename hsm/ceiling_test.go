package hsm_test

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/x509"
	"testing"
	"time"

	"github.com/escrowd/escrowd/hsm"
)

// TestCeiling: every raw-ceiling sequence runs on the token's own keys,
// on one and on two sessions, and leaves no object behind. It asserts no
// timing: the figures are for `make bench`.
func TestCeiling(t *testing.T) {
	ctx := context.Background()
	tok := newToken(t)
	h1 := openToken(t, tok, nil)
	ecPub, ecPriv, err := h1.GenerateEscrowKey(ctx, hsm.SuiteECDHP256)
	if err != nil {
		t.Fatal(err)
	}
	rsaPub, rsaPriv, err := h1.GenerateEscrowKey(ctx, hsm.SuiteRSAOAEPSHA1)
	if err != nil {
		t.Fatal(err)
	}
	unlock, err := h1.GenerateUnlockKey(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := h1.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := hsm.InitKEKVersion(tok.Module, tok.Label, tok.SOPIN, tok.UserPIN, tok.KEKLabel, 2); err != nil {
		t.Fatal(err)
	}
	h := openToken(t, tok, nil)
	gdk := make([]byte, hsm.GDKSize)
	if _, err := rand.Read(gdk); err != nil {
		t.Fatal(err)
	}
	epk, wrapped := sealECDH(t, ecPub, gdk)
	rsaKey, err := x509.ParsePKIXPublicKey(rsaPub)
	if err != nil {
		t.Fatal(err)
	}
	rsaCT := oaepSHA1(t, rsaKey.(*rsa.PublicKey), gdk)
	member, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	memberDER, err := x509.MarshalPKIXPublicKey(&member.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	inputs := map[hsm.CeilingOp]hsm.CeilingInput{
		hsm.CeilingRewrapECDH: {Source: hsm.Source{EscrowPrivate: ecPriv, EscrowPublicDER: ecPub, Suite: hsm.SuiteECDHP256, Wrapped: wrapped, EPK: epk}},
		hsm.CeilingRewrapRSA: {Source: hsm.Source{EscrowPrivate: rsaPriv, EscrowPublicDER: rsaPub, Suite: hsm.SuiteRSAOAEPSHA1, Wrapped: rsaCT},
			Target: hsm.Target{PublicKeyDER: memberDER, Suite: hsm.SuiteRSAOAEPSHA1}},
		hsm.CeilingReveal:    {Unlock: unlock},
		hsm.CeilingProvision: {},
		hsm.CeilingKEKRewrap: {Source: hsm.Source{EscrowPrivate: ecPriv}, Unlock: unlock, ToKEK: 2},
	}
	for op, in := range inputs {
		for _, n := range []int{1, 2} {
			res, err := h.Ceiling(ctx, op, in, n, 20*time.Millisecond)
			if err != nil {
				t.Fatalf("%s on %d sessions: %v", op, n, err)
			}
			if len(res.Latencies) == 0 || res.Elapsed <= 0 {
				t.Fatalf("%s on %d sessions: %d sequences in %s", op, n, len(res.Latencies), res.Elapsed)
			}
		}
	}
	if _, err := h.Ceiling(ctx, hsm.CeilingReveal, inputs[hsm.CeilingReveal], hsm.DefaultSessions+1, time.Millisecond); err == nil {
		t.Fatal("Ceiling on more sessions than the pool has: no error")
	}
	objs, err := h.Objects(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(objs) != 6 {
		t.Fatalf("%d objects after the ceiling runs, want the KEKs of two versions, three each: %+v", len(objs), objs)
	}
}

func oaepSHA1(t *testing.T, pub *rsa.PublicKey, msg []byte) []byte {
	t.Helper()
	ct, err := rsa.EncryptOAEP(sha1.New(), rand.Reader, pub, msg, nil)
	if err != nil {
		t.Fatal(err)
	}
	return ct
}
