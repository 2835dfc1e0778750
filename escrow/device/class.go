package device

import (
	"errors"

	"github.com/escrowd/escrowd/escrow/bundle"
	"github.com/escrowd/escrowd/escrow/unlockcode"
)

// openClasses names the device's errors as testdata/vectors.json and the
// browser device do.
var openClasses = []struct {
	err  error
	name string
}{
	{ErrBinding, "binding"},
	{ErrCommitment, "commitment"},
	{ErrUntrusted, "untrusted"},
	{ErrWrongKey, "wrong-key"},
	{ErrWrongSecret, "wrong-secret"},
	{ErrWrongCode, "wrong-code"},
	{ErrDamaged, "damaged"},
	{unlockcode.ErrFormat, "not-a-code"},
	{unlockcode.ErrCheck, "mistyped"},
	{ErrRecord, "record"},
}

// OpenClass returns the class name of an error of the Open functions, of
// the Keyring or of OpenRecord: "binding", "commitment", "untrusted",
// "wrong-key", "wrong-secret", "wrong-code", "damaged", "not-a-code",
// "mistyped" or "record"; for a decoding error, its bundle.Class ("syntax",
// "range", …); "" for nil and for any other error.
func OpenClass(err error) string {
	if err == nil {
		return ""
	}
	for _, c := range openClasses {
		if errors.Is(err, c.err) {
			return c.name
		}
	}
	return bundle.Class(err)
}
