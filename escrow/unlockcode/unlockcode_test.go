package unlockcode

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
)

type vector struct {
	Material   string `json:"material"`
	Code       string `json:"code"`
	Salt       string `json:"salt"`
	Iterations int    `json:"iterations"`
	Key        string `json:"key"`
}

// TestVectors checks codes and slot keys against testdata/vectors.json, the
// same file the device-side tests read.
func TestVectors(t *testing.T) {
	raw, err := os.ReadFile("testdata/vectors.json")
	if err != nil {
		t.Fatal(err)
	}
	var vs []vector
	if err := json.Unmarshal(raw, &vs); err != nil {
		t.Fatal(err)
	}
	if len(vs) == 0 {
		t.Fatal("no vectors")
	}
	for _, v := range vs {
		m, _ := hex.DecodeString(v.Material)
		c, err := FromMaterial(m)
		if err != nil {
			t.Fatal(err)
		}
		if got := c.String(); got != v.Code {
			t.Errorf("FromMaterial(%s) = %s, want %s", v.Material, got, v.Code)
		}
		p, err := Parse(v.Code)
		if err != nil || p != c {
			t.Errorf("Parse(%s) = %v, %v", v.Code, p, err)
		}
		salt, _ := hex.DecodeString(v.Salt)
		k, err := c.DeriveKey(salt, v.Iterations)
		if err != nil {
			t.Fatal(err)
		}
		if hex.EncodeToString(k) != v.Key {
			t.Errorf("DeriveKey(%s) = %x, want %s", v.Code, k, v.Key)
		}
	}
}

func TestFromMaterialBits(t *testing.T) {
	// All ones → every symbol 31 ('Z'); bits past 75 are ignored.
	c, err := FromMaterial(bytes.Repeat([]byte{0xff}, 10))
	if err != nil {
		t.Fatal(err)
	}
	if got := string(c.Secret()); got != strings.Repeat("Z", 15) {
		t.Errorf("secret = %s", got)
	}
	// 0x08 = 00001000: the first symbol is 00001 = 1, the rest 0.
	c, _ = FromMaterial(append([]byte{0x08}, make([]byte, 9)...))
	if got := string(c.Secret()); got != "1"+strings.Repeat("0", 14) {
		t.Errorf("secret = %s", got)
	}
	if _, err := FromMaterial(make([]byte, 9)); err == nil {
		t.Error("9 bytes of material accepted")
	}
}

func TestParse(t *testing.T) {
	c, _ := FromMaterial([]byte("0123456789"))
	good := c.String()
	tests := []struct {
		name, in string
		err      error
	}{
		{"canonical", good, nil},
		{"lower case", strings.ToLower(good), nil},
		{"no dashes", strings.ReplaceAll(good, "-", ""), nil},
		{"spaces", strings.ReplaceAll(good, "-", " "), nil},
		{"empty", "", ErrFormat},
		{"short", good[:len(good)-1], ErrFormat},
		{"long", good + "0", ErrFormat},
		{"bad character", "U" + good[1:], ErrFormat},
		{"punctuation", good[:4] + "*" + good[5:], ErrFormat},
		{"non-ASCII", good[:4] + "é" + good[5:], ErrFormat},
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
			if err != nil && strings.Contains(err.Error(), good) {
				t.Fatalf("error repeats the input: %v", err)
			}
		})
	}
}

func TestConfusables(t *testing.T) {
	// A code whose symbols include 0 and 1 reads the same typed with O, I, L.
	c, _ := FromMaterial(make([]byte, 10)) // all zero symbols
	s := c.String()
	typed := strings.NewReplacer("0", "o", "1", "l").Replace(s)
	got, err := Parse(typed)
	if err != nil || got != c {
		t.Fatalf("Parse(%q) = %v, %v", typed, got, err)
	}
}

// TestCheckCatchesErrors tries every single-symbol substitution and every
// adjacent swap on many codes: each must fail with ErrCheck.
func TestCheckCatchesErrors(t *testing.T) {
	for seed := range 200 {
		m := make([]byte, 10)
		for i := range m {
			m[i] = byte(seed*31 + i*17 + seed*i)
		}
		c, _ := FromMaterial(m)
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
	c, _ := FromMaterial([]byte("0123456789"))
	f.Add(c.String())
	f.Add("")
	f.Add("----")
	f.Add(strings.Repeat("Z", 40))
	f.Fuzz(func(t *testing.T, s string) {
		got, err := Parse(s)
		if err != nil {
			if !errors.Is(err, ErrFormat) && !errors.Is(err, ErrCheck) {
				t.Fatalf("untyped error %v", err)
			}
			return
		}
		again, err := Parse(got.String())
		if err != nil || again != got {
			t.Fatalf("round trip of %q: %v, %v", s, again, err)
		}
	})
}

func ExampleParse() {
	// A person reads "798S-R1Z2-8JR1-TSCH" and the user types it loosely.
	c, err := Parse("798s r1z2 8jrl tsch")
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(c)
	_, err = Parse("798S-R1Z2-8JR1-TSHC") // two symbols swapped
	fmt.Println(err)
	// Output:
	// 798S-R1Z2-8JR1-TSCH
	// unlock code check failed: a character is wrong or two are swapped
}
