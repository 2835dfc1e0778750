package strictjson

import (
	"encoding/base64"
	"strconv"
)

const b64Alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"

var b64Decode = func() (t [256]byte) {
	for i := range t {
		t[i] = 0xff
	}
	for i := 0; i < len(b64Alphabet); i++ {
		t[b64Alphabet[i]] = byte(i)
	}
	return t
}()

// DecodeBase64 decodes canonical padded standard base64 (RFC 4648 §4):
// the standard alphabet, '=' padding to a multiple of 4, nothing else, and
// zero bits in the unused low bits of the last symbol, so that each byte
// string has exactly one text. encoding/base64 skips "\r\n" even in Strict
// mode and atob skips spaces; either would let two texts mean one key.
// The empty string is refused: no escrowd field holds zero bytes.
// Errors give offsets, never the text.
func DecodeBase64(s string) ([]byte, error) {
	n := len(s)
	if n == 0 {
		return nil, fail(ErrBase64, "empty")
	}
	if n%4 != 0 {
		return nil, fail(ErrBase64, "length "+strconv.Itoa(n)+" is not a multiple of 4")
	}
	pad := 0
	if s[n-1] == '=' {
		pad = 1
		if s[n-2] == '=' {
			pad = 2
		}
	}
	out := make([]byte, 0, n/4*3)
	var acc uint32
	bits := 0
	for i := 0; i < n-pad; i++ {
		d := b64Decode[s[i]]
		if d == 0xff {
			return nil, failAt(ErrBase64, i, "character outside the base64 alphabet")
		}
		acc = acc<<6 | uint32(d)
		bits += 6
		if bits >= 8 {
			bits -= 8
			out = append(out, byte(acc>>bits))
			acc &= 1<<bits - 1
		}
	}
	if acc != 0 {
		return nil, failAt(ErrBase64, n-pad-1, "non-zero unused bits (not canonical)")
	}
	return out, nil
}

// EncodeBase64 is the inverse of DecodeBase64. It encodes an empty slice as
// "", which DecodeBase64 refuses: fields hold at least one byte.
func EncodeBase64(b []byte) string { return base64.StdEncoding.EncodeToString(b) }
