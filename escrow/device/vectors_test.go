package device

import (
	"bytes"
	"crypto"
	"crypto/ecdh"
	"crypto/hmac"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/escrowd/escrowd/escrow/bundle"
	"github.com/escrowd/escrowd/escrow/unlockcode"
	"github.com/escrowd/escrowd/format"
	"github.com/escrowd/escrowd/format/strictjson"
)

var update = flag.Bool("update", false, "regenerate testdata/vectors.json")

const vectorFile = "testdata/vectors.json"

// Vectors is testdata/vectors.json, the device vectors of format v2. The
// browser device runs the same file, so its shape is normative
// (docs/FORMAT.md, "Test vectors"). Byte strings are hex; slots and
// records are their exact JSON text, as a JSON string.
type Vectors struct {
	Comment  string             `json:"comment"`  // what the file is and how it is made
	Format   int                `json:"format"`   // the key bundle format version: 2
	Group    string             `json:"group"`    // the group of every slot and record
	Keys     VectorKeys         `json:"keys"`     // the recipients' private keys
	GDKs     map[string]string  `json:"gdks"`     // GDK by version ("1", "2"), hex
	Commits  map[string]string  `json:"commits"`  // format.Commitment(group, v, GDK v) by version, hex
	Derived  map[string]Derived `json:"derived"`  // the keys DK derives from each GDK, by version
	Positive []Positive         `json:"positive"` // slots that open, with every intermediate value
	Negative []Negative         `json:"negative"` // inputs refused, each with its error class
	Records  []RecordVector     `json:"records"`  // records that decrypt
}

// VectorKeys are PKCS#8 DER private keys, hex.
type VectorKeys struct {
	RSA2048 string `json:"rsa2048"` // member and device rsa-oaep slots
	RSA3072 string `json:"rsa3072"` // escrow rsa-oaep slots
	P256    string `json:"p256"`    // every ecdh-p256 slot
}

// Derived are DK(GDK, label) for the three labels of format, hex.
type Derived struct {
	Record string `json:"record"` // DK(GDK, format.LabelRecord): the AES-256-GCM key of records
	Chain  string `json:"chain"`  // DK(GDK, format.LabelChain): the AES-KW key of the chain slot of the previous GDK
	Bind   string `json:"bind"`   // DK(GDK, format.LabelBind): the HMAC-SHA256 key of bindings
}

// VectorOpen says how a slot is opened: exactly one member is set.
type VectorOpen struct {
	Key       string `json:"key,omitempty"`        // a member of keys ("rsa2048", "rsa3072", "p256"): escrow, member and device slots
	Code      string `json:"code,omitempty"`       // unlock: the code as support reads it aloud
	Password  string `json:"password,omitempty"`   // password: NFC-normalised, used as its UTF-8 bytes
	PRF       string `json:"prf,omitempty"`        // passkey-prf: the PRF output for prf_input, hex
	PRFInput  string `json:"prf_input,omitempty"`  // passkey-prf: the PRF input the device must ask for (format.PRFInput of the salt), hex
	ChainWith uint32 `json:"chain_with,omitempty"` // chain: the version of the GDK (in gdks) that opens it
}

// VectorWant is what the device expects of the slot (device.Want).
type VectorWant struct {
	Group string `json:"group"` // the group being opened
	ID    string `json:"id"`    // the device's recipient id; "" for escrow and chain slots
}

// Intermediate values of opening a slot, hex; those that apply.
type Intermediate struct {
	Z       string `json:"z,omitempty"`       // ecdh-p256: the ECDH shared secret (x coordinate)
	Info    string `json:"info,omitempty"`    // ecdh-p256: format.ECDHInfo(epk, rpk)
	Key     string `json:"key,omitempty"`     // the AES-KW key that unwraps "wrapped" (not for rsa-oaep)
	Secret  string `json:"secret,omitempty"`  // unlock, password: the PBKDF2 password bytes
	Check   string `json:"check,omitempty"`   // unlock, password, passkey-prf: format.CheckValue(key)
	Message string `json:"message,omitempty"` // the binding message, format.SlotContext.Message
	Bind    string `json:"bind,omitempty"`    // HMAC-SHA256(derived bind key of the GDK, message): the slot's bind
}

// Positive is a slot that opens.
type Positive struct {
	Name         string       `json:"name"`         // what the vector shows
	Slot         string       `json:"slot"`         // the slot's exact JSON text (canonical)
	Open         VectorOpen   `json:"open"`         // how to open it
	Want         VectorWant   `json:"want"`         // what the device asks for
	Intermediate Intermediate `json:"intermediate"` // the values a device computes on the way
	GDKVersion   uint32       `json:"gdk_version"`  // the version of the GDK the slot holds
	GDK          string       `json:"gdk"`          // that GDK, hex (= gdks[gdk_version])
}

// Negative is an input that is refused, with the class of the error.
type Negative struct {
	Name     string      `json:"name"`                // what the vector shows
	Op       string      `json:"op"`                  // "parse-slot", "parse-bundle", "parse-record" or "open"
	Input    *string     `json:"input,omitempty"`     // the input as text, or
	InputHex string      `json:"input_hex,omitempty"` // the input as hex (bytes that are not UTF-8 text)
	Open     *VectorOpen `json:"open,omitempty"`      // op "open": how to open the slot in input
	Want     *VectorWant `json:"want,omitempty"`      // op "open": what the device asks for
	Class    string      `json:"class"`               // the error class: bundle.Class or device.OpenClass
}

// RecordVector is a record that decrypts.
type RecordVector struct {
	Name       string `json:"name"`        // what the vector shows
	Record     string `json:"record"`      // the record's exact JSON text
	GDKVersion uint32 `json:"gdk_version"` // the version of the GDK whose record key encrypted it
	AAD        string `json:"aad"`         // format.RecordAAD(group, id, gdk_version), hex
	Key        string `json:"key"`         // the record key, derived[gdk_version].record, hex
	Plaintext  string `json:"plaintext"`   // the plaintext, UTF-8
}

// Every error class the vectors must show.
var (
	parseClasses = []string{"size", "syntax", "duplicate-key", "unknown-key", "missing-key", "type", "range",
		"base64", "version", "kind", "suite", "id", "point", "mismatch"}
	openVectorClasses = []string{"binding", "commitment", "wrong-key", "wrong-secret", "wrong-code", "damaged",
		"not-a-code", "mistyped"}
)

func unhex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func vstr(v uint32) string { return strconv.FormatUint(uint64(v), 10) }

// vectorKeys are the parsed keys of a file.
type vectorKeys map[string]crypto.PrivateKey

func parseKeys(t testing.TB, k VectorKeys) vectorKeys {
	t.Helper()
	out := vectorKeys{}
	for name, h := range map[string]string{"rsa2048": k.RSA2048, "rsa3072": k.RSA3072, "p256": k.P256} {
		key, err := x509.ParsePKCS8PrivateKey(unhex(t, h))
		if err != nil {
			t.Fatalf("keys.%s: %v", name, err)
		}
		switch key := key.(type) {
		case *rsa.PrivateKey:
			if want := map[string]int{"rsa2048": 2048, "rsa3072": 3072}[name]; key.N.BitLen() != want {
				t.Fatalf("keys.%s is RSA-%d", name, key.N.BitLen())
			}
			out[name] = key
		case interface {
			ECDH() (*ecdh.PrivateKey, error)
		}:
			ek, err := key.ECDH()
			if err != nil || name != "p256" || ek.Curve() != ecdh.P256() {
				t.Fatalf("keys.%s: %v", name, err)
			}
			out[name] = ek
		default:
			t.Fatalf("keys.%s is a %T", name, key)
		}
	}
	return out
}

// open opens a slot as the vector says.
func (v *Vectors) open(t testing.TB, keys vectorKeys, slot []byte, o VectorOpen, w VectorWant) ([]byte, *bundle.Slot, error) {
	t.Helper()
	n := 0
	for _, set := range []bool{o.Key != "", o.Code != "", o.Password != "", o.PRF != "", o.ChainWith != 0} {
		if set {
			n++
		}
	}
	if n != 1 || (o.PRF == "") != (o.PRFInput == "") {
		t.Fatalf("open %+v: want exactly one way to open", o)
	}
	switch {
	case o.Key != "":
		k, ok := keys[o.Key]
		if !ok {
			t.Fatalf("open.key %q is not in keys", o.Key)
		}
		return OpenPublic(slot, Want(w), k)
	case o.Code != "":
		return OpenUnlock([][]byte{slot}, Want(w), o.Code)
	case o.Password != "":
		return OpenPassword(slot, Want(w), o.Password)
	case o.PRF != "":
		prf, input := unhex(t, o.PRF), unhex(t, o.PRFInput)
		return OpenPasskey(slot, Want(w), func(in []byte) ([]byte, error) {
			if !bytes.Equal(in, input) {
				return nil, fmt.Errorf("the device asked for the PRF of %x, the vector gives it for %x", in, input)
			}
			return bytes.Clone(prf), nil
		})
	default:
		g, ok := v.GDKs[vstr(o.ChainWith)]
		if !ok {
			t.Fatalf("open.chain_with %d: no such GDK", o.ChainWith)
		}
		return OpenChain(slot, w.Group, unhex(t, g))
	}
}

// intermediates computes the intermediate values of opening s with o,
// holding gdk. It checks them against the slot as it goes: the check
// value, the binding, and that the key unwraps the GDK.
func (v *Vectors) intermediates(t testing.TB, keys vectorKeys, s *bundle.Slot, o VectorOpen, gdk []byte) Intermediate {
	t.Helper()
	var in Intermediate
	var key []byte
	var err error
	switch {
	case s.Suite == bundle.SuiteECDHP256:
		priv, ok := keys[o.Key].(*ecdh.PrivateKey)
		if !ok {
			t.Fatalf("an ecdh-p256 slot opened with %q", o.Key)
		}
		peer, err := ecdh.P256().NewPublicKey(s.EPK)
		if err != nil {
			t.Fatal(err)
		}
		z, err := priv.ECDH(peer)
		if err != nil {
			t.Fatal(err)
		}
		info, err := format.ECDHInfo(s.EPK, priv.PublicKey().Bytes())
		if err != nil {
			t.Fatal(err)
		}
		if key, err = format.ECDHKey(z, info); err != nil {
			t.Fatal(err)
		}
		in.Z, in.Info = hex.EncodeToString(z), hex.EncodeToString(info[:])
	case s.Kind == bundle.KindUnlock:
		c, err := unlockcode.Parse(o.Code)
		if err != nil {
			t.Fatal(err)
		}
		secret := c.Secret()
		if key, err = format.PasswordKey(secret, s.KDF.Salt, int(s.KDF.Iterations)); err != nil {
			t.Fatal(err)
		}
		in.Secret = hex.EncodeToString(secret)
	case s.Kind == bundle.KindPassword:
		if key, err = format.PasswordKey([]byte(o.Password), s.KDF.Salt, int(s.KDF.Iterations)); err != nil {
			t.Fatal(err)
		}
		in.Secret = hex.EncodeToString([]byte(o.Password))
	case s.Kind == bundle.KindPasskeyPRF:
		if o.PRFInput != hex.EncodeToString(format.PRFInput(s.KDF.Salt)) {
			t.Fatalf("prf_input %s is not the slot's", o.PRFInput)
		}
		if key, err = format.PasskeyKey(unhex(t, o.PRF), s.KDF.Salt); err != nil {
			t.Fatal(err)
		}
	case s.Kind == bundle.KindChain:
		if key, err = format.DK(unhex(t, v.GDKs[vstr(o.ChainWith)]), format.LabelChain); err != nil {
			t.Fatal(err)
		}
	}
	if key != nil {
		in.Key = hex.EncodeToString(key)
		if got, err := UnwrapKey(key, s.Wrapped); err != nil || !bytes.Equal(got, gdk) {
			t.Fatalf("the key does not unwrap the GDK: %v", err)
		}
	}
	if s.Check != nil {
		c := format.CheckValue(key)
		if !bytes.Equal(c, s.Check) {
			t.Fatal("the check value is not the slot's")
		}
		in.Check = hex.EncodeToString(c)
	}
	in.Message = hex.EncodeToString(s.Context().Message())
	b, err := format.Bind(gdk, s.Context())
	if err != nil || !hmac.Equal(b, s.Bind) {
		t.Fatalf("the binding is not the slot's: %v", err)
	}
	in.Bind = hex.EncodeToString(b)
	return in
}

// nfcPassword is a password in NFC with letters outside ASCII: a device
// feeds password.normalize("NFC") to PBKDF2 as UTF-8.
const nfcPassword = "Gr\u00fc\u00dfe, J\u00fcrgen \u2014 \u00f1and\u00fa \U0001F511"

func generateVectors(t *testing.T) *Vectors {
	v := &Vectors{
		Comment: "escrowd key bundle format v2 device vectors (docs/FORMAT.md, Test vectors). Hex unless a member says otherwise; " +
			"slot, record and input are exact JSON texts. Made by go test ./escrow/device -run TestVectors -update (random keys); " +
			"run by escrow/device (Go) and @escrowd/device (WebCrypto).",
		Format: format.Version, Group: group,
		GDKs: map[string]string{}, Commits: map[string]string{}, Derived: map[string]Derived{},
	}
	rsa2048, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	rsa3072, err := rsa.GenerateKey(rand.Reader, 3072)
	if err != nil {
		t.Fatal(err)
	}
	p256, _ := ecdh.P256().GenerateKey(rand.Reader)
	der := func(k any) string { return hex.EncodeToString(ok(t)(x509.MarshalPKCS8PrivateKey(k))) }
	pkix := func(k any) []byte { return ok(t)(x509.MarshalPKIXPublicKey(k)) }
	v.Keys = VectorKeys{RSA2048: der(rsa2048), RSA3072: der(rsa3072), P256: der(p256)}
	pubs := map[string][]byte{"rsa2048": pkix(&rsa2048.PublicKey), "rsa3072": pkix(&rsa3072.PublicKey), "p256": pkix(p256.PublicKey())}
	keys := parseKeys(t, v.Keys)

	gdks := map[uint32][]byte{1: newGDK(t), 2: newGDK(t)}
	for ver, g := range gdks {
		v.GDKs[vstr(ver)] = hex.EncodeToString(g)
		v.Commits[vstr(ver)] = hex.EncodeToString(format.Commitment(group, ver, g))
		d := func(l format.Label) string { return hex.EncodeToString(ok(t)(format.DK(g, l))) }
		v.Derived[vstr(ver)] = Derived{Record: d(format.LabelRecord), Chain: d(format.LabelChain), Bind: d(format.LabelBind)}
	}

	add := func(name string, slot []byte, o VectorOpen, w VectorWant) {
		s, err := bundle.ParseSlot(slot)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		p := Positive{Name: name, Slot: string(slot), Open: o, Want: w, GDKVersion: s.GDKVersion, GDK: v.GDKs[vstr(s.GDKVersion)]}
		p.Intermediate = v.intermediates(t, keys, s, o, gdks[s.GDKVersion])
		v.Positive = append(v.Positive, p)
	}
	keyOf := func(kind bundle.Kind, suite string) string {
		switch {
		case suite == bundle.SuiteECDHP256:
			return "p256"
		case kind == bundle.KindEscrow:
			return "rsa3072"
		}
		return "rsa2048"
	}
	slotOf := map[string][]byte{}
	for _, kind := range publicKinds {
		for _, suite := range publicSuites {
			k := keyOf(kind, suite)
			to := To{Group: group, GDKVersion: 2, KeyVersion: 1, ID: recipient(kind)}
			slot := ok(t)(SealPublic(kind, to, suite, pubs[k], gdks[2]))
			slotOf[string(kind)+"/"+suite] = slot
			add(fmt.Sprintf("%s %s (%s)", kind, suite, k), slot, VectorOpen{Key: k}, VectorWant{group, to.ID})
		}
	}
	add("member ecdh-p256 of GDK 1", ok(t)(SealPublic(bundle.KindMember, To{Group: group, GDKVersion: 1, KeyVersion: 1, ID: "alice"},
		bundle.SuiteECDHP256, pubs["p256"], gdks[1])), VectorOpen{Key: "p256"}, VectorWant{group, "alice"})

	user := To{Group: group, GDKVersion: 2, KeyVersion: 1, ID: "bob"}
	code := newCode(t, 3)
	unlock := ok(t)(SealUnlock(gdks[2], user, 2, code, bundle.MinUnlockIterations))
	add("unlock (epoch 2, index 3)", unlock, VectorOpen{Code: code.String()}, VectorWant{group, "bob"})
	pw := ok(t)(SealPassword(gdks[2], user, "correct horse battery staple", bundle.MinPasswordIterations))
	add("password", pw, VectorOpen{Password: "correct horse battery staple"}, VectorWant{group, "bob"})
	pwNFC := ok(t)(SealPassword(gdks[2], user, nfcPassword, bundle.MinPasswordIterations))
	add("password outside ASCII (NFC)", pwNFC, VectorOpen{Password: nfcPassword}, VectorWant{group, "bob"})
	cred := make([]byte, 200)
	rand.Read(cred)
	credSecret := make([]byte, 32)
	rand.Read(credSecret)
	prf := func(in []byte) ([]byte, error) {
		m := hmac.New(sha256.New, credSecret)
		m.Write(in)
		return m.Sum(nil), nil
	}
	pk := ok(t)(SealPasskey(gdks[2], user, cred, prf))
	pks, _ := bundle.ParseSlot(pk)
	prfIn := format.PRFInput(pks.KDF.Salt)
	prfOut, _ := prf(prfIn)
	passkeyOpen := VectorOpen{PRF: hex.EncodeToString(prfOut), PRFInput: hex.EncodeToString(prfIn)}
	add("passkey-prf (200-byte credential id)", pk, passkeyOpen, VectorWant{group, "bob"})
	chain := ok(t)(SealChain(gdks[1], gdks[2], group, 1))
	add("chain: GDK 1 under GDK 2", chain, VectorOpen{ChainWith: 2}, VectorWant{group, ""})

	// Negative vectors.
	neg := func(name, op, input, class string) {
		v.Negative = append(v.Negative, Negative{Name: name, Op: op, Input: &input, Class: class})
	}
	negHex := func(name, op string, input []byte, class string) {
		v.Negative = append(v.Negative, Negative{Name: name, Op: op, InputHex: hex.EncodeToString(input), Class: class})
	}
	negOpen := func(name string, slot []byte, o VectorOpen, w VectorWant, class string) {
		in := string(slot)
		v.Negative = append(v.Negative, Negative{Name: name, Op: "open", Input: &in, Open: &o, Want: &w, Class: class})
	}
	memE, memR, escE := string(slotOf["member/ecdh-p256"]), string(slotOf["member/rsa-oaep-sha256"]), string(slotOf["escrow/ecdh-p256"])
	e := func(text, path, raw string) string { return editJSON(t, text, path, raw) }
	qb := func(n int, c byte) string { return strconv.Quote(strictjson.EncodeBase64(bytes.Repeat([]byte{c}, n))) }

	neg("size: a slot of 8193 bytes", "parse-slot", memE+strings.Repeat(" ", bundle.MaxSlotSize+1-len(memE)), "size")
	neg("syntax: empty input", "parse-slot", "", "syntax")
	neg("syntax: raw DEL (0x7f) in an id", "parse-slot", strings.Replace(memE, `"alice"`, "\"al\x7fce\"", 1), "syntax")
	negHex("syntax: a byte outside ASCII (Kelvin sign in a key)", "parse-slot", []byte(strings.Replace(memE, `"kind"`, "\"\u212aind\"", 1)), "syntax")
	neg("syntax: \\u escape", "parse-slot", strings.Replace(memE, `"alice"`, `"\u0061lice"`, 1), "syntax")
	neg("syntax: fraction", "parse-slot", strings.Replace(memE, `"key_version":1`, `"key_version":1.0`, 1), "syntax")
	neg("syntax: trailing data", "parse-slot", memE+"{}", "syntax")
	neg("duplicate-key: kind twice", "parse-slot", strings.Replace(memE, `"v":2`, `"v":2,"kind":"member"`, 1), "duplicate-key")
	memEs, _ := bundle.ParseSlot([]byte(memE))
	neg("unknown-key: epk on an rsa-oaep slot", "parse-slot", e(memR, "epk", strconv.Quote(strictjson.EncodeBase64(memEs.EPK))), "unknown-key")
	neg("unknown-key: check on a member slot", "parse-slot", e(memE, "check", qb(8, 1)), "unknown-key")
	neg("unknown-key: iterations on a passkey-prf slot", "parse-slot", e(string(pk), "kdf.iterations", "600000"), "unknown-key")
	neg("missing-key: bind", "parse-slot", e(memE, "bind", ""), "missing-key")
	neg("missing-key: v", "parse-slot", e(memE, "v", ""), "missing-key")
	neg("type: gdk_version is a string", "parse-slot", e(memE, "gdk_version", `"2"`), "type")
	neg("range: gdk_version 0", "parse-slot", e(memE, "gdk_version", "0"), "range")
	neg("range: gdk_version 2^31", "parse-slot", e(memE, "gdk_version", "2147483648"), "range")
	neg("range: integer above 2^32-1", "parse-slot", strings.Replace(memE, `"key_version":1`, `"key_version":4294967296`, 1), "range")
	neg("range: unlock index 32", "parse-slot", e(string(unlock), "unlock.index", "32"), "range")
	neg("range: unlock epoch 0", "parse-slot", e(string(unlock), "unlock.epoch", "0"), "range")
	neg("range: unlock iterations 65535", "parse-slot", e(string(unlock), "kdf.iterations", "65535"), "range")
	neg("range: password iterations 599999", "parse-slot", e(string(pw), "kdf.iterations", "599999"), "range")
	neg("range: iterations 10000001", "parse-slot", e(string(pw), "kdf.iterations", "10000001"), "range")
	neg("range: id of 129 bytes", "parse-slot", e(memE, "id", strconv.Quote(strings.Repeat("a", 129))), "range")
	neg("range: credential of 1024 bytes", "parse-slot", e(string(pk), "credential", qb(1024, 1)), "range")
	neg("range: salt of 15 bytes", "parse-slot", e(string(pw), "kdf.salt", qb(15, 1)), "range")
	neg("range: passkey-prf salt of 16 bytes", "parse-slot", e(string(pk), "kdf.salt", qb(16, 1)), "range")
	neg("range: check of 7 bytes", "parse-slot", e(string(pw), "check", qb(7, 1)), "range")
	neg("range: commit of 31 bytes", "parse-slot", e(memE, "commit", qb(31, 1)), "range")
	neg("range: bind of 33 bytes", "parse-slot", e(memE, "bind", qb(33, 1)), "range")
	neg("range: AES-KW wrapped of 41 bytes", "parse-slot", e(memE, "wrapped", qb(41, 1)), "range")
	neg("range: RSA wrapped of 255 bytes", "parse-slot", e(memR, "wrapped", qb(255, 1)), "range")
	neg("range: RSA wrapped of 513 bytes", "parse-slot", e(memR, "wrapped", qb(513, 1)), "range")
	neg("base64: non-zero unused bits", "parse-slot", e(string(pw), "check", `"AAAAAAAAAAB="`), "base64")
	neg("base64: URL alphabet", "parse-slot", e(memE, "commit", strconv.Quote(strings.Repeat("-_", 22))), "base64")
	neg("version: v 1", "parse-slot", e(memE, "v", "1"), "version")
	neg("version: v 3", "parse-slot", e(memE, "v", "3"), "version")
	neg("kind: unknown kind", "parse-slot", e(memE, "kind", `"admin"`), "kind")
	neg("suite: aes-kw for a member slot", "parse-slot", e(memE, "suite", `"aes-kw"`), "suite")
	neg("id: a space in the id", "parse-slot", e(memE, "id", `"al ice"`), "id")
	neg("point: epk not on P-256", "parse-slot", e(memE, "epk", qb(65, 4)), "point")
	neg("mismatch: chain key_version is not gdk_version + 1", "parse-slot", e(string(chain), "key_version", "3"), "mismatch")
	bundleOf := func(grp string, slots ...string) string {
		return `{"v":2,"group":` + strconv.Quote(grp) + `,"slots":[` + strings.Join(slots, ",") + `]}`
	}
	neg("mismatch: a slot of another group in the bundle", "parse-bundle", bundleOf(group, escE, e(memE, "group", `"family-7"`)), "mismatch")
	neg("mismatch: two commitments for one GDK version", "parse-bundle", bundleOf(group, escE, e(memE, "commit", qb(32, 7))), "mismatch")
	neg("range: a bundle without slots", "parse-bundle", bundleOf(group), "range")
	neg("unknown-key: a bundle member", "parse-bundle", e(bundleOf(group, escE), "comment", `"x"`), "unknown-key")
	neg("version: a slot of version 1 in a bundle", "parse-bundle", bundleOf(group, escE, e(memE, "v", "1")), "version")

	rec1 := ok(t)(sealRecordIV(gdks[1], group, "note-1", 1, bytes.Repeat([]byte{1}, 12), []byte("written before the rotation")))
	neg("range: record iv of 11 bytes", "parse-record", e(string(rec1), "iv", qb(11, 1)), "range")
	neg("range: record ct shorter than the tag", "parse-record", e(string(rec1), "ct", qb(15, 1)), "range")
	neg("version: record v 1", "parse-record", e(string(rec1), "v", "1"), "version")
	neg("missing-key: record without iv", "parse-record", e(string(rec1), "iv", ""), "missing-key")
	neg("id: record id with a space", "parse-record", e(string(rec1), "id", `"note 1"`), "id")

	rw := func(slot []byte, f func(*bundle.Slot)) []byte { return rewrite(t, slot, f) }
	alice := VectorWant{group, "alice"}
	negOpen("binding: moved group (a slot of family-42 opened as family-7)", slotOf["member/ecdh-p256"], VectorOpen{Key: "p256"}, VectorWant{"family-7", "alice"}, "binding")
	negOpen("binding: moved recipient (id rewritten to mallory)", rw(slotOf["member/ecdh-p256"], func(s *bundle.Slot) { s.ID = "mallory" }), VectorOpen{Key: "p256"}, VectorWant{group, "mallory"}, "binding")
	negOpen("binding: moved recipient (a password slot's id rewritten)", rw(pw, func(s *bundle.Slot) { s.ID = "mallory" }), VectorOpen{Password: "correct horse battery staple"}, VectorWant{group, "mallory"}, "binding")
	negOpen("binding: moved kind (member to device, ecdh-p256)", rw(slotOf["member/ecdh-p256"], func(s *bundle.Slot) { s.Kind = bundle.KindDevice }), VectorOpen{Key: "p256"}, alice, "binding")
	negOpen("binding: moved kind (device to member, rsa-oaep-sha256)", rw(slotOf["device/rsa-oaep-sha256"], func(s *bundle.Slot) { s.Kind = bundle.KindMember }), VectorOpen{Key: "rsa2048"}, VectorWant{group, "phone-1"}, "binding")
	negOpen("binding: key_version rewritten", rw(slotOf["member/rsa-oaep-sha1"], func(s *bundle.Slot) { s.KeyVersion = 9 }), VectorOpen{Key: "rsa2048"}, alice, "binding")
	negOpen("binding: tampered bind", rw(slotOf["escrow/ecdh-p256"], func(s *bundle.Slot) { s.Bind[0] ^= 1 }), VectorOpen{Key: "p256"}, VectorWant{group, ""}, "binding")
	negOpen("binding: unlock epoch rewritten", rw(unlock, func(s *bundle.Slot) { s.Unlock.Epoch = 9 }), VectorOpen{Code: code.String()}, VectorWant{group, "bob"}, "binding")
	negOpen("binding: a password slot opened as an unlock slot", pw, VectorOpen{Code: code.String()}, VectorWant{group, "bob"}, "binding")
	negOpen("commitment: moved GDK version (gdk_version rewritten 2 to 1)", rw(slotOf["member/ecdh-p256"], func(s *bundle.Slot) { s.GDKVersion = 1 }), VectorOpen{Key: "p256"}, alice, "commitment")
	negOpen("commitment: moved group (group rewritten to family-7)", rw(slotOf["member/rsa-oaep-sha256"], func(s *bundle.Slot) { s.Group = "family-7" }), VectorOpen{Key: "rsa2048"}, VectorWant{"family-7", "alice"}, "commitment")
	negOpen("commitment: tampered commit", rw(slotOf["escrow/rsa-oaep-sha256"], func(s *bundle.Slot) { s.Commit[31] ^= 1 }), VectorOpen{Key: "rsa3072"}, VectorWant{group, ""}, "commitment")
	negOpen("commitment: chain versions rewritten", rw(chain, func(s *bundle.Slot) { s.GDKVersion, s.KeyVersion = 2, 3 }), VectorOpen{ChainWith: 2}, VectorWant{group, ""}, "commitment")
	negOpen("wrong-key: an RSA-2048 slot with the RSA-3072 key", slotOf["member/rsa-oaep-sha1"], VectorOpen{Key: "rsa3072"}, alice, "wrong-key")
	negOpen("wrong-key: an ecdh-p256 slot with an RSA key", slotOf["member/ecdh-p256"], VectorOpen{Key: "rsa2048"}, alice, "wrong-key")
	negOpen("wrong-key: an rsa-oaep slot with the P-256 key", slotOf["escrow/rsa-oaep-sha1"], VectorOpen{Key: "p256"}, VectorWant{group, ""}, "wrong-key")
	negOpen("wrong-key: ecdh-p256 wrapped key altered", rw(slotOf["device/ecdh-p256"], func(s *bundle.Slot) { s.Wrapped[0] ^= 1 }), VectorOpen{Key: "p256"}, VectorWant{group, "phone-1"}, "wrong-key")
	negOpen("wrong-key: the chain slot opened with GDK 1", chain, VectorOpen{ChainWith: 1}, VectorWant{group, ""}, "wrong-key")
	negOpen("wrong-secret: another password", pw, VectorOpen{Password: "correct horse battery stapler"}, VectorWant{group, "bob"}, "wrong-secret")
	otherPRF := make([]byte, 32)
	rand.Read(otherPRF)
	negOpen("wrong-secret: another passkey's PRF output", pk, VectorOpen{PRF: hex.EncodeToString(otherPRF), PRFInput: passkeyOpen.PRFInput}, VectorWant{group, "bob"}, "wrong-secret")
	negOpen("wrong-code: another code of the same index", unlock, VectorOpen{Code: newCode(t, 3).String()}, VectorWant{group, "bob"}, "wrong-code")
	negOpen("wrong-code: a code of another index", unlock, VectorOpen{Code: newCode(t, 4).String()}, VectorWant{group, "bob"}, "wrong-code")
	negOpen("damaged: password slot, wrapped key altered", rw(pw, func(s *bundle.Slot) { s.Wrapped[20] ^= 1 }), VectorOpen{Password: "correct horse battery staple"}, VectorWant{group, "bob"}, "damaged")
	negOpen("damaged: unlock slot, wrapped key altered", rw(unlock, func(s *bundle.Slot) { s.Wrapped[39] ^= 0x80 }), VectorOpen{Code: code.String()}, VectorWant{group, "bob"}, "damaged")
	negOpen("not-a-code: too short", unlock, VectorOpen{Code: "ABCD-EFGH"}, VectorWant{group, "bob"}, "not-a-code")
	negOpen("not-a-code: a U", unlock, VectorOpen{Code: "U" + code.String()[1:]}, VectorWant{group, "bob"}, "not-a-code")
	c := code.String()
	i := 5
	for c[i] == c[i+1] || c[i] == '-' || c[i+1] == '-' {
		i++
	}
	swapped := c[:i] + string(c[i+1]) + string(c[i]) + c[i+2:]
	negOpen("mistyped: two neighbours swapped", unlock, VectorOpen{Code: swapped}, VectorWant{group, "bob"}, "mistyped")

	// Records.
	rec2 := ok(t)(SealRecord(gdks[2], group, "note-2", 2, []byte("written after the rotation: caf\u00e9")))
	empty := ok(t)(SealRecord(gdks[2], group, "empty", 2, nil))
	for _, r := range []struct {
		name string
		rec  []byte
		pt   string
	}{{"record of GDK 1", rec1, "written before the rotation"}, {"record of GDK 2, UTF-8", rec2, "written after the rotation: caf\u00e9"},
		{"empty plaintext", empty, ""}} {
		pr, _ := bundle.ParseRecord(r.rec)
		v.Records = append(v.Records, RecordVector{Name: r.name, Record: string(r.rec), GDKVersion: pr.GDKVersion,
			AAD: hex.EncodeToString(format.RecordAAD(pr.Group, pr.ID, pr.GDKVersion)), Key: v.Derived[vstr(pr.GDKVersion)].Record, Plaintext: r.pt})
	}
	return v
}

// editJSON returns text with the member at path (keys separated by dots)
// set to the JSON value raw, or removed if raw is "".
func editJSON(t testing.TB, text, path, raw string) string {
	t.Helper()
	v, err := strictjson.Parse([]byte(text))
	if err != nil {
		t.Fatal(err)
	}
	var nv strictjson.Value
	if raw != "" {
		w, err := strictjson.Parse([]byte(`{"x":` + raw + `}`))
		if err != nil {
			t.Fatal(err)
		}
		nv = w.Obj[0].Val
	}
	o := &v
	keys := strings.Split(path, ".")
	for _, k := range keys[:len(keys)-1] {
		for i := range o.Obj {
			if o.Obj[i].Key == k {
				o = &o.Obj[i].Val
				break
			}
		}
	}
	last := keys[len(keys)-1]
	for i := range o.Obj {
		if o.Obj[i].Key == last {
			if raw == "" {
				o.Obj = append(o.Obj[:i:i], o.Obj[i+1:]...)
			} else {
				o.Obj[i].Val = nv
			}
			return string(ok(t)(strictjson.Encode(v)))
		}
	}
	if raw == "" {
		t.Fatalf("no member %s", path)
	}
	o.Obj = append(o.Obj, strictjson.Member{Key: last, Val: nv})
	return string(ok(t)(strictjson.Encode(v)))
}

func writeVectors(t *testing.T, v *Vectors) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", " ")
	if err := enc.Encode(v); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(vectorFile, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
}

func loadVectors(t *testing.T) *Vectors {
	b, err := os.ReadFile(vectorFile)
	if err != nil {
		t.Fatal(err)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	var v Vectors
	if err := dec.Decode(&v); err != nil {
		t.Fatal(err)
	}
	return &v
}

// TestVectors recomputes every value of testdata/vectors.json, opens
// every positive vector and refuses every negative one with exactly its
// class. go test ./escrow/device -run TestVectors -update makes a new file.
func TestVectors(t *testing.T) {
	if *update {
		writeVectors(t, generateVectors(t))
	}
	v := loadVectors(t)
	if v.Format != format.Version || v.Group == "" {
		t.Fatalf("format %d, group %q", v.Format, v.Group)
	}
	keys := parseKeys(t, v.Keys)
	if len(v.GDKs) != 2 || len(v.Commits) != 2 || len(v.Derived) != 2 {
		t.Fatal("want GDKs 1 and 2")
	}
	for vs, g := range v.GDKs {
		n, err := strconv.ParseUint(vs, 10, 32)
		if err != nil {
			t.Fatal(err)
		}
		gdk := unhex(t, g)
		if v.Commits[vs] != hex.EncodeToString(format.Commitment(v.Group, uint32(n), gdk)) {
			t.Errorf("commits[%s] is not the GDK's", vs)
		}
		d := func(l format.Label) string { return hex.EncodeToString(ok(t)(format.DK(gdk, l))) }
		if want := (Derived{Record: d(format.LabelRecord), Chain: d(format.LabelChain), Bind: d(format.LabelBind)}); v.Derived[vs] != want {
			t.Errorf("derived[%s] = %+v, want %+v", vs, v.Derived[vs], want)
		}
	}

	shapes := map[string]bool{}
	for _, p := range v.Positive {
		t.Run("positive/"+p.Name, func(t *testing.T) {
			s, err := bundle.ParseSlot([]byte(p.Slot))
			if err != nil {
				t.Fatal(err)
			}
			if again := ok(t)(s.Marshal()); string(again) != p.Slot {
				t.Fatal("the slot is not in canonical form")
			}
			if s.GDKVersion != p.GDKVersion || p.GDK != v.GDKs[vstr(p.GDKVersion)] || hex.EncodeToString(s.Commit) != v.Commits[vstr(p.GDKVersion)] {
				t.Fatal("gdk_version, gdk and the slot's commitment disagree")
			}
			gdk := unhex(t, p.GDK)
			if got := v.intermediates(t, keys, s, p.Open, gdk); got != p.Intermediate {
				t.Fatalf("intermediate values:\n got %+v\nfile %+v", got, p.Intermediate)
			}
			got, opened, err := v.open(t, keys, []byte(p.Slot), p.Open, p.Want)
			if err != nil || !bytes.Equal(got, gdk) || !reflect.DeepEqual(opened, s) {
				t.Fatalf("open = %x, %v; want %s", got, err, p.GDK)
			}
			if s.Kind == bundle.KindPasskeyPRF && len(s.Credential) != 200 {
				t.Errorf("the passkey-prf credential id is %d bytes, want 200", len(s.Credential))
			}
			if s.Kind == bundle.KindPassword && utf8.ValidString(p.Open.Password) {
				for _, r := range p.Open.Password {
					if r >= 0x300 && r <= 0x36f {
						t.Errorf("the password has a combining mark: not NFC")
					}
				}
			}
			shapes[string(s.Kind)+"/"+s.Suite+"/"+p.Open.Key] = true
		})
	}
	for _, want := range []string{"escrow/ecdh-p256/p256", "escrow/rsa-oaep-sha1/rsa3072", "escrow/rsa-oaep-sha256/rsa3072",
		"member/ecdh-p256/p256", "member/rsa-oaep-sha1/rsa2048", "member/rsa-oaep-sha256/rsa2048",
		"device/ecdh-p256/p256", "device/rsa-oaep-sha1/rsa2048", "device/rsa-oaep-sha256/rsa2048",
		"unlock/pbkdf2-sha256-aes-kw/", "password/pbkdf2-sha256-aes-kw/", "passkey-prf/hkdf-sha256-aes-kw/", "chain/aes-kw/"} {
		if !shapes[want] {
			t.Errorf("no positive vector for %s", want)
		}
	}

	classes := map[string]int{}
	for _, n := range v.Negative {
		t.Run("negative/"+n.Name, func(t *testing.T) {
			var in []byte
			switch {
			case n.Input != nil && n.InputHex == "":
				in = []byte(*n.Input)
			case n.Input == nil && n.InputHex != "":
				in = unhex(t, n.InputHex)
			default:
				t.Fatal("want exactly one of input and input_hex")
			}
			if (n.Op == "open") != (n.Open != nil && n.Want != nil) {
				t.Fatal("open and want go with op open, and only with it")
			}
			var err error
			switch n.Op {
			case "parse-slot":
				_, err = bundle.ParseSlot(in)
			case "parse-bundle":
				_, err = bundle.Parse(in)
			case "parse-record":
				_, err = bundle.ParseRecord(in)
			case "open":
				var got []byte
				got, _, err = v.open(t, keys, in, *n.Open, *n.Want)
				if got != nil {
					t.Fatalf("open gave a key: %x", got)
				}
			default:
				t.Fatalf("op %q", n.Op)
			}
			if got := OpenClass(err); got != n.Class {
				t.Fatalf("class %q (%v), want %q", got, err, n.Class)
			}
			classes[n.Op+"/"+n.Class]++
			classes[n.Class]++
		})
	}
	for _, c := range parseClasses {
		if classes[c] == 0 {
			t.Errorf("no negative vector of class %q", c)
		}
	}
	for _, c := range openVectorClasses {
		if classes["open/"+c] == 0 {
			t.Errorf("no open vector of class %q", c)
		}
	}

	if len(v.Records) == 0 {
		t.Error("no records")
	}
	for _, r := range v.Records {
		t.Run("record/"+r.Name, func(t *testing.T) {
			gdk := unhex(t, v.GDKs[vstr(r.GDKVersion)])
			rec, pt, err := OpenRecord([]byte(r.Record), gdk)
			if err != nil || string(pt) != r.Plaintext || rec.GDKVersion != r.GDKVersion {
				t.Fatalf("OpenRecord = %q, %v", pt, err)
			}
			if again := ok(t)(rec.Marshal()); string(again) != r.Record {
				t.Fatal("the record is not in canonical form")
			}
			if r.AAD != hex.EncodeToString(format.RecordAAD(rec.Group, rec.ID, rec.GDKVersion)) || rec.Group != v.Group {
				t.Fatal("aad")
			}
			if r.Key != v.Derived[vstr(r.GDKVersion)].Record || r.Key != hex.EncodeToString(ok(t)(format.DK(gdk, format.LabelRecord))) {
				t.Fatal("key")
			}
		})
	}
	if testing.Verbose() {
		t.Logf("%d positive, %d negative, %d records; negative classes: %v", len(v.Positive), len(v.Negative), len(v.Records), classes)
	}
}
