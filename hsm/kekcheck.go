package hsm

import (
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/miekg/pkcs11"
)

// KEKState describes one master KEK version found on the token: a secret
// key whose label names a version. Only a usable one is ever used.
type KEKState struct {
	Version uint32
	Label   string
	Usable  bool
	// Public: the KEK is a public object (CKA_PRIVATE=false), accepted only
	// with Config.AllowPublicKEK.
	Public bool
	// Problem says why the version is refused ("" when usable), or, for a
	// usable version, what else carries its label and was ignored.
	Problem string
	err     error // the refusal, for Open
}

// kekTemplate is what CKA_UNWRAP_TEMPLATE of a master KEK must fix: the
// attribute types, each a CK_BBOOL.
var kekTemplate = []uint{pkcs11.CKA_PRIVATE, pkcs11.CKA_SENSITIVE, pkcs11.CKA_WRAP_WITH_TRUSTED}

// templateCheckOffForTest lets the tests open a KEK made without an unwrap
// template, to measure what that template prevents.
var templateCheckOffForTest bool

// checkKEKObject says whether object o is fit to be a master KEK: an
// AES-256 token key, trusted (only the SO makes those), unmodifiable,
// sensitive, never extractable, for wrap and unwrap only, with the unwrap
// template InitKEKVersion sets, and private unless allowPublic. The reason
// it is not is an error wrapping ErrKEKRefused, or ErrKEKPublic when a
// public KEK is the only fault.
func checkKEKObject(ctx *pkcs11.Ctx, s pkcs11.SessionHandle, o pkcs11.ObjectHandle, label string, allowPublic bool) (public bool, err error) {
	refuse := func(format string, args ...any) (bool, error) {
		return false, fmt.Errorf("hsm: %w: %q %s", ErrKEKRefused, label, fmt.Sprintf(format, args...))
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
	a, ok := get(pkcs11.CKA_UNWRAP_TEMPLATE)
	switch {
	case templateCheckOffForTest:
	case !ok || len(a.Value) == 0:
		return refuse("has no CKA_UNWRAP_TEMPLATE: whoever may use it could unwrap stored keys exportable")
	default:
		if got, ok := templateTypes(a.Value); !ok || !sameTypes(got, kekTemplate) {
			return refuse("has an unwrap template fixing %s, not %s as `escrowctl hsm init` makes it", typeNames(got), typeNames(kekTemplate))
		}
	}
	if v, ok := flag(pkcs11.CKA_PRIVATE); !ok || !v {
		if !allowPublic {
			return true, fmt.Errorf("hsm: %w: %q is a public object (CKA_PRIVATE=false), as `escrowctl hsm init` made it before "+
				"master KEKs were private: SoftHSM writes a public object's value in clear into the token directory, so a copy "+
				"of that directory and of the store opens every stored key. Move the keys to a private KEK (docs/LIFECYCLE.md, "+
				"\"Migrating from a public master KEK\"); until then only escrowd -hsm-allow-public-kek accepts it", ErrKEKPublic, label)
		}
		return true, nil
	}
	return false, nil
}

// templateTypes reads the attribute types of an attribute-array value as
// C_GetAttributeValue returns it: the CK_ATTRIBUTE entries with their types
// and sizes (their values stay with the module). Every entry must be a
// CK_BBOOL.
func templateTypes(arr []byte) ([]uint, bool) {
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
	var out []uint
	ok := true
	for i := 0; i < len(arr); i += ckAttributeSize {
		out = append(out, uint(read(arr[i:])))
		ok = ok && read(arr[i+2*word:]) == 1
	}
	return out, ok
}

func sameTypes(a, b []uint) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(a, b)
}

func typeNames(ts []uint) string {
	names := map[uint]string{
		pkcs11.CKA_PRIVATE: "CKA_PRIVATE", pkcs11.CKA_SENSITIVE: "CKA_SENSITIVE",
		pkcs11.CKA_WRAP_WITH_TRUSTED: "CKA_WRAP_WITH_TRUSTED", pkcs11.CKA_EXTRACTABLE: "CKA_EXTRACTABLE",
	}
	var out []string
	for _, t := range ts {
		if n, ok := names[t]; ok {
			out = append(out, n)
		} else {
			out = append(out, fmt.Sprintf("0x%X", t))
		}
	}
	return "{" + strings.Join(out, ", ") + "}"
}

// lookupKEK finds the master KEK labelled label: among the secret keys
// carrying the label, the one fit to be a KEK. Objects that are not fit
// are never used; if exactly one is fit it is used and the others are
// reported in note. None fit (or several) is an error wrapping
// ErrKEKNotFound, ErrKEKRefused or ErrKEKPublic.
func lookupKEK(ctx *pkcs11.Ctx, s pkcs11.SessionHandle, label string, allowPublic bool) (h pkcs11.ObjectHandle, public bool, note string, err error) {
	hs, err := findObjects(ctx, s, []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_LABEL, label),
	})
	if err != nil {
		return 0, false, "", err
	}
	if len(hs) == 0 {
		return 0, false, "", fmt.Errorf("hsm: %w: no secret key labelled %q on the token; run `escrowctl hsm init`", ErrKEKNotFound, label)
	}
	var fit []pkcs11.ObjectHandle
	var pub []bool
	var refused []error
	for _, o := range hs {
		p, err := checkKEKObject(ctx, s, o, label, allowPublic)
		if err != nil {
			refused = append(refused, err)
			continue
		}
		fit, pub = append(fit, o), append(pub, p)
	}
	switch {
	case len(fit) == 1 && len(refused) == 0:
		return fit[0], pub[0], "", nil
	case len(fit) == 1:
		return fit[0], pub[0], fmt.Sprintf("%d other object(s) labelled %q ignored: %v", len(refused), label, errors.Join(refused...)), nil
	case len(fit) > 1:
		return 0, false, "", fmt.Errorf("hsm: %w: %d objects labelled %q are each fit to be the master KEK: which one is meant is ambiguous; remove the one not made by `escrowctl hsm init`", ErrKEKRefused, len(fit), label)
	}
	// None fit: a lone public KEK gives ErrKEKPublic, anything else the
	// first refusal.
	for _, e := range refused {
		if errors.Is(e, ErrKEKPublic) {
			return 0, true, "", e
		}
	}
	return 0, false, "", refused[0]
}

// scanKEKs finds every master KEK version on the token and checks each.
func scanKEKs(ctx *pkcs11.Ctx, s pkcs11.SessionHandle, base string, allowPublic bool) (map[uint32]pkcs11.ObjectHandle, []KEKState, error) {
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
		if v, ok := kekLabelVersion(base, string(a[0].Value)); ok {
			versions[v] = true
		}
	}
	usable := map[uint32]pkcs11.ObjectHandle{}
	var states []KEKState
	for _, v := range slices.Sorted(maps.Keys(versions)) {
		label := kekObjectLabel(base, v)
		k, public, note, err := lookupKEK(ctx, s, label, allowPublic)
		st := KEKState{Version: v, Label: label, Public: public, Problem: note}
		switch {
		case err == nil:
			st.Usable = true
			usable[v] = k
		case recoverable(err) || errors.Is(err, ErrUnavailable):
			return nil, nil, err
		default:
			st.Problem, st.err = err.Error(), err
		}
		states = append(states, st)
	}
	return usable, states, nil
}

// openKEKs is scanKEKs at Open: it fails if no version is usable, and if
// any version is a public KEK not allowed (a key in clear on the token is
// the operator's to fix before escrowd runs).
func openKEKs(ctx *pkcs11.Ctx, s pkcs11.SessionHandle, base string, allowPublic bool) (map[uint32]pkcs11.ObjectHandle, []KEKState, error) {
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
		return nil, nil, fmt.Errorf("hsm: %w: no secret key labelled %q on the token; run `escrowctl hsm init`", ErrKEKNotFound, kekObjectLabel(base, CurrentKEKVersion))
	}
	return usable, states, nil
}
