package main

import (
	"crypto/ecdh"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	escrowdv1 "github.com/escrowd/escrowd/api/escrowd/v1"
)

func writeKeys(t *testing.T) (pemFile, derFile string, der []byte) {
	t.Helper()
	k, err := ecdh.P256().GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err = x509.MarshalPKIXPublicKey(k.PublicKey())
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	pemFile, derFile = filepath.Join(dir, "k.pem"), filepath.Join(dir, "k.der")
	os.WriteFile(pemFile, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), 0o600)
	os.WriteFile(derFile, der, 0o600)
	os.WriteFile(filepath.Join(dir, "cert.pem"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
	os.WriteFile(filepath.Join(dir, "broken.pem"), []byte("-----BEGIN PUBLIC KEY-----\nnot base64\n"), 0o600)
	return pemFile, derFile, der
}

func TestParseRecipient(t *testing.T) {
	pemFile, derFile, der := writeKeys(t)
	dir := filepath.Dir(pemFile)
	for _, f := range []string{pemFile, derFile} {
		r, err := parseRecipient("kind=device,id=dev-7,version=2,suite=ecdh-p256,key=" + f)
		if err != nil {
			t.Fatal(err)
		}
		if r.GetKind() != escrowdv1.Recipient_KIND_DEVICE || r.GetId() != "dev-7" || r.GetKeyVersion() != 2 || r.GetSuite() != "ecdh-p256" || string(r.GetPublicKey()) != string(der) {
			t.Fatalf("%s: %v", f, r)
		}
	}
	for _, tt := range []struct{ spec, want string }{
		{"", "not key=value"},
		{"kind=member", "id is missing"},
		{"kind=admin,id=a,version=1,suite=s,key=" + pemFile, "member or device"},
		{"kind=member,id=a,version=x,suite=s,key=" + pemFile, "not a number"},
		{"kind=member,id=a,version=99999999999,suite=s,key=" + pemFile, "not a number"},
		{"kind=member,kind=device,id=a,version=1,suite=s,key=" + pemFile, "twice"},
		{"kind=member,id=a,version=1,suite=s,colour=red,key=" + pemFile, "unknown key"},
		{"kind=member,id=a,version=1,suite=s,key=" + filepath.Join(dir, "none"), "no such file"},
		{"kind=member,id=a,version=1,suite=s,key=" + filepath.Join(dir, "cert.pem"), "not a PUBLIC KEY"},
		{"kind=member,id=a,version=1,suite=s,key=" + filepath.Join(dir, "broken.pem"), "not a readable PEM"},
		{"kind=member,id=,version=1,suite=s,key=" + pemFile, "not key=value"},
	} {
		_, err := parseRecipient(tt.spec)
		if !errors.Is(err, errUsage) || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("parseRecipient(%q): %v, want a usage error with %q", tt.spec, err, tt.want)
		}
	}
}

func FuzzParseRecipient(f *testing.F) {
	f.Add("kind=member,id=a,version=1,suite=ecdh-p256,key=/nonexistent")
	f.Add("kind=device,,")
	f.Add("=,=")
	f.Fuzz(func(t *testing.T, spec string) {
		r, err := parseRecipient(spec)
		if err == nil && (r.GetId() == "" || r.GetKind() == escrowdv1.Recipient_KIND_UNSPECIFIED || len(r.GetPublicKey()) == 0) {
			t.Fatalf("accepted %q as %v", spec, r)
		}
		if err != nil && !errors.Is(err, errUsage) {
			t.Fatalf("%q: %v is not a usage error", spec, err)
		}
	})
}

func TestReadBatch(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		os.WriteFile(p, []byte(content), 0o600)
		return p
	}
	good := write("good.jsonl", `# a comment
{"reference":"a","group_id":"g","escrow_slot":"eyJ2IjoyfQ==","escrow":{}}

{"reference":"b","groupId":"g","escrowSlot":"eyJ2IjoyfQ==","recipient":{"kind":"KIND_MEMBER","id":"m","key_version":1,"suite":"ecdh-p256","public_key":"AAAA"}}
`)
	items, err := readBatch(good)
	if err != nil || len(items) != 2 || items[0].GetEscrow() == nil || items[1].GetRecipient().GetId() != "m" || string(items[1].GetEscrowSlot()) != `{"v":2}` {
		t.Fatalf("%v %v", items, err)
	}
	for _, tt := range []struct{ content, want string }{
		{"", "holds no items"},
		{"# only a comment\n", "holds no items"},
		{`{"reference":"a"}` + "\n" + `{"colour":"red"}`, ":2: not a BatchRewrapItem"},
		{`{"escrow_slot":"not base64!"}`, ":1: not a BatchRewrapItem"},
		{`[1,2]`, ":1: not a BatchRewrapItem"},
	} {
		_, err := readBatch(write("bad.jsonl", tt.content))
		if !errors.Is(err, errUsage) || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%q: %v, want %q", tt.content, err, tt.want)
		}
	}
	if _, err := readBatch(filepath.Join(dir, "none")); err == nil {
		t.Error("a missing file was read")
	}
}
