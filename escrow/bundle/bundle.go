// Package bundle encodes and decodes the key bundle: a group data key (GDK)
// wrapped to several recipient slots, format version 2 (docs/FORMAT.md).
//
// Decoding follows the strict JSON profile (format/strictjson) and then
// the slot rules, in the order docs/FORMAT.md gives, so that the daemon,
// the Go reference device and the browser device refuse the same input
// with the same error class. Every slot this package accepts is later
// handed to an HSM or a KDF.
package bundle

import (
	"crypto/ecdh"
	"errors"
	"fmt"
	"strconv"

	"github.com/escrowd/escrowd/format"
	"github.com/escrowd/escrowd/format/strictjson"
)

// Version is the format version this package writes and reads. Version 1
// is refused: its slots carry no binding (docs/FORMAT.md, "Versions").
const Version = format.Version

// Size limits, on the exact bytes of the JSON text.
const (
	MaxSlotSize   = 8 << 10
	MaxBundleSize = 1 << 20
	MaxSlots      = 256
	MaxIDLength   = 128
	// MaxCredentialSize is WebAuthn's bound on a credential id.
	MaxCredentialSize = 1023
)

// Bounds of the numbers of a slot.
const (
	// MaxVersion bounds gdk_version, key_version and epoch: 2^31 − 1, exact
	// in every JSON reader and in a signed 32-bit integer.
	MaxVersion = 1<<31 - 1
	// MaxIndex is the largest unlock-code index: a code's index symbol
	// holds 0 to 31.
	MaxIndex = 31
)

// Kind says which recipient a slot is wrapped to.
type Kind string

const (
	KindPassword   Kind = "password"
	KindPasskeyPRF Kind = "passkey-prf"
	KindDevice     Kind = "device"
	KindMember     Kind = "member"
	KindUnlock     Kind = "unlock"
	KindEscrow     Kind = "escrow"
	// KindChain holds GDK gdk_version wrapped under the chain key of GDK
	// gdk_version + 1, written by a GDK rotation.
	KindChain Kind = "chain"
)

// Suites name the algorithms that wrap a slot.
const (
	SuiteRSAOAEPSHA1   = "rsa-oaep-sha1"
	SuiteRSAOAEPSHA256 = "rsa-oaep-sha256"
	// SuitePBKDF2AESKW derives an AES-256 key from a secret string with
	// PBKDF2-HMAC-SHA256 and wraps the GDK with AES-KW (RFC 3394).
	SuitePBKDF2AESKW = "pbkdf2-sha256-aes-kw"
	// SuiteHKDFAESKW derives an AES-256 key from a WebAuthn PRF output
	// with HKDF-SHA256 and wraps with AES-KW.
	SuiteHKDFAESKW = "hkdf-sha256-aes-kw"
	// SuiteECDHP256 is ECDH P-256 with an ephemeral sender key; the AES-KW
	// key is format.ECDHKey.
	SuiteECDHP256 = "ecdh-p256"
	// SuiteAESKW wraps with AES-KW under a key derived from the next GDK
	// (chain slots).
	SuiteAESKW = "aes-kw"
)

// PublicKeySuite reports whether suite wraps to a public key (escrow,
// member and device slots).
func PublicKeySuite(suite string) bool {
	return suite == SuiteRSAOAEPSHA1 || suite == SuiteRSAOAEPSHA256 || suite == SuiteECDHP256
}

// KDF parameters of password-like slots.
const (
	// MinPasswordIterations is OWASP's 2023 figure for PBKDF2-HMAC-SHA256.
	MinPasswordIterations = 600_000
	// MinUnlockIterations: unlock codes carry 70 bits of entropy, so 2^16
	// iterations put an offline attack at 2^86 PBKDF2 iterations.
	MinUnlockIterations = 1 << 16
	MaxIterations       = 10_000_000
	// SaltSize is the salt of password and unlock slots.
	SaltSize = 16
	// PasskeySaltSize is the salt of passkey-prf slots, which is also the
	// variable part of the WebAuthn PRF input.
	PasskeySaltSize = 32
	// CheckSize is the size of a key check value.
	CheckSize = 8
	// CommitSize and BindSize are SHA-256 and HMAC-SHA256 outputs.
	CommitSize = 32
	BindSize   = 32
	// KWSize is AES-KW of a 32-byte key.
	KWSize = 40
)

// Error classes of decoding, beyond those of format/strictjson. The class
// of an error is Class(err); docs/FORMAT.md lists them and the vectors pin
// them.
var (
	// ErrMalformed is wrapped by every decoding error.
	ErrMalformed = errors.New("malformed key bundle")
	ErrSize      = &classErr{"size"}
	ErrVersion   = &classErr{"version"}
	ErrKind      = &classErr{"kind"}
	ErrSuite     = &classErr{"suite"}
	ErrID        = &classErr{"id"}
	ErrPoint     = &classErr{"point"}
	// ErrMismatch: the slots of a bundle disagree with it or with each
	// other (another group, two commitments for one GDK version).
	ErrMismatch = &classErr{"mismatch"}
)

type classErr struct{ name string }

func (c *classErr) Error() string { return "key bundle: " + c.name }
func (c *classErr) Unwrap() error { return ErrMalformed }

type failure struct {
	class *classErr
	msg   string
}

func (f *failure) Error() string { return "malformed key bundle: " + f.class.name + ": " + f.msg }
func (f *failure) Unwrap() error { return f.class }

func fail(c *classErr, format string, args ...any) error {
	return &failure{c, fmt.Sprintf(format, args...)}
}

// wrapJSON marks a strictjson error as a bundle error too.
func wrapJSON(err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("%w: %w", ErrMalformed, err)
}

// Class returns the error class of a decoding error ("syntax", "range",
// "version", …), or "" for nil or an error of another package.
func Class(err error) string {
	var f *failure
	if errors.As(err, &f) {
		return f.class.name
	}
	var c *classErr
	if errors.As(err, &c) {
		return c.name
	}
	return strictjson.Class(err)
}

// Slot is one wrapped copy of a GDK.
type Slot struct {
	Kind  Kind
	Suite string
	// Group is the group whose GDK the slot holds; GDKVersion which of its
	// GDKs.
	Group      string
	GDKVersion uint32
	// KeyVersion is the version of the key the slot is wrapped to: the
	// group's escrow or unlock key version, the recipient's own key
	// version, or for a chain slot gdk_version + 1.
	KeyVersion uint32
	// ID names the recipient: member or device id, or the user of an
	// unlock, password or passkey-prf slot. Escrow and chain slots have none.
	ID string
	// Credential is a passkey-prf slot's WebAuthn credential id (raw bytes).
	Credential []byte
	// EPK is the ephemeral public key of an ecdh-p256 slot: an uncompressed
	// P-256 point, 65 bytes.
	EPK    []byte
	KDF    *KDF
	Unlock *Unlock
	// Check is the key check value of a password-like slot.
	Check []byte
	// Commit is format.Commitment of the GDK the slot holds; Bind the
	// slot's binding (format.Bind under that GDK).
	Commit  []byte
	Wrapped []byte
	Bind    []byte
}

// KDF holds the parameters that turn a secret string or PRF output into
// the slot's wrapping key. Iterations is 0 for passkey-prf.
type KDF struct {
	Salt       []byte
	Iterations uint32
}

// Unlock names the code that opens an unlock slot.
type Unlock struct {
	Epoch uint32
	Index uint32
}

// Context is everything the slot's binding covers.
func (s *Slot) Context() *format.SlotContext {
	c := &format.SlotContext{
		Kind: string(s.Kind), Suite: s.Suite, Group: s.Group,
		GDKVersion: s.GDKVersion, KeyVersion: s.KeyVersion, ID: s.ID,
		Credential: s.Credential, EPK: s.EPK, Check: s.Check, Commit: s.Commit, Wrapped: s.Wrapped,
	}
	if s.KDF != nil {
		c.Salt, c.Iterations = s.KDF.Salt, s.KDF.Iterations
	}
	if s.Unlock != nil {
		c.Epoch, c.Index = s.Unlock.Epoch, s.Unlock.Index
	}
	return c
}

// Bundle is a group's set of slots.
type Bundle struct {
	Group string
	Slots []Slot
}

// shape is what a (kind, suite) pair allows.
type shape struct {
	id, epk, credential, kdf, unlock, check bool
	saltSize                                int
	minIterations                           uint32
	rsa                                     bool
}

func shapeOf(kind Kind, suite string) (shape, error) {
	switch kind {
	case KindEscrow, KindMember, KindDevice:
		sh := shape{id: kind != KindEscrow}
		switch suite {
		case SuiteRSAOAEPSHA1, SuiteRSAOAEPSHA256:
			sh.rsa = true
		case SuiteECDHP256:
			sh.epk = true
		default:
			return sh, fail(ErrSuite, "suite %s is not one of %s, %s, %s for a %s slot", quote(suite), SuiteECDHP256, SuiteRSAOAEPSHA1, SuiteRSAOAEPSHA256, kind)
		}
		return sh, nil
	case KindUnlock, KindPassword:
		if suite != SuitePBKDF2AESKW {
			return shape{}, fail(ErrSuite, "suite %s is not %s for a %s slot", quote(suite), SuitePBKDF2AESKW, kind)
		}
		sh := shape{id: true, kdf: true, check: true, saltSize: SaltSize, minIterations: MinPasswordIterations}
		if kind == KindUnlock {
			sh.unlock, sh.minIterations = true, MinUnlockIterations
		}
		return sh, nil
	case KindPasskeyPRF:
		if suite != SuiteHKDFAESKW {
			return shape{}, fail(ErrSuite, "suite %s is not %s for a passkey-prf slot", quote(suite), SuiteHKDFAESKW)
		}
		return shape{id: true, credential: true, kdf: true, check: true, saltSize: PasskeySaltSize}, nil
	case KindChain:
		if suite != SuiteAESKW {
			return shape{}, fail(ErrSuite, "suite %s is not %s for a chain slot", quote(suite), SuiteAESKW)
		}
		return shape{}, nil
	}
	return shape{}, fail(ErrKind, "unknown slot kind %s", quote(string(kind)))
}

// quote shows at most 32 bytes of an untrusted string.
func quote(s string) string {
	if len(s) > 32 {
		s = s[:32] + "…"
	}
	return strconv.Quote(s)
}

func (sh shape) keys() []string {
	k := []string{"v", "kind", "suite", "group", "gdk_version", "key_version", "commit", "wrapped", "bind"}
	if sh.id {
		k = append(k, "id")
	}
	if sh.credential {
		k = append(k, "credential")
	}
	if sh.epk {
		k = append(k, "epk")
	}
	if sh.kdf {
		k = append(k, "kdf")
	}
	if sh.unlock {
		k = append(k, "unlock")
	}
	if sh.check {
		k = append(k, "check")
	}
	return k
}

// ParseSlot decodes one slot.
func ParseSlot(b []byte) (*Slot, error) {
	if len(b) > MaxSlotSize {
		return nil, fail(ErrSize, "slot is %d bytes, more than %d", len(b), MaxSlotSize)
	}
	v, err := strictjson.Parse(b)
	if err != nil {
		return nil, wrapJSON(err)
	}
	return slotFrom(v)
}

// member finds key among the members of an object value without the
// allow-list, which depends on v, kind and suite.
func member(v strictjson.Value, key string) (strictjson.Value, bool) {
	for _, m := range v.Obj {
		if m.Key == key {
			return m.Val, true
		}
	}
	return strictjson.Value{}, false
}

// header reads v, kind and suite, in that order, before anything else: the
// version decides the rules, and the kind and suite which keys belong.
func header(v strictjson.Value, kinds bool) (Kind, string, error) {
	if v.Kind != strictjson.KindObject {
		return "", "", wrapJSON(fmt.Errorf("%w: not an object", strictjson.ErrType))
	}
	ver, ok := member(v, "v")
	switch {
	case !ok:
		return "", "", wrapJSON(fmt.Errorf("%w: no key \"v\"", strictjson.ErrMissingKey))
	case ver.Kind != strictjson.KindInt:
		return "", "", wrapJSON(fmt.Errorf("%w: \"v\" is not an integer", strictjson.ErrType))
	case ver.Int != Version:
		return "", "", fail(ErrVersion, "format version %d; this decoder reads version %d only", ver.Int, Version)
	}
	if !kinds {
		return "", "", nil
	}
	var str [2]string
	for i, key := range []string{"kind", "suite"} {
		f, ok := member(v, key)
		switch {
		case !ok:
			return "", "", wrapJSON(fmt.Errorf("%w: no key %q", strictjson.ErrMissingKey, key))
		case f.Kind != strictjson.KindString:
			return "", "", wrapJSON(fmt.Errorf("%w: %q is not a string", strictjson.ErrType, key))
		}
		str[i] = f.Str
	}
	return Kind(str[0]), str[1], nil
}

func slotFrom(v strictjson.Value) (*Slot, error) {
	kind, suite, err := header(v, true)
	if err != nil {
		return nil, err
	}
	sh, err := shapeOf(kind, suite)
	if err != nil {
		return nil, err
	}
	o, err := v.Object(sh.keys()...)
	if err != nil {
		return nil, wrapJSON(err)
	}
	s := &Slot{Kind: kind, Suite: suite}
	if s.Group, err = o.String("group", 1, MaxIDLength); err != nil {
		return nil, wrapJSON(err)
	}
	if err := ValidateID(s.Group); err != nil {
		return nil, fail(ErrID, "group: %v", err)
	}
	maxGDK := uint32(MaxVersion)
	if kind == KindChain {
		maxGDK--
	}
	if s.GDKVersion, err = o.Uint32("gdk_version", 1, maxGDK); err != nil {
		return nil, wrapJSON(err)
	}
	if s.KeyVersion, err = o.Uint32("key_version", 1, MaxVersion); err != nil {
		return nil, wrapJSON(err)
	}
	if kind == KindChain && s.KeyVersion != s.GDKVersion+1 {
		return nil, fail(ErrMismatch, "a chain slot holding GDK %d is wrapped under GDK %d, not %d", s.GDKVersion, s.GDKVersion+1, s.KeyVersion)
	}
	if sh.id {
		if s.ID, err = o.String("id", 1, MaxIDLength); err != nil {
			return nil, wrapJSON(err)
		}
		if err := ValidateID(s.ID); err != nil {
			return nil, fail(ErrID, "id: %v", err)
		}
	}
	if sh.credential {
		if s.Credential, err = o.Bytes("credential", 1, MaxCredentialSize); err != nil {
			return nil, wrapJSON(err)
		}
	}
	if sh.epk {
		if s.EPK, err = o.Bytes("epk", format.P256PointSize, format.P256PointSize); err != nil {
			return nil, wrapJSON(err)
		}
		if _, err := ecdh.P256().NewPublicKey(s.EPK); err != nil {
			return nil, fail(ErrPoint, "epk is not an uncompressed P-256 point")
		}
	}
	if sh.kdf {
		keys := []string{"salt", "iterations"}
		if sh.minIterations == 0 {
			keys = keys[:1]
		}
		k, err := o.Child("kdf", keys...)
		if err != nil {
			return nil, wrapJSON(err)
		}
		s.KDF = &KDF{}
		if s.KDF.Salt, err = k.Bytes("salt", sh.saltSize, sh.saltSize); err != nil {
			return nil, wrapJSON(err)
		}
		if sh.minIterations > 0 {
			if s.KDF.Iterations, err = k.Uint32("iterations", sh.minIterations, MaxIterations); err != nil {
				return nil, wrapJSON(err)
			}
		}
	}
	if sh.unlock {
		u, err := o.Child("unlock", "epoch", "index")
		if err != nil {
			return nil, wrapJSON(err)
		}
		s.Unlock = &Unlock{}
		if s.Unlock.Epoch, err = u.Uint32("epoch", 1, MaxVersion); err != nil {
			return nil, wrapJSON(err)
		}
		if s.Unlock.Index, err = u.Uint32("index", 0, MaxIndex); err != nil {
			return nil, wrapJSON(err)
		}
	}
	if sh.check {
		if s.Check, err = o.Bytes("check", CheckSize, CheckSize); err != nil {
			return nil, wrapJSON(err)
		}
	}
	if s.Commit, err = o.Bytes("commit", CommitSize, CommitSize); err != nil {
		return nil, wrapJSON(err)
	}
	lo, hi := KWSize, KWSize
	if sh.rsa {
		// RSA-2048 to RSA-4096 ciphertexts.
		lo, hi = 256, 512
	}
	if s.Wrapped, err = o.Bytes("wrapped", lo, hi); err != nil {
		return nil, wrapJSON(err)
	}
	if s.Bind, err = o.Bytes("bind", BindSize, BindSize); err != nil {
		return nil, wrapJSON(err)
	}
	return s, nil
}

// Validate checks s by encoding and decoding it: the writer and the reader
// apply one set of rules.
func (s *Slot) Validate() error {
	_, err := s.Marshal()
	return err
}

// Marshal encodes s in canonical form and checks it with ParseSlot.
func (s *Slot) Marshal() ([]byte, error) {
	b, err := strictjson.Encode(s.value())
	if err != nil {
		return nil, wrapJSON(err)
	}
	if _, err := ParseSlot(b); err != nil {
		return nil, err
	}
	return b, nil
}

func str(s string) strictjson.Value { return strictjson.Value{Kind: strictjson.KindString, Str: s} }
func num(n uint32) strictjson.Value { return strictjson.Value{Kind: strictjson.KindInt, Int: n} }
func bin(b []byte) strictjson.Value { return str(strictjson.EncodeBase64(b)) }

// value is the canonical member order: v, kind, suite, group, gdk_version,
// key_version, id, credential, epk, kdf, unlock, check, commit, wrapped,
// bind.
func (s *Slot) value() strictjson.Value {
	ms := []strictjson.Member{
		{Key: "v", Val: num(Version)},
		{Key: "kind", Val: str(string(s.Kind))},
		{Key: "suite", Val: str(s.Suite)},
		{Key: "group", Val: str(s.Group)},
		{Key: "gdk_version", Val: num(s.GDKVersion)},
		{Key: "key_version", Val: num(s.KeyVersion)},
	}
	if s.ID != "" {
		ms = append(ms, strictjson.Member{Key: "id", Val: str(s.ID)})
	}
	if s.Credential != nil {
		ms = append(ms, strictjson.Member{Key: "credential", Val: bin(s.Credential)})
	}
	if s.EPK != nil {
		ms = append(ms, strictjson.Member{Key: "epk", Val: bin(s.EPK)})
	}
	if s.KDF != nil {
		k := []strictjson.Member{{Key: "salt", Val: bin(s.KDF.Salt)}}
		if s.KDF.Iterations != 0 {
			k = append(k, strictjson.Member{Key: "iterations", Val: num(s.KDF.Iterations)})
		}
		ms = append(ms, strictjson.Member{Key: "kdf", Val: strictjson.Value{Kind: strictjson.KindObject, Obj: k}})
	}
	if s.Unlock != nil {
		ms = append(ms, strictjson.Member{Key: "unlock", Val: strictjson.Value{Kind: strictjson.KindObject, Obj: []strictjson.Member{
			{Key: "epoch", Val: num(s.Unlock.Epoch)}, {Key: "index", Val: num(s.Unlock.Index)}}}})
	}
	if s.Check != nil {
		ms = append(ms, strictjson.Member{Key: "check", Val: bin(s.Check)})
	}
	ms = append(ms,
		strictjson.Member{Key: "commit", Val: bin(s.Commit)},
		strictjson.Member{Key: "wrapped", Val: bin(s.Wrapped)},
		strictjson.Member{Key: "bind", Val: bin(s.Bind)})
	return strictjson.Value{Kind: strictjson.KindObject, Obj: ms}
}

// Parse decodes a bundle: {"v":2,"group":…,"slots":[…]}. Every slot must
// name the bundle's group, and slots holding the same GDK version must
// carry the same commitment.
func Parse(data []byte) (*Bundle, error) {
	if len(data) > MaxBundleSize {
		return nil, fail(ErrSize, "bundle is %d bytes, more than %d", len(data), MaxBundleSize)
	}
	v, err := strictjson.Parse(data)
	if err != nil {
		return nil, wrapJSON(err)
	}
	if _, _, err := header(v, false); err != nil {
		return nil, err
	}
	o, err := v.Object("v", "group", "slots")
	if err != nil {
		return nil, wrapJSON(err)
	}
	b := &Bundle{}
	if b.Group, err = o.String("group", 1, MaxIDLength); err != nil {
		return nil, wrapJSON(err)
	}
	if err := ValidateID(b.Group); err != nil {
		return nil, fail(ErrID, "group: %v", err)
	}
	slots, err := o.Array("slots", 1, MaxSlots)
	if err != nil {
		return nil, wrapJSON(err)
	}
	commits := map[uint32][]byte{}
	for i, sv := range slots {
		s, err := slotFrom(sv)
		if err != nil {
			return nil, fmt.Errorf("slot %d: %w", i, err)
		}
		if s.Group != b.Group {
			return nil, fail(ErrMismatch, "slot %d names another group than the bundle", i)
		}
		if c, ok := commits[s.GDKVersion]; ok && string(c) != string(s.Commit) {
			return nil, fail(ErrMismatch, "slot %d: two commitments for GDK version %d", i, s.GDKVersion)
		}
		commits[s.GDKVersion] = s.Commit
		b.Slots = append(b.Slots, *s)
	}
	return b, nil
}

// Marshal encodes b and checks it with Parse.
func (b *Bundle) Marshal() ([]byte, error) {
	arr := make([]strictjson.Value, len(b.Slots))
	for i := range b.Slots {
		arr[i] = b.Slots[i].value()
	}
	out, err := strictjson.Encode(strictjson.Value{Kind: strictjson.KindObject, Obj: []strictjson.Member{
		{Key: "v", Val: num(Version)},
		{Key: "group", Val: str(b.Group)},
		{Key: "slots", Val: strictjson.Value{Kind: strictjson.KindArray, Arr: arr}},
	}})
	if err != nil {
		return nil, wrapJSON(err)
	}
	if _, err := Parse(out); err != nil {
		return nil, err
	}
	return out, nil
}

// ValidateID checks a group, user, member or device id: 1 to 128 bytes of
// printable ASCII without spaces (0x21–0x7E), so ids are safe in logs,
// store keys and audit records.
func ValidateID(id string) error {
	if id == "" {
		return errors.New("empty id")
	}
	if len(id) > MaxIDLength {
		return fmt.Errorf("id is %d bytes, more than %d", len(id), MaxIDLength)
	}
	for i := 0; i < len(id); i++ {
		if c := id[i]; c <= ' ' || c > '~' {
			return fmt.Errorf("id has a byte outside printable ASCII at offset %d", i)
		}
	}
	return nil
}
