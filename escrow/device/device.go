// Package device is a reference of the device side of the key bundle:
// what a PWA does with WebCrypto, written in Go for the tests and for
// escrowctl's development commands. It seals and opens every slot kind of
// docs/FORMAT.md, and encrypts and decrypts records under a GDK.
package device

import (
	"bytes"
	"crypto"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/x509"
	"fmt"
	"hash"

	"github.com/escrowd/escrowd/escrow/bundle"
	"github.com/escrowd/escrowd/escrow/kdf"
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
	return SealPublic(bundle.KindEscrow, "", version, suite, publicKeyDER, gdk)
}

// SealPublic wraps gdk to a public key (PKIX DER): an escrow slot (id ""),
// or a member or device slot. suite is rsa-oaep-sha1, rsa-oaep-sha256 (RSA
// keys) or ecdh-p256 (P-256 keys).
func SealPublic(kind bundle.Kind, id string, keyVersion uint32, suite string, publicKeyDER, gdk []byte) ([]byte, error) {
	s := bundle.Slot{V: bundle.Version, Kind: kind, KeyVersion: keyVersion, Suite: suite, ID: id}
	var err error
	if suite == bundle.SuiteECDHP256 {
		s.EPK, s.Wrapped, err = sealECDH(publicKeyDER, string(kind), gdk)
	} else {
		s.Wrapped, err = sealRSA(publicKeyDER, suite, gdk)
	}
	if err != nil {
		return nil, err
	}
	return s.Marshal()
}

func sealECDH(publicKeyDER []byte, kind string, gdk []byte) (epk, wrapped []byte, err error) {
	pk, err := x509.ParsePKIXPublicKey(publicKeyDER)
	if err != nil {
		return nil, nil, fmt.Errorf("failed to parse the public key: %w", err)
	}
	ek, ok := pk.(*ecdsa.PublicKey)
	if !ok || ek.Curve != elliptic.P256() {
		return nil, nil, fmt.Errorf("public key is %T, want EC P-256", pk)
	}
	pub, err := ek.ECDH()
	if err != nil {
		return nil, nil, err
	}
	eph, err := ecdh.P256().GenerateKey(rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	epk = eph.PublicKey().Bytes()
	key, err := ecdhKey(eph, pub, kind, epk)
	if err != nil {
		return nil, nil, err
	}
	defer clear(key)
	wrapped, err = WrapKey(key, gdk)
	return epk, wrapped, err
}

// ecdhKey is the slot key: HMAC-SHA256(Z, kdf.ECDHMessage(kind, epk,
// recipient)), where the recipient is whichever side is not ephemeral.
func ecdhKey(priv *ecdh.PrivateKey, peer *ecdh.PublicKey, kind string, epk []byte) ([]byte, error) {
	z, err := priv.ECDH(peer)
	if err != nil {
		return nil, err
	}
	defer clear(z)
	rpk := peer.Bytes()
	if bytes.Equal(rpk, epk) {
		rpk = priv.PublicKey().Bytes()
	}
	msg, err := kdf.ECDHMessage(kind, epk, rpk)
	if err != nil {
		return nil, err
	}
	return kdf.ECDHKey(z, msg)
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
	return OpenPublic(slotJSON, priv)
}

// OpenPublic opens an escrow, member or device slot with the recipient's
// private key: *rsa.PrivateKey for the rsa-oaep suites, *ecdh.PrivateKey
// (P-256) for ecdh-p256. ErrWrongKey: the key is not the slot's, or the
// slot was altered (public-key slots cannot tell the two apart).
func OpenPublic(slotJSON []byte, priv crypto.PrivateKey) ([]byte, error) {
	s, err := bundle.ParseSlot(slotJSON)
	if err != nil {
		return nil, err
	}
	if !bundle.PublicKeySuite(s.Suite) {
		return nil, fmt.Errorf("%w: a %s slot is not opened with a private key", bundle.ErrMalformed, s.Kind)
	}
	switch k := priv.(type) {
	case *rsa.PrivateKey:
		h, err := oaepHash(s.Suite)
		if err != nil {
			return nil, fmt.Errorf("%w: %w", ErrWrongKey, err)
		}
		gdk, err := rsa.DecryptOAEP(h, nil, k, s.Wrapped, nil)
		if err != nil {
			return nil, fmt.Errorf("failed to open the %s slot: %w", s.Kind, ErrWrongKey)
		}
		return gdk, nil
	case *ecdh.PrivateKey:
		if s.Suite != bundle.SuiteECDHP256 || k.Curve() != ecdh.P256() {
			return nil, fmt.Errorf("%w: a %s slot, with a P-256 key", ErrWrongKey, s.Suite)
		}
		peer, err := ecdh.P256().NewPublicKey(s.EPK)
		if err != nil {
			return nil, fmt.Errorf("%w: epk", bundle.ErrMalformed)
		}
		key, err := ecdhKey(k, peer, string(s.Kind), s.EPK)
		if err != nil {
			return nil, err
		}
		defer clear(key)
		gdk, err := UnwrapKey(key, s.Wrapped)
		if err != nil {
			return nil, fmt.Errorf("failed to open the %s slot: %w", s.Kind, ErrWrongKey)
		}
		return gdk, nil
	}
	return nil, fmt.Errorf("private key is a %T, want *rsa.PrivateKey or *ecdh.PrivateKey", priv)
}
