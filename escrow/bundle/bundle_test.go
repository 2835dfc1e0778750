package bundle

import (
	"bytes"
	"crypto/ecdh"
	"errors"
	"fmt"
	"reflect"
	"strconv"
	"strings"
	"testing"

	"github.com/escrowd/escrowd/format/strictjson"
)

func fill(n int, c byte) []byte { return bytes.Repeat([]byte{c}, n) }

func b64(n int, c byte) string { return strictjson.EncodeBase64(fill(n, c)) }

// point is a valid uncompressed P-256 point.
var point = func() []byte {
	k, err := ecdh.P256().NewPrivateKey(fill(32, 7))
	if err != nil {
		panic(err)
	}
	return k.PublicKey().Bytes()
}()

// kindSuites is every kind × suite the format has.
var kindSuites = []struct {
	kind  Kind
	suite string
}{
	{KindEscrow, SuiteECDHP256}, {KindEscrow, SuiteRSAOAEPSHA1}, {KindEscrow, SuiteRSAOAEPSHA256},
	{KindMember, SuiteECDHP256}, {KindMember, SuiteRSAOAEPSHA1}, {KindMember, SuiteRSAOAEPSHA256},
	{KindDevice, SuiteECDHP256}, {KindDevice, SuiteRSAOAEPSHA1}, {KindDevice, SuiteRSAOAEPSHA256},
	{KindUnlock, SuitePBKDF2AESKW}, {KindPassword, SuitePBKDF2AESKW}, {KindPasskeyPRF, SuiteHKDFAESKW},
	{KindChain, SuiteAESKW},
}

// fixture returns a well-formed slot of kind and suite. Its commit, bind
// and wrapped are arbitrary bytes: the codec checks shapes, not keys.
func fixture(kind Kind, suite string) *Slot {
	s := &Slot{Kind: kind, Suite: suite, Group: "family-42", GDKVersion: 2, KeyVersion: 1,
		Commit: fill(32, 0xc0), Wrapped: fill(KWSize, 0xd0), Bind: fill(32, 0xb0)}
	switch kind {
	case KindMember:
		s.ID = "alice"
	case KindDevice:
		s.ID = "phone-1"
	case KindUnlock:
		s.ID, s.KDF, s.Unlock, s.Check = "bob", &KDF{Salt: fill(16, 1), Iterations: MinUnlockIterations}, &Unlock{Epoch: 2, Index: 3}, fill(8, 3)
	case KindPassword:
		s.ID, s.KDF, s.Check = "bob", &KDF{Salt: fill(16, 1), Iterations: MinPasswordIterations}, fill(8, 3)
	case KindPasskeyPRF:
		s.ID, s.Credential, s.KDF, s.Check = "bob", fill(200, 0xcc), &KDF{Salt: fill(32, 2)}, fill(8, 3)
	case KindChain:
		s.GDKVersion, s.KeyVersion = 1, 2
	}
	switch suite {
	case SuiteECDHP256:
		s.EPK = point
	case SuiteRSAOAEPSHA1, SuiteRSAOAEPSHA256:
		s.Wrapped = fill(256, 0xd1)
		if kind == KindEscrow {
			s.Wrapped = fill(384, 0xd1) // RSA-3072
		}
	}
	return s
}

func marshal(t testing.TB, s *Slot) string {
	t.Helper()
	b, err := s.Marshal()
	if err != nil {
		t.Fatalf("Marshal %s/%s: %v", s.Kind, s.Suite, err)
	}
	return string(b)
}

// Canonical texts of the fixtures used by the refusal tables.
func canon(t testing.TB) map[string]string {
	t.Helper()
	m := map[string]string{}
	for _, ks := range kindSuites {
		m[string(ks.kind)+"/"+ks.suite] = marshal(t, fixture(ks.kind, ks.suite))
	}
	return m
}

// edit returns text with the member at path (keys separated by dots) set
// to the JSON value raw, or removed if raw is "". A member that is not
// there is added at the end of its object.
func edit(t testing.TB, text, path, raw string) string {
	t.Helper()
	v, err := strictjson.Parse([]byte(text))
	if err != nil {
		t.Fatalf("edit: %v", err)
	}
	var nv strictjson.Value
	if raw != "" {
		w, err := strictjson.Parse([]byte(`{"x":` + raw + `}`))
		if err != nil {
			t.Fatalf("edit: value %s: %v", raw, err)
		}
		nv = w.Obj[0].Val
	}
	var set func(o *strictjson.Value, keys []string)
	set = func(o *strictjson.Value, keys []string) {
		for i := range o.Obj {
			if o.Obj[i].Key != keys[0] {
				continue
			}
			switch {
			case len(keys) > 1:
				set(&o.Obj[i].Val, keys[1:])
			case raw == "":
				o.Obj = append(o.Obj[:i:i], o.Obj[i+1:]...)
			default:
				o.Obj[i].Val = nv
			}
			return
		}
		if len(keys) > 1 || raw == "" {
			t.Fatalf("edit: no member %s", path)
		}
		o.Obj = append(o.Obj, strictjson.Member{Key: keys[0], Val: nv})
	}
	set(&v, strings.Split(path, "."))
	out, err := strictjson.Encode(v)
	if err != nil {
		t.Fatalf("edit: %v", err)
	}
	return string(out)
}

func q(s string) string { return strconv.Quote(s) }

func qb(n int, c byte) string { return q(b64(n, c)) }

// refusal is one input and the class of its error ("" = accepted).
type refusal struct {
	name, input, class string
}

func check(t *testing.T, op string, parse func([]byte) error, tests []refusal) {
	t.Helper()
	seen := map[string]bool{}
	for _, tt := range tests {
		if seen[tt.name] {
			t.Fatalf("two cases named %q", tt.name)
		}
		seen[tt.name] = true
		t.Run(tt.name, func(t *testing.T) {
			err := parse([]byte(tt.input))
			if tt.class == "" {
				if err != nil {
					t.Fatalf("%s refused a good input: %v\n%s", op, err, tt.input)
				}
				return
			}
			if err == nil {
				t.Fatalf("%s accepted, want class %q:\n%s", op, tt.class, tt.input)
			}
			if !errors.Is(err, ErrMalformed) {
				t.Errorf("%s error does not wrap ErrMalformed: %v", op, err)
			}
			if got := Class(err); got != tt.class {
				t.Fatalf("%s: class %q (%v), want %q", op, got, err, tt.class)
			}
		})
	}
}

func TestParseSlotEveryKindAndSuite(t *testing.T) {
	for _, ks := range kindSuites {
		t.Run(string(ks.kind)+"/"+ks.suite, func(t *testing.T) {
			want := fixture(ks.kind, ks.suite)
			text := marshal(t, want)
			got, err := ParseSlot([]byte(text))
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("ParseSlot(Marshal(s)) != s:\n got %+v\nwant %+v", got, want)
			}
			if PublicKeySuite(ks.suite) != (ks.kind == KindEscrow || ks.kind == KindMember || ks.kind == KindDevice) {
				t.Fatalf("PublicKeySuite(%s) is wrong", ks.suite)
			}
			// The context covers every field but bind.
			c := got.Context()
			if c.Kind != string(ks.kind) || c.Suite != ks.suite || c.Group != got.Group || c.GDKVersion != got.GDKVersion ||
				c.KeyVersion != got.KeyVersion || c.ID != got.ID || !bytes.Equal(c.Credential, got.Credential) ||
				!bytes.Equal(c.EPK, got.EPK) || !bytes.Equal(c.Check, got.Check) || !bytes.Equal(c.Commit, got.Commit) ||
				!bytes.Equal(c.Wrapped, got.Wrapped) {
				t.Fatalf("Context = %+v", c)
			}
			if got.KDF != nil && (!bytes.Equal(c.Salt, got.KDF.Salt) || c.Iterations != got.KDF.Iterations) {
				t.Fatalf("Context kdf = %+v", c)
			}
			if got.Unlock != nil && (c.Epoch != got.Unlock.Epoch || c.Index != got.Unlock.Index) {
				t.Fatalf("Context unlock = %+v", c)
			}
		})
	}
}

// TestCanonicalForm pins the canonical member order and encoding of one
// slot of each shape.
func TestCanonicalForm(t *testing.T) {
	s := fixture(KindUnlock, SuitePBKDF2AESKW)
	want := `{"v":2,"kind":"unlock","suite":"pbkdf2-sha256-aes-kw","group":"family-42","gdk_version":2,"key_version":1,"id":"bob",` +
		`"kdf":{"salt":` + qb(16, 1) + `,"iterations":65536},"unlock":{"epoch":2,"index":3},"check":` + qb(8, 3) +
		`,"commit":` + qb(32, 0xc0) + `,"wrapped":` + qb(40, 0xd0) + `,"bind":` + qb(32, 0xb0) + `}`
	if got := marshal(t, s); got != want {
		t.Fatalf("canonical unlock slot:\n got %s\nwant %s", got, want)
	}
	p := fixture(KindPasskeyPRF, SuiteHKDFAESKW)
	want = `{"v":2,"kind":"passkey-prf","suite":"hkdf-sha256-aes-kw","group":"family-42","gdk_version":2,"key_version":1,"id":"bob",` +
		`"credential":` + qb(200, 0xcc) + `,"kdf":{"salt":` + qb(32, 2) + `},"check":` + qb(8, 3) +
		`,"commit":` + qb(32, 0xc0) + `,"wrapped":` + qb(40, 0xd0) + `,"bind":` + qb(32, 0xb0) + `}`
	if got := marshal(t, p); got != want {
		t.Fatalf("canonical passkey-prf slot:\n got %s\nwant %s", got, want)
	}
	e := fixture(KindDevice, SuiteECDHP256)
	want = `{"v":2,"kind":"device","suite":"ecdh-p256","group":"family-42","gdk_version":2,"key_version":1,"id":"phone-1",` +
		`"epk":` + q(strictjson.EncodeBase64(point)) + `,"commit":` + qb(32, 0xc0) + `,"wrapped":` + qb(40, 0xd0) + `,"bind":` + qb(32, 0xb0) + `}`
	if got := marshal(t, e); got != want {
		t.Fatalf("canonical device slot:\n got %s\nwant %s", got, want)
	}
}

// TestRoundTrip: Marshal → Parse gives equal values; Marshal's output is
// canonical (a canonical input comes back byte for byte) and stable; any
// other writing of the same slot (whitespace, member order) parses to the
// same value and marshals to the canonical text.
func TestRoundTrip(t *testing.T) {
	for _, ks := range kindSuites {
		t.Run(string(ks.kind)+"/"+ks.suite, func(t *testing.T) {
			text := marshal(t, fixture(ks.kind, ks.suite))
			s, err := ParseSlot([]byte(text))
			if err != nil {
				t.Fatal(err)
			}
			if again := marshal(t, s); again != text {
				t.Fatalf("Marshal is not stable:\n%s\n%s", text, again)
			}
			// Reverse the member order and add whitespace everywhere.
			v, _ := strictjson.Parse([]byte(text))
			for i, j := 0, len(v.Obj)-1; i < j; i, j = i+1, j-1 {
				v.Obj[i], v.Obj[j] = v.Obj[j], v.Obj[i]
			}
			rev, _ := strictjson.Encode(v)
			pretty := strings.NewReplacer("{", "{\n\t", ",", " ,\r\n ", ":", " : ", "}", "\n}").Replace(string(rev))
			s2, err := ParseSlot([]byte(pretty))
			if err != nil {
				t.Fatalf("%v\n%s", err, pretty)
			}
			if !reflect.DeepEqual(s, s2) {
				t.Fatal("a reordered, spaced writing parses to another slot")
			}
			if got := marshal(t, s2); got != text {
				t.Fatalf("Marshal of a reordered writing is not canonical:\n%s", got)
			}
		})
	}
	// A bundle of every shape, and its canonical text.
	b := &Bundle{Group: "family-42"}
	for _, ks := range kindSuites {
		b.Slots = append(b.Slots, *fixture(ks.kind, ks.suite))
	}
	out, err := b.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	var parts []string
	for i := range b.Slots {
		parts = append(parts, marshal(t, &b.Slots[i]))
	}
	if want := `{"v":2,"group":"family-42","slots":[` + strings.Join(parts, ",") + `]}`; string(out) != want {
		t.Fatalf("bundle text:\n%s\nwant\n%s", out, want)
	}
	back, err := Parse(out)
	if err != nil || !reflect.DeepEqual(back, b) {
		t.Fatalf("Parse(Marshal(b)): %v", err)
	}
	if again, _ := back.Marshal(); !bytes.Equal(again, out) {
		t.Fatal("bundle Marshal is not stable")
	}
}

// TestMarshalRefuses: Marshal (and Validate) apply the decoder's rules, so
// nothing escrowd writes is refused by a reader.
func TestMarshalRefuses(t *testing.T) {
	mod := func(kind Kind, suite string, f func(*Slot)) *Slot {
		s := fixture(kind, suite)
		f(s)
		return s
	}
	for _, tt := range []struct {
		name  string
		s     *Slot
		class string
	}{
		{"escrow with an id", mod(KindEscrow, SuiteRSAOAEPSHA1, func(s *Slot) { s.ID = "x" }), "unknown-key"},
		{"member without an id", mod(KindMember, SuiteRSAOAEPSHA1, func(s *Slot) { s.ID = "" }), "missing-key"},
		{"password without kdf", mod(KindPassword, SuitePBKDF2AESKW, func(s *Slot) { s.KDF = nil }), "missing-key"},
		{"password without iterations", mod(KindPassword, SuitePBKDF2AESKW, func(s *Slot) { s.KDF.Iterations = 0 }), "missing-key"},
		{"passkey with iterations", mod(KindPasskeyPRF, SuiteHKDFAESKW, func(s *Slot) { s.KDF.Iterations = 1 }), "unknown-key"},
		{"empty credential", mod(KindPasskeyPRF, SuiteHKDFAESKW, func(s *Slot) { s.Credential = []byte{} }), "range"},
		{"chain of the wrong version", mod(KindChain, SuiteAESKW, func(s *Slot) { s.KeyVersion = 3 }), "mismatch"},
		{"id with a space", mod(KindMember, SuiteECDHP256, func(s *Slot) { s.ID = "a b" }), "id"},
		{"non-ASCII group", mod(KindMember, SuiteECDHP256, func(s *Slot) { s.Group = "gr\u00fcppe" }), "syntax"},
		{"unknown kind", mod(KindMember, SuiteECDHP256, func(s *Slot) { s.Kind = "admin" }), "kind"},
		{"epk off the curve", mod(KindMember, SuiteECDHP256, func(s *Slot) { s.EPK = fill(65, 4) }), "point"},
		{"short bind", mod(KindMember, SuiteECDHP256, func(s *Slot) { s.Bind = s.Bind[:31] }), "range"},
	} {
		if _, err := tt.s.Marshal(); Class(err) != tt.class {
			t.Errorf("%s: Marshal: %v, want class %q", tt.name, err, tt.class)
		}
		if err := tt.s.Validate(); Class(err) != tt.class {
			t.Errorf("%s: Validate: %v, want class %q", tt.name, err, tt.class)
		}
	}
	b := &Bundle{Group: "family-42", Slots: []Slot{*fixture(KindEscrow, SuiteECDHP256), *fixture(KindMember, SuiteECDHP256)}}
	b.Slots[1].Group = "family-7"
	if _, err := b.Marshal(); Class(err) != "mismatch" {
		t.Errorf("Marshal of a bundle with a slot of another group: %v", err)
	}
	if _, err := (&Bundle{Group: "g"}).Marshal(); Class(err) != "range" {
		t.Errorf("Marshal of a bundle without slots: %v", err)
	}
}

// slotRefusals is every way a slot is refused, with its class, and the
// accepted side of every bound.
func slotRefusals(t testing.TB) []refusal {
	c := canon(t)
	var (
		esc  = c["escrow/rsa-oaep-sha1"]
		escE = c["escrow/ecdh-p256"]
		mem  = c["member/rsa-oaep-sha256"]
		memE = c["member/ecdh-p256"]
		dev  = c["device/rsa-oaep-sha1"]
		unl  = c["unlock/pbkdf2-sha256-aes-kw"]
		pw   = c["password/pbkdf2-sha256-aes-kw"]
		pk   = c["passkey-prf/hkdf-sha256-aes-kw"]
		ch   = c["chain/aes-kw"]
	)
	e := func(text, path, raw string) string { return edit(t, text, path, raw) }
	r := []refusal{
		// size: checked on the bytes before anything else.
		{"size: 8192 bytes", esc + strings.Repeat(" ", MaxSlotSize-len(esc)), ""},
		{"size: 8193 bytes", esc + strings.Repeat(" ", MaxSlotSize+1-len(esc)), "size"},
		{"size: beats syntax", strings.Repeat("x", MaxSlotSize+1), "size"},

		// syntax: the JSON profile.
		{"syntax: empty", "", "syntax"},
		{"syntax: not JSON", "escrow", "syntax"},
		{"syntax: array", "[" + esc + "]", "syntax"},
		{"syntax: trailing data", esc + "{}", "syntax"},
		{"syntax: trailing comma", strings.TrimSuffix(esc, "}") + ",}", "syntax"},
		{"syntax: byte order mark", "\ufeff" + esc, "syntax"},
		{"syntax: non-ASCII in a string", strings.Replace(mem, `"alice"`, `"al`+"\u00ef"+`ce"`, 1), "syntax"},
		{"syntax: raw DEL in an id", strings.Replace(mem, `"alice"`, "\"al\x7fce\"", 1), "syntax"},
		{"syntax: tab in an id", strings.Replace(mem, `"alice"`, "\"al\tce\"", 1), "syntax"},
		{"syntax: \\u escape", strings.Replace(mem, `"alice"`, `"\u0061lice"`, 1), "syntax"},
		{"syntax: \\/ escape", strings.Replace(mem, `"rsa-oaep-sha256"`, `"rsa-oaep\/sha256"`, 1), "syntax"},
		{"syntax: null", strings.Replace(mem, `"alice"`, `null`, 1), "syntax"},
		{"syntax: true", strings.Replace(mem, `"alice"`, `true`, 1), "syntax"},
		{"syntax: negative", strings.Replace(esc, `"key_version":1`, `"key_version":-1`, 1), "syntax"},
		{"syntax: fraction", strings.Replace(esc, `"key_version":1`, `"key_version":1.0`, 1), "syntax"},
		{"syntax: exponent", strings.Replace(esc, `"key_version":1`, `"key_version":1e0`, 1), "syntax"},
		{"syntax: leading zero", strings.Replace(esc, `"key_version":1`, `"key_version":01`, 1), "syntax"},
		{"syntax: single quotes", strings.Replace(esc, `"v":2`, `'v':2`, 1), "syntax"},
		{"syntax: unterminated", esc[:len(esc)-1], "syntax"},
		{"syntax: beats duplicate-key", strings.Replace(esc, `"v":2`, `"v":2,"v":2`, 1) + "x", "syntax"},
		{"syntax: nesting deeper than 8", strings.Replace(esc, `"v":2`, `"v":2,"x":[[[[[[[[1]]]]]]]]`, 1), "syntax"},

		// duplicate-key: at any depth, even with the same value.
		{"duplicate-key: kind", strings.Replace(esc, `"v":2`, `"v":2,"kind":"escrow"`, 1), "duplicate-key"},
		{"duplicate-key: v", strings.Replace(esc, `"v":2`, `"v":2,"v":2`, 1), "duplicate-key"},
		{"duplicate-key: kdf.iterations", strings.Replace(pw, `"iterations":600000`, `"iterations":600000,"iterations":600000`, 1), "duplicate-key"},
		{"duplicate-key: unlock.index", strings.Replace(unl, `"index":3`, `"index":3,"index":4`, 1), "duplicate-key"},
		{"duplicate-key: beats unknown-key", strings.Replace(esc, `"v":2`, `"v":2,"v":2,"x":1`, 1), "duplicate-key"},
		{"range: a u32 overflow beats duplicate-key", strings.Replace(esc, `"v":2`, `"v":2,"v":2,"x":4294967296`, 1), "range"},

		// unknown-key: the allow-list of the kind and suite, byte for byte.
		{"unknown-key: extra", e(esc, "extra", "1"), "unknown-key"},
		{"unknown-key: upper-case KIND", strings.Replace(esc, `"suite"`, `"suite":"rsa-oaep-sha1","KIND"`, 1), "unknown-key"},
		{"unknown-key: mixed-case kInd", e(esc, "kInd", `"escrow"`), "unknown-key"},
		{"unknown-key: epk on an rsa slot", e(esc, "epk", q(strictjson.EncodeBase64(point))), "unknown-key"},
		{"unknown-key: id on an escrow slot", e(escE, "id", `"x"`), "unknown-key"},
		{"unknown-key: id on a chain slot", e(ch, "id", `"x"`), "unknown-key"},
		{"unknown-key: check on a member slot", e(mem, "check", qb(8, 3)), "unknown-key"},
		{"unknown-key: kdf on a device slot", e(dev, "kdf", `{"salt":`+qb(16, 1)+`}`), "unknown-key"},
		{"unknown-key: unlock on a password slot", e(pw, "unlock", `{"epoch":1,"index":0}`), "unknown-key"},
		{"unknown-key: credential on a password slot", e(pw, "credential", qb(16, 1)), "unknown-key"},
		{"unknown-key: epk on a chain slot", e(ch, "epk", q(strictjson.EncodeBase64(point))), "unknown-key"},
		{"unknown-key: iterations on a passkey-prf slot", e(pk, "kdf.iterations", "1"), "unknown-key"},
		{"unknown-key: in kdf", e(pw, "kdf.pepper", qb(16, 1)), "unknown-key"},
		{"unknown-key: in unlock", e(unl, "unlock.counter", "1"), "unknown-key"},
		{"unknown-key: beats missing-key", e(e(esc, "bind", ""), "x", "1"), "unknown-key"},
		{"unknown-key: beats range", e(e(esc, "gdk_version", "0"), "x", "1"), "unknown-key"},

		// missing-key.
		{"missing-key: empty object", "{}", "missing-key"},
		{"missing-key: v", e(esc, "v", ""), "missing-key"},
		{"missing-key: v beats an unknown kind", e(e(esc, "v", ""), "kind", `"admin"`), "missing-key"},
		{"missing-key: kind", e(esc, "kind", ""), "missing-key"},
		{"missing-key: suite", e(esc, "suite", ""), "missing-key"},
		{"missing-key: group", e(esc, "group", ""), "missing-key"},
		{"missing-key: gdk_version", e(esc, "gdk_version", ""), "missing-key"},
		{"missing-key: key_version", e(esc, "key_version", ""), "missing-key"},
		{"missing-key: id", e(mem, "id", ""), "missing-key"},
		{"missing-key: credential", e(pk, "credential", ""), "missing-key"},
		{"missing-key: epk", e(memE, "epk", ""), "missing-key"},
		{"missing-key: kdf", e(pw, "kdf", ""), "missing-key"},
		{"missing-key: kdf.salt", e(pk, "kdf.salt", ""), "missing-key"},
		{"missing-key: kdf.iterations", e(unl, "kdf.iterations", ""), "missing-key"},
		{"missing-key: unlock", e(unl, "unlock", ""), "missing-key"},
		{"missing-key: unlock.epoch", e(unl, "unlock.epoch", ""), "missing-key"},
		{"missing-key: unlock.index", e(unl, "unlock.index", ""), "missing-key"},
		{"missing-key: check", e(pw, "check", ""), "missing-key"},
		{"missing-key: commit", e(esc, "commit", ""), "missing-key"},
		{"missing-key: wrapped", e(esc, "wrapped", ""), "missing-key"},
		{"missing-key: bind", e(esc, "bind", ""), "missing-key"},

		// type.
		{"type: v is a string", e(esc, "v", `"2"`), "type"},
		{"type: v is an object", e(esc, "v", `{}`), "type"},
		{"type: kind is an integer", e(esc, "kind", `1`), "type"},
		{"type: suite is an array", e(esc, "suite", `[]`), "type"},
		{"type: group is an integer", e(esc, "group", `42`), "type"},
		{"type: gdk_version is a string", e(esc, "gdk_version", `"1"`), "type"},
		{"type: key_version is an array", e(esc, "key_version", `[1]`), "type"},
		{"type: id is an integer", e(mem, "id", `5`), "type"},
		{"type: kdf is a string", e(pw, "kdf", `"x"`), "type"},
		{"type: kdf.salt is an integer", e(pw, "kdf.salt", `16`), "type"},
		{"type: kdf.iterations is a string", e(pw, "kdf.iterations", `"600000"`), "type"},
		{"type: unlock is an array", e(unl, "unlock", `[2,3]`), "type"},
		{"type: unlock.index is a string", e(unl, "unlock.index", `"3"`), "type"},
		{"type: commit is an object", e(esc, "commit", `{}`), "type"},
		{"type: wrapped is an integer", e(esc, "wrapped", `0`), "type"},

		// range: every bound, both sides.
		{"range: gdk_version 0", e(esc, "gdk_version", "0"), "range"},
		{"range: gdk_version 1", e(esc, "gdk_version", "1"), ""},
		{"range: gdk_version 2^31-1", e(esc, "gdk_version", "2147483647"), ""},
		{"range: gdk_version 2^31", e(esc, "gdk_version", "2147483648"), "range"},
		{"range: gdk_version 2^32", strings.Replace(esc, `"gdk_version":2`, `"gdk_version":4294967296`, 1), "range"},
		{"range: chain gdk_version 2^31-2", e(e(ch, "gdk_version", "2147483646"), "key_version", "2147483647"), ""},
		{"range: chain gdk_version 2^31-1", e(e(ch, "gdk_version", "2147483647"), "key_version", "2147483647"), "range"},
		{"range: key_version 0", e(esc, "key_version", "0"), "range"},
		{"range: key_version 2^31-1", e(esc, "key_version", "2147483647"), ""},
		{"range: key_version 2^31", e(esc, "key_version", "2147483648"), "range"},
		{"range: epoch 0", e(unl, "unlock.epoch", "0"), "range"},
		{"range: epoch 1", e(unl, "unlock.epoch", "1"), ""},
		{"range: epoch 2^31-1", e(unl, "unlock.epoch", "2147483647"), ""},
		{"range: epoch 2^31", e(unl, "unlock.epoch", "2147483648"), "range"},
		{"range: index 0", e(unl, "unlock.index", "0"), ""},
		{"range: index 31", e(unl, "unlock.index", "31"), ""},
		{"range: index 32", e(unl, "unlock.index", "32"), "range"},
		{"range: unlock iterations 65535", e(unl, "kdf.iterations", "65535"), "range"},
		{"range: unlock iterations 1", e(unl, "kdf.iterations", "1"), "range"},
		{"range: unlock iterations 0", e(unl, "kdf.iterations", "0"), "range"},
		{"range: unlock iterations 10000000", e(unl, "kdf.iterations", "10000000"), ""},
		{"range: unlock iterations 10000001", e(unl, "kdf.iterations", "10000001"), "range"},
		{"range: password iterations 599999", e(pw, "kdf.iterations", "599999"), "range"},
		{"range: password iterations at the unlock floor", e(pw, "kdf.iterations", "65536"), "range"},
		{"range: password iterations 10000000", e(pw, "kdf.iterations", "10000000"), ""},
		{"range: password iterations 10000001", e(pw, "kdf.iterations", "10000001"), "range"},
		{"range: id of 128 bytes", e(mem, "id", q(strings.Repeat("a", 128))), ""},
		{"range: id of 129 bytes", e(mem, "id", q(strings.Repeat("a", 129))), "range"},
		{"range: empty id", e(mem, "id", `""`), "range"},
		{"range: group of 128 bytes", e(esc, "group", q(strings.Repeat("g", 128))), ""},
		{"range: group of 129 bytes", e(esc, "group", q(strings.Repeat("g", 129))), "range"},
		{"range: empty group", e(esc, "group", `""`), "range"},
		{"range: credential of 1 byte", e(pk, "credential", qb(1, 1)), ""},
		{"range: credential of 1023 bytes", e(pk, "credential", qb(1023, 1)), ""},
		{"range: credential of 1024 bytes", e(pk, "credential", qb(1024, 1)), "range"},
		{"range: empty credential", e(pk, "credential", `""`), "range"},
		{"range: unlock salt of 15 bytes", e(unl, "kdf.salt", qb(15, 1)), "range"},
		{"range: unlock salt of 17 bytes", e(unl, "kdf.salt", qb(17, 1)), "range"},
		{"range: password salt of 15 bytes", e(pw, "kdf.salt", qb(15, 1)), "range"},
		{"range: password salt of 17 bytes", e(pw, "kdf.salt", qb(17, 1)), "range"},
		{"range: password salt of 32 bytes", e(pw, "kdf.salt", qb(32, 1)), "range"},
		{"range: passkey salt of 16 bytes", e(pk, "kdf.salt", qb(16, 1)), "range"},
		{"range: passkey salt of 31 bytes", e(pk, "kdf.salt", qb(31, 1)), "range"},
		{"range: passkey salt of 33 bytes", e(pk, "kdf.salt", qb(33, 1)), "range"},
		{"range: check of 7 bytes", e(pw, "check", qb(7, 3)), "range"},
		{"range: check of 9 bytes", e(unl, "check", qb(9, 3)), "range"},
		{"range: commit of 31 bytes", e(esc, "commit", qb(31, 1)), "range"},
		{"range: commit of 33 bytes", e(esc, "commit", qb(33, 1)), "range"},
		{"range: empty commit", e(esc, "commit", `""`), "range"},
		{"range: bind of 31 bytes", e(esc, "bind", qb(31, 1)), "range"},
		{"range: bind of 33 bytes", e(esc, "bind", qb(33, 1)), "range"},
		{"range: epk of 64 bytes", e(memE, "epk", q(strictjson.EncodeBase64(point[:64]))), "range"},
		{"range: epk of 66 bytes", e(memE, "epk", q(strictjson.EncodeBase64(append(bytes.Clone(point), 0)))), "range"},
		{"range: AES-KW wrapped of 39 bytes", e(memE, "wrapped", qb(39, 1)), "range"},
		{"range: AES-KW wrapped of 41 bytes", e(unl, "wrapped", qb(41, 1)), "range"},
		{"range: AES-KW wrapped of 48 bytes", e(ch, "wrapped", qb(48, 1)), "range"},
		{"range: chain wrapped of 256 bytes", e(ch, "wrapped", qb(256, 1)), "range"},
		{"range: RSA wrapped of 40 bytes", e(esc, "wrapped", qb(40, 1)), "range"},
		{"range: RSA wrapped of 255 bytes", e(esc, "wrapped", qb(255, 1)), "range"},
		{"range: RSA wrapped of 256 bytes", e(esc, "wrapped", qb(256, 1)), ""},
		{"range: RSA wrapped of 512 bytes", e(mem, "wrapped", qb(512, 1)), ""},
		{"range: RSA wrapped of 513 bytes", e(mem, "wrapped", qb(513, 1)), "range"},
		{"range: v 2^32", strings.Replace(esc, `"v":2`, `"v":4294967296`, 1), "range"},

		// base64: canonical padded standard base64 only.
		{"base64: URL alphabet", e(esc, "commit", q(strings.Repeat("-_", 22))), "base64"},
		{"base64: no padding", e(esc, "commit", q(strings.TrimRight(b64(32, 0xc0), "="))), "base64"},
		{"base64: non-zero unused bits", e(pw, "check", `"AAAAAAAAAAB="`), "base64"},
		{"base64: a space inside", e(esc, "bind", q(" "+b64(32, 1)[1:])), "base64"},
		{"base64: padding only", e(esc, "bind", `"===="`), "base64"},
		{"base64: padding inside", e(memE, "epk", q("AA=="+strictjson.EncodeBase64(point)[4:])), "base64"},
		{"base64: beats range (the length is read after decoding)", e(esc, "commit", `"AB"`), "base64"},

		// version: read first.
		{"version: 1", e(esc, "v", "1"), "version"},
		{"version: 3", e(esc, "v", "3"), "version"},
		{"version: 0", e(esc, "v", "0"), "version"},
		{"version: beats kind", e(e(esc, "v", "1"), "kind", `"admin"`), "version"},
		{"version: beats unknown-key", e(e(esc, "v", "1"), "x", "1"), "version"},

		// kind: read second.
		{"kind: unknown", e(esc, "kind", `"admin"`), "kind"},
		{"kind: upper case", e(esc, "kind", `"Escrow"`), "kind"},
		{"kind: empty", e(esc, "kind", `""`), "kind"},
		{"kind: trailing space", e(esc, "kind", `"escrow "`), "kind"},
		{"kind: beats suite", e(e(esc, "kind", `"admin"`), "suite", `"x"`), "kind"},

		// suite: read third, against the kind.
		{"suite: unknown", e(esc, "suite", `"rsa-pkcs1"`), "suite"},
		{"suite: aes-kw for escrow", e(esc, "suite", `"aes-kw"`), "suite"},
		{"suite: rsa for chain", e(ch, "suite", `"rsa-oaep-sha1"`), "suite"},
		{"suite: ecdh for unlock", e(unl, "suite", `"ecdh-p256"`), "suite"},
		{"suite: hkdf for password", e(pw, "suite", `"hkdf-sha256-aes-kw"`), "suite"},
		{"suite: pbkdf2 for passkey-prf", e(pk, "suite", `"pbkdf2-sha256-aes-kw"`), "suite"},
		{"suite: pbkdf2 for device", e(dev, "suite", `"pbkdf2-sha256-aes-kw"`), "suite"},
		{"suite: beats unknown-key", e(e(esc, "suite", `"x"`), "x", "1"), "suite"},

		// id: printable ASCII without spaces (a space is the one byte the
		// JSON profile allows in a string that an id refuses).
		{"id: space inside", e(mem, "id", `"a b"`), "id"},
		{"id: only a space", e(mem, "id", `" "`), "id"},
		{"id: group with a space", e(esc, "group", `"family 42"`), "id"},
		{"id: quote and backslash are fine", e(mem, "id", `"a\"b\\c"`), ""},
		{"id: group is read before gdk_version", e(e(esc, "group", `"a b"`), "gdk_version", "0"), "id"},

		// point: epk must be on P-256.
		{"point: all 0x04", e(memE, "epk", qb(65, 4)), "point"},
		{"point: (0,0)", e(memE, "epk", q(strictjson.EncodeBase64(append([]byte{4}, make([]byte, 64)...)))), "point"},
		{"point: y flipped", e(memE, "epk", q(strictjson.EncodeBase64(append(bytes.Clone(point[:64]), point[64]^1)))), "point"},
		{"point: compressed tag", e(escE, "epk", q(strictjson.EncodeBase64(append([]byte{2}, point[1:]...)))), "point"},
		{"point: beats a later field", e(e(memE, "epk", qb(65, 4)), "commit", `"!!!!"`), "point"},

		// mismatch: a chain slot's versions.
		{"mismatch: chain key_version = gdk_version", e(ch, "key_version", "1"), "mismatch"},
		{"mismatch: chain key_version = gdk_version + 2", e(ch, "key_version", "3"), "mismatch"},
		{"mismatch: chain key_version = gdk_version - 1", e(e(ch, "gdk_version", "5"), "key_version", "4"), "mismatch"},
		{"mismatch: beats a later field", e(e(ch, "key_version", "1"), "commit", `"!!!!"`), "mismatch"},

		// Fields are read in canonical order: the first bad one is reported.
		{"order: key_version before commit", e(e(esc, "key_version", "0"), "commit", `"!!!!"`), "range"},
		{"order: commit before wrapped", e(e(esc, "commit", `"!!!!"`), "wrapped", qb(1, 1)), "base64"},
		{"order: wrapped before bind", e(e(esc, "wrapped", qb(1, 1)), "bind", `"!!!!"`), "range"},
		{"order: kdf before check", e(e(pw, "kdf.iterations", "1"), "check", `"!!!!"`), "range"},
		{"order: id before credential", e(e(pk, "id", `"a b"`), "credential", `""`), "id"},
	}
	return r
}

func TestParseSlotRefusals(t *testing.T) {
	check(t, "ParseSlot", func(b []byte) error { _, err := ParseSlot(b); return err }, slotRefusals(t))
}

// TestRefusalClasses: the tables cover every class the codec has.
func TestRefusalClasses(t *testing.T) {
	got := map[string]bool{}
	for _, r := range slotRefusals(t) {
		got[r.class] = true
	}
	for _, r := range bundleRefusals(t) {
		got[r.class] = true
	}
	for _, r := range recordRefusals(t) {
		got[r.class] = true
	}
	for _, c := range []string{"size", "syntax", "duplicate-key", "unknown-key", "missing-key", "type", "range",
		"base64", "version", "kind", "suite", "id", "point", "mismatch"} {
		if !got[c] {
			t.Errorf("no refusal of class %q", c)
		}
	}
}

func bundleOf(group string, slots ...string) string {
	return `{"v":2,"group":` + q(group) + `,"slots":[` + strings.Join(slots, ",") + `]}`
}

func bundleRefusals(t testing.TB) []refusal {
	c := canon(t)
	esc, mem, ch := c["escrow/rsa-oaep-sha1"], c["member/ecdh-p256"], c["chain/aes-kw"]
	all := make([]string, 0, len(c))
	for _, ks := range kindSuites {
		all = append(all, c[string(ks.kind)+"/"+ks.suite])
	}
	e := func(text, path, raw string) string { return edit(t, text, path, raw) }
	many := func(n int) string { return bundleOf("family-42", slices(esc, n)...) }
	ok := bundleOf("family-42", esc)
	return []refusal{
		{"every kind and suite", bundleOf("family-42", all...), ""},
		{"one slot", ok, ""},
		{"256 slots", many(256), ""},
		{"same commitment for one version", bundleOf("family-42", esc, mem), ""},
		{"two versions, two commitments", bundleOf("family-42", esc, e(e(esc, "gdk_version", "3"), "commit", qb(32, 0xee))), ""},
		{"size: 1 MiB + 1", ok + strings.Repeat(" ", MaxBundleSize+1-len(ok)), "size"},
		{"size: 1 MiB", ok + strings.Repeat(" ", MaxBundleSize-len(ok)), ""},
		{"syntax: slots not closed", strings.TrimSuffix(ok, "]}") + "}", "syntax"},
		{"syntax: trailing comma in slots", strings.TrimSuffix(ok, "]}") + ",]}", "syntax"},
		{"duplicate-key: group", strings.Replace(ok, `"v":2`, `"v":2,"group":"family-42"`, 1), "duplicate-key"},
		{"duplicate-key: inside a slot", bundleOf("family-42", strings.Replace(esc, `"v":2`, `"v":2,"v":2`, 1)), "duplicate-key"},
		{"unknown-key: bundle", e(ok, "comment", `"x"`), "unknown-key"},
		{"unknown-key: a slot key on the bundle", e(ok, "kind", `"escrow"`), "unknown-key"},
		{"unknown-key: inside a slot", bundleOf("family-42", e(esc, "x", "1")), "unknown-key"},
		{"missing-key: v", e(ok, "v", ""), "missing-key"},
		{"missing-key: group", e(ok, "group", ""), "missing-key"},
		{"missing-key: slots", e(ok, "slots", ""), "missing-key"},
		{"missing-key: inside a slot", bundleOf("family-42", esc, e(mem, "bind", "")), "missing-key"},
		{"type: slots is an object", e(ok, "slots", `{}`), "type"},
		{"type: a slot is a string", bundleOf("family-42", esc, `"slot"`), "type"},
		{"type: a slot is an array", bundleOf("family-42", `[]`), "type"},
		{"type: group is an array", e(ok, "group", `["family-42"]`), "type"},
		{"range: no slots", bundleOf("family-42"), "range"},
		{"range: 257 slots", many(257), "range"},
		{"range: group of 129 bytes", e(ok, "group", q(strings.Repeat("g", 129))), "range"},
		{"range: inside a slot", bundleOf("family-42", e(esc, "key_version", "0")), "range"},
		{"base64: inside a slot", bundleOf("family-42", e(esc, "bind", `"****"`)), "base64"},
		{"version: bundle v 1", e(ok, "v", "1"), "version"},
		{"version: bundle v 3", e(ok, "v", "3"), "version"},
		{"version: slot v 1", bundleOf("family-42", esc, e(mem, "v", "1")), "version"},
		{"kind: inside a slot", bundleOf("family-42", e(esc, "kind", `"admin"`)), "kind"},
		{"suite: inside a slot", bundleOf("family-42", e(esc, "suite", `"aes-kw"`)), "suite"},
		{"id: bundle group", bundleOf("family 42", edit(t, esc, "group", `"family 42"`)), "id"},
		{"point: inside a slot", bundleOf("family-42", e(mem, "epk", qb(65, 4))), "point"},
		{"mismatch: a chain slot inside", bundleOf("family-42", e(ch, "key_version", "5")), "mismatch"},
		{"mismatch: a slot of another group", bundleOf("family-42", esc, e(mem, "group", `"family-7"`)), "mismatch"},
		{"mismatch: the only slot of another group", bundleOf("family-7", esc), "mismatch"},
		{"mismatch: two commitments for one gdk_version", bundleOf("family-42", esc, e(mem, "commit", qb(32, 0xee))), "mismatch"},
		{"mismatch: two commitments for the chained version", bundleOf("family-42", ch, e(e(esc, "gdk_version", "1"), "commit", qb(32, 0xee))), "mismatch"},
		{"order: the first bad slot is reported", bundleOf("family-42", e(esc, "v", "1"), e(mem, "kind", `"x"`)), "version"},
	}
}

func slices(s string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = s
	}
	return out
}

func TestParseBundleRefusals(t *testing.T) {
	check(t, "Parse", func(b []byte) error { _, err := Parse(b); return err }, bundleRefusals(t))
}

// TestParseBundleSlotIndex: a slot's error says which slot it is.
func TestParseBundleSlotIndex(t *testing.T) {
	c := canon(t)
	_, err := Parse([]byte(bundleOf("family-42", c["escrow/rsa-oaep-sha1"], edit(t, c["member/ecdh-p256"], "bind", ""))))
	if err == nil || !strings.Contains(err.Error(), "slot 1") || Class(err) != "missing-key" {
		t.Fatalf("Parse: %v", err)
	}
}

func TestValidateID(t *testing.T) {
	for _, id := range []string{"a", "group-1", "user@example.com", "spiffe://x/y", `a"b\c`, "~!", strings.Repeat("x", 128)} {
		if err := ValidateID(id); err != nil {
			t.Errorf("ValidateID(%q) = %v", id, err)
		}
	}
	for _, id := range []string{"", " ", "a b", "tab\t", "nul\x00", "del\x7f", "\u00e9", "\xff", strings.Repeat("x", 129), "line\n"} {
		if err := ValidateID(id); err == nil {
			t.Errorf("ValidateID(%q) accepted", id)
		}
	}
}

func TestClass(t *testing.T) {
	if Class(nil) != "" || Class(errors.New("x")) != "" {
		t.Fatal("Class of a foreign error is not empty")
	}
	_, err := ParseSlot([]byte(`{"v":1}`))
	if Class(fmt.Errorf("wrapped: %w", err)) != "version" {
		t.Fatalf("Class does not see through wrapping: %v", err)
	}
	// Messages name fields, never the content of a value (which may be a
	// secret): an error about a bad base64 salt does not echo it.
	secret := "c2VjcmV0LXNhbHQtdmFsdWU*"
	_, err = ParseSlot([]byte(edit(t, canon(t)["password/pbkdf2-sha256-aes-kw"], "kdf.salt", q(secret))))
	if Class(err) != "base64" || strings.Contains(err.Error(), secret) || strings.Contains(err.Error(), secret[:8]) {
		t.Fatalf("error %q", err)
	}
}
