package escrow

import (
	"context"
	"crypto/ecdh"
	"crypto/rand"
	"crypto/x509"
	"path/filepath"
	"testing"

	"github.com/escrowd/escrowd/hsm"
	"github.com/escrowd/escrowd/store/bolt"
)

// droppingHSM is an HSM that keeps escrow keys: it counts DropHotKeys.
// Only key generation is called by the paths under test.
type droppingHSM struct {
	HSM
	drops int
}

func (d *droppingHSM) DropHotKeys() { d.drops++ }

func (d *droppingHSM) GenerateEscrowKey(context.Context, hsm.Suite) ([]byte, hsm.WrappedKey, error) {
	k, err := ecdh.P256().GenerateKey(rand.Reader)
	if err != nil {
		return nil, hsm.WrappedKey{}, err
	}
	der, err := x509.MarshalPKIXPublicKey(k.PublicKey())
	return der, hsm.WrappedKey{KEKVersion: 1, Blob: []byte("wrapped escrow key")}, err
}

func (d *droppingHSM) GenerateUnlockKey(context.Context) (hsm.WrappedKey, error) {
	return hsm.WrappedKey{KEKVersion: 1, Blob: []byte("wrapped unlock key")}, nil
}

// TestDropHotKeys: rotating a group's escrow key and destroying an escrow
// key version make the HSM destroy the escrow keys it keeps; unlock key
// changes and refused destroys do not.
func TestDropHotKeys(t *testing.T) {
	ctx := context.Background()
	st, err := bolt.Open(filepath.Join(t.TempDir(), "s.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	h := &droppingHSM{}
	s, err := New(h, st, Config{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Provision(ctx, "g", ""); err != nil {
		t.Fatal(err)
	}
	steps := []struct {
		name  string
		run   func() error
		drops int
	}{
		{"rotate the unlock key", func() error { _, err := s.RotateGroup(ctx, "g", false, true); return err }, 0},
		{"rotate the escrow key", func() error { _, err := s.RotateGroup(ctx, "g", true, false); return err }, 1},
		{"destroy an escrow version still in use (refused)", func() error {
			if _, err := s.DestroyVersion(ctx, "g", KindEscrow, 1); err == nil {
				t.Error("destroying escrow version 1 before it is retired succeeded")
			}
			return nil
		}, 0},
		{"retire escrow version 1", func() error { _, err := s.SetMinVersions(ctx, "g", 2, 0); return err }, 0},
		{"destroy escrow version 1", func() error { _, err := s.DestroyVersion(ctx, "g", KindEscrow, 1); return err }, 1},
	}
	for _, st := range steps {
		before := h.drops
		if err := st.run(); err != nil {
			t.Fatalf("%s: %v", st.name, err)
		}
		if got := h.drops - before; got != st.drops {
			t.Errorf("%s: DropHotKeys called %d times, want %d", st.name, got, st.drops)
		}
	}
}
