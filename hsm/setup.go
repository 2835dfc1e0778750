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

// KEKReport says how InitKEKVersion created a master KEK version.
type KEKReport struct {
	// Labels are the CKA_LABELs of the version's KEKs, one per key class
	// (kekLabel+"-unlock-vN", "-escrow-rsa-vN", "-escrow-ec-vN").
	Labels []string
	// Private and Trusted are the KEKs' CKA_PRIVATE and CKA_TRUSTED as the
	// token reports them once made: both true, or InitKEKVersion fails.
	Private, Trusted bool
	// AllowedMechanisms: the module took CKA_ALLOWED_MECHANISMS, on the
	// KEKs (AES-KWP only) and in their unwrap templates (each class's one
	// mechanism). A module that refuses it gets KEKs without it.
	AllowedMechanisms bool
	// TemplateEnforced: a key unwrapped under the new unlock KEK with a
	// template asking for more than the unwrap template allows
	// (CKA_DERIVE) was refused, or came out as the template fixes it.
	// InitKEKVersion fails when it is not.
	TemplateEnforced bool
}

// Label is the first KEK's label (the unlock KEK's), for messages.
func (r KEKReport) Label() string {
	if len(r.Labels) == 0 {
		return ""
	}
	return r.Labels[0]
}

// InitKEK makes master KEK version 1: InitKEKVersion(…, CurrentKEKVersion).
func InitKEK(module, tokenLabel, soPIN, userPIN, kekLabel string) (KEKReport, error) {
	return InitKEKVersion(module, tokenLabel, soPIN, userPIN, kekLabel, CurrentKEKVersion)
}

// InitKEKVersion makes master KEK version v (a rotation makes v = the
// newest version + 1): one KEK per key class — unlock keys, rsa-oaep
// escrow keys, ecdh-p256 escrow keys — labelled kekLabel+"-<class>-v"+v
// (kekLabel "" means DefaultKEKLabel). Each is an AES-256 token object
// that is private (CKA_PRIVATE: the token encrypts it at rest), trusted
// (CKA_TRUSTED), sensitive, never extractable, for AES-KWP wrap and unwrap
// only (CKA_ALLOWED_MECHANISMS where the module takes it) and
// unmodifiable, with the class's CKA_UNWRAP_TEMPLATE (classTemplate),
// which fixes every attribute of a key unwrapped under it. A module that
// refuses CKA_UNWRAP_TEMPLATE gets ErrUnsupported: Open would refuse such
// a KEK. A version already there gives ErrKEKExists.
//
// It takes both PINs, because only the SO may set CKA_TRUSTED and, on
// SoftHSM, the SO can create public objects only (a public object's value
// is written in clear into the token directory). So the SO makes each KEK
// as a public *session* object, which lives only in this process's
// memory, and the user copies it (C_CopyObject) into a private token
// object, which keeps CKA_TRUSTED; the session objects are then destroyed.
// No KEK's clear value is ever written anywhere. See docs/HSM.md, "The
// master KEK at rest". Last, it checks that the module enforces the unwrap
// template (KEKReport.TemplateEnforced) and removes the new KEKs if not.
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
	var rep KEKReport
	for c := range numClasses {
		rep.Labels = append(rep.Labels, kekClassLabel(kekLabel, c, v))
	}
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
	// Closing the session also destroys the session objects, on every path.
	defer func() { _ = mod.ctx.CloseSession(s) }()

	// The user's view first: private objects are invisible to the SO.
	if err := mod.ctx.Login(s, pkcs11.CKU_USER, userPIN); err != nil {
		return rep, wrapErr("user login", err)
	}
	for _, label := range append([]string{kekObjectLabel(kekLabel, v)}, rep.Labels...) {
		hs, err := findObjects(mod.ctx, s, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_LABEL, label)})
		if err != nil {
			_ = mod.ctx.Logout(s)
			return rep, err
		}
		if len(hs) > 0 {
			_ = mod.ctx.Logout(s)
			return rep, fmt.Errorf("hsm: init KEK: %w: an object labelled %q is on token %q: version %d is taken", ErrKEKExists, label, tokenLabel, v)
		}
	}
	_ = mod.ctx.Logout(s)

	// The SO makes the trusted KEKs as public session objects.
	if err := mod.ctx.Login(s, pkcs11.CKU_SO, soPIN); err != nil {
		return rep, wrapErr("SO login", err)
	}
	var src [numClasses]pkcs11.ObjectHandle
	defer func() {
		for _, o := range src {
			if o != 0 {
				_ = mod.ctx.DestroyObject(s, o)
			}
		}
	}()
	rep.AllowedMechanisms = !noAllowedMechanismsForTest
	for c := range numClasses {
		o, err := generateSessionKEK(mod.ctx, s, rep.Labels[c], c, rep.AllowedMechanisms)
		if errors.Is(err, ErrUnsupported) && rep.AllowedMechanisms && c == 0 {
			// The module may refuse CKA_ALLOWED_MECHANISMS: go without.
			rep.AllowedMechanisms = false
			o, err = generateSessionKEK(mod.ctx, s, rep.Labels[c], c, false)
		}
		if err != nil {
			_ = mod.ctx.Logout(s)
			return rep, err
		}
		src[c] = o
	}
	// Logging the SO out destroys private session objects only: the public
	// KEKs stay, in this process's memory.
	if err := mod.ctx.Logout(s); err != nil {
		return rep, wrapErr("SO logout", err)
	}

	// The user copies them into private token objects. CKA_MODIFIABLE=false
	// comes last: once it is set, the token refuses to change anything
	// else of the copy.
	if err := mod.ctx.Login(s, pkcs11.CKU_USER, userPIN); err != nil {
		return rep, wrapErr("user login", err)
	}
	defer func() { _ = mod.ctx.Logout(s) }()
	var made []pkcs11.ObjectHandle
	undo := func(err error) (KEKReport, error) {
		for _, o := range made {
			_ = mod.ctx.DestroyObject(s, o)
		}
		return rep, err
	}
	copyT := []*pkcs11.Attribute{
		boolAttr(pkcs11.CKA_TOKEN, true),
		boolAttr(pkcs11.CKA_PRIVATE, true),
		boolAttr(pkcs11.CKA_MODIFIABLE, false),
	}
	if kekModifiableForTest {
		copyT = copyT[:2]
	}
	var keks [numClasses]pkcs11.ObjectHandle
	rep.Private, rep.Trusted = true, true
	for c := range numClasses {
		kek, err := mod.ctx.CopyObject(s, src[c], copyT)
		if err != nil {
			return undo(wrapErr("copy the KEK into a private token object", err))
		}
		made = append(made, kek)
		keks[c] = kek
		info, err := objectInfo(mod.ctx, s, kek)
		if err != nil {
			return undo(err)
		}
		rep.Private, rep.Trusted = rep.Private && info.Private, rep.Trusted && info.Trusted
		if !info.Token || !info.Private || !info.Trusted || info.Modifiable != kekModifiableForTest {
			return undo(fmt.Errorf("hsm: init KEK: %w: the module made the copy token=%v private=%v trusted=%v modifiable=%v",
				ErrUnsupported, info.Token, info.Private, info.Trusted, info.Modifiable))
		}
	}
	ok, err := templateEnforced(mod.ctx, s, keks[classUnlock], rep.AllowedMechanisms)
	if err != nil {
		return undo(err)
	}
	rep.TemplateEnforced = ok
	if !ok && !noUnwrapTemplate && kekTemplateForTest == nil {
		return undo(fmt.Errorf("hsm: init KEK: %w: the module keeps CKA_UNWRAP_TEMPLATE but does not enforce it: "+
			"whoever holds the user PIN could unwrap stored keys with capabilities of their choosing", ErrUnsupported))
	}
	return rep, nil
}

// templateEnforced checks, with a throw-away unlock key wrapped under the
// new unlock KEK, that the module holds an unwrap to the KEK's template: an
// unwrap asking for CKA_DERIVE as well must be refused, or give a key that
// cannot derive (a module may merge the template instead of refusing).
func templateEnforced(ctx *pkcs11.Ctx, s pkcs11.SessionHandle, kek pkcs11.ObjectHandle, mechs bool) (bool, error) {
	k, err := ctx.GenerateKey(s, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_GENERIC_SECRET_KEY_GEN, nil)}, unlockKeyTemplate())
	if err != nil {
		return false, wrapErr("check the unwrap template: generate a key", err)
	}
	defer func() { _ = ctx.DestroyObject(s, k) }()
	blob, err := ctx.WrapKey(s, kwp, kek, k)
	if err != nil {
		return false, wrapErr("check the unwrap template: wrap", err)
	}
	good, err := ctx.UnwrapKey(s, kwp, kek, blob, unwrapTemplate(KeyUnlock, mechs))
	if err != nil {
		return false, wrapErr("check the unwrap template: unwrap with the template itself", err)
	}
	_ = ctx.DestroyObject(s, good)
	var greedy []*pkcs11.Attribute
	for _, a := range unwrapTemplate(KeyUnlock, mechs) {
		if a.Type == pkcs11.CKA_DERIVE {
			a = boolAttr(pkcs11.CKA_DERIVE, true)
		}
		greedy = append(greedy, a)
	}
	o, err := ctx.UnwrapKey(s, kwp, kek, blob, greedy)
	if err != nil {
		return true, nil
	}
	defer func() { _ = ctx.DestroyObject(s, o) }()
	a, err := ctx.GetAttributeValue(s, o, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_DERIVE, nil)})
	return err == nil && !attrBool(a[0]), nil
}

// generateSessionKEK makes, in an SO session, class c's KEK as a public
// session object: trusted, sensitive, never extractable, for AES-KWP wrap
// and unwrap only, with the class's CKA_UNWRAP_TEMPLATE. It stays
// modifiable so that the user's copy can be made private and unmodifiable.
func generateSessionKEK(ctx *pkcs11.Ctx, s pkcs11.SessionHandle, label string, c keyClass, mechs bool) (pkcs11.ObjectHandle, error) {
	at := []*pkcs11.Attribute{
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
	if mechs {
		at = append(at, pkcs11.NewAttribute(pkcs11.CKA_ALLOWED_MECHANISMS, tUlong(0, pkcs11.CKM_AES_KEY_WRAP_PAD).v))
	}
	if !noUnwrapTemplate {
		tmpl := classTemplate(c, mechs)
		if kekTemplateForTest != nil {
			tmpl = nil
			for _, t := range kekTemplateForTest {
				tmpl = append(tmpl, tBool(t, true))
			}
		}
		arr, free, err := attributeArray(tmpl)
		if err != nil {
			return 0, fmt.Errorf("hsm: init KEK: %w", err)
		}
		defer free()
		at = append(at, pkcs11.NewAttribute(pkcs11.CKA_UNWRAP_TEMPLATE, arr))
	}
	var (
		o   pkcs11.ObjectHandle
		err error
	)
	if v := kekValueForTest[c]; v != nil {
		o, err = ctx.CreateObject(s, append(at, pkcs11.NewAttribute(pkcs11.CKA_VALUE, v)))
	} else {
		o, err = ctx.GenerateKey(s, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_KEY_GEN, nil)},
			append(at, pkcs11.NewAttribute(pkcs11.CKA_VALUE_LEN, 32)))
	}
	if err != nil {
		switch code, _ := ckrCode(err); code {
		case pkcs11.CKR_ATTRIBUTE_TYPE_INVALID, pkcs11.CKR_ATTRIBUTE_VALUE_INVALID, pkcs11.CKR_TEMPLATE_INCONSISTENT:
			return 0, wrapErrAs("generate KEK (the module refuses CKA_UNWRAP_TEMPLATE or CKA_ALLOWED_MECHANISMS)", err, ErrUnsupported, code)
		}
		return 0, wrapErr("generate KEK", err)
	}
	return o, nil
}

// Test knobs: kekValueForTest, when set, is imported as a class's KEK
// value instead of generating one (the tests look for it in the token's
// files); kekTemplateForTest replaces the unwrap template,
// kekModifiableForTest leaves the KEK modifiable (the tests check Open
// refuses such KEKs), noUnwrapTemplate leaves the template out and
// noAllowedMechanismsForTest CKA_ALLOWED_MECHANISMS.
var (
	kekValueForTest            [numClasses][]byte
	kekTemplateForTest         []uint
	kekModifiableForTest       bool
	noUnwrapTemplate           bool
	noAllowedMechanismsForTest bool
)

// ckAttributeSize is sizeof(CK_ATTRIBUTE): type, pointer, length.
const ckAttributeSize = 3 * int(unsafe.Sizeof(uintptr(0)))

// attributeArray lays out a CK_ATTRIBUTE array, for an array attribute
// such as CKA_UNWRAP_TEMPLATE (miekg/pkcs11 has no type for these). The
// array and the values it points to live in an anonymous mapping outside
// the Go heap, so the pointers stay valid while the module reads them;
// call free once the PKCS#11 call has returned. The returned byte slice
// is the array itself, copied by miekg/pkcs11 into the attribute's value.
func attributeArray(t []tmplAttr) ([]byte, func(), error) {
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
	values := len(t) * ckAttributeSize
	off := values
	for i, a := range t {
		if off+len(a.v) > len(page) {
			_ = syscall.Munmap(page)
			return nil, nil, fmt.Errorf("hsm: attribute array too large")
		}
		copy(page[off:], a.v)
		e := page[i*ckAttributeSize:]
		put(e[0:], uint64(a.t))
		put(e[word:], uint64(uintptr(unsafe.Pointer(&page[off]))))
		put(e[2*word:], uint64(len(a.v)))
		off += (len(a.v) + word - 1) / word * word
	}
	arr := make([]byte, values)
	copy(arr, page[:values])
	return arr, func() { _ = syscall.Munmap(page) }, nil
}
