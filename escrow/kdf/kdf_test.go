package kdf

import (
	"bytes"
	"crypto/hkdf"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"testing"
)

func point(b byte) []byte {
	p := bytes.Repeat([]byte{b}, P256PointSize)
	p[0] = 4
	return p
}

func TestECDHMessage(t *testing.T) {
	m, err := ECDHMessage("member", point(1), point(2))
	if err != nil {
		t.Fatal(err)
	}
	want := append([]byte("escrowd ecdh-p256 v1\x00\x06member"), point(1)...)
	want = append(append(want, point(2)...), 1)
	if !bytes.Equal(m, want) {
		t.Fatalf("ECDHMessage = %x\nwant %x", m, want)
	}
	for _, tc := range []struct {
		kind     string
		epk, rpk []byte
	}{
		{"", point(1), point(2)},
		{"member", point(1)[:64], point(2)},
		{"member", point(1), append([]byte{2}, point(2)[1:]...)},
	} {
		if _, err := ECDHMessage(tc.kind, tc.epk, tc.rpk); !errors.Is(err, ErrInput) {
			t.Errorf("ECDHMessage(%q, %d bytes, %d bytes) = %v, want ErrInput", tc.kind, len(tc.epk), len(tc.rpk), err)
		}
	}
}

// TestECDHKeyIsHKDFExpand: the ecdh-p256 slot key is exactly RFC 5869's
// HKDF-Expand(PRK = Z, info, 32), which is what docs/FORMAT.md claims.
func TestECDHKeyIsHKDFExpand(t *testing.T) {
	z := bytes.Repeat([]byte{0x33}, 32)
	m, _ := ECDHMessage("escrow", point(5), point(6))
	got, err := ECDHKey(z, m)
	if err != nil {
		t.Fatal(err)
	}
	want, err := hkdf.Expand(sha256.New, z, string(m[:len(m)-1]), 32)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("ECDHKey = %x, HKDF-Expand = %x", got, want)
	}
	if _, err := ECDHKey(z[:31], m); !errors.Is(err, ErrInput) {
		t.Fatalf("short Z: %v", err)
	}
}

// RFC 6070-style check of PBKDF2-HMAC-SHA256 (RFC 7914 §11 vector).
func TestPasswordKey(t *testing.T) {
	k, err := PasswordKey([]byte("passwd"), []byte("salt"), 1)
	if err != nil {
		t.Fatal(err)
	}
	if got := hex.EncodeToString(k); got != "55ac046e56e3089fec1691c22544b605f94185216dde0465e68b9d57c20dacbc" {
		t.Fatalf("PBKDF2 = %s", got)
	}
	if _, err := PasswordKey([]byte("p"), nil, 0); !errors.Is(err, ErrInput) {
		t.Fatal("0 iterations accepted")
	}
}

// RFC 5869 test case 1 with our label as info would not match; check the
// construction instead: HKDF with salt and label.
func TestPasskeyKey(t *testing.T) {
	prf := bytes.Repeat([]byte{1}, 32)
	salt := bytes.Repeat([]byte{2}, 16)
	got, err := PasskeyKey(prf, salt)
	if err != nil {
		t.Fatal(err)
	}
	want, _ := hkdf.Key(sha256.New, prf, salt, "escrowd passkey-prf v1", 32)
	if !bytes.Equal(got, want) {
		t.Fatal("PasskeyKey is not HKDF-SHA256(prf, salt, label)")
	}
	if _, err := PasskeyKey(prf[:16], salt); !errors.Is(err, ErrInput) {
		t.Fatal("a 16-byte PRF output accepted")
	}
}

// The value was checked with Python: hmac.new(bytes(32), b"escrowd key check v1", hashlib.sha256).
func ExampleCheckValue() {
	fmt.Println(hex.EncodeToString(CheckValue(make([]byte, 32))))
	// Output: f05972b09219fec7
}
