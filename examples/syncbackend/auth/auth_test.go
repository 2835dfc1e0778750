package auth

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"
)

func key(t testing.TB) (*ecdsa.PrivateKey, []byte) {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKIXPublicKey(&k.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	return k, der
}

func TestSignVerify(t *testing.T) {
	k, pub := key(t)
	body := []byte(`{"a":1}`)
	req := httptest.NewRequest("PUT", "/v1/groups/g/records/n1?x=1", bytes.NewReader(body))
	now := time.Unix(1_700_000_000, 0)
	if err := Sign(req, body, "ann-phone", k, now); err != nil {
		t.Fatal(err)
	}
	h, err := ParseHeaders(req.Header)
	if err != nil {
		t.Fatal(err)
	}
	if h.Device != "ann-phone" || h.Time != now.Unix() {
		t.Fatalf("headers %+v", h)
	}
	msg := Message("PUT", "/v1/groups/g/records/n1?x=1", h.Device, h.Time, h.Nonce, body)
	if err := Verify(pub, msg, h.Signature); err != nil {
		t.Fatal(err)
	}
	// Each part of the message is covered.
	for name, m := range map[string][]byte{
		"method": Message("POST", "/v1/groups/g/records/n1?x=1", h.Device, h.Time, h.Nonce, body),
		"path":   Message("PUT", "/v1/groups/g/records/n2?x=1", h.Device, h.Time, h.Nonce, body),
		"query":  Message("PUT", "/v1/groups/g/records/n1", h.Device, h.Time, h.Nonce, body),
		"device": Message("PUT", "/v1/groups/g/records/n1?x=1", "ann-laptop", h.Time, h.Nonce, body),
		"time":   Message("PUT", "/v1/groups/g/records/n1?x=1", h.Device, h.Time+1, h.Nonce, body),
		"nonce":  Message("PUT", "/v1/groups/g/records/n1?x=1", h.Device, h.Time, "AAAAAAAAAAAAAAAAAAAAAA", body),
		"body":   Message("PUT", "/v1/groups/g/records/n1?x=1", h.Device, h.Time, h.Nonce, []byte(`{"a":2}`)),
	} {
		if err := Verify(pub, m, h.Signature); !errors.Is(err, ErrSignature) {
			t.Errorf("a changed %s verifies: %v", name, err)
		}
	}
	_, other := key(t)
	if err := Verify(other, msg, h.Signature); !errors.Is(err, ErrSignature) {
		t.Errorf("another key verifies: %v", err)
	}
}

func TestParseHeaders(t *testing.T) {
	good := map[string]string{
		HeaderDevice:    "ann-phone",
		HeaderTime:      "1700000000",
		HeaderNonce:     "AAECAwQFBgcICQoLDA0ODw",
		HeaderSignature: strings.Repeat("A", 86),
	}
	for _, tc := range []struct {
		name   string
		change map[string]string
		want   error
	}{
		{"good", nil, nil},
		{"no device", map[string]string{HeaderDevice: ""}, ErrMissing},
		{"device with a space", map[string]string{HeaderDevice: "ann phone"}, ErrMalformed},
		{"device too long", map[string]string{HeaderDevice: strings.Repeat("d", 129)}, ErrMalformed},
		{"no time", map[string]string{HeaderTime: ""}, ErrMissing},
		{"time with a sign", map[string]string{HeaderTime: "+1700000000"}, ErrMalformed},
		{"time with a leading zero", map[string]string{HeaderTime: "01700000000"}, ErrMalformed},
		{"negative time", map[string]string{HeaderTime: "-1"}, ErrMalformed},
		{"time in ms overflowing", map[string]string{HeaderTime: "99999999999999999999"}, ErrMalformed},
		{"no nonce", map[string]string{HeaderNonce: ""}, ErrMissing},
		{"short nonce", map[string]string{HeaderNonce: "AAECAwQFBgcICQoLDA0O"}, ErrMalformed},
		{"padded nonce", map[string]string{HeaderNonce: "AAECAwQFBgcICQoLDA0ODw=="}, ErrMalformed},
		{"std base64 nonce", map[string]string{HeaderNonce: "AAECAwQFBgcICQoLDA0O+w"}, ErrMalformed},
		{"no signature", map[string]string{HeaderSignature: ""}, ErrMissing},
		{"short signature", map[string]string{HeaderSignature: strings.Repeat("A", 84)}, ErrMalformed},
		{"DER signature length", map[string]string{HeaderSignature: strings.Repeat("A", 96)}, ErrMalformed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := http.Header{}
			for k, v := range good {
				if c, ok := tc.change[k]; ok {
					v = c
				}
				if v != "" {
					h.Set(k, v)
				}
			}
			_, err := ParseHeaders(h)
			if tc.want == nil && err != nil || tc.want != nil && !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
		})
	}
	h := http.Header{}
	for k, v := range good {
		h.Set(k, v)
	}
	h.Add(HeaderNonce, "AAECAwQFBgcICQoLDA0ODw")
	if _, err := ParseHeaders(h); !errors.Is(err, ErrMalformed) {
		t.Fatalf("two nonces: %v", err)
	}
}

func TestParsePublicKey(t *testing.T) {
	_, pub := key(t)
	if _, err := ParsePublicKey(pub); err != nil {
		t.Fatal(err)
	}
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	der384, _ := x509.MarshalPKIXPublicKey(&p384.PublicKey)
	for name, b := range map[string][]byte{"empty": nil, "truncated": pub[:len(pub)-1], "P-384": der384, "garbage": []byte("hello")} {
		if _, err := ParsePublicKey(b); !errors.Is(err, ErrKey) {
			t.Errorf("%s: %v, want ErrKey", name, err)
		}
	}
}

func FuzzParseHeaders(f *testing.F) {
	f.Add("ann-phone", "1700000000", "AAECAwQFBgcICQoLDA0ODw", strings.Repeat("A", 86))
	f.Add("", "-1", "", "")
	f.Fuzz(func(t *testing.T, dev, ts, nonce, sig string) {
		h := http.Header{}
		h.Set(HeaderDevice, dev)
		h.Set(HeaderTime, ts)
		h.Set(HeaderNonce, nonce)
		h.Set(HeaderSignature, sig)
		got, err := ParseHeaders(h)
		if err != nil {
			if !errors.Is(err, ErrMissing) && !errors.Is(err, ErrMalformed) {
				t.Fatalf("error outside the sentinels: %v", err)
			}
			return
		}
		if len(got.Signature) != 64 || got.Device != dev || got.Time < 0 {
			t.Fatalf("accepted %+v", got)
		}
	})
}

func FuzzParsePublicKey(f *testing.F) {
	_, pub := key(f)
	f.Add(pub)
	f.Add([]byte{0x30, 0x00})
	f.Fuzz(func(t *testing.T, b []byte) {
		k, err := ParsePublicKey(b)
		if err != nil {
			if !errors.Is(err, ErrKey) {
				t.Fatalf("error outside ErrKey: %v", err)
			}
			return
		}
		if k.Curve != elliptic.P256() {
			t.Fatal("accepted another curve")
		}
	})
}

// TestWebCryptoVector verifies a request signed by WebCrypto (Node's, by
// testdata/webcrypto.mjs): what a browser device sends, the backend
// accepts, and a changed body it refuses.
func TestWebCryptoVector(t *testing.T) {
	b, err := os.ReadFile("testdata/webcrypto.json")
	if err != nil {
		t.Fatal(err)
	}
	var v struct {
		SignKey []byte            `json:"sign_key"`
		Method  string            `json:"method"`
		URI     string            `json:"uri"`
		Body    string            `json:"body"`
		Headers map[string]string `json:"headers"`
	}
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatal(err)
	}
	h := http.Header{}
	for k, val := range v.Headers {
		h.Set(k, val)
	}
	got, err := ParseHeaders(h)
	if err != nil {
		t.Fatal(err)
	}
	if err := Verify(v.SignKey, Message(v.Method, v.URI, got.Device, got.Time, got.Nonce, []byte(v.Body)), got.Signature); err != nil {
		t.Fatalf("WebCrypto's signature: %v", err)
	}
	if err := Verify(v.SignKey, Message(v.Method, v.URI, got.Device, got.Time, got.Nonce, []byte(v.Body+" ")), got.Signature); !errors.Is(err, ErrSignature) {
		t.Fatalf("WebCrypto's signature over another body: %v", err)
	}
}
