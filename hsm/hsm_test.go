package hsm_test

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/hmac"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/x509"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/escrowd/escrowd/hsm"
	"github.com/escrowd/escrowd/softhsm"
)

// confDir holds this test process's softhsm2.conf and tokens: SoftHSM
// reads one configuration per process.
var confDir string

func TestMain(m *testing.M) {
	// A missing SoftHSM fails the tests; it never skips them.
	if _, err := softhsm.Module(); err != nil {
		fmt.Fprintln(os.Stderr, "FAIL:", err)
		os.Exit(1)
	}
	dir, err := os.MkdirTemp("", "escrowd-hsm-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "FAIL:", err)
		os.Exit(1)
	}
	confDir = dir
	// Pin SoftHSM's configuration to confDir before any test runs: tests
	// that make tokens with hsm.InitToken directly would otherwise reach
	// the system's default token directory.
	if _, err := softhsm.New(confDir, "conf"); err != nil {
		fmt.Fprintln(os.Stderr, "FAIL:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

var tokenSeq atomic.Int64

// newToken makes a fresh token (its own label) in the process's conf dir.
func newToken(t testing.TB) *softhsm.Token {
	t.Helper()
	label := fmt.Sprintf("t%d-%s", tokenSeq.Add(1), strings.NewReplacer("/", "-", " ", "-").Replace(t.Name()))
	if len(label) > 32 { // CK_TOKEN_INFO.label is 32 bytes
		label = label[:32]
	}
	tok, err := softhsm.New(confDir, label)
	if err != nil {
		t.Fatalf("softhsm.New: %v", err)
	}
	return tok
}

func openToken(t testing.TB, tok *softhsm.Token, mod func(*hsm.Config)) *hsm.HSM {
	t.Helper()
	cfg := tok.HSMConfig()
	if mod != nil {
		mod(&cfg)
	}
	h, err := hsm.Open(cfg)
	if err != nil {
		t.Fatalf("hsm.Open: %v", err)
	}
	t.Cleanup(func() {
		if err := h.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return h
}

// shared is one token and HSM value for the tests that need only one.
var shared struct {
	once sync.Once
	tok  *softhsm.Token
	h    *hsm.HSM
	err  error
	// one escrow key, generated once (RSA-3072 generation takes ~1 s)
	pub    []byte
	escrow hsm.WrappedKey
}

func sharedHSM(t testing.TB) (*hsm.HSM, []byte, hsm.WrappedKey) {
	t.Helper()
	shared.once.Do(func() {
		shared.tok, shared.err = softhsm.New(confDir, "shared")
		if shared.err != nil {
			return
		}
		shared.h, shared.err = hsm.Open(shared.tok.HSMConfig())
		if shared.err != nil {
			return
		}
		shared.pub, shared.escrow, shared.err = shared.h.GenerateEscrowKey(context.Background(), hsm.SuiteRSAOAEPSHA1)
	})
	if shared.err != nil {
		t.Fatalf("shared HSM: %v", shared.err)
	}
	return shared.h, shared.pub, shared.escrow
}

func randBytes(t testing.TB, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// deviceWrap is what a device does: wrap the GDK to the group's escrow
// public key with RSA-OAEP (SHA-1, MGF1-SHA1, empty label).
func deviceWrap(t testing.TB, pubDER, gdk []byte) []byte {
	t.Helper()
	k, err := x509.ParsePKIXPublicKey(pubDER)
	if err != nil {
		t.Fatalf("escrow public key: %v", err)
	}
	pub, ok := k.(*rsa.PublicKey)
	if !ok {
		t.Fatalf("escrow public key is %T", k)
	}
	if pub.N.BitLen() != hsm.EscrowKeyBits {
		t.Fatalf("escrow key has %d bits, want %d", pub.N.BitLen(), hsm.EscrowKeyBits)
	}
	ct, err := rsa.EncryptOAEP(sha1.New(), rand.Reader, pub, gdk, nil)
	if err != nil {
		t.Fatal(err)
	}
	return ct
}

// aesKeyUnwrap is RFC 3394 key unwrap (what WebCrypto's AES-KW does).
func aesKeyUnwrap(kek, c []byte) ([]byte, error) {
	if len(c)%8 != 0 || len(c) < 24 {
		return nil, errors.New("bad length")
	}
	b, err := aes.NewCipher(kek)
	if err != nil {
		return nil, err
	}
	n := len(c)/8 - 1
	a := binary.BigEndian.Uint64(c[:8])
	r := make([]byte, n*8)
	copy(r, c[8:])
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
	if a != 0xA6A6A6A6A6A6A6A6 {
		return nil, errors.New("integrity check failed")
	}
	return r, nil
}

func TestAESKeyUnwrapVector(t *testing.T) {
	// RFC 3394 §4.6: 256 bits of key data with a 256-bit KEK.
	kek, _ := hex.DecodeString("000102030405060708090A0B0C0D0E0F101112131415161718191A1B1C1D1E1F")
	ct, _ := hex.DecodeString("28C9F404C4B810F4CBCCB35CFB87F8263F5786E2D80ED326CBC7F0E71A99F43BFB988B9B7A02DD21")
	want, _ := hex.DecodeString("00112233445566778899AABBCCDDEEFF000102030405060708090A0B0C0D0E0F")
	got, err := aesKeyUnwrap(kek, ct)
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("unwrap = %x, %v; want %x", got, err, want)
	}
	ct[0] ^= 1
	if _, err := aesKeyUnwrap(kek, ct); err == nil {
		t.Fatal("corrupted vector unwrapped")
	}
}

// 1. Round trip.
func TestRewrapRoundTrip(t *testing.T) {
	h, pub, escrow := sharedHSM(t)
	ctx := context.Background()

	if escrow.KEKVersion != hsm.CurrentKEKVersion || len(escrow.Blob) == 0 {
		t.Fatalf("escrow key wrapped as %+v", escrow.KEKVersion)
	}
	gdk := randBytes(t, hsm.GDKSize)
	ct := deviceWrap(t, pub, gdk)

	member, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	memberDER, err := x509.MarshalPKIXPublicKey(&member.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	aesKeys := [][]byte{randBytes(t, 16), randBytes(t, 24), randBytes(t, 32)}
	targets := []hsm.Target{{PublicKeyDER: memberDER, Suite: hsm.SuiteRSAOAEPSHA1}}
	for _, k := range aesKeys {
		targets = append(targets, hsm.Target{AESKey: bytes.Clone(k)})
	}
	out, err := h.Rewrap(ctx, escrow, hsm.SuiteRSAOAEPSHA1, ct, targets)
	if err != nil {
		t.Fatalf("Rewrap: %v", err)
	}
	if len(out) != len(targets) {
		t.Fatalf("Rewrap gave %d results for %d targets", len(out), len(targets))
	}
	got, err := rsa.DecryptOAEP(sha1.New(), nil, member, out[0], nil)
	if err != nil || !bytes.Equal(got, gdk) {
		t.Fatalf("member decrypt: %v, equal=%v", err, bytes.Equal(got, gdk))
	}
	for i, k := range aesKeys {
		got, err := aesKeyUnwrap(k, out[i+1])
		if err != nil || !bytes.Equal(got, gdk) {
			t.Fatalf("AES-%d target: unwrap: %v, equal=%v", len(k)*8, err, bytes.Equal(got, gdk))
		}
	}
	// Rewrap does not keep or alter the caller's AES keys.
	for i, k := range aesKeys {
		if !bytes.Equal(targets[i+1].AESKey, k) {
			t.Fatalf("target %d AES key was modified", i+1)
		}
	}
}

func TestRewrapErrors(t *testing.T) {
	h, pub, escrow := sharedHSM(t)
	ctx := context.Background()
	ct := deviceWrap(t, pub, randBytes(t, hsm.GDKSize))
	short := deviceWrap(t, pub, randBytes(t, 16)) // a 16-byte key is not a GDK
	aes := hsm.Target{AESKey: randBytes(t, 32)}
	member, _ := rsa.GenerateKey(rand.Reader, 2048)
	memberDER, _ := x509.MarshalPKIXPublicKey(&member.PublicKey)
	small, _ := rsa.GenerateKey(rand.Reader, 1024)
	smallDER, _ := x509.MarshalPKIXPublicKey(&small.PublicKey)
	corrupt := hsm.WrappedKey{KEKVersion: escrow.KEKVersion, Blob: bytes.Clone(escrow.Blob)}
	corrupt.Blob[10] ^= 0xff
	flipped := bytes.Clone(ct)
	flipped[len(flipped)/2] ^= 1

	for _, tc := range []struct {
		name    string
		escrow  hsm.WrappedKey
		suite   hsm.Suite
		ct      []byte
		targets []hsm.Target
		want    error
	}{
		{"random ciphertext", escrow, hsm.SuiteRSAOAEPSHA1, randBytes(t, 384), []hsm.Target{aes}, hsm.ErrBadCiphertext},
		{"flipped bit", escrow, hsm.SuiteRSAOAEPSHA1, flipped, []hsm.Target{aes}, hsm.ErrBadCiphertext},
		{"truncated", escrow, hsm.SuiteRSAOAEPSHA1, ct[:100], []hsm.Target{aes}, hsm.ErrBadCiphertext},
		{"empty", escrow, hsm.SuiteRSAOAEPSHA1, nil, []hsm.Target{aes}, hsm.ErrBadCiphertext},
		{"16-byte key", escrow, hsm.SuiteRSAOAEPSHA1, short, []hsm.Target{aes}, hsm.ErrBadCiphertext},
		// A GDK is exactly 32 bytes: an OAEP plaintext of any other length,
		// empty included, is refused, never padded into a different key.
		{"empty plaintext", escrow, hsm.SuiteRSAOAEPSHA1, deviceWrap(t, pub, nil), []hsm.Target{aes}, hsm.ErrBadCiphertext},
		{"24-byte key", escrow, hsm.SuiteRSAOAEPSHA1, deviceWrap(t, pub, randBytes(t, 24)), []hsm.Target{aes}, hsm.ErrBadCiphertext},
		{"25-byte key", escrow, hsm.SuiteRSAOAEPSHA1, deviceWrap(t, pub, randBytes(t, 25)), []hsm.Target{aes}, hsm.ErrBadCiphertext},
		{"31-byte key", escrow, hsm.SuiteRSAOAEPSHA1, deviceWrap(t, pub, randBytes(t, 31)), []hsm.Target{aes}, hsm.ErrBadCiphertext},
		{"33-byte key", escrow, hsm.SuiteRSAOAEPSHA1, deviceWrap(t, pub, randBytes(t, 33)), []hsm.Target{aes}, hsm.ErrBadCiphertext},
		{"25-byte key to an RSA member", escrow, hsm.SuiteRSAOAEPSHA1, deviceWrap(t, pub, randBytes(t, 25)), []hsm.Target{{PublicKeyDER: memberDER, Suite: hsm.SuiteRSAOAEPSHA1}}, hsm.ErrBadCiphertext},
		{"corrupted escrow blob", corrupt, hsm.SuiteRSAOAEPSHA1, ct, []hsm.Target{aes}, hsm.ErrBadCiphertext},
		{"unknown KEK version", hsm.WrappedKey{KEKVersion: 7, Blob: escrow.Blob}, hsm.SuiteRSAOAEPSHA1, ct, []hsm.Target{aes}, hsm.ErrKEKNotFound},
		{"unknown suite", escrow, "rsa-pkcs1", ct, []hsm.Target{aes}, hsm.ErrInvalidInput},
		{"no targets", escrow, hsm.SuiteRSAOAEPSHA1, ct, nil, hsm.ErrInvalidInput},
		{"empty target", escrow, hsm.SuiteRSAOAEPSHA1, ct, []hsm.Target{{}}, hsm.ErrInvalidInput},
		{"both in target", escrow, hsm.SuiteRSAOAEPSHA1, ct, []hsm.Target{{PublicKeyDER: memberDER, Suite: hsm.SuiteRSAOAEPSHA1, AESKey: aes.AESKey}}, hsm.ErrInvalidInput},
		{"AES key 20 bytes", escrow, hsm.SuiteRSAOAEPSHA1, ct, []hsm.Target{{AESKey: randBytes(t, 20)}}, hsm.ErrInvalidInput},
		{"RSA 1024 target", escrow, hsm.SuiteRSAOAEPSHA1, ct, []hsm.Target{{PublicKeyDER: smallDER, Suite: hsm.SuiteRSAOAEPSHA1}}, hsm.ErrInvalidInput},
		{"garbage DER", escrow, hsm.SuiteRSAOAEPSHA1, ct, []hsm.Target{{PublicKeyDER: []byte("nope"), Suite: hsm.SuiteRSAOAEPSHA1}}, hsm.ErrInvalidInput},
		// Measured: SoftHSM 2.6.1 refuses OAEP with SHA-256 (CKR_ARGUMENTS_BAD).
		{"SHA-256 target on SoftHSM", escrow, hsm.SuiteRSAOAEPSHA1, ct, []hsm.Target{{PublicKeyDER: memberDER, Suite: hsm.SuiteRSAOAEPSHA256}}, hsm.ErrUnsupported},
		{"SHA-256 escrow suite on SoftHSM", escrow, hsm.SuiteRSAOAEPSHA256, ct, []hsm.Target{aes}, hsm.ErrUnsupported},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, err := h.Rewrap(ctx, tc.escrow, tc.suite, tc.ct, tc.targets)
			if !errors.Is(err, tc.want) {
				t.Fatalf("Rewrap = %d results, %v; want %v", len(out), err, tc.want)
			}
			t.Logf("%v", err)
		})
	}
	// Nothing was left behind by the failures.
	objs, err := h.Objects(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(objs) != 3 {
		t.Fatalf("%d objects after failed rewraps, want only the three KEKs: %+v", len(objs), objs)
	}
}

func TestGenerateEscrowKeySHA256Unsupported(t *testing.T) {
	h, _, _ := sharedHSM(t)
	// Measured on SoftHSM 2.6.1: a key pair is generated, but the suite's
	// self-test (OAEP-SHA256 encrypt) fails with CKR_ARGUMENTS_BAD.
	for range 2 { // the second call answers from the cached verdict
		pub, w, err := h.GenerateEscrowKey(context.Background(), hsm.SuiteRSAOAEPSHA256)
		if !errors.Is(err, hsm.ErrUnsupported) || pub != nil || w.Blob != nil {
			t.Fatalf("GenerateEscrowKey(sha256) = %d bytes, %v; want ErrUnsupported", len(pub), err)
		}
		if !strings.Contains(err.Error(), "rsa-oaep-sha256") {
			t.Errorf("error does not name the suite: %v", err)
		}
		t.Log(err)
	}
	if _, _, err := h.GenerateEscrowKey(context.Background(), "rsa-oaep-md5"); !errors.Is(err, hsm.ErrInvalidInput) {
		t.Fatalf("unknown suite: %v", err)
	}
}

func TestHMAC(t *testing.T) {
	h, _, _ := sharedHSM(t)
	ctx := context.Background()
	k1, err := h.GenerateUnlockKey(ctx)
	if err != nil {
		t.Fatal(err)
	}
	k2, err := h.GenerateUnlockKey(ctx)
	if err != nil {
		t.Fatal(err)
	}
	msg := []byte("group=g1 user=u1 epoch=3 index=0")
	a, err := h.HMAC(ctx, k1, msg)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := h.HMAC(ctx, k1, msg)
	c, _ := h.HMAC(ctx, k2, msg)
	d, _ := h.HMAC(ctx, k1, []byte("group=g1 user=u1 epoch=3 index=1"))
	if len(a) != 32 {
		t.Fatalf("HMAC is %d bytes", len(a))
	}
	if !bytes.Equal(a, b) {
		t.Fatal("HMAC is not deterministic")
	}
	if bytes.Equal(a, c) || bytes.Equal(a, d) {
		t.Fatal("different keys or messages give the same HMAC")
	}
	if _, err := h.HMAC(ctx, hsm.WrappedKey{KEKVersion: 1, Blob: randBytes(t, 40)}, msg); !errors.Is(err, hsm.ErrBadCiphertext) {
		t.Fatalf("HMAC with a garbage key: %v", err)
	}
}

// 2. Fifty groups leave no object behind; every key object is sensitive
// and non-extractable.
func TestFiftyGroupsNoObjectsLeft(t *testing.T) {
	n := 50
	if testing.Short() {
		n = 8
	}
	tok := newToken(t)
	h := openToken(t, tok, nil)
	ctx := context.Background()
	before, err := h.Objects(ctx)
	if err != nil {
		t.Fatal(err)
	}
	labels := map[string]bool{}
	for _, kek := range before {
		labels[kek.Label] = true
		if kek.Class != "secret-key" || kek.KeyType != "aes" || !kek.Token || !kek.Private || !kek.Sensitive || kek.Extractable || !kek.Trusted || kek.Modifiable {
			t.Fatalf("KEK attributes: %+v", kek)
		}
		t.Logf("KEK: %+v", kek)
	}
	for _, c := range []string{"unlock", "escrow-rsa", "escrow-ec"} {
		if !labels[tok.KEKLabel+"-"+c+"-v1"] {
			t.Errorf("no KEK for %s", c)
		}
	}
	if len(before) != 3 {
		t.Fatalf("objects before: %+v, want only the three KEKs", before)
	}

	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		errs []error
	)
	work := make(chan int)
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range work {
				_, _, err1 := h.GenerateEscrowKey(ctx, hsm.SuiteRSAOAEPSHA1)
				_, err2 := h.GenerateUnlockKey(ctx)
				if err := errors.Join(err1, err2); err != nil {
					mu.Lock()
					errs = append(errs, err)
					mu.Unlock()
				}
			}
		}()
	}
	for i := range n {
		work <- i
	}
	close(work)
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	after, err := h.Objects(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(after) != len(before) {
		t.Fatalf("%d objects after %d groups, %d before: %+v", len(after), n, len(before), after)
	}
	for _, o := range after {
		if (o.Class == "secret-key" || o.Class == "private-key") && (!o.Sensitive || o.Extractable) {
			t.Errorf("key object not sensitive or extractable: %+v", o)
		}
	}
}

// 3. Export attempts with the user PIN.
func TestExportAttempts(t *testing.T) {
	tok := newToken(t)
	h := openToken(t, tok, nil)
	ctx := context.Background()
	unlock, err := h.GenerateUnlockKey(ctx)
	if err != nil {
		t.Fatal(err)
	}
	_, escrow, err := h.GenerateEscrowKey(ctx, hsm.SuiteRSAOAEPSHA1)
	if err != nil {
		t.Fatal(err)
	}
	keys := map[hsm.GroupKind]hsm.WrappedKey{hsm.KindUnlock: unlock, hsm.KindEscrow: escrow}

	for _, kind := range []hsm.GroupKind{hsm.KindUnlock, hsm.KindEscrow} {
		w := keys[kind]
		t.Run(kind.String(), func(t *testing.T) {
			for _, tc := range []struct {
				name string
				try  func() error
			}{
				{"wrap under an imported AES key", func() error {
					out, err := h.ExportUnderImportedKeyForTest(ctx, kind, w, randBytes(t, 32))
					if err == nil && len(out) == 0 {
						return errors.New("no error and no output")
					}
					return err
				}},
				{"copy with CKA_WRAP_WITH_TRUSTED=false", func() error {
					return h.CopyWithForTest(ctx, kind, w, "CKA_WRAP_WITH_TRUSTED", false)
				}},
				{"copy with CKA_EXTRACTABLE=true", func() error {
					return h.CopyWithForTest(ctx, kind, w, "CKA_EXTRACTABLE", true)
				}},
				{"copy with CKA_SENSITIVE=false", func() error {
					return h.CopyWithForTest(ctx, kind, w, "CKA_SENSITIVE", false)
				}},
				{"set CKA_WRAP_WITH_TRUSTED=false", func() error {
					return h.SetAttributeForTest(ctx, kind, w, "CKA_WRAP_WITH_TRUSTED", false)
				}},
				{"set CKA_EXTRACTABLE=true", func() error {
					return h.SetAttributeForTest(ctx, kind, w, "CKA_EXTRACTABLE", true)
				}},
				{"set CKA_SENSITIVE=false", func() error {
					return h.SetAttributeForTest(ctx, kind, w, "CKA_SENSITIVE", false)
				}},
				{"set CKA_DERIVE=true", func() error {
					return h.SetAttributeForTest(ctx, kind, w, "CKA_DERIVE", true)
				}},
				{"copy with CKA_DERIVE=true", func() error {
					return h.CopyWithForTest(ctx, kind, w, "CKA_DERIVE", true)
				}},
				{"set CKA_SIGN=true", func() error {
					return h.SetAttributeForTest(ctx, kind, w, "CKA_SIGN", kind == hsm.KindEscrow)
				}},
			} {
				t.Run(tc.name, func(t *testing.T) {
					err := tc.try()
					if err == nil {
						t.Fatal("the token allowed it")
					}
					if strings.Contains(err.Error(), "unwrap as daemon") {
						t.Fatalf("setup failed: %v", err)
					}
					t.Logf("refused: %v", err)
				})
			}
		})
	}

}

// tokenWithoutUnwrapTemplate makes a token whose KEK lacks
// CKA_UNWRAP_TEMPLATE, as InitKEK would make it on a module refusing the
// attribute: the counterfactual for TestUnwrapTemplate.
func tokenWithoutUnwrapTemplate(t *testing.T) *softhsm.Token {
	t.Helper()
	mod, err := softhsm.Module()
	if err != nil {
		t.Fatal(err)
	}
	tok := &softhsm.Token{Dir: confDir, Module: mod, Label: fmt.Sprintf("t%d-no-unwrap-template", tokenSeq.Add(1)),
		UserPIN: hex.EncodeToString(randBytes(t, 8)), SOPIN: hex.EncodeToString(randBytes(t, 8)), KEKLabel: hsm.DefaultKEKLabel}
	if err := hsm.InitToken(mod, tok.Label, tok.SOPIN, tok.UserPIN); err != nil {
		t.Fatal(err)
	}
	if err := hsm.InitKEKWithoutUnwrapTemplateForTest(mod, tok.Label, tok.SOPIN, tok.UserPIN, tok.KEKLabel); err != nil {
		t.Fatal(err)
	}
	hsm.AllowKEKWithoutTemplateForTest(t)
	return tok
}

// tokenWithPublicKEK makes a token whose KEK v1 is public, as `escrowctl
// hsm init` made it before master KEKs were private (with the unwrap
// template): what TestUnwrapTemplate measured then, and what the
// migration starts from.
func tokenWithPublicKEK(t *testing.T) *softhsm.Token {
	t.Helper()
	mod, err := softhsm.Module()
	if err != nil {
		t.Fatal(err)
	}
	tok := &softhsm.Token{Dir: confDir, Module: mod, Label: fmt.Sprintf("t%d-public-kek", tokenSeq.Add(1)),
		UserPIN: hex.EncodeToString(randBytes(t, 8)), SOPIN: hex.EncodeToString(randBytes(t, 8)), KEKLabel: hsm.DefaultKEKLabel}
	if err := hsm.InitToken(mod, tok.Label, tok.SOPIN, tok.UserPIN); err != nil {
		t.Fatal(err)
	}
	if err := hsm.InitPublicKEKForTest(mod, tok.Label, tok.SOPIN, tok.KEKLabel, 1, nil); err != nil {
		t.Fatal(err)
	}
	return tok
}

// The attacker holds the user PIN (or only the token files) and the stored
// wrapped unlock key, and asks the token to unwrap it under the KEK with a
// template of their own. Measured on SoftHSM 2.6.1: the KEK's
// CKA_UNWRAP_TEMPLATE is enforced (CKR_TEMPLATE_INCONSISTENT); without it,
// the key's value is read in clear with the PIN. Without a login the
// private KEK cannot even be found; the public KEK of old tokens could be,
// and only its template stopped the unwrap.
func TestUnwrapTemplate(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name     string
		tok      func(t *testing.T) *softhsm.Token
		template bool
		public   bool
	}{
		{"KEK with unwrap template", func(t *testing.T) *softhsm.Token { return newToken(t) }, true, false},
		{"KEK without unwrap template", tokenWithoutUnwrapTemplate, false, false},
		{"public KEK with unwrap template", tokenWithPublicKEK, true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tok := tc.tok(t)
			h := openToken(t, tok, func(c *hsm.Config) { c.AllowPublicKEK = tc.public })
			objs, err := h.Objects(ctx)
			if err != nil {
				t.Fatal(err)
			}
			want := 3
			if tc.public {
				want = 1 // the single KEK of old tokens
			}
			if len(objs) != want {
				t.Fatalf("KEK objects %+v, want %d", objs, want)
			}
			for _, o := range objs {
				if (o.UnwrapTemplate > 0) != tc.template || o.Private == tc.public {
					t.Fatalf("KEK objects %+v, want unwrap template %v, public %v", objs, tc.template, tc.public)
				}
			}
			unlock, err := h.GenerateUnlockKey(ctx)
			if err != nil {
				t.Fatal(err)
			}
			msg := []byte("proof")
			mac, err := h.HMAC(ctx, unlock, msg)
			if err != nil {
				t.Fatal(err)
			}
			// stolen reports whether val is the unlock key (or starts with it).
			stolen := func(val []byte) bool {
				if len(val) < 32 {
					return false
				}
				m := hmac.New(sha256.New, val[:32])
				m.Write(msg)
				return hmac.Equal(m.Sum(nil), mac)
			}
			known := randBytes(t, 16)
			for _, a := range []struct {
				name string
				try  func() ([]byte, error)
			}{
				{"attacker template, user PIN", func() ([]byte, error) { return h.AttackerUnwrapForTest(ctx, unlock, false) }},
				{"attacker template, no login", func() ([]byte, error) { return h.AttackerUnwrapForTest(ctx, unlock, true) }},
			} {
				t.Run(a.name, func(t *testing.T) {
					// Recover from the previous attack's logout first.
					if err := h.Healthy(ctx); err != nil {
						t.Fatal(err)
					}
					val, err := a.try()
					noLogin := strings.HasSuffix(a.name, "no login")
					switch {
					case noLogin && !tc.public && err != nil:
						if !errors.Is(err, hsm.ErrKEKNotFound) {
							t.Fatalf("refused, but not because the private KEK is invisible: %v", err)
						}
						t.Logf("refused: %v", err)
					case (tc.template || noLogin) && err != nil:
						if !errors.Is(err, hsm.ErrNotPermitted) {
							t.Fatalf("refused, but not by key attributes: %v", err)
						}
						t.Logf("refused: %v", err)
					case tc.template || noLogin:
						t.Fatalf("the token gave out %d bytes (the unlock key: %v)", len(val), stolen(val))
					case err != nil:
						t.Fatalf("SoftHSM refused (measured: it allows this without an unwrap template): %v", err)
					case !stolen(val):
						t.Fatalf("got %d bytes that are not the unlock key", len(val))
					default:
						t.Logf("SoftHSM gave out the unlock key in clear")
					}
				})
			}
			// SoftHSM 2.6.1 does not merge the unwrap template into the
			// caller's: a template that leaves out a forced attribute is
			// refused too.
			if err := h.Healthy(ctx); err != nil {
				t.Fatal(err)
			}
			sens, extr, wwt, read, err := h.ForcedAttributesForTest(ctx, unlock)
			switch {
			case tc.template && !errors.Is(err, hsm.ErrNotPermitted):
				t.Fatalf("minimal template: %v; want refused", err)
			case !tc.template && err != nil:
				t.Fatal(err)
			}
			t.Logf("minimal template: sensitive=%v extractable=%v wrap-with-trusted=%v value readable=%v err=%v", sens, extr, wwt, read, err)
			// Derivation: a key unwrapped with every forced attribute plus
			// CKA_DERIVE, then base||known derived into an extractable key.
			// SoftHSM 2.6.1 has no CKM_CONCATENATE_BASE_AND_KEY.
			if err := h.Healthy(ctx); err != nil {
				t.Fatal(err)
			}
			val, err := h.DeriveAttackForTest(ctx, unlock, known)
			switch {
			case stolen(val):
				t.Fatalf("derive attack: the unlock key came out")
			case tc.template && !tc.public:
				// The class template fixes CKA_DERIVE=false: refused at the unwrap.
				if !errors.Is(err, hsm.ErrNotPermitted) || !strings.Contains(err.Error(), "CKA_DERIVE") {
					t.Fatalf("derive attack: %v; want the unwrap with CKA_DERIVE refused", err)
				}
			case !errors.Is(err, hsm.ErrUnsupported):
				t.Fatalf("derive attack: %d bytes, %v; want ErrUnsupported (no CKM_CONCATENATE_BASE_AND_KEY in SoftHSM)", len(val), err)
			}
			t.Logf("derive attack: %v", err)
			// The pool recovers from the logout above.
			if _, err := h.HMAC(ctx, unlock, msg); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// 4. Start-up errors.
func TestOpenErrors(t *testing.T) {
	tok := newToken(t)
	other := newToken(t) // a token with no open HSM value: the PIN reaches C_Login
	held := openToken(t, tok, nil)
	_ = held
	for _, tc := range []struct {
		name  string
		tok   *softhsm.Token
		mod   func(*hsm.Config)
		want  error
		wants string
	}{
		{"wrong PIN", other, func(c *hsm.Config) { c.PIN = "wrong-" + c.PIN[:8] }, hsm.ErrPINIncorrect, "CKR_PIN_INCORRECT"},
		{"wrong PIN, token logged in by this process", tok, func(c *hsm.Config) { c.PIN = "wrong-" + c.PIN[:8] }, hsm.ErrPINIncorrect, "another PIN"},
		{"missing module", tok, func(c *hsm.Config) { c.Module = "/nonexistent/libpkcs11.so" }, hsm.ErrModule, "/nonexistent/libpkcs11.so"},
		{"module not a library", tok, func(c *hsm.Config) { c.Module = tok.ConfPath }, hsm.ErrModule, "not a loadable"},
		{"no module", tok, func(c *hsm.Config) { c.Module = "" }, hsm.ErrModule, "no module"},
		{"missing token", tok, func(c *hsm.Config) { c.TokenLabel = "no-such-token" }, hsm.ErrTokenNotFound, "no-such-token"},
		{"missing KEK", tok, func(c *hsm.Config) { c.KEKLabel = "no-such-kek" }, hsm.ErrKEKNotFound, "escrowctl hsm init"},
		{"missing KEK, other token", other, func(c *hsm.Config) { c.KEKLabel = "no-such-kek" }, hsm.ErrKEKNotFound, "no-such-kek-unlock-v1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := tc.tok.HSMConfig()
			tc.mod(&cfg)
			h, err := hsm.Open(cfg)
			if err == nil {
				h.Close()
				t.Fatal("Open succeeded")
			}
			if !errors.Is(err, tc.want) {
				t.Fatalf("Open: %v; want %v", err, tc.want)
			}
			msg := err.Error()
			if !strings.Contains(msg, tc.wants) {
				t.Errorf("error %q does not mention %q", msg, tc.wants)
			}
			for _, pin := range []string{cfg.PIN, tc.tok.UserPIN, tc.tok.SOPIN} {
				if strings.Contains(msg, pin) {
					t.Fatalf("error contains a PIN: %q", msg)
				}
			}
			t.Log(msg)
		})
	}
	// The failures did not disturb the open value.
	if err := held.Healthy(context.Background()); err != nil {
		t.Fatal(err)
	}
	// And the right PIN still opens the other token.
	openToken(t, other, nil)
}

func TestTwoValuesOneToken(t *testing.T) {
	tok := newToken(t)
	a := openToken(t, tok, nil)
	b, err := hsm.Open(tok.HSMConfig())
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	k, err := b.GenerateUnlockKey(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if err := b.Close(); err != nil {
		t.Fatal("second Close:", err)
	}
	if _, err := b.HMAC(ctx, k, nil); !errors.Is(err, hsm.ErrClosed) {
		t.Fatalf("HMAC after Close: %v", err)
	}
	// a still works: closing b finalised nothing and logged nothing out.
	if _, err := a.HMAC(ctx, k, []byte("x")); err != nil {
		t.Fatal(err)
	}
}

// 5. Recovery and the pool.
func TestRecovery(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name   string
		break_ func(h *hsm.HSM) error
	}{
		{"C_CloseAllSessions", func(h *hsm.HSM) error { return h.CloseAllSessionsForTest() }},
		{"C_Logout", func(h *hsm.HSM) error { return h.LogoutForTest(ctx) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tok := newToken(t)
			h := openToken(t, tok, func(c *hsm.Config) { c.Sessions = 3 })
			k, err := h.GenerateUnlockKey(ctx)
			if err != nil {
				t.Fatal(err)
			}
			want, err := h.HMAC(ctx, k, []byte("m"))
			if err != nil {
				t.Fatal(err)
			}
			for _, op := range []struct {
				name string
				run  func() error
			}{
				{"HMAC", func() error {
					got, err := h.HMAC(ctx, k, []byte("m"))
					if err == nil && !bytes.Equal(got, want) {
						err = errors.New("different HMAC")
					}
					return err
				}},
				{"GenerateUnlockKey", func() error { _, err := h.GenerateUnlockKey(ctx); return err }},
				{"Healthy", func() error { return h.Healthy(ctx) }},
				{"Objects", func() error { _, err := h.Objects(ctx); return err }},
			} {
				if err := tc.break_(h); err != nil {
					t.Fatalf("breaking the token: %v", err)
				}
				if err := op.run(); err != nil {
					t.Fatalf("%s after %s: %v", op.name, tc.name, err)
				}
			}
		})
	}
}

func TestPoolExhaustion(t *testing.T) {
	tok := newToken(t)
	h := openToken(t, tok, func(c *hsm.Config) { c.Sessions = 1; c.WaitTimeout = 50 * time.Millisecond })
	ctx := context.Background()
	release, err := h.HoldSessionForTest(ctx)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	_, err = h.GenerateUnlockKey(ctx)
	if !errors.Is(err, hsm.ErrUnavailable) {
		t.Fatalf("with the pool exhausted: %v; want ErrUnavailable", err)
	}
	if d := time.Since(start); d < 50*time.Millisecond || d > 2*time.Second {
		t.Fatalf("waited %s", d)
	}
	cctx, cancel := context.WithCancel(ctx)
	go func() { time.Sleep(10 * time.Millisecond); cancel() }()
	h2 := openToken(t, tok, func(c *hsm.Config) { c.Sessions = 1; c.WaitTimeout = time.Hour })
	release2, err := h2.HoldSessionForTest(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := h2.Healthy(cctx); !errors.Is(err, hsm.ErrUnavailable) || !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled wait: %v", err)
	}
	release2()
	release()
	if _, err := h.GenerateUnlockKey(ctx); err != nil {
		t.Fatal(err)
	}
	if n := h.IdleSessionsForTest(); n != 1 {
		t.Fatalf("%d idle sessions, want 1", n)
	}
}

func TestConcurrentOperations(t *testing.T) {
	h, pub, escrow := sharedHSM(t)
	ctx := context.Background()
	unlock, err := h.GenerateUnlockKey(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for i := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			gdk := randBytes(t, 32)
			k := randBytes(t, 32)
			out, err := h.Rewrap(ctx, escrow, hsm.SuiteRSAOAEPSHA1, deviceWrap(t, pub, gdk), []hsm.Target{{AESKey: k}})
			if err == nil {
				var got []byte
				got, err = aesKeyUnwrap(k, out[0])
				if err == nil && !bytes.Equal(got, gdk) {
					err = fmt.Errorf("goroutine %d: wrong GDK", i)
				}
			}
			if err == nil {
				_, err = h.HMAC(ctx, unlock, []byte{byte(i)})
			}
			if err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// 6. Config never prints the PIN.
func TestConfigRedactsPIN(t *testing.T) {
	const pin = "s3cret-PIN-4711"
	cfg := hsm.Config{Module: "/m.so", TokenLabel: "tok", PIN: pin, Sessions: 2}
	type wrapper struct {
		HSM hsm.Config
		P   *hsm.Config
	}
	w := wrapper{cfg, &cfg}
	var sb strings.Builder
	for _, s := range []string{
		cfg.String(), cfg.GoString(),
		fmt.Sprint(cfg), fmt.Sprintf("%v", cfg), fmt.Sprintf("%+v", cfg), fmt.Sprintf("%#v", cfg),
		fmt.Sprintf("%s", cfg), fmt.Sprintf("%q", cfg), fmt.Sprintf("%x", cfg), fmt.Sprintf("%v", &cfg),
		fmt.Sprintf("%+v", w), fmt.Sprintf("%#v", w), fmt.Sprintf("%v", []hsm.Config{cfg}),
	} {
		if strings.Contains(s, pin) || strings.Contains(s, hex.EncodeToString([]byte(pin))) {
			t.Fatalf("PIN printed: %s", s)
		}
		if !strings.Contains(s, "tok") && !strings.Contains(s, hex.EncodeToString([]byte("tok"))) {
			t.Errorf("config not described: %s", s)
		}
		sb.WriteString(s)
	}
	t.Log(cfg)
}

func ExampleHSM_Rewrap() {
	// One SoftHSM configuration per process: TestMain made confDir.
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
	ctx := context.Background()

	// Provision a group: its escrow key pair, generated in the HSM.
	pubDER, escrow, err := h.GenerateEscrowKey(ctx, hsm.SuiteRSAOAEPSHA1)
	if err != nil {
		fmt.Println(err)
		return
	}
	// A device wraps its group data key to the escrow public key.
	pub, _ := x509.ParsePKIXPublicKey(pubDER)
	gdk := make([]byte, 32)
	rand.Read(gdk)
	ct, _ := rsa.EncryptOAEP(sha1.New(), rand.Reader, pub.(*rsa.PublicKey), gdk, nil)

	// A new member joins: re-wrap the GDK to the member's key, in the HSM.
	member, _ := rsa.GenerateKey(rand.Reader, 2048)
	memberDER, _ := x509.MarshalPKIXPublicKey(&member.PublicKey)
	out, err := h.Rewrap(ctx, escrow, hsm.SuiteRSAOAEPSHA1, ct, []hsm.Target{
		{PublicKeyDER: memberDER, Suite: hsm.SuiteRSAOAEPSHA1},
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	got, _ := rsa.DecryptOAEP(sha1.New(), nil, member, out[0], nil)
	fmt.Println("member recovers the GDK:", bytes.Equal(got, gdk))
	// Output: member recovers the GDK: true
}

func BenchmarkRewrap(b *testing.B) {
	h, pub, escrow := sharedHSM(b)
	ctx := context.Background()
	gdk := randBytes(b, 32)
	ct := deviceWrap(b, pub, gdk)
	member, _ := rsa.GenerateKey(rand.Reader, 2048)
	memberDER, _ := x509.MarshalPKIXPublicKey(&member.PublicKey)
	for _, bc := range []struct {
		name    string
		targets []hsm.Target
	}{
		{"AES-KW", []hsm.Target{{AESKey: randBytes(b, 32)}}},
		{"RSA-2048", []hsm.Target{{PublicKeyDER: memberDER, Suite: hsm.SuiteRSAOAEPSHA1}}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if _, err := h.Rewrap(ctx, escrow, hsm.SuiteRSAOAEPSHA1, ct, bc.targets); err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "ops/s")
		})
	}
}
