package vaulttest

import (
	"context"
	"encoding/base64"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// shared is one Vault for the tests that do not stop or restart it.
var shared *Server

func TestMain(m *testing.M) { os.Exit(RunMain(m, &shared)) }

func TestSharedServerKVv2(t *testing.T) {
	c, err := shared.Client()
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	kv := c.KVv2("secret")
	put, err := kv.Put(ctx, "vaulttest/kv", map[string]any{"v": "hello"})
	if err != nil {
		t.Fatalf("kv put: %v", err)
	}
	got, err := kv.Get(ctx, "vaulttest/kv")
	if err != nil {
		t.Fatalf("kv get: %v", err)
	}
	// The shared server outlives -count=N repetitions: the version grows.
	if got.Data["v"] != "hello" || got.VersionMetadata == nil || put.VersionMetadata == nil ||
		got.VersionMetadata.Version != put.VersionMetadata.Version || got.VersionMetadata.Version < 1 {
		t.Fatalf("kv get = %+v, want v=hello at the version written", got)
	}
}

func TestSharedServerAuditLog(t *testing.T) {
	c, err := shared.Client()
	if err != nil {
		t.Fatal(err)
	}
	const path = "vaulttest/audited"
	if _, err := c.KVv2("secret").Put(context.Background(), path, map[string]any{"v": "audited-value"}); err != nil {
		t.Fatalf("kv put: %v", err)
	}
	want, err := shared.AuditHash("audited-value")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(want, "hmac-sha256:") {
		t.Fatalf("audit hash = %q", want)
	}
	entries, err := shared.AuditEntries()
	if err != nil {
		t.Fatal(err)
	}
	var sawReq, sawResp bool
	for _, e := range entries {
		req, _ := e["request"].(map[string]any)
		if req == nil || req["path"] != "secret/data/"+path {
			continue
		}
		switch e["type"] {
		case "request":
			sawReq = true
			// A write to a new KV v2 path is a "create" (existence check).
			if op := req["operation"]; op != "create" && op != "update" {
				t.Errorf("request operation = %v, want create or update", op)
			}
			data, _ := req["data"].(map[string]any)
			inner, _ := data["data"].(map[string]any)
			if inner["v"] != want {
				t.Errorf("audited value = %v, want %s (HMAC'd, not raw)", inner["v"], want)
			}
			if tok, _ := e["auth"].(map[string]any)["client_token"].(string); tok == shared.Token || tok == "" {
				t.Errorf("audit log has client_token %q, want it HMAC'd", tok)
			}
		case "response":
			sawResp = true
		}
	}
	if !sawReq || !sawResp {
		t.Fatalf("audit log (%d entries): request entry %v, response entry %v for secret/data/%s", len(entries), sawReq, sawResp, path)
	}
}

func TestSharedServerTransit(t *testing.T) {
	c, err := shared.Client()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Logical().Write("transit/keys/vaulttest", map[string]any{"type": "aes256-gcm96"}); err != nil {
		t.Fatalf("create transit key: %v", err)
	}
	plain := base64.StdEncoding.EncodeToString([]byte("group data key"))
	enc, err := c.Logical().Write("transit/encrypt/vaulttest", map[string]any{"plaintext": plain})
	if err != nil {
		t.Fatalf("encrypt: %v", err)
	}
	ct, _ := enc.Data["ciphertext"].(string)
	if !strings.HasPrefix(ct, "vault:v1:") {
		t.Fatalf("ciphertext = %q", ct)
	}
	dec, err := c.Logical().Write("transit/decrypt/vaulttest", map[string]any{"ciphertext": ct})
	if err != nil {
		t.Fatalf("decrypt: %v", err)
	}
	if dec.Data["plaintext"] != plain {
		t.Fatalf("decrypt = %v, want %s", dec.Data["plaintext"], plain)
	}
}

func TestFiles(t *testing.T) {
	if !strings.HasPrefix(shared.Addr, "http://127.0.0.1:") {
		t.Errorf("Addr = %q", shared.Addr)
	}
	if shared.Token == "" {
		t.Error("empty Token")
	}
	fi, err := os.Stat(filepath.Join(shared.Dir, "token"))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("token file mode = %v, want 0600", fi.Mode().Perm())
	}
	log, err := os.ReadFile(shared.LogFile())
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(log), shared.Token) {
		t.Error("vaultdev's log contains the root token")
	}
}

func TestStopMakesRequestsFail(t *testing.T) {
	s := StartT(t)
	c, err := s.Client()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Sys().Health(); err != nil {
		t.Fatalf("health before Stop: %v", err)
	}
	if err := s.Stop(); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	if s.Running() {
		t.Error("Running after Stop")
	}
	start := time.Now()
	if _, err := c.KVv2("secret").Get(context.Background(), "anything"); err == nil {
		t.Fatal("request after Stop succeeded")
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("failing request took %v; want it to fail fast (no retries)", d)
	}
	if err := s.Stop(); err != nil {
		t.Fatalf("second Stop: %v", err)
	}
}

func TestRestartKeepsData(t *testing.T) {
	s := StartT(t)
	c, err := s.Client()
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := c.KVv2("secret").Put(ctx, "vaulttest/persist", map[string]any{"v": "kept"}); err != nil {
		t.Fatalf("kv put: %v", err)
	}
	if _, err := c.Logical().Write("transit/keys/persist", nil); err != nil {
		t.Fatalf("create transit key: %v", err)
	}
	addr, token := s.Addr, s.Token

	start := time.Now()
	if err := s.Restart(); err != nil {
		t.Fatalf("Restart: %v", err)
	}
	t.Logf("restart took %v", time.Since(start))
	if s.Addr != addr || s.Token != token {
		t.Fatalf("after Restart: addr %s token changed=%v, want %s and the same token", s.Addr, s.Token != token, addr)
	}
	// The old client (same address, same token) works again.
	got, err := c.KVv2("secret").Get(ctx, "vaulttest/persist")
	if err != nil {
		t.Fatalf("kv get after Restart: %v", err)
	}
	if got.Data["v"] != "kept" {
		t.Fatalf("kv get after Restart = %v, want kept", got.Data)
	}
	if sec, err := c.Logical().Read("transit/keys/persist"); err != nil || sec == nil {
		t.Fatalf("transit key after Restart: %v, %v", sec, err)
	}
	// Restart after a Stop starts it again.
	if err := s.Stop(); err != nil {
		t.Fatal(err)
	}
	if err := s.Restart(); err != nil {
		t.Fatalf("Restart after Stop: %v", err)
	}
	if _, err := c.KVv2("secret").Get(ctx, "vaulttest/persist"); err != nil {
		t.Fatalf("kv get after second Restart: %v", err)
	}
	// The audit device survives restarts and keeps appending.
	entries, err := s.AuditEntries()
	if err != nil {
		t.Fatal(err)
	}
	var gets int
	for _, e := range entries {
		req, _ := e["request"].(map[string]any)
		if e["type"] == "request" && req["path"] == "secret/data/vaulttest/persist" && req["operation"] == "read" {
			gets++
		}
	}
	if gets != 2 {
		t.Errorf("audit log has %d reads of the secret, want 2 (one per restart)", gets)
	}
}

func TestStartFailureReportsStderr(t *testing.T) {
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "data"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "data", "vaultdev-state.json"), []byte("not json"), 0o600); err != nil {
		t.Fatal(err)
	}
	s, err := Start(dir)
	if err == nil {
		s.Stop()
		t.Fatal("Start succeeded with a corrupt state file")
	}
	if !strings.Contains(err.Error(), "vaultdev-state.json") || !strings.Contains(err.Error(), "exited before it was ready") {
		t.Fatalf("error does not carry vaultdev's stderr: %v", err)
	}
	t.Logf("start failure reads: %v", err)
}

func TestBinaryFromEnv(t *testing.T) {
	t.Setenv(EnvBinary, filepath.Join(t.TempDir(), "no-such-vaultdev"))
	if _, err := Binary(); err == nil {
		t.Fatal("Binary succeeded with a missing $ESCROWD_VAULTDEV")
	}
	if _, err := Start(t.TempDir()); err == nil {
		t.Fatal("Start succeeded with a missing binary")
	}
}

func TestModulePath(t *testing.T) {
	for in, want := range map[string]string{
		"module github.com/escrowd/escrowd\n\ngo 1.26\n":               "github.com/escrowd/escrowd",
		"// x\nmodule \"github.com/escrowd/escrowd/tools/vaultdev\"\n": "github.com/escrowd/escrowd/tools/vaultdev",
		"go 1.22\n": "",
	} {
		if got := modulePath([]byte(in)); got != want {
			t.Errorf("modulePath(%q) = %q, want %q", in, got, want)
		}
	}
}
