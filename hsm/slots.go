package hsm

import (
	"bytes"
	"context"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/asn1"
	"errors"
	"fmt"

	"github.com/miekg/pkcs11"

	"github.com/escrowd/escrowd/escrow/kdf"
)

// SuiteECDHP256 is ECDH on P-256 with an ephemeral sender key; the slot's
// AES-KW key is HMAC-SHA256(Z, kdf.ECDHMessage(...)). On SoftHSM, which
// derives ECDH only with CKD_NULL and has no HKDF, Z stays in the HSM
// (a non-extractable generic secret), the HMAC runs in the HSM, and the
// 32-byte HMAC output K is imported back as a short-lived AES key: K is
// the only secret that passes through Go memory. See docs/HSM.md.
const SuiteECDHP256 Suite = "ecdh-p256"

// p256OID is the DER of the namedCurve OID 1.2.840.10045.3.1.7.
var p256OID = []byte{0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07}

// Source is a slot the HSM opens with a group's escrow key.
type Source struct {
	// EscrowPrivate is the escrow private key, wrapped under the KEK.
	EscrowPrivate WrappedKey
	// EscrowPublicDER is the escrow public key (PKIX DER); ecdh-p256 binds
	// it into the KDF.
	EscrowPublicDER []byte
	Suite           Suite
	// Wrapped is the slot's wrapped GDK; EPK its ephemeral public key
	// (ecdh-p256 only, an uncompressed point).
	Wrapped []byte
	EPK     []byte
}

// Sealed is a GDK wrapped to one target. EPK is set for ecdh-p256.
type Sealed struct {
	Wrapped []byte
	EPK     []byte
}

// ParseP256 parses a PKIX DER P-256 public key into its uncompressed point.
func ParseP256(der []byte) (*ecdh.PublicKey, error) {
	k, err := x509.ParsePKIXPublicKey(der)
	if err != nil {
		return nil, fmt.Errorf("%w: public key is not PKIX DER", ErrInvalidInput)
	}
	ek, ok := k.(*ecdsa.PublicKey)
	if !ok || ek.Curve != elliptic.P256() {
		return nil, fmt.Errorf("%w: public key is a %T, not EC P-256", ErrInvalidInput, k)
	}
	pub, err := ek.ECDH()
	if err != nil {
		return nil, fmt.Errorf("%w: public key is not a P-256 point", ErrInvalidInput)
	}
	return pub, nil
}

// RewrapSlot opens src inside the HSM (the GDK becomes a session object)
// and wraps it to every target, in order. On the rsa-oaep suites nothing
// secret enters Go memory; on ecdh-p256 the per-slot AES-KW keys do (see
// SuiteECDHP256), never the GDK.
func (h *HSM) RewrapSlot(ctx context.Context, src Source, targets []Target) ([]Sealed, error) {
	_, out, err := h.openAndWrap(ctx, src, targets, false)
	return out, err
}

// Rotate opens src inside the HSM (the old GDK), generates a new GDK in the
// HSM, wraps the new GDK to every target, and wraps the old GDK under the
// new one with AES-KW (RFC 3394): the chain that keeps data encrypted under
// the old GDK readable to whoever holds the new one. Neither GDK enters Go
// memory.
func (h *HSM) Rotate(ctx context.Context, src Source, targets []Target) (chain []byte, out []Sealed, err error) {
	return h.openAndWrap(ctx, src, targets, true)
}

func (h *HSM) openAndWrap(ctx context.Context, src Source, targets []Target, rotate bool) ([]byte, []Sealed, error) {
	if err := checkWrapped(src.EscrowPrivate, "escrow key"); err != nil {
		return nil, nil, err
	}
	if len(src.Wrapped) == 0 {
		return nil, nil, fmt.Errorf("hsm: rewrap: %w: empty ciphertext", ErrBadCiphertext)
	}
	var escrowPoint []byte
	switch src.Suite {
	case SuiteRSAOAEPSHA1, SuiteRSAOAEPSHA256:
	case SuiteECDHP256:
		pub, err := ParseP256(src.EscrowPublicDER)
		if err != nil {
			return nil, nil, fmt.Errorf("hsm: rewrap: escrow public key: %w", err)
		}
		if _, err := ecdh.P256().NewPublicKey(src.EPK); err != nil {
			return nil, nil, fmt.Errorf("hsm: rewrap: %w: the slot's ephemeral key is not a P-256 point", ErrBadCiphertext)
		}
		escrowPoint = pub.Bytes()
	default:
		return nil, nil, fmt.Errorf("hsm: rewrap: %w: unknown suite %q", ErrInvalidInput, string(src.Suite))
	}
	if len(targets) == 0 {
		return nil, nil, fmt.Errorf("hsm: rewrap: %w: no targets", ErrInvalidInput)
	}
	ts, err := parseTargets(targets)
	if err != nil {
		return nil, nil, err
	}
	defer zeroTargets(ts)

	var chain []byte
	var out []Sealed
	op := OpRewrap
	if rotate {
		op = OpRotate
	}
	err = h.do(ctx, op, func(s session) error {
		chain, out = nil, nil
		gdk, err := h.openGDK(s, src, escrowPoint)
		if err != nil {
			return err
		}
		defer h.destroy(s, gdk)
		if err := h.checkGDKSize(s, gdk); err != nil {
			return err
		}
		wrapped := gdk
		if rotate {
			next, err := h.generateGDK(s)
			if err != nil {
				return err
			}
			defer h.destroy(s, next)
			if chain, err = h.mod.ctx.WrapKey(s.h, kw, next, gdk); err != nil {
				return wrapErr("rotate: wrap the old GDK under the new one", err)
			}
			wrapped = next
		}
		res := make([]Sealed, len(ts))
		for i, t := range ts {
			if res[i], err = h.sealToTarget(s, wrapped, t, fmt.Sprintf("rewrap: target %d: ", i)); err != nil {
				return err
			}
		}
		out = res
		return nil
	})
	if err != nil {
		return nil, nil, err
	}
	return chain, out, nil
}

// gdkTemplate is the template of a GDK opened in the HSM: extractable, and
// not only under trusted keys, because it must be wrapped to member and
// device keys the daemon imports (docs/HSM.md, "The GDK is extractable").
func gdkTemplate() []*pkcs11.Attribute {
	return []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
		boolAttr(pkcs11.CKA_TOKEN, false),
		boolAttr(pkcs11.CKA_PRIVATE, true),
		boolAttr(pkcs11.CKA_SENSITIVE, true),
		boolAttr(pkcs11.CKA_EXTRACTABLE, true),
		boolAttr(pkcs11.CKA_WRAP_WITH_TRUSTED, false),
		boolAttr(pkcs11.CKA_ENCRYPT, false),
		boolAttr(pkcs11.CKA_DECRYPT, false),
		boolAttr(pkcs11.CKA_WRAP, false),
		boolAttr(pkcs11.CKA_UNWRAP, false),
	}
}

// generateGDK makes a new GDK in the HSM. It may wrap (the old GDK, for the
// chain) and nothing else.
func (h *HSM) generateGDK(s session) (pkcs11.ObjectHandle, error) {
	k, err := h.mod.ctx.GenerateKey(s.h,
		[]*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_KEY_GEN, nil)},
		[]*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
			pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
			pkcs11.NewAttribute(pkcs11.CKA_VALUE_LEN, GDKSize),
			boolAttr(pkcs11.CKA_TOKEN, false),
			boolAttr(pkcs11.CKA_PRIVATE, true),
			boolAttr(pkcs11.CKA_SENSITIVE, true),
			boolAttr(pkcs11.CKA_EXTRACTABLE, true),
			boolAttr(pkcs11.CKA_WRAP_WITH_TRUSTED, false),
			boolAttr(pkcs11.CKA_ENCRYPT, false),
			boolAttr(pkcs11.CKA_DECRYPT, false),
			boolAttr(pkcs11.CKA_WRAP, true),
			boolAttr(pkcs11.CKA_UNWRAP, false),
		})
	if err != nil {
		return 0, wrapErr("rotate: generate GDK", err)
	}
	return k, nil
}

// openGDK unwraps the GDK of src into a session object.
func (h *HSM) openGDK(s session, src Source, escrowPoint []byte) (pkcs11.ObjectHandle, error) {
	if src.Suite != SuiteECDHP256 {
		mech, err := oaepMechanism(src.Suite)
		if err != nil {
			return 0, err
		}
		priv, err := h.unwrapEscrowPrivate(s, src.EscrowPrivate)
		if err != nil {
			return 0, err
		}
		defer h.destroy(s, priv)
		gdk, err := h.mod.ctx.UnwrapKey(s.h, mech, priv, src.Wrapped, gdkTemplate())
		if err != nil {
			return 0, h.gdkUnwrapErr(src.Suite, err)
		}
		return gdk, nil
	}
	priv, err := h.unwrapEscrowEC(s, src.EscrowPrivate)
	if err != nil {
		return 0, err
	}
	defer h.destroy(s, priv)
	msg, err := kdf.ECDHMessage("escrow", src.EPK, escrowPoint)
	if err != nil {
		return 0, fmt.Errorf("hsm: %w: %w", ErrInvalidInput, err)
	}
	key, err := h.ecdhHMAC(s, priv, src.EPK, msg)
	if err != nil {
		return 0, err
	}
	k, err := h.importAES(s, key, false)
	clear(key)
	if err != nil {
		return 0, wrapErr("import slot key", err)
	}
	defer h.destroy(s, k)
	gdk, err := h.mod.ctx.UnwrapKey(s.h, kw, k, src.Wrapped, gdkTemplate())
	if err != nil {
		// SoftHSM answers CKR_GENERAL_ERROR to an AES-KW integrity failure.
		e := wrapErr("unwrap GDK (AES-KW)", err)
		if recoverable(e) || errors.Is(e, ErrUnavailable) {
			return 0, e
		}
		code, _ := ckrCode(e)
		return 0, &ckrError{op: "unwrap GDK (AES-KW)", code: code, sentinel: ErrBadCiphertext}
	}
	return gdk, nil
}

// ecdhHMAC derives Z = ECDH(priv, peer) inside the HSM as a non-extractable
// generic secret (CKD_NULL: Z is the x coordinate), signs msg with
// CKM_SHA256_HMAC under Z and destroys Z. It returns the HMAC: the slot key.
func (h *HSM) ecdhHMAC(s session, priv pkcs11.ObjectHandle, peer, msg []byte) ([]byte, error) {
	z, err := h.mod.ctx.DeriveKey(s.h,
		[]*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_ECDH1_DERIVE, pkcs11.NewECDH1DeriveParams(pkcs11.CKD_NULL, nil, peer))},
		priv,
		[]*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
			pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_GENERIC_SECRET),
			pkcs11.NewAttribute(pkcs11.CKA_VALUE_LEN, 32),
			boolAttr(pkcs11.CKA_TOKEN, false),
			boolAttr(pkcs11.CKA_PRIVATE, true),
			boolAttr(pkcs11.CKA_SENSITIVE, true),
			boolAttr(pkcs11.CKA_EXTRACTABLE, false),
			boolAttr(pkcs11.CKA_SIGN, true),
			boolAttr(pkcs11.CKA_VERIFY, false),
			boolAttr(pkcs11.CKA_DERIVE, false),
		})
	if err != nil {
		return nil, wrapErrAs("derive ECDH secret", err, ErrBadCiphertext, pkcs11.CKR_DOMAIN_PARAMS_INVALID, pkcs11.CKR_ARGUMENTS_BAD)
	}
	defer h.destroy(s, z)
	if err := h.mod.ctx.SignInit(s.h, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_SHA256_HMAC, nil)}, z); err != nil {
		return nil, wrapErr("HMAC of the ECDH secret", err)
	}
	mac, err := h.mod.ctx.Sign(s.h, msg)
	if err != nil {
		return nil, wrapErr("HMAC of the ECDH secret", err)
	}
	return mac, nil
}

// importAES imports a raw AES key as a non-extractable session object that
// can only wrap (wrap=true) or only unwrap.
func (h *HSM) importAES(s session, key []byte, wrap bool) (pkcs11.ObjectHandle, error) {
	val := bytes.Clone(key)
	defer clear(val)
	return h.mod.ctx.CreateObject(s.h, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
		boolAttr(pkcs11.CKA_TOKEN, false),
		boolAttr(pkcs11.CKA_PRIVATE, true),
		boolAttr(pkcs11.CKA_SENSITIVE, true),
		boolAttr(pkcs11.CKA_EXTRACTABLE, false),
		boolAttr(pkcs11.CKA_WRAP, wrap),
		boolAttr(pkcs11.CKA_UNWRAP, !wrap),
		boolAttr(pkcs11.CKA_ENCRYPT, false),
		boolAttr(pkcs11.CKA_DECRYPT, false),
		pkcs11.NewAttribute(pkcs11.CKA_VALUE, val),
	})
}

// sealToTarget wraps gdk to t.
func (h *HSM) sealToTarget(s session, gdk pkcs11.ObjectHandle, t target, op string) (Sealed, error) {
	if t.ecdh == nil {
		w, err := h.wrapToTarget(s, gdk, t, op)
		return Sealed{Wrapped: w}, err
	}
	// The sender side of ECDH needs no secret of ours: the ephemeral key is
	// made here, used once and dropped, and only K reaches the HSM.
	eph, err := ecdh.P256().GenerateKey(rand.Reader)
	if err != nil {
		return Sealed{}, fmt.Errorf("hsm: %sephemeral key: %w", op, err)
	}
	epk := eph.PublicKey().Bytes()
	z, err := eph.ECDH(t.ecdh)
	if err != nil {
		return Sealed{}, fmt.Errorf("hsm: %s%w: ECDH with the target key failed", op, ErrInvalidInput)
	}
	defer clear(z)
	msg, err := kdf.ECDHMessage(t.kind, epk, t.ecdh.Bytes())
	if err != nil {
		return Sealed{}, fmt.Errorf("hsm: %s%w: %w", op, ErrInvalidInput, err)
	}
	key, err := kdf.ECDHKey(z, msg)
	if err != nil {
		return Sealed{}, fmt.Errorf("hsm: %s%w: %w", op, ErrInvalidInput, err)
	}
	k, err := h.importAES(s, key, true)
	clear(key)
	if err != nil {
		return Sealed{}, wrapErr(op+"import slot key", err)
	}
	defer h.destroy(s, k)
	w, err := h.mod.ctx.WrapKey(s.h, kw, k, gdk)
	if err != nil {
		return Sealed{}, wrapErr(op+"wrap GDK with AES-KW", err)
	}
	return Sealed{Wrapped: w, EPK: epk}, nil
}

func escrowECUnwrapTemplate() []*pkcs11.Attribute {
	return []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PRIVATE_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_EC),
		boolAttr(pkcs11.CKA_TOKEN, false),
		boolAttr(pkcs11.CKA_PRIVATE, true),
		boolAttr(pkcs11.CKA_SENSITIVE, true),
		boolAttr(pkcs11.CKA_EXTRACTABLE, false),
		boolAttr(pkcs11.CKA_WRAP_WITH_TRUSTED, true),
		boolAttr(pkcs11.CKA_DERIVE, true),
		boolAttr(pkcs11.CKA_SIGN, false),
	}
}

// unwrapEscrowEC unwraps an EC escrow private key into a session object.
func (h *HSM) unwrapEscrowEC(s session, w WrappedKey) (pkcs11.ObjectHandle, error) {
	return h.unwrapUnderKEK(s, w, "escrow key", "unwrap EC escrow key", escrowECUnwrapTemplate())
}

// generateECEscrowKey generates a P-256 escrow key pair as session objects,
// self-tests the ecdh-p256 KDF path with it, wraps the private key under
// the KEK and destroys both objects.
func (h *HSM) generateECEscrowKey(ctx context.Context) ([]byte, WrappedKey, error) {
	var der []byte
	var private WrappedKey
	err := h.do(ctx, OpGenerateEscrowKey, func(s session) error {
		var err error
		der, private, err = h.genECEscrowKey(s)
		return err
	})
	if err != nil {
		return nil, WrappedKey{}, err
	}
	return der, private, nil
}

// genECEscrowKey is generateECEscrowKey on a session the caller holds.
func (h *HSM) genECEscrowKey(s session) (der []byte, private WrappedKey, err error) {
	err = func() error {
		pubT := []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PUBLIC_KEY),
			pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_EC),
			pkcs11.NewAttribute(pkcs11.CKA_EC_PARAMS, p256OID),
			boolAttr(pkcs11.CKA_TOKEN, false),
			boolAttr(pkcs11.CKA_PRIVATE, false),
			boolAttr(pkcs11.CKA_VERIFY, false),
		}
		privT := []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PRIVATE_KEY),
			pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_EC),
			boolAttr(pkcs11.CKA_TOKEN, false),
			boolAttr(pkcs11.CKA_PRIVATE, true),
			boolAttr(pkcs11.CKA_SENSITIVE, true),
			boolAttr(pkcs11.CKA_EXTRACTABLE, true),
			boolAttr(pkcs11.CKA_WRAP_WITH_TRUSTED, true),
			boolAttr(pkcs11.CKA_DERIVE, true),
			boolAttr(pkcs11.CKA_SIGN, false),
		}
		pub, priv, err := h.mod.ctx.GenerateKeyPair(s.h,
			[]*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_EC_KEY_PAIR_GEN, nil)}, pubT, privT)
		if err != nil {
			return wrapErr("generate EC escrow key pair", err)
		}
		defer h.destroy(s, pub)
		defer h.destroy(s, priv)
		attrs, err := h.mod.ctx.GetAttributeValue(s.h, pub, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_EC_POINT, nil)})
		if err != nil {
			return wrapErr("read EC escrow public key", err)
		}
		point, err := ecPoint(attrs[0].Value)
		if err != nil {
			return err
		}
		epub, err := ecdh.P256().NewPublicKey(point)
		if err != nil {
			return fmt.Errorf("hsm: read EC escrow public key: %w: not a P-256 point", ErrModule)
		}
		if der, err = x509.MarshalPKIXPublicKey(epub); err != nil {
			return fmt.Errorf("hsm: marshal EC escrow public key: %w", err)
		}
		// Self-test: the HSM's ECDH + HMAC must agree with Go's.
		eph, err := ecdh.P256().GenerateKey(rand.Reader)
		if err != nil {
			return fmt.Errorf("hsm: self-test: %w", err)
		}
		msg, err := kdf.ECDHMessage("escrow", eph.PublicKey().Bytes(), point)
		if err != nil {
			return err
		}
		got, err := h.ecdhHMAC(s, priv, eph.PublicKey().Bytes(), msg)
		if err != nil {
			return err
		}
		defer clear(got)
		z, err := eph.ECDH(epub)
		if err != nil {
			return fmt.Errorf("hsm: self-test: %w", err)
		}
		want, _ := kdf.ECDHKey(z, msg)
		clear(z)
		defer clear(want)
		if !bytes.Equal(got, want) {
			return fmt.Errorf("hsm: self-test of new EC escrow key: %w: the HSM's ECDH+HMAC differs from Go's", ErrModule)
		}
		if private, err = h.wrapUnderKEK(s, priv, "EC escrow key"); err != nil {
			return err
		}
		return nil
	}()
	if err != nil {
		return nil, WrappedKey{}, err
	}
	return der, private, nil
}

// ecPoint reads CKA_EC_POINT: a DER OCTET STRING holding the uncompressed
// point (PKCS#11 2.40), or the raw point (some modules).
func ecPoint(v []byte) ([]byte, error) {
	if len(v) == kdf.P256PointSize && v[0] == 4 {
		return v, nil
	}
	var p []byte
	if rest, err := asn1.Unmarshal(v, &p); err == nil && len(rest) == 0 && len(p) == kdf.P256PointSize && p[0] == 4 {
		return p, nil
	}
	return nil, fmt.Errorf("hsm: read EC escrow public key: %w: CKA_EC_POINT is not an uncompressed P-256 point", ErrModule)
}
