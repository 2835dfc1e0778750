package hsm

import (
	"bytes"
	"context"
	"crypto/ecdh"
	"crypto/rsa"
	"crypto/x509"
	"errors"
	"fmt"
	"math/big"

	"github.com/miekg/pkcs11"

	"github.com/escrowd/escrowd/format"
)

// Suite names the RSA-OAEP parameters of an escrow key or of a target key.
type Suite string

const (
	// SuiteRSAOAEPSHA1 is RSA-OAEP with SHA-1, MGF1-SHA1 and an empty
	// label: what SoftHSM 2.6 can do, and what WebCrypto calls
	// {name: "RSA-OAEP", hash: "SHA-1"}.
	SuiteRSAOAEPSHA1 Suite = "rsa-oaep-sha1"
	// SuiteRSAOAEPSHA256 is RSA-OAEP with SHA-256, MGF1-SHA256 and an empty
	// label: hardware HSMs. SoftHSM 2.6 answers ErrUnsupported.
	SuiteRSAOAEPSHA256 Suite = "rsa-oaep-sha256"
)

// EscrowKeyBits is the modulus size of generated escrow keys.
const EscrowKeyBits = 3072

// minTargetBits is the smallest RSA target key Rewrap accepts.
const minTargetBits = 2048

// GDKSize is the size in bytes of a group data key (AES-256).
const GDKSize = 32

// WrappedKey is a group key wrapped under master KEK version KEKVersion
// with AES-KWP (CKM_AES_KEY_WRAP_PAD, RFC 5649).
type WrappedKey struct {
	KEKVersion uint32
	Blob       []byte
}

// Target is where Rewrap wraps a GDK to: exactly one of PublicKeyDER (a
// PKIX SubjectPublicKeyInfo DER public key with Suite: RSA for the
// rsa-oaep suites, P-256 for ecdh-p256) or AESKey (16, 24 or 32 raw bytes;
// the GDK is wrapped with AES-KW, RFC 3394) is set.
type Target struct {
	PublicKeyDER []byte
	Suite        Suite
	AESKey       []byte
	// Context, when set, is the output slot's context without its EPK,
	// Commit and Wrapped, which the HSM fills: the HSM then returns the
	// slot's commitment and binding in Sealed.
	Context *format.SlotContext
}

func oaepMechanism(s Suite) ([]*pkcs11.Mechanism, error) {
	var p *pkcs11.OAEPParams
	switch s {
	case SuiteRSAOAEPSHA1:
		p = pkcs11.NewOAEPParams(pkcs11.CKM_SHA_1, pkcs11.CKG_MGF1_SHA1, pkcs11.CKZ_DATA_SPECIFIED, nil)
	case SuiteRSAOAEPSHA256:
		p = pkcs11.NewOAEPParams(pkcs11.CKM_SHA256, pkcs11.CKG_MGF1_SHA256, pkcs11.CKZ_DATA_SPECIFIED, nil)
	default:
		return nil, fmt.Errorf("hsm: %w: unknown suite %q", ErrInvalidInput, string(s))
	}
	return []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_RSA_PKCS_OAEP, p)}, nil
}

// oaepErr maps an error from an RSA-OAEP call: with a suite other than the
// one every module has, a parameter complaint means the suite is not
// supported (SoftHSM 2.6 answers CKR_ARGUMENTS_BAD to SHA-256).
func oaepErr(op string, s Suite, err error) error {
	if s != SuiteRSAOAEPSHA1 {
		return wrapErrAs(op+" ("+string(s)+")", err, ErrUnsupported,
			pkcs11.CKR_ARGUMENTS_BAD, pkcs11.CKR_MECHANISM_PARAM_INVALID, pkcs11.CKR_MECHANISM_INVALID)
	}
	return wrapErr(op, err)
}

var (
	kwp = []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_KEY_WRAP_PAD, nil)}
	kw  = []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_KEY_WRAP, nil)}
)

func boolAttr(t uint, v bool) *pkcs11.Attribute { return pkcs11.NewAttribute(t, v) }

// destroy destroys a session object, ignoring errors (the session may be
// gone already, which destroys its objects too).
func (h *HSM) destroy(s session, o pkcs11.ObjectHandle) {
	if o != 0 {
		_ = s.p.DestroyObject(s.h, o)
	}
}

// wrapUnderKEK wraps key, a group key of kind, under the current KEK of
// its class.
func (h *HSM) wrapUnderKEK(s session, key pkcs11.ObjectHandle, kind KeyKind, what string) (WrappedKey, error) {
	kek, err := s.kek(kind)
	if err != nil {
		return WrappedKey{}, err
	}
	blob, err := s.p.WrapKey(s.h, kwp, kek, key)
	if err != nil {
		return WrappedKey{}, wrapErr("wrap "+what+" under KEK", err)
	}
	return WrappedKey{KEKVersion: s.kekVersion, Blob: blob}, nil
}

func checkWrapped(w WrappedKey, what string) error {
	if w.KEKVersion == 0 {
		return fmt.Errorf("hsm: unwrap %s: %w: KEK version 0", what, ErrKEKNotFound)
	}
	if len(w.Blob) == 0 {
		return fmt.Errorf("hsm: unwrap %s: %w: empty wrapped key", what, ErrInvalidInput)
	}
	return nil
}

// unwrapUnderKEK unwraps w, a group key of kind, under its class's KEK of
// the version it names, into a session object made with the class's
// template (classTemplate: the same for use and for a KEK rotation); op
// names the unwrap in errors.
func (h *HSM) unwrapUnderKEK(s session, w WrappedKey, kind KeyKind, op string) (pkcs11.ObjectHandle, error) {
	if err := checkWrapped(w, kind.String()); err != nil {
		return 0, err
	}
	set, err := h.kekFor(s, w.KEKVersion)
	if err != nil {
		return 0, err
	}
	c, err := classOf(kind)
	if err != nil {
		return 0, err
	}
	o, err := s.p.UnwrapKey(s.h, kwp, set.h[c], w.Blob, unwrapTemplate(kind, set.mechs))
	if err != nil {
		return 0, kekUnwrapErr(op, err)
	}
	return o, nil
}

// unwrapEscrowPrivate unwraps an RSA escrow private key into a session object.
func (h *HSM) unwrapEscrowPrivate(s session, w WrappedKey) (pkcs11.ObjectHandle, error) {
	return h.unwrapUnderKEK(s, w, KeyEscrow, "unwrap escrow key")
}

// unwrapUnlock unwraps an unlock key into a session object.
func (h *HSM) unwrapUnlock(s session, w WrappedKey) (pkcs11.ObjectHandle, error) {
	return h.unwrapUnderKEK(s, w, KeyUnlock, "unwrap unlock key")
}

// kekUnwrapErr maps the failure of an AES-KWP unwrap under the KEK.
// SoftHSM answers CKR_GENERAL_ERROR when the integrity check fails.
func kekUnwrapErr(op string, err error) error {
	return wrapErrAs(op+" (corrupted, or not wrapped under this KEK)", err, ErrBadCiphertext,
		pkcs11.CKR_GENERAL_ERROR, pkcs11.CKR_FUNCTION_FAILED, pkcs11.CKR_DATA_INVALID, pkcs11.CKR_DATA_LEN_RANGE)
}

func (h *HSM) suiteKnownUnsupported(suite Suite) error {
	if v, ok := h.unsupported.Load(suite); ok {
		return v.(error)
	}
	return nil
}

// GenerateEscrowKey generates an escrow key pair for suite (ecdh-p256: a
// P-256 pair, see generateECEscrowKey) or an RSA-3072 escrow key pair as
// session objects, checks that the pair works with the suite, wraps the
// private key under the current KEK and destroys both objects. The private
// key is generated sensitive, extractable only under a trusted key
// (CKA_WRAP_WITH_TRUSTED), for decrypt/unwrap only.
func (h *HSM) GenerateEscrowKey(ctx context.Context, suite Suite) (publicKeyDER []byte, private WrappedKey, err error) {
	var mech []*pkcs11.Mechanism
	if suite != SuiteECDHP256 {
		if mech, err = oaepMechanism(suite); err != nil {
			return nil, WrappedKey{}, err
		}
	}
	if err := h.suiteKnownUnsupported(suite); err != nil {
		return nil, WrappedKey{}, err
	}
	if suite == SuiteECDHP256 {
		return h.generateECEscrowKey(ctx)
	}
	err = h.do(ctx, OpGenerateEscrowKey, func(s session) error {
		pubT := []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PUBLIC_KEY),
			pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_RSA),
			boolAttr(pkcs11.CKA_TOKEN, false),
			boolAttr(pkcs11.CKA_PRIVATE, false),
			pkcs11.NewAttribute(pkcs11.CKA_MODULUS_BITS, EscrowKeyBits),
			pkcs11.NewAttribute(pkcs11.CKA_PUBLIC_EXPONENT, []byte{1, 0, 1}),
			boolAttr(pkcs11.CKA_ENCRYPT, true),
			boolAttr(pkcs11.CKA_WRAP, true),
			boolAttr(pkcs11.CKA_VERIFY, false),
		}
		privT := []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PRIVATE_KEY),
			pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_RSA),
			boolAttr(pkcs11.CKA_TOKEN, false),
			boolAttr(pkcs11.CKA_PRIVATE, true),
			boolAttr(pkcs11.CKA_SENSITIVE, true),
			boolAttr(pkcs11.CKA_EXTRACTABLE, true),
			boolAttr(pkcs11.CKA_WRAP_WITH_TRUSTED, true),
			boolAttr(pkcs11.CKA_DECRYPT, true),
			boolAttr(pkcs11.CKA_UNWRAP, true),
			boolAttr(pkcs11.CKA_SIGN, false),
		}
		pub, priv, err := s.p.GenerateKeyPair(s.h,
			[]*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_RSA_PKCS_KEY_PAIR_GEN, nil)}, pubT, privT)
		if err != nil {
			return wrapErr("generate escrow key pair", err)
		}
		defer h.destroy(s, pub)
		defer h.destroy(s, priv)

		attrs, err := s.p.GetAttributeValue(s.h, pub, []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_MODULUS, nil),
			pkcs11.NewAttribute(pkcs11.CKA_PUBLIC_EXPONENT, nil),
		})
		if err != nil {
			return wrapErr("read escrow public key", err)
		}
		der, err := marshalRSAPublic(attrs[0].Value, attrs[1].Value)
		if err != nil {
			return err
		}
		if err := h.selfTest(s, pub, priv, suite, mech); err != nil {
			return err
		}
		w, err := h.wrapUnderKEK(s, priv, KeyEscrow, "escrow key")
		if err != nil {
			return err
		}
		publicKeyDER, private = der, w
		return nil
	})
	if err != nil {
		return nil, WrappedKey{}, err
	}
	return publicKeyDER, private, nil
}

// selfTest encrypts 32 random bytes to pub and decrypts them with priv under
// suite: a pair that cannot do its suite is never handed out.
func (h *HSM) selfTest(s session, pub, priv pkcs11.ObjectHandle, suite Suite, mech []*pkcs11.Mechanism) error {
	probe, err := s.p.GenerateRandom(s.h, 32)
	if err != nil {
		return wrapErr("generate random", err)
	}
	if err := s.p.EncryptInit(s.h, mech, pub); err != nil {
		return h.noteUnsupported(suite, oaepErr("self-test encrypt", suite, err))
	}
	ct, err := s.p.Encrypt(s.h, probe)
	if err != nil {
		return h.noteUnsupported(suite, oaepErr("self-test encrypt", suite, err))
	}
	if err := s.p.DecryptInit(s.h, mech, priv); err != nil {
		return h.noteUnsupported(suite, oaepErr("self-test decrypt", suite, err))
	}
	pt, err := s.p.Decrypt(s.h, ct)
	if err != nil {
		return h.noteUnsupported(suite, oaepErr("self-test decrypt", suite, err))
	}
	if !bytes.Equal(pt, probe) {
		return fmt.Errorf("hsm: self-test of new escrow key: %w: decryption does not match", ErrModule)
	}
	return nil
}

func (h *HSM) noteUnsupported(suite Suite, err error) error {
	if errors.Is(err, ErrUnsupported) {
		h.unsupported.Store(suite, err)
	}
	return err
}

func marshalRSAPublic(modulus, exponent []byte) ([]byte, error) {
	e := new(big.Int).SetBytes(exponent)
	if len(modulus) == 0 || !e.IsInt64() || e.Int64() > 1<<31-1 || e.Int64() < 3 {
		return nil, fmt.Errorf("hsm: read escrow public key: %w: bad modulus or exponent", ErrModule)
	}
	der, err := x509.MarshalPKIXPublicKey(&rsa.PublicKey{N: new(big.Int).SetBytes(modulus), E: int(e.Int64())})
	if err != nil {
		return nil, fmt.Errorf("hsm: marshal escrow public key: %w", err)
	}
	return der, nil
}

// GenerateUnlockKey generates a 32-byte CKK_GENERIC_SECRET HMAC key as a
// session object (sensitive, extractable only under a trusted key), wraps it
// under the current KEK and destroys it.
func (h *HSM) GenerateUnlockKey(ctx context.Context) (WrappedKey, error) {
	var out WrappedKey
	err := h.do(ctx, OpGenerateUnlockKey, func(s session) error {
		var err error
		out, err = h.genUnlockKey(s)
		return err
	})
	if err != nil {
		return WrappedKey{}, err
	}
	return out, nil
}

// genUnlockKey is GenerateUnlockKey on a session the caller holds.
func (h *HSM) genUnlockKey(s session) (WrappedKey, error) {
	var out WrappedKey
	err := func() error {
		k, err := s.p.GenerateKey(s.h,
			[]*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_GENERIC_SECRET_KEY_GEN, nil)}, unlockKeyTemplate())
		if err != nil {
			return wrapErr("generate unlock key", err)
		}
		defer h.destroy(s, k)
		out, err = h.wrapUnderKEK(s, k, KeyUnlock, "unlock key")
		return err
	}()
	if err != nil {
		return WrappedKey{}, err
	}
	return out, nil
}

// unlockKeyTemplate is the template an unlock key is generated with: a
// 32-byte generic secret session object, sensitive, extractable only under
// a trusted key (to be wrapped under the unlock KEK), for HMAC only.
func unlockKeyTemplate() []*pkcs11.Attribute {
	return []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_GENERIC_SECRET),
		pkcs11.NewAttribute(pkcs11.CKA_VALUE_LEN, 32),
		boolAttr(pkcs11.CKA_TOKEN, false),
		boolAttr(pkcs11.CKA_PRIVATE, true),
		boolAttr(pkcs11.CKA_SENSITIVE, true),
		boolAttr(pkcs11.CKA_EXTRACTABLE, true),
		boolAttr(pkcs11.CKA_WRAP_WITH_TRUSTED, true),
		boolAttr(pkcs11.CKA_SIGN, true),
		boolAttr(pkcs11.CKA_VERIFY, false),
	}
}

// HMAC computes HMAC-SHA256(unlockKey, msg) inside the HSM.
func (h *HSM) HMAC(ctx context.Context, unlockKey WrappedKey, msg []byte) ([]byte, error) {
	if err := checkWrapped(unlockKey, "unlock key"); err != nil {
		return nil, err
	}
	var mac []byte
	err := h.do(ctx, OpHMAC, func(s session) error {
		k, err := h.unwrapUnlock(s, unlockKey)
		if err != nil {
			return err
		}
		defer h.destroy(s, k)
		if err := s.p.SignInit(s.h, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_SHA256_HMAC, nil)}, k); err != nil {
			return wrapErr("HMAC", err)
		}
		mac, err = s.p.Sign(s.h, msg)
		return wrapErr("HMAC", err)
	})
	if err != nil {
		return nil, err
	}
	return mac, nil
}

// target is a validated Target.
type target struct {
	pub    *rsa.PublicKey
	mech   []*pkcs11.Mechanism
	suite  Suite
	aesKey []byte // a copy, zeroed after use
	ecdh   *ecdh.PublicKey
	// context is the output slot's context, nil when the caller wants no
	// binding.
	context *format.SlotContext
}

func parseTargets(ts []Target) ([]target, error) {
	out := make([]target, 0, len(ts))
	fail := func(i int, format string, args ...any) ([]target, error) {
		zeroTargets(out)
		return nil, fmt.Errorf("hsm: rewrap: target %d: %w: %s", i, ErrInvalidInput, fmt.Sprintf(format, args...))
	}
	for i, t := range ts {
		switch {
		case len(t.PublicKeyDER) > 0 && len(t.AESKey) > 0:
			return fail(i, "both a public key and an AES key are set")
		case len(t.PublicKeyDER) > 0 && t.Suite == SuiteECDHP256:
			pub, err := ParseP256(t.PublicKeyDER)
			if err != nil {
				return fail(i, "%v", err)
			}
			out = append(out, target{ecdh: pub, suite: t.Suite, context: t.Context})
		case len(t.PublicKeyDER) > 0:
			mech, err := oaepMechanism(t.Suite)
			if err != nil {
				return fail(i, "unknown suite %q", string(t.Suite))
			}
			k, err := x509.ParsePKIXPublicKey(t.PublicKeyDER)
			if err != nil {
				return fail(i, "public key is not PKIX DER")
			}
			pub, ok := k.(*rsa.PublicKey)
			if !ok {
				return fail(i, "public key is a %T, not RSA", k)
			}
			if pub.N.BitLen() < minTargetBits {
				return fail(i, "RSA key of %d bits, want at least %d", pub.N.BitLen(), minTargetBits)
			}
			out = append(out, target{pub: pub, mech: mech, suite: t.Suite, context: t.Context})
		case len(t.AESKey) > 0:
			switch len(t.AESKey) {
			case 16, 24, 32:
			default:
				return fail(i, "AES key of %d bytes, want 16, 24 or 32", len(t.AESKey))
			}
			out = append(out, target{aesKey: bytes.Clone(t.AESKey), context: t.Context})
		default:
			return fail(i, "neither a public key nor an AES key is set")
		}
	}
	return out, nil
}

func zeroTargets(ts []target) {
	for _, t := range ts {
		clear(t.aesKey)
	}
}

// Rewrap unwraps a 32-byte AES group data key (GDK) from ciphertext
// (RSA-OAEP with suite under the group's escrow key) into the HSM as a
// session object, and wraps it there to every target, in order. The GDK's
// clear value never enters Go memory. One unwrap of the escrow private key
// and of the GDK serves all targets; all session objects are destroyed
// before Rewrap returns. A ciphertext that does not decrypt, or does not
// hold 32 bytes, gives ErrBadCiphertext.
func (h *HSM) Rewrap(ctx context.Context, escrowPrivate WrappedKey, suite Suite, ciphertext []byte, targets []Target) ([][]byte, error) {
	if _, err := oaepMechanism(suite); err != nil {
		return nil, err
	}
	for i, t := range targets {
		if t.Suite == SuiteECDHP256 {
			return nil, fmt.Errorf("hsm: rewrap: target %d: %w: ecdh-p256 targets need RewrapSlot, which returns their ephemeral keys", i, ErrInvalidInput)
		}
	}
	sealed, err := h.RewrapSlot(ctx, Source{EscrowPrivate: escrowPrivate, Suite: suite, Wrapped: ciphertext}, targets)
	if err != nil {
		return nil, err
	}
	out := make([][]byte, len(sealed))
	for i, s := range sealed {
		out[i] = s.Wrapped
	}
	return out, nil
}

// gdkUnwrapErr maps the failure of the OAEP unwrap of a GDK. Anything that
// is not a lost session, an unsupported suite or a resource problem means
// the ciphertext does not open under this escrow key.
func (h *HSM) gdkUnwrapErr(suite Suite, err error) error {
	e := oaepErr("unwrap GDK", suite, err)
	if recoverable(e) || errors.Is(e, ErrUnsupported) || errors.Is(e, ErrUnavailable) {
		return e
	}
	code, _ := ckrCode(e)
	return &ckrError{op: "unwrap GDK", code: code, sentinel: ErrBadCiphertext}
}

func (h *HSM) wrapToTarget(s session, gdk pkcs11.ObjectHandle, t target, op string) ([]byte, error) {
	if t.aesKey != nil {
		val := bytes.Clone(t.aesKey)
		k, err := s.p.CreateObject(s.h, []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
			pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
			boolAttr(pkcs11.CKA_TOKEN, false),
			boolAttr(pkcs11.CKA_PRIVATE, true),
			boolAttr(pkcs11.CKA_SENSITIVE, true),
			boolAttr(pkcs11.CKA_EXTRACTABLE, false),
			boolAttr(pkcs11.CKA_WRAP, true),
			boolAttr(pkcs11.CKA_ENCRYPT, false),
			pkcs11.NewAttribute(pkcs11.CKA_VALUE, val),
		})
		clear(val)
		if err != nil {
			return nil, wrapErr(op+"import AES target key", err)
		}
		defer h.destroy(s, k)
		w, err := s.p.WrapKey(s.h, kw, k, gdk)
		if err != nil {
			return nil, wrapErr(op+"wrap GDK with AES-KW", err)
		}
		return w, nil
	}
	k, err := s.p.CreateObject(s.h, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PUBLIC_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_RSA),
		boolAttr(pkcs11.CKA_TOKEN, false),
		boolAttr(pkcs11.CKA_PRIVATE, false),
		pkcs11.NewAttribute(pkcs11.CKA_MODULUS, t.pub.N.Bytes()),
		pkcs11.NewAttribute(pkcs11.CKA_PUBLIC_EXPONENT, big.NewInt(int64(t.pub.E)).Bytes()),
		boolAttr(pkcs11.CKA_WRAP, true),
		boolAttr(pkcs11.CKA_ENCRYPT, false),
		boolAttr(pkcs11.CKA_VERIFY, false),
	})
	if err != nil {
		return nil, wrapErr(op+"import RSA target key", err)
	}
	defer h.destroy(s, k)
	w, err := s.p.WrapKey(s.h, t.mech, k, gdk)
	if err != nil {
		return nil, oaepErr(op+"wrap GDK with RSA-OAEP", t.suite, err)
	}
	return w, nil
}
