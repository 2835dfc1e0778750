package hsm

import (
	"bytes"
	"context"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/subtle"
	"crypto/x509"
	"encoding/asn1"
	"errors"
	"fmt"

	"github.com/miekg/pkcs11"

	"github.com/escrowd/escrowd/format"
)

// SuiteECDHP256 is ECDH on P-256 with an ephemeral sender key; the slot's
// AES-KW key is format.ECDHKey: AES-256-ECB under Z of a hash of both
// public keys. Opening a slot, Z is derived straight into an AES key object
// and the slot key from it (CKM_AES_ECB_ENCRYPT_DATA), so neither leaves
// the HSM. Sealing, the ephemeral key is Go's, so Z and the slot key pass
// through Go memory and are zeroed. See docs/HSM.md.
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
	// Context is the slot's every field (format.SlotContext) and Bind its
	// binding. When Context is set, the GDK opened must match Context.Commit
	// and Bind must verify under it, or the call fails with ErrBinding:
	// the slot was moved to another group, version or kind, or holds a
	// substituted GDK. Every output slot is then checked to name the same
	// group, and the GDK version the HSM actually wraps.
	Context *format.SlotContext
	Bind    []byte
}

// Sealed is a GDK wrapped to one target. EPK is set for ecdh-p256; Commit
// and Bind when the target carried a Context.
type Sealed struct {
	Wrapped []byte
	EPK     []byte
	Commit  []byte
	Bind    []byte
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

// RewrapSlot opens src inside the HSM (the GDK becomes a session object),
// checks its commitment and binding, and wraps it to every target, in
// order, each with its commitment and binding. On the rsa-oaep suites
// nothing secret enters Go memory; on ecdh-p256 the slot keys of the
// targets do (see SuiteECDHP256), never the GDK.
func (h *HSM) RewrapSlot(ctx context.Context, src Source, targets []Target) ([]Sealed, error) {
	_, out, err := h.openAndWrap(ctx, src, nil, targets)
	return out, err
}

// Rotate opens src inside the HSM (the old GDK), generates a new GDK in the
// HSM, wraps the new GDK to every target, and wraps the old GDK under the
// new one's chain key (format.LabelChain) with AES-KW: the chain that keeps
// data encrypted under the old GDK readable to whoever holds the new one.
// chain is the chain slot's context (its Commit and Wrapped are filled
// here); its binding is made under the old GDK, the one it holds. Neither
// GDK nor the chain key enters Go memory.
func (h *HSM) Rotate(ctx context.Context, src Source, chain *format.SlotContext, targets []Target) (Sealed, []Sealed, error) {
	if chain == nil {
		return Sealed{}, nil, fmt.Errorf("hsm: rotate: %w: no chain slot context", ErrInvalidInput)
	}
	c, out, err := h.openAndWrap(ctx, src, chain, targets)
	if err != nil {
		return Sealed{}, nil, err
	}
	return *c, out, nil
}

func (h *HSM) openAndWrap(ctx context.Context, src Source, chain *format.SlotContext, targets []Target) (*Sealed, []Sealed, error) {
	rotate := chain != nil
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
		if len(src.Wrapped) != GDKSize+8 {
			return nil, nil, badGDKLength("an AES-KW slot of %d bytes", len(src.Wrapped))
		}
		escrowPoint = pub.Bytes()
	default:
		return nil, nil, fmt.Errorf("hsm: rewrap: %w: unknown suite %q", ErrInvalidInput, string(src.Suite))
	}
	if len(targets) == 0 {
		return nil, nil, fmt.Errorf("hsm: rewrap: %w: no targets", ErrInvalidInput)
	}
	if err := checkContexts(src, chain, targets); err != nil {
		return nil, nil, err
	}
	ts, err := parseTargets(targets)
	if err != nil {
		return nil, nil, err
	}
	defer zeroTargets(ts)

	var chainOut *Sealed
	var out []Sealed
	op := OpRewrap
	if rotate {
		op = OpRotate
	}
	var hint hotHint
	if h.hotOn() {
		k := hotKeyOf(escrowKind(src.Suite), src.EscrowPrivate)
		hint.key = &k
	}
	// A rotation retires the slot's GDK: it neither uses nor keeps an
	// opened slot (and drops them all once done).
	if h.slotsOn() && !rotate {
		k := hotSlotOf(src)
		hint.slot = &k
	}
	err = h.doFor(ctx, op, hint, func(s session) error {
		chainOut, out = nil, nil
		var gdk, kb pkcs11.ObjectHandle
		var commit []byte
		if en := h.openedSlot(s, hint.slot); en != nil {
			gdk, kb, commit = en.gdk, en.kb, en.commit
		} else {
			var err error
			if gdk, kb, commit, err = h.openSlot(s, src, escrowPoint); err != nil {
				return err
			}
			if !h.keepSlot(s, hint.slot, gdk, kb, commit) {
				defer h.destroy(s, gdk)
				defer h.destroy(s, kb)
			}
		}
		wrapped, kbOut, version := gdk, kb, uint32(0)
		if src.Context != nil {
			version = src.Context.GDKVersion
		}
		if rotate {
			if commit == nil {
				if commit, err = h.commitment(s, gdk, chain.Group, chain.GDKVersion); err != nil {
					return err
				}
			}
			next, err := h.generateGDK(s)
			if err != nil {
				return err
			}
			defer h.destroy(s, next)
			c, err := h.sealChain(s, next, gdk, kb, chain, commit)
			if err != nil {
				return err
			}
			chainOut = &c
			kbNext, err := h.gdkBindKey(s, next, true) // generated: GDKSize
			if err != nil {
				return err
			}
			defer h.destroy(s, kbNext)
			wrapped, kbOut, version, commit = next, kbNext, chain.KeyVersion, nil
		}
		res := make([]Sealed, len(ts))
		for i, t := range ts {
			if res[i], err = h.sealToTarget(s, wrapped, t, fmt.Sprintf("rewrap: target %d: ", i)); err != nil {
				return err
			}
			if t.context == nil {
				continue
			}
			if commit == nil {
				if commit, err = h.commitment(s, wrapped, t.context.Group, version); err != nil {
					return err
				}
			}
			if res[i].Commit, res[i].Bind, err = h.bindOutput(s, kbOut, t.context, commit, res[i]); err != nil {
				return err
			}
		}
		out = res
		return nil
	})
	if err != nil {
		return nil, nil, err
	}
	if rotate && h.slotsOn() {
		h.dropHotSlots()
	}
	return chainOut, out, nil
}

// openSlot opens src on s: the GDK (into a session object), its binding
// key, and, when src has a context, the checks of its commitment and
// binding, whose commitment it returns. On an error nothing is left.
func (h *HSM) openSlot(s session, src Source, escrowPoint []byte) (gdk, kb pkcs11.ObjectHandle, commit []byte, err error) {
	gdk, err = h.openGDK(s, src, escrowPoint)
	if err != nil {
		return 0, 0, nil, err
	}
	kb, err = h.gdkBindKey(s, gdk, gdkLengthKnown(src))
	if err != nil {
		h.destroy(s, gdk)
		return 0, 0, nil, err
	}
	if src.Context != nil {
		if commit, err = h.verifySource(s, gdk, kb, src); err != nil {
			h.destroy(s, kb)
			h.destroy(s, gdk)
			return 0, 0, nil, err
		}
	}
	return gdk, kb, commit, nil
}

// checkContexts refuses output contexts that would label the GDK with
// another group or version than the one it is: a rewrap keeps the source's
// GDK version, a rotation's outputs name the next one, and its chain slot
// holds the source's. Without a source context (tests, the ceiling) output
// contexts are taken as given.
func checkContexts(src Source, chain *format.SlotContext, targets []Target) error {
	if src.Context == nil {
		if chain != nil && chain.KeyVersion != chain.GDKVersion+1 {
			return fmt.Errorf("hsm: rotate: %w: the chain slot must be wrapped under the next GDK version", ErrInvalidInput)
		}
		return nil
	}
	group, want := src.Context.Group, src.Context.GDKVersion
	if chain != nil {
		if chain.Group != group || chain.GDKVersion != want || chain.KeyVersion != want+1 {
			return fmt.Errorf("hsm: rotate: %w: the chain slot must hold GDK %d of group %s under GDK %d", ErrInvalidInput, want, group, want+1)
		}
		want++
	}
	for i, t := range targets {
		if t.Context != nil && (t.Context.Group != group || t.Context.GDKVersion != want) {
			return fmt.Errorf("hsm: rewrap: target %d: %w: the slot must name GDK %d of group %s", i, ErrInvalidInput, want, group)
		}
	}
	return nil
}

// gdkBindKey derives gdk's binding key, DK(gdk, format.LabelBind), as an
// HMAC key that never leaves the HSM, after checking, unless lengthKnown,
// that gdk is exactly a 32-byte key. The check is needed only for a GDK
// opened with RSA-OAEP, whose plaintext can have any length: an AES-KW
// unwrap (ecdh-p256) gives exactly len(wrapped)-8 bytes, which openAndWrap
// checks in Go before any call, and a generated GDK has the length asked
// for. The check takes one call, because SoftHSM leaves CKA_VALUE_LEN at 0
// on keys unwrapped with RSA-OAEP (and refuses it in the unwrap template)
// and CKA_VALUE is sensitive: an AES-KWP wrap under the unlock KEK (RFC
// 5649, discarded) is 40 bytes only for keys of 25 to 32 bytes and fails
// for an empty one; the AES-ECB derivation of the binding key, made
// anyway, then works only for AES key lengths (16, 24, 32). A GDK of any
// other length is refused, never padded into a different key.
func (h *HSM) gdkBindKey(s session, gdk pkcs11.ObjectHandle, lengthKnown bool) (pkcs11.ObjectHandle, error) {
	if !lengthKnown {
		kek, err := s.kek(KeyUnlock)
		if err != nil {
			return 0, err
		}
		w, err := s.p.WrapKey(s.h, kwp, kek, gdk)
		if err != nil {
			e := wrapErr("check GDK length", err)
			if code, _ := ckrCode(e); code == pkcs11.CKR_KEY_NOT_WRAPPABLE || code == pkcs11.CKR_KEY_SIZE_RANGE {
				return 0, badGDKLength("it is empty")
			}
			return 0, e
		}
		if len(w) != GDKSize+8 {
			return 0, badGDKLength("it holds %d to %d bytes", len(w)-15, len(w)-8)
		}
	}
	kb, err := h.deriveECB(s, gdk, format.LabelBind[:], hmacKeyTemplate())
	if err != nil {
		e := wrapErr("derive the binding key", err)
		if recoverable(e) || errors.Is(e, ErrUnavailable) {
			return 0, e
		}
		// 25 to 31 bytes: not an AES key length.
		return 0, badGDKLength("it holds 25 to 31 bytes")
	}
	return kb, nil
}

// badGDKLength is the error of a slot that does not hold a 32-byte GDK.
func badGDKLength(format string, args ...any) error {
	return fmt.Errorf("hsm: rewrap: %w: the ciphertext does not hold a %d-byte GDK: %s", ErrBadCiphertext, GDKSize, fmt.Sprintf(format, args...))
}

// gdkLengthKnown reports whether src's GDK is known to be 32 bytes without
// asking the HSM: an AES-KW (RFC 3394) unwrap that succeeds gives exactly
// len(wrapped)-8 bytes, and openAndWrap refuses any other slot length
// before the first call.
func gdkLengthKnown(src Source) bool { return src.Suite == SuiteECDHP256 }

// derivedAESTemplate is the template of an AES-256 key derived inside the
// HSM (a chain key, an ecdh-p256 slot key): a session object that never
// leaves the token and may do exactly one thing, usage (CKA_WRAP,
// CKA_UNWRAP or CKA_ENCRYPT).
func derivedAESTemplate(usage uint) []*pkcs11.Attribute {
	return []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
		pkcs11.NewAttribute(pkcs11.CKA_VALUE_LEN, format.KeySize),
		boolAttr(pkcs11.CKA_TOKEN, false),
		boolAttr(pkcs11.CKA_PRIVATE, true),
		boolAttr(pkcs11.CKA_SENSITIVE, true),
		boolAttr(pkcs11.CKA_EXTRACTABLE, false),
		boolAttr(pkcs11.CKA_ENCRYPT, usage == pkcs11.CKA_ENCRYPT),
		boolAttr(pkcs11.CKA_DECRYPT, false),
		boolAttr(pkcs11.CKA_WRAP, usage == pkcs11.CKA_WRAP),
		boolAttr(pkcs11.CKA_UNWRAP, usage == pkcs11.CKA_UNWRAP),
		boolAttr(pkcs11.CKA_DERIVE, false),
	}
}

func hmacKeyTemplate() []*pkcs11.Attribute {
	return []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_GENERIC_SECRET),
		pkcs11.NewAttribute(pkcs11.CKA_VALUE_LEN, format.KeySize),
		boolAttr(pkcs11.CKA_TOKEN, false),
		boolAttr(pkcs11.CKA_PRIVATE, true),
		boolAttr(pkcs11.CKA_SENSITIVE, true),
		boolAttr(pkcs11.CKA_EXTRACTABLE, false),
		boolAttr(pkcs11.CKA_SIGN, true),
		boolAttr(pkcs11.CKA_VERIFY, false),
		boolAttr(pkcs11.CKA_DERIVE, false),
	}
}

// commitment computes format.Commitment of gdk inside the HSM: the prefix
// with C_DigestUpdate, the key with C_DigestKey.
func (h *HSM) commitment(s session, gdk pkcs11.ObjectHandle, group string, version uint32) ([]byte, error) {
	if err := s.p.DigestInit(s.h, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_SHA256, nil)}); err != nil {
		return nil, wrapErr("GDK commitment", err)
	}
	if err := s.p.DigestUpdate(s.h, format.CommitmentPrefix(group, version)); err != nil {
		return nil, wrapErr("GDK commitment", err)
	}
	if err := s.p.DigestKey(s.h, gdk); err != nil {
		return nil, wrapErr("GDK commitment", err)
	}
	d, err := s.p.DigestFinal(s.h)
	return d, wrapErr("GDK commitment", err)
}

// mac is HMAC-SHA256 under an HMAC key object.
func (h *HSM) mac(s session, k pkcs11.ObjectHandle, msg []byte) ([]byte, error) {
	if err := s.p.SignInit(s.h, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_SHA256_HMAC, nil)}, k); err != nil {
		return nil, wrapErr("slot binding", err)
	}
	m, err := s.p.Sign(s.h, msg)
	return m, wrapErr("slot binding", err)
}

// verifySource checks the source slot against the GDK it opened: the
// commitment first (the GDK is the one the slot names), then the binding
// (the slot is the one made for this group, version, kind and key). It
// returns the commitment.
func (h *HSM) verifySource(s session, gdk, kb pkcs11.ObjectHandle, src Source) ([]byte, error) {
	c := src.Context
	commit, err := h.commitment(s, gdk, c.Group, c.GDKVersion)
	if err != nil {
		return nil, err
	}
	if subtle.ConstantTimeCompare(commit, c.Commit) != 1 {
		return nil, fmt.Errorf("hsm: rewrap: %w: the GDK in the slot is not the one its commitment names (a substituted key, or a slot of another group or GDK version)", ErrBinding)
	}
	m, err := h.mac(s, kb, c.Message())
	if err != nil {
		return nil, err
	}
	if !hmac.Equal(m, src.Bind) {
		return nil, fmt.Errorf("hsm: rewrap: %w: the slot's binding does not verify (moved from another group, recipient, GDK version or kind, or altered)", ErrBinding)
	}
	return commit, nil
}

// bindOutput fills an output slot's context with what the HSM made and
// computes its binding under kb.
func (h *HSM) bindOutput(s session, kb pkcs11.ObjectHandle, tc *format.SlotContext, commit []byte, sealed Sealed) (c, bind []byte, err error) {
	full := *tc
	full.Commit, full.EPK, full.Wrapped = commit, sealed.EPK, sealed.Wrapped
	bind, err = h.mac(s, kb, full.Message())
	if err != nil {
		return nil, nil, err
	}
	return commit, bind, nil
}

// sealChain wraps old under the chain key of next and binds the chain slot
// under old's binding key kbOld: a chain slot is bound by the GDK it holds,
// like every slot.
func (h *HSM) sealChain(s session, next, old, kbOld pkcs11.ObjectHandle, chain *format.SlotContext, commitOld []byte) (Sealed, error) {
	kc, err := h.deriveECB(s, next, format.LabelChain[:], derivedAESTemplate(pkcs11.CKA_WRAP))
	if err != nil {
		return Sealed{}, wrapErr("rotate: derive the chain key", err)
	}
	defer h.destroy(s, kc)
	w, err := s.p.WrapKey(s.h, kw, kc, old)
	if err != nil {
		return Sealed{}, wrapErr("rotate: wrap the old GDK under the chain key", err)
	}
	sealed := Sealed{Wrapped: w}
	if sealed.Commit, sealed.Bind, err = h.bindOutput(s, kbOld, chain, commitOld, sealed); err != nil {
		return Sealed{}, err
	}
	return sealed, nil
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
		// Its binding and chain keys are derived from it (docs/HSM.md).
		boolAttr(pkcs11.CKA_DERIVE, true),
	}
}

// generateGDK makes a new GDK in the HSM. Like an opened GDK it is
// extractable (to be wrapped to its recipients) and may only derive (its
// chain and binding keys): the GDK itself keys nothing.
func (h *HSM) generateGDK(s session) (pkcs11.ObjectHandle, error) {
	k, err := s.p.GenerateKey(s.h,
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
			boolAttr(pkcs11.CKA_WRAP, false),
			boolAttr(pkcs11.CKA_UNWRAP, false),
			boolAttr(pkcs11.CKA_DERIVE, true),
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
		priv, done, err := h.escrowKey(s, escrowKind(src.Suite), src.EscrowPrivate, "unwrap escrow key")
		if err != nil {
			return 0, err
		}
		defer done()
		gdk, err := s.p.UnwrapKey(s.h, mech, priv, src.Wrapped, gdkTemplate())
		if err != nil {
			return 0, h.gdkUnwrapErr(src.Suite, err)
		}
		return gdk, nil
	}
	priv, done, err := h.escrowKey(s, escrowKind(src.Suite), src.EscrowPrivate, "unwrap EC escrow key")
	if err != nil {
		return 0, err
	}
	defer done()
	info, err := format.ECDHInfo(src.EPK, escrowPoint)
	if err != nil {
		return 0, fmt.Errorf("hsm: %w: %w", ErrInvalidInput, err)
	}
	k, err := h.ecdhSlotKey(s, priv, src.EPK, info, pkcs11.CKA_UNWRAP)
	if err != nil {
		return 0, err
	}
	defer h.destroy(s, k)
	gdk, err := s.p.UnwrapKey(s.h, kw, k, src.Wrapped, gdkTemplate())
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

// escrowKind is the kind of the escrow key of a suite.
func escrowKind(s Suite) KeyKind {
	if s == SuiteECDHP256 {
		return KeyEscrowEC
	}
	return KeyEscrow
}

// ecdhSlotKey derives an ecdh-p256 slot key inside the HSM:
// Z = ECDH(priv, peer) straight into a non-extractable AES key object
// (CKD_NULL: Z is the x coordinate), then K = AES-256-ECB(Z, info) into a
// non-extractable AES key that may only do usage (CKA_UNWRAP when opening
// a slot; CKA_ENCRYPT for the self-test). Z is destroyed at once; neither
// reaches Go.
func (h *HSM) ecdhSlotKey(s session, priv pkcs11.ObjectHandle, peer []byte, info format.Label, usage uint) (pkcs11.ObjectHandle, error) {
	z, err := s.p.DeriveKey(s.h,
		[]*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_ECDH1_DERIVE, pkcs11.NewECDH1DeriveParams(pkcs11.CKD_NULL, nil, peer))},
		priv,
		[]*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
			pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
			pkcs11.NewAttribute(pkcs11.CKA_VALUE_LEN, 32),
			boolAttr(pkcs11.CKA_TOKEN, false),
			boolAttr(pkcs11.CKA_PRIVATE, true),
			boolAttr(pkcs11.CKA_SENSITIVE, true),
			boolAttr(pkcs11.CKA_EXTRACTABLE, false),
			boolAttr(pkcs11.CKA_ENCRYPT, false),
			boolAttr(pkcs11.CKA_DECRYPT, false),
			boolAttr(pkcs11.CKA_WRAP, false),
			boolAttr(pkcs11.CKA_UNWRAP, false),
			boolAttr(pkcs11.CKA_DERIVE, true),
		})
	if err != nil {
		return 0, wrapErrAs("derive ECDH secret", err, ErrBadCiphertext, pkcs11.CKR_DOMAIN_PARAMS_INVALID, pkcs11.CKR_ARGUMENTS_BAD)
	}
	defer h.destroy(s, z)
	k, err := h.deriveECB(s, z, info[:], derivedAESTemplate(usage))
	if err != nil {
		return 0, wrapErr("derive the ecdh-p256 slot key", err)
	}
	return k, nil
}

// importAES imports a raw AES key as a non-extractable session object that
// can only wrap (wrap=true) or only unwrap.
func (h *HSM) importAES(s session, key []byte, wrap bool) (pkcs11.ObjectHandle, error) {
	val := bytes.Clone(key)
	defer clear(val)
	return s.p.CreateObject(s.h, []*pkcs11.Attribute{
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
	info, err := format.ECDHInfo(epk, t.ecdh.Bytes())
	if err != nil {
		return Sealed{}, fmt.Errorf("hsm: %s%w: %w", op, ErrInvalidInput, err)
	}
	key, err := format.ECDHKey(z, info)
	if err != nil {
		return Sealed{}, fmt.Errorf("hsm: %s%w: %w", op, ErrInvalidInput, err)
	}
	k, err := h.importAES(s, key, true)
	clear(key)
	if err != nil {
		return Sealed{}, wrapErr(op+"import slot key", err)
	}
	defer h.destroy(s, k)
	w, err := s.p.WrapKey(s.h, kw, k, gdk)
	if err != nil {
		return Sealed{}, wrapErr(op+"wrap GDK with AES-KW", err)
	}
	return Sealed{Wrapped: w, EPK: epk}, nil
}

// unwrapEscrowEC unwraps an EC escrow private key into a session object.
func (h *HSM) unwrapEscrowEC(s session, w WrappedKey) (pkcs11.ObjectHandle, error) {
	return h.unwrapUnderKEK(s, w, KeyEscrowEC, "unwrap EC escrow key")
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
		pub, priv, err := s.p.GenerateKeyPair(s.h,
			[]*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_EC_KEY_PAIR_GEN, nil)}, pubT, privT)
		if err != nil {
			return wrapErr("generate EC escrow key pair", err)
		}
		defer h.destroy(s, pub)
		defer h.destroy(s, priv)
		attrs, err := s.p.GetAttributeValue(s.h, pub, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_EC_POINT, nil)})
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
		// Self-test: the HSM's ECDH and slot-key derivation must agree with
		// Go's (and so with WebCrypto's): both encrypt one block under K.
		eph, err := ecdh.P256().GenerateKey(rand.Reader)
		if err != nil {
			return fmt.Errorf("hsm: self-test: %w", err)
		}
		info, err := format.ECDHInfo(eph.PublicKey().Bytes(), point)
		if err != nil {
			return err
		}
		k, err := h.ecdhSlotKey(s, priv, eph.PublicKey().Bytes(), info, pkcs11.CKA_ENCRYPT)
		if err != nil {
			return err
		}
		defer h.destroy(s, k)
		if err := s.p.EncryptInit(s.h, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_ECB, nil)}, k); err != nil {
			return wrapErr("self-test of new EC escrow key", err)
		}
		got, err := s.p.Encrypt(s.h, selfTestBlock[:])
		if err != nil {
			return wrapErr("self-test of new EC escrow key", err)
		}
		z, err := eph.ECDH(epub)
		if err != nil {
			return fmt.Errorf("hsm: self-test: %w", err)
		}
		kGo, err := format.ECDHKey(z, info)
		clear(z)
		if err != nil {
			return err
		}
		want, err := format.DK(kGo, format.Label{})
		clear(kGo)
		if err != nil {
			return err
		}
		if !bytes.Equal(got, want[:16]) {
			return fmt.Errorf("hsm: self-test of new EC escrow key: %w: the HSM's ECDH and slot-key derivation differ from Go's", ErrModule)
		}
		if private, err = h.wrapUnderKEK(s, priv, KeyEscrowEC, "EC escrow key"); err != nil {
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
	if len(v) == format.P256PointSize && v[0] == 4 {
		return v, nil
	}
	var p []byte
	if rest, err := asn1.Unmarshal(v, &p); err == nil && len(rest) == 0 && len(p) == format.P256PointSize && p[0] == 4 {
		return p, nil
	}
	return nil, fmt.Errorf("hsm: read EC escrow public key: %w: CKA_EC_POINT is not an uncompressed P-256 point", ErrModule)
}

// selfTestBlock is what the EC escrow key's self-test encrypts: a zero
// block, so that the expected value is the first half of DK(K, zero label).
var selfTestBlock [16]byte
