package main

import (
	"crypto/x509"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/escrowd/escrowd/internal/config"
	"github.com/escrowd/escrowd/internal/devpki"
)

// TestLoadCRL: -client-crl is optional; a CRL of a client CA loads, and
// start-up refuses an expired one, one of another CA and an unreadable
// file, naming the setting.
func TestLoadCRL(t *testing.T) {
	ca, _ := devpki.NewCA("client CA")
	other, _ := devpki.NewCA("other CA")
	dir := t.TempDir()
	now := time.Now()
	write := func(name string, ca *devpki.CA, next time.Time) string {
		t.Helper()
		der, err := ca.CRL([]*big.Int{big.NewInt(1)}, now.Add(-2*time.Hour), next)
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, devpki.PEMCRL(der), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	cas := []*x509.Certificate{ca.Cert}
	tests := []struct {
		name, path, wantErr string
		crls                int
	}{
		{"unset", "", "", 0},
		{"good", write("good.crl", ca, now.Add(time.Hour)), "", 1},
		{"expired", write("expired.crl", ca, now.Add(-time.Hour)), "-client-crl: CRL 1", 0},
		{"another CA's", write("other.crl", other, now.Add(time.Hour)), "not signed by a client CA", 0},
		{"missing", filepath.Join(dir, "nope.crl"), "failed to read -client-crl", 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := &options{clientCRL: tt.path, from: map[string]config.Setting{}}
			r, err := loadCRL(o, cas)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil || r.Len() != tt.crls {
				t.Fatalf("%d CRLs, %v; want %d", r.Len(), err, tt.crls)
			}
		})
	}
}

// TestReloadKeepsWhatDoesNotLoad: on SIGHUP, a policy, server
// certificate, client CA bundle or CRL that does not load is logged and
// nothing is replaced (e2e TestCRLReloadRevokes, TestServerCertReloaded
// and TestClientCAReloaded show each file refused alone while the others
// reload).
func TestReloadKeepsWhatDoesNotLoad(t *testing.T) {
	core, logs := observer.New(zapcore.InfoLevel)
	dir := t.TempDir()
	// Every file missing: reload must touch nothing (the server is nil).
	o := &options{policyPath: filepath.Join(dir, "none.yaml"), tlsCert: filepath.Join(dir, "none.crt"), tlsKey: filepath.Join(dir, "none.key"),
		clientCA: filepath.Join(dir, "none-ca.crt"), clientCRL: filepath.Join(dir, "none.crl"), from: map[string]config.Setting{}}
	ca, _ := devpki.NewCA("client CA")
	cas := reload(o, nil, []*x509.Certificate{ca.Cert}, zap.New(core))
	if len(cas) != 1 || cas[0] != ca.Cert {
		t.Fatal("the CAs in force changed on a failed reload")
	}
	for _, msg := range []string{"policy reload refused", "server certificate reload refused", "client CA reload refused", "client CRL reload refused"} {
		if logs.FilterMessageSnippet(msg).Len() != 1 {
			t.Errorf("no %q logged: %v", msg, logs.All())
		}
	}
}
