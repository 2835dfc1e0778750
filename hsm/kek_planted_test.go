package hsm_test

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/escrowd/escrowd/hsm"
)

// TestPlantedKEK: the review planted an object labelled escrowd-kek-v2,
// made without logging in, and Open took it as the current KEK; every
// provisioning then failed. escrowd now uses a KEK only if it is trusted
// (only the SO makes those), unmodifiable and carries the expected unwrap
// template, refuses anything else loudly (KEKStates, ErrKEKRefused on any
// use), and never switches KEKs because an object appeared: new keys stay
// under the KEK in use until the operator says otherwise.
func TestPlantedKEK(t *testing.T) {
	ctx := context.Background()
	tok := newToken(t)
	// v2: planted without login (the finding), under the single-KEK label
	// of old tokens and one per-class label. v3 and v4: made by the SO's
	// ceremony, but modifiable, or with another unwrap template.
	for _, l := range []string{tok.KEKLabel + "-v2", tok.KEKLabel + "-escrow-ec-v2"} {
		if err := hsm.PlantKEKForTest(tok.Module, tok.Label, l); err != nil {
			t.Fatal(err)
		}
	}
	if err := hsm.InitKEKVariantForTest(tok.Module, tok.Label, tok.SOPIN, tok.UserPIN, tok.KEKLabel, 3, "modifiable"); err != nil {
		t.Fatal(err)
	}
	if err := hsm.InitKEKVariantForTest(tok.Module, tok.Label, tok.SOPIN, tok.UserPIN, tok.KEKLabel, 4, "template"); err != nil {
		t.Fatal(err)
	}
	h := openToken(t, tok, nil)
	if h.CurrentKEK() != 1 {
		t.Fatalf("current KEK is %d, want 1", h.CurrentKEK())
	}
	if vs, err := h.KEKVersions(ctx); err != nil || !slices.Equal(vs, []uint32{1}) {
		t.Fatalf("usable KEK versions %v, %v; want [1]", vs, err)
	}
	states, err := h.KEKStates(ctx)
	if err != nil {
		t.Fatal(err)
	}
	why := map[uint32]string{2: "CKA_TRUSTED", 3: "modifiable", 4: "unwrap template"}
	if len(states) != 4 {
		t.Fatalf("KEK states %+v", states)
	}
	for _, st := range states {
		if st.Version == 1 {
			if !st.Usable || st.Public || st.Problem != "" {
				t.Errorf("v1: %+v", st)
			}
			continue
		}
		if st.Usable || !strings.Contains(st.Problem, why[st.Version]) {
			t.Errorf("v%d: %+v; want refused for %q", st.Version, st, why[st.Version])
		}
		t.Logf("v%d refused: %s", st.Version, st.Problem)
	}
	// Provisioning works, under v1.
	unlock, err := h.GenerateUnlockKey(ctx)
	if err != nil || unlock.KEKVersion != 1 {
		t.Fatalf("GenerateUnlockKey: %v under KEK %d", err, unlock.KEKVersion)
	}
	if _, err := h.HMAC(ctx, unlock, []byte("x")); err != nil {
		t.Fatal(err)
	}
	// No use of a refused version, by any path.
	for _, v := range []uint32{2, 3, 4} {
		if err := h.UseKEK(ctx, v); !errors.Is(err, hsm.ErrKEKRefused) {
			t.Errorf("UseKEK(%d): %v, want ErrKEKRefused", v, err)
		}
		if _, err := h.RewrapKEK(ctx, hsm.KeyUnlock, unlock, v); !errors.Is(err, hsm.ErrKEKRefused) {
			t.Errorf("RewrapKEK to %d: %v, want ErrKEKRefused", v, err)
		}
		if _, err := h.HMAC(ctx, hsm.WrappedKey{KEKVersion: v, Blob: unlock.Blob}, []byte("x")); !errors.Is(err, hsm.ErrKEKRefused) {
			t.Errorf("a key naming KEK %d: %v, want ErrKEKRefused", v, err)
		}
	}
	if h.CurrentKEK() != 1 {
		t.Fatalf("current KEK is %d after the refusals, want 1", h.CurrentKEK())
	}

	// Planted objects carrying the current KEK's own labels — its unlock
	// KEK's, and the single KEK's of old tokens — are ignored, and
	// reported.
	for _, l := range []string{tok.KEKLabel + "-unlock-v1", tok.KEKLabel + "-v1"} {
		if err := hsm.PlantKEKForTest(tok.Module, tok.Label, l); err != nil {
			t.Fatal(err)
		}
	}
	h2, err := hsm.Open(tok.HSMConfig())
	if err != nil {
		t.Fatalf("Open with a planted twin of v1: %v", err)
	}
	defer h2.Close()
	if _, err := h2.HMAC(ctx, unlock, []byte("x")); err != nil {
		t.Fatalf("the real v1 is not the one used: %v", err)
	}
	states, err = h2.KEKStates(ctx)
	if err != nil || !states[0].Usable || strings.Count(states[0].Problem, "ignored") != 2 {
		t.Fatalf("v1 with a planted twin: %+v, %v", states, err)
	}
	t.Logf("v1: %s", states[0].Problem)
}

// TestOnlyPlantedKEK: a token whose only KEK-labelled object was planted
// is refused at Open, naming why.
func TestOnlyPlantedKEK(t *testing.T) {
	tok := newToken(t)
	cfg := tok.HSMConfig()
	cfg.KEKLabel = "planted"
	if err := hsm.PlantKEKForTest(tok.Module, tok.Label, "planted-v1"); err != nil {
		t.Fatal(err)
	}
	h, err := hsm.Open(cfg)
	if err == nil {
		h.Close()
		t.Fatal("Open used a planted KEK")
	}
	if !errors.Is(err, hsm.ErrKEKRefused) || !strings.Contains(err.Error(), "CKA_TRUSTED") {
		t.Fatalf("Open: %v; want ErrKEKRefused naming CKA_TRUSTED", err)
	}
	t.Log(err)
}

// TestKEKCannotBeAltered measures what CKA_MODIFIABLE=false buys on
// SoftHSM 2.6.1: an attacker with the user PIN can neither drop the KEK's
// unwrap template (CKR_ACTION_PROHIBITED) nor clone it with any attribute
// changed (CKR_ATTRIBUTE_READ_ONLY).
func TestKEKCannotBeAltered(t *testing.T) {
	ctx := context.Background()
	h := openToken(t, newToken(t), nil)
	for attempt, code := range map[string]string{"set": "CKR_ACTION_PROHIBITED", "copy": "CKR_ATTRIBUTE_READ_ONLY", "copy-modifiable": "CKR_ATTRIBUTE_READ_ONLY"} {
		err := h.AlterKEKForTest(ctx, attempt)
		if err == nil || !strings.Contains(err.Error(), code) {
			t.Errorf("%s: %v, want %s", attempt, err, code)
			continue
		}
		t.Logf("%s: refused: %v", attempt, err)
	}
}
