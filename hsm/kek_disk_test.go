package hsm_test

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/ecdsa"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/x509"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/escrowd/escrowd/hsm"
	"github.com/escrowd/escrowd/softhsm"
)

// kwpUnwrap is RFC 5649 key unwrap (AES-KWP): what CKM_AES_KEY_WRAP_PAD
// makes. The tests use it to prove that bytes they hold are the KEK.
func kwpUnwrap(kek, c []byte) ([]byte, error) {
	b, err := aes.NewCipher(kek)
	if err != nil {
		return nil, err
	}
	if len(c)%8 != 0 || len(c) < 16 {
		return nil, errors.New("bad length")
	}
	var a uint64
	var r []byte
	if len(c) == 16 {
		var buf [16]byte
		b.Decrypt(buf[:], c)
		a, r = binary.BigEndian.Uint64(buf[:8]), buf[8:]
	} else {
		n := len(c)/8 - 1
		a = binary.BigEndian.Uint64(c[:8])
		r = bytes.Clone(c[8:])
		var buf [16]byte
		for j := 5; j >= 0; j-- {
			for i := n; i >= 1; i-- {
				binary.BigEndian.PutUint64(buf[:8], a^uint64(n*j+i))
				copy(buf[8:], r[(i-1)*8:i*8])
				b.Decrypt(buf[:], buf[:])
				a = binary.BigEndian.Uint64(buf[:8])
				copy(r[(i-1)*8:], buf[8:])
			}
		}
	}
	mli := int(a & 0xFFFFFFFF)
	if a>>32 != 0xA65959A6 || mli > len(r) || mli <= len(r)-8 {
		return nil, errors.New("integrity check failed")
	}
	for _, p := range r[mli:] {
		if p != 0 {
			return nil, errors.New("bad padding")
		}
	}
	return r[:mli], nil
}

// findInFiles lists every file under dir holding needle, with its offset.
func findInFiles(t *testing.T, dir string, needle []byte) []string {
	t.Helper()
	var hits []string
	files := 0
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		files++
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		for off := 0; ; {
			i := bytes.Index(b[off:], needle)
			if i < 0 {
				break
			}
			hits = append(hits, fmt.Sprintf("%s at offset %d", strings.TrimPrefix(p, dir+"/"), off+i))
			off += i + 1
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if files == 0 {
		t.Fatalf("no file under %s", dir)
	}
	return hits
}

// provisionProof opens tok, makes an unlock key and an ecdh-p256 escrow
// key, and checks that unlockKEK and ecKEK — bytes the test chose — are the
// KEKs that wrap them: the stored unlock key opens under unlockKEK in Go
// and its HMAC is the HSM's; the stored escrow key opens under ecKEK into
// the private key of the public key the HSM returned. Without this, a scan
// that finds nothing would prove nothing.
func provisionProof(t *testing.T, tok *softhsm.Token, allowPublic bool, unlockKEK, ecKEK []byte) {
	t.Helper()
	ctx := context.Background()
	cfg := tok.HSMConfig()
	cfg.AllowPublicKEK = allowPublic
	h, err := hsm.Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	unlock, err := h.GenerateUnlockKey(ctx)
	if err != nil {
		t.Fatal(err)
	}
	pubDER, escrow, err := h.GenerateEscrowKey(ctx, hsm.SuiteECDHP256)
	if err != nil {
		t.Fatal(err)
	}
	msg := []byte("which KEK")
	mac, err := h.HMAC(ctx, unlock, msg)
	if err != nil {
		t.Fatal(err)
	}
	key, err := kwpUnwrap(unlockKEK, unlock.Blob)
	if err != nil {
		t.Fatalf("the stored unlock key does not open under the test's KEK bytes: %v", err)
	}
	m := hmac.New(sha256.New, key)
	m.Write(msg)
	if !hmac.Equal(m.Sum(nil), mac) {
		t.Fatal("the key under the test's KEK bytes is not the unlock key")
	}
	p8, err := kwpUnwrap(ecKEK, escrow.Blob)
	if err != nil {
		t.Fatalf("the stored escrow key does not open under the test's KEK bytes: %v", err)
	}
	priv, err := x509.ParsePKCS8PrivateKey(p8)
	if err != nil {
		t.Fatalf("the escrow key under the test's KEK bytes is no PKCS#8 key: %v", err)
	}
	der, err := x509.MarshalPKIXPublicKey(priv.(*ecdsa.PrivateKey).Public())
	if err != nil || !bytes.Equal(der, pubDER) {
		t.Fatalf("the escrow key under the test's KEK bytes is not the group's: %v", err)
	}
}

// TestKEKNotInTokenFiles: the security review found the master KEK in
// clear at offset 128 of an .object file, because it was a public object
// and SoftHSM writes public objects unencrypted; a copy of the token
// directory plus the store then opened every stored key. The KEK is made
// here exactly as `escrowctl hsm init` makes it, except that the SO
// imports known bytes instead of generating them; the test proves those
// bytes are the KEK (the stored unlock key opens under them in Go), uses
// the token, closes it, and finds them in no file of the token directory.
// The control: a public KEK made as before, with other known bytes, is
// found in clear.
func TestKEKNotInTokenFiles(t *testing.T) {
	mod, err := softhsm.Module()
	if err != nil {
		t.Fatal(err)
	}
	tokens := filepath.Join(confDir, "tokens")
	mkToken := func(name string) *softhsm.Token {
		tok := &softhsm.Token{Dir: confDir, Module: mod, Label: fmt.Sprintf("t%d-%s", tokenSeq.Add(1), name),
			UserPIN: hex.EncodeToString(randBytes(t, 16)), SOPIN: hex.EncodeToString(randBytes(t, 16)), KEKLabel: hsm.DefaultKEKLabel}
		if err := hsm.InitToken(mod, tok.Label, tok.SOPIN, tok.UserPIN); err != nil {
			t.Fatal(err)
		}
		return tok
	}

	t.Run("private KEK", func(t *testing.T) {
		tok := mkToken("kek-on-disk")
		keks := [3][]byte{randBytes(t, 32), randBytes(t, 32), randBytes(t, 32)} // unlock, escrow-rsa, escrow-ec
		rep, err := hsm.InitKEKWithValuesForTest(mod, tok.Label, tok.SOPIN, tok.UserPIN, tok.KEKLabel, 1, keks)
		if err != nil {
			t.Fatal(err)
		}
		if !rep.Private || !rep.Trusted {
			t.Fatalf("KEK report %+v", rep)
		}
		provisionProof(t, tok, false, keks[0], keks[2])
		for i, kek := range keks {
			if hits := findInFiles(t, tokens, kek); len(hits) > 0 {
				t.Fatalf("master KEK %s is in clear in the token files: %v", rep.Labels[i], hits)
			}
		}
	})

	t.Run("control: public KEK", func(t *testing.T) {
		tok := mkToken("public-kek-on-disk")
		kek := randBytes(t, 32)
		if err := hsm.InitPublicKEKForTest(mod, tok.Label, tok.SOPIN, tok.KEKLabel, 1, kek); err != nil {
			t.Fatal(err)
		}
		provisionProof(t, tok, true, kek, kek)
		hits := findInFiles(t, tokens, kek)
		if len(hits) == 0 {
			t.Fatal("the public KEK's bytes are in no token file: the scan cannot see a KEK in clear")
		}
		t.Logf("a public KEK is in clear: %v", hits)
	})
}

// TestPublicKEKRefused: a token whose KEK `escrowctl hsm init` made public
// (before KEKs were private) is refused at Open with an error that names
// the flag that accepts it and why; with Config.AllowPublicKEK it opens.
func TestPublicKEKRefused(t *testing.T) {
	tok := tokenWithPublicKEK(t)
	h, err := hsm.Open(tok.HSMConfig())
	if err == nil {
		h.Close()
		t.Fatal("Open accepted a public master KEK")
	}
	if !errors.Is(err, hsm.ErrKEKPublic) {
		t.Fatalf("Open: %v, want ErrKEKPublic", err)
	}
	for _, want := range []string{"-hsm-allow-public-kek", "in clear", "docs/LIFECYCLE.md"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
	t.Log(err)
	openToken(t, tok, func(c *hsm.Config) { c.AllowPublicKEK = true })
}

// TestMigrateFromPublicKEK: the migration path of docs/LIFECYCLE.md. A
// token with a public KEK v1 and keys under it; the SO makes a private
// KEK v2; escrowd, run with the flag, re-wraps every key from v1 to v2
// inside the token and destroys v1; from then on the token opens without
// the flag, and the keys are the same keys.
func TestMigrateFromPublicKEK(t *testing.T) {
	ctx := context.Background()
	tok := tokenWithPublicKEK(t)
	allow := tok.HSMConfig()
	allow.AllowPublicKEK = true
	h1, err := hsm.Open(allow)
	if err != nil {
		t.Fatal(err)
	}
	unlock1, err := h1.GenerateUnlockKey(ctx)
	if err != nil {
		t.Fatal(err)
	}
	_, escrow1, err := h1.GenerateEscrowKey(ctx, hsm.SuiteECDHP256)
	if err != nil {
		t.Fatal(err)
	}
	msg := []byte("migration")
	mac1, err := h1.HMAC(ctx, unlock1, msg)
	if err != nil {
		t.Fatal(err)
	}
	h1.Close()
	if _, err := hsm.InitKEKVersion(tok.Module, tok.Label, tok.SOPIN, tok.UserPIN, tok.KEKLabel, 2); err != nil {
		t.Fatal(err)
	}
	h, err := hsm.Open(allow)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.UseKEK(ctx, 2); err != nil {
		t.Fatal(err)
	}
	unlock2, err := h.RewrapKEK(ctx, hsm.KeyUnlock, unlock1, 2)
	if err != nil {
		t.Fatal(err)
	}
	escrow2, err := h.RewrapKEK(ctx, hsm.KeyEscrowEC, escrow1, 2)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.DestroyKEK(ctx, 1); err != nil {
		t.Fatal(err)
	}
	h.Close()
	h = openToken(t, tok, nil) // no flag
	if mac, err := h.HMAC(ctx, unlock2, msg); err != nil || !bytes.Equal(mac, mac1) {
		t.Fatalf("the unlock key after migration: %v", err)
	}
	if err := h.CheckKey(ctx, hsm.KeyEscrowEC, escrow2); err != nil {
		t.Fatalf("the escrow key after migration: %v", err)
	}
	objs, err := h.Objects(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range objs {
		if o.Token && !o.Private {
			t.Errorf("a public object is left on the token: %+v", o)
		}
	}
}

// TestSOModel measures on SoftHSM why the master KEK is made in two steps
// (docs/HSM.md, "SoftHSM's SO model"): the SO cannot make a private object
// (CKR_USER_NOT_LOGGED_IN) and the user cannot make a trusted one
// (CKR_ATTRIBUTE_READ_ONLY). What works, the SO's public session object
// copied by the user into a private token object that keeps CKA_TRUSTED,
// is what InitKEKVersion does and checks (its report's Private, Trusted).
func TestSOModel(t *testing.T) {
	tok := newToken(t)
	soPrivate, userTrusted := hsm.SOModelForTest(tok.Module, tok.Label, tok.SOPIN, tok.UserPIN)
	for _, c := range []struct {
		what string
		err  error
		code string
	}{{"the SO makes a private trusted key", soPrivate, "CKR_USER_NOT_LOGGED_IN"}, {"the user makes a trusted key", userTrusted, "CKR_ATTRIBUTE_READ_ONLY"}} {
		if c.err == nil || strings.Contains(c.err.Error(), "setup") || !strings.Contains(c.err.Error(), c.code) {
			t.Errorf("%s: %v, want %s", c.what, c.err, c.code)
			continue
		}
		t.Logf("%s: refused: %v", c.what, c.err)
	}
	rep, err := hsm.InitKEKVersion(tok.Module, tok.Label, tok.SOPIN, tok.UserPIN, tok.KEKLabel, 2)
	if err != nil || !rep.Private || !rep.Trusted {
		t.Fatalf("the two-step KEK: %+v, %v", rep, err)
	}
}
