package hsm_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/escrowd/escrowd/format"
	"github.com/escrowd/escrowd/hsm"
	"github.com/escrowd/escrowd/softhsm"
)

// tokenLossChild is set in the child process TestTokenLoss runs in.
const tokenLossChild = "ESCROWD_HSM_TOKEN_LOSS_CHILD"

// TestTokenLoss: with the SoftHSM token's directory moved away under an
// open HSM value, every operation and Healthy fail with ErrUnavailable
// (recovery finds no token), also after the module was re-initialised in
// vain; with the directory back, the same value recovers by itself —
// module re-initialised, token found, logged in, KEK found — and a key
// wrapped before the loss opens to the same HMAC.
//
// It runs in a child process of its own: recovery re-initialises the
// module only when one HSM value uses it, and this test binary keeps
// others open (the shared token).
func TestTokenLoss(t *testing.T) {
	if os.Getenv(tokenLossChild) == "" {
		cmd := exec.Command(os.Args[0], "-test.run=^TestTokenLoss$", "-test.v", "-test.count=1")
		for _, e := range os.Environ() {
			if !strings.HasPrefix(e, softhsm.EnvConf+"=") {
				cmd.Env = append(cmd.Env, e)
			}
		}
		cmd.Env = append(cmd.Env, tokenLossChild+"=1")
		out, err := cmd.CombinedOutput()
		t.Logf("child process:\n%s", out)
		if err != nil || !bytes.Contains(out, []byte("--- PASS: TestTokenLoss")) {
			t.Fatalf("child process: %v", err)
		}
		return
	}
	ctx := context.Background()
	tok := newToken(t)
	// Hot escrow keys on: a key kept before the loss must not be used
	// after it (its handle is gone, or names another object once the
	// module is re-initialised).
	h := openToken(t, tok, func(c *hsm.Config) {
		c.Sessions = 2
		c.WaitTimeout = time.Second
		c.HotKeys = 4
		c.HotKeyTTL = time.Hour
	})
	k, err := h.GenerateUnlockKey(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want, err := h.HMAC(ctx, k, []byte("m"))
	if err != nil {
		t.Fatal(err)
	}
	ecPub, ecPriv, err := h.GenerateEscrowKey(ctx, hsm.SuiteECDHP256)
	if err != nil {
		t.Fatal(err)
	}
	src := escrowSource(t, ecPub, ecPriv, "g", 1, randBytes(t, 32))
	tg := []hsm.Target{{AESKey: randBytes(t, 32), Context: &format.SlotContext{Kind: "unlock", Suite: "pbkdf2-sha256-aes-kw", Group: "g", GDKVersion: 1, KeyVersion: 1, ID: "u"}}}
	for range 2 {
		if _, err := h.RewrapSlot(ctx, src, tg); err != nil {
			t.Fatal(err)
		}
	}
	ops := []struct {
		name string
		run  func() error
	}{
		{"HMAC", func() error {
			got, err := h.HMAC(ctx, k, []byte("m"))
			if err == nil && !bytes.Equal(got, want) {
				err = errors.New("another HMAC than before the loss")
			}
			return err
		}},
		{"GenerateUnlockKey", func() error { _, err := h.GenerateUnlockKey(ctx); return err }},
		{"GenerateEscrowKey", func() error { _, _, err := h.GenerateEscrowKey(ctx, hsm.SuiteECDHP256); return err }},
		{"Objects", func() error { _, err := h.Objects(ctx); return err }},
		{"RewrapSlot", func() error { _, err := h.RewrapSlot(ctx, src, tg); return err }},
		{"Healthy", func() error { return h.Healthy(ctx) }},
	}

	// Away is outside the token directory: a re-initialised SoftHSM finds
	// a token in any folder under it.
	dir, away := softhsmTokenDir(t, tok), filepath.Join(tok.Dir, "away")
	if err := os.Rename(dir, away); err != nil {
		t.Fatal(err)
	}
	back := false
	t.Cleanup(func() {
		if !back {
			os.Rename(away, dir)
		}
	})
	// Twice, more than a re-initialisation interval apart: the second
	// round re-initialises the module and still finds no token.
	for round := range 2 {
		for _, op := range ops {
			if err := op.run(); !errors.Is(err, hsm.ErrUnavailable) {
				t.Fatalf("round %d: %s with the token gone: %v, want ErrUnavailable", round, op.name, err)
			} else if round == 0 {
				t.Logf("%s with the token gone: %v", op.name, err)
			}
		}
		time.Sleep(1100 * time.Millisecond)
	}

	if err := os.Rename(away, dir); err != nil {
		t.Fatal(err)
	}
	back = true
	// The health check is what notices first in the daemon (every 5 s).
	var herr error
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if herr = h.Healthy(ctx); herr == nil {
			break
		}
	}
	if herr != nil {
		t.Fatalf("Healthy with the token back: %v", herr)
	}
	for _, op := range ops {
		if err := op.run(); err != nil {
			t.Fatalf("%s with the token back: %v", op.name, err)
		}
	}
}

// softhsmTokenDir is the directory SoftHSM keeps tok in.
func softhsmTokenDir(t *testing.T, tok *softhsm.Token) string {
	t.Helper()
	root := filepath.Join(tok.Dir, "tokens")
	ents, err := os.ReadDir(root)
	if err != nil {
		t.Fatal(err)
	}
	var found []string
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(root, e.Name(), "token.object"))
		if err == nil && bytes.Contains(b, []byte(tok.Label)) {
			found = append(found, filepath.Join(root, e.Name()))
		}
	}
	if len(found) != 1 {
		t.Fatalf("%d token directories hold label %q", len(found), tok.Label)
	}
	return found[0]
}

// TestTokenLossSharedModule: when another HSM value shares the module, the
// one whose token went away does not re-initialise the module under the
// other: it fails with ErrUnavailable, and the other value's operations go
// on unharmed.
func TestTokenLossSharedModule(t *testing.T) {
	ctx := context.Background()
	tokA, tokB := newToken(t), newToken(t)
	a := openToken(t, tokA, nil)
	b := openToken(t, tokB, nil)
	ka, err := a.GenerateUnlockKey(ctx)
	if err != nil {
		t.Fatal(err)
	}
	kb, err := b.GenerateUnlockKey(ctx)
	if err != nil {
		t.Fatal(err)
	}
	dir, away := softhsmTokenDir(t, tokA), filepath.Join(tokA.Dir, "away-"+tokA.Label)
	if err := os.Rename(dir, away); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Rename(away, dir) })
	for round := range 2 {
		if _, err := a.HMAC(ctx, ka, []byte("m")); !errors.Is(err, hsm.ErrUnavailable) {
			t.Fatalf("round %d: HMAC on the token gone: %v, want ErrUnavailable", round, err)
		}
		if _, err := b.HMAC(ctx, kb, []byte("m")); err != nil {
			t.Fatalf("round %d: HMAC on the other token: %v", round, err)
		}
		if err := b.Healthy(ctx); err != nil {
			t.Fatalf("round %d: the other token: %v", round, err)
		}
		time.Sleep(1100 * time.Millisecond)
	}
}
