package hsm

import (
	"encoding/binary"
	"errors"
	"fmt"
	"syscall"
	"unsafe"

	"github.com/miekg/pkcs11"
)

// Setup ceremony helpers, used by package softhsm and by `escrowctl hsm
// init`. They take the SO PIN from the caller (who reads it from a file)
// and never keep it.

// InitToken initialises a token labelled label on a free slot (a slot whose
// token is not initialised; SoftHSM always offers one) with soPIN, and sets
// the user PIN. A token already labelled label gives ErrTokenExists.
func InitToken(module string, label, soPIN, userPIN string) error {
	if label == "" || soPIN == "" || userPIN == "" {
		return fmt.Errorf("hsm: init token: %w: label, SO PIN and user PIN are required", ErrInvalidInput)
	}
	mod, err := acquireModule(module)
	if err != nil {
		return err
	}
	defer mod.release()
	if _, err := mod.findToken(label); err == nil {
		return fmt.Errorf("hsm: init token: %w: a token labelled %q exists", ErrTokenExists, label)
	}
	slots, err := mod.ctx.GetSlotList(true)
	if err != nil {
		return wrapErr("list slots", err)
	}
	free, found := uint(0), false
	for _, s := range slots {
		ti, err := mod.ctx.GetTokenInfo(s)
		if err == nil && ti.Flags&pkcs11.CKF_TOKEN_INITIALIZED == 0 {
			free, found = s, true
			break
		}
	}
	if !found {
		return fmt.Errorf("hsm: init token: %w: no slot with an uninitialised token", ErrTokenNotFound)
	}
	if err := mod.ctx.InitToken(free, soPIN, label); err != nil {
		return wrapErr("init token", err)
	}
	// SoftHSM moves an initialised token to a new slot ID: find it again.
	slot, err := mod.findToken(label)
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
	if err := mod.ctx.InitPIN(s, userPIN); err != nil {
		return wrapErr("init user PIN", err)
	}
	return nil
}

// TokenExists reports whether module has an initialised token labelled label.
func TokenExists(module, label string) (bool, error) {
	mod, err := acquireModule(module)
	if err != nil {
		return false, err
	}
	defer mod.release()
	_, err = mod.findToken(label)
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, ErrTokenNotFound):
		return false, nil
	}
	return false, err
}

// KEKReport says how InitKEKVersion created the KEK.
type KEKReport struct {
	Label string // CKA_LABEL of the KEK object (kekLabel+"-vN")
	// Private and Trusted are the KEK's CKA_PRIVATE and CKA_TRUSTED as the
	// token reports them once it is made: both true, or InitKEKVersion
	// fails.
	Private, Trusted bool
}

// InitKEK makes master KEK version 1: InitKEKVersion(…, CurrentKEKVersion).
func InitKEK(module, tokenLabel, soPIN, userPIN, kekLabel string) (KEKReport, error) {
	return InitKEKVersion(module, tokenLabel, soPIN, userPIN, kekLabel, CurrentKEKVersion)
}

// InitKEKVersion makes master KEK version v (a rotation makes v = the
// newest version + 1), labelled kekLabel+"-v"+v (kekLabel "" means
// DefaultKEKLabel): an AES-256 token object that is private (CKA_PRIVATE:
// the token encrypts it at rest), trusted (CKA_TRUSTED), sensitive, never
// extractable, wrap/unwrap only and unmodifiable. It also sets
// CKA_UNWRAP_TEMPLATE so that keys unwrapped with the KEK are private,
// sensitive and wrap-with-trusted (extractable only under a trusted key,
// that is under a KEK: what lets a KEK rotation re-wrap them inside the
// token, and nothing else export them); a module that refuses the
// attribute gets ErrUnsupported, for Open would refuse such a KEK. A KEK
// already there gives ErrKEKExists.
//
// It takes both PINs, because only the SO may set CKA_TRUSTED and, on
// SoftHSM, the SO can create public objects only (a public object's value
// is written in clear into the token directory). So the SO makes the KEK
// as a public *session* object, which lives only in this process's
// memory, and the user copies it (C_CopyObject) into a private token
// object, which keeps CKA_TRUSTED; the session object is then destroyed.
// The KEK's clear value is never written anywhere. See docs/HSM.md, "The
// master KEK at rest".
//
// Run it before any Open of the token in this process: a user login held
// by the process makes the SO login fail.
func InitKEKVersion(module, tokenLabel, soPIN, userPIN, kekLabel string, v uint32) (KEKReport, error) {
	if kekLabel == "" {
		kekLabel = DefaultKEKLabel
	}
	if v == 0 {
		return KEKReport{}, fmt.Errorf("hsm: init KEK: %w: version 0", ErrInvalidInput)
	}
	if soPIN == "" || userPIN == "" {
		return KEKReport{}, fmt.Errorf("hsm: init KEK: %w: the SO PIN and the user PIN are both required", ErrInvalidInput)
	}
	label := kekObjectLabel(kekLabel, v)
	rep := KEKReport{Label: label}
	mod, err := acquireModule(module)
	if err != nil {
		return rep, err
	}
	defer mod.release()
	slot, err := mod.findToken(tokenLabel)
	if err != nil {
		return rep, err
	}
	s, err := mod.ctx.OpenSession(slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
	if err != nil {
		return rep, wrapErr("open session", err)
	}
	// Closing the session also destroys the session object, on every path.
	defer func() { _ = mod.ctx.CloseSession(s) }()

	// The user's view first: private objects are invisible to the SO.
	if err := mod.ctx.Login(s, pkcs11.CKU_USER, userPIN); err != nil {
		return rep, wrapErr("user login", err)
	}
	hs, err := findObjects(mod.ctx, s, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_LABEL, label)})
	_ = mod.ctx.Logout(s)
	if err != nil {
		return rep, err
	}
	if len(hs) > 0 {
		return rep, fmt.Errorf("hsm: init KEK: %w: an object labelled %q is on token %q", ErrKEKExists, label, tokenLabel)
	}

	// The SO makes the trusted KEK as a public session object.
	if err := mod.ctx.Login(s, pkcs11.CKU_SO, soPIN); err != nil {
		return rep, wrapErr("SO login", err)
	}
	src, err := generateSessionKEK(mod.ctx, s, label)
	if err != nil {
		_ = mod.ctx.Logout(s)
		return rep, err
	}
	defer func() { _ = mod.ctx.DestroyObject(s, src) }()
	// Logging the SO out destroys private session objects only: the public
	// KEK stays, in this process's memory.
	if err := mod.ctx.Logout(s); err != nil {
		return rep, wrapErr("SO logout", err)
	}

	// The user copies it into a private token object. CKA_MODIFIABLE=false
	// comes last: once it is set, the token refuses to change anything
	// else of the copy.
	if err := mod.ctx.Login(s, pkcs11.CKU_USER, userPIN); err != nil {
		return rep, wrapErr("user login", err)
	}
	defer func() { _ = mod.ctx.Logout(s) }()
	copyT := []*pkcs11.Attribute{
		boolAttr(pkcs11.CKA_TOKEN, true),
		boolAttr(pkcs11.CKA_PRIVATE, true),
		boolAttr(pkcs11.CKA_MODIFIABLE, false),
	}
	if kekModifiableForTest {
		copyT = copyT[:2]
	}
	kek, err := mod.ctx.CopyObject(s, src, copyT)
	if err != nil {
		return rep, wrapErr("copy the KEK into a private token object", err)
	}
	info, err := objectInfo(mod.ctx, s, kek)
	if err == nil && (!info.Token || !info.Private || !info.Trusted || info.Modifiable != kekModifiableForTest) {
		err = fmt.Errorf("hsm: init KEK: %w: the module made the copy token=%v private=%v trusted=%v modifiable=%v",
			ErrUnsupported, info.Token, info.Private, info.Trusted, info.Modifiable)
	}
	if err != nil {
		_ = mod.ctx.DestroyObject(s, kek)
		return rep, err
	}
	rep.Private, rep.Trusted = info.Private, info.Trusted
	return rep, nil
}

// generateSessionKEK makes, in an SO session, the KEK as a public session
// object: trusted, sensitive, never extractable, wrap/unwrap only, with
// CKA_UNWRAP_TEMPLATE. It stays modifiable so that the user's copy can be
// made private and unmodifiable.
func generateSessionKEK(ctx *pkcs11.Ctx, s pkcs11.SessionHandle, label string) (pkcs11.ObjectHandle, error) {
	attrs := []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_AES),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
		pkcs11.NewAttribute(pkcs11.CKA_ID, []byte(label)),
		boolAttr(pkcs11.CKA_TOKEN, false),
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
	}
	if !noUnwrapTemplate {
		// CKA_EXTRACTABLE is left to the caller: the daemon unwraps keys
		// for use non-extractable, and a KEK rotation unwraps them
		// extractable to wrap them under the next KEK.
		// CKA_WRAP_WITH_TRUSTED=true is what stops any other export: only
		// the SO can make a trusted key.
		tmpl := kekTemplate
		if kekTemplateForTest != nil {
			tmpl = kekTemplateForTest
		}
		specs := make([]attrBoolSpec, len(tmpl))
		for i, t := range tmpl {
			specs[i] = attrBoolSpec{t, true}
		}
		arr, free, err := attributeArray(specs)
		if err != nil {
			return 0, fmt.Errorf("hsm: init KEK: %w", err)
		}
		defer free()
		attrs = append(attrs, pkcs11.NewAttribute(pkcs11.CKA_UNWRAP_TEMPLATE, arr))
	}
	var (
		o   pkcs11.ObjectHandle
		err error
	)
	if kekValueForTest != nil {
		o, err = ctx.CreateObject(s, append(attrs, pkcs11.NewAttribute(pkcs11.CKA_VALUE, kekValueForTest)))
	} else {
		o, err = ctx.GenerateKey(s, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_KEY_GEN, nil)},
			append(attrs, pkcs11.NewAttribute(pkcs11.CKA_VALUE_LEN, 32)))
	}
	if err != nil {
		switch code, _ := ckrCode(err); code {
		case pkcs11.CKR_ATTRIBUTE_TYPE_INVALID, pkcs11.CKR_ATTRIBUTE_VALUE_INVALID, pkcs11.CKR_TEMPLATE_INCONSISTENT:
			return 0, wrapErrAs("generate KEK (the module refuses CKA_UNWRAP_TEMPLATE?)", err, ErrUnsupported, code)
		}
		return 0, wrapErr("generate KEK", err)
	}
	return o, nil
}

// Test knobs: kekValueForTest, when set, is imported as the KEK's value
// instead of generating one (the tests look for it in the token's files);
// kekTemplateForTest replaces the unwrap template and kekModifiableForTest
// leaves the KEK modifiable (the tests check Open refuses such KEKs).
var (
	kekValueForTest      []byte
	kekTemplateForTest   []uint
	kekModifiableForTest bool
)

// noUnwrapTemplate makes InitKEK leave CKA_UNWRAP_TEMPLATE out (tests only).
var noUnwrapTemplate bool

type attrBoolSpec struct {
	t uint
	v bool
}

// ckAttributeSize is sizeof(CK_ATTRIBUTE): type, pointer, length.
const ckAttributeSize = 3 * int(unsafe.Sizeof(uintptr(0)))

// attributeArray lays out a CK_ATTRIBUTE array of CK_BBOOL attributes, for
// an array attribute such as CKA_UNWRAP_TEMPLATE (miekg/pkcs11 has no type
// for these). The array and the values it points to live in an anonymous
// mapping outside the Go heap, so the pointers stay valid while the module
// reads them; call free once the PKCS#11 call has returned. The returned
// byte slice is the array itself, copied by miekg/pkcs11 into the
// attribute's value.
func attributeArray(attrs []attrBoolSpec) ([]byte, func(), error) {
	page, err := syscall.Mmap(-1, 0, 4096, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_ANON|syscall.MAP_PRIVATE)
	if err != nil {
		return nil, nil, err
	}
	word := int(unsafe.Sizeof(uintptr(0)))
	put := func(b []byte, v uint64) {
		if word == 8 {
			binary.NativeEndian.PutUint64(b, v)
		} else {
			binary.NativeEndian.PutUint32(b, uint32(v))
		}
	}
	values := len(attrs) * ckAttributeSize
	for i, a := range attrs {
		if a.v {
			page[values+i] = 1
		}
		e := page[i*ckAttributeSize:]
		put(e[0:], uint64(a.t))
		put(e[word:], uint64(uintptr(unsafe.Pointer(&page[values+i]))))
		put(e[2*word:], 1) // sizeof(CK_BBOOL)
	}
	arr := make([]byte, values)
	copy(arr, page[:values])
	return arr, func() { _ = syscall.Munmap(page) }, nil
}
