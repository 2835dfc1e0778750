// Package device is a reference of the device side of the key bundle,
// format version 2: what a PWA does with WebCrypto, written in Go for the
// tests and for the vectors. It seals and opens every slot kind of
// docs/FORMAT.md, checks every slot's commitment and binding, keeps the
// GDKs a device trusts (Keyring), and encrypts and decrypts records.
package device

import (
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
	"github.com/escrowd/escrowd/format"
)

// GDKSize is the size of a group data key: AES-256.
const GDKSize = format.KeySize

// NewGDK returns a random group data key.
func NewGDK() ([]byte, error) {
	k := make([]byte, GDKSize)
	_, err := rand.Read(k)
	return k, err
}

// To names the slot being sealed: the group and version of the GDK it
// holds, the version of the key it is wrapped to, and the recipient (""
// for escrow and chain slots).
type To struct {
	Group      string
	GDKVersion uint32
	KeyVersion uint32
	ID         string
}

// Want is what the device expects of a slot it opens: the group it is
// opening and its own recipient id ("" for escrow and chain slots). A slot
// naming anything else is refused before it is opened.
type Want struct {
	Group string
	ID    string
}

func (t To) slot(kind bundle.Kind, suite string) bundle.Slot {
	return bundle.Slot{Kind: kind, Suite: suite, Group: t.Group, GDKVersion: t.GDKVersion, KeyVersion: t.KeyVersion, ID: t.ID}
}

// seal fills s's commitment and binding for gdk, and encodes it.
func seal(s *bundle.Slot, gdk []byte) ([]byte, error) {
	s.Commit = format.Commitment(s.Group, s.GDKVersion, gdk)
	var err error
	if s.Bind, err = format.Bind(gdk, s.Context()); err != nil {
		return nil, err
	}
	return s.Marshal()
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

// SealEscrow wraps gdk to the group's escrow public key (PKIX DER); to.ID
// must be empty and to.KeyVersion is the escrow key's version.
func SealEscrow(publicKeyDER []byte, to To, suite string, gdk []byte) ([]byte, error) {
	return SealPublic(bundle.KindEscrow, to, suite, publicKeyDER, gdk)
}

// SealPublic wraps gdk to a public key (PKIX DER): an escrow, member or
// device slot. suite is rsa-oaep-sha1, rsa-oaep-sha256 (RSA keys) or
// ecdh-p256 (P-256 keys).
func SealPublic(kind bundle.Kind, to To, suite string, publicKeyDER, gdk []byte) ([]byte, error) {
	s := to.slot(kind, suite)
	var err error
	if suite == bundle.SuiteECDHP256 {
		s.EPK, s.Wrapped, err = sealECDH(publicKeyDER, gdk)
	} else {
		s.Wrapped, err = sealRSA(publicKeyDER, suite, gdk)
	}
	if err != nil {
		return nil, err
	}
	return seal(&s, gdk)
}

func sealECDH(publicKeyDER []byte, gdk []byte) (epk, wrapped []byte, err error) {
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
	key, err := ecdhKey(eph, pub, epk, pub.Bytes())
	if err != nil {
		return nil, nil, err
	}
	defer clear(key)
	wrapped, err = WrapKey(key, gdk)
	return epk, wrapped, err
}

// ecdhKey is the slot key format.ECDHKey(Z, format.ECDHInfo(epk, rpk)).
func ecdhKey(priv *ecdh.PrivateKey, peer *ecdh.PublicKey, epk, rpk []byte) ([]byte, error) {
	z, err := priv.ECDH(peer)
	if err != nil {
		return nil, err
	}
	defer clear(z)
	info, err := format.ECDHInfo(epk, rpk)
	if err != nil {
		return nil, err
	}
	return format.ECDHKey(z, info)
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

// OpenPublic opens an escrow, member or device slot with the recipient's
// private key: *rsa.PrivateKey for the rsa-oaep suites, *ecdh.PrivateKey
// (P-256) for ecdh-p256. It returns the GDK and the decoded slot (whose
// GDKVersion and Commit say which GDK it is). ErrWrongKey: the key is not
// the slot's, or the wrapped key was altered (public-key slots cannot tell
// the two apart); ErrBinding, ErrCommitment: see Verify.
func OpenPublic(slotJSON []byte, want Want, priv crypto.PrivateKey) ([]byte, *bundle.Slot, error) {
	s, err := bundle.ParseSlot(slotJSON)
	if err != nil {
		return nil, nil, err
	}
	if !bundle.PublicKeySuite(s.Suite) {
		return nil, nil, fmt.Errorf("%w: a %s slot is not opened with a private key", ErrWrongKey, s.Kind)
	}
	if err := want.check(s); err != nil {
		return nil, nil, err
	}
	var gdk []byte
	switch k := priv.(type) {
	case *rsa.PrivateKey:
		h, err := oaepHash(s.Suite)
		if err != nil {
			return nil, nil, fmt.Errorf("%w: %w", ErrWrongKey, err)
		}
		if gdk, err = rsa.DecryptOAEP(h, nil, k, s.Wrapped, nil); err != nil {
			return nil, nil, fmt.Errorf("failed to open the %s slot: %w", s.Kind, ErrWrongKey)
		}
	case *ecdh.PrivateKey:
		if s.Suite != bundle.SuiteECDHP256 || k.Curve() != ecdh.P256() {
			return nil, nil, fmt.Errorf("%w: a %s slot, with a P-256 key", ErrWrongKey, s.Suite)
		}
		peer, err := ecdh.P256().NewPublicKey(s.EPK)
		if err != nil {
			return nil, nil, fmt.Errorf("%w: epk", bundle.ErrMalformed)
		}
		key, err := ecdhKey(k, peer, s.EPK, k.PublicKey().Bytes())
		if err != nil {
			return nil, nil, err
		}
		defer clear(key)
		if gdk, err = UnwrapKey(key, s.Wrapped); err != nil {
			return nil, nil, fmt.Errorf("failed to open the %s slot: %w", s.Kind, ErrWrongKey)
		}
	default:
		return nil, nil, fmt.Errorf("private key is a %T, want *rsa.PrivateKey or *ecdh.PrivateKey", priv)
	}
	if err := Verify(s, gdk); err != nil {
		clear(gdk)
		return nil, nil, err
	}
	return gdk, s, nil
}
