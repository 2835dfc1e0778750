package unlockcode

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"strings"
	"testing"
	"unicode/utf8"
)

// vectors is testdata/vectors.json, written by testdata/gen_vectors.py from
// the specification; clients/web (@escrowd/device) runs the same file.
type vectors struct {
	Separators []string `json:"separators"`
	Codes      []struct {
		Index      uint32 `json:"index"`
		Material   string `json:"material"`
		Code       string `json:"code"`
		Typed      string `json:"typed"`
		Secret     string `json:"secret"`
		Salt       string `json:"salt"`
		Iterations int    `json:"iterations"`
		Key        string `json:"key"`
		HMAC       *struct {
			UnlockKey string `json:"unlock_key"`
			Group     string `json:"group"`
			User      string `json:"user"`
			Epoch     uint32 `json:"epoch"`
			Nonce     string `json:"nonce"`
			Message   string `json:"message"`
		} `json:"hmac"`
	} `json:"codes"`
	Typings []struct {
		Typed string `json:"typed"`
		Code  string `json:"code"`
		Why   string `json:"why"`
	} `json:"typings"`
	Invalid []struct {
		Typed string `json:"typed"`
		Error string `json:"error"`
		Why   string `json:"why"`
	} `json:"invalid"`
}

func loadVectors(t *testing.T) vectors {
	t.Helper()
	raw, err := os.ReadFile("testdata/vectors.json")
	if err != nil {
		t.Fatal(err)
	}
	var v vectors
	if err := json.Unmarshal(raw, &v); err != nil {
		t.Fatal(err)
	}
	if len(v.Codes) == 0 || len(v.Typings) == 0 || len(v.Invalid) == 0 {
		t.Fatal("missing vectors")
	}
	return v
}

// codeMessage is the v2 HMAC input of docs/FORMAT.md, nonce being the
// epoch's. It lives here only to check the vectors; the daemon builds it in
// the format package.
func codeMessage(group, user string, epoch, index uint32, nonce []byte) []byte {
	b := append([]byte("escrowd unlock code v2"), 0)
	b = binary.BigEndian.AppendUint16(b, uint16(len(group)))
	b = append(b, group...)
	b = binary.BigEndian.AppendUint16(b, uint16(len(user)))
	b = append(b, user...)
	b = binary.BigEndian.AppendUint32(b, epoch)
	b = binary.BigEndian.AppendUint32(b, index)
	b = append(b, byte(len(nonce)))
	return append(b, nonce...)
}

// wantErr maps a vector's error name to the sentinel.
func wantErr(name string) error {
	switch name {
	case "not-a-code":
		return ErrFormat
	case "mistyped":
		return ErrCheck
	}
	return fmt.Errorf("unknown vector error %q", name)
}

func TestVectors(t *testing.T) {
	vs := loadVectors(t)
	for _, v := range vs.Codes {
		t.Run(v.Code, func(t *testing.T) {
			m, _ := hex.DecodeString(v.Material)
			if h := v.HMAC; h != nil {
				nonce, err := hex.DecodeString(h.Nonce)
				if err != nil || len(nonce) != 16 {
					t.Fatalf("nonce %q", h.Nonce)
				}
				msg := codeMessage(h.Group, h.User, h.Epoch, v.Index, nonce)
				if hex.EncodeToString(msg) != h.Message {
					t.Fatalf("message = %x, want %s", msg, h.Message)
				}
				k, _ := hex.DecodeString(h.UnlockKey)
				mac := hmac.New(sha256.New, k)
				mac.Write(msg)
				if got := mac.Sum(nil); !bytes.Equal(got, m) {
					t.Fatalf("HMAC = %x, want %s", got, v.Material)
				}
			}
			c, err := FromMaterial(v.Index, m)
			if err != nil {
				t.Fatal(err)
			}
			if got := c.String(); got != v.Code {
				t.Errorf("FromMaterial(%d, %s) = %s, want %s", v.Index, v.Material, got, v.Code)
			}
			if c.Index() != v.Index {
				t.Errorf("Index = %d, want %d", c.Index(), v.Index)
			}
			if got := string(c.Secret()); got != v.Secret {
				t.Errorf("Secret = %s, want %s", got, v.Secret)
			}
			for _, in := range []string{v.Code, v.Typed} {
				if p, err := Parse(in); err != nil || p != c {
					t.Errorf("Parse(%q) = %v, %v, want %v", in, p, err, c)
				}
			}
			salt, _ := hex.DecodeString(v.Salt)
			k, err := c.DeriveKey(salt, v.Iterations)
			if err != nil {
				t.Fatal(err)
			}
			if hex.EncodeToString(k) != v.Key {
				t.Errorf("DeriveKey = %x, want %s", k, v.Key)
			}
		})
	}
	for _, v := range vs.Typings {
		if c, err := Parse(v.Typed); err != nil || c.String() != v.Code {
			t.Errorf("%s: Parse(%q) = %v, %v, want %s", v.Why, v.Typed, c, err, v.Code)
		}
	}
	for _, v := range vs.Invalid {
		_, err := Parse(v.Typed)
		if want := wantErr(v.Error); !errors.Is(err, want) {
			t.Errorf("%s: Parse(%q) error = %v, want %v", v.Why, v.Typed, err, want)
		}
	}
}

// separators is the normative set, spelled out again so that a change to
// isSeparator shows up here.
var separators = []rune{
	'\u0009', '\u0020', '\u00a0', '\u2007', '\u202f', '\u3000',
	'\u002d', '\u2010', '\u2011', '\u2012', '\u2013', '\u2014', '\u2015',
	'\u2212', '\ufe58', '\ufe63', '\uff0d',
}

// TestSeparatorSet: the vectors, Go and this test name the same set.
func TestSeparatorSet(t *testing.T) {
	vs := loadVectors(t)
	var names []string
	for _, r := range separators {
		names = append(names, fmt.Sprintf("U+%04X", r))
	}
	if strings.Join(names, " ") != strings.Join(vs.Separators, " ") {
		t.Fatalf("vectors name %v, test names %v", vs.Separators, names)
	}
	n := 0
	for r := rune(0); r <= utf8.MaxRune; r++ {
		if isSeparator(r) {
			n++
		}
	}
	if n != len(separators) {
		t.Fatalf("isSeparator accepts %d code points, want %d", n, len(separators))
	}
}

func mustCode(t testing.TB, index uint32, material string) Code {
	t.Helper()
	c, err := FromMaterial(index, []byte(material))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestParse(t *testing.T) {
	c := mustCode(t, 3, "012345678")
	good := c.String()
	flat := strings.ReplaceAll(good, "-", "")
	// Substitute a look-alike for symbol i of the code.
	sub := func(i int, r string) string { return flat[:i] + r + flat[i+1:] }
	type test struct {
		name, in string
		err      error
	}
	tests := []test{
		{"canonical", good, nil},
		{"lower case", strings.ToLower(good), nil},
		{"mixed case", strings.ToLower(good[:7]) + good[7:], nil},
		{"no separators", flat, nil},
		{"spaces", strings.ReplaceAll(good, "-", " "), nil},
		{"empty", "", ErrFormat},
		{"separators only", "- \u2013\u3000", ErrFormat},
		{"short", good[:len(good)-1], ErrFormat},
		{"long", good + "0", ErrFormat},
		{"U", "U" + good[1:], ErrFormat},
		{"u", "u" + good[1:], ErrFormat},
		{"asterisk", good[:4] + "*" + good[5:], ErrFormat},
		{"non-ASCII letter", good[:4] + "é" + good[5:], ErrFormat},
		{"invalid UTF-8", good[:4] + "\xff" + good[5:], ErrFormat},
		{"truncated UTF-8", good + "\xe2\x80", ErrFormat},
		{"check symbol wrong", sub(15, "Z"), ErrCheck},
	}
	for _, r := range separators {
		s := string(r)
		tests = append(tests,
			test{fmt.Sprintf("U+%04X between groups", r), strings.ReplaceAll(good, "-", s), nil},
			test{fmt.Sprintf("U+%04X everywhere", r), s + strings.Join(strings.Split(flat, ""), s+s) + s, nil})
	}
	// Characters outside the set are refused, whether they stand between
	// symbols or for one (an implementation that folded Unicode would read
	// ı as I as 1, K as K, Ａ as A).
	for _, r := range []rune{'\u00ad', '\u2043', '\u200b', '\u2009', '\u2002', '\ufeff', '\u2e3a',
		'\n', '\r', '\x00', '_', '.', '*', '\ufffd'} {
		tests = append(tests, test{fmt.Sprintf("U+%04X between groups", r), good[:4] + string(r) + good[5:], ErrFormat})
	}
	for _, r := range []rune{'\uff21', '\u212a', '\u0131', '\u0130', '\u017f', '\uff10', '\u041e', 'U', 'u'} {
		tests = append(tests, test{fmt.Sprintf("U+%04X for a symbol", r), sub(5, string(r)), ErrFormat})
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Parse(tt.in)
			if !errors.Is(err, tt.err) {
				t.Fatalf("Parse(%q) error = %v, want %v", tt.in, err, tt.err)
			}
			if err == nil && got != c {
				t.Fatalf("Parse(%q) = %v, want %v", tt.in, got, c)
			}
			if err != nil {
				noSecret(t, err, flat)
			}
		})
	}
}

// noSecret fails if err repeats any four consecutive symbols of code.
func noSecret(t *testing.T, err error, code string) {
	t.Helper()
	for i := 0; i+4 <= len(code); i++ {
		if strings.Contains(strings.ToUpper(err.Error()), code[i:i+4]) {
			t.Fatalf("error %q repeats the input", err)
		}
	}
}

func TestLookalikes(t *testing.T) {
	// Symbols 0 and 1 alternate: index 1, then bits 00000 00001 repeated;
	// typing any of I, i, L, l, O, o is the same code.
	c := mustCode(t, 1, "\x00\x40\x10\x04\x01\x00\x40\x10\x04")
	s := c.String()
	if !strings.ContainsAny(s[:18], "0") || !strings.ContainsAny(s[:18], "1") {
		t.Fatalf("pick a code with 0 and 1: %s", s)
	}
	for _, r := range []*strings.Replacer{
		strings.NewReplacer("0", "O", "1", "I"),
		strings.NewReplacer("0", "o", "1", "i"),
		strings.NewReplacer("0", "O", "1", "L"),
		strings.NewReplacer("0", "o", "1", "l"),
	} {
		typed := r.Replace(s)
		got, err := Parse(typed)
		if err != nil || got != c {
			t.Fatalf("Parse(%q) = %v, %v", typed, got, err)
		}
		// Mapped before PBKDF2: the secret is the canonical one.
		if string(got.Secret()) != string(c.Secret()) {
			t.Fatalf("secret of %q differs", typed)
		}
	}
}

func TestFromMaterial(t *testing.T) {
	// All ones → every data symbol 31 ('Z'); bits past 70 are ignored.
	c, err := FromMaterial(7, bytes.Repeat([]byte{0xff}, MinMaterial))
	if err != nil {
		t.Fatal(err)
	}
	if got := string(c.Secret()); got != "7"+strings.Repeat("Z", 14) {
		t.Errorf("secret = %s", got)
	}
	// 0x08 = 00001000: the first data symbol is 00001 = 1, the rest 0.
	c, _ = FromMaterial(0, append([]byte{0x08}, make([]byte, 8)...))
	if got := string(c.Secret()); got != "01"+strings.Repeat("0", 13) {
		t.Errorf("secret = %s", got)
	}
	// Bit 69 is the last one read: 0x04 in material[8] is bit 69 (value 1
	// of the last symbol); 0x02 is bit 70, ignored.
	m := make([]byte, MinMaterial)
	m[8] = 0x04 | 0x02
	c, _ = FromMaterial(0, m)
	if got := string(c.Secret()); got != strings.Repeat("0", 14)+"1" {
		t.Errorf("secret = %s", got)
	}
	if _, err := FromMaterial(0, make([]byte, MinMaterial-1)); err == nil {
		t.Error("8 bytes of material accepted")
	}
	if _, err := FromMaterial(MaxIndex+1, make([]byte, MinMaterial)); err == nil {
		t.Error("index 32 accepted")
	}
	if MinMaterial != 9 || DataBits != 70 || Symbols != 16 || MaxIndex != 31 {
		t.Error("constants changed: docs/FORMAT.md and clients/web/src/unlockcode.ts depend on them")
	}
}

func TestIndexRoundTrip(t *testing.T) {
	for i := uint32(0); i <= MaxIndex; i++ {
		c := mustCode(t, i, "some hsm material")
		s := c.String()
		if s[0] != alphabet[i] {
			t.Fatalf("index %d shown as %c", i, s[0])
		}
		p, err := Parse(s)
		if err != nil || p != c || p.Index() != i {
			t.Fatalf("index %d: Parse(String()) = %v (index %d), %v", i, p, p.Index(), err)
		}
		if p.Secret()[0] != alphabet[i] {
			t.Fatalf("index %d not in the secret", i)
		}
	}
}

func TestDeriveKey(t *testing.T) {
	c := mustCode(t, 0, "012345678")
	if _, err := c.DeriveKey(make([]byte, 16), MinIterations-1); err == nil {
		t.Fatal("fewer than MinIterations accepted")
	}
	// Codes that differ only in the index give different keys.
	a, _ := mustCode(t, 0, "012345678").DeriveKey(make([]byte, 16), MinIterations)
	b, _ := mustCode(t, 1, "012345678").DeriveKey(make([]byte, 16), MinIterations)
	if bytes.Equal(a, b) || len(a) != 32 {
		t.Fatal("the index is not part of the key")
	}
}

func TestClear(t *testing.T) {
	c := mustCode(t, 5, "012345678")
	c.Clear()
	if c != (Code{}) {
		t.Fatal("not cleared")
	}
}

// TestCheckCatchesErrors tries every single-symbol substitution and every
// adjacent swap on 200 random codes: each must fail with ErrCheck, before
// any PBKDF2.
func TestCheckCatchesErrors(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for range 200 {
		m := make([]byte, MinMaterial)
		for i := range m {
			m[i] = byte(rng.Uint32())
		}
		c, _ := FromMaterial(rng.Uint32N(MaxIndex+1), m)
		sym := []byte(strings.ReplaceAll(c.String(), "-", ""))
		for i := range sym {
			for _, a := range []byte(alphabet) {
				if a == sym[i] {
					continue
				}
				bad := bytes.Clone(sym)
				bad[i] = a
				if _, err := Parse(string(bad)); !errors.Is(err, ErrCheck) {
					t.Fatalf("substitution %s → %s not caught: %v", sym, bad, err)
				}
			}
			if i+1 < len(sym) && sym[i] != sym[i+1] {
				bad := bytes.Clone(sym)
				bad[i], bad[i+1] = bad[i+1], bad[i]
				if _, err := Parse(string(bad)); !errors.Is(err, ErrCheck) {
					t.Fatalf("swap %s → %s not caught: %v", sym, bad, err)
				}
			}
		}
	}
}

func FuzzParse(f *testing.F) {
	c, _ := FromMaterial(3, []byte("012345678"))
	f.Add(c.String())
	f.Add(strings.ToLower(strings.ReplaceAll(c.String(), "-", "\u2013")))
	f.Add("")
	f.Add("----")
	f.Add("\xff\xfe")
	f.Add(strings.Repeat("Z", 40))
	f.Add("ıııı-ıııı-ıııı-ıııı")
	f.Fuzz(func(t *testing.T, s string) {
		got, err := Parse(s)
		if err != nil {
			if !errors.Is(err, ErrFormat) && !errors.Is(err, ErrCheck) {
				t.Fatalf("untyped error %v", err)
			}
			if len(s) >= 4 && strings.Contains(err.Error(), s) {
				t.Fatalf("error %q repeats the input", err)
			}
			return
		}
		if got.Index() > MaxIndex || len(got.Secret()) != Symbols-1 {
			t.Fatalf("parsed %v: index %d", got, got.Index())
		}
		again, err := Parse(got.String())
		if err != nil || again != got {
			t.Fatalf("round trip of %q: %v, %v", s, again, err)
		}
	})
}

func ExampleParse() {
	// Support reads "3K2M-9QXD-4HRT-W6PN"; the user types it loosely, on a
	// phone that turns dashes into en dashes.
	c, err := Parse("3k2m–9qxd 4hrt–w6pn")
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(c, c.Index())
	_, err = Parse("3K2M-9QXD-4HRT-W6NP") // two symbols swapped
	fmt.Println(err)
	// Output:
	// 3K2M-9QXD-4HRT-W6PN 3
	// unlock code check failed: a character is wrong or two are swapped
}
