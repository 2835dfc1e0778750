package e2e

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/escrowd/escrowd/escrow/device"
)

// buildBinaries compiles escrowd and escrowctl as a user would run them.
func buildBinaries(t *testing.T) (escrowd, escrowctl string) {
	t.Helper()
	dir := t.TempDir()
	for _, name := range []string{"escrowd", "escrowctl"} {
		out, err := exec.Command("go", "build", "-o", filepath.Join(dir, name), "../cmd/"+name).CombinedOutput()
		if err != nil {
			t.Fatalf("go build %s: %v\n%s", name, err, out)
		}
	}
	return filepath.Join(dir, "escrowd"), filepath.Join(dir, "escrowctl")
}

func writeSecret(t *testing.T, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(p, []byte(content+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// TestStartupErrors: a wrong PIN, a missing module and a missing token each
// stop escrowd at start with an error that says which, and no PIN.
func TestStartupErrors(t *testing.T) {
	escrowd, _ := buildBinaries(t)
	vaultToken := writeSecret(t, vaultSrv.Token)
	const wrongPIN = "wrong-pin-31337"
	tests := []struct {
		name   string
		module string
		token  string
		pin    string
		want   string
	}{
		{"wrong PIN", token.Module, token.Label, wrongPIN, "PIN"},
		{"missing module", "/nonexistent/libpkcs11.so", token.Label, token.UserPIN, "module"},
		{"missing token", token.Module, "no-such-token", token.UserPIN, "no-such-token"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			cmd := exec.CommandContext(ctx, escrowd, "-listen", freeAddr(t), "-store", filepath.Join(t.TempDir(), "db"),
				"-tls-cert", filepath.Join(pki.dir, "server.crt"), "-tls-key", filepath.Join(pki.dir, "server.key"),
				"-client-ca", filepath.Join(pki.dir, "ca.crt"), "-policy", "testdata/policy.yaml",
				"-hsm-module", tt.module, "-hsm-token", tt.token, "-hsm-pin-file", writeSecret(t, tt.pin),
				"-vault-addr", vaultSrv.Addr, "-vault-token-file", vaultToken)
			out, err := cmd.CombinedOutput()
			if err == nil {
				t.Fatalf("escrowd started:\n%s", out)
			}
			if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 {
				t.Fatalf("escrowd: %v, want exit status 1\n%s", err, out)
			}
			if !strings.Contains(string(out), tt.want) {
				t.Fatalf("escrowd's error does not mention %q:\n%s", tt.want, out)
			}
			if strings.Contains(string(out), tt.pin) {
				t.Fatalf("escrowd printed the PIN:\n%s", out)
			}
			t.Logf("%s", bytes.TrimSpace(out))
		})
	}
}

// TestCLI runs escrowd and drives it with escrowctl, as `make run` prints.
func TestCLI(t *testing.T) {
	escrowd, escrowctl := buildBinaries(t)
	addr := freeAddr(t)
	var stderr syncBuffer
	policyPath := filepath.Join(t.TempDir(), "policy.yaml")
	good, err := os.ReadFile("testdata/policy.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(policyPath, good, 0o644); err != nil {
		t.Fatal(err)
	}
	d := exec.Command(escrowd, "-listen", addr, "-store", filepath.Join(t.TempDir(), "escrowd.db"),
		"-tls-cert", filepath.Join(pki.dir, "server.crt"), "-tls-key", filepath.Join(pki.dir, "server.key"),
		"-client-ca", filepath.Join(pki.dir, "ca.crt"), "-policy", policyPath,
		"-hsm-module", token.Module, "-hsm-token", token.Label, "-hsm-pin-file", filepath.Join(token.Dir, "user.pin"),
		"-vault-addr", vaultSrv.Addr, "-vault-token-file", writeSecret(t, vaultSrv.Token))
	d.Stderr = &stderr
	if err := d.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- d.Wait() }()
	t.Cleanup(func() {
		if d.ProcessState == nil {
			d.Process.Kill()
		}
	})
	// Wait until it accepts connections.
	deadline := time.Now().Add(30 * time.Second)
	for {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("escrowd did not listen:\n%s", stderr.String())
		}
		select {
		case err := <-exited:
			t.Fatalf("escrowd exited: %v\n%s", err, stderr.String())
		case <-time.After(50 * time.Millisecond):
		}
	}

	work := t.TempDir()
	run := func(who string, args []string) ([]byte, error) {
		if who != "" {
			args = append(append(args[:2:2], "-as", who), args[2:]...)
		}
		cmd := exec.Command(escrowctl, args...)
		cmd.Env = append(os.Environ(), "ESCROWD_ADDR="+addr, "ESCROWCTL_PKI="+pki.dir)
		return cmd.CombinedOutput()
	}
	ctl := func(who string, args ...string) string {
		t.Helper()
		out, err := run(who, args)
		if err != nil {
			t.Fatalf("escrowctl %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	ctlFails := func(who string, args ...string) string {
		t.Helper()
		out, err := run(who, args)
		if err == nil {
			t.Fatalf("escrowctl %s succeeded:\n%s", strings.Join(args, " "), out)
		}
		return string(out)
	}

	out := ctl("sync-backend", "group", "provision", "-group", "cli-family")
	if !strings.Contains(out, "group cli-family provisioned: escrow key v1 (ecdh-p256)") {
		t.Fatalf("provision: %s", out)
	}
	out = ctlFails("sync-backend", "group", "provision", "-group", "cli-family")
	if !strings.Contains(out, "AlreadyExists") {
		t.Fatalf("second provision: %s", out)
	}
	slotPath := filepath.Join(work, "escrow-slot.json")
	gdkPath := filepath.Join(work, "gdk")
	ctl("sync-backend", "dev", "seal-escrow", "-group", "cli-family", "-out", slotPath, "-gdk-out", gdkPath)
	out = ctl("sync-backend", "codes", "issue", "-group", "cli-family", "-user", "alice", "-escrow-slot", slotPath, "-count", "3", "-out", filepath.Join(work, "slots"))
	if !strings.Contains(out, "epoch 1: 3 unlock slots") {
		t.Fatalf("codes issue: %s", out)
	}
	out = ctlFails("alice", "codes", "reveal", "-group", "cli-family", "-user", "alice")
	if !strings.Contains(out, "-ticket is required") {
		t.Fatalf("reveal without ticket: %s", out)
	}
	out = ctl("alice", "codes", "reveal", "-group", "cli-family", "-user", "alice", "-ticket", "SUP-7")
	code := regexp.MustCompile(`[0-9A-Z]{4}-[0-9A-Z]{4}-[0-9A-Z]{4}-[0-9A-Z]{4}`).FindString(out)
	if code == "" || !strings.Contains(out, "unlock code 0 of epoch 1 for alice") || !strings.Contains(out, "2 left") {
		t.Fatalf("reveal: %s", out)
	}
	if strings.Contains(out, "dual control") {
		t.Fatalf("a reveal outside dual control spoke of it: %s", out)
	}
	slot0, err := os.ReadFile(filepath.Join(work, "slots", "unlock-1-0.json"))
	if err != nil {
		t.Fatal(err)
	}
	gdk, _ := os.ReadFile(gdkPath)
	opened, _, err := device.OpenUnlock([][]byte{slot0}, device.Want{Group: "cli-family", ID: "alice"}, code)
	if err != nil || !bytes.Equal(opened, gdk) {
		t.Fatalf("the revealed code does not open its slot: %v", err)
	}
	out = ctl("alice", "codes", "list", "-group", "cli-family", "-user", "alice")
	if !strings.Contains(out, "code 0  revealed") || !strings.Contains(out, "code 2  unrevealed") || strings.Contains(out, code) {
		t.Fatalf("codes list: %s", out)
	}
	out = ctl("carol", "group", "show", "-group", "cli-family")
	if !strings.Contains(out, "escrow v1  ecdh-p256") || !strings.Contains(out, "unlock v1  hmac-sha256") {
		t.Fatalf("group show: %s", out)
	}
	checkGroupKey(t, escrowctl, append(os.Environ(), "ESCROWD_ADDR="+addr, "ESCROWCTL_PKI="+pki.dir), "cli-family", "ecdh-p256")
	ctl("sync-backend", "group", "provision", "-group", "cli-rsa", "-suite", "rsa-oaep-sha1")
	checkGroupKey(t, escrowctl, append(os.Environ(), "ESCROWD_ADDR="+addr, "ESCROWCTL_PKI="+pki.dir), "cli-rsa", "rsa-oaep-sha1")
	out = ctl("carol", "hsm", "objects", "-o", "json")
	if !strings.Contains(out, `"label": "escrowd-kek-unlock-v1"`) {
		t.Fatalf("hsm objects: %s", out)
	}
	out = ctlFails("carol", "group", "show", "-group", "nope")
	if !strings.Contains(out, "NotFound") {
		t.Fatalf("show of an unknown group: %s", out)
	}
	out = ctlFails("sync-backend", "group", "show", "-group", "cli-family")
	if !strings.Contains(out, "PermissionDenied: sync-backend may not call GetGroup") {
		t.Fatalf("a denial's message: %s", out)
	}

	// Policy reloads: broken files are refused with file and line, and the
	// policy before them keeps serving; a good file takes effect.
	reload := func(content, wantLog string) {
		t.Helper()
		if err := os.WriteFile(policyPath, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		before := strings.Count(stderr.String(), "policy reload")
		if err := d.Process.Signal(syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		for deadline := time.Now().Add(10 * time.Second); strings.Count(stderr.String(), "policy reload") == before; {
			if time.Now().After(deadline) {
				t.Fatalf("no reload logged:\n%s", stderr.String())
			}
			time.Sleep(20 * time.Millisecond)
		}
		// SIGHUP also reloads the TLS files: the policy's line is the
		// last that speaks of the policy.
		var last string
		for _, l := range strings.Split(strings.TrimSpace(stderr.String()), "\n") {
			if strings.Contains(l, "policy reload") {
				last = l
			}
		}
		if !strings.Contains(last, wantLog) {
			t.Fatalf("reload logged %s\nwant %q", last, wantLog)
		}
	}
	syntaxError := strings.Replace(string(good), "  support:\n", "  support: [\n", 1)
	reload(syntaxError, policyPath+":")
	unknownRole := strings.Replace(string(good), "roles: [security]", "roles: [securty]", 1)
	reload(unknownRole, fmt.Sprintf(`%s:%d: identity spiffe://escrowd.test/security/carol names unknown role \"securty\"`, policyPath, lineOf(t, good, "roles: [security]}")))
	ctl("carol", "group", "show", "-group", "cli-family")
	for _, bad := range []string{syntaxError, unknownRole} {
		f := filepath.Join(work, "bad.yaml")
		os.WriteFile(f, []byte(bad), 0o644)
		if out := ctlFails("", "policy", "check", f); !strings.Contains(out, f+":") {
			t.Fatalf("policy check of a bad file: %s", out)
		}
	}
	if out := ctl("", "policy", "check", "-policy", "testdata/policy.yaml"); !strings.Contains(out, "ok") {
		t.Fatalf("policy check: %s", out)
	}
	withoutCarol := strings.Replace(string(good), `  - {id: "spiffe://escrowd.test/security/carol", name: carol, roles: [security]}`+"\n", "", 1)
	reload(withoutCarol, "policy reloaded")
	if out := ctlFails("carol", "group", "show", "-group", "cli-family"); !strings.Contains(out, "PermissionDenied: identity spiffe://escrowd.test/security/carol is not in the policy") {
		t.Fatalf("carol after her removal: %s", out)
	}

	// SIGTERM drains and exits cleanly; the log never held the code.
	if err := d.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("escrowd exit after SIGTERM: %v\n%s", err, stderr.String())
		}
	case <-time.After(20 * time.Second):
		t.Fatal("escrowd did not stop on SIGTERM")
	}
	log := stderr.String()
	for _, secret := range []string{code, strings.ReplaceAll(code, "-", ""), token.UserPIN, vaultSrv.Token} {
		if strings.Contains(log, secret) {
			t.Fatalf("escrowd's log holds a secret")
		}
	}
	if !strings.Contains(log, `"method":"/escrowd.v1.SupportService/RevealUnlockCode"`) {
		t.Fatalf("escrowd's log has no line for the reveal:\n%s", log)
	}
}

// checkGroupKey: `group key` prints a PEM that other tools read (the
// metadata as "# " lines before the block, none inside), the DER alone on
// stdout, or a JWK; an unknown -format is a usage error, exit status 2.
func checkGroupKey(t *testing.T, escrowctl string, env []string, group, suite string) {
	t.Helper()
	key := func(format ...string) (stdout []byte, stderr string, err error) {
		cmd := exec.Command(escrowctl, append([]string{"group", "key", "-as", "sync-backend", "-group", group}, format...)...)
		cmd.Env = env
		var o, e bytes.Buffer
		cmd.Stdout, cmd.Stderr = &o, &e
		err = cmd.Run()
		return o.Bytes(), e.String(), err
	}
	mustKey := func(format ...string) ([]byte, string) {
		t.Helper()
		o, e, err := key(format...)
		if err != nil {
			t.Fatalf("escrowctl group key %s: %v\n%s", strings.Join(format, " "), err, e)
		}
		return o, e
	}
	lines := "# group: " + group + "\n# key version: 1\n# suite: " + suite + "\n"

	pemOut, pemErr := mustKey()
	if again, _ := mustKey("-format", "pem"); !bytes.Equal(again, pemOut) {
		t.Fatalf("-format pem differs from the default:\n%s\n%s", again, pemOut)
	}
	block, rest := pem.Decode(pemOut)
	if !bytes.HasPrefix(pemOut, []byte(lines+"-----BEGIN PUBLIC KEY-----\n")) || block == nil || block.Type != "PUBLIC KEY" ||
		len(block.Headers) != 0 || len(rest) != 0 || pemErr != "" {
		t.Fatalf("group key: want the metadata lines, then a PUBLIC KEY block without headers:\n%s%s", pemOut, pemErr)
	}
	pub, err := x509.ParsePKIXPublicKey(block.Bytes)
	if err != nil {
		t.Fatalf("group key: the block is not PKIX: %v", err)
	}
	t.Logf("group key -group %s:\n%s", group, pemOut)

	derOut, derErr := mustKey("-format", "der")
	if !bytes.Equal(derOut, block.Bytes) || derErr != lines {
		t.Fatalf("group key -format der: stdout %x, stderr %q\nwant stdout %x, stderr %q", derOut, derErr, block.Bytes, lines)
	}
	t.Logf("group key -group %s -format der: stdout (hex) %x\nstderr:\n%s", group, derOut, derErr)

	jwkOut, jwkErr := mustKey("-format", "jwk")
	var jwk map[string]string
	if err := json.Unmarshal(jwkOut, &jwk); err != nil || jwkErr != "" {
		t.Fatalf("group key -format jwk: %v\n%s%s", err, jwkOut, jwkErr)
	}
	want := map[string]string{"kid": group + "/1", "use": "enc", "escrowd_suite": suite}
	switch pub.(type) {
	case *ecdsa.PublicKey:
		want["kty"], want["crv"], want["x"], want["y"] = "EC", "P-256", jwk["x"], jwk["y"]
		if len(jwk["x"]) != 43 || len(jwk["y"]) != 43 {
			t.Fatalf("group key -format jwk: coordinates not of 32 bytes: %s", jwkOut)
		}
	case *rsa.PublicKey:
		want["kty"], want["n"], want["e"], want["alg"] = "RSA", jwk["n"], jwk["e"], map[string]string{"rsa-oaep-sha1": "RSA-OAEP", "rsa-oaep-sha256": "RSA-OAEP-256"}[suite]
	}
	if !reflect.DeepEqual(jwk, want) {
		t.Fatalf("group key -format jwk: %s\nwant %v", jwkOut, want)
	}
	t.Logf("group key -group %s -format jwk:\n%s", group, jwkOut)

	o, e, err := key("-format", "xml")
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 2 || len(o) != 0 || !strings.Contains(e, "pem, der, jwk") {
		t.Fatalf("group key -format xml: %v, want exit status 2 naming the formats\n%s%s", err, o, e)
	}
	t.Logf("group key -group %s -format xml: %v: %s", group, err, strings.TrimSpace(e))
}

// syncBuffer is a bytes.Buffer safe for a process to write while the
// test reads.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// lineOf returns the 1-based line of the first line containing sub.
func lineOf(t *testing.T, b []byte, sub string) int {
	t.Helper()
	for i, l := range strings.Split(string(b), "\n") {
		if strings.Contains(l, sub) {
			return i + 1
		}
	}
	t.Fatalf("no line holds %q", sub)
	return 0
}
