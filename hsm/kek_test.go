package hsm_test

import (
	"bytes"
	"context"
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/escrowd/escrowd/hsm"
)

// TestKEKRotation: the SO makes KEK v2; stored keys re-wrap from v1 to v2
// inside the token and still work; new keys go under v2; v1 can be
// destroyed once nothing needs it, and what it wrapped never opens again.
func TestKEKRotation(t *testing.T) {
	ctx := context.Background()
	tok := newToken(t)
	h1, err := hsm.Open(tok.HSMConfig())
	if err != nil {
		t.Fatal(err)
	}
	unlock1, err := h1.GenerateUnlockKey(ctx)
	if err != nil {
		t.Fatal(err)
	}
	pub, escrow1, err := h1.GenerateEscrowKey(ctx, hsm.SuiteRSAOAEPSHA1)
	if err != nil {
		t.Fatal(err)
	}
	msg := []byte("rotation")
	mac1, err := h1.HMAC(ctx, unlock1, msg)
	if err != nil {
		t.Fatal(err)
	}
	// The SO's ceremony runs with no user login held by this process.
	if err := h1.Close(); err != nil {
		t.Fatal(err)
	}
	rep, err := hsm.InitKEKVersion(tok.Module, tok.Label, tok.SOPIN, tok.UserPIN, tok.KEKLabel, 2)
	if err != nil {
		t.Fatal(err)
	}
	if !rep.Private || !rep.Trusted || !strings.HasSuffix(rep.Label(), "-v2") {
		t.Fatalf("KEK v2 report %+v", rep)
	}
	if _, err := hsm.InitKEKVersion(tok.Module, tok.Label, tok.SOPIN, tok.UserPIN, tok.KEKLabel, 2); !errors.Is(err, hsm.ErrKEKExists) {
		t.Fatalf("second InitKEKVersion 2: %v, want ErrKEKExists", err)
	}
	h := openToken(t, tok, nil)
	// A new KEK on the token changes nothing by itself: switching is the
	// operator's act (UseKEK, run by a kek-rotation job).
	if h.CurrentKEK() != 1 {
		t.Fatalf("current KEK %d after v2 was made, want still 1", h.CurrentKEK())
	}
	if vs, err := h.KEKVersions(ctx); err != nil || !slices.Equal(vs, []uint32{1, 2}) {
		t.Fatalf("KEK versions %v, %v", vs, err)
	}
	if fresh, err := h.GenerateUnlockKey(ctx); err != nil || fresh.KEKVersion != 1 {
		t.Fatalf("new key under KEK %d, %v; want 1 before UseKEK", fresh.KEKVersion, err)
	}
	if err := h.UseKEK(ctx, 2); err != nil {
		t.Fatal(err)
	}
	// Keys under v1 still work before they are re-wrapped.
	if mac, err := h.HMAC(ctx, unlock1, msg); err != nil || !bytes.Equal(mac, mac1) {
		t.Fatalf("HMAC under v1 after v2 exists: %v", err)
	}
	unlock2, err := h.RewrapKEK(ctx, hsm.KeyUnlock, unlock1, 2)
	if err != nil {
		t.Fatal(err)
	}
	escrow2, err := h.RewrapKEK(ctx, hsm.KeyEscrow, escrow1, 2)
	if err != nil {
		t.Fatal(err)
	}
	if unlock2.KEKVersion != 2 || escrow2.KEKVersion != 2 || bytes.Equal(unlock2.Blob, unlock1.Blob) {
		t.Fatalf("re-wrapped keys name KEK %d and %d", unlock2.KEKVersion, escrow2.KEKVersion)
	}
	// AES-KWP with the default IV is deterministic: re-wrapping again (a
	// job resumed after a crash) gives the same bytes.
	if again, err := h.RewrapKEK(ctx, hsm.KeyUnlock, unlock1, 2); err != nil || !bytes.Equal(again.Blob, unlock2.Blob) {
		t.Fatalf("second re-wrap differs: %v", err)
	}
	if same, err := h.RewrapKEK(ctx, hsm.KeyUnlock, unlock2, 2); err != nil || !bytes.Equal(same.Blob, unlock2.Blob) {
		t.Fatalf("re-wrap of a key already under v2: %v", err)
	}
	if mac, err := h.HMAC(ctx, unlock2, msg); err != nil || !bytes.Equal(mac, mac1) {
		t.Fatalf("HMAC under v2: %x, %v; want the v1 key's MAC", mac, err)
	}
	gdk := randBytes(t, 32)
	out, err := h.Rewrap(ctx, escrow2, hsm.SuiteRSAOAEPSHA1, deviceWrap(t, pub, gdk), []hsm.Target{{AESKey: bytes.Repeat([]byte{7}, 32)}})
	if err != nil {
		t.Fatalf("Rewrap with the escrow key re-wrapped under v2: %v", err)
	}
	if got, err := aesKeyUnwrap(bytes.Repeat([]byte{7}, 32), out[0]); err != nil || !bytes.Equal(got, gdk) {
		t.Fatalf("GDK through the v2 escrow key: %v", err)
	}
	for _, k := range []struct {
		kind hsm.KeyKind
		w    hsm.WrappedKey
	}{{hsm.KeyUnlock, unlock2}, {hsm.KeyEscrow, escrow2}} {
		if err := h.CheckKey(ctx, k.kind, k.w); err != nil {
			t.Fatalf("CheckKey %v: %v", k.kind, err)
		}
	}
	if fresh, err := h.GenerateUnlockKey(ctx); err != nil || fresh.KEKVersion != 2 {
		t.Fatalf("new key under KEK %d, %v; want 2", fresh.KEKVersion, err)
	}
	if err := h.DestroyKEK(ctx, 2); !errors.Is(err, hsm.ErrInvalidInput) {
		t.Fatalf("destroying the current KEK: %v, want refused", err)
	}
	if err := h.DestroyKEK(ctx, 1); err != nil {
		t.Fatal(err)
	}
	if vs, err := h.KEKVersions(ctx); err != nil || !slices.Equal(vs, []uint32{2}) {
		t.Fatalf("KEK versions after destroying v1: %v, %v", vs, err)
	}
	// What v1 wrapped is gone for good, by every path.
	if _, err := h.HMAC(ctx, unlock1, msg); !errors.Is(err, hsm.ErrKEKNotFound) {
		t.Fatalf("HMAC under a destroyed KEK: %v, want ErrKEKNotFound", err)
	}
	if _, err := h.RewrapKEK(ctx, hsm.KeyEscrow, escrow1, 2); !errors.Is(err, hsm.ErrKEKNotFound) {
		t.Fatalf("re-wrap from a destroyed KEK: %v, want ErrKEKNotFound", err)
	}
	if err := h.CheckKey(ctx, hsm.KeyEscrow, escrow1); !errors.Is(err, hsm.ErrKEKNotFound) {
		t.Fatalf("CheckKey under a destroyed KEK: %v, want ErrKEKNotFound", err)
	}
	if mac, err := h.HMAC(ctx, unlock2, msg); err != nil || !bytes.Equal(mac, mac1) {
		t.Fatalf("HMAC under v2 after v1 destroyed: %v", err)
	}
	objs, err := h.Objects(ctx)
	if err != nil || len(objs) != 3 {
		t.Fatalf("objects after rotation: %+v, %v", objs, err)
	}
	for _, o := range objs {
		if !strings.HasSuffix(o.Label, "-v2") || o.Extractable || !o.Trusted || !o.Private {
			t.Fatalf("objects after rotation: %+v", objs)
		}
	}
	// A rotation to a version that is not on the token fails cleanly.
	if _, err := h.RewrapKEK(ctx, hsm.KeyUnlock, unlock2, 9); !errors.Is(err, hsm.ErrKEKNotFound) {
		t.Fatalf("re-wrap to a missing KEK: %v", err)
	}
	if err := h.UseKEK(ctx, 9); !errors.Is(err, hsm.ErrKEKNotFound) {
		t.Fatalf("UseKEK of a missing KEK: %v", err)
	}
}

// TestRotationTemplateExport: the KEK's unwrap template no longer forces
// CKA_EXTRACTABLE=false (a rotation needs an extractable key), so an
// attacker with the user PIN can unwrap a stored key extractable. It still
// cannot get it out: CKA_WRAP_WITH_TRUSTED=true is forced, only the SO makes
// trusted keys, and the attribute cannot be turned off.
func TestRotationTemplateExport(t *testing.T) {
	ctx := context.Background()
	tok := newToken(t)
	h := openToken(t, tok, nil)
	unlock, err := h.GenerateUnlockKey(ctx)
	if err != nil {
		t.Fatal(err)
	}
	_, escrow, err := h.GenerateEscrowKey(ctx, hsm.SuiteRSAOAEPSHA1)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []struct {
		kind hsm.KeyKind
		w    hsm.WrappedKey
	}{{hsm.KeyUnlock, unlock}, {hsm.KeyEscrow, escrow}} {
		for _, tc := range []struct {
			attempt   string
			loggedOut bool
		}{{"wrap", false}, {"set", false}, {"copy", false}, {"read", false}, {"wrap", true}} {
			name := k.kind.String() + "/" + tc.attempt
			if tc.loggedOut {
				name += "/no login"
			}
			t.Run(name, func(t *testing.T) {
				if err := h.Healthy(ctx); err != nil {
					t.Fatal(err)
				}
				err := h.RotationUnwrapAttackForTest(ctx, k.kind, k.w, tc.attempt, tc.loggedOut)
				if err == nil {
					t.Fatal("the token allowed it")
				}
				if strings.Contains(err.Error(), "setup") {
					t.Fatalf("setup failed: %v", err)
				}
				if !tc.loggedOut && strings.Contains(err.Error(), "unwrap as a rotation") {
					t.Fatalf("the rotation template itself was refused: %v", err)
				}
				t.Logf("refused: %v", err)
			})
		}
	}
}

// BenchmarkRewrapKEK measures the raw in-token re-wrap of one stored key
// from KEK v1 to v2 (AES-KWP unwrap + wrap + destroy), the HSM work of a
// master KEK rotation per key.
func BenchmarkRewrapKEK(b *testing.B) {
	ctx := context.Background()
	for _, kind := range []hsm.KeyKind{hsm.KeyUnlock, hsm.KeyEscrow} {
		b.Run(strings.ReplaceAll(kind.String(), " ", "-"), func(b *testing.B) {
			tok := newToken(b)
			h1, err := hsm.Open(tok.HSMConfig())
			if err != nil {
				b.Fatal(err)
			}
			var w hsm.WrappedKey
			if kind == hsm.KeyUnlock {
				w, err = h1.GenerateUnlockKey(ctx)
			} else {
				_, w, err = h1.GenerateEscrowKey(ctx, hsm.SuiteRSAOAEPSHA1)
			}
			if err != nil {
				b.Fatal(err)
			}
			h1.Close()
			if _, err := hsm.InitKEKVersion(tok.Module, tok.Label, tok.SOPIN, tok.UserPIN, tok.KEKLabel, 2); err != nil {
				b.Fatal(err)
			}
			h := openToken(b, tok, nil)
			b.ResetTimer()
			for b.Loop() {
				if _, err := h.RewrapKEK(ctx, kind, w, 2); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
