package auth_test

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"fmt"
	"net/http"
	"time"

	"github.com/escrowd/escrowd/examples/syncbackend/auth"
)

// A device signs a request; the backend parses the headers and verifies
// the signature with the public key bound to the device at enrolment.
func ExampleSign() {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	pub, _ := x509.MarshalPKIXPublicKey(&key.PublicKey)

	body := []byte(`{"group":"ann-notes"}`)
	req, _ := http.NewRequest("POST", "https://sync.example/v1/groups", bytes.NewReader(body))
	_ = auth.Sign(req, body, "ann-phone", key, time.Now())

	h, err := auth.ParseHeaders(req.Header)
	if err != nil {
		panic(err)
	}
	msg := auth.Message(req.Method, req.URL.RequestURI(), h.Device, h.Time, h.Nonce, body)
	fmt.Println(h.Device, auth.Verify(pub, msg, h.Signature))
	// Output: ann-phone <nil>
}
