package hsm

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/miekg/pkcs11"
)

// KEKState describes one master KEK version found on the token: the secret
// keys whose labels name that version (one per key class, or the single
// KEK of a version made before). Only a usable one is ever used.
type KEKState struct {
	Version uint32
	Label   string // the unlock KEK's label (or the single KEK's)
	Usable  bool
	// Public: the KEK is a public object (CKA_PRIVATE=false), accepted only
	// with Config.AllowPublicKEK.
	Public bool
	// Problem says why the version is refused ("" when usable), or, for a
	// usable version, what else carries its label and was ignored.
	Problem string
	err     error // the refusal, for Open
}

// templateCheckOffForTest lets the tests open a KEK made without an unwrap
// template, to measure what that template prevents.
var templateCheckOffForTest bool

// checkKEKObject says whether object o is fit to be class c's master KEK
// (or, legacy, the single KEK of a version made before per-class KEKs):
// an AES-256 token key, trusted (only the SO makes those), unmodifiable,
// sensitive, never extractable, for wrap and unwrap only (and for AES-KWP
// only, if it says), with the unwrap template InitKEKVersion sets, and
// private unless allowPublic. mechs reports whether that template carries
// CKA_ALLOWED_MECHANISMS. The reason it is not fit is an error wrapping
// ErrKEKRefused, or ErrKEKPublic when being public is the only fault.
func checkKEKObject(ctx *pkcs11.Ctx, s pkcs11.SessionHandle, o pkcs11.ObjectHandle, label string, c keyClass, legacy, allowPublic bool) (public, mechs bool, err error) {
	refuse := func(format string, args ...any) (bool, bool, error) {
		return false, false, fmt.Errorf("hsm: %w: %q %s", ErrKEKRefused, label, fmt.Sprintf(format, args...))
	}
	get := func(t uint) (*pkcs11.Attribute, bool) {
		a, err := ctx.GetAttributeValue(s, o, []*pkcs11.Attribute{pkcs11.NewAttribute(t, nil)})
		if err != nil || len(a) != 1 {
			return nil, false
		}
		return a[0], true
	}
	flag := func(t uint) (v, ok bool) {
		a, ok := get(t)
		if !ok {
			return false, false
		}
		return attrBool(a), true
	}
	if v, ok := flag(pkcs11.CKA_TRUSTED); !ok || !v {
		return refuse("is not CKA_TRUSTED: only the security officer makes a master KEK (`escrowctl hsm init`); an object made without the SO is never used")
	}
	if v, ok := flag(pkcs11.CKA_MODIFIABLE); !ok || v {
		return refuse("is modifiable (CKA_MODIFIABLE is not false): its attributes could be changed after the ceremony")
	}
	if a, ok := get(pkcs11.CKA_KEY_TYPE); !ok || attrUint(a) != pkcs11.CKK_AES {
		return refuse("is not an AES key")
	}
	if a, ok := get(pkcs11.CKA_VALUE_LEN); ok && attrUint(a) != 32 {
		return refuse("is not 32 bytes long")
	}
	for _, want := range []struct {
		t    uint
		v    bool
		name string
	}{
		{pkcs11.CKA_TOKEN, true, "CKA_TOKEN"},
		{pkcs11.CKA_SENSITIVE, true, "CKA_SENSITIVE"},
		{pkcs11.CKA_EXTRACTABLE, false, "CKA_EXTRACTABLE"},
		{pkcs11.CKA_WRAP, true, "CKA_WRAP"},
		{pkcs11.CKA_UNWRAP, true, "CKA_UNWRAP"},
		{pkcs11.CKA_ENCRYPT, false, "CKA_ENCRYPT"},
		{pkcs11.CKA_DECRYPT, false, "CKA_DECRYPT"},
		{pkcs11.CKA_SIGN, false, "CKA_SIGN"},
		{pkcs11.CKA_VERIFY, false, "CKA_VERIFY"},
		{pkcs11.CKA_DERIVE, false, "CKA_DERIVE"},
	} {
		if v, ok := flag(want.t); !ok || v != want.v {
			return refuse("must have %s=%v", want.name, want.v)
		}
	}
	if a, ok := get(pkcs11.CKA_ALLOWED_MECHANISMS); ok && len(a.Value) > 0 && !bytes.Equal(a.Value, tUlong(0, pkcs11.CKM_AES_KEY_WRAP_PAD).v) {
		return refuse("allows mechanisms other than CKM_AES_KEY_WRAP_PAD")
	}
	a, ok := get(pkcs11.CKA_UNWRAP_TEMPLATE)
	switch {
	case templateCheckOffForTest:
		mechs = !legacy
	case !ok || len(a.Value) == 0:
		return refuse("has no CKA_UNWRAP_TEMPLATE: whoever may use it could unwrap stored keys exportable")
	default:
		got, ok := templateShape(a.Value)
		var want [][]tmplAttr
		if legacy {
			want = [][]tmplAttr{legacyTemplate}
		} else {
			want = [][]tmplAttr{classTemplate(c, true), classTemplate(c, false)}
		}
		match := -1
		for i, w := range want {
			if ok && sameShape(got, w) {
				match = i
			}
		}
		if match < 0 {
			return refuse("has an unwrap template fixing %s, not %s as `escrowctl hsm init` makes it", shapeNames(got), shapeNames(want[0]))
		}
		mechs = !legacy && match == 0
	}
	if v, ok := flag(pkcs11.CKA_PRIVATE); !ok || !v {
		if !allowPublic {
			return true, false, fmt.Errorf("hsm: %w: %q is a public object (CKA_PRIVATE=false), as `escrowctl hsm init` made it before "+
				"master KEKs were private: SoftHSM writes a public object's value in clear into the token directory, so a copy "+
				"of that directory and of the store opens every stored key. Move the keys to a private KEK (docs/LIFECYCLE.md, "+
				"\"Migrating from a public master KEK\"); until then only escrowd -hsm-allow-public-kek accepts it", ErrKEKPublic, label)
		}
		return true, mechs, nil
	}
	return false, mechs, nil
}

// templateShape reads the attribute types and value sizes of an
// attribute-array value as C_GetAttributeValue returns it through
// miekg/pkcs11: the CK_ATTRIBUTE entries with their types and sizes, the
// values staying with the module.
func templateShape(arr []byte) ([]tmplAttr, bool) {
	if len(arr)%ckAttributeSize != 0 {
		return nil, false
	}
	word := ckAttributeSize / 3
	read := func(b []byte) uint64 {
		if word == 8 {
			return binary.NativeEndian.Uint64(b)
		}
		return uint64(binary.NativeEndian.Uint32(b))
	}
	var out []tmplAttr
	for i := 0; i < len(arr); i += ckAttributeSize {
		out = append(out, tmplAttr{t: uint(read(arr[i:])), v: make([]byte, read(arr[i+2*word:]))})
	}
	return out, true
}

// sameShape: the same attribute types with values of the same sizes.
func sameShape(a, b []tmplAttr) bool {
	if len(a) != len(b) {
		return false
	}
	sizes := map[uint]int{}
	for _, x := range a {
		sizes[x.t] = len(x.v)
	}
	for _, x := range b {
		if n, ok := sizes[x.t]; !ok || n != len(x.v) {
			return false
		}
	}
	return true
}

var attrNames = map[uint]string{
	pkcs11.CKA_CLASS: "CKA_CLASS", pkcs11.CKA_KEY_TYPE: "CKA_KEY_TYPE", pkcs11.CKA_TOKEN: "CKA_TOKEN",
	pkcs11.CKA_PRIVATE: "CKA_PRIVATE", pkcs11.CKA_SENSITIVE: "CKA_SENSITIVE", pkcs11.CKA_EXTRACTABLE: "CKA_EXTRACTABLE",
	pkcs11.CKA_WRAP_WITH_TRUSTED: "CKA_WRAP_WITH_TRUSTED", pkcs11.CKA_SIGN: "CKA_SIGN", pkcs11.CKA_VERIFY: "CKA_VERIFY",
	pkcs11.CKA_ENCRYPT: "CKA_ENCRYPT", pkcs11.CKA_DECRYPT: "CKA_DECRYPT", pkcs11.CKA_WRAP: "CKA_WRAP",
	pkcs11.CKA_UNWRAP: "CKA_UNWRAP", pkcs11.CKA_DERIVE: "CKA_DERIVE", pkcs11.CKA_SIGN_RECOVER: "CKA_SIGN_RECOVER",
	pkcs11.CKA_ALLOWED_MECHANISMS: "CKA_ALLOWED_MECHANISMS", pkcs11.CKA_MODIFIABLE: "CKA_MODIFIABLE",
}

func shapeNames(t []tmplAttr) string {
	var out []string
	for _, a := range t {
		if n, ok := attrNames[a.t]; ok {
			out = append(out, n)
		} else {
			out = append(out, fmt.Sprintf("0x%X", a.t))
		}
	}
	return "{" + strings.Join(out, ", ") + "}"
}

// lookupKEK finds the KEK labelled label (class c's, or the legacy single
// KEK): among the secret keys carrying the label, the one fit to be it.
// Objects that are not fit are never used; if exactly one is fit it is
// used and the others are reported in note. None fit (or several) is an
// error wrapping ErrKEKNotFound, ErrKEKRefused or ErrKEKPublic.
func lookupKEK(ctx *pkcs11.Ctx, s pkcs11.SessionHandle, label string, c keyClass, legacy, allowPublic bool) (h pkcs11.ObjectHandle, public, mechs bool, note string, err error) {
	hs, err := findObjects(ctx, s, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
	})
	if err != nil {
		return 0, false, false, "", err
	}
	if len(hs) == 0 {
		return 0, false, false, "", fmt.Errorf("hsm: %w: no secret key labelled %q on the token; run `escrowctl hsm init`", ErrKEKNotFound, label)
	}
	type fitOne struct {
		h             pkcs11.ObjectHandle
		public, mechs bool
	}
	var fit []fitOne
	var refused []error
	for _, o := range hs {
		p, m, err := checkKEKObject(ctx, s, o, label, c, legacy, allowPublic)
		if err != nil {
			refused = append(refused, err)
			continue
		}
		fit = append(fit, fitOne{o, p, m})
	}
	switch {
	case len(fit) == 1 && len(refused) == 0:
		return fit[0].h, fit[0].public, fit[0].mechs, "", nil
	case len(fit) == 1:
		return fit[0].h, fit[0].public, fit[0].mechs, fmt.Sprintf("%d other object(s) labelled %q ignored: %v", len(refused), label, errors.Join(refused...)), nil
	case len(fit) > 1:
		return 0, false, false, "", fmt.Errorf("hsm: %w: %d objects labelled %q are each fit to be a master KEK: which one is meant is ambiguous; remove the one not made by `escrowctl hsm init`", ErrKEKRefused, len(fit), label)
	}
	// None fit: a lone public KEK gives ErrKEKPublic, anything else the
	// first refusal.
	for _, e := range refused {
		if errors.Is(e, ErrKEKPublic) {
			return 0, true, false, "", e
		}
	}
	return 0, false, false, "", refused[0]
}

// lookupKEKSet finds master KEK version v: the KEK of every class, or the
// legacy single KEK (only with allowPublic: it serves every class, and
// `escrowctl hsm init` made it public). Objects carrying the other form's
// label that are not fit are ignored (and noted); fit ones of both forms
// are refused as ambiguous.
func lookupKEKSet(ctx *pkcs11.Ctx, s pkcs11.SessionHandle, base string, v uint32, allowPublic bool) (kekSet, string, error) {
	var set kekSet
	legacyLabel := kekObjectLabel(base, v)
	classFound := false
	for c := range numClasses {
		hs, err := findObjects(ctx, s, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_LABEL, kekClassLabel(base, c, v))})
		if err != nil {
			return set, "", err
		}
		classFound = classFound || len(hs) > 0
	}
	lh, public, _, lnote, lerr := lookupKEK(ctx, s, legacyLabel, 0, true, allowPublic)
	if !classFound {
		if lerr != nil {
			return set, "", lerr
		}
		if !allowPublic {
			return set, "", fmt.Errorf("hsm: %w: %q is one KEK for every key class, as `escrowctl hsm init` made it before per-class KEKs; "+
				"move the keys to a KEK version made now (docs/LIFECYCLE.md, \"Migrating from a public master KEK\"); until then only escrowd -hsm-allow-public-kek accepts it", ErrKEKRefused, legacyLabel)
		}
		set.legacy, set.public, set.mechs = true, public, true
		for c := range numClasses {
			set.h[c] = lh
		}
		return set, lnote, nil
	}
	var notes []string
	switch {
	case lerr == nil || errors.Is(lerr, ErrKEKPublic):
		return set, "", fmt.Errorf("hsm: %w: version %d has both a single KEK %q and per-class KEKs: which one is meant is ambiguous", ErrKEKRefused, v, legacyLabel)
	case !errors.Is(lerr, ErrKEKNotFound):
		notes = append(notes, "ignored: "+lerr.Error())
	}
	set.mechs = true
	var errs []error
	for c := range numClasses {
		_, _, _, _, err := lookupKEK(ctx, s, kekClassLabel(base, c, v), c, false, allowPublic)
		if err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		// A refusal says more than a missing KEK: report it first.
		for _, e := range errs {
			if !errors.Is(e, ErrKEKNotFound) {
				return set, "", e
			}
		}
		if lerr != nil && !errors.Is(lerr, ErrKEKNotFound) {
			return set, "", lerr
		}
		return set, "", errs[0]
	}
	for c := range numClasses {
		h, public, mechs, note, err := lookupKEK(ctx, s, kekClassLabel(base, c, v), c, false, allowPublic)
		if err != nil {
			return set, "", err
		}
		if c > 0 && mechs != set.mechs {
			return set, "", fmt.Errorf("hsm: %w: the KEKs of version %d disagree on CKA_ALLOWED_MECHANISMS: not made by one ceremony", ErrKEKRefused, v)
		}
		set.h[c], set.public, set.mechs = h, set.public || public, mechs
		if note != "" {
			notes = append(notes, note)
		}
	}
	return set, strings.Join(notes, "; "), nil
}

// scanKEKs finds every master KEK version on the token and checks each.
func scanKEKs(ctx *pkcs11.Ctx, s pkcs11.SessionHandle, base string, allowPublic bool) (map[uint32]kekSet, []KEKState, error) {
	hs, err := findObjects(ctx, s, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
		boolAttr(pkcs11.CKA_TOKEN, true),
	})
	if err != nil {
		return nil, nil, err
	}
	versions := map[uint32]bool{}
	for _, o := range hs {
		a, err := ctx.GetAttributeValue(s, o, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_LABEL, nil)})
		if err != nil {
			continue
		}
		if v, _, _, ok := parseKEKLabel(base, string(a[0].Value)); ok {
			versions[v] = true
		}
	}
	usable := map[uint32]kekSet{}
	var states []KEKState
	for _, v := range slices.Sorted(maps.Keys(versions)) {
		set, note, err := lookupKEKSet(ctx, s, base, v, allowPublic)
		st := KEKState{Version: v, Label: kekClassLabel(base, classUnlock, v), Public: set.public, Problem: note}
		if set.legacy {
			st.Label = kekObjectLabel(base, v)
		}
		switch {
		case err == nil:
			st.Usable = true
			usable[v] = set
		case recoverable(err) || errors.Is(err, ErrUnavailable):
			return nil, nil, err
		default:
			st.Problem, st.err = err.Error(), err
			st.Public = errors.Is(err, ErrKEKPublic)
		}
		states = append(states, st)
	}
	return usable, states, nil
}

// openKEKs is scanKEKs at Open: it fails if no version is usable, and if
// any version is a public KEK not allowed (a key in clear on the token is
// the operator's to fix before escrowd runs).
func openKEKs(ctx *pkcs11.Ctx, s pkcs11.SessionHandle, base string, allowPublic bool) (map[uint32]kekSet, []KEKState, error) {
	usable, states, err := scanKEKs(ctx, s, base, allowPublic)
	if err != nil {
		return nil, nil, err
	}
	var refused []string
	for _, st := range states {
		if st.Public && !st.Usable {
			return nil, nil, st.err
		}
		if !st.Usable {
			refused = append(refused, st.Problem)
		}
	}
	if len(usable) == 0 {
		if len(refused) > 0 {
			return nil, nil, fmt.Errorf("hsm: %w: no usable master KEK on the token: %s", ErrKEKRefused, strings.Join(refused, "; "))
		}
		return nil, nil, fmt.Errorf("hsm: %w: no master KEK labelled %q on the token; run `escrowctl hsm init`", ErrKEKNotFound, kekClassLabel(base, classUnlock, CurrentKEKVersion))
	}
	return usable, states, nil
}
