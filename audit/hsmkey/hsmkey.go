// Package hsmkey keeps the audit trail's chain key in the HSM: an
// HMAC-SHA256 key made inside it, stored (in Vault, beside the trail) only
// wrapped under the HSM's master KEK, and used only inside it. Whoever can
// write the trail's Vault entries but cannot use the HSM cannot make a
// batch that verifies.
package hsmkey

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/escrowd/escrowd/audit"
	"github.com/escrowd/escrowd/hsm"
)

// HSM is what the chain key needs of the HSM: a fresh HMAC key, wrapped,
// and HMAC under a wrapped key.
type HSM interface {
	GenerateUnlockKey(ctx context.Context) (hsm.WrappedKey, error)
	HMAC(ctx context.Context, key hsm.WrappedKey, msg []byte) ([]byte, error)
}

// Keyer is an audit.Keyer over an HSM.
type Keyer struct{ HSM HSM }

var _ audit.Keyer = Keyer{}

// NewChainKey makes a key in the HSM and returns it wrapped, as Encode
// stores it.
func (k Keyer) NewChainKey(ctx context.Context) ([]byte, error) {
	wk, err := k.HSM.GenerateUnlockKey(ctx)
	if err != nil {
		return nil, err
	}
	return Encode(wk), nil
}

// ChainMAC computes HMAC-SHA256 under a stored key, inside the HSM.
func (k Keyer) ChainMAC(ctx context.Context, stored, msg []byte) ([]byte, error) {
	wk, err := Decode(stored)
	if err != nil {
		return nil, err
	}
	return k.HSM.HMAC(ctx, wk, msg)
}

// ErrBadKey: stored bytes that are not a wrapped chain key.
var ErrBadKey = errors.New("not a wrapped chain key")

const (
	version    = 1
	headerSize = 5 // version, KEK version (uint32)
	// AES-KWP of a 32-byte key is 40 bytes; allow other key sizes a module
	// may produce, within reason.
	minBlob, maxBlob = 24, 1024
)

// Encode stores a wrapped key: a version byte, the KEK version
// (big-endian uint32), then the blob.
func Encode(wk hsm.WrappedKey) []byte {
	b := []byte{version}
	b = binary.BigEndian.AppendUint32(b, wk.KEKVersion)
	return append(b, wk.Blob...)
}

// Decode reads what Encode stored. The bytes come from Vault, so they are
// checked: the version, a KEK version above 0, a blob of sane size.
func Decode(b []byte) (hsm.WrappedKey, error) {
	if len(b) < headerSize {
		return hsm.WrappedKey{}, fmt.Errorf("%w: %d bytes", ErrBadKey, len(b))
	}
	if b[0] != version {
		return hsm.WrappedKey{}, fmt.Errorf("%w: version %d", ErrBadKey, b[0])
	}
	kv := binary.BigEndian.Uint32(b[1:headerSize])
	if kv == 0 {
		return hsm.WrappedKey{}, fmt.Errorf("%w: KEK version 0", ErrBadKey)
	}
	blob := b[headerSize:]
	if len(blob) < minBlob || len(blob) > maxBlob {
		return hsm.WrappedKey{}, fmt.Errorf("%w: a wrapped key of %d bytes", ErrBadKey, len(blob))
	}
	return hsm.WrappedKey{KEKVersion: kv, Blob: append([]byte(nil), blob...)}, nil
}
