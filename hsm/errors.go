package hsm

import (
	"errors"
	"fmt"
	"strings"

	"github.com/miekg/pkcs11"
)

// Sentinel errors. Every error returned by this package that has a known
// cause wraps exactly one of them; test with errors.Is. Error strings name
// the operation and, for module failures, the CKR_* code; they never contain
// a PIN, a key, a wrapped key or a ciphertext.
var (
	// ErrModule: the PKCS#11 module cannot be loaded or initialised, or it
	// reported a failure this package has no better sentinel for.
	ErrModule = errors.New("PKCS#11 module failure")
	// ErrTokenNotFound: no initialised token carries the configured label.
	ErrTokenNotFound = errors.New("token not found")
	// ErrPINIncorrect: the token refused the PIN (incorrect, invalid,
	// expired or locked: the CKR name in the message says which).
	ErrPINIncorrect = errors.New("incorrect PIN")
	// ErrKEKNotFound: the master KEK (or the KEK version a wrapped key names)
	// is not on the token or not usable. Run `escrowctl hsm init`.
	ErrKEKNotFound = errors.New("master KEK not found")
	// ErrKEKRefused: an object carries a master KEK's label but is not fit
	// to be one (not trusted, modifiable, another unwrap template …): it is
	// never used. The message says why.
	ErrKEKRefused = errors.New("master KEK refused")
	// ErrKEKPublic: a master KEK is a public object (CKA_PRIVATE=false),
	// which SoftHSM stores in clear; refused unless Config.AllowPublicKEK.
	ErrKEKPublic = errors.New("master KEK is a public object")
	// ErrKEKExists: InitKEK found a KEK with that label already.
	ErrKEKExists = errors.New("master KEK already exists")
	// ErrTokenExists: InitToken found an initialised token with that label.
	ErrTokenExists = errors.New("token already exists")
	// ErrNotFound: an object handle is no longer valid.
	ErrNotFound = errors.New("object not found")
	// ErrUnavailable: no session could be had in time (pool exhausted,
	// context done) or the token went away and recovery failed.
	ErrUnavailable = errors.New("HSM unavailable")
	// ErrBadCiphertext: a ciphertext or wrapped key does not decrypt or
	// unwrap under the given key (wrong key, corrupted, wrong length).
	ErrBadCiphertext = errors.New("bad ciphertext")
	// ErrBinding: a slot opened, but its GDK does not match its commitment
	// or its binding does not verify: it was moved to another group,
	// recipient, GDK version or kind, altered, or holds a substituted GDK.
	ErrBinding = errors.New("slot binding does not verify")
	// ErrUnsupported: the module does not support the requested suite,
	// mechanism or parameters (SoftHSM: RSA-OAEP with SHA-256).
	ErrUnsupported = errors.New("not supported by the HSM")
	// ErrNotPermitted: the token refused the operation because of a key's
	// attributes (e.g. an attempt to export a non-extractable key).
	ErrNotPermitted = errors.New("not permitted by key attributes")
	// ErrInvalidInput: the caller passed an invalid argument (bad suite,
	// malformed public key, AES key of the wrong length, empty blob).
	ErrInvalidInput = errors.New("invalid input")
	// ErrClosed: the HSM value was closed.
	ErrClosed = errors.New("HSM closed")
)

// ckrError is a PKCS#11 return value seen in operation op.
type ckrError struct {
	op       string
	code     uint
	sentinel error
}

func (e *ckrError) Error() string {
	return "hsm: " + e.op + ": " + ckrName(e.code) + ": " + e.sentinel.Error()
}

func (e *ckrError) Unwrap() error { return e.sentinel }

// ckrName returns "CKR_FOO" for a return value.
func ckrName(code uint) string {
	if code == pkcs11.CKR_ACTION_PROHIBITED { // PKCS#11 v2.40: miekg/pkcs11 has no name for it
		return "CKR_ACTION_PROHIBITED"
	}
	s := pkcs11.Error(code).Error() // "pkcs11: 0xA0: CKR_PIN_INCORRECT"
	if i := strings.LastIndex(s, ": "); i >= 0 && i+2 < len(s) {
		return s[i+2:]
	}
	return fmt.Sprintf("CKR_0x%X", code)
}

// sentinelFor maps a CKR code to a sentinel.
func sentinelFor(code uint) error {
	switch code {
	case pkcs11.CKR_PIN_INCORRECT, pkcs11.CKR_PIN_INVALID, pkcs11.CKR_PIN_LEN_RANGE,
		pkcs11.CKR_PIN_EXPIRED, pkcs11.CKR_PIN_LOCKED:
		return ErrPINIncorrect
	case pkcs11.CKR_TOKEN_NOT_RECOGNIZED, pkcs11.CKR_SLOT_ID_INVALID:
		return ErrTokenNotFound
	case pkcs11.CKR_SESSION_HANDLE_INVALID, pkcs11.CKR_SESSION_CLOSED, pkcs11.CKR_USER_NOT_LOGGED_IN,
		pkcs11.CKR_DEVICE_REMOVED, pkcs11.CKR_TOKEN_NOT_PRESENT, pkcs11.CKR_DEVICE_ERROR,
		pkcs11.CKR_DEVICE_MEMORY, pkcs11.CKR_SESSION_COUNT, pkcs11.CKR_CRYPTOKI_NOT_INITIALIZED,
		pkcs11.CKR_HOST_MEMORY:
		return ErrUnavailable
	case pkcs11.CKR_OBJECT_HANDLE_INVALID, pkcs11.CKR_KEY_HANDLE_INVALID,
		pkcs11.CKR_WRAPPING_KEY_HANDLE_INVALID, pkcs11.CKR_UNWRAPPING_KEY_HANDLE_INVALID:
		return ErrNotFound
	case pkcs11.CKR_ENCRYPTED_DATA_INVALID, pkcs11.CKR_ENCRYPTED_DATA_LEN_RANGE,
		pkcs11.CKR_WRAPPED_KEY_INVALID, pkcs11.CKR_WRAPPED_KEY_LEN_RANGE:
		return ErrBadCiphertext
	case pkcs11.CKR_MECHANISM_INVALID, pkcs11.CKR_MECHANISM_PARAM_INVALID,
		pkcs11.CKR_FUNCTION_NOT_SUPPORTED, pkcs11.CKR_KEY_SIZE_RANGE:
		return ErrUnsupported
	case pkcs11.CKR_KEY_UNEXTRACTABLE, pkcs11.CKR_KEY_NOT_WRAPPABLE, pkcs11.CKR_KEY_FUNCTION_NOT_PERMITTED,
		pkcs11.CKR_ATTRIBUTE_READ_ONLY, pkcs11.CKR_ATTRIBUTE_SENSITIVE, pkcs11.CKR_TEMPLATE_INCONSISTENT,
		pkcs11.CKR_ACTION_PROHIBITED, pkcs11.CKR_KEY_TYPE_INCONSISTENT,
		pkcs11.CKR_WRAPPING_KEY_TYPE_INCONSISTENT, pkcs11.CKR_UNWRAPPING_KEY_TYPE_INCONSISTENT,
		pkcs11.CKR_ATTRIBUTE_VALUE_INVALID:
		return ErrNotPermitted
	}
	return ErrModule
}

// ckrCode returns the CKR code carried by err, if any.
func ckrCode(err error) (uint, bool) {
	var ce *ckrError
	if errors.As(err, &ce) {
		return ce.code, true
	}
	var pe pkcs11.Error
	if errors.As(err, &pe) {
		return uint(pe), true
	}
	return 0, false
}

// wrapErr turns an error from the pkcs11 package into a *ckrError for op.
// Errors that are not CKR codes (or already ours) pass through unchanged.
func wrapErr(op string, err error) error {
	if err == nil {
		return nil
	}
	var pe pkcs11.Error
	if errors.As(err, &pe) {
		return &ckrError{op: op, code: uint(pe), sentinel: sentinelFor(uint(pe))}
	}
	return err
}

// wrapErrAs is wrapErr with the sentinel overridden for some codes.
func wrapErrAs(op string, err error, sentinel error, codes ...uint) error {
	var pe pkcs11.Error
	if errors.As(err, &pe) {
		for _, c := range codes {
			if uint(pe) == c {
				return &ckrError{op: op, code: c, sentinel: sentinel}
			}
		}
	}
	return wrapErr(op, err)
}

// recoverable reports whether err means the session, the login or the KEK
// handle is gone, so the pool must be rebuilt and the operation retried.
func recoverable(err error) bool {
	if errors.Is(err, errNotLoggedIn) || errors.Is(err, errDisconnected) {
		return true
	}
	code, ok := ckrCode(err)
	if !ok {
		return false
	}
	switch code {
	case pkcs11.CKR_SESSION_HANDLE_INVALID, pkcs11.CKR_SESSION_CLOSED, pkcs11.CKR_USER_NOT_LOGGED_IN,
		pkcs11.CKR_DEVICE_REMOVED, pkcs11.CKR_TOKEN_NOT_PRESENT,
		pkcs11.CKR_OBJECT_HANDLE_INVALID, pkcs11.CKR_KEY_HANDLE_INVALID,
		pkcs11.CKR_WRAPPING_KEY_HANDLE_INVALID, pkcs11.CKR_UNWRAPPING_KEY_HANDLE_INVALID:
		return true
	}
	return false
}

// errNotLoggedIn is returned by Healthy when the session is not in a user
// state; it is recoverable.
var errNotLoggedIn = fmt.Errorf("%w: session is not logged in", ErrUnavailable)
