package softhsm_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/escrowd/escrowd/hsm"
	"github.com/escrowd/escrowd/softhsm"
)

var confDir string

func TestMain(m *testing.M) {
	// A missing SoftHSM fails the tests; it never skips them.
	if _, err := softhsm.Module(); err != nil {
		fmt.Fprintln(os.Stderr, "FAIL:", err)
		os.Exit(1)
	}
	os.Unsetenv(softhsm.EnvConf)
	dir, err := os.MkdirTemp("", "escrowd-softhsm-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "FAIL:", err)
		os.Exit(1)
	}
	confDir = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func TestModule(t *testing.T) {
	p, err := softhsm.Module()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(p); err != nil {
		t.Fatal(err)
	}
	t.Setenv(softhsm.EnvModule, "/nonexistent/libsofthsm2.so")
	if _, err := softhsm.Module(); !errors.Is(err, softhsm.ErrNotInstalled) || !strings.Contains(err.Error(), "make deps") {
		t.Fatalf("bad $%s: %v", softhsm.EnvModule, err)
	}
	t.Setenv(softhsm.EnvModule, p)
	if got, err := softhsm.Module(); err != nil || got != p {
		t.Fatalf("Module() = %q, %v", got, err)
	}
}

func TestNewAndReuse(t *testing.T) {
	tok, err := softhsm.New(confDir, "reuse")
	if err != nil {
		t.Fatal(err)
	}
	if got := os.Getenv(softhsm.EnvConf); got != tok.ConfPath {
		t.Fatalf("%s = %q, want %q", softhsm.EnvConf, got, tok.ConfPath)
	}
	for _, f := range []string{"user.pin", "so.pin", "softhsm2.conf"} {
		fi, err := os.Stat(filepath.Join(confDir, f))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("%s has mode %v", f, fi.Mode().Perm())
		}
	}
	for _, s := range []string{tok.String(), fmt.Sprintf("%v %+v %#v", tok, tok, tok), tok.HSMConfig().String()} {
		if strings.Contains(s, tok.UserPIN) || strings.Contains(s, tok.SOPIN) {
			t.Fatalf("PIN printed: %s", s)
		}
	}

	ctx := context.Background()
	h, err := hsm.Open(tok.HSMConfig())
	if err != nil {
		t.Fatal(err)
	}
	k, err := h.GenerateUnlockKey(ctx)
	if err != nil {
		t.Fatal(err)
	}
	mac, err := h.HMAC(ctx, k, []byte("m"))
	if err != nil {
		t.Fatal(err)
	}
	if err := h.Close(); err != nil {
		t.Fatal(err)
	}

	// A restart: same dir and label reopen the same token and KEK.
	again, err := softhsm.New(confDir, "reuse")
	if err != nil {
		t.Fatal(err)
	}
	if again.UserPIN != tok.UserPIN || again.SOPIN != tok.SOPIN {
		t.Fatal("PINs changed on reuse")
	}
	h, err = hsm.Open(again.HSMConfig())
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	mac2, err := h.HMAC(ctx, k, []byte("m"))
	if err != nil {
		t.Fatalf("the stored unlock key does not open after reuse: %v", err)
	}
	if string(mac) != string(mac2) {
		t.Fatal("HMAC changed after reuse: not the same KEK")
	}

	// A second token in the same directory (one conf per process).
	other, err := softhsm.New(confDir, "other")
	if err != nil {
		t.Fatal(err)
	}
	h2, err := hsm.Open(other.HSMConfig())
	if err != nil {
		t.Fatal(err)
	}
	defer h2.Close()
	if _, err := h2.HMAC(ctx, k, []byte("m")); !errors.Is(err, hsm.ErrBadCiphertext) {
		t.Fatalf("another token's KEK opened the key: %v", err)
	}
}

func TestConfConflict(t *testing.T) {
	if _, err := softhsm.New(confDir, "first"); err != nil {
		t.Fatal(err)
	}
	_, err := softhsm.New(t.TempDir(), "second")
	if !errors.Is(err, softhsm.ErrConfConflict) {
		t.Fatalf("a second conf dir in one process: %v", err)
	}
	t.Log(err)
}

func ExampleNew() {
	// `make run` and tests: one directory per process.
	tok, err := softhsm.New(confDir, "example")
	if err != nil {
		fmt.Println(err)
		return
	}
	h, err := hsm.Open(tok.HSMConfig())
	if err != nil {
		fmt.Println(err)
		return
	}
	defer h.Close()
	fmt.Println(h.Healthy(context.Background()))
	// Output: <nil>
}
