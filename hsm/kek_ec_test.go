package hsm_test

import (
	"context"
	"testing"

	"github.com/escrowd/escrowd/hsm"
)

// TestKEKRotationEC: an ecdh-p256 escrow key (the default suite) re-wraps
// from KEK v1 to v2 inside the token and still opens, before and after.
func TestKEKRotationEC(t *testing.T) {
	ctx := context.Background()
	tok := newToken(t)
	h1, err := hsm.Open(tok.HSMConfig())
	if err != nil {
		t.Fatal(err)
	}
	_, escrow1, err := h1.GenerateEscrowKey(ctx, hsm.SuiteECDHP256)
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
	if err := h.CheckKey(ctx, hsm.KeyEscrowEC, escrow1); err != nil {
		t.Fatalf("EC escrow key under v1 after v2 exists: %v", err)
	}
	escrow2, err := h.RewrapKEK(ctx, hsm.KeyEscrowEC, escrow1, 2)
	if err != nil {
		t.Fatalf("RewrapKEK of an EC escrow key: %v", err)
	}
	if escrow2.KEKVersion != 2 {
		t.Fatalf("re-wrapped under %d", escrow2.KEKVersion)
	}
	if err := h.CheckKey(ctx, hsm.KeyEscrowEC, escrow2); err != nil {
		t.Fatalf("EC escrow key under v2: %v", err)
	}
}
