// Package strictjson is the one JSON profile that escrowd's formats (the
// key bundle first) are written in. It is implemented twice, here and in
// clients/web/src/strictjson.ts, and both run testdata/vectors.json, because a slot
// must mean the same thing to the daemon and to a browser. Ordinary JSON
// decoders disagree at the edges: encoding/json matches U+212A (Kelvin
// sign) to "k" and accepts null, JSON.parse keeps the last duplicate key
// and reads 1.0 as 1, base64 decoders skip newlines and ignore trailing
// bits. The profile removes every construct where two decoders could
// differ instead of specifying how they should agree:
//
//   - input is printable ASCII plus whitespace between tokens;
//   - the top-level value is an object, followed only by whitespace;
//   - values are objects, arrays, strings and unsigned 32-bit integers
//     (no null, booleans, signs, fractions, exponents or leading zeros);
//   - strings have two escapes, \" and \\, so every string has exactly one
//     written form;
//   - keys appear once per object; nesting is at most MaxDepth deep;
//   - bytes are canonical padded standard base64 (DecodeBase64).
//
// A value that parses therefore has one canonical encoding, Encode's: the
// input with the whitespace between tokens removed.
//
// When an input breaks several rules, the class reported is fixed by
// priority, not by where a parser happens to look first: "syntax" if the
// input is not in the grammar at all, else "range" if an integer is too
// large, else "duplicate-key". The field layer (Object) then reports
// "unknown-key" before anything else and the other classes in the order
// the caller asks for fields.
package strictjson

import (
	"strconv"
)

// MaxDepth bounds the nesting of objects and arrays; the top-level object
// is depth 1. It bounds recursion (stack) for hostile input and is deeper
// than any escrowd format needs.
const MaxDepth = 8

// Kind is the JSON type of a Value. The zero Kind is invalid, so a zero
// Value is never mistaken for an empty object or a 0.
type Kind uint8

const (
	KindObject Kind = iota + 1
	KindArray
	KindString
	KindInt
)

// String returns the name used in messages and in clients/web/src/strictjson.ts.
func (k Kind) String() string {
	switch k {
	case KindObject:
		return "object"
	case KindArray:
		return "array"
	case KindString:
		return "string"
	case KindInt:
		return "int"
	}
	return "invalid"
}

// Value is a parsed JSON value. Only the field named by Kind is meaningful.
// Objects keep their members in input order, so that Encode reproduces the
// input and so that nothing depends on map iteration order.
type Value struct {
	Kind Kind
	Str  string   // KindString: the unescaped bytes
	Int  uint32   // KindInt
	Arr  []Value  // KindArray
	Obj  []Member // KindObject, in input order, keys unique
}

// Member is one key/value pair of an object.
type Member struct {
	Key string
	Val Value
}

// Parse decodes b, which must be one object in the profile. The input is
// bytes, not a Go string of runes, because the rules are about bytes: a
// non-ASCII byte anywhere is a syntax error, so no key can be a look-alike
// of another after Unicode folding.
func Parse(b []byte) (Value, error) {
	// The byte rule is checked first and over the whole input, so that
	// "syntax" wins over every other class whatever the parse order.
	for i, c := range b {
		if !allowedByte(c) {
			return Value{}, failAt(ErrSyntax, i, "byte outside printable ASCII")
		}
	}
	p := parser{b: b, rangeAt: -1, dupAt: -1}
	p.ws()
	if p.i >= len(b) || b[p.i] != '{' {
		return Value{}, failAt(ErrSyntax, p.i, "top-level value is not an object")
	}
	v, err := p.value()
	if err != nil {
		return Value{}, err
	}
	p.ws()
	if p.i != len(b) {
		return Value{}, failAt(ErrSyntax, p.i, "data after the top-level object")
	}
	if p.rangeAt >= 0 {
		return Value{}, failAt(ErrRange, p.rangeAt, "integer above 4294967295")
	}
	if p.dupAt >= 0 {
		return Value{}, failAt(ErrDuplicateKey, p.dupAt, "key "+quoteKey(p.dupKey)+" appears twice")
	}
	return v, nil
}

func allowedByte(c byte) bool {
	return c >= 0x20 && c <= 0x7e || c == '\t' || c == '\n' || c == '\r'
}

// parser is a recursive-descent parser. Syntax errors stop it at once;
// range and duplicate-key errors are remembered (the first of each) and
// reported only if the whole input is in the grammar.
type parser struct {
	b       []byte
	i       int
	depth   int
	rangeAt int
	dupAt   int
	dupKey  string
}

func (p *parser) ws() {
	for p.i < len(p.b) {
		switch p.b[p.i] {
		case ' ', '\t', '\n', '\r':
			p.i++
		default:
			return
		}
	}
}

// peek returns the next byte, or 0 at the end (0 never passes the byte
// check, so it cannot be confused with input).
func (p *parser) peek() byte {
	if p.i < len(p.b) {
		return p.b[p.i]
	}
	return 0
}

func (p *parser) value() (Value, error) {
	c := p.peek()
	switch {
	case c == '{':
		return p.object()
	case c == '[':
		return p.array()
	case c == '"':
		s, err := p.str()
		return Value{Kind: KindString, Str: s}, err
	case c >= '0' && c <= '9':
		return p.integer()
	case c == 0:
		return Value{}, failAt(ErrSyntax, p.i, "unexpected end of input")
	}
	return Value{}, failAt(ErrSyntax, p.i, "expected an object, array, string or unsigned integer")
}

func (p *parser) enter() error {
	p.depth++
	if p.depth > MaxDepth {
		return failAt(ErrSyntax, p.i, "nesting deeper than "+strconv.Itoa(MaxDepth))
	}
	p.i++ // '{' or '['
	p.ws()
	return nil
}

func (p *parser) object() (Value, error) {
	if err := p.enter(); err != nil {
		return Value{}, err
	}
	v := Value{Kind: KindObject}
	if p.peek() == '}' {
		p.i++
		p.depth--
		return v, nil
	}
	var seen map[string]struct{} // only for large objects
	for {
		if p.peek() != '"' {
			return Value{}, failAt(ErrSyntax, p.i, "expected a key string")
		}
		at := p.i
		k, err := p.str()
		if err != nil {
			return Value{}, err
		}
		if p.dupAt < 0 && hasKey(v.Obj, k, &seen) {
			p.dupAt, p.dupKey = at, k
		}
		p.ws()
		if p.peek() != ':' {
			return Value{}, failAt(ErrSyntax, p.i, "expected ':' after a key")
		}
		p.i++
		p.ws()
		val, err := p.value()
		if err != nil {
			return Value{}, err
		}
		v.Obj = append(v.Obj, Member{k, val})
		p.ws()
		switch p.peek() {
		case ',':
			p.i++
			p.ws()
			continue
		case '}':
			p.i++
			p.depth--
			return v, nil
		}
		return Value{}, failAt(ErrSyntax, p.i, "expected ',' or '}'")
	}
}

// hasKey reports whether k is among the keys of ms, which are unique so
// far. Small objects (all of escrowd's) are scanned; large ones get a set
// so that a hostile object with many keys costs linear time.
func hasKey(ms []Member, k string, seen *map[string]struct{}) bool {
	const small = 16
	if len(ms) < small {
		for _, m := range ms {
			if m.Key == k {
				return true
			}
		}
		return false
	}
	if *seen == nil {
		*seen = make(map[string]struct{}, 2*len(ms))
		for _, m := range ms {
			(*seen)[m.Key] = struct{}{}
		}
	} else {
		(*seen)[ms[len(ms)-1].Key] = struct{}{}
	}
	_, dup := (*seen)[k]
	return dup
}

func (p *parser) array() (Value, error) {
	if err := p.enter(); err != nil {
		return Value{}, err
	}
	v := Value{Kind: KindArray}
	if p.peek() == ']' {
		p.i++
		p.depth--
		return v, nil
	}
	for {
		val, err := p.value()
		if err != nil {
			return Value{}, err
		}
		v.Arr = append(v.Arr, val)
		p.ws()
		switch p.peek() {
		case ',':
			p.i++
			p.ws()
			continue
		case ']':
			p.i++
			p.depth--
			return v, nil
		}
		return Value{}, failAt(ErrSyntax, p.i, "expected ',' or ']'")
	}
}

// str reads a string token. Messages give offsets only: the content may be
// a secret.
func (p *parser) str() (string, error) {
	open := p.i
	p.i++ // '"'
	seg := p.i
	var buf []byte
	escaped := false
	for {
		c := p.peek()
		switch {
		case c == 0:
			return "", failAt(ErrSyntax, open, "unterminated string")
		case c == '"':
			p.i++
			if !escaped {
				return string(p.b[seg : p.i-1]), nil
			}
			return string(append(buf, p.b[seg:p.i-1]...)), nil
		case c == '\\':
			e := byte(0)
			if p.i+1 < len(p.b) {
				e = p.b[p.i+1]
			}
			if e != '"' && e != '\\' {
				if e == 0 {
					return "", failAt(ErrSyntax, open, "unterminated string")
				}
				return "", failAt(ErrSyntax, p.i, `escape other than \" or \\ in a string`)
			}
			buf = append(append(buf, p.b[seg:p.i]...), e)
			escaped = true
			p.i += 2
			seg = p.i
		case c < 0x20:
			return "", failAt(ErrSyntax, p.i, "control byte in a string")
		default:
			p.i++
		}
	}
}

func (p *parser) integer() (Value, error) {
	start := p.i
	for c := p.peek(); c >= '0' && c <= '9'; c = p.peek() {
		p.i++
	}
	digits := p.b[start:p.i]
	if digits[0] == '0' && len(digits) > 1 {
		return Value{}, failAt(ErrSyntax, start, "integer with a leading zero")
	}
	var n uint64
	if len(digits) <= 10 {
		n, _ = strconv.ParseUint(string(digits), 10, 64)
	}
	if len(digits) > 10 || n > 0xffffffff {
		if p.rangeAt < 0 {
			p.rangeAt = start
		}
		n = 0
	}
	return Value{Kind: KindInt, Int: uint32(n)}, nil
}

// Encode returns the canonical encoding of v: no whitespace, members in
// stored order, only the \" and \\ escapes. It refuses a value that Parse
// could not have returned (top level not an object, a string byte outside
// printable ASCII, a duplicate key, nesting deeper than MaxDepth, an
// invalid Kind), so that whatever escrowd writes, both decoders read.
func Encode(v Value) ([]byte, error) {
	if v.Kind != KindObject {
		return nil, fail(ErrSyntax, "top-level value is not an object")
	}
	return appendValue(nil, v, 1)
}

func appendValue(out []byte, v Value, depth int) ([]byte, error) {
	var err error
	switch v.Kind {
	case KindObject, KindArray:
		if depth > MaxDepth {
			return nil, fail(ErrSyntax, "nesting deeper than "+strconv.Itoa(MaxDepth))
		}
	}
	switch v.Kind {
	case KindObject:
		out = append(out, '{')
		var seen map[string]struct{}
		for i, m := range v.Obj {
			if hasKey(v.Obj[:i], m.Key, &seen) {
				return nil, fail(ErrDuplicateKey, "key "+quoteKey(m.Key)+" appears twice")
			}
			if i > 0 {
				out = append(out, ',')
			}
			if out, err = appendString(out, m.Key); err != nil {
				return nil, err
			}
			out = append(out, ':')
			if out, err = appendValue(out, m.Val, depth+1); err != nil {
				return nil, err
			}
		}
		return append(out, '}'), nil
	case KindArray:
		out = append(out, '[')
		for i, e := range v.Arr {
			if i > 0 {
				out = append(out, ',')
			}
			if out, err = appendValue(out, e, depth+1); err != nil {
				return nil, err
			}
		}
		return append(out, ']'), nil
	case KindString:
		return appendString(out, v.Str)
	case KindInt:
		return strconv.AppendUint(out, uint64(v.Int), 10), nil
	}
	return nil, fail(ErrSyntax, "value of invalid kind")
}

func appendString(out []byte, s string) ([]byte, error) {
	out = append(out, '"')
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '"' || c == '\\':
			out = append(out, '\\', c)
		case c >= 0x20 && c <= 0x7e:
			out = append(out, c)
		default:
			return nil, fail(ErrSyntax, "string byte outside printable ASCII")
		}
	}
	return append(out, '"'), nil
}
