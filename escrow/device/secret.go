package device

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/rand"
	"crypto/subtle"
	"errors"
	"fmt"

	"github.com/escrowd/escrowd/escrow/bundle"
	"github.com/escrowd/escrowd/escrow/unlockcode"
	"github.com/escrowd/escrowd/format"
)

// Errors a device shows differently, so the user knows what to do.
var (
	// ErrWrongCode: the code is well formed but opens no slot here.
	ErrWrongCode = errors.New("this unlock code does not open this device's data")
	// ErrWrongSecret: the password or passkey is not this slot's.
	ErrWrongSecret = errors.New("wrong password or passkey for this slot")
	// ErrDamaged: the secret is right (the slot's check value matches) but
	// the wrapped key fails its integrity check: the slot was altered.
	ErrDamaged = errors.New("the slot is damaged or was tampered with")
	// ErrWrongKey: a public-key slot does not open with this private key.
	ErrWrongKey = errors.New("the slot does not open with this key")
	// ErrBinding: the slot names another group or recipient than the one
	// being opened, or its binding does not verify: it was moved to another
	// recipient or kind, or one of its fields was altered.
	ErrBinding = errors.New("the slot is bound to another group, recipient or kind")
	// ErrCommitment: the key in the slot is not the GDK its commitment
	// names: the slot was moved from another group or GDK version, or its
	// commitment was altered.
	ErrCommitment = errors.New("the key in the slot is not the GDK it claims to be")
	// ErrUntrusted: the slot is consistent, but its GDK is not one this
	// device trusts for that group and version (Keyring).
	ErrUntrusted = errors.New("the slot holds a group key this device does not trust")
	// ErrRecord: a record does not decrypt under this GDK (wrong GDK, or
	// the record, its group, id or version were altered).
	ErrRecord = errors.New("the record does not decrypt with this group key")
)

// check refuses a slot that names another group or recipient than w,
// before anything is derived from it.
func (w Want) check(s *bundle.Slot) error {
	if s.Group != w.Group {
		return fmt.Errorf("%w: the slot belongs to another group", ErrBinding)
	}
	if s.ID != w.ID {
		return fmt.Errorf("%w: the slot belongs to another recipient", ErrBinding)
	}
	return nil
}

// Verify checks an opened slot against the GDK it gave: the commitment
// first (the GDK is the one of the slot's group and GDK version), then the
// binding (every other field is as the sealer wrote it).
func Verify(s *bundle.Slot, gdk []byte) error {
	if len(gdk) != GDKSize {
		return fmt.Errorf("%w: the slot holds %d bytes, not a %d-byte GDK", ErrCommitment, len(gdk), GDKSize)
	}
	if subtle.ConstantTimeCompare(format.Commitment(s.Group, s.GDKVersion, gdk), s.Commit) != 1 {
		return ErrCommitment
	}
	want, err := format.Bind(gdk, s.Context())
	if err != nil {
		return err
	}
	if !hmac.Equal(want, s.Bind) {
		return fmt.Errorf("%w: its binding does not verify", ErrBinding)
	}
	return nil
}

// SealUnlock makes the unlock slot of code as the daemon does (the daemon
// wraps inside the HSM; the result has the same form). to.ID is the user
// and to.KeyVersion the group's unlock key version; the slot's index is
// the code's.
func SealUnlock(gdk []byte, to To, epoch uint32, code unlockcode.Code, iterations int) ([]byte, error) {
	s := to.slot(bundle.KindUnlock, bundle.SuitePBKDF2AESKW)
	s.Unlock = &bundle.Unlock{Epoch: epoch, Index: code.Index()}
	secret := code.Secret()
	defer clear(secret)
	return sealSecret(&s, gdk, secret, bundle.SaltSize, iterations)
}

// SealPassword wraps gdk under a key derived from password (PBKDF2-SHA256,
// at least bundle.MinPasswordIterations). Pass the password NFC-normalised,
// as a browser's password.normalize("NFC") gives it.
func SealPassword(gdk []byte, to To, password string, iterations int) ([]byte, error) {
	s := to.slot(bundle.KindPassword, bundle.SuitePBKDF2AESKW)
	return sealSecret(&s, gdk, []byte(password), bundle.SaltSize, iterations)
}

// PRF is a WebAuthn authenticator's PRF: the output for an input (the
// prf extension's eval.first).
type PRF func(input []byte) ([]byte, error)

// SealPasskey wraps gdk under HKDF-SHA256 of the PRF output of the
// credential for the slot's input (format.PRFInput of a fresh 32-byte
// salt). to.ID is the user.
func SealPasskey(gdk []byte, to To, credential []byte, prf PRF) ([]byte, error) {
	s := to.slot(bundle.KindPasskeyPRF, bundle.SuiteHKDFAESKW)
	s.Credential = credential
	salt := make([]byte, bundle.PasskeySaltSize)
	if _, err := rand.Read(salt); err != nil {
		return nil, err
	}
	out, err := prf(format.PRFInput(salt))
	if err != nil {
		return nil, err
	}
	defer clear(out)
	s.KDF = &bundle.KDF{Salt: salt}
	return wrapSecret(&s, gdk, out)
}

func sealSecret(s *bundle.Slot, gdk, secret []byte, saltSize, iterations int) ([]byte, error) {
	salt := make([]byte, saltSize)
	if _, err := rand.Read(salt); err != nil {
		return nil, err
	}
	s.KDF = &bundle.KDF{Salt: salt, Iterations: uint32(iterations)}
	return wrapSecret(s, gdk, secret)
}

func wrapSecret(s *bundle.Slot, gdk, secret []byte) ([]byte, error) {
	key, err := slotKey(s, secret)
	if err != nil {
		return nil, err
	}
	defer clear(key)
	s.Check = format.CheckValue(key)
	if s.Wrapped, err = WrapKey(key, gdk); err != nil {
		return nil, err
	}
	return seal(s, gdk)
}

// slotKey derives the AES-KW key of a password-like slot from its secret.
func slotKey(s *bundle.Slot, secret []byte) ([]byte, error) {
	if s.Suite == bundle.SuiteHKDFAESKW {
		return format.PasskeyKey(secret, s.KDF.Salt)
	}
	return format.PasswordKey(secret, s.KDF.Salt, int(s.KDF.Iterations))
}

// openSecret checks the slot's check value, unwraps and verifies.
func openSecret(s *bundle.Slot, secret []byte, wrong error) ([]byte, error) {
	key, err := slotKey(s, secret)
	if err != nil {
		return nil, err
	}
	defer clear(key)
	if subtle.ConstantTimeCompare(format.CheckValue(key), s.Check) != 1 {
		return nil, wrong
	}
	gdk, err := UnwrapKey(key, s.Wrapped)
	if err != nil {
		return nil, ErrDamaged
	}
	if err := Verify(s, gdk); err != nil {
		clear(gdk)
		return nil, err
	}
	return gdk, nil
}

// parseKind decodes a slot of kind and checks it against w.
func parseKind(slotJSON []byte, kind bundle.Kind, w Want) (*bundle.Slot, error) {
	s, err := bundle.ParseSlot(slotJSON)
	if err != nil {
		return nil, err
	}
	if s.Kind != kind {
		return nil, fmt.Errorf("%w: a %s slot, not a %s slot", ErrBinding, s.Kind, kind)
	}
	if err := w.check(s); err != nil {
		return nil, err
	}
	return s, nil
}

// OpenUnlock opens, among a user's unlock slots, the one a code as the user
// typed it names: the slot whose index is the code's index symbol, newest
// epoch first, so a wrong code costs one PBKDF2. Errors:
// unlockcode.ErrFormat or ErrCheck for a mistyped code, ErrWrongCode for a
// valid code that opens none of them, ErrDamaged for a slot whose wrapped
// key was altered, ErrBinding and ErrCommitment as in Verify.
func OpenUnlock(slots [][]byte, w Want, typed string) ([]byte, *bundle.Slot, error) {
	code, err := unlockcode.Parse(typed)
	if err != nil {
		return nil, nil, err
	}
	defer code.Clear()
	var pick *bundle.Slot
	for _, raw := range slots {
		s, err := parseKind(raw, bundle.KindUnlock, w)
		if err != nil {
			return nil, nil, err
		}
		if s.Unlock.Index == code.Index() && (pick == nil || s.Unlock.Epoch > pick.Unlock.Epoch) {
			pick = s
		}
	}
	if pick == nil {
		return nil, nil, ErrWrongCode
	}
	secret := code.Secret()
	defer clear(secret)
	gdk, err := openSecret(pick, secret, ErrWrongCode)
	if err != nil {
		return nil, nil, err
	}
	return gdk, pick, nil
}

// OpenPassword opens a password slot. ErrWrongSecret, ErrDamaged,
// ErrBinding, ErrCommitment.
func OpenPassword(slotJSON []byte, w Want, password string) ([]byte, *bundle.Slot, error) {
	s, err := parseKind(slotJSON, bundle.KindPassword, w)
	if err != nil {
		return nil, nil, err
	}
	gdk, err := openSecret(s, []byte(password), ErrWrongSecret)
	return gdk, s, err
}

// OpenPasskey opens a passkey-prf slot: prf is asked for the output of the
// slot's input (format.PRFInput of its salt) with the slot's credential.
func OpenPasskey(slotJSON []byte, w Want, prf PRF) ([]byte, *bundle.Slot, error) {
	s, err := parseKind(slotJSON, bundle.KindPasskeyPRF, w)
	if err != nil {
		return nil, nil, err
	}
	out, err := prf(format.PRFInput(s.KDF.Salt))
	if err != nil {
		return nil, nil, err
	}
	defer clear(out)
	gdk, err := openSecret(s, out, ErrWrongSecret)
	return gdk, s, err
}

// SealChain wraps GDK oldVersion under the chain key of GDK oldVersion+1,
// as a rotation in the daemon does inside the HSM.
func SealChain(oldGDK, newGDK []byte, group string, oldVersion uint32) ([]byte, error) {
	kc, err := format.DK(newGDK, format.LabelChain)
	if err != nil {
		return nil, err
	}
	defer clear(kc)
	w, err := WrapKey(kc, oldGDK)
	if err != nil {
		return nil, err
	}
	s := To{Group: group, GDKVersion: oldVersion, KeyVersion: oldVersion + 1}.slot(bundle.KindChain, bundle.SuiteAESKW)
	s.Wrapped = w
	return seal(&s, oldGDK)
}

// OpenChain returns the GDK held by a chain slot (version gdk_version) given
// the GDK of version gdk_version + 1.
func OpenChain(slotJSON []byte, group string, newGDK []byte) ([]byte, *bundle.Slot, error) {
	s, err := parseKind(slotJSON, bundle.KindChain, Want{Group: group})
	if err != nil {
		return nil, nil, err
	}
	kc, err := format.DK(newGDK, format.LabelChain)
	if err != nil {
		return nil, nil, err
	}
	defer clear(kc)
	old, err := UnwrapKey(kc, s.Wrapped)
	if err != nil {
		return nil, nil, fmt.Errorf("failed to open the chain slot of GDK version %d: %w", s.GDKVersion, ErrWrongKey)
	}
	if err := Verify(s, old); err != nil {
		clear(old)
		return nil, nil, err
	}
	return old, s, nil
}

// SealRecord encrypts plaintext under the record key of gdk with
// AES-256-GCM, a fresh 12-byte IV and bundle.RecordAAD as additional data.
func SealRecord(gdk []byte, group, id string, gdkVersion uint32, plaintext []byte) ([]byte, error) {
	iv := make([]byte, bundle.IVSize)
	if _, err := rand.Read(iv); err != nil {
		return nil, err
	}
	return sealRecordIV(gdk, group, id, gdkVersion, iv, plaintext)
}

func sealRecordIV(gdk []byte, group, id string, gdkVersion uint32, iv, plaintext []byte) ([]byte, error) {
	g, err := recordCipher(gdk)
	if err != nil {
		return nil, err
	}
	r := bundle.Record{Group: group, ID: id, GDKVersion: gdkVersion, IV: iv,
		CT: g.Seal(nil, iv, plaintext, bundle.RecordAAD(group, id, gdkVersion))}
	return r.Marshal()
}

// OpenRecord decrypts a record with the GDK of its gdk_version.
func OpenRecord(recordJSON []byte, gdk []byte) (*bundle.Record, []byte, error) {
	r, err := bundle.ParseRecord(recordJSON)
	if err != nil {
		return nil, nil, err
	}
	g, err := recordCipher(gdk)
	if err != nil {
		return nil, nil, err
	}
	pt, err := g.Open(nil, r.IV, r.CT, bundle.RecordAAD(r.Group, r.ID, r.GDKVersion))
	if err != nil {
		return nil, nil, ErrRecord
	}
	return r, pt, nil
}

// recordCipher is AES-256-GCM under the record key DK(gdk, LabelRecord):
// the GDK itself never keys GCM.
func recordCipher(gdk []byte) (cipher.AEAD, error) {
	if len(gdk) != GDKSize {
		return nil, fmt.Errorf("a GDK is %d bytes, got %d", GDKSize, len(gdk))
	}
	rk, err := format.DK(gdk, format.LabelRecord)
	if err != nil {
		return nil, err
	}
	defer clear(rk)
	b, err := aes.NewCipher(rk)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(b)
}
