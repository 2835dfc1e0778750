package bundle

import (
	"bytes"
	"encoding/base64"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func b64(n int, fill byte) string {
	return base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{fill}, n))
}

var (
	rsaCT  = b64(384, 7)
	kwCT   = b64(40, 9)
	salt16 = b64(16, 1)
	check8 = b64(8, 3)
	// a valid P-256 point (the generator)
	epk = "BGsX0fLhLEJH+Lzm5WOkQPJ3A32BLeszoPShOUXYmMKWT+NC4v4af5uO5+tKfA+eFivOM1drMV7Oy7ZAaDe/UfU="
)

func TestParseSlot(t *testing.T) {
	tests := []struct {
		name string
		json string
		ok   bool
		want string // part of the error
	}{
		{"escrow", `{"v":1,"kind":"escrow","key_version":1,"suite":"rsa-oaep-sha1","wrapped":"` + rsaCT + `"}`, true, ""},
		{"escrow sha256", `{"v":1,"kind":"escrow","key_version":3,"suite":"rsa-oaep-sha256","wrapped":"` + rsaCT + `"}`, true, ""},
		{"member", `{"v":1,"kind":"member","key_version":1,"suite":"rsa-oaep-sha1","id":"alice","wrapped":"` + rsaCT + `"}`, true, ""},
		{"device", `{"v":1,"kind":"device","key_version":2,"suite":"rsa-oaep-sha256","id":"phone-1","wrapped":"` + rsaCT + `"}`, true, ""},
		{"unlock", `{"v":1,"kind":"unlock","key_version":1,"suite":"pbkdf2-sha256-aes-kw","id":"u1","kdf":{"salt":"` + salt16 + `","iterations":65536},"unlock":{"epoch":1,"index":0},"check":"` + check8 + `","wrapped":"` + kwCT + `"}`, true, ""},
		{"password", `{"v":1,"kind":"password","key_version":1,"suite":"pbkdf2-sha256-aes-kw","id":"u1","kdf":{"salt":"` + salt16 + `","iterations":600000},"check":"` + check8 + `","wrapped":"` + kwCT + `"}`, true, ""},
		{"passkey-prf", `{"v":1,"kind":"passkey-prf","key_version":1,"suite":"hkdf-sha256-aes-kw","id":"cred-1","kdf":{"salt":"` + salt16 + `"},"check":"` + check8 + `","wrapped":"` + kwCT + `"}`, true, ""},
		{"member ecdh", `{"v":1,"kind":"member","key_version":1,"suite":"ecdh-p256","id":"alice","epk":"` + epk + `","wrapped":"` + kwCT + `"}`, true, ""},
		{"escrow ecdh", `{"v":1,"kind":"escrow","key_version":1,"suite":"ecdh-p256","epk":"` + epk + `","wrapped":"` + kwCT + `"}`, true, ""},
		{"chain", `{"v":1,"kind":"chain","key_version":2,"suite":"aes-kw","wrapped":"` + kwCT + `"}`, true, ""},

		{"empty", ``, false, "EOF"},
		{"ecdh bad point", `{"v":1,"kind":"member","key_version":1,"suite":"ecdh-p256","id":"alice","epk":"` + b64(65, 4) + `","wrapped":"` + kwCT + `"}`, false, "not an uncompressed P-256 point"},
		{"ecdh no epk", `{"v":1,"kind":"device","key_version":1,"suite":"ecdh-p256","id":"d","wrapped":"` + kwCT + `"}`, false, "epk"},
		{"ecdh rsa-sized", `{"v":1,"kind":"device","key_version":1,"suite":"ecdh-p256","id":"d","epk":"` + epk + `","wrapped":"` + rsaCT + `"}`, false, "want 40"},
		{"rsa with epk", `{"v":1,"kind":"escrow","key_version":1,"suite":"rsa-oaep-sha1","epk":"` + epk + `","wrapped":"` + rsaCT + `"}`, false, "epk belongs"},
		{"chain version 1", `{"v":1,"kind":"chain","key_version":1,"suite":"aes-kw","wrapped":"` + kwCT + `"}`, false, "version 2 or later"},
		{"chain with id", `{"v":1,"kind":"chain","key_version":2,"suite":"aes-kw","id":"x","wrapped":"` + kwCT + `"}`, false, "no id"},
		{"chain rsa", `{"v":1,"kind":"chain","key_version":2,"suite":"rsa-oaep-sha1","wrapped":"` + kwCT + `"}`, false, "unknown suite"},
		{"password without check", `{"v":1,"kind":"password","key_version":1,"suite":"pbkdf2-sha256-aes-kw","id":"u1","kdf":{"salt":"` + salt16 + `","iterations":600000},"wrapped":"` + kwCT + `"}`, false, "check is 0 bytes"},
		{"member with check", `{"v":1,"kind":"member","key_version":1,"suite":"rsa-oaep-sha1","id":"alice","check":"` + check8 + `","wrapped":"` + rsaCT + `"}`, false, "unexpected"},
		{"not json", `escrow`, false, "invalid character"},
		{"array", `[]`, false, "cannot unmarshal"},
		{"trailing", `{"v":1,"kind":"escrow","key_version":1,"suite":"rsa-oaep-sha1","wrapped":"` + rsaCT + `"} {}`, false, "trailing"},
		{"unknown field", `{"v":1,"kind":"escrow","key_version":1,"suite":"rsa-oaep-sha1","wrapped":"` + rsaCT + `","extra":1}`, false, "unknown field"},
		{"duplicate key", `{"v":1,"kind":"member","kind":"escrow","key_version":1,"suite":"rsa-oaep-sha1","wrapped":"` + rsaCT + `"}`, false, "duplicate key"},
		{"case-folded key", `{"v":1,"KIND":"escrow","key_version":1,"suite":"rsa-oaep-sha1","wrapped":"` + rsaCT + `"}`, false, "upper-case"},
		{"nested duplicate", `{"v":1,"kind":"unlock","key_version":1,"suite":"pbkdf2-sha256-aes-kw","id":"u1","kdf":{"salt":"` + salt16 + `","iterations":65536,"iterations":1},"unlock":{"epoch":1,"index":0},"check":"` + check8 + `","wrapped":"` + kwCT + `"}`, false, "duplicate key"},
		{"version 2", `{"v":2,"kind":"escrow","key_version":1,"suite":"rsa-oaep-sha1","wrapped":"` + rsaCT + `"}`, false, "slot version 2"},
		{"key version 0", `{"v":1,"kind":"escrow","key_version":0,"suite":"rsa-oaep-sha1","wrapped":"` + rsaCT + `"}`, false, "key_version"},
		{"unknown kind", `{"v":1,"kind":"backdoor","key_version":1,"suite":"rsa-oaep-sha1","wrapped":"` + rsaCT + `"}`, false, "unknown slot kind"},
		{"unknown suite", `{"v":1,"kind":"escrow","key_version":1,"suite":"rsa-pkcs1","wrapped":"` + rsaCT + `"}`, false, "unknown suite"},
		{"short ciphertext", `{"v":1,"kind":"escrow","key_version":1,"suite":"rsa-oaep-sha1","wrapped":"` + b64(100, 1) + `"}`, false, "wrapped key is 100 bytes"},
		{"bad base64", `{"v":1,"kind":"escrow","key_version":1,"suite":"rsa-oaep-sha1","wrapped":"!!!"}`, false, "illegal base64"},
		{"escrow with id", `{"v":1,"kind":"escrow","key_version":1,"suite":"rsa-oaep-sha1","id":"x","wrapped":"` + rsaCT + `"}`, false, "no id"},
		{"member without id", `{"v":1,"kind":"member","key_version":1,"suite":"rsa-oaep-sha1","wrapped":"` + rsaCT + `"}`, false, "empty id"},
		{"id with space", `{"v":1,"kind":"member","key_version":1,"suite":"rsa-oaep-sha1","id":"a b","wrapped":"` + rsaCT + `"}`, false, "printable ASCII"},
		{"escrow with kdf", `{"v":1,"kind":"escrow","key_version":1,"suite":"rsa-oaep-sha1","kdf":{"salt":"` + salt16 + `"},"wrapped":"` + rsaCT + `"}`, false, "unexpected kdf"},
		{"unlock few iterations", `{"v":1,"kind":"unlock","key_version":1,"suite":"pbkdf2-sha256-aes-kw","id":"u1","kdf":{"salt":"` + salt16 + `","iterations":1000},"unlock":{"epoch":1,"index":0},"check":"` + check8 + `","wrapped":"` + kwCT + `"}`, false, "iterations 1000"},
		{"password at unlock cost", `{"v":1,"kind":"password","key_version":1,"suite":"pbkdf2-sha256-aes-kw","id":"u1","kdf":{"salt":"` + salt16 + `","iterations":65536},"check":"` + check8 + `","wrapped":"` + kwCT + `"}`, false, "iterations 65536"},
		{"unlock without binding", `{"v":1,"kind":"unlock","key_version":1,"suite":"pbkdf2-sha256-aes-kw","id":"u1","kdf":{"salt":"` + salt16 + `","iterations":65536},"check":"` + check8 + `","wrapped":"` + kwCT + `"}`, false, "unlock parameters"},
		{"unlock short salt", `{"v":1,"kind":"unlock","key_version":1,"suite":"pbkdf2-sha256-aes-kw","id":"u1","kdf":{"salt":"` + b64(8, 1) + `","iterations":65536},"unlock":{"epoch":1,"index":0},"check":"` + check8 + `","wrapped":"` + kwCT + `"}`, false, "salt must be 16"},
		{"unlock wrong wrapped size", `{"v":1,"kind":"unlock","key_version":1,"suite":"pbkdf2-sha256-aes-kw","id":"u1","kdf":{"salt":"` + salt16 + `","iterations":65536},"unlock":{"epoch":1,"index":0},"check":"` + check8 + `","wrapped":"` + b64(48, 1) + `"}`, false, "want 40"},
		{"prf with iterations", `{"v":1,"kind":"passkey-prf","key_version":1,"suite":"hkdf-sha256-aes-kw","id":"c","kdf":{"salt":"` + salt16 + `","iterations":5},"check":"` + check8 + `","wrapped":"` + kwCT + `"}`, false, "no iterations"},
		{"too large", `{"v":1,"kind":"escrow","pad":"` + strings.Repeat("x", MaxSlotSize) + `"}`, false, "more than"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := ParseSlot([]byte(tt.json))
			if tt.ok {
				if err != nil {
					t.Fatalf("ParseSlot: %v", err)
				}
				// Marshal then parse again gives the same slot.
				b, err := s.Marshal()
				if err != nil {
					t.Fatal(err)
				}
				again, err := ParseSlot(b)
				if err != nil {
					t.Fatal(err)
				}
				if !reflect.DeepEqual(again, s) {
					t.Fatalf("round trip changed the slot:\n%v\n%v", s, again)
				}
				return
			}
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("ParseSlot error = %v, want ErrMalformed", err)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("ParseSlot error %q does not say %q", err, tt.want)
			}
		})
	}
}

func TestParseBundle(t *testing.T) {
	slot := `{"v":1,"kind":"escrow","key_version":1,"suite":"rsa-oaep-sha1","wrapped":"` + rsaCT + `"}`
	tests := []struct {
		name, json, want string
	}{
		{"ok", `{"v":1,"group":"g1","slots":[` + slot + `]}`, ""},
		{"no slots", `{"v":1,"group":"g1","slots":[]}`, "0 slots"},
		{"no group", `{"v":1,"slots":[` + slot + `]}`, "group"},
		{"bad slot", `{"v":1,"group":"g1","slots":[` + slot + `,{"v":1,"kind":"x","key_version":1,"suite":"","wrapped":""}]}`, "slot 1"},
		{"duplicate in slot", `{"v":1,"group":"g1","slots":[{"v":1,"v":1}]}`, "duplicate key"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse([]byte(tt.json))
			if tt.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Parse error = %v, want ErrMalformed saying %q", err, tt.want)
			}
		})
	}
}

func TestValidateID(t *testing.T) {
	for _, id := range []string{"a", "group-1", "user@example.com", "spiffe://x/y", strings.Repeat("x", 128)} {
		if err := ValidateID(id); err != nil {
			t.Errorf("ValidateID(%q) = %v", id, err)
		}
	}
	for _, id := range []string{"", " ", "a b", "tab\t", "nul\x00", "é", "\xff", strings.Repeat("x", 129), "line\n"} {
		if err := ValidateID(id); err == nil {
			t.Errorf("ValidateID(%q) accepted", id)
		}
	}
}

// FuzzParseSlot: whatever parses must marshal and parse back to the same
// slot, and a failure is always ErrMalformed.
func FuzzParseSlot(f *testing.F) {
	seeds, _ := filepath.Glob("testdata/*.json")
	for _, p := range seeds {
		b, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte(`{"v":1,"kind":"escrow","key_version":1,"suite":"rsa-oaep-sha1","wrapped":"` + rsaCT + `"}`))
	f.Add([]byte(`{"v":1,"kind":"unlock","key_version":1,"suite":"pbkdf2-sha256-aes-kw","id":"u1","kdf":{"salt":"` + salt16 + `","iterations":65536},"unlock":{"epoch":1,"index":0},"check":"` + check8 + `","wrapped":"` + kwCT + `"}`))
	f.Add([]byte(`{"v":1,"kind":"member","key_version":1,"suite":"ecdh-p256","id":"alice","epk":"` + epk + `","wrapped":"` + kwCT + `"}`))
	f.Add([]byte(`{"v":1,"kind":"chain","key_version":2,"suite":"aes-kw","wrapped":"` + kwCT + `"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := ParseSlot(b)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("error without ErrMalformed: %v", err)
			}
			return
		}
		out, err := s.Marshal()
		if err != nil {
			t.Fatalf("parsed slot does not marshal: %v", err)
		}
		again, err := ParseSlot(out)
		if err != nil || !reflect.DeepEqual(again, s) {
			t.Fatalf("round trip: %v", err)
		}
	})
}

func FuzzParseBundle(f *testing.F) {
	f.Add([]byte(`{"v":1,"group":"g1","slots":[{"v":1,"kind":"escrow","key_version":1,"suite":"rsa-oaep-sha1","wrapped":"` + rsaCT + `"}]}`))
	f.Add([]byte(`{"v":1,"group":"g1","slots":[{}]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		bd, err := Parse(b)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("error without ErrMalformed: %v", err)
			}
			return
		}
		out, err := bd.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := Parse(out); err != nil {
			t.Fatalf("round trip: %v", err)
		}
	})
}
