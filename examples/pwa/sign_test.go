package pwa_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/escrowd/escrowd/examples/syncbackend/auth"
	"github.com/escrowd/escrowd/examples/syncbackend/backend"
	"github.com/escrowd/escrowd/examples/syncbackend/store"
)

// noEscrowd stands in for escrowd in this test of request signing alone:
// creating an account and listing groups and notifications never call it.
type noEscrowd struct{ backend.Escrowd }

// TestSignerAgainstGoBackend runs the PWA's signer and API client in node
// against the Go sync backend: an account is created with a request the
// key it registers signed, signed reads pass, another key under the same
// device id and a changed URI are refused, and a signed request and a
// device approval verify in the Go verifier.
func TestSignerAgainstGoBackend(t *testing.T) {
	node := nodePath(t)
	script := bundleForNode(t, "test/sign_node.ts")
	st, err := store.OpenBolt(filepath.Join(t.TempDir(), "sync.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	srv, err := backend.New(backend.Config{Store: st, Escrowd: noEscrowd{}})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(srv.Handler())
	t.Cleanup(hs.Close)

	var stderr bytes.Buffer
	cmd := exec.Command(node, script, hs.URL)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("node: %v\n%s", err, stderr.String())
	}
	var got struct {
		Reloaded      bool              `json:"reloaded"`
		Extractable   *bool             `json:"extractable"`
		Create        string            `json:"create"`
		Groups        []string          `json:"groups"`
		Notifications []json.RawMessage `json:"notifications"`
		Impostor      string            `json:"impostor"`
		OtherURI      string            `json:"otherURI"`
		Vector        struct {
			SignKey []byte            `json:"sign_key"`
			Method  string            `json:"method"`
			URI     string            `json:"uri"`
			Body    string            `json:"body"`
			Headers map[string]string `json:"headers"`
		} `json:"vector"`
		Approval struct {
			Account   string `json:"account"`
			Device    string `json:"device"`
			SignKey   []byte `json:"sign_key"`
			WrapKey   []byte `json:"wrap_key"`
			Signature []byte `json:"signature"`
		} `json:"approval"`
	}
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatalf("node's output %s: %v", out, err)
	}
	if !got.Reloaded || got.Extractable == nil || *got.Extractable {
		t.Errorf("the stored key: reloaded %v, private half extractable %v", got.Reloaded, got.Extractable)
	}
	if got.Create != "ok" || got.Groups == nil || len(got.Groups) != 0 || got.Notifications == nil {
		t.Errorf("signed calls: create %q, groups %v, notifications %v", got.Create, got.Groups, got.Notifications)
	}
	if got.Impostor != "401 unauthenticated" || got.OtherURI != "401 unauthenticated" {
		t.Errorf("another key: %q, another URI: %q; want 401 unauthenticated", got.Impostor, got.OtherURI)
	}

	v := got.Vector
	h := http.Header{}
	for k, val := range v.Headers {
		h.Set(k, val)
	}
	hd, err := auth.ParseHeaders(h)
	if err != nil {
		t.Fatal(err)
	}
	if hd.Device != "ann-phone" {
		t.Errorf("device %q", hd.Device)
	}
	if err := auth.Verify(v.SignKey, auth.Message(v.Method, v.URI, hd.Device, hd.Time, hd.Nonce, []byte(v.Body)), hd.Signature); err != nil {
		t.Errorf("the PWA's signature: %v", err)
	}
	if err := auth.Verify(v.SignKey, auth.Message(v.Method, v.URI, hd.Device, hd.Time, hd.Nonce, []byte(v.Body+" ")), hd.Signature); !errors.Is(err, auth.ErrSignature) {
		t.Errorf("the PWA's signature over another body: %v", err)
	}
	a := got.Approval
	if err := auth.Verify(v.SignKey, auth.ApprovalMessage(a.Account, a.Device, a.SignKey, a.WrapKey), a.Signature); err != nil {
		t.Errorf("the PWA's approval: %v", err)
	}
	if err := auth.Verify(v.SignKey, auth.ApprovalMessage(a.Account, "ann-tablet", a.SignKey, a.WrapKey), a.Signature); !errors.Is(err, auth.ErrSignature) {
		t.Errorf("the approval for another device: %v", err)
	}
}
