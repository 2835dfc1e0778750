package device

import (
	"bytes"
	"crypto"
	"crypto/aes"
	"crypto/cipher"
	"crypto/ecdh"
	"crypto/hmac"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/escrowd/escrowd/escrow/bundle"
	"github.com/escrowd/escrowd/escrow/unlockcode"
	"github.com/escrowd/escrowd/format"
)

const group = "family-42"

// testKeys are the recipients of the tests: made once per test binary.
type testKeys struct {
	rsa, rsa2       *rsa.PrivateKey
	ec, ec2         *ecdh.PrivateKey
	rsaPub, ecPub   []byte
	rsa2Pub, ec2Pub []byte
}

var (
	keysOnce sync.Once
	keys     testKeys
)

func getKeys(t testing.TB) *testKeys {
	t.Helper()
	keysOnce.Do(func() {
		var err error
		if keys.rsa, err = rsa.GenerateKey(rand.Reader, 2048); err != nil {
			panic(err)
		}
		if keys.rsa2, err = rsa.GenerateKey(rand.Reader, 2048); err != nil {
			panic(err)
		}
		keys.ec, _ = ecdh.P256().GenerateKey(rand.Reader)
		keys.ec2, _ = ecdh.P256().GenerateKey(rand.Reader)
		keys.rsaPub, _ = x509.MarshalPKIXPublicKey(&keys.rsa.PublicKey)
		keys.rsa2Pub, _ = x509.MarshalPKIXPublicKey(&keys.rsa2.PublicKey)
		keys.ecPub, _ = x509.MarshalPKIXPublicKey(keys.ec.PublicKey())
		keys.ec2Pub, _ = x509.MarshalPKIXPublicKey(keys.ec2.PublicKey())
	})
	return &keys
}

// pub and priv return the recipient key of a suite.
func (k *testKeys) pub(suite string) []byte {
	if suite == bundle.SuiteECDHP256 {
		return k.ecPub
	}
	return k.rsaPub
}

func (k *testKeys) priv(suite string) crypto.PrivateKey {
	if suite == bundle.SuiteECDHP256 {
		return k.ec
	}
	return k.rsa
}

func (k *testKeys) otherPriv(suite string) crypto.PrivateKey {
	if suite == bundle.SuiteECDHP256 {
		return k.ec2
	}
	return k.rsa2
}

func newGDK(t testing.TB) []byte {
	t.Helper()
	g, err := NewGDK()
	if err != nil || len(g) != GDKSize {
		t.Fatalf("NewGDK: %x, %v", g, err)
	}
	return g
}

// ok returns a function that returns b, or fails t on err:
// ok(t)(SealPassword(...)).
func ok(t testing.TB) func(b []byte, err error) []byte {
	return func(b []byte, err error) []byte {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
}

// fakePRF is a WebAuthn authenticator's PRF for one credential: an HMAC
// under the credential's secret.
func fakePRF(secret string) PRF {
	return func(in []byte) ([]byte, error) {
		m := hmac.New(sha256.New, []byte(secret))
		m.Write(in)
		return m.Sum(nil), nil
	}
}

func newCode(t testing.TB, index uint32) unlockcode.Code {
	t.Helper()
	m := make([]byte, 9)
	rand.Read(m)
	c, err := unlockcode.FromMaterial(index, m)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// rewrite decodes a slot, changes it and encodes it again: what bundle
// storage can do to any slot.
func rewrite(t testing.TB, slot []byte, f func(*bundle.Slot)) []byte {
	t.Helper()
	s, err := bundle.ParseSlot(slot)
	if err != nil {
		t.Fatal(err)
	}
	f(s)
	b, err := s.Marshal()
	if err != nil {
		t.Fatalf("rewrite: %v", err)
	}
	return b
}

var publicKinds = []bundle.Kind{bundle.KindEscrow, bundle.KindMember, bundle.KindDevice}

var publicSuites = []string{bundle.SuiteECDHP256, bundle.SuiteRSAOAEPSHA1, bundle.SuiteRSAOAEPSHA256}

func recipient(kind bundle.Kind) string {
	switch kind {
	case bundle.KindMember:
		return "alice"
	case bundle.KindDevice:
		return "phone-1"
	}
	return ""
}

// sealed is one slot of every kind × suite, all of one GDK.
type sealed struct {
	name  string
	kind  bundle.Kind
	suite string
	want  Want
	slot  []byte
	open  func(slot []byte, w Want) ([]byte, *bundle.Slot, error)
}

func sealAll(t testing.TB, gdk []byte) []sealed {
	t.Helper()
	k := getKeys(t)
	var out []sealed
	for _, kind := range publicKinds {
		for _, suite := range publicSuites {
			to := To{Group: group, GDKVersion: 2, KeyVersion: 1, ID: recipient(kind)}
			slot := ok(t)(SealPublic(kind, to, suite, k.pub(suite), gdk))
			priv := k.priv(suite)
			out = append(out, sealed{string(kind) + "/" + suite, kind, suite, Want{group, to.ID}, slot,
				func(slot []byte, w Want) ([]byte, *bundle.Slot, error) { return OpenPublic(slot, w, priv) }})
		}
	}
	code := newCode(t, 3)
	unlock := ok(t)(SealUnlock(gdk, To{Group: group, GDKVersion: 2, KeyVersion: 1, ID: "bob"}, 2, code, bundle.MinUnlockIterations))
	out = append(out, sealed{"unlock", bundle.KindUnlock, bundle.SuitePBKDF2AESKW, Want{group, "bob"}, unlock,
		func(slot []byte, w Want) ([]byte, *bundle.Slot, error) {
			return OpenUnlock([][]byte{slot}, w, strings.ToLower(code.String()))
		}})
	pw := ok(t)(SealPassword(gdk, To{Group: group, GDKVersion: 2, KeyVersion: 1, ID: "bob"}, "correct horse", bundle.MinPasswordIterations))
	out = append(out, sealed{"password", bundle.KindPassword, bundle.SuitePBKDF2AESKW, Want{group, "bob"}, pw,
		func(slot []byte, w Want) ([]byte, *bundle.Slot, error) { return OpenPassword(slot, w, "correct horse") }})
	cred := bytes.Repeat([]byte{0xcc}, 200)
	pk := ok(t)(SealPasskey(gdk, To{Group: group, GDKVersion: 2, KeyVersion: 1, ID: "bob"}, cred, fakePRF("cred")))
	out = append(out, sealed{"passkey-prf", bundle.KindPasskeyPRF, bundle.SuiteHKDFAESKW, Want{group, "bob"}, pk,
		func(slot []byte, w Want) ([]byte, *bundle.Slot, error) { return OpenPasskey(slot, w, fakePRF("cred")) }})
	return out
}

// TestSealOpen seals and opens every kind × suite, and checks what the
// opened slot says.
func TestSealOpen(t *testing.T) {
	gdk := newGDK(t)
	all := sealAll(t, gdk)
	seen := map[string]bool{}
	for _, s := range all {
		t.Run(s.name, func(t *testing.T) {
			got, slot, err := s.open(s.slot, s.want)
			if err != nil || !bytes.Equal(got, gdk) {
				t.Fatalf("open = %x, %v; want the GDK", got, err)
			}
			if slot.Kind != s.kind || slot.Suite != s.suite || slot.Group != group || slot.ID != s.want.ID || slot.GDKVersion != 2 {
				t.Fatalf("opened slot %+v", slot)
			}
			if !bytes.Equal(slot.Commit, format.Commitment(group, 2, gdk)) {
				t.Fatal("the slot's commitment is not the GDK's")
			}
			if err := Verify(slot, gdk); err != nil {
				t.Fatalf("Verify: %v", err)
			}
			seen[string(s.kind)+"/"+s.suite] = true
		})
	}
	// Chain: GDK 1 under the chain key of GDK 2.
	old := newGDK(t)
	chain := ok(t)(SealChain(old, gdk, group, 1))
	got, cs, err := OpenChain(chain, group, gdk)
	if err != nil || !bytes.Equal(got, old) || cs.Kind != bundle.KindChain || cs.GDKVersion != 1 || cs.KeyVersion != 2 {
		t.Fatalf("OpenChain = %x, %+v, %v", got, cs, err)
	}
	kc, _ := format.DK(gdk, format.LabelChain)
	if w, _ := WrapKey(kc, old); !bytes.Equal(w, cs.Wrapped) {
		t.Fatal("the chain slot is not AES-KW(DK(GDK 2, chain), GDK 1)")
	}
	seen["chain/aes-kw"] = true
	if len(seen) != 13 {
		t.Fatalf("%d kind × suite pairs sealed and opened, want 13", len(seen))
	}
}

// TestSealsAreFresh: two seals of one GDK to one recipient differ (fresh
// OAEP randomness, ephemeral keys and salts).
func TestSealsAreFresh(t *testing.T) {
	gdk := newGDK(t)
	a, b := sealAll(t, gdk), sealAll(t, gdk)
	for i := range a {
		if bytes.Equal(a[i].slot, b[i].slot) {
			t.Errorf("%s: two seals are equal", a[i].name)
		}
	}
}

func TestWrongKey(t *testing.T) {
	gdk := newGDK(t)
	k := getKeys(t)
	all := sealAll(t, gdk)
	for _, s := range all[:9] {
		t.Run(s.name, func(t *testing.T) {
			for name, priv := range map[string]crypto.PrivateKey{
				"another key of the suite": k.otherPriv(s.suite),
				"a key of the other type":  k.priv(map[bool]string{true: bundle.SuiteRSAOAEPSHA1, false: bundle.SuiteECDHP256}[s.suite == bundle.SuiteECDHP256]),
			} {
				if _, _, err := OpenPublic(s.slot, s.want, priv); !errors.Is(err, ErrWrongKey) {
					t.Errorf("%s: %v, want ErrWrongKey", name, err)
				}
			}
			// The wrapped key altered: a public-key slot cannot tell it from
			// a wrong key.
			bad := rewrite(t, s.slot, func(s *bundle.Slot) { s.Wrapped[5] ^= 1 })
			if _, _, err := OpenPublic(bad, s.want, k.priv(s.suite)); !errors.Is(err, ErrWrongKey) {
				t.Errorf("altered wrapped key: %v, want ErrWrongKey", err)
			}
			if _, _, err := OpenPublic(s.slot, s.want, "not a key"); err == nil || OpenClass(err) != "" {
				t.Errorf("a string as the key: %v", err)
			}
		})
	}
	// A slot that is not a public-key slot.
	pw := all[10]
	if _, _, err := OpenPublic(pw.slot, pw.want, k.rsa); !errors.Is(err, ErrWrongKey) {
		t.Errorf("OpenPublic of a password slot: %v", err)
	}
	// A chain slot under the wrong GDK.
	chain := ok(t)(SealChain(newGDK(t), gdk, group, 1))
	if _, _, err := OpenChain(chain, group, newGDK(t)); !errors.Is(err, ErrWrongKey) {
		t.Errorf("OpenChain with another GDK: %v", err)
	}
}

// TestBindingAttacks moves and alters slots as bundle storage could, and
// checks that each is refused with its own error.
func TestBindingAttacks(t *testing.T) {
	gdk := newGDK(t)
	all := sealAll(t, gdk)
	type attack struct {
		name string
		f    func(*bundle.Slot)
		want func(Want) Want // what the device asks for; nil = the slot's own
		err  error
	}
	common := []attack{
		// The commitment covers group and GDK version: a slot moved to
		// another group or version (its fields rewritten to match the
		// bundle it was put in) holds a key that is not that GDK.
		{"group rewritten", func(s *bundle.Slot) { s.Group = "family-7" }, func(w Want) Want { w.Group = "family-7"; return w }, ErrCommitment},
		{"GDK version rewritten", func(s *bundle.Slot) { s.GDKVersion = 3 }, nil, ErrCommitment},
		{"commitment tampered", func(s *bundle.Slot) { s.Commit[0] ^= 1 }, nil, ErrCommitment},
		{"commitment of another version", func(s *bundle.Slot) { s.Commit = format.Commitment(group, 1, gdk) }, nil, ErrCommitment},
		// The binding covers every other field.
		{"bind tampered", func(s *bundle.Slot) { s.Bind[31] ^= 0x80 }, nil, ErrBinding},
		{"key_version rewritten", func(s *bundle.Slot) { s.KeyVersion = 7 }, nil, ErrBinding},
		// A slot that names another group or recipient than the one being
		// opened is refused before anything is derived.
		{"slot of another group", nil, func(w Want) Want { w.Group = "family-7"; return w }, ErrBinding},
	}
	for _, s := range all {
		attacks := append([]attack(nil), common...)
		if s.want.ID != "" {
			attacks = append(attacks,
				attack{"id rewritten", func(s *bundle.Slot) { s.ID = "mallory" }, func(w Want) Want { w.ID = "mallory"; return w }, ErrBinding},
				attack{"id rewritten, opened as the victim", func(s *bundle.Slot) { s.ID = "mallory" }, nil, ErrBinding},
				attack{"slot of another recipient", nil, func(w Want) Want { w.ID = "mallory"; return w }, ErrBinding})
		}
		switch s.kind {
		case bundle.KindMember:
			attacks = append(attacks, attack{"member → device", func(s *bundle.Slot) { s.Kind = bundle.KindDevice }, nil, ErrBinding})
		case bundle.KindDevice:
			attacks = append(attacks, attack{"device → member", func(s *bundle.Slot) { s.Kind = bundle.KindMember }, nil, ErrBinding})
		case bundle.KindEscrow:
			attacks = append(attacks, attack{"escrow → member", func(s *bundle.Slot) { s.Kind, s.ID = bundle.KindMember, "mallory" },
				func(w Want) Want { w.ID = "mallory"; return w }, ErrBinding})
		case bundle.KindUnlock:
			attacks = append(attacks, attack{"epoch rewritten", func(s *bundle.Slot) { s.Unlock.Epoch = 9 }, nil, ErrBinding})
		case bundle.KindPasskeyPRF:
			attacks = append(attacks, attack{"credential rewritten", func(s *bundle.Slot) { s.Credential = []byte("other") }, nil, ErrBinding})
		}
		for _, a := range attacks {
			t.Run(s.name+"/"+a.name, func(t *testing.T) {
				slot := s.slot
				if a.f != nil {
					slot = rewrite(t, slot, a.f)
				}
				w := s.want
				if a.want != nil {
					w = a.want(w)
				}
				got, _, err := s.open(slot, w)
				if !errors.Is(err, a.err) || got != nil {
					t.Fatalf("open = %x, %v; want %v", got, err, a.err)
				}
			})
		}
	}
}

func TestChainAttacks(t *testing.T) {
	old, gdk := newGDK(t), newGDK(t)
	chain := ok(t)(SealChain(old, gdk, group, 1))
	for _, a := range []struct {
		name  string
		f     func(*bundle.Slot)
		group string
		err   error
	}{
		{"versions rewritten", func(s *bundle.Slot) { s.GDKVersion, s.KeyVersion = 2, 3 }, group, ErrCommitment},
		{"group rewritten", func(s *bundle.Slot) { s.Group = "family-7" }, "family-7", ErrCommitment},
		{"slot of another group", nil, "family-7", ErrBinding},
		{"commit tampered", func(s *bundle.Slot) { s.Commit[1] ^= 1 }, group, ErrCommitment},
		{"bind tampered", func(s *bundle.Slot) { s.Bind[1] ^= 1 }, group, ErrBinding},
		{"wrapped tampered", func(s *bundle.Slot) { s.Wrapped[1] ^= 1 }, group, ErrWrongKey},
	} {
		slot := chain
		if a.f != nil {
			slot = rewrite(t, chain, a.f)
		}
		if got, _, err := OpenChain(slot, a.group, gdk); !errors.Is(err, a.err) || got != nil {
			t.Errorf("%s: %x, %v; want %v", a.name, got, err, a.err)
		}
	}
}

// TestOpenWrongKind: each Open refuses a slot of another kind.
func TestOpenWrongKind(t *testing.T) {
	gdk := newGDK(t)
	all := sealAll(t, gdk)
	unlock, pw, pk := all[9], all[10], all[11]
	chain := ok(t)(SealChain(newGDK(t), gdk, group, 1))
	w := Want{group, "bob"}
	for name, f := range map[string]func() error{
		"password as unlock":  func() error { _, _, err := OpenUnlock([][]byte{pw.slot}, w, "0000-0000-0000-0000"); return err },
		"unlock as password":  func() error { _, _, err := OpenPassword(unlock.slot, w, "x"); return err },
		"passkey as password": func() error { _, _, err := OpenPassword(pk.slot, w, "x"); return err },
		"password as passkey": func() error { _, _, err := OpenPasskey(pw.slot, w, fakePRF("cred")); return err },
		"member as chain":     func() error { _, _, err := OpenChain(all[3].slot, group, gdk); return err },
		"chain as password":   func() error { _, _, err := OpenPassword(chain, w, "x"); return err },
	} {
		if err := f(); !errors.Is(err, ErrBinding) {
			t.Errorf("%s: %v, want ErrBinding", name, err)
		}
	}
}

// TestSecretErrors: wrong secrets, damaged slots and altered KDF inputs.
func TestSecretErrors(t *testing.T) {
	gdk := newGDK(t)
	all := sealAll(t, gdk)
	unlock, pw, pk := all[9], all[10], all[11]
	for _, tt := range []struct {
		name string
		open func() error
		want error
	}{
		{"password wrong", func() error { _, _, err := OpenPassword(pw.slot, pw.want, "correct horsE"); return err }, ErrWrongSecret},
		{"password damaged", func() error {
			_, _, err := OpenPassword(rewrite(t, pw.slot, func(s *bundle.Slot) { s.Wrapped[9] ^= 1 }), pw.want, "correct horse")
			return err
		}, ErrDamaged},
		{"password salt altered", func() error {
			_, _, err := OpenPassword(rewrite(t, pw.slot, func(s *bundle.Slot) { s.KDF.Salt[0] ^= 1 }), pw.want, "correct horse")
			return err
		}, ErrWrongSecret},
		{"password check altered", func() error {
			_, _, err := OpenPassword(rewrite(t, pw.slot, func(s *bundle.Slot) { s.Check[0] ^= 1 }), pw.want, "correct horse")
			return err
		}, ErrWrongSecret},
		{"passkey wrong", func() error { _, _, err := OpenPasskey(pk.slot, pk.want, fakePRF("other")); return err }, ErrWrongSecret},
		{"passkey damaged", func() error {
			_, _, err := OpenPasskey(rewrite(t, pk.slot, func(s *bundle.Slot) { s.Wrapped[39] ^= 1 }), pk.want, fakePRF("cred"))
			return err
		}, ErrDamaged},
		{"passkey salt altered", func() error {
			_, _, err := OpenPasskey(rewrite(t, pk.slot, func(s *bundle.Slot) { s.KDF.Salt[0] ^= 1 }), pk.want, fakePRF("cred"))
			return err
		}, ErrWrongSecret},
		{"passkey PRF fails", func() error {
			_, _, err := OpenPasskey(pk.slot, pk.want, func([]byte) ([]byte, error) { return nil, errors.New("user cancelled") })
			return err
		}, nil},
		{"unlock damaged", func() error {
			_, _, err := unlock.open(rewrite(t, unlock.slot, func(s *bundle.Slot) { s.Wrapped[0] ^= 1 }), unlock.want)
			return err
		}, ErrDamaged},
		{"unlock iterations raised", func() error {
			_, _, err := unlock.open(rewrite(t, unlock.slot, func(s *bundle.Slot) { s.KDF.Iterations++ }), unlock.want)
			return err
		}, ErrWrongCode},
	} {
		err := tt.open()
		if tt.want == nil {
			if err == nil || OpenClass(err) != "" {
				t.Errorf("%s: %v", tt.name, err)
			}
			continue
		}
		if !errors.Is(err, tt.want) {
			t.Errorf("%s: %v, want %v", tt.name, err, tt.want)
		}
	}
	// The PRF is asked for the slot's input, format.PRFInput of its salt.
	s, _ := bundle.ParseSlot(pk.slot)
	var asked []byte
	OpenPasskey(pk.slot, pk.want, func(in []byte) ([]byte, error) { asked = in; return fakePRF("cred")(in) })
	if !bytes.Equal(asked, format.PRFInput(s.KDF.Salt)) {
		t.Fatalf("PRF input %x", asked)
	}
}

// garbageUnlock is an unlock slot of index that no code opens, with the
// most iterations a slot may have: if OpenUnlock ran its KDF, it would
// take seconds and then fail.
func garbageUnlock(t testing.TB, index, epoch uint32) []byte {
	t.Helper()
	s := bundle.Slot{Kind: bundle.KindUnlock, Suite: bundle.SuitePBKDF2AESKW, Group: group, GDKVersion: 2, KeyVersion: 1, ID: "bob",
		KDF:    &bundle.KDF{Salt: make([]byte, 16), Iterations: bundle.MaxIterations},
		Unlock: &bundle.Unlock{Epoch: epoch, Index: index}, Check: make([]byte, 8),
		Commit: make([]byte, 32), Wrapped: make([]byte, 40), Bind: make([]byte, 32)}
	return ok(t)(s.Marshal())
}

func TestOpenUnlock(t *testing.T) {
	gdk := newGDK(t)
	to := To{Group: group, GDKVersion: 2, KeyVersion: 1, ID: "bob"}
	w := Want{group, "bob"}
	codes := make([]unlockcode.Code, 5)
	slots := make([][]byte, 5)
	for i := range codes {
		codes[i] = newCode(t, uint32(i))
		slots[i] = ok(t)(SealUnlock(gdk, to, 4, codes[i], bundle.MinUnlockIterations))
	}
	t.Run("each code opens its slot", func(t *testing.T) {
		for i, c := range codes {
			got, s, err := OpenUnlock(slots, w, c.String())
			if err != nil || !bytes.Equal(got, gdk) || s.Unlock.Index != uint32(i) || s.Unlock.Epoch != 4 {
				t.Fatalf("code %d: %x, %+v, %v", i, got, s, err)
			}
		}
	})
	t.Run("the KDF of one slot only", func(t *testing.T) {
		// Every slot but the code's is garbage with 10,000,000 iterations.
		start := time.Now()
		if _, _, err := OpenUnlock([][]byte{slots[2]}, w, codes[2].String()); err != nil {
			t.Fatal(err)
		}
		one := time.Since(start)
		mixed := [][]byte{garbageUnlock(t, 0, 4), garbageUnlock(t, 1, 4), slots[2], garbageUnlock(t, 3, 4), garbageUnlock(t, 31, 9)}
		start = time.Now()
		got, s, err := OpenUnlock(mixed, w, codes[2].String())
		if err != nil || !bytes.Equal(got, gdk) || s.Unlock.Index != 2 {
			t.Fatalf("%x, %+v, %v", got, s, err)
		}
		// One garbage KDF costs 150 times the real one.
		if d := time.Since(start); d > 20*one+time.Second {
			t.Fatalf("OpenUnlock took %v, one slot %v: it ran another slot's KDF", d, one)
		}
	})
	t.Run("a code whose index has no slot", func(t *testing.T) {
		start := time.Now()
		garbage := [][]byte{garbageUnlock(t, 0, 4), garbageUnlock(t, 1, 4), garbageUnlock(t, 3, 4)}
		if _, _, err := OpenUnlock(garbage, w, codes[2].String()); !errors.Is(err, ErrWrongCode) {
			t.Fatalf("%v, want ErrWrongCode", err)
		}
		if d := time.Since(start); d > time.Second {
			t.Fatalf("took %v: a KDF ran", d)
		}
		if _, _, err := OpenUnlock(nil, w, codes[2].String()); !errors.Is(err, ErrWrongCode) {
			t.Fatalf("no slots: %v, want ErrWrongCode", err)
		}
	})
	t.Run("a valid code of the index, not the slot's", func(t *testing.T) {
		if _, _, err := OpenUnlock(slots, w, newCode(t, 1).String()); !errors.Is(err, ErrWrongCode) {
			t.Fatalf("%v, want ErrWrongCode", err)
		}
	})
	t.Run("the newest epoch of an index", func(t *testing.T) {
		newer := newCode(t, 1)
		list := append([][]byte{ok(t)(SealUnlock(gdk, to, 5, newer, bundle.MinUnlockIterations))}, slots...)
		got, s, err := OpenUnlock(list, w, newer.String())
		if err != nil || !bytes.Equal(got, gdk) || s.Unlock.Epoch != 5 {
			t.Fatalf("newer code: %+v, %v", s, err)
		}
		// The code of the older epoch is no longer tried: its epoch is over.
		if _, _, err := OpenUnlock(list, w, codes[1].String()); !errors.Is(err, ErrWrongCode) {
			t.Fatalf("older code: %v, want ErrWrongCode", err)
		}
	})
	t.Run("typing", func(t *testing.T) {
		c := codes[0].String()
		for _, typed := range []string{c, strings.ToLower(c), strings.ReplaceAll(c, "-", ""), " " + strings.ReplaceAll(c, "-", " \u2013 ") + "\t",
			strings.NewReplacer("0", "o", "1", "l").Replace(c), strings.NewReplacer("0", "O", "1", "I").Replace(c)} {
			if got, _, err := OpenUnlock(slots, w, typed); err != nil || !bytes.Equal(got, gdk) {
				t.Errorf("%q: %v", typed, err)
			}
		}
	})
	t.Run("mistyped", func(t *testing.T) {
		c := []byte(strings.ReplaceAll(codes[0].String(), "-", ""))
		swapped := bytes.Clone(c)
		i := 5
		for swapped[i] == swapped[i+1] {
			i++
		}
		swapped[i], swapped[i+1] = swapped[i+1], swapped[i]
		wrong := bytes.Clone(c)
		wrong[7] = map[bool]byte{true: 'A', false: 'B'}[wrong[7] != 'A']
		for _, tt := range []struct {
			typed string
			err   error
			class string
		}{
			{string(swapped), unlockcode.ErrCheck, "mistyped"},
			{string(wrong), unlockcode.ErrCheck, "mistyped"},
			{string(c[:15]), unlockcode.ErrFormat, "not-a-code"},
			{string(c) + "0", unlockcode.ErrFormat, "not-a-code"},
			{"ABCD-EFGH", unlockcode.ErrFormat, "not-a-code"},
			{strings.Replace(string(c), string(c[4]), "U", 1), unlockcode.ErrFormat, "not-a-code"},
			{"", unlockcode.ErrFormat, "not-a-code"},
		} {
			_, _, err := OpenUnlock(slots, w, tt.typed)
			if !errors.Is(err, tt.err) || OpenClass(err) != tt.class {
				t.Errorf("%q: %v (class %q), want %v", tt.typed, err, OpenClass(err), tt.err)
			}
		}
	})
	t.Run("slots of another user or kind", func(t *testing.T) {
		other := ok(t)(SealUnlock(gdk, To{Group: group, GDKVersion: 2, KeyVersion: 1, ID: "carol"}, 4, newCode(t, 4), bundle.MinUnlockIterations))
		if _, _, err := OpenUnlock(append([][]byte{other}, slots...), w, codes[0].String()); !errors.Is(err, ErrBinding) {
			t.Fatalf("another user's slot in the list: %v", err)
		}
		if _, _, err := OpenUnlock([][]byte{slots[0], []byte("{}")}, w, codes[0].String()); OpenClass(err) != "missing-key" {
			t.Fatalf("a malformed slot in the list: %v", err)
		}
	})
}

func TestRecords(t *testing.T) {
	gdk := newGDK(t)
	rec := ok(t)(SealRecord(gdk, group, "note-1", 2, []byte("hello")))
	r, pt, err := OpenRecord(rec, gdk)
	if err != nil || string(pt) != "hello" || r.Group != group || r.ID != "note-1" || r.GDKVersion != 2 {
		t.Fatalf("OpenRecord = %+v, %q, %v", r, pt, err)
	}
	if again := ok(t)(SealRecord(gdk, group, "note-1", 2, []byte("hello"))); bytes.Equal(rec, again) {
		t.Fatal("two seals share an IV")
	}
	empty := ok(t)(SealRecord(gdk, group, "empty", 2, nil))
	if _, pt, err := OpenRecord(empty, gdk); err != nil || len(pt) != 0 {
		t.Fatalf("empty record: %q, %v", pt, err)
	}
	// Key separation: the record key is DK(GDK, record); the GDK itself,
	// and the other derived keys, do not decrypt a record.
	for name, k := range map[string][]byte{
		"the GDK":        gdk,
		"the bind key":   ok(t)(format.DK(gdk, format.LabelBind)),
		"the chain key":  ok(t)(format.DK(gdk, format.LabelChain)),
		"the record key": ok(t)(format.DK(gdk, format.LabelRecord)),
	} {
		b, _ := aes.NewCipher(k)
		g, _ := cipher.NewGCM(b)
		_, err := g.Open(nil, r.IV, r.CT, bundle.RecordAAD(group, "note-1", 2))
		if (err == nil) != (name == "the record key") {
			t.Errorf("AES-GCM under %s: %v", name, err)
		}
	}
	// A record moved or altered, or opened with another GDK.
	for name, f := range map[string]func(*bundle.Record){
		"another id":      func(r *bundle.Record) { r.ID = "note-2" },
		"another group":   func(r *bundle.Record) { r.Group = "family-7" },
		"another version": func(r *bundle.Record) { r.GDKVersion = 3 },
		"IV altered":      func(r *bundle.Record) { r.IV[0] ^= 1 },
		"tag altered":     func(r *bundle.Record) { r.CT[len(r.CT)-1] ^= 1 },
	} {
		m, _ := bundle.ParseRecord(rec)
		f(m)
		b := ok(t)(m.Marshal())
		if _, _, err := OpenRecord(b, gdk); !errors.Is(err, ErrRecord) || OpenClass(err) != "record" {
			t.Errorf("%s: %v, want ErrRecord", name, err)
		}
	}
	if _, _, err := OpenRecord(rec, newGDK(t)); !errors.Is(err, ErrRecord) {
		t.Errorf("another GDK: %v", err)
	}
	if _, _, err := OpenRecord(rec, gdk[:16]); err == nil || errors.Is(err, ErrRecord) {
		t.Errorf("a 16-byte key: %v", err)
	}
	if _, _, err := OpenRecord([]byte(`{"v":1}`), gdk); OpenClass(err) != "version" {
		t.Errorf("a v1 record: %v", err)
	}
}

func TestVerify(t *testing.T) {
	gdk := newGDK(t)
	chain := ok(t)(SealChain(gdk, newGDK(t), group, 1))
	s, _ := bundle.ParseSlot(chain)
	if err := Verify(s, gdk); err != nil {
		t.Fatal(err)
	}
	for _, n := range []int{0, 16, 31, 33} {
		if err := Verify(s, make([]byte, n)); !errors.Is(err, ErrCommitment) {
			t.Errorf("a %d-byte key: %v", n, err)
		}
	}
	if err := Verify(s, newGDK(t)); !errors.Is(err, ErrCommitment) {
		t.Errorf("another GDK: %v", err)
	}
}

func TestOpenClass(t *testing.T) {
	for _, tt := range []struct {
		err  error
		want string
	}{
		{nil, ""},
		{errors.New("other"), ""},
		{ErrBinding, "binding"},
		{fmt.Errorf("x: %w", ErrCommitment), "commitment"},
		{ErrUntrusted, "untrusted"},
		{fmt.Errorf("failed: %w", ErrWrongKey), "wrong-key"},
		{ErrWrongSecret, "wrong-secret"},
		{ErrWrongCode, "wrong-code"},
		{ErrDamaged, "damaged"},
		{fmt.Errorf("%w: 3 letters", unlockcode.ErrFormat), "not-a-code"},
		{unlockcode.ErrCheck, "mistyped"},
		{ErrRecord, "record"},
		{ErrUnwrap, ""},
	} {
		if got := OpenClass(tt.err); got != tt.want {
			t.Errorf("OpenClass(%v) = %q, want %q", tt.err, got, tt.want)
		}
	}
	_, err := bundle.ParseSlot([]byte(`{"v":2,"kind":"admin","suite":"x"}`))
	if OpenClass(err) != "kind" {
		t.Errorf("OpenClass of a decoding error: %q", OpenClass(err))
	}
}

// ExampleOpenUnlock: a user types the code support read out; the code's
// first symbol names the slot, so a wrong code costs one PBKDF2.
func ExampleOpenUnlock() {
	gdk := bytes.Repeat([]byte{0x42}, 32)
	to := To{Group: "family-42", GDKVersion: 1, KeyVersion: 1, ID: "bob"}
	var slots [][]byte
	var codes []unlockcode.Code
	for i := range uint32(3) {
		code, _ := unlockcode.FromMaterial(i, []byte("0123456789abcdef"[i:i+9]))
		slot, _ := SealUnlock(gdk, to, 1, code, bundle.MinUnlockIterations)
		slots, codes = append(slots, slot), append(codes, code)
	}
	want := Want{Group: "family-42", ID: "bob"}
	typed := strings.ToLower(codes[1].String())
	got, slot, err := OpenUnlock(slots, want, typed)
	fmt.Println(base64.StdEncoding.EncodeToString(got[:3]), slot.Unlock.Index, err)
	other, _ := unlockcode.FromMaterial(1, []byte("987654321"))
	_, _, err = OpenUnlock(slots, want, other.String())
	fmt.Println(OpenClass(err)+":", err)
	_, _, err = OpenUnlock(slots, want, "0000-0000")
	fmt.Println(OpenClass(err)+":", err)
	// Output:
	// QkJC 1 <nil>
	// wrong-code: this unlock code does not open this device's data
	// not-a-code: not an unlock code: 8 letters and digits, want 16
}
