// Package bundle encodes and decodes the key bundle: a group data key (GDK)
// wrapped to several recipient slots. The format is specified in
// docs/FORMAT.md; it is JSON so that a browser can read it with nothing but
// JSON.parse and WebCrypto.
//
// Decoding is strict: unknown fields, trailing data, unknown kinds or suites
// and out-of-range parameters are errors, because every slot this package
// accepts is later handed to an HSM or a KDF.
package bundle

import (
	"bytes"
	"crypto/ecdh"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"unicode/utf8"
)

// Version is the format version this package writes and reads.
const Version = 1

// MaxSlotSize bounds the encoded size of one slot; MaxBundleSize a bundle.
const (
	MaxSlotSize   = 8 << 10
	MaxBundleSize = 1 << 20
	MaxSlots      = 256
	MaxIDLength   = 128
)

// Kind says which recipient a slot is wrapped to.
type Kind string

const (
	KindPassword   Kind = "password"
	KindPasskeyPRF Kind = "passkey-prf"
	KindDevice     Kind = "device"
	KindMember     Kind = "member"
	KindUnlock     Kind = "unlock"
	KindEscrow     Kind = "escrow"
	// KindChain holds the group's previous GDK wrapped under the GDK of
	// version key_version (AES-KW), written by a GDK rotation.
	KindChain Kind = "chain"
)

// Suites name the algorithms that wrap a slot.
const (
	SuiteRSAOAEPSHA1   = "rsa-oaep-sha1"
	SuiteRSAOAEPSHA256 = "rsa-oaep-sha256"
	// SuitePBKDF2AESKW derives an AES-256 key from a secret string with
	// PBKDF2-HMAC-SHA256 and wraps the GDK with AES-KW (RFC 3394).
	SuitePBKDF2AESKW = "pbkdf2-sha256-aes-kw"
	// SuiteHKDFAESKW derives an AES-256 key from high-entropy key material
	// (a WebAuthn PRF output) with HKDF-SHA256 and wraps with AES-KW.
	SuiteHKDFAESKW = "hkdf-sha256-aes-kw"
	// SuiteECDHP256 is ECDH P-256 with an ephemeral sender key; the AES-KW
	// key is HMAC-SHA256(Z, kdf.ECDHMessage(kind, epk, recipient)).
	SuiteECDHP256 = "ecdh-p256"
	// SuiteAESKW wraps with AES-KW directly under another GDK (chain slots).
	SuiteAESKW = "aes-kw"
)

// PublicKeySuite reports whether suite wraps to a public key (escrow,
// member and device slots).
func PublicKeySuite(suite string) bool {
	return suite == SuiteRSAOAEPSHA1 || suite == SuiteRSAOAEPSHA256 || suite == SuiteECDHP256
}

// KDF parameters of password-like slots.
const (
	// MinPasswordIterations is OWASP's 2023 figure for PBKDF2-HMAC-SHA256.
	MinPasswordIterations = 600_000
	// MinUnlockIterations: unlock codes carry 75 bits of entropy, so 2^16
	// iterations put an offline attack at 2^91 PBKDF2 iterations.
	MinUnlockIterations = 1 << 16
	MaxIterations       = 10_000_000
	SaltSize            = 16
	// CheckSize is the size of a key check value.
	CheckSize = 8
)

// ErrMalformed is wrapped by every decoding error.
var ErrMalformed = errors.New("malformed key bundle")

// Slot is one wrapped copy of the GDK.
type Slot struct {
	V    int  `json:"v"`
	Kind Kind `json:"kind"`
	// KeyVersion is the version of the key the slot is wrapped to: the
	// group's escrow or unlock key version, or the recipient's own.
	KeyVersion uint32 `json:"key_version"`
	Suite      string `json:"suite"`
	// ID names the recipient: member or device id, or the user an unlock
	// slot belongs to.
	ID     string  `json:"id,omitempty"`
	KDF    *KDF    `json:"kdf,omitempty"`
	Unlock *Unlock `json:"unlock,omitempty"`
	// EPK is the ephemeral public key of an ecdh-p256 slot: an uncompressed
	// P-256 point, 65 bytes.
	EPK []byte `json:"epk,omitempty"`
	// Check is the key check value of a password-like slot
	// (kdf.CheckValue of its AES-KW key, 8 bytes): it tells a wrong secret
	// from a damaged slot without weakening the slot.
	Check []byte `json:"check,omitempty"`
	// Wrapped is the GDK wrapped under the recipient's key.
	Wrapped []byte `json:"wrapped"`
}

// KDF holds the parameters that turn a secret string or PRF output into
// the slot's wrapping key.
type KDF struct {
	Salt       []byte `json:"salt"`
	Iterations uint32 `json:"iterations,omitempty"`
}

// Unlock binds an unlock slot to the code that opens it.
type Unlock struct {
	Epoch uint32 `json:"epoch"`
	Index uint32 `json:"index"`
}

// Bundle is a group's full set of slots.
type Bundle struct {
	V     int    `json:"v"`
	Group string `json:"group"`
	Slots []Slot `json:"slots"`
}

// Marshal validates s and encodes it.
func (s *Slot) Marshal() ([]byte, error) {
	if err := s.Validate(); err != nil {
		return nil, err
	}
	return json.Marshal(s)
}

// ParseSlot decodes and validates one slot.
func ParseSlot(b []byte) (*Slot, error) {
	if len(b) > MaxSlotSize {
		return nil, fmt.Errorf("%w: slot is %d bytes, more than %d", ErrMalformed, len(b), MaxSlotSize)
	}
	var s Slot
	if err := decodeStrict(b, &s); err != nil {
		return nil, err
	}
	if err := s.Validate(); err != nil {
		return nil, err
	}
	return &s, nil
}

// Marshal validates b and encodes it.
func (b *Bundle) Marshal() ([]byte, error) {
	if err := b.Validate(); err != nil {
		return nil, err
	}
	return json.Marshal(b)
}

// Parse decodes and validates a bundle.
func Parse(data []byte) (*Bundle, error) {
	if len(data) > MaxBundleSize {
		return nil, fmt.Errorf("%w: bundle is %d bytes, more than %d", ErrMalformed, len(data), MaxBundleSize)
	}
	var b Bundle
	if err := decodeStrict(data, &b); err != nil {
		return nil, err
	}
	if err := b.Validate(); err != nil {
		return nil, err
	}
	return &b, nil
}

// Validate checks a bundle and each of its slots.
func (b *Bundle) Validate() error {
	if b.V != Version {
		return fmt.Errorf("%w: version %d, want %d", ErrMalformed, b.V, Version)
	}
	if err := ValidateID(b.Group); err != nil {
		return fmt.Errorf("%w: group: %w", ErrMalformed, err)
	}
	if len(b.Slots) == 0 || len(b.Slots) > MaxSlots {
		return fmt.Errorf("%w: %d slots, want 1 to %d", ErrMalformed, len(b.Slots), MaxSlots)
	}
	for i := range b.Slots {
		if err := b.Slots[i].Validate(); err != nil {
			return fmt.Errorf("slot %d: %w", i, err)
		}
	}
	return nil
}

// Validate checks that the slot's fields fit its kind.
func (s *Slot) Validate() error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: %s slot: %s", ErrMalformed, s.Kind, fmt.Sprintf(format, args...))
	}
	if s.V != Version {
		return fmt.Errorf("%w: slot version %d, want %d", ErrMalformed, s.V, Version)
	}
	if s.KeyVersion == 0 {
		return bad("key_version must be at least 1")
	}
	switch s.Kind {
	case KindEscrow, KindMember, KindDevice:
		switch s.Suite {
		case SuiteRSAOAEPSHA1, SuiteRSAOAEPSHA256:
			// RSA-2048 to RSA-4096 ciphertexts.
			if len(s.Wrapped) < 256 || len(s.Wrapped) > 512 {
				return bad("wrapped key is %d bytes, want an RSA ciphertext of 256 to 512", len(s.Wrapped))
			}
			if s.EPK != nil {
				return bad("epk belongs to ecdh-p256 slots only")
			}
		case SuiteECDHP256:
			if _, err := ecdh.P256().NewPublicKey(s.EPK); err != nil {
				return bad("epk is not an uncompressed P-256 point")
			}
			if len(s.Wrapped) != 40 {
				return bad("wrapped key is %d bytes, want 40", len(s.Wrapped))
			}
		default:
			return bad("unknown suite %q", s.Suite)
		}
		if s.KDF != nil || s.Unlock != nil || s.Check != nil {
			return bad("unexpected kdf, unlock or check")
		}
	case KindChain:
		if s.Suite != SuiteAESKW {
			return bad("unknown suite %q, want %q", s.Suite, SuiteAESKW)
		}
		if s.KeyVersion < 2 {
			return bad("key_version %d: a chain slot is wrapped under GDK version 2 or later", s.KeyVersion)
		}
		if len(s.Wrapped) != 40 {
			return bad("wrapped key is %d bytes, want 40", len(s.Wrapped))
		}
		if s.KDF != nil || s.Unlock != nil || s.EPK != nil || s.Check != nil {
			return bad("unexpected kdf, unlock, epk or check")
		}
	case KindUnlock, KindPassword, KindPasskeyPRF:
		want, min := SuitePBKDF2AESKW, uint32(MinUnlockIterations)
		switch s.Kind {
		case KindPassword:
			min = MinPasswordIterations
		case KindPasskeyPRF:
			want, min = SuiteHKDFAESKW, 0
		}
		if s.Suite != want {
			return bad("unknown suite %q, want %q", s.Suite, want)
		}
		if s.KDF == nil || len(s.KDF.Salt) != SaltSize {
			return bad("kdf salt must be %d bytes", SaltSize)
		}
		if min == 0 && s.KDF.Iterations != 0 {
			return bad("hkdf takes no iterations")
		}
		if min > 0 && (s.KDF.Iterations < min || s.KDF.Iterations > MaxIterations) {
			return bad("kdf iterations %d outside %d to %d", s.KDF.Iterations, min, MaxIterations)
		}
		// AES-KW of a 256-bit key.
		if len(s.Wrapped) != 40 {
			return bad("wrapped key is %d bytes, want 40", len(s.Wrapped))
		}
		if (s.Kind == KindUnlock) != (s.Unlock != nil) {
			return bad("unlock parameters belong to unlock slots only")
		}
		if s.EPK != nil {
			return bad("epk belongs to ecdh-p256 slots only")
		}
		if len(s.Check) != CheckSize {
			return bad("check is %d bytes, want %d", len(s.Check), CheckSize)
		}
	default:
		return fmt.Errorf("%w: unknown slot kind %q", ErrMalformed, s.Kind)
	}
	if s.Kind != KindEscrow && s.Kind != KindChain {
		if err := ValidateID(s.ID); err != nil {
			return bad("id: %v", err)
		}
	} else if s.ID != "" {
		return bad("%s slots carry no id", s.Kind)
	}
	return nil
}

// ValidateID checks a group, user, member or device id: 1 to 128 bytes of
// printable ASCII without spaces, so ids are safe in logs, store keys and
// audit records.
func ValidateID(id string) error {
	if id == "" {
		return errors.New("empty id")
	}
	if len(id) > MaxIDLength {
		return fmt.Errorf("id is %d bytes, more than %d", len(id), MaxIDLength)
	}
	if !utf8.ValidString(id) {
		return errors.New("id is not UTF-8")
	}
	for _, r := range id {
		if r <= ' ' || r > '~' {
			return fmt.Errorf("id has a character outside printable ASCII: %q", r)
		}
	}
	return nil
}

func decodeStrict(b []byte, v any) error {
	if err := checkKeys(b); err != nil {
		return fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return fmt.Errorf("%w: trailing data after the JSON value", ErrMalformed)
	}
	return nil
}

// checkKeys rejects duplicate object keys and keys with upper-case letters.
// encoding/json matches keys case-insensitively and keeps the last of two
// duplicates, where JavaScript's JSON.parse is case-sensitive: without this
// check the daemon and a device could read different values from one slot.
func checkKeys(b []byte) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	// One entry per open container: nil for an array, the keys seen so far
	// for an object.
	var stack []map[string]bool
	expectKey := false
	for {
		tok, err := dec.Token()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		if expectKey {
			if key, ok := tok.(string); ok {
				for _, r := range key {
					if r >= 'A' && r <= 'Z' {
						return fmt.Errorf("key %q has upper-case letters", key)
					}
				}
				keys := stack[len(stack)-1]
				if keys[key] {
					return fmt.Errorf("duplicate key %q", key)
				}
				keys[key] = true
				expectKey = false
				continue
			}
		}
		if d, ok := tok.(json.Delim); ok {
			switch d {
			case '{':
				stack = append(stack, map[string]bool{})
				expectKey = true
				continue
			case '[':
				stack = append(stack, nil)
				expectKey = false
				continue
			case '}', ']':
				stack = stack[:len(stack)-1]
			}
		}
		// A value is complete; inside an object a key comes next.
		expectKey = len(stack) > 0 && stack[len(stack)-1] != nil
	}
}

func jsonMarshal(v any) ([]byte, error) { return json.Marshal(v) }
