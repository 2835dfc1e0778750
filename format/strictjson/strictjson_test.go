package strictjson

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
)

func TestParseValue(t *testing.T) {
	v, err := Parse([]byte(` {"b" : [1, "x\"\\", {}], "a": 4294967295 } `))
	if err != nil {
		t.Fatal(err)
	}
	want := Value{Kind: KindObject, Obj: []Member{
		{"b", Value{Kind: KindArray, Arr: []Value{
			{Kind: KindInt, Int: 1},
			{Kind: KindString, Str: `x"\`},
			{Kind: KindObject},
		}}},
		{"a", Value{Kind: KindInt, Int: 4294967295}},
	}}
	if !equal(v, want) {
		t.Fatalf("Parse = %+v, want %+v", v, want)
	}
}

func TestEncodeRefuses(t *testing.T) {
	str := func(s string) Value { return Value{Kind: KindString, Str: s} }
	obj := func(ms ...Member) Value { return Value{Kind: KindObject, Obj: ms} }
	deep := obj()
	for range MaxDepth {
		deep = obj(Member{"a", deep})
	}
	for _, c := range []struct {
		name  string
		v     Value
		class string
	}{
		{"zero value", Value{}, "syntax"},
		{"top-level string", str("a"), "syntax"},
		{"top-level array", Value{Kind: KindArray}, "syntax"},
		{"invalid kind inside", obj(Member{"a", Value{Kind: 9}}), "syntax"},
		{"non-ASCII string", obj(Member{"a", str("caf\u00e9")}), "syntax"},
		{"newline in a string", obj(Member{"a", str("a\nb")}), "syntax"},
		{"Kelvin sign key", obj(Member{"\u212a", str("a")}), "syntax"},
		{"duplicate key", obj(Member{"a", str("1")}, Member{"a", str("2")}), "duplicate-key"},
		{"depth 9", deep, "syntax"},
	} {
		_, err := Encode(c.v)
		if Class(err) != c.class {
			t.Errorf("%s: Encode error %v, want class %s", c.name, err, c.class)
		}
	}
	// Depth 8 itself is fine.
	if _, err := Encode(deep.Obj[0].Val); err != nil {
		t.Errorf("depth 8: %v", err)
	}
}

func TestClass(t *testing.T) {
	if Class(nil) != "" || Class(errors.New("x")) != "" {
		t.Error("Class of a foreign error is not empty")
	}
	for _, e := range []error{ErrSyntax, ErrDuplicateKey, ErrUnknownKey, ErrMissingKey, ErrType, ErrRange, ErrBase64} {
		if !errors.Is(e, ErrMalformed) || !classes[Class(e)] {
			t.Errorf("%v: Class %q, Is(ErrMalformed) %v", e, Class(e), errors.Is(e, ErrMalformed))
		}
		wrapped := fmt.Errorf("slot 3: %w", fail(e, "x"))
		if !errors.Is(wrapped, e) || Class(wrapped) != Class(e) {
			t.Errorf("%v: class lost through wrapping", e)
		}
	}
	_, err := Parse([]byte(`{"a":1,"a":2}`))
	if !errors.Is(err, ErrDuplicateKey) || errors.Is(err, ErrSyntax) {
		t.Errorf("errors.Is on %v", err)
	}
}

// Values can be secrets; no error may carry their text.
func TestErrorsDoNotEchoValues(t *testing.T) {
	const secret = "c2VjcmV0a2V5"
	type reader func(*Object) error
	for _, c := range []struct {
		in   string
		read reader
	}{
		{`{"k":"` + secret + `\n"}`, nil},
		{`{"k":"` + secret + "\t\"}", nil},
		{`{"k":"` + secret, nil},
		{`{"k":"` + secret + `" "x":1}`, nil},
		{`{"k":"` + secret + `","k":"` + secret + `"}`, nil},
		{`{"k":"` + secret + `Q="}`, func(o *Object) error { _, err := o.Bytes("k", 1, 64); return err }},
		{`{"k":"` + secret + `"}`, func(o *Object) error { _, err := o.Bytes("k", 1, 2); return err }},
		{`{"k":"` + secret + `"}`, func(o *Object) error { _, err := o.String("k", 1, 2); return err }},
		{`{"k":"` + secret + `"}`, func(o *Object) error { _, err := o.Uint32("k", 1, 2); return err }},
		{`{"k":"` + secret + `"}`, func(o *Object) error { _, err := o.Child("k"); return err }},
	} {
		v, err := Parse([]byte(c.in))
		if err == nil {
			if c.read == nil {
				t.Fatalf("%s: parsed", c.in)
			}
			o, oerr := v.Object("k")
			if oerr != nil {
				t.Fatal(oerr)
			}
			err = c.read(o)
		}
		if err == nil {
			t.Fatalf("%s: no error", c.in)
		}
		if strings.Contains(err.Error(), secret[:4]) {
			t.Errorf("error %q echoes the value", err)
		}
	}
	_, err := DecodeBase64(secret + "\n")
	if err == nil || strings.Contains(err.Error(), secret[:4]) {
		t.Errorf("DecodeBase64 error %v", err)
	}
}

func TestErrorMessages(t *testing.T) {
	v, err := Parse([]byte(`{"kdf":{"salt":"QR=="},"Kind":1}`))
	if err != nil {
		t.Fatal(err)
	}
	_, err = v.Object("kdf")
	if want := `strictjson: unknown-key: $ has unknown key "Kind"`; err == nil || err.Error() != want {
		t.Errorf("got %v, want %s", err, want)
	}
	o, _ := v.Object("kdf", "Kind")
	kdf, _ := o.Child("kdf", "salt")
	_, err = kdf.Bytes("salt", 16, 16)
	if want := `strictjson: base64: $.kdf.salt: non-zero unused bits (not canonical) at offset 1`; err == nil || err.Error() != want {
		t.Errorf("got %v, want %s", err, want)
	}
	_, err = Parse([]byte(`{"a": nul}`))
	if want := `strictjson: syntax: expected an object, array, string or unsigned integer at offset 6`; err == nil || err.Error() != want {
		t.Errorf("got %v, want %s", err, want)
	}
}

func TestRequiredMinIsOne(t *testing.T) {
	v, _ := Parse([]byte(`{"s":"","a":[]}`))
	o, _ := v.Object("s", "a")
	if _, err := o.String("s", 0, 10); Class(err) != "range" {
		t.Errorf("empty string with min 0: %v", err)
	}
	if _, err := o.Array("a", 0, 10); Class(err) != "range" {
		t.Errorf("empty array with min 0: %v", err)
	}
	if _, err := o.String("missing", 0, 10); Class(err) != "missing-key" {
		t.Errorf("missing: %v", err)
	}
	if !o.Has("s") || o.Has("S") {
		t.Error("Has")
	}
}

func TestBase64Table(t *testing.T) {
	// Every one- and two-byte string round-trips, and exactly one text
	// per value decodes: the 4 (or 16) texts that differ only in unused
	// bits are refused but one.
	for n := 1; n <= 2; n++ {
		accepted := map[string]bool{}
		for x := 0; x < 1<<(8*n); x++ {
			b := []byte{byte(x), byte(x >> 8)}[:n]
			s := EncodeBase64(b)
			got, err := DecodeBase64(s)
			if err != nil || !bytes.Equal(got, b) {
				t.Fatalf("%x: %q -> %x, %v", b, s, got, err)
			}
			accepted[s] = true
		}
		symbols := 2
		if n == 2 {
			symbols = 3
		}
		count := 0
		var walk func(prefix string)
		walk = func(prefix string) {
			if len(prefix) == symbols {
				s := prefix + strings.Repeat("=", 4-symbols)
				if _, err := DecodeBase64(s); err == nil {
					count++
					if !accepted[s] {
						t.Fatalf("%q decodes but is not canonical", s)
					}
				} else if Class(err) != "base64" {
					t.Fatalf("%q: class %q", s, Class(err))
				}
				return
			}
			for i := 0; i < 64; i++ {
				walk(prefix + b64Alphabet[i:i+1])
			}
		}
		walk("")
		if count != 1<<(8*n) {
			t.Fatalf("%d-byte texts decoding: %d", n, count)
		}
	}
}

func FuzzParse(f *testing.F) {
	for _, v := range loadVectors(f) {
		if v.Op != "base64" {
			f.Add(v.input(f))
		}
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		v, err := Parse(in)
		if err != nil {
			if !classes[Class(err)] || !errors.Is(err, ErrMalformed) {
				t.Fatalf("error %v has no class", err)
			}
			return
		}
		if !json.Valid(in) {
			t.Fatalf("accepted %q, which encoding/json says is not JSON", in)
		}
		enc, err := Encode(v)
		if err != nil {
			t.Fatalf("Encode of a parsed value: %v", err)
		}
		if want := stripWhitespace(in); !bytes.Equal(enc, want) {
			t.Fatalf("Encode = %q, want the input without whitespace %q", enc, want)
		}
		again, err := Parse(enc)
		if err != nil || !equal(v, again) {
			t.Fatalf("Parse(Encode(v)) = %+v, %v; want %+v", again, err, v)
		}
		enc2, err := Encode(again)
		if err != nil || !bytes.Equal(enc, enc2) {
			t.Fatalf("Encode not stable: %q then %q", enc, enc2)
		}
	})
}

// stripWhitespace removes whitespace outside strings from well-formed
// input: the profile gives each value one written form, so this is the
// canonical encoding.
func stripWhitespace(in []byte) []byte {
	var out []byte
	inString, escaped := false, false
	for _, c := range in {
		switch {
		case inString:
			inString = escaped || c != '"'
			escaped = !escaped && c == '\\'
		case c == ' ' || c == '\t' || c == '\n' || c == '\r':
			continue
		case c == '"':
			inString = true
		}
		out = append(out, c)
	}
	return out
}

func FuzzDecodeBase64(f *testing.F) {
	for _, v := range loadVectors(f) {
		if v.Op == "base64" {
			f.Add(string(v.input(f)))
		}
	}
	f.Fuzz(func(t *testing.T, s string) {
		b, err := DecodeBase64(s)
		if err != nil && Class(err) != "base64" {
			t.Fatalf("error %v, class %q", err, Class(err))
		}
		if err == nil && EncodeBase64(b) != s {
			t.Fatalf("%q decodes to %x, which encodes as %q", s, b, EncodeBase64(b))
		}
		// encoding/base64's Strict mode agrees except where it is lax:
		// it skips '\r' and '\n' and accepts "".
		if s != "" && !strings.ContainsAny(s, "\r\n") {
			sb, serr := base64.StdEncoding.Strict().DecodeString(s)
			if (err == nil) != (serr == nil) || err == nil && !bytes.Equal(b, sb) {
				t.Fatalf("%q: ours %x, %v; encoding/base64 %x, %v", s, b, err, sb, serr)
			}
		}
	})
}

// A format decoder maps an object onto its struct: the allow-list first,
// then each field with its type and bounds.
func Example() {
	in := []byte(`{"v":1,"kind":"password","kdf":{"salt":"AAECAwQFBgcICQoLDA0ODw==","iterations":65536},"wrapped":"3q2+7wE="}`)
	v, err := Parse(in)
	if err != nil {
		fmt.Println(err)
		return
	}
	slot, err := v.Object("v", "kind", "id", "kdf", "wrapped")
	if err != nil {
		fmt.Println(err)
		return
	}
	ver, _ := slot.Uint32("v", 1, 1)
	kind, _ := slot.String("kind", 1, 32)
	kdf, _ := slot.Child("kdf", "salt", "iterations")
	salt, _ := kdf.Bytes("salt", 16, 16)
	iter, _ := kdf.Uint32("iterations", 1000, 10000000)
	wrapped, _ := slot.Bytes("wrapped", 1, 512)
	fmt.Println(ver, kind, len(salt), iter, len(wrapped), slot.Has("id"))

	_, err = slot.String("id", 1, 128)
	fmt.Println(err, Class(err))

	_, err = Parse([]byte(`{"v":1,"kind":"password","kind":"escrow"}`))
	fmt.Println(Class(err), errors.Is(err, ErrMalformed))
	// Output:
	// 1 password 16 65536 5 false
	// strictjson: missing-key: $.id is missing missing-key
	// duplicate-key true
}
