// Package unlockcode formats, parses and derives keys from unlock codes: the
// single-use secrets a support technician reads to a user over the phone.
//
// A code is 15 data symbols (75 bits) and one check symbol from Crockford's
// base32 alphabet, shown in four groups of four: "7K2M-9QXD-4HRT-W6P1".
// The alphabet has no I, L, O or U, and parsing reads i and l as 1 and o as
// 0, so what a person hears is what they type. The check symbol is the Damm
// algorithm over GF(32): it catches every single wrong symbol and every swap
// of two neighbouring symbols.
//
// The slot key is PBKDF2-HMAC-SHA256 of the 15 data symbols with at least
// 2^16 iterations, so opening an unlock slot offline costs at least 2^75
// guesses × 2^16 iterations = 2^91 PBKDF2 iterations.
package unlockcode

import (
	"crypto/pbkdf2"
	"crypto/sha256"
	"errors"
	"fmt"
	"strings"
)

const (
	// DataSymbols carry the code's entropy: 15 × 5 = 75 bits.
	DataSymbols = 15
	// EntropyBits is the code's entropy.
	EntropyBits = DataSymbols * 5
	// MinMaterial is how many bytes of HSM output a code needs.
	MinMaterial = 10
	groupSize   = 4
	alphabet    = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
)

var (
	// ErrFormat: the input is not the shape of a code (length, characters).
	ErrFormat = errors.New("not an unlock code")
	// ErrCheck: the shape is right but the check symbol does not match, so a
	// symbol was misheard or two were swapped.
	ErrCheck = errors.New("unlock code check failed: a character is wrong or two are swapped")
)

// Code is a parsed unlock code: its data symbols without the check symbol.
// String formats it for reading aloud; never log it.
type Code struct {
	data [DataSymbols]byte // symbol values 0..31
}

// FromMaterial builds a code from at least 10 bytes of HSM output, taking
// the first 75 bits.
func FromMaterial(material []byte) (Code, error) {
	var c Code
	if len(material) < MinMaterial {
		return c, fmt.Errorf("unlock code needs %d bytes of key material, got %d", MinMaterial, len(material))
	}
	for i := range DataSymbols {
		bit := i * 5
		// Read 16 bits spanning the 5 we want (the last symbol stays within
		// material[9]).
		hi := uint16(material[bit/8]) << 8
		if bit/8+1 < len(material) {
			hi |= uint16(material[bit/8+1])
		}
		c.data[i] = byte(hi>>(11-bit%8)) & 31
	}
	return c, nil
}

// Parse reads a code as a person types it: any case, with or without
// dashes or spaces, I/L for 1 and O for 0.
func Parse(s string) (Code, error) {
	var c Code
	var sym []byte
	for i := 0; i < len(s); i++ {
		ch := s[i]
		switch {
		case ch == '-' || ch == ' ':
			continue
		case ch >= 'a' && ch <= 'z':
			ch -= 'a' - 'A'
		}
		switch ch {
		case 'I', 'L':
			ch = '1'
		case 'O':
			ch = '0'
		}
		v := strings.IndexByte(alphabet, ch)
		if v < 0 {
			return c, fmt.Errorf("%w: character %d is not in the code alphabet", ErrFormat, i+1)
		}
		if len(sym) == DataSymbols+1 {
			return c, fmt.Errorf("%w: more than %d characters", ErrFormat, DataSymbols+1)
		}
		sym = append(sym, byte(v))
	}
	if len(sym) != DataSymbols+1 {
		return c, fmt.Errorf("%w: %d characters, want %d", ErrFormat, len(sym), DataSymbols+1)
	}
	if damm(sym) != 0 {
		return c, ErrCheck
	}
	copy(c.data[:], sym)
	return c, nil
}

// String returns the code in groups of four, check symbol last.
func (c Code) String() string {
	sym := append(c.data[:], checkSymbol(c.data[:]))
	var b strings.Builder
	for i, v := range sym {
		if i > 0 && i%groupSize == 0 {
			b.WriteByte('-')
		}
		b.WriteByte(alphabet[v])
	}
	return b.String()
}

// Secret is the string a slot key is derived from: the data symbols in
// canonical form, without dashes or check symbol.
func (c Code) Secret() []byte {
	out := make([]byte, DataSymbols)
	for i, v := range c.data {
		out[i] = alphabet[v]
	}
	return out
}

// Clear overwrites the code.
func (c *Code) Clear() { clear(c.data[:]) }

// DeriveKey returns the AES-256 key that wraps the code's unlock slot.
func (c Code) DeriveKey(salt []byte, iterations int) ([]byte, error) {
	secret := c.Secret()
	defer clear(secret)
	return pbkdf2.Key(sha256.New, string(secret), salt, iterations, 32)
}

// checkSymbol returns the symbol that makes damm of the whole sequence 0.
func checkSymbol(data []byte) byte {
	return damm(append(data[:len(data):len(data)], 0))
}

// damm runs the Damm algorithm over GF(32) = GF(2)[x]/(x^5+x^2+1), with the
// quasigroup a∘b = x·a + b, which is weakly totally anti-symmetric because
// x ≠ 1. A sequence that ends in its check symbol gives 0.
func damm(sym []byte) byte {
	var acc byte
	for _, s := range sym {
		acc <<= 1
		if acc&32 != 0 {
			acc ^= 0b100101
		}
		acc ^= s
	}
	return acc
}
