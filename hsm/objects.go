package hsm

import (
	"context"
	"fmt"

	"github.com/miekg/pkcs11"
)

// ObjectInfo describes one object on the token (or a session object of
// this process). Boolean attributes an object does not have are false.
type ObjectInfo struct {
	Class, KeyType, Label                                            string
	Token, Private, Sensitive, Extractable, WrapWithTrusted, Trusted bool
	// Modifiable is CKA_MODIFIABLE (true when the module does not report it,
	// as PKCS#11 defaults it).
	Modifiable bool
	// UnwrapTemplate is the number of attributes in CKA_UNWRAP_TEMPLATE
	// (0 if the object has none or the module does not keep it).
	UnwrapTemplate int
}

var classNames = map[uint]string{
	pkcs11.CKO_DATA:        "data",
	pkcs11.CKO_CERTIFICATE: "certificate",
	pkcs11.CKO_PUBLIC_KEY:  "public-key",
	pkcs11.CKO_PRIVATE_KEY: "private-key",
	pkcs11.CKO_SECRET_KEY:  "secret-key",
}

var keyTypeNames = map[uint]string{
	pkcs11.CKK_RSA:            "rsa",
	pkcs11.CKK_EC:             "ec",
	pkcs11.CKK_AES:            "aes",
	pkcs11.CKK_GENERIC_SECRET: "generic-secret",
	pkcs11.CKK_SHA256_HMAC:    "sha256-hmac",
}

func enumName(names map[uint]string, v uint) string {
	if n, ok := names[v]; ok {
		return n
	}
	return fmt.Sprintf("0x%X", v)
}

// Objects lists every object visible to the logged-in user: token objects,
// and the session objects of every session of this process.
func (h *HSM) Objects(ctx context.Context) ([]ObjectInfo, error) {
	var out []ObjectInfo
	err := h.do(ctx, OpObjects, func(s session) error {
		out = nil
		hs, err := findObjects(h.mod.ctx, s.h, nil)
		if err != nil {
			return err
		}
		for _, o := range hs {
			info, err := objectInfo(h.mod.ctx, s.h, o)
			if err != nil {
				return err
			}
			out = append(out, info)
		}
		return nil
	})
	return out, err
}

// objectInfo reads attributes one at a time: a single C_GetAttributeValue
// fails as a whole when the object lacks one of them.
func objectInfo(ctx *pkcs11.Ctx, s pkcs11.SessionHandle, o pkcs11.ObjectHandle) (ObjectInfo, error) {
	get := func(t uint) (*pkcs11.Attribute, bool, error) {
		a, err := ctx.GetAttributeValue(s, o, []*pkcs11.Attribute{pkcs11.NewAttribute(t, nil)})
		if err != nil {
			if recoverable(wrapErr("", err)) {
				return nil, false, wrapErr("read object attributes", err)
			}
			return nil, false, nil // attribute invalid or sensitive
		}
		return a[0], true, nil
	}
	info := ObjectInfo{Modifiable: true}
	class, ok, err := get(pkcs11.CKA_CLASS)
	if err != nil {
		return info, err
	}
	if ok {
		info.Class = enumName(classNames, attrUint(class))
	}
	if a, ok, err := get(pkcs11.CKA_KEY_TYPE); err != nil {
		return info, err
	} else if ok {
		info.KeyType = enumName(keyTypeNames, attrUint(a))
	}
	if a, ok, err := get(pkcs11.CKA_LABEL); err != nil {
		return info, err
	} else if ok {
		info.Label = string(a.Value)
	}
	for _, f := range []struct {
		t   uint
		dst *bool
	}{
		{pkcs11.CKA_TOKEN, &info.Token},
		{pkcs11.CKA_PRIVATE, &info.Private},
		{pkcs11.CKA_SENSITIVE, &info.Sensitive},
		{pkcs11.CKA_EXTRACTABLE, &info.Extractable},
		{pkcs11.CKA_WRAP_WITH_TRUSTED, &info.WrapWithTrusted},
		{pkcs11.CKA_TRUSTED, &info.Trusted},
		{pkcs11.CKA_MODIFIABLE, &info.Modifiable},
	} {
		a, ok, err := get(f.t)
		if err != nil {
			return info, err
		}
		if ok {
			*f.dst = attrBool(a)
		}
	}
	if a, ok, err := get(pkcs11.CKA_UNWRAP_TEMPLATE); err != nil {
		return info, err
	} else if ok {
		info.UnwrapTemplate = len(a.Value) / ckAttributeSize
	}
	return info, nil
}
