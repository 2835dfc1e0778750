package hsm

import (
	"encoding/binary"
	"fmt"
	"strconv"
	"strings"
	"unsafe"

	"github.com/miekg/pkcs11"
)

// keyClass is a class of group key. Each class has a master KEK of its own
// in every KEK version, whose CKA_UNWRAP_TEMPLATE fixes every attribute
// that decides what a key unwrapped under it can do: a stored key of one
// class can only ever become a key of that class, with exactly the
// capabilities escrowd uses. See docs/HSM.md, "One KEK per key class".
type keyClass int

const (
	classUnlock    keyClass = iota // unlock keys: HMAC-SHA256
	classEscrowRSA                 // rsa-oaep escrow private keys: OAEP decrypt/unwrap
	classEscrowEC                  // ecdh-p256 escrow private keys: ECDH
	numClasses
)

var keyClassNames = [numClasses]string{"unlock", "escrow-rsa", "escrow-ec"}

func (c keyClass) String() string { return keyClassNames[c] }

func classOf(k KeyKind) (keyClass, error) {
	switch k {
	case KeyUnlock:
		return classUnlock, nil
	case KeyEscrow:
		return classEscrowRSA, nil
	case KeyEscrowEC:
		return classEscrowEC, nil
	}
	return 0, fmt.Errorf("hsm: %w: key kind %v", ErrInvalidInput, k)
}

// kekClassLabel is the CKA_LABEL of class c's KEK in master KEK version v.
func kekClassLabel(base string, c keyClass, v uint32) string {
	return base + "-" + c.String() + "-v" + strconv.FormatUint(uint64(v), 10)
}

// parseKEKLabel reads a label made by kekClassLabel, or the single KEK of
// a version made before per-class KEKs (kekObjectLabel: legacy).
func parseKEKLabel(base, label string) (v uint32, c keyClass, legacy, ok bool) {
	rest, found := strings.CutPrefix(label, base+"-")
	if !found {
		return 0, 0, false, false
	}
	if v, ok := kekLabelVersion(base, label); ok {
		return v, 0, true, true
	}
	for c := range numClasses {
		if n, found := strings.CutPrefix(rest, c.String()+"-"); found {
			if v, ok := kekLabelVersion(base, base+"-"+n); ok {
				return v, c, false, true
			}
		}
	}
	return 0, 0, false, false
}

// tmplAttr is one attribute of a template with its value as the module
// reads it: a CK_BBOOL, a CK_ULONG, or a list of CK_MECHANISM_TYPE.
type tmplAttr struct {
	t uint
	v []byte
}

func tBool(t uint, v bool) tmplAttr {
	if v {
		return tmplAttr{t, []byte{1}}
	}
	return tmplAttr{t, []byte{0}}
}

func tUlong(t uint, vs ...uint) tmplAttr {
	w := int(unsafe.Sizeof(uintptr(0)))
	b := make([]byte, w*len(vs))
	for i, v := range vs {
		if w == 8 {
			binary.NativeEndian.PutUint64(b[i*w:], uint64(v))
		} else {
			binary.NativeEndian.PutUint32(b[i*w:], uint32(v))
		}
	}
	return tmplAttr{t, b}
}

// classMechanism is the one mechanism a key of class c may be used with
// (CKA_ALLOWED_MECHANISMS).
func classMechanism(c keyClass) uint {
	switch c {
	case classEscrowRSA:
		return pkcs11.CKM_RSA_PKCS_OAEP
	case classEscrowEC:
		return pkcs11.CKM_ECDH1_DERIVE
	}
	return pkcs11.CKM_SHA256_HMAC
}

// classTemplate is class c's unwrap template: what its KEK's
// CKA_UNWRAP_TEMPLATE fixes, and exactly the template escrowd unwraps a
// stored key of that class with — for use and for a KEK rotation alike.
// Every capability is fixed: the class and key type; never a token
// object; private and sensitive; extractable, but only under a trusted
// key (CKA_WRAP_WITH_TRUSTED: a KEK, which is what lets a rotation move it
// inside the token); the one usage the class has and no other (no derive
// but for ECDH, so no concatenation or extraction mechanism can copy the
// key out); the one mechanism (when mechs: modules that take
// CKA_ALLOWED_MECHANISMS); and unmodifiable, so that none of this can be
// changed once the key exists. CKA_MODIFIABLE=false comes last: the
// module refuses to set any attribute after it.
func classTemplate(c keyClass, mechs bool) []tmplAttr {
	t := []tmplAttr{
		tBool(pkcs11.CKA_TOKEN, false),
		tBool(pkcs11.CKA_PRIVATE, true),
		tBool(pkcs11.CKA_SENSITIVE, true),
		tBool(pkcs11.CKA_EXTRACTABLE, true),
		tBool(pkcs11.CKA_WRAP_WITH_TRUSTED, true),
	}
	switch c {
	case classUnlock:
		t = append(t,
			tUlong(pkcs11.CKA_CLASS, pkcs11.CKO_SECRET_KEY),
			tUlong(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_GENERIC_SECRET),
			tBool(pkcs11.CKA_SIGN, true),
			tBool(pkcs11.CKA_VERIFY, false),
			tBool(pkcs11.CKA_ENCRYPT, false),
			tBool(pkcs11.CKA_DECRYPT, false),
			tBool(pkcs11.CKA_WRAP, false),
			tBool(pkcs11.CKA_UNWRAP, false),
			tBool(pkcs11.CKA_DERIVE, false))
	case classEscrowRSA:
		t = append(t,
			tUlong(pkcs11.CKA_CLASS, pkcs11.CKO_PRIVATE_KEY),
			tUlong(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_RSA),
			tBool(pkcs11.CKA_DECRYPT, true),
			tBool(pkcs11.CKA_UNWRAP, true),
			tBool(pkcs11.CKA_SIGN, false),
			tBool(pkcs11.CKA_SIGN_RECOVER, false),
			tBool(pkcs11.CKA_DERIVE, false))
	case classEscrowEC:
		t = append(t,
			tUlong(pkcs11.CKA_CLASS, pkcs11.CKO_PRIVATE_KEY),
			tUlong(pkcs11.CKA_KEY_TYPE, pkcs11.CKK_EC),
			tBool(pkcs11.CKA_DERIVE, true),
			tBool(pkcs11.CKA_DECRYPT, false),
			tBool(pkcs11.CKA_UNWRAP, false),
			tBool(pkcs11.CKA_SIGN, false),
			tBool(pkcs11.CKA_SIGN_RECOVER, false))
	}
	if mechs {
		t = append(t, tUlong(pkcs11.CKA_ALLOWED_MECHANISMS, classMechanism(c)))
	}
	return append(t, tBool(pkcs11.CKA_MODIFIABLE, false))
}

// legacyTemplate is what the single KEK of a version made before per-class
// KEKs fixes: all of it is in every class template, so keys under such a
// KEK still unwrap with classTemplate (the module accepts a superset).
var legacyTemplate = []tmplAttr{
	tBool(pkcs11.CKA_PRIVATE, true),
	tBool(pkcs11.CKA_SENSITIVE, true),
	tBool(pkcs11.CKA_WRAP_WITH_TRUSTED, true),
}

// attrs turns a template into miekg/pkcs11 attributes.
func attrs(t []tmplAttr) []*pkcs11.Attribute {
	out := make([]*pkcs11.Attribute, len(t))
	for i, a := range t {
		out[i] = pkcs11.NewAttribute(a.t, a.v)
	}
	return out
}

// unwrapTemplate is the template a stored key of kind is unwrapped with.
func unwrapTemplate(kind KeyKind, mechs bool) []*pkcs11.Attribute {
	c, err := classOf(kind)
	if err != nil {
		panic(err)
	}
	return attrs(classTemplate(c, mechs))
}

// kekSet is one master KEK version: a KEK per class, or (legacy, accepted
// only with Config.AllowPublicKEK) one KEK for every class.
type kekSet struct {
	h      [numClasses]pkcs11.ObjectHandle
	legacy bool
	public bool
	// mechs: the unwrap templates carry CKA_ALLOWED_MECHANISMS (the module
	// took it when the KEKs were made); escrowd's templates then do too.
	mechs bool
}
