// Package auth signs and verifies the sync backend's device requests.
//
// Every request carries four headers: the device id, the time, a fresh
// nonce and an ECDSA P-256 signature (SHA-256, IEEE P1363 r||s, which is
// what WebCrypto's sign gives) over Message: the method, the request URI,
// the device id, the time, the nonce and the SHA-256 of the body. The key
// is the device's non-extractable WebCrypto key; the backend holds only
// its public half, bound to the device id at enrolment. The backend
// accepts a time within its window of its own clock and each nonce once
// per window, so a captured request cannot be replayed.
package auth

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"math/big"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/escrowd/escrowd/escrow/bundle"
)

// The request headers.
const (
	HeaderDevice    = "Sync-Device"
	HeaderTime      = "Sync-Time"
	HeaderNonce     = "Sync-Nonce"
	HeaderSignature = "Sync-Signature"
)

// Errors of ParseHeaders and Verify.
var (
	ErrMissing   = errors.New("auth: a signature header is missing")
	ErrMalformed = errors.New("auth: malformed signature header")
	ErrKey       = errors.New("auth: not a P-256 public key")
	ErrSignature = errors.New("auth: signature does not verify")
)

// NonceSize is the nonce's size in bytes; it travels as unpadded base64url.
const NonceSize = 16

// Headers are a request's signature headers, decoded.
type Headers struct {
	Device    string
	Time      int64
	Nonce     string
	Signature []byte
}

// ParseHeaders decodes the signature headers of h. Each must appear once.
func ParseHeaders(h http.Header) (Headers, error) {
	var out Headers
	one := func(name string) (string, error) {
		v := h.Values(name)
		switch len(v) {
		case 0:
			return "", fmt.Errorf("%w: %s", ErrMissing, name)
		case 1:
			return v[0], nil
		}
		return "", fmt.Errorf("%w: %s appears %d times", ErrMalformed, name, len(v))
	}
	dev, err := one(HeaderDevice)
	if err != nil {
		return out, err
	}
	if err := bundle.ValidateID(dev); err != nil {
		return out, fmt.Errorf("%w: %s: %w", ErrMalformed, HeaderDevice, err)
	}
	ts, err := one(HeaderTime)
	if err != nil {
		return out, err
	}
	t, err := strconv.ParseInt(ts, 10, 64)
	if err != nil || t < 0 || ts != strconv.FormatInt(t, 10) {
		return out, fmt.Errorf("%w: %s must be unix seconds in decimal", ErrMalformed, HeaderTime)
	}
	nonce, err := one(HeaderNonce)
	if err != nil {
		return out, err
	}
	if n, err := base64.RawURLEncoding.Strict().DecodeString(nonce); err != nil || len(n) != NonceSize {
		return out, fmt.Errorf("%w: %s must be %d bytes in unpadded base64url", ErrMalformed, HeaderNonce, NonceSize)
	}
	sig, err := one(HeaderSignature)
	if err != nil {
		return out, err
	}
	s, err := base64.RawURLEncoding.Strict().DecodeString(sig)
	if err != nil || len(s) != 64 {
		return out, fmt.Errorf("%w: %s must be a 64-byte P1363 signature in unpadded base64url", ErrMalformed, HeaderSignature)
	}
	return Headers{Device: dev, Time: t, Nonce: nonce, Signature: s}, nil
}

// Message is the byte string a device signs.
func Message(method, requestURI, device string, t int64, nonce string, body []byte) []byte {
	sum := sha256.Sum256(body)
	return []byte(strings.Join([]string{"escrowd-syncbackend-v1", method, requestURI, device, strconv.FormatInt(t, 10), nonce, hex.EncodeToString(sum[:])}, "\n"))
}

// ApprovalMessage is what an enrolled device signs to approve another
// device of its account: the new device's id and the hashes of its keys.
func ApprovalMessage(account, device string, signKey, wrapKey []byte) []byte {
	s, w := sha256.Sum256(signKey), sha256.Sum256(wrapKey)
	return []byte(strings.Join([]string{"escrowd-syncbackend-approve-v1", account, device, hex.EncodeToString(s[:]), hex.EncodeToString(w[:])}, "\n"))
}

// ParsePublicKey parses a PKIX DER P-256 public key.
func ParsePublicKey(der []byte) (*ecdsa.PublicKey, error) {
	k, err := x509.ParsePKIXPublicKey(der)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrKey, err)
	}
	ek, ok := k.(*ecdsa.PublicKey)
	if !ok || ek.Curve != elliptic.P256() {
		return nil, ErrKey
	}
	return ek, nil
}

// Verify checks a P1363 signature of msg under the PKIX DER key pub.
func Verify(pub, msg, sig []byte) error {
	k, err := ParsePublicKey(pub)
	if err != nil {
		return err
	}
	if len(sig) != 64 {
		return ErrSignature
	}
	sum := sha256.Sum256(msg)
	r, s := new(big.Int).SetBytes(sig[:32]), new(big.Int).SetBytes(sig[32:])
	if !ecdsa.Verify(k, sum[:], r, s) {
		return ErrSignature
	}
	return nil
}

// SignBytes signs msg as WebCrypto would: P1363 r||s.
func SignBytes(key *ecdsa.PrivateKey, msg []byte) ([]byte, error) {
	sum := sha256.Sum256(msg)
	r, s, err := ecdsa.Sign(rand.Reader, key, sum[:])
	if err != nil {
		return nil, err
	}
	out := make([]byte, 64)
	r.FillBytes(out[:32])
	s.FillBytes(out[32:])
	return out, nil
}

// Sign adds the signature headers to req, whose body is body: what a
// device does (the Go twin of the browser's code, for tests and tools).
func Sign(req *http.Request, body []byte, device string, key *ecdsa.PrivateKey, now time.Time) error {
	n := make([]byte, NonceSize)
	if _, err := rand.Read(n); err != nil {
		return err
	}
	nonce := base64.RawURLEncoding.EncodeToString(n)
	sig, err := SignBytes(key, Message(req.Method, req.URL.RequestURI(), device, now.Unix(), nonce, body))
	if err != nil {
		return err
	}
	req.Header.Set(HeaderDevice, device)
	req.Header.Set(HeaderTime, strconv.FormatInt(now.Unix(), 10))
	req.Header.Set(HeaderNonce, nonce)
	req.Header.Set(HeaderSignature, base64.RawURLEncoding.EncodeToString(sig))
	return nil
}
