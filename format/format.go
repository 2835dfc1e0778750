// Package format holds the parts of the key bundle format (docs/FORMAT.md,
// version 2) that more than one layer computes: the key derivations, the
// GDK commitment, the binding message of a slot, the record AAD and the
// unlock-code message. The HSM layer computes the same functions inside
// the token; the bundle codec and the Go reference device compute them
// here; the browser device computes them with WebCrypto. It imports
// nothing of escrowd, so every layer can depend on it.
//
// Every derivation from a GDK is DK, one AES-256-ECB encryption of a fixed
// 32-byte label under the GDK: the only key derivation from an AES key
// that a PKCS#11 token without HKDF offers (CKM_AES_ECB_ENCRYPT_DATA), so
// derived keys can be made and used without ever leaving the HSM.
package format

import (
	"crypto/aes"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/pbkdf2"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
)

// Version is the format version of slots, bundles and records.
const Version = 2

// KeySize is the size of a GDK and of every derived key: AES-256.
const KeySize = 32

// P256PointSize is an uncompressed P-256 point: 0x04 || X || Y.
const P256PointSize = 65

// ErrInput is returned for inputs of the wrong shape.
var ErrInput = errors.New("format: invalid input")

// Label is a 32-byte DK label: two AES blocks.
type Label [32]byte

func newLabel(name string) Label {
	var l Label
	copy(l[:], "escrowd v2 "+name)
	return l
}

// The labels of the keys derived from a GDK: "escrowd v2 <name>", right-padded
// with zero bytes to 32. Distinct labels give independent keys, so the GDK
// itself never keys a cipher or a MAC (key separation).
var (
	// LabelRecord derives the AES-256-GCM key of the group's records.
	LabelRecord = newLabel("record key")
	// LabelChain derives the AES-KW key that wraps the previous GDK in a
	// chain slot.
	LabelChain = newLabel("chain key")
	// LabelBind derives the HMAC-SHA256 key of slot bindings.
	LabelBind = newLabel("bind key")
)

// DK returns AES-256-ECB(key, label): two AES blocks, 32 bytes. WebCrypto:
// for each 16-byte half of label, encrypt({name: "AES-CBC", iv: 16 zero
// bytes}, key, half) and keep the first 16 bytes of the output. PKCS#11:
// C_DeriveKey with CKM_AES_ECB_ENCRYPT_DATA and the label as data.
//
// As a KDF this rests on AES-256 being a pseudo-random permutation (and so,
// for a handful of distinct inputs, a pseudo-random function): the labels
// and the ECDH info blocks are distinct inputs, so the outputs are
// independent keys.
func DK(key []byte, label Label) ([]byte, error) {
	if len(key) != KeySize {
		return nil, fmt.Errorf("%w: AES-256 key of %d bytes", ErrInput, len(key))
	}
	b, err := aes.NewCipher(key)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInput, err)
	}
	out := make([]byte, 32)
	b.Encrypt(out[:16], label[:16])
	b.Encrypt(out[16:], label[16:])
	return out, nil
}

// CommitmentLabel starts the commitment input.
const CommitmentLabel = "escrowd v2 gdk commitment"

// CommitmentPrefix is the commitment input before the GDK:
//
//	"escrowd v2 gdk commitment" || 0x00 || u16be(len(group)) || group || u32be(gdk_version)
//
// The HSM hashes it with C_DigestUpdate and then the GDK object with
// C_DigestKey, so the commitment is computed without the GDK leaving it.
func CommitmentPrefix(group string, gdkVersion uint32) []byte {
	b := make([]byte, 0, len(CommitmentLabel)+1+2+len(group)+4)
	b = append(b, CommitmentLabel...)
	b = append(b, 0)
	b = binary.BigEndian.AppendUint16(b, uint16(len(group)))
	b = append(b, group...)
	return binary.BigEndian.AppendUint32(b, gdkVersion)
}

// Commitment is SHA-256(CommitmentPrefix(group, gdkVersion) || gdk): it
// names one GDK of one version of one group. SHA-256's collision resistance
// makes it binding (nobody can find a second key with the same
// commitment), and a 256-bit random GDK keeps it hiding.
func Commitment(group string, gdkVersion uint32, gdk []byte) []byte {
	h := sha256.New()
	h.Write(CommitmentPrefix(group, gdkVersion))
	h.Write(gdk)
	return h.Sum(nil)
}

// ECDHLabel starts the ecdh-p256 info.
const ECDHLabel = "escrowd v2 ecdh-p256"

// ECDHInfo is the 32-byte DK input of the ecdh-p256 suite:
//
//	SHA-256("escrowd v2 ecdh-p256" || 0x00 || epk || rpk)
//
// epk is the slot's ephemeral public key and rpk the recipient's, both
// uncompressed. The hash is public; hashing turns a variable message into
// the two AES blocks that CKM_AES_ECB_ENCRYPT_DATA takes.
func ECDHInfo(epk, rpk []byte) (Label, error) {
	if len(epk) != P256PointSize || epk[0] != 4 || len(rpk) != P256PointSize || rpk[0] != 4 {
		return Label{}, fmt.Errorf("%w: public keys must be uncompressed P-256 points", ErrInput)
	}
	h := sha256.New()
	h.Write([]byte(ECDHLabel))
	h.Write([]byte{0})
	h.Write(epk)
	h.Write(rpk)
	var l Label
	h.Sum(l[:0])
	return l, nil
}

// ECDHKey is the AES-KW key of an ecdh-p256 slot: DK(Z, ECDHInfo(epk, rpk)),
// Z being the 32-byte ECDH shared secret (the x coordinate) used as an
// AES-256 key. In the HSM, Z is derived straight into an AES key object
// (CKM_ECDH1_DERIVE, CKD_NULL) and the slot key from it, so neither leaves
// the token. Z is not uniform (an x coordinate), but its min-entropy is
// about 255 bits; a PRF keyed with a key of min-entropy k out of n bits
// loses at most a factor 2^(n−k) = 2 of its security.
func ECDHKey(z []byte, info Label) ([]byte, error) {
	if len(z) != 32 {
		return nil, fmt.Errorf("%w: ECDH secret of %d bytes, want 32", ErrInput, len(z))
	}
	return DK(z, info)
}

// PasskeyLabel is the passkey-prf PRF input prefix and HKDF info.
const PasskeyLabel = "escrowd v2 passkey-prf"

// PRFInput is what a device sends as the WebAuthn prf extension's
// eval.first for a passkey-prf slot: "escrowd v2 passkey-prf" || 0x00 ||
// salt. It is a function of the slot alone, so any device that follows the
// format evaluates the same PRF, and a per-slot salt keeps slots apart.
func PRFInput(salt []byte) []byte {
	return append(append([]byte(PasskeyLabel), 0), salt...)
}

// PasskeyKey returns the AES-KW key of a passkey-prf slot:
// HKDF-SHA256(IKM = the PRF output, salt, info = PasskeyLabel, 32).
func PasskeyKey(prf, salt []byte) ([]byte, error) {
	if len(prf) != 32 {
		return nil, fmt.Errorf("%w: PRF output of %d bytes, want 32", ErrInput, len(prf))
	}
	return hkdf.Key(sha256.New, prf, salt, PasskeyLabel, KeySize)
}

// PasswordKey returns the AES-KW key of a password or unlock slot:
// PBKDF2-HMAC-SHA256(secret, salt, iterations, 32 bytes).
func PasswordKey(secret []byte, salt []byte, iterations int) ([]byte, error) {
	if iterations < 1 {
		return nil, fmt.Errorf("%w: %d PBKDF2 iterations", ErrInput, iterations)
	}
	return pbkdf2.Key(sha256.New, string(secret), salt, iterations, KeySize)
}

// CheckLabel is the message of a key check value.
const CheckLabel = "escrowd v2 key check"

// CheckValue is the first 8 bytes of HMAC-SHA256(key, CheckLabel): it lets
// a device tell a wrong secret (the check differs) from a damaged slot
// (the check matches, AES-KW's integrity check fails), and verifies a
// guess no faster than AES-KW would: the KDF dominates both.
func CheckValue(key []byte) []byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(CheckLabel))
	return m.Sum(nil)[:8]
}

// SlotContext is every field of a slot but its binding: what the binding
// MAC covers (docs/FORMAT.md, "Binding"). Fields a kind does not have are
// zero.
type SlotContext struct {
	Kind, Suite, Group     string
	GDKVersion, KeyVersion uint32
	ID                     string
	Credential             []byte
	EPK                    []byte
	Salt                   []byte
	Iterations             uint32
	Epoch, Index           uint32
	Check                  []byte
	Commit                 []byte
	Wrapped                []byte
}

// BindLabel starts the binding message.
const BindLabel = "escrowd v2 slot"

// Message is the binding message:
//
//	"escrowd v2 slot" || 0x00 ||
//	u8(len(kind)) || kind || u8(len(suite)) || suite ||
//	u16be(len(group)) || group || u32be(gdk_version) || u32be(key_version) ||
//	u16be(len(id)) || id || u16be(len(credential)) || credential ||
//	u8(len(epk)) || epk || u8(len(salt)) || salt || u32be(iterations) ||
//	u32be(epoch) || u32be(index) || u8(len(check)) || check ||
//	u8(len(commit)) || commit || u16be(len(wrapped)) || wrapped
//
// Every length is explicit, so two different slots never give the same
// message.
func (c *SlotContext) Message() []byte {
	b := make([]byte, 0, 64+len(c.Group)+len(c.ID)+len(c.Credential)+len(c.EPK)+len(c.Salt)+len(c.Check)+len(c.Commit)+len(c.Wrapped))
	b = append(b, BindLabel...)
	b = append(b, 0)
	b = lp8(b, []byte(c.Kind))
	b = lp8(b, []byte(c.Suite))
	b = lp16(b, []byte(c.Group))
	b = binary.BigEndian.AppendUint32(b, c.GDKVersion)
	b = binary.BigEndian.AppendUint32(b, c.KeyVersion)
	b = lp16(b, []byte(c.ID))
	b = lp16(b, c.Credential)
	b = lp8(b, c.EPK)
	b = lp8(b, c.Salt)
	b = binary.BigEndian.AppendUint32(b, c.Iterations)
	b = binary.BigEndian.AppendUint32(b, c.Epoch)
	b = binary.BigEndian.AppendUint32(b, c.Index)
	b = lp8(b, c.Check)
	b = lp8(b, c.Commit)
	return lp16(b, c.Wrapped)
}

// Bind is HMAC-SHA256(DK(gdk, LabelBind), c.Message()): the slot's binding,
// checked by whoever opens the slot with the GDK it holds.
func Bind(gdk []byte, c *SlotContext) ([]byte, error) {
	kb, err := DK(gdk, LabelBind)
	if err != nil {
		return nil, err
	}
	defer clear(kb)
	m := hmac.New(sha256.New, kb)
	m.Write(c.Message())
	return m.Sum(nil), nil
}

func lp8(b, v []byte) []byte {
	if len(v) > 255 {
		panic("format: field longer than 255 bytes in a u8-length position")
	}
	return append(append(b, byte(len(v))), v...)
}

func lp16(b, v []byte) []byte {
	if len(v) > 65535 {
		panic("format: field longer than 65535 bytes")
	}
	return append(binary.BigEndian.AppendUint16(b, uint16(len(v))), v...)
}

// RecordLabel starts a record's additional data.
const RecordLabel = "escrowd v2 record"

// RecordAAD binds a record's ciphertext to its group, id and GDK version:
//
//	"escrowd v2 record" || 0x00 || u16be(len(group)) || group ||
//	u16be(len(id)) || id || u32be(gdk_version)
func RecordAAD(group, id string, gdkVersion uint32) []byte {
	b := make([]byte, 0, len(RecordLabel)+1+2+len(group)+2+len(id)+4)
	b = append(b, RecordLabel...)
	b = append(b, 0)
	b = lp16(b, []byte(group))
	b = lp16(b, []byte(id))
	return binary.BigEndian.AppendUint32(b, gdkVersion)
}

// CodeLabel starts the unlock-code message.
const CodeLabel = "escrowd unlock code v2"

// CodeNonceSize is the size of an epoch's nonce: random bytes drawn when
// the epoch is issued and stored with it, so that an epoch issued again
// under the same number (after the store was restored from a backup) has
// other codes than the one it replaces.
const CodeNonceSize = 16

// CodeMessage is the HMAC input (under the group's unlock key, in the HSM)
// that gives a code's material, bound to group, user, epoch, index and the
// epoch's nonce:
//
//	"escrowd unlock code v2" || 0x00 || u16be(len(group)) || group ||
//	u16be(len(user)) || user || u32be(epoch) || u32be(index) ||
//	u8(len(nonce)) || nonce
//
// Devices never compute it: they only run PBKDF2 over the code. It panics
// if nonce is longer than 255 bytes; callers pass CodeNonceSize bytes.
func CodeMessage(group, user string, epoch, index uint32, nonce []byte) []byte {
	b := make([]byte, 0, len(CodeLabel)+1+2+len(group)+2+len(user)+8+1+len(nonce))
	b = append(b, CodeLabel...)
	b = append(b, 0)
	b = lp16(b, []byte(group))
	b = lp16(b, []byte(user))
	b = binary.BigEndian.AppendUint32(b, epoch)
	b = binary.BigEndian.AppendUint32(b, index)
	return lp8(b, nonce)
}
