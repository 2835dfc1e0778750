package strictjson

import (
	"errors"
	"strconv"
)

// ErrMalformed is wrapped by every error this package returns, so a format
// decoder can map "the input is bad" to one outcome without listing
// classes, and still tell the classes apart with errors.Is or Class.
var ErrMalformed = errors.New("strictjson: malformed input")

// One sentinel per error class. The class names are shared with
// clients/web/src/strictjson.ts and pinned by testdata/vectors.json: Go and JavaScript
// must refuse the same inputs for the same reason.
var (
	ErrSyntax       error = &class{"syntax"}
	ErrDuplicateKey error = &class{"duplicate-key"}
	ErrUnknownKey   error = &class{"unknown-key"}
	ErrMissingKey   error = &class{"missing-key"}
	ErrType         error = &class{"type"}
	ErrRange        error = &class{"range"}
	ErrBase64       error = &class{"base64"}
)

type class struct{ name string }

func (c *class) Error() string { return "strictjson: " + c.name }
func (c *class) Unwrap() error { return ErrMalformed }

// Class returns the class name of an error from this package ("syntax",
// "duplicate-key", "unknown-key", "missing-key", "type", "range",
// "base64"), or "" for any other error and for nil.
func Class(err error) string {
	var c *class
	if errors.As(err, &c) {
		return c.name
	}
	return ""
}

// failure is a classified error with a message for people. Messages name
// offsets and keys, never the content of a string value: values may be
// secrets (wrapped keys, salts) and errors end up in logs.
type failure struct {
	class *class
	msg   string
}

func (f *failure) Error() string { return "strictjson: " + f.class.name + ": " + f.msg }
func (f *failure) Unwrap() error { return f.class }

func fail(c error, msg string) error { return &failure{c.(*class), msg} }

func failAt(c error, off int, msg string) error {
	return fail(c, msg+" at offset "+strconv.Itoa(off))
}

// quoteKey renders an object key for a message. Keys are names, not
// secrets, but they come from the input, so only a short prefix is shown.
func quoteKey(k string) string {
	const max = 32
	if len(k) > max {
		return strconv.Quote(k[:max]) + "..."
	}
	return strconv.Quote(k)
}
