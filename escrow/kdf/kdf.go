// Package kdf holds every key derivation of the key bundle format
// (docs/FORMAT.md), in one place that the HSM layer, the bundle codec and
// the reference device share. Each function is what a browser computes
// with WebCrypto; the doc comments name the calls.
package kdf

import (
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/pbkdf2"
	"crypto/sha256"
	"errors"
	"fmt"
)

// KeySize is the size of every derived key: AES-256.
const KeySize = 32

// Labels that separate the derivations of different slot kinds.
const (
	ECDHLabel    = "escrowd ecdh-p256 v1"
	PasskeyLabel = "escrowd passkey-prf v1"
)

// P256PointSize is an uncompressed P-256 point: 0x04 || X || Y.
const P256PointSize = 65

// ErrInput is returned for inputs of the wrong shape.
var ErrInput = errors.New("kdf: invalid input")

// ECDHMessage is the HMAC input of the ecdh-p256 suite:
//
//	"escrowd ecdh-p256 v1" || 0x00 || u8(len(kind)) || kind || epk || rpk || 0x01
//
// where epk is the slot's ephemeral public key and rpk the recipient's
// public key, both uncompressed points (65 bytes). The trailing 0x01 makes
// HMAC-SHA256(Z, message) exactly HKDF-Expand(PRK = Z, info, 32) of
// RFC 5869, with info = the message without its last byte.
func ECDHMessage(kind string, epk, rpk []byte) ([]byte, error) {
	if len(kind) == 0 || len(kind) > 255 {
		return nil, fmt.Errorf("%w: slot kind of %d bytes", ErrInput, len(kind))
	}
	if len(epk) != P256PointSize || epk[0] != 4 || len(rpk) != P256PointSize || rpk[0] != 4 {
		return nil, fmt.Errorf("%w: public keys must be uncompressed P-256 points", ErrInput)
	}
	b := make([]byte, 0, len(ECDHLabel)+2+len(kind)+2*P256PointSize+1)
	b = append(b, ECDHLabel...)
	b = append(b, 0, byte(len(kind)))
	b = append(b, kind...)
	b = append(b, epk...)
	b = append(b, rpk...)
	return append(b, 1), nil
}

// ECDHKey returns the AES-KW key of an ecdh-p256 slot:
// HMAC-SHA256(key = Z, message), Z being the 32-byte ECDH shared secret
// (the x coordinate). WebCrypto: deriveBits({name: "ECDH", public}, 256)
// → importKey("raw", Z, {name: "HMAC", hash: "SHA-256"}) → sign("HMAC").
func ECDHKey(z, message []byte) ([]byte, error) {
	if len(z) != 32 {
		return nil, fmt.Errorf("%w: ECDH secret of %d bytes, want 32", ErrInput, len(z))
	}
	m := hmac.New(sha256.New, z)
	m.Write(message)
	return m.Sum(nil), nil
}

// PasskeyKey returns the AES-KW key of a passkey-prf slot:
// HKDF-SHA256(IKM = the WebAuthn PRF output, salt, info = PasskeyLabel).
// WebCrypto: importKey("raw", prf, "HKDF") → deriveKey({name: "HKDF",
// hash: "SHA-256", salt, info}, …, {name: "AES-KW", length: 256}).
func PasskeyKey(prf, salt []byte) ([]byte, error) {
	if len(prf) < 32 {
		return nil, fmt.Errorf("%w: PRF output of %d bytes, want at least 32", ErrInput, len(prf))
	}
	return hkdf.Key(sha256.New, prf, salt, PasskeyLabel, KeySize)
}

// PasswordKey returns the AES-KW key of a password or unlock slot:
// PBKDF2-HMAC-SHA256(secret, salt, iterations, 32 bytes). WebCrypto:
// importKey("raw", utf8(secret), "PBKDF2") → deriveKey({name: "PBKDF2",
// hash: "SHA-256", salt, iterations}, …, {name: "AES-KW", length: 256}).
func PasswordKey(secret []byte, salt []byte, iterations int) ([]byte, error) {
	if iterations < 1 {
		return nil, fmt.Errorf("%w: %d PBKDF2 iterations", ErrInput, iterations)
	}
	return pbkdf2.Key(sha256.New, string(secret), salt, iterations, KeySize)
}

// CheckLabel is the message of a key check value.
const CheckLabel = "escrowd key check v1"

// CheckValue is the first 8 bytes of HMAC-SHA256(key, CheckLabel): stored
// in password, passkey-prf and unlock slots so that a device can tell a
// wrong secret (the check differs) from a damaged slot (the check matches
// but AES-KW's integrity check fails). It costs an attacker nothing extra
// to use, and gives nothing AES-KW's own check did not: the KDF dominates.
// WebCrypto: importKey("raw", key, {name: "HMAC", hash: "SHA-256"}) →
// sign("HMAC", CheckLabel), first 8 bytes.
func CheckValue(key []byte) []byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(CheckLabel))
	return m.Sum(nil)[:8]
}
