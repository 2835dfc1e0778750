// Package unlockcode formats, parses and derives keys from unlock codes: the
// single-use secrets a support technician reads to a user over the phone.
//
// A code (format v2) is 16 symbols of Crockford's base32 alphabet, shown in
// four groups of four: "3K2M-9QXD-4HRT-W6PN". The first symbol is the
// code's index within its epoch, in clear, so a device knows which unlock
// slot a typed code is for and runs one PBKDF2 per attempt instead of one
// per slot. The next 14 symbols are 70 bits of an HMAC computed in the HSM;
// the last is a Damm check symbol over GF(32), which catches every single
// wrong symbol and every swap of two neighbouring symbols before any PBKDF2
// runs, so a misheard code costs the user no time.
//
// The alphabet has no I, L, O or U, and parsing reads i and l as 1 and o as
// 0, so what a person hears is what they type. Normalisation (Parse) is
// exactly specified, down to which dashes and spaces are ignored, because
// the browser device must derive the same slot key from the same keystrokes.
//
// The slot key is PBKDF2-HMAC-SHA256 of the 15 symbols before the check
// symbol, with at least 2^16 iterations, so opening an unlock slot offline
// costs 2^70 guesses × 2^16 iterations = 2^86 PBKDF2 iterations. The index
// symbol adds nothing for an attacker: the slot names its index anyway.
package unlockcode

import (
	"crypto/pbkdf2"
	"crypto/sha256"
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"
)

const (
	// Symbols is the length of a code as typed, check symbol included.
	Symbols = 16
	// DataBits is the code's entropy: 14 symbols of HSM output. It, with
	// the iteration floor, sets the cost of an offline attack on a slot.
	DataBits = 70
	// MaxIndex is the largest index symbol 0 can carry. The daemon issues
	// at most 20 codes per epoch, well inside it.
	MaxIndex = 31
	// MinMaterial is how many bytes of HSM output hold DataBits.
	MinMaterial = (DataBits + 7) / 8
	// MinIterations is the PBKDF2 floor DeriveKey holds to: below it the
	// attack cost drops under 2^80 (70 + 16 = 86 bits of work at the floor).
	MinIterations = 1 << 16

	secretLen  = Symbols - 1 // symbols 0..14: index and data, no check
	dataSyms   = DataBits / 5
	groupSize  = 4
	alphabet   = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
	keyLen     = 32
	notInTable = 0xff
)

var (
	// ErrFormat: the input is not the shape of a code (length, characters).
	// A device tells the user it is not a code at all.
	ErrFormat = errors.New("not an unlock code")
	// ErrCheck: the shape is right but the check symbol does not match, so a
	// symbol was misheard or two were swapped. A device asks the user to
	// check the code with support, rather than saying the code is wrong.
	ErrCheck = errors.New("unlock code check failed: a character is wrong or two are swapped")
)

// decode maps an upper-case ASCII byte to its symbol value, with the
// look-alikes I, L → 1 and O → 0 folded in, so a person who hears "one" or
// "oh" can type either.
var decode = func() (t [128]byte) {
	for i := range t {
		t[i] = notInTable
	}
	for v, ch := range []byte(alphabet) {
		t[ch] = byte(v)
	}
	t['I'], t['L'], t['O'] = 1, 1, 0
	return t
}()

// Code is a parsed unlock code: its index symbol and data symbols, without
// the check symbol. It is a secret: String formats it for reading aloud;
// never log it.
type Code struct {
	sym [secretLen]byte // symbol values 0..31: index, then 14 data symbols
}

// FromMaterial builds the code of the given index from HSM output, taking
// the first DataBits bits (most significant first). The index is put in
// clear so the device can pick the slot; it must fit one symbol.
func FromMaterial(index uint32, material []byte) (Code, error) {
	var c Code
	if index > MaxIndex {
		return c, fmt.Errorf("unlock code index %d is above %d", index, MaxIndex)
	}
	if len(material) < MinMaterial {
		return c, fmt.Errorf("unlock code needs %d bytes of key material, got %d", MinMaterial, len(material))
	}
	c.sym[0] = byte(index)
	for i := range dataSyms {
		bit := i * 5
		// Read the 16 bits spanning the 5 we want; the last symbol lies
		// within material[8], which may be the last byte.
		w := uint16(material[bit/8]) << 8
		if bit/8+1 < len(material) {
			w |= uint16(material[bit/8+1])
		}
		c.sym[1+i] = byte(w>>(11-bit%8)) & 31
	}
	return c, nil
}

// isSeparator reports whether r is one of the spaces and dashes a person
// may type, or a phone, PDF or chat client may substitute, between
// symbols. The set is closed and normative (docs/FORMAT.md), so that Go
// and the browser device agree; anything else is refused rather than
// guessed at, because a guess could turn a typo into a different slot key.
func isSeparator(r rune) bool {
	switch r {
	case '\t', ' ', '\u00a0', '\u2007', '\u202f', '\u3000', // spaces
		'-', '\u2010', '\u2011', '\u2012', '\u2013', '\u2014', '\u2015', // dashes
		'\u2212', '\ufe58', '\ufe63', '\uff0d':
		return true
	}
	return false
}

// Parse reads a code as a person types it. Separators (isSeparator) are
// dropped anywhere, ASCII letters of either case are accepted, and I and
// L read as 1, O as 0: all of this happens before the check symbol and the
// key derivation, so every typing of a code opens the same slot. Nothing
// outside ASCII is case-folded or mapped: a fullwidth or Kelvin letter is
// refused, so the browser, whose toUpperCase would map more, cannot
// disagree with Go. Errors wrap ErrFormat or ErrCheck and give positions
// and counts, never the input, which is a secret.
func Parse(typed string) (Code, error) {
	var c Code
	var sym [Symbols]byte
	defer clear(sym[:])
	n, pos := 0, 0
	for i := 0; i < len(typed); {
		r, size := utf8.DecodeRuneInString(typed[i:])
		i += size
		pos++
		if r == utf8.RuneError && size == 1 {
			return c, fmt.Errorf("%w: character %d is not valid UTF-8", ErrFormat, pos)
		}
		if isSeparator(r) {
			continue
		}
		if r >= 'a' && r <= 'z' {
			r -= 'a' - 'A'
		}
		if r >= utf8.RuneSelf || decode[r] == notInTable {
			return c, fmt.Errorf("%w: character %d is not a letter or digit of the code alphabet", ErrFormat, pos)
		}
		if n == Symbols {
			return c, fmt.Errorf("%w: more than %d letters and digits", ErrFormat, Symbols)
		}
		sym[n] = decode[r]
		n++
	}
	if n != Symbols {
		return c, fmt.Errorf("%w: %d letters and digits, want %d", ErrFormat, n, Symbols)
	}
	if damm(sym[:]) != 0 {
		return c, ErrCheck
	}
	copy(c.sym[:], sym[:])
	return c, nil
}

// Index is the code's position in its epoch; a device opens the unlock
// slot whose index equals it, so a typed code costs one PBKDF2.
func (c Code) Index() uint32 { return uint32(c.sym[0]) }

// String returns the code in groups of four, check symbol last: the one
// form support reads out and the daemon returns.
func (c Code) String() string {
	var sym [Symbols]byte
	copy(sym[:], c.sym[:])
	sym[Symbols-1] = checkSymbol(c.sym[:])
	var b strings.Builder
	b.Grow(Symbols + Symbols/groupSize - 1)
	for i, v := range sym {
		if i > 0 && i%groupSize == 0 {
			b.WriteByte('-')
		}
		b.WriteByte(alphabet[v])
	}
	clear(sym[:])
	return b.String()
}

// Secret is the PBKDF2 password of the code's slot: symbols 0..14 in
// canonical upper-case ASCII, index included (it costs nothing and binds
// the key to the slot), separators and check symbol excluded (the check
// symbol is a function of the rest). The caller clears it.
func (c Code) Secret() []byte {
	out := make([]byte, secretLen)
	for i, v := range c.sym {
		out[i] = alphabet[v]
	}
	return out
}

// Clear overwrites the code.
func (c *Code) Clear() { clear(c.sym[:]) }

// DeriveKey returns the AES-256 key that wraps the code's unlock slot. It
// refuses fewer than MinIterations, because 70 bits alone is not enough
// against an offline attack on a stolen bundle.
func (c Code) DeriveKey(salt []byte, iterations int) ([]byte, error) {
	if iterations < MinIterations {
		return nil, fmt.Errorf("unlock slot key: %d PBKDF2 iterations, want at least %d", iterations, MinIterations)
	}
	secret := c.Secret()
	defer clear(secret)
	return pbkdf2.Key(sha256.New, string(secret), salt, iterations, keyLen)
}

// checkSymbol returns the symbol that makes damm of the whole sequence 0.
func checkSymbol(sym []byte) byte {
	return mulX(damm(sym))
}

// damm runs the Damm algorithm over GF(32) = GF(2)[x]/(x^5+x^2+1), with the
// quasigroup a∘b = x·a ⊕ b, which is weakly totally anti-symmetric because
// x ≠ 1: that is what makes every adjacent swap detectable. A sequence that
// ends in its check symbol gives 0.
func damm(sym []byte) byte {
	var acc byte
	for _, s := range sym {
		acc = mulX(acc) ^ s
	}
	return acc
}

// mulX multiplies by x in GF(32) = GF(2)[x]/(x^5+x^2+1).
func mulX(a byte) byte {
	a <<= 1
	if a&32 != 0 {
		a ^= 0b100101
	}
	return a
}
