package device

import (
	"bytes"
	"encoding/hex"
	"errors"
	"testing"
)

// RFC 3394 §4 test vectors.
var kwVectors = []struct{ kek, key, wrapped string }{
	{"000102030405060708090A0B0C0D0E0F", "00112233445566778899AABBCCDDEEFF", "1FA68B0A8112B447AEF34BD8FB5A7B829D3E862371D2CFE5"},
	{"000102030405060708090A0B0C0D0E0F1011121314151617", "00112233445566778899AABBCCDDEEFF", "96778B25AE6CA435F92B5B97C050AED2468AB8A17AD84E5D"},
	{"000102030405060708090A0B0C0D0E0F101112131415161718191A1B1C1D1E1F", "00112233445566778899AABBCCDDEEFF", "64E8C3F9CE0F5BA263E9777905818A2A93C8191E7D6E8AE7"},
	{"000102030405060708090A0B0C0D0E0F101112131415161718191A1B1C1D1E1F", "00112233445566778899AABBCCDDEEFF0001020304050607", "A8F9BC1612C68B3FF6E6F4FBE30E71E4769C8B80A32CB8958CD5D17D6B254DA1"},
	{"000102030405060708090A0B0C0D0E0F101112131415161718191A1B1C1D1E1F", "00112233445566778899AABBCCDDEEFF000102030405060708090A0B0C0D0E0F", "28C9F404C4B810F4CBCCB35CFB87F8263F5786E2D80ED326CBC7F0E71A99F43BFB988B9B7A02DD21"},
}

func TestAESKWVectors(t *testing.T) {
	for _, v := range kwVectors {
		kek, _ := hex.DecodeString(v.kek)
		key, _ := hex.DecodeString(v.key)
		want, _ := hex.DecodeString(v.wrapped)
		got, err := WrapKey(kek, key)
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("WrapKey(%s, %s) = %X, %v; want %s", v.kek, v.key, got, err, v.wrapped)
		}
		back, err := UnwrapKey(kek, want)
		if err != nil || !bytes.Equal(back, key) {
			t.Errorf("UnwrapKey(%s) = %X, %v", v.wrapped, back, err)
		}
		for i := range want {
			bad := bytes.Clone(want)
			bad[i] ^= 1
			if _, err := UnwrapKey(kek, bad); !errors.Is(err, ErrUnwrap) {
				t.Fatalf("flipped byte %d: %v, want ErrUnwrap", i, err)
			}
		}
	}
}

func TestAESKWBadLengths(t *testing.T) {
	kek := make([]byte, 32)
	for _, n := range []int{0, 8, 16, 23, 25} {
		if _, err := UnwrapKey(kek, make([]byte, n)); !errors.Is(err, ErrUnwrap) {
			t.Errorf("UnwrapKey of %d bytes: %v", n, err)
		}
	}
	if _, err := WrapKey(kek, make([]byte, 15)); err == nil {
		t.Error("WrapKey of 15 bytes accepted")
	}
}

func FuzzUnwrapKey(f *testing.F) {
	w, _ := hex.DecodeString(kwVectors[2].wrapped)
	f.Add(w)
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		kek, _ := hex.DecodeString(kwVectors[2].kek)
		key, err := UnwrapKey(kek, b)
		if err != nil {
			return
		}
		again, err := WrapKey(kek, key)
		if err != nil || !bytes.Equal(again, b) {
			t.Fatalf("unwrap then wrap of %x gave %x, %v", b, again, err)
		}
	})
}
