// Package device is a reference of the device side of the key bundle:
// what a PWA does with WebCrypto, written in Go for the tests and for
// escrowctl's development commands. It seals a group data key (GDK) to the
// group's escrow key and opens the member and unlock slots escrowd makes.
package device

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"fmt"
	"hash"

	"github.com/escrowd/escrowd/escrow/bundle"
	"github.com/escrowd/escrowd/escrow/unlockcode"
)

// GDKSize is the size of a group data key: AES-256.
const GDKSize = 32

// NewGDK returns a random group data key.
func NewGDK() ([]byte, error) {
	k := make([]byte, GDKSize)
	_, err := rand.Read(k)
	return k, err
}

func oaepHash(suite string) (hash.Hash, error) {
	switch suite {
	case bundle.SuiteRSAOAEPSHA1:
		return sha1.New(), nil
	case bundle.SuiteRSAOAEPSHA256:
		return sha256.New(), nil
	}
	return nil, fmt.Errorf("not an RSA-OAEP suite: %q", suite)
}

// SealEscrow wraps gdk to the group's escrow public key (PKIX DER).
func SealEscrow(publicKeyDER []byte, version uint32, suite string, gdk []byte) ([]byte, error) {
	w, err := sealRSA(publicKeyDER, suite, gdk)
	if err != nil {
		return nil, err
	}
	s := bundle.Slot{V: bundle.Version, Kind: bundle.KindEscrow, KeyVersion: version, Suite: suite, Wrapped: w}
	return s.Marshal()
}

func sealRSA(publicKeyDER []byte, suite string, gdk []byte) ([]byte, error) {
	h, err := oaepHash(suite)
	if err != nil {
		return nil, err
	}
	pk, err := x509.ParsePKIXPublicKey(publicKeyDER)
	if err != nil {
		return nil, fmt.Errorf("failed to parse the public key: %w", err)
	}
	rk, ok := pk.(*rsa.PublicKey)
	if !ok {
		return nil, fmt.Errorf("public key is %T, want RSA", pk)
	}
	return rsa.EncryptOAEP(h, rand.Reader, rk, gdk, nil)
}

// OpenRSA opens a member, device or escrow slot with the recipient's
// private key.
func OpenRSA(slotJSON []byte, priv *rsa.PrivateKey) ([]byte, error) {
	s, err := bundle.ParseSlot(slotJSON)
	if err != nil {
		return nil, err
	}
	h, err := oaepHash(s.Suite)
	if err != nil {
		return nil, err
	}
	gdk, err := rsa.DecryptOAEP(h, nil, priv, s.Wrapped, nil)
	if err != nil {
		return nil, fmt.Errorf("failed to open the %s slot: %w", s.Kind, err)
	}
	return gdk, nil
}

// Errors of OpenUnlock, distinct so a device can tell the user what to do.
var (
	// ErrWrongCode: the code is well formed but opens a different slot.
	ErrWrongCode = errors.New("this unlock code does not open this device's data")
)

// OpenUnlock opens an unlock slot with a code as the user typed it.
// Errors: unlockcode.ErrFormat or ErrCheck for a mistyped code,
// ErrWrongCode for a valid code that is not this slot's.
func OpenUnlock(slotJSON []byte, typed string) ([]byte, error) {
	s, err := bundle.ParseSlot(slotJSON)
	if err != nil {
		return nil, err
	}
	if s.Kind != bundle.KindUnlock {
		return nil, fmt.Errorf("%w: a %s slot, not an unlock slot", bundle.ErrMalformed, s.Kind)
	}
	code, err := unlockcode.Parse(typed)
	if err != nil {
		return nil, err
	}
	defer code.Clear()
	kek, err := code.DeriveKey(s.KDF.Salt, int(s.KDF.Iterations))
	if err != nil {
		return nil, err
	}
	defer clear(kek)
	gdk, err := UnwrapKey(kek, s.Wrapped)
	if errors.Is(err, ErrUnwrap) {
		return nil, ErrWrongCode
	}
	return gdk, err
}
