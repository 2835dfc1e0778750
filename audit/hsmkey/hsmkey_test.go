package hsmkey

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	"github.com/escrowd/escrowd/hsm"
)

func TestDecode(t *testing.T) {
	blob := bytes.Repeat([]byte{0xab}, 40)
	good := Encode(hsm.WrappedKey{KEKVersion: 3, Blob: blob})
	tests := []struct {
		name string
		in   []byte
		want string // "" means it decodes
	}{
		{"valid", good, ""},
		{"empty", nil, "0 bytes"},
		{"header only", good[:headerSize], "a wrapped key of 0 bytes"},
		{"other version", append([]byte{2}, good[1:]...), "version 2"},
		{"KEK version 0", append([]byte{1, 0, 0, 0, 0}, blob...), "KEK version 0"},
		{"short blob", good[:headerSize+minBlob-1], "of 23 bytes"},
		{"long blob", append(good, make([]byte, maxBlob)...), "a wrapped key of"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			wk, err := Decode(tt.in)
			if tt.want == "" {
				if err != nil || wk.KEKVersion != 3 || !bytes.Equal(wk.Blob, blob) {
					t.Fatalf("Decode: %+v, %v", wk, err)
				}
				return
			}
			if !errors.Is(err, ErrBadKey) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Decode: %v, want ErrBadKey saying %q", err, tt.want)
			}
		})
	}
}

// FuzzDecode: whatever Vault holds at the key's path, Decode answers
// without panicking, and what it decodes encodes back to the same bytes.
func FuzzDecode(f *testing.F) {
	f.Add(Encode(hsm.WrappedKey{KEKVersion: 1, Blob: make([]byte, 40)}))
	f.Add([]byte{1, 0, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		wk, err := Decode(b)
		if err != nil {
			if !errors.Is(err, ErrBadKey) {
				t.Fatalf("error %v does not wrap ErrBadKey", err)
			}
			return
		}
		if !bytes.Equal(Encode(wk), b) {
			t.Fatal("round trip changed the key")
		}
	})
}
