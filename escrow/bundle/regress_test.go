package bundle

import (
	"encoding/base64"
	"strings"
	"testing"
)

// TestFoldedKeys: before format v2, Go's encoding/json matched U+212A
// KELVIN SIGN as "k" and U+017F LONG S as "s", so this slot read as a
// member slot in Go and an escrow slot in JSON.parse (measured on the v1
// decoder). Every non-ASCII byte is now a syntax error, in Go and in
// clients/web/src/strictjson.ts alike.
func TestFoldedKeys(t *testing.T) {
	wrapped := base64.StdEncoding.EncodeToString(make([]byte, 384))
	for _, key := range []string{"\u212aind", "\u017fuite", "kind"} {
		in := `{"v":2,"kind":"escrow",` + `"` + key + `":"member","suite":"rsa-oaep-sha1","wrapped":"` + wrapped + `"}`
		_, err := ParseSlot([]byte(in))
		want := "syntax"
		if key == "kind" {
			want = "duplicate-key"
		}
		if Class(err) != want {
			t.Errorf("key %q: %v (class %q), want class %q", key, err, Class(err), want)
		}
		if err != nil && strings.Contains(err.Error(), wrapped[:16]) {
			t.Errorf("the error echoes the wrapped key")
		}
	}
}
