package device

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/subtle"
	"errors"
	"fmt"

	"github.com/escrowd/escrowd/escrow/bundle"
	"github.com/escrowd/escrowd/escrow/kdf"
	"github.com/escrowd/escrowd/escrow/unlockcode"
)

// Errors a device shows differently, so the user knows what to do.
var (
	// ErrWrongCode: the code is well formed but opens a different slot.
	ErrWrongCode = errors.New("this unlock code does not open this device's data")
	// ErrWrongSecret: the password or passkey is not this slot's.
	ErrWrongSecret = errors.New("wrong password or passkey for this slot")
	// ErrDamaged: the secret is right (the slot's check value matches) but
	// the wrapped key fails its integrity check: the slot was altered.
	ErrDamaged = errors.New("the slot is damaged or was tampered with")
	// ErrWrongKey: a public-key slot does not open with this private key.
	ErrWrongKey = errors.New("the slot does not open with this key")
	// ErrRecord: a record does not decrypt under this GDK (wrong GDK, or
	// the record, its group, id or version were altered).
	ErrRecord = errors.New("the record does not decrypt with this group key")
)

// SealUnlock makes the unlock slot of code as the daemon does (the daemon
// wraps inside the HSM; the result has the same form).
func SealUnlock(gdk []byte, user string, unlockVersion, epoch, index uint32, code unlockcode.Code, iterations int) ([]byte, error) {
	s := bundle.Slot{V: bundle.Version, Kind: bundle.KindUnlock, KeyVersion: unlockVersion, Suite: bundle.SuitePBKDF2AESKW,
		ID: user, Unlock: &bundle.Unlock{Epoch: epoch, Index: index}}
	secret := code.Secret()
	defer clear(secret)
	return sealSecret(&s, gdk, secret, iterations)
}

// SealPassword wraps gdk under a key derived from password (PBKDF2-SHA256,
// at least bundle.MinPasswordIterations). Pass the password NFC-normalised,
// as a browser's password.normalize("NFC") gives it.
func SealPassword(gdk []byte, user string, keyVersion uint32, password string, iterations int) ([]byte, error) {
	s := bundle.Slot{V: bundle.Version, Kind: bundle.KindPassword, KeyVersion: keyVersion, Suite: bundle.SuitePBKDF2AESKW, ID: user}
	return sealSecret(&s, gdk, []byte(password), iterations)
}

// SealPasskey wraps gdk under HKDF-SHA256 of a WebAuthn PRF output.
func SealPasskey(gdk []byte, credentialID string, keyVersion uint32, prf []byte) ([]byte, error) {
	s := bundle.Slot{V: bundle.Version, Kind: bundle.KindPasskeyPRF, KeyVersion: keyVersion, Suite: bundle.SuiteHKDFAESKW, ID: credentialID}
	return sealSecret(&s, gdk, prf, 0)
}

func sealSecret(s *bundle.Slot, gdk, secret []byte, iterations int) ([]byte, error) {
	salt := make([]byte, bundle.SaltSize)
	if _, err := rand.Read(salt); err != nil {
		return nil, err
	}
	s.KDF = &bundle.KDF{Salt: salt, Iterations: uint32(iterations)}
	key, err := slotKey(s, secret)
	if err != nil {
		return nil, err
	}
	defer clear(key)
	s.Check = kdf.CheckValue(key)
	if s.Wrapped, err = WrapKey(key, gdk); err != nil {
		return nil, err
	}
	return s.Marshal()
}

// slotKey derives the AES-KW key of a password-like slot from its secret.
func slotKey(s *bundle.Slot, secret []byte) ([]byte, error) {
	if s.Suite == bundle.SuiteHKDFAESKW {
		return kdf.PasskeyKey(secret, s.KDF.Salt)
	}
	return kdf.PasswordKey(secret, s.KDF.Salt, int(s.KDF.Iterations))
}

// openSecret checks the slot's check value, then unwraps.
func openSecret(s *bundle.Slot, secret []byte, wrong error) ([]byte, error) {
	key, err := slotKey(s, secret)
	if err != nil {
		return nil, err
	}
	defer clear(key)
	if subtle.ConstantTimeCompare(kdf.CheckValue(key), s.Check) != 1 {
		return nil, wrong
	}
	gdk, err := UnwrapKey(key, s.Wrapped)
	if err != nil {
		return nil, ErrDamaged
	}
	return gdk, nil
}

func parseKind(slotJSON []byte, kind bundle.Kind) (*bundle.Slot, error) {
	s, err := bundle.ParseSlot(slotJSON)
	if err != nil {
		return nil, err
	}
	if s.Kind != kind {
		return nil, fmt.Errorf("%w: a %s slot, not a %s slot", bundle.ErrMalformed, s.Kind, kind)
	}
	return s, nil
}

// OpenUnlock opens an unlock slot with a code as the user typed it.
// Errors: unlockcode.ErrFormat or ErrCheck for a mistyped code,
// ErrWrongCode for a valid code that is not this slot's, ErrDamaged for a
// slot whose wrapped key was altered.
func OpenUnlock(slotJSON []byte, typed string) ([]byte, error) {
	s, err := parseKind(slotJSON, bundle.KindUnlock)
	if err != nil {
		return nil, err
	}
	code, err := unlockcode.Parse(typed)
	if err != nil {
		return nil, err
	}
	defer code.Clear()
	secret := code.Secret()
	defer clear(secret)
	return openSecret(s, secret, ErrWrongCode)
}

// OpenPassword opens a password slot. ErrWrongSecret, ErrDamaged.
func OpenPassword(slotJSON []byte, password string) ([]byte, error) {
	s, err := parseKind(slotJSON, bundle.KindPassword)
	if err != nil {
		return nil, err
	}
	return openSecret(s, []byte(password), ErrWrongSecret)
}

// OpenPasskey opens a passkey-prf slot with the PRF output. ErrWrongSecret,
// ErrDamaged.
func OpenPasskey(slotJSON []byte, prf []byte) ([]byte, error) {
	s, err := parseKind(slotJSON, bundle.KindPasskeyPRF)
	if err != nil {
		return nil, err
	}
	return openSecret(s, prf, ErrWrongSecret)
}

// SealChain wraps the GDK of version newVersion-1 under the GDK of version
// newVersion, as a rotation in the daemon does inside the HSM.
func SealChain(oldGDK, newGDK []byte, newVersion uint32) ([]byte, error) {
	w, err := WrapKey(newGDK, oldGDK)
	if err != nil {
		return nil, err
	}
	s := bundle.Slot{V: bundle.Version, Kind: bundle.KindChain, KeyVersion: newVersion, Suite: bundle.SuiteAESKW, Wrapped: w}
	return s.Marshal()
}

// OpenChain returns the GDK of version key_version-1 held by a chain slot,
// given the GDK of version key_version.
func OpenChain(slotJSON []byte, newGDK []byte) ([]byte, error) {
	s, err := parseKind(slotJSON, bundle.KindChain)
	if err != nil {
		return nil, err
	}
	old, err := UnwrapKey(newGDK, s.Wrapped)
	if err != nil {
		return nil, fmt.Errorf("failed to open the chain slot of GDK version %d: %w", s.KeyVersion, ErrWrongKey)
	}
	return old, nil
}

// SealRecord encrypts plaintext under gdk with AES-256-GCM, a fresh
// 12-byte IV and bundle.RecordAAD as additional data.
func SealRecord(gdk []byte, group, id string, gdkVersion uint32, plaintext []byte) ([]byte, error) {
	iv := make([]byte, bundle.IVSize)
	if _, err := rand.Read(iv); err != nil {
		return nil, err
	}
	return sealRecordIV(gdk, group, id, gdkVersion, iv, plaintext)
}

func sealRecordIV(gdk []byte, group, id string, gdkVersion uint32, iv, plaintext []byte) ([]byte, error) {
	g, err := gcm(gdk)
	if err != nil {
		return nil, err
	}
	r := bundle.Record{V: bundle.Version, Group: group, ID: id, GDKVersion: gdkVersion, IV: iv,
		CT: g.Seal(nil, iv, plaintext, bundle.RecordAAD(group, id, gdkVersion))}
	return r.Marshal()
}

// OpenRecord decrypts a record with the GDK of its gdk_version.
func OpenRecord(recordJSON []byte, gdk []byte) (*bundle.Record, []byte, error) {
	r, err := bundle.ParseRecord(recordJSON)
	if err != nil {
		return nil, nil, err
	}
	g, err := gcm(gdk)
	if err != nil {
		return nil, nil, err
	}
	pt, err := g.Open(nil, r.IV, r.CT, bundle.RecordAAD(r.Group, r.ID, r.GDKVersion))
	if err != nil {
		return nil, nil, ErrRecord
	}
	return r, pt, nil
}

func gcm(key []byte) (cipher.AEAD, error) {
	if len(key) != GDKSize {
		return nil, fmt.Errorf("a GDK is %d bytes, got %d", GDKSize, len(key))
	}
	b, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(b)
}
