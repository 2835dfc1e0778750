package backend

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"strconv"
	"strings"
	"testing"

	"github.com/escrowd/escrowd/format/strictjson"
)

func testKey(t testing.TB) string {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKIXPublicKey(&k.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	return strictjson.EncodeBase64(der)
}

// decodeCase is one body for a decoder and the words its error must hold
// ("" for success).
type decodeCase struct {
	name, body, want string
}

func runDecode(t *testing.T, decode func([]byte) error, cases []decodeCase) {
	t.Helper()
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := decode([]byte(tc.body))
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case tc.want != "" && err == nil:
				t.Fatal("accepted")
			case tc.want != "" && (!errors.Is(err, ErrBadRequest) || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("error %q, want ErrBadRequest saying %q", err, tc.want)
			}
		})
	}
}

func TestDecodeCreateAccount(t *testing.T) {
	k := testKey(t)
	body := func(acct, member, dev, sign, wrap string) string {
		return `{"account":"` + acct + `","member_key":"` + member + `","device":"` + dev + `","sign_key":"` + sign + `","wrap_key":"` + wrap + `"}`
	}
	runDecode(t, func(b []byte) error {
		r, err := decodeCreateAccount(b)
		if err == nil && (r.Account != "ann" || r.Device.ID != "ann-phone" || len(r.MemberKey) == 0) {
			t.Fatalf("decoded %+v", r)
		}
		return err
	}, []decodeCase{
		{"good", body("ann", k, "ann-phone", k, k), ""},
		{"empty", ``, "syntax"},
		{"not an object", `[]`, "body"},
		{"null", `{"account":null}`, "syntax"},
		{"unknown key", `{"account":"ann","admin":"1"}`, "unknown-key"},
		{"key in another case", strings.Replace(body("ann", k, "ann-phone", k, k), `"account"`, `"Account"`, 1), "unknown-key"},
		{"duplicate key", `{"account":"ann","account":"bob"}`, "duplicate-key"},
		{"missing account", `{"member_key":"` + k + `"}`, "account"},
		{"account with a space", body("ann smith", k, "ann-phone", k, k), "account"},
		{"account too long", body(strings.Repeat("a", 129), k, "ann-phone", k, k), "range"},
		{"account as a number", `{"account":7}`, "type"},
		{"member key not base64", body("ann", "%%%", "ann-phone", k, k), "base64"},
		{"member key not a key", body("ann", "aGVsbG8=", "ann-phone", k, k), "member_key"},
		{"sign key missing", `{"account":"ann","member_key":"` + k + `","device":"d","wrap_key":"` + k + `"}`, "sign_key"},
		{"wrap key truncated", body("ann", k, "ann-phone", k, k[:len(k)-4]), "wrap_key"},
		{"trailing garbage", body("ann", k, "ann-phone", k, k) + "x", "syntax"},
		{"non-ASCII", `{"account":"änn"}`, "syntax"},
	})
}

func TestDecodeEnrolDevice(t *testing.T) {
	k := testKey(t)
	sig := strictjson.EncodeBase64(make([]byte, 64))
	body := func(approval string) string {
		return `{"account":"ann","device":"ann-laptop","sign_key":"` + k + `","wrap_key":"` + k + `","approver":"ann-phone","approval":"` + approval + `"}`
	}
	runDecode(t, func(b []byte) error { _, err := decodeEnrolDevice(b); return err }, []decodeCase{
		{"good", body(sig), ""},
		{"short approval", body(strictjson.EncodeBase64(make([]byte, 63))), "approval"},
		{"DER-length approval", body(strictjson.EncodeBase64(make([]byte, 72))), "approval"},
		{"no approver", `{"account":"ann","device":"d","sign_key":"` + k + `","wrap_key":"` + k + `","approval":"` + sig + `"}`, "approver"},
	})
}

func TestDecodeCreateGroup(t *testing.T) {
	runDecode(t, func(b []byte) error { _, err := decodeCreateGroup(b); return err }, []decodeCase{
		{"good", `{"group":"ann-notes"}`, ""},
		{"empty id", `{"group":""}`, "range"},
		{"control character", `{"group":"a\u0001"}`, "syntax"},
		{"extra key", `{"group":"g","owner":"bob"}`, "unknown-key"},
	})
}

func TestDecodePutBundle(t *testing.T) {
	runDecode(t, func(b []byte) error { _, err := decodePutBundle(b); return err }, []decodeCase{
		{"good", `{"version":1,"bundle":"e30="}`, ""},
		{"version 0", `{"version":0,"bundle":"e30="}`, "version"},
		{"negative version", `{"version":-1,"bundle":"e30="}`, "syntax"},
		{"version too large", `{"version":4294967296,"bundle":"e30="}`, "range"},
		{"fractional version", `{"version":1.0,"bundle":"e30="}`, "syntax"},
		{"bundle as an object", `{"version":1,"bundle":{"v":2}}`, "type"},
		{"unpadded base64", `{"version":1,"bundle":"e30"}`, "base64"},
		{"no bundle", `{"version":1}`, "missing-key"},
	})
}

func TestDecodePutRecord(t *testing.T) {
	runDecode(t, func(b []byte) error { _, err := decodePutRecord(b); return err }, []decodeCase{
		{"new record", `{"version":0,"record":"e30="}`, ""},
		{"update", `{"version":7,"record":"e30="}`, ""},
		{"empty record", `{"version":0,"record":""}`, "range"},
		{"version as a string", `{"version":"1","record":"e30="}`, "type"},
	})
}

func TestDecodeConsumed(t *testing.T) {
	runDecode(t, func(b []byte) error { _, err := decodeConsumed(b); return err }, []decodeCase{
		{"good", `{"epoch":1,"index":0}`, ""},
		{"epoch 0", `{"epoch":0,"index":0}`, "epoch"},
		{"index 32", `{"epoch":1,"index":32}`, "index"},
		{"boolean", `{"epoch":true,"index":0}`, "syntax"},
	})
}

func TestParseAfter(t *testing.T) {
	for in, want := range map[string]bool{"": true, "0": true, "17": true, "017": false, "-1": false, "+1": false, "1e3": false, "99999999999999999999": false} {
		if _, err := parseAfter(in); (err == nil) != want {
			t.Errorf("parseAfter(%q): %v", in, err)
		}
	}
}

// fuzzDecoder checks that a decoder never panics and refuses only with
// ErrBadRequest.
func fuzzDecoder(f *testing.F, decode func([]byte) error, seeds ...string) {
	for _, s := range seeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		if err := decode(b); err != nil && !errors.Is(err, ErrBadRequest) {
			t.Fatalf("error outside ErrBadRequest: %v", err)
		}
	})
}

func FuzzDecodeCreateAccount(f *testing.F) {
	k := testKey(f)
	fuzzDecoder(f, func(b []byte) error { _, err := decodeCreateAccount(b); return err },
		`{"account":"ann","member_key":"`+k+`","device":"d","sign_key":"`+k+`","wrap_key":"`+k+`"}`, `{}`)
}

func FuzzDecodeEnrolDevice(f *testing.F) {
	k := testKey(f)
	fuzzDecoder(f, func(b []byte) error { _, err := decodeEnrolDevice(b); return err },
		`{"account":"ann","device":"d","sign_key":"`+k+`","wrap_key":"`+k+`","approver":"p","approval":"`+strictjson.EncodeBase64(make([]byte, 64))+`"}`)
}

func FuzzDecodeCreateGroup(f *testing.F) {
	fuzzDecoder(f, func(b []byte) error { _, err := decodeCreateGroup(b); return err }, `{"group":"g"}`)
}

func FuzzDecodePutBundle(f *testing.F) {
	fuzzDecoder(f, func(b []byte) error { _, err := decodePutBundle(b); return err }, `{"version":1,"bundle":"e30="}`)
}

func FuzzDecodePutRecord(f *testing.F) {
	fuzzDecoder(f, func(b []byte) error { _, err := decodePutRecord(b); return err }, `{"version":0,"record":"e30="}`)
}

func FuzzDecodeConsumed(f *testing.F) {
	fuzzDecoder(f, func(b []byte) error { _, err := decodeConsumed(b); return err }, `{"epoch":1,"index":0}`)
}

func TestParseID(t *testing.T) {
	for in, ok := range map[string]bool{"note-1": true, "": false, "a b": false, "a\x00": false, strings.Repeat("x", 128): true, strings.Repeat("x", 129): false, "é": false} {
		if _, err := parseID("record", in); (err == nil) != ok || err != nil && !errors.Is(err, ErrBadRequest) {
			t.Errorf("parseID(%q): %v", in, err)
		}
	}
}

func FuzzParseAfter(f *testing.F) {
	for _, s := range []string{"", "0", "17", "-1", "1e3"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n, err := parseAfter(s)
		if err != nil {
			if !errors.Is(err, ErrBadRequest) {
				t.Fatalf("error outside ErrBadRequest: %v", err)
			}
			return
		}
		if s != "" && strconv.FormatUint(n, 10) != s {
			t.Fatalf("%q read as %d", s, n)
		}
	})
}

func FuzzParseID(f *testing.F) {
	for _, s := range []string{"note-1", "", "a b"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		id, err := parseID("id", s)
		if err != nil {
			if !errors.Is(err, ErrBadRequest) {
				t.Fatalf("error outside ErrBadRequest: %v", err)
			}
			return
		}
		for _, c := range []byte(id) {
			if c < 0x21 || c > 0x7e {
				t.Fatalf("accepted %q", id)
			}
		}
	})
}
