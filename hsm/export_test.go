package hsm

// Test hooks for package hsm_test (which may import softhsm; package hsm's
// own tests may not, as softhsm imports hsm). They touch the token behind
// the pool's back, or play an attacker holding the user PIN, to test what
// the token (not this package) allows.

import (
	"context"
	"encoding/binary"
	"fmt"
	"unsafe"

	"github.com/miekg/pkcs11"
)

// CloseAllSessionsForTest calls C_CloseAllSessions on the token's slot:
// every session of this process on the token dies and the login with them.
func (h *HSM) CloseAllSessionsForTest() error {
	h.mu.Lock()
	slot := h.slot
	h.mu.Unlock()
	return h.mod.ctx.CloseAllSessions(slot)
}

// LogoutForTest logs the user out through a pooled session (and returns
// the session to the pool as if nothing happened).
func (h *HSM) LogoutForTest(ctx context.Context) error {
	s, err := h.acquire(ctx)
	if err != nil {
		return err
	}
	defer h.release(s, false)
	return h.mod.ctx.Logout(s.h)
}

// HoldSessionForTest checks a session out until release is called.
func (h *HSM) HoldSessionForTest(ctx context.Context) (release func(), err error) {
	s, err := h.acquire(ctx)
	if err != nil {
		return nil, err
	}
	return func() { h.release(s, false) }, nil
}

// IdleSessionsForTest is the number of idle pooled sessions.
func (h *HSM) IdleSessionsForTest() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.idle)
}

// GroupKind says which group key an attack uses.
type GroupKind int

const (
	KindUnlock GroupKind = iota
	KindEscrow
)

func (k GroupKind) String() string {
	if k == KindEscrow {
		return "escrow"
	}
	return "unlock"
}

// unwrapAsDaemon unwraps a group key exactly as the daemon does for use.
func (h *HSM) unwrapAsDaemon(s session, kind GroupKind, w WrappedKey) (pkcs11.ObjectHandle, error) {
	if kind == KindEscrow {
		return h.unwrapEscrowPrivate(s, w)
	}
	return h.unwrapUnlock(s, w)
}

// withGroupKey runs fn on a group key unwrapped as the daemon would.
// Recovery is not involved: a failure is the test's answer.
func (h *HSM) withGroupKey(ctx context.Context, kind GroupKind, w WrappedKey, fn func(s session, k pkcs11.ObjectHandle) error) error {
	s, err := h.acquire(ctx)
	if err != nil {
		return err
	}
	defer h.release(s, false)
	k, err := h.unwrapAsDaemon(s, kind, w)
	if err != nil {
		return fmt.Errorf("unwrap as daemon: %w", err)
	}
	defer h.destroy(s, k)
	return fn(s, k)
}

// ExportUnderImportedKeyForTest imports an AES key of the attacker's as a
// session object and asks the token to wrap the unwrapped group key under it.
func (h *HSM) ExportUnderImportedKeyForTest(ctx context.Context, kind GroupKind, w WrappedKey, aesKey []byte) ([]byte, error) {
	var out []byte
	err := h.withGroupKey(ctx, kind, w, func(s session, k pkcs11.ObjectHandle) error {
		ak, err := h.mod.ctx.CreateObject(s.h, []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
			pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
			boolAttr(pkcs11.CKA_TOKEN, false),
			boolAttr(pkcs11.CKA_WRAP, true),
			pkcs11.NewAttribute(pkcs11.CKA_VALUE, aesKey),
		})
		if err != nil {
			return wrapErr("import attacker key", err)
		}
		defer h.destroy(s, ak)
		out, err = h.mod.ctx.WrapKey(s.h, kwp, ak, k)
		return wrapErr("wrap under attacker key", err)
	})
	return out, err
}

// CopyWithForTest tries C_CopyObject of the unwrapped group key with one
// boolean attribute changed.
func (h *HSM) CopyWithForTest(ctx context.Context, kind GroupKind, w WrappedKey, attr string, v bool) error {
	t, err := attrType(attr)
	if err != nil {
		return err
	}
	return h.withGroupKey(ctx, kind, w, func(s session, k pkcs11.ObjectHandle) error {
		c, err := h.mod.ctx.CopyObject(s.h, k, []*pkcs11.Attribute{boolAttr(t, v)})
		if err == nil {
			h.destroy(s, c)
		}
		return wrapErr("copy object", err)
	})
}

// SetAttributeForTest tries C_SetAttributeValue on the unwrapped group key.
func (h *HSM) SetAttributeForTest(ctx context.Context, kind GroupKind, w WrappedKey, attr string, v bool) error {
	t, err := attrType(attr)
	if err != nil {
		return err
	}
	return h.withGroupKey(ctx, kind, w, func(s session, k pkcs11.ObjectHandle) error {
		return wrapErr("set attribute", h.mod.ctx.SetAttributeValue(s.h, k, []*pkcs11.Attribute{boolAttr(t, v)}))
	})
}

// kekHandleForTest finds the object labelled as kind's KEK of version v
// (or the single KEK of an old version), without checking it: what an
// attacker would use.
func (h *HSM) kekHandleForTest(s session, kind KeyKind, v uint32) (pkcs11.ObjectHandle, error) {
	c, err := classOf(kind)
	if err != nil {
		return 0, err
	}
	for _, label := range []string{kekClassLabel(h.cfg.KEKLabel, c, v), kekObjectLabel(h.cfg.KEKLabel, v)} {
		hs, err := findObjects(h.mod.ctx, s.h, []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
			pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
		})
		if err != nil {
			return 0, err
		}
		if len(hs) > 0 {
			return hs[0], nil
		}
	}
	return 0, fmt.Errorf("hsm: %w: no KEK of version %d for %v", ErrKEKNotFound, v, kind)
}

// AttackerUnwrapForTest unwraps a stored unlock key (a generic secret)
// under the KEK with the attacker's template (extractable, not sensitive,
// not wrap-with-trusted) and reads CKA_VALUE. If loggedOut, it first logs
// the user out and uses a public (CKA_PRIVATE=false) session object: the
// KEK is a public object on SoftHSM.
func (h *HSM) AttackerUnwrapForTest(ctx context.Context, w WrappedKey, loggedOut bool) ([]byte, error) {
	s, err := h.acquire(ctx)
	if err != nil {
		return nil, err
	}
	defer h.release(s, loggedOut) // a logged-out session is not returned to the pool
	if loggedOut {
		if err := h.mod.ctx.Logout(s.h); err != nil {
			return nil, wrapErr("logout", err)
		}
	}
	kek, err := h.kekHandleForTest(s, KeyUnlock, w.KEKVersion)
	if err != nil {
		return nil, fmt.Errorf("find KEK without login: %w", err)
	}
	k, err := h.mod.ctx.UnwrapKey(s.h, kwp, kek, w.Blob, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_GENERIC_SECRET),
		boolAttr(pkcs11.CKA_TOKEN, false),
		boolAttr(pkcs11.CKA_PRIVATE, !loggedOut),
		boolAttr(pkcs11.CKA_SENSITIVE, false),
		boolAttr(pkcs11.CKA_EXTRACTABLE, true),
		boolAttr(pkcs11.CKA_WRAP_WITH_TRUSTED, false),
		boolAttr(pkcs11.CKA_SIGN, true),
	})
	if err != nil {
		return nil, wrapErr("attacker unwrap", err)
	}
	defer h.destroy(s, k)
	a, err := h.mod.ctx.GetAttributeValue(s.h, k, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_VALUE, nil)})
	if err != nil {
		return nil, wrapErr("read CKA_VALUE", err)
	}
	return a[0].Value, nil
}

func attrType(name string) (uint, error) {
	switch name {
	case "CKA_WRAP_WITH_TRUSTED":
		return pkcs11.CKA_WRAP_WITH_TRUSTED, nil
	case "CKA_EXTRACTABLE":
		return pkcs11.CKA_EXTRACTABLE, nil
	case "CKA_SENSITIVE":
		return pkcs11.CKA_SENSITIVE, nil
	case "CKA_TOKEN":
		return pkcs11.CKA_TOKEN, nil
	case "CKA_DERIVE":
		return pkcs11.CKA_DERIVE, nil
	case "CKA_SIGN":
		return pkcs11.CKA_SIGN, nil
	}
	return 0, fmt.Errorf("unknown attribute %q", name)
}

// InitKEKWithoutUnwrapTemplateForTest makes KEK v1 as InitKEK does, but
// without CKA_UNWRAP_TEMPLATE: the counterfactual for the export tests.
func InitKEKWithoutUnwrapTemplateForTest(module, tokenLabel, soPIN, userPIN, kekLabel string) error {
	noUnwrapTemplate = true
	defer func() { noUnwrapTemplate = false }()
	_, err := InitKEK(module, tokenLabel, soPIN, userPIN, kekLabel)
	return err
}

// AllowKEKWithoutTemplateForTest makes Open accept a master KEK without
// CKA_UNWRAP_TEMPLATE until the test ends: the counterfactual of the
// export tests.
func AllowKEKWithoutTemplateForTest(t interface{ Cleanup(func()) }) {
	templateCheckOffForTest = true
	t.Cleanup(func() { templateCheckOffForTest = false })
}

// InitKEKWithValuesForTest makes KEK version v exactly as InitKEKVersion
// does, except that the SO imports values (the unlock, escrow-rsa and
// escrow-ec KEKs, in that order) instead of generating them: the tests
// then look for them in the token's files.
func InitKEKWithValuesForTest(module, tokenLabel, soPIN, userPIN, kekLabel string, v uint32, values [3][]byte) (KEKReport, error) {
	kekValueForTest = values
	defer func() { kekValueForTest = [numClasses][]byte{} }()
	return InitKEKVersion(module, tokenLabel, soPIN, userPIN, kekLabel, v)
}

// InitPublicKEKForTest makes KEK version v as `escrowctl hsm init` made it
// before master KEKs were private and per class: the SO generates (or,
// with value, imports) one KEK straight as a public token object, with
// the unwrap template {CKA_PRIVATE, CKA_SENSITIVE, CKA_WRAP_WITH_TRUSTED}.
// Tokens made so are what the migration path starts from.
func InitPublicKEKForTest(module, tokenLabel, soPIN, kekLabel string, v uint32, value []byte) error {
	mod, err := acquireModule(module)
	if err != nil {
		return err
	}
	defer mod.release()
	slot, err := mod.findToken(tokenLabel)
	if err != nil {
		return err
	}
	s, err := mod.ctx.OpenSession(slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
	if err != nil {
		return wrapErr("open session", err)
	}
	defer func() { _ = mod.ctx.CloseSession(s) }()
	if err := mod.ctx.Login(s, pkcs11.CKU_SO, soPIN); err != nil {
		return wrapErr("SO login", err)
	}
	defer func() { _ = mod.ctx.Logout(s) }()
	if kekLabel == "" {
		kekLabel = DefaultKEKLabel
	}
	label := kekObjectLabel(kekLabel, v)
	tmpl, free, err := attributeArray(legacyTemplate)
	if err != nil {
		return err
	}
	defer free()
	attrs := []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
		pkcs11.NewAttribute(pkcs11.CKA_ID, []byte(label)),
		boolAttr(pkcs11.CKA_TOKEN, true),
		boolAttr(pkcs11.CKA_PRIVATE, false),
		boolAttr(pkcs11.CKA_SENSITIVE, true),
		boolAttr(pkcs11.CKA_EXTRACTABLE, false),
		boolAttr(pkcs11.CKA_TRUSTED, true),
		boolAttr(pkcs11.CKA_WRAP, true),
		boolAttr(pkcs11.CKA_UNWRAP, true),
		boolAttr(pkcs11.CKA_ENCRYPT, false),
		boolAttr(pkcs11.CKA_DECRYPT, false),
		boolAttr(pkcs11.CKA_SIGN, false),
		boolAttr(pkcs11.CKA_VERIFY, false),
		boolAttr(pkcs11.CKA_DERIVE, false),
		boolAttr(pkcs11.CKA_MODIFIABLE, false),
		pkcs11.NewAttribute(pkcs11.CKA_UNWRAP_TEMPLATE, tmpl),
	}
	if value != nil {
		_, err = mod.ctx.CreateObject(s, append(attrs, pkcs11.NewAttribute(pkcs11.CKA_VALUE, value)))
	} else {
		_, err = mod.ctx.GenerateKey(s, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_KEY_GEN, nil)},
			append(attrs, pkcs11.NewAttribute(pkcs11.CKA_VALUE_LEN, 32)))
	}
	return wrapErr("make public KEK", err)
}

// DeriveAttackForTest unwraps a stored unlock key with the attributes the
// KEK's unwrap template forces, plus CKA_DERIVE, and
// derives base||known with CKM_CONCATENATE_BASE_AND_KEY into an
// extractable, non-sensitive key, then reads its value.
func (h *HSM) DeriveAttackForTest(ctx context.Context, w WrappedKey, known []byte) ([]byte, error) {
	s, err := h.acquire(ctx)
	if err != nil {
		return nil, err
	}
	defer h.release(s, true)
	kek, err := h.kekHandleForTest(s, KeyUnlock, w.KEKVersion)
	if err != nil {
		return nil, err
	}
	k, err := h.mod.ctx.UnwrapKey(s.h, kwp, kek, w.Blob, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_GENERIC_SECRET),
		boolAttr(pkcs11.CKA_TOKEN, false),
		boolAttr(pkcs11.CKA_PRIVATE, true),
		boolAttr(pkcs11.CKA_SENSITIVE, true),
		boolAttr(pkcs11.CKA_EXTRACTABLE, false),
		boolAttr(pkcs11.CKA_WRAP_WITH_TRUSTED, true),
		boolAttr(pkcs11.CKA_DERIVE, true),
	})
	if err != nil {
		return nil, wrapErr("attacker unwrap with CKA_DERIVE", err)
	}
	defer h.destroy(s, k)
	other, err := h.mod.ctx.CreateObject(s.h, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_GENERIC_SECRET),
		boolAttr(pkcs11.CKA_TOKEN, false),
		boolAttr(pkcs11.CKA_SENSITIVE, false),
		boolAttr(pkcs11.CKA_EXTRACTABLE, true),
		pkcs11.NewAttribute(pkcs11.CKA_VALUE, known),
	})
	if err != nil {
		return nil, wrapErr("import known key", err)
	}
	defer h.destroy(s, other)
	param := make([]byte, unsafe.Sizeof(uintptr(0)))
	if len(param) == 8 {
		binary.NativeEndian.PutUint64(param, uint64(other))
	} else {
		binary.NativeEndian.PutUint32(param, uint32(other))
	}
	d, err := h.mod.ctx.DeriveKey(s.h, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_CONCATENATE_BASE_AND_KEY, param)}, k, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_GENERIC_SECRET),
		boolAttr(pkcs11.CKA_TOKEN, false),
		boolAttr(pkcs11.CKA_SENSITIVE, false),
		boolAttr(pkcs11.CKA_EXTRACTABLE, true),
	})
	if err != nil {
		return nil, wrapErr("derive base||key", err)
	}
	defer h.destroy(s, d)
	a, err := h.mod.ctx.GetAttributeValue(s.h, d, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_VALUE, nil)})
	if err != nil {
		return nil, wrapErr("read derived CKA_VALUE", err)
	}
	return a[0].Value, nil
}

// ForcedAttributesForTest unwraps a stored unlock key with a minimal
// template and reports the resulting sensitive/extractable/wrap-with-trusted
// attributes, and whether CKA_VALUE could be read.
func (h *HSM) ForcedAttributesForTest(ctx context.Context, w WrappedKey) (sensitive, extractable, wwt, valueRead bool, err error) {
	s, err := h.acquire(ctx)
	if err != nil {
		return
	}
	defer h.release(s, true)
	kek, err := h.kekHandleForTest(s, KeyUnlock, w.KEKVersion)
	if err != nil {
		return
	}
	k, err := h.mod.ctx.UnwrapKey(s.h, kwp, kek, w.Blob, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_GENERIC_SECRET),
		boolAttr(pkcs11.CKA_TOKEN, false),
	})
	if err != nil {
		err = wrapErr("unwrap with minimal template", err)
		return
	}
	defer h.destroy(s, k)
	info, err := objectInfo(h.mod.ctx, s.h, k)
	if err != nil {
		return
	}
	_, verr := h.mod.ctx.GetAttributeValue(s.h, k, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_VALUE, nil)})
	return info.Sensitive, info.Extractable, info.WrapWithTrusted, verr == nil, nil
}

// RotationUnwrapAttackForTest plays an attacker with the user PIN who
// unwraps a stored key with the template a KEK rotation uses (extractable,
// wrap-with-trusted: what the KEK's unwrap template now allows) and then
// tries to get it out: "wrap" under an imported AES key, "set" or "copy"
// CKA_WRAP_WITH_TRUSTED=false, or "read" CKA_VALUE. If loggedOut, the unwrap
// runs without a login (public session objects only).
func (h *HSM) RotationUnwrapAttackForTest(ctx context.Context, kind KeyKind, w WrappedKey, attempt string, loggedOut bool) error {
	s, err := h.acquire(ctx)
	if err != nil {
		return err
	}
	defer h.release(s, true)
	if loggedOut {
		if err := h.mod.ctx.Logout(s.h); err != nil {
			return wrapErr("logout", err)
		}
	}
	kek, err := h.kekHandleForTest(s, kind, w.KEKVersion)
	if err != nil {
		return err
	}
	tmpl := unwrapTemplate(kind, true)
	if loggedOut {
		tmpl = append(tmpl[:1:1], append([]*pkcs11.Attribute{boolAttr(pkcs11.CKA_PRIVATE, false)}, tmpl[2:]...)...)
	}
	k, err := h.mod.ctx.UnwrapKey(s.h, kwp, kek, w.Blob, tmpl)
	if err != nil {
		return fmt.Errorf("unwrap as a rotation: %w", wrapErr("unwrap", err))
	}
	defer h.destroy(s, k)
	switch attempt {
	case "wrap":
		ak, err := h.mod.ctx.CreateObject(s.h, []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
			pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
			boolAttr(pkcs11.CKA_TOKEN, false),
			boolAttr(pkcs11.CKA_WRAP, true),
			pkcs11.NewAttribute(pkcs11.CKA_VALUE, make([]byte, 32)),
		})
		if err != nil {
			return fmt.Errorf("setup: %w", wrapErr("import attacker key", err))
		}
		defer h.destroy(s, ak)
		_, err = h.mod.ctx.WrapKey(s.h, kwp, ak, k)
		return wrapErr("wrap under attacker key", err)
	case "set":
		return wrapErr("set CKA_WRAP_WITH_TRUSTED", h.mod.ctx.SetAttributeValue(s.h, k, []*pkcs11.Attribute{boolAttr(pkcs11.CKA_WRAP_WITH_TRUSTED, false)}))
	case "copy":
		c, err := h.mod.ctx.CopyObject(s.h, k, []*pkcs11.Attribute{boolAttr(pkcs11.CKA_WRAP_WITH_TRUSTED, false)})
		if err == nil {
			h.destroy(s, c)
		}
		return wrapErr("copy with CKA_WRAP_WITH_TRUSTED=false", err)
	case "read":
		attr, name := uint(pkcs11.CKA_VALUE), "CKA_VALUE"
		if kind == KeyEscrow {
			attr, name = pkcs11.CKA_PRIVATE_EXPONENT, "CKA_PRIVATE_EXPONENT"
		}
		_, err := h.mod.ctx.GetAttributeValue(s.h, k, []*pkcs11.Attribute{pkcs11.NewAttribute(attr, nil)})
		return wrapErr("read "+name, err)
	}
	return fmt.Errorf("unknown attempt %q", attempt)
}

// SOModelForTest measures why InitKEKVersion is a two-PIN ceremony: it
// tries to make a private trusted key as the SO, and a trusted key as the
// user, on a new token session each time. Both must fail on SoftHSM.
func SOModelForTest(module, tokenLabel, soPIN, userPIN string) (soPrivate, userTrusted error) {
	mod, err := acquireModule(module)
	if err != nil {
		return err, err
	}
	defer mod.release()
	slot, err := mod.findToken(tokenLabel)
	if err != nil {
		return err, err
	}
	try := func(user uint, pin string, private, trusted bool) error {
		s, err := mod.ctx.OpenSession(slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
		if err != nil {
			return wrapErr("open session", err)
		}
		defer func() { _ = mod.ctx.CloseSession(s) }()
		if err := mod.ctx.Login(s, user, pin); err != nil {
			return fmt.Errorf("setup: %w", wrapErr("login", err))
		}
		defer func() { _ = mod.ctx.Logout(s) }()
		o, err := mod.ctx.GenerateKey(s, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_KEY_GEN, nil)}, []*pkcs11.Attribute{
			pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
			pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
			pkcs11.NewAttribute(pkcs11.CKA_VALUE_LEN, 32),
			boolAttr(pkcs11.CKA_TOKEN, false),
			boolAttr(pkcs11.CKA_PRIVATE, private),
			boolAttr(pkcs11.CKA_TRUSTED, trusted),
			boolAttr(pkcs11.CKA_WRAP, true),
		})
		if err == nil {
			_ = mod.ctx.DestroyObject(s, o)
		}
		return wrapErr("generate", err)
	}
	return try(pkcs11.CKU_SO, soPIN, true, true), try(pkcs11.CKU_USER, userPIN, true, true)
}

// InitKEKVariantForTest makes KEK version v by the ceremony, but unfit:
// "modifiable" leaves CKA_MODIFIABLE true, "template" gives it an unwrap
// template fixing CKA_SENSITIVE only.
func InitKEKVariantForTest(module, tokenLabel, soPIN, userPIN, kekLabel string, v uint32, variant string) error {
	switch variant {
	case "modifiable":
		kekModifiableForTest = true
	case "template":
		kekTemplateForTest = []uint{pkcs11.CKA_SENSITIVE}
	default:
		return fmt.Errorf("unknown variant %q", variant)
	}
	defer func() { kekModifiableForTest, kekTemplateForTest = false, nil }()
	_, err := InitKEKVersion(module, tokenLabel, soPIN, userPIN, kekLabel, v)
	return err
}

// PlantKEKForTest plays whoever can open a session on the token without
// logging in (on SoftHSM: whoever can write the token directory): it makes
// a public AES token object labelled label, as close to a master KEK as
// such a session can (everything but CKA_TRUSTED, which only the SO sets).
func PlantKEKForTest(module, tokenLabel, label string) error {
	mod, err := acquireModule(module)
	if err != nil {
		return err
	}
	defer mod.release()
	slot, err := mod.findToken(tokenLabel)
	if err != nil {
		return err
	}
	s, err := mod.ctx.OpenSession(slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
	if err != nil {
		return wrapErr("open session", err)
	}
	defer func() { _ = mod.ctx.CloseSession(s) }()
	arr, free, err := attributeArray(legacyTemplate)
	if err != nil {
		return err
	}
	defer free()
	_, err = mod.ctx.GenerateKey(s, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_KEY_GEN, nil)}, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
		pkcs11.NewAttribute(pkcs11.CKA_VALUE_LEN, 32),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
		boolAttr(pkcs11.CKA_TOKEN, true),
		boolAttr(pkcs11.CKA_PRIVATE, false),
		boolAttr(pkcs11.CKA_SENSITIVE, true),
		boolAttr(pkcs11.CKA_EXTRACTABLE, false),
		boolAttr(pkcs11.CKA_WRAP, true),
		boolAttr(pkcs11.CKA_UNWRAP, true),
		boolAttr(pkcs11.CKA_ENCRYPT, false),
		boolAttr(pkcs11.CKA_DECRYPT, false),
		pkcs11.NewAttribute(pkcs11.CKA_UNWRAP_TEMPLATE, arr),
		boolAttr(pkcs11.CKA_MODIFIABLE, false),
	})
	return wrapErr("plant a KEK-like object", err)
}

// AlterKEKForTest plays an attacker with the user PIN against the current
// master KEK: "set" drops its unwrap template with C_SetAttributeValue,
// "copy" clones it under another label without the template, "copy-modifiable"
// clones it modifiable (to alter the clone afterwards).
func (h *HSM) AlterKEKForTest(ctx context.Context, attempt string) error {
	s, err := h.acquire(ctx)
	if err != nil {
		return err
	}
	defer h.release(s, true)
	empty := pkcs11.NewAttribute(pkcs11.CKA_UNWRAP_TEMPLATE, []byte{})
	kek, err := s.kek(KeyUnlock)
	if err != nil {
		return err
	}
	switch attempt {
	case "set":
		return wrapErr("set CKA_UNWRAP_TEMPLATE", h.mod.ctx.SetAttributeValue(s.h, kek, []*pkcs11.Attribute{empty}))
	case "copy", "copy-modifiable":
		t := []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_LABEL, "escrowd-kek-v99"), empty}
		if attempt == "copy-modifiable" {
			t = []*pkcs11.Attribute{boolAttr(pkcs11.CKA_MODIFIABLE, true)}
		}
		o, err := h.mod.ctx.CopyObject(s.h, kek, t)
		if err == nil {
			h.destroy(s, o)
		}
		return wrapErr("copy the KEK", err)
	}
	return fmt.Errorf("unknown attempt %q", attempt)
}

// UnwrapVariantForTest plays an attacker with the user PIN and a stored
// key of kind: it unwraps the key under its class's KEK with the class
// template changed by variant, and destroys what it got. nil means the
// token allowed it.
func (h *HSM) UnwrapVariantForTest(ctx context.Context, kind KeyKind, w WrappedKey, variant string) error {
	s, err := h.acquire(ctx)
	if err != nil {
		return err
	}
	defer h.release(s, true)
	kek, err := h.kekHandleForTest(s, kind, w.KEKVersion)
	if err != nil {
		return fmt.Errorf("setup: %w", err)
	}
	c, _ := classOf(kind)
	t := unwrapTemplate(kind, true)
	set := func(typ uint, v any) {
		for i, a := range t {
			if a.Type == typ {
				t[i] = pkcs11.NewAttribute(typ, v)
				return
			}
		}
		t = append(t[:len(t)-1], pkcs11.NewAttribute(typ, v), t[len(t)-1]) // before CKA_MODIFIABLE
	}
	switch variant {
	case "exact":
	case "derive":
		set(pkcs11.CKA_DERIVE, c != classEscrowEC)
	case "sign":
		set(pkcs11.CKA_SIGN, c != classUnlock)
	case "encrypt":
		set(pkcs11.CKA_ENCRYPT, true)
	case "wrap":
		set(pkcs11.CKA_WRAP, true)
	case "not-wrap-with-trusted":
		set(pkcs11.CKA_WRAP_WITH_TRUSTED, false)
	case "not-sensitive":
		set(pkcs11.CKA_SENSITIVE, false)
	case "token":
		set(pkcs11.CKA_TOKEN, true)
	case "modifiable":
		set(pkcs11.CKA_MODIFIABLE, true)
	case "no-modifiable":
		t = t[:len(t)-1]
	case "aes-key":
		set(pkcs11.CKA_CLASS, tUlong(0, pkcs11.CKO_SECRET_KEY).v)
		set(pkcs11.CKA_KEY_TYPE, tUlong(0, pkcs11.CKK_AES).v)
	case "other-mechanism":
		set(pkcs11.CKA_ALLOWED_MECHANISMS, tUlong(0, classMechanism(c), pkcs11.CKM_RSA_X_509, pkcs11.CKM_SHA_1_HMAC).v)
	case "no-mechanism-limit":
		var u []*pkcs11.Attribute
		for _, a := range t {
			if a.Type != pkcs11.CKA_ALLOWED_MECHANISMS {
				u = append(u, a)
			}
		}
		t = u
	default:
		return fmt.Errorf("setup: unknown variant %q", variant)
	}
	o, err := h.mod.ctx.UnwrapKey(s.h, kwp, kek, w.Blob, t)
	if err != nil {
		return wrapErr("unwrap with the variant "+variant, err)
	}
	h.destroy(s, o)
	return nil
}

// CrossClassUnwrapForTest unwraps a stored key of kind under the KEK of
// class other (same version) with its own class template, as an attacker
// with the user PIN would to turn it into a key of another class.
func (h *HSM) CrossClassUnwrapForTest(ctx context.Context, kind, other KeyKind, w WrappedKey) error {
	s, err := h.acquire(ctx)
	if err != nil {
		return err
	}
	defer h.release(s, true)
	kek, err := h.kekHandleForTest(s, other, w.KEKVersion)
	if err != nil {
		return fmt.Errorf("setup: %w", err)
	}
	o, err := h.mod.ctx.UnwrapKey(s.h, kwp, kek, w.Blob, unwrapTemplate(kind, true))
	if err != nil {
		return wrapErr("unwrap under another class's KEK", err)
	}
	h.destroy(s, o)
	return nil
}

// MechanismForTest uses a key as CKA_ALLOWED_MECHANISMS forbids:
// "kek-kw" wraps a fresh key under the current unlock KEK with
// CKM_AES_KEY_WRAP; "unlock-sha1" starts an HMAC-SHA1 with a stored unlock
// key unwrapped as the daemon does; "rsa-pkcs1" and "rsa-raw" start a
// PKCS#1 v1.5 or raw RSA decryption with a stored RSA escrow key.
func (h *HSM) MechanismForTest(ctx context.Context, w WrappedKey, attempt string) error {
	s, err := h.acquire(ctx)
	if err != nil {
		return err
	}
	defer h.release(s, true)
	switch attempt {
	case "kek-kw":
		k, err := h.mod.ctx.GenerateKey(s.h, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_GENERIC_SECRET_KEY_GEN, nil)}, unlockKeyTemplate())
		if err != nil {
			return fmt.Errorf("setup: %w", wrapErr("generate", err))
		}
		defer h.destroy(s, k)
		kek, err := s.kek(KeyUnlock)
		if err != nil {
			return err
		}
		_, err = h.mod.ctx.WrapKey(s.h, kw, kek, k)
		return wrapErr("wrap with CKM_AES_KEY_WRAP", err)
	case "unlock-sha1":
		k, err := h.unwrapUnlock(s, w)
		if err != nil {
			return fmt.Errorf("setup: %w", err)
		}
		defer h.destroy(s, k)
		return wrapErr("HMAC-SHA1", h.mod.ctx.SignInit(s.h, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_SHA_1_HMAC, nil)}, k))
	case "rsa-pkcs1", "rsa-raw":
		k, err := h.unwrapEscrowPrivate(s, w)
		if err != nil {
			return fmt.Errorf("setup: %w", err)
		}
		defer h.destroy(s, k)
		m := uint(pkcs11.CKM_RSA_PKCS)
		if attempt == "rsa-raw" {
			m = pkcs11.CKM_RSA_X_509
		}
		return wrapErr(attempt+" decrypt", h.mod.ctx.DecryptInit(s.h, []*pkcs11.Mechanism{pkcs11.NewMechanism(m, nil)}, k))
	}
	return fmt.Errorf("setup: unknown attempt %q", attempt)
}
