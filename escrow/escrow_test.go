package escrow

import (
	"crypto/ecdh"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"testing"

	"github.com/escrowd/escrowd/escrow/bundle"
	"github.com/escrowd/escrowd/escrow/unlockcode"
)

func TestCheckPublicKey(t *testing.T) {
	ec, _ := ecdh.P256().GenerateKey(rand.Reader)
	ecDER, _ := x509.MarshalPKIXPublicKey(ec.PublicKey())
	x, _ := ecdh.X25519().GenerateKey(rand.Reader)
	xDER, _ := x509.MarshalPKIXPublicKey(x.PublicKey())
	tests := []struct {
		name, suite string
		der         []byte
		ok          bool
	}{
		{"p256 for ecdh", bundle.SuiteECDHP256, ecDER, true},
		{"p256 for rsa", bundle.SuiteRSAOAEPSHA1, ecDER, false},
		{"x25519 for ecdh", bundle.SuiteECDHP256, xDER, false},
		{"garbage", bundle.SuiteECDHP256, []byte{0x30, 0x03, 1, 2, 3}, false},
		{"empty", bundle.SuiteECDHP256, nil, false},
	}
	for _, tt := range tests {
		err := CheckPublicKey(tt.suite, tt.der)
		if (err == nil) != tt.ok || (err != nil && !errors.Is(err, ErrInvalid)) {
			t.Errorf("%s: %v", tt.name, err)
		}
	}
}

// FuzzCheckPublicKey: recipient public keys are outside bytes.
func FuzzCheckPublicKey(f *testing.F) {
	ec, _ := ecdh.P256().GenerateKey(rand.Reader)
	ecDER, _ := x509.MarshalPKIXPublicKey(ec.PublicKey())
	f.Add(ecDER, true)
	f.Add([]byte{}, false)
	f.Fuzz(func(t *testing.T, der []byte, ecdhSuite bool) {
		suite := bundle.SuiteRSAOAEPSHA1
		if ecdhSuite {
			suite = bundle.SuiteECDHP256
		}
		if err := CheckPublicKey(suite, der); err != nil && !errors.Is(err, ErrInvalid) {
			t.Fatalf("error %v does not wrap ErrInvalid", err)
		}
	})
}

// TestUnlockCost: docs/FORMAT.md's claim, 70 bits × 2^16 PBKDF2 iterations
// ≥ 2^80 work per unlock slot, holds for the constants the code enforces,
// and the service refuses a configuration below the floor.
func TestUnlockCost(t *testing.T) {
	bits := unlockcode.DataBits
	for n := bundle.MinUnlockIterations; n > 1; n >>= 1 {
		bits++
	}
	if unlockcode.DataBits != 70 || bits != 86 || bits < 80 {
		t.Fatalf("entropy %d bits, cost 2^%d", unlockcode.DataBits, bits)
	}
	if _, err := New(nil, nil, Config{UnlockIterations: bundle.MinUnlockIterations - 1}); err == nil {
		t.Fatal("New accepted fewer unlock iterations than the floor")
	}
}
