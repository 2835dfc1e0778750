// Package softhsm makes SoftHSM 2 tokens for tests and `make run`: a
// softhsm2.conf in a directory of its own, a token with random PINs and a
// master KEK made through the hsm package's setup helpers.
//
// SoftHSM reads its configuration file, named by $SOFTHSM2_CONF, once, when
// the module is initialised (C_Initialize). One process therefore works
// with one configuration and one token directory: New sets SOFTHSM2_CONF
// for the process when it is unset, and refuses a directory whose conf is
// not the one already in force. Several tokens (different labels) may share
// one directory.
//
// Development only: the PINs are stored next to the tokens, in user.pin and
// so.pin (mode 0600), so that `make run` can restart on the same token.
// The master KEK is a private object, which SoftHSM encrypts under a key
// derived from the PINs; with the PIN files beside it, anyone who can read
// the directory holds the keys all the same.
package softhsm

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/escrowd/escrowd/hsm"
)

// EnvModule names an environment variable that overrides the module path.
const EnvModule = "ESCROWD_SOFTHSM_MODULE"

// EnvConf is the variable SoftHSM reads its configuration file path from.
const EnvConf = "SOFTHSM2_CONF"

// ErrNotInstalled: no SoftHSM module was found.
var ErrNotInstalled = errors.New("SoftHSM 2 is not installed: run `make deps` (apt-get install softhsm2)")

// ErrConfConflict: SOFTHSM2_CONF already names another configuration.
var ErrConfConflict = errors.New("SOFTHSM2_CONF names another configuration")

// modulePaths are where Debian, Ubuntu, Fedora and Homebrew put the module.
var modulePaths = []string{
	"/usr/lib/softhsm/libsofthsm2.so",
	"/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
	"/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
	"/usr/lib64/pkcs11/libsofthsm2.so",
	"/usr/lib/pkcs11/libsofthsm2.so",
	"/usr/local/lib/softhsm/libsofthsm2.so",
	"/opt/homebrew/lib/softhsm/libsofthsm2.so",
}

// Module returns the path of the SoftHSM 2 PKCS#11 module: $ESCROWD_SOFTHSM_MODULE
// if set (it must exist), else the first standard path that exists.
func Module() (string, error) {
	if p := os.Getenv(EnvModule); p != "" {
		if _, err := os.Stat(p); err != nil {
			return "", fmt.Errorf("softhsm: $%s=%q: %w", EnvModule, p, ErrNotInstalled)
		}
		return p, nil
	}
	for _, p := range modulePaths {
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("softhsm: looked in %s: %w", strings.Join(modulePaths, ", "), ErrNotInstalled)
}

// Token is a SoftHSM token ready for hsm.Open.
type Token struct {
	Dir      string // directory holding softhsm2.conf, tokens/ and the PIN files
	ConfPath string // Dir/softhsm2.conf
	Module   string // path of libsofthsm2.so
	Label    string // token label
	UserPIN  string
	SOPIN    string
	KEKLabel string // base label of the master KEK (hsm.DefaultKEKLabel)
}

// String omits the PINs.
func (t *Token) String() string {
	return fmt.Sprintf("softhsm.Token{Dir:%q Label:%q Module:%q}", t.Dir, t.Label, t.Module)
}

// GoString omits the PINs.
func (t *Token) GoString() string { return t.String() }

// HSMConfig returns the configuration that opens this token.
func (t *Token) HSMConfig() hsm.Config {
	return hsm.Config{Module: t.Module, TokenLabel: t.Label, PIN: t.UserPIN, KEKLabel: t.KEKLabel}
}

// New returns the token labelled label in dir, creating dir/softhsm2.conf,
// dir/tokens, the PIN files, the token and its master KEK as needed. If
// dir already has a token with that label (a restart of `make run`), it is
// reused with the stored PINs.
func New(dir, label string) (*Token, error) {
	if label == "" {
		return nil, errors.New("softhsm: empty token label")
	}
	mod, err := Module()
	if err != nil {
		return nil, err
	}
	dir, err = filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("softhsm: %w", err)
	}
	t := &Token{Dir: dir, ConfPath: filepath.Join(dir, "softhsm2.conf"), Module: mod, Label: label, KEKLabel: hsm.DefaultKEKLabel}
	if err := t.writeConf(); err != nil {
		return nil, err
	}
	if t.UserPIN, err = pin(filepath.Join(dir, "user.pin")); err != nil {
		return nil, err
	}
	if t.SOPIN, err = pin(filepath.Join(dir, "so.pin")); err != nil {
		return nil, err
	}
	exists, err := hsm.TokenExists(mod, label)
	if err != nil {
		return nil, fmt.Errorf("softhsm: %w", err)
	}
	if !exists {
		if err := hsm.InitToken(mod, label, t.SOPIN, t.UserPIN); err != nil {
			return nil, fmt.Errorf("softhsm: %w", err)
		}
	}
	// On reuse the KEK is normally there already; a token left without one
	// (a crash between the two steps) gets it now.
	_, err = hsm.InitKEK(mod, label, t.SOPIN, t.UserPIN, t.KEKLabel)
	switch {
	case err == nil:
	case exists && errors.Is(err, hsm.ErrKEKExists):
	default:
		return nil, fmt.Errorf("softhsm: %w", err)
	}
	return t, nil
}

// writeConf writes dir/softhsm2.conf (unless present) and points
// SOFTHSM2_CONF at it, or fails if SOFTHSM2_CONF names another file.
func (t *Token) writeConf() error {
	if cur := os.Getenv(EnvConf); cur != "" && filepath.Clean(cur) != t.ConfPath {
		return fmt.Errorf("softhsm: %w: %s=%q, not %q; SoftHSM reads one configuration per process at C_Initialize", ErrConfConflict, EnvConf, cur, t.ConfPath)
	}
	tokens := filepath.Join(t.Dir, "tokens")
	if err := os.MkdirAll(tokens, 0o700); err != nil {
		return fmt.Errorf("softhsm: %w", err)
	}
	conf := fmt.Sprintf("# written by escrowd/softhsm: development and tests only\n"+
		"directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n", tokens)
	if old, err := os.ReadFile(t.ConfPath); err != nil || string(old) != conf {
		if err := os.WriteFile(t.ConfPath, []byte(conf), 0o600); err != nil {
			return fmt.Errorf("softhsm: %w", err)
		}
	}
	return os.Setenv(EnvConf, t.ConfPath)
}

// pin reads a PIN file, or creates it with a random PIN (mode 0600).
func pin(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err == nil {
		p := strings.TrimSpace(string(b))
		if p == "" {
			return "", fmt.Errorf("softhsm: %s is empty", path)
		}
		return p, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("softhsm: %w", err)
	}
	var r [16]byte
	if _, err := rand.Read(r[:]); err != nil {
		return "", fmt.Errorf("softhsm: %w", err)
	}
	p := hex.EncodeToString(r[:])
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return "", fmt.Errorf("softhsm: %w", err)
	}
	if _, err := f.WriteString(p + "\n"); err != nil {
		f.Close()
		return "", fmt.Errorf("softhsm: %w", err)
	}
	if err := f.Close(); err != nil {
		return "", fmt.Errorf("softhsm: %w", err)
	}
	return p, nil
}
