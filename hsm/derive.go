package hsm

/*
#include <stdlib.h>
*/
import "C"

import (
	"encoding/binary"
	"fmt"
	"unsafe"

	"github.com/miekg/pkcs11"
)

// ecbDeriveParam is a CK_KEY_DERIVATION_STRING_DATA {pData, ulLen} for
// CKM_AES_ECB_ENCRYPT_DATA. miekg/pkcs11 has no helper for it and copies a
// []byte parameter as is, so pData must point at C memory that outlives the
// call: the caller frees it with free.
func ecbDeriveParam(data []byte) (param []byte, free func()) {
	p := C.CBytes(data)
	ptr, ulong := unsafe.Sizeof(uintptr(0)), unsafe.Sizeof(C.ulong(0))
	param = make([]byte, ptr+ulong)
	if ptr != 8 || ulong != 8 {
		// escrowd builds for 64-bit platforms only; a mismatch here must not
		// hand the module a malformed structure.
		C.free(p)
		panic("hsm: CK_KEY_DERIVATION_STRING_DATA layout is only known for 64-bit platforms")
	}
	binary.NativeEndian.PutUint64(param[0:], uint64(uintptr(p)))
	binary.NativeEndian.PutUint64(param[8:], uint64(len(data)))
	return param, func() { C.free(p) }
}

// deriveECB derives a new key object whose value is AES-256-ECB(base, data):
// the only key derivation from an AES key that SoftHSM 2.6 has, and the one
// the format's DK function is built on (docs/FORMAT.md), so a derived key
// never leaves the HSM. data is one or two 16-byte blocks.
func (h *HSM) deriveECB(s session, base pkcs11.ObjectHandle, data []byte, template []*pkcs11.Attribute) (pkcs11.ObjectHandle, error) {
	if len(data) == 0 || len(data)%16 != 0 {
		return 0, fmt.Errorf("hsm: derive: %w: %d bytes of derivation data, want whole AES blocks", ErrInvalidInput, len(data))
	}
	param, free := ecbDeriveParam(data)
	defer free()
	return s.p.DeriveKey(s.h, []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_AES_ECB_ENCRYPT_DATA, param)}, base, template)
}
