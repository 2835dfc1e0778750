package device

import (
	"bytes"
	"crypto/ecdh"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/escrowd/escrowd/escrow/bundle"
	"github.com/escrowd/escrowd/escrow/unlockcode"
)

// tamper flips one bit of the slot's wrapped key, keeping it valid JSON.
func tamper(t *testing.T, slot []byte) []byte {
	t.Helper()
	s, err := bundle.ParseSlot(slot)
	if err != nil {
		t.Fatal(err)
	}
	s.Wrapped[3] ^= 0x10
	b, err := s.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestSecretSlotErrors(t *testing.T) {
	gdk, _ := NewGDK()
	c, _ := unlockcode.FromMaterial([]byte("0123456789"))
	other, _ := unlockcode.FromMaterial([]byte("9876543210"))
	unlock, err := SealUnlock(gdk, "u", 1, 1, 0, c, bundle.MinUnlockIterations)
	if err != nil {
		t.Fatal(err)
	}
	pw, err := SealPassword(gdk, "u", 1, "hunter2hunter2", bundle.MinPasswordIterations)
	if err != nil {
		t.Fatal(err)
	}
	prf := bytes.Repeat([]byte{7}, 32)
	pk, err := SealPasskey(gdk, "cred", 1, prf)
	if err != nil {
		t.Fatal(err)
	}
	mistyped := []byte(strings.ToLower(c.String()))
	mistyped[1], mistyped[2] = mistyped[2], mistyped[1]
	if mistyped[1] == mistyped[2] {
		t.Fatal("pick another code")
	}
	tests := []struct {
		name string
		open func() ([]byte, error)
		want error
	}{
		{"unlock ok", func() ([]byte, error) { return OpenUnlock(unlock, strings.ToLower(c.String())) }, nil},
		{"unlock wrong code", func() ([]byte, error) { return OpenUnlock(unlock, other.String()) }, ErrWrongCode},
		{"unlock swapped", func() ([]byte, error) { return OpenUnlock(unlock, string(mistyped)) }, unlockcode.ErrCheck},
		{"unlock short", func() ([]byte, error) { return OpenUnlock(unlock, "ABCD-EFGH") }, unlockcode.ErrFormat},
		{"unlock damaged", func() ([]byte, error) { return OpenUnlock(tamper(t, unlock), c.String()) }, ErrDamaged},
		{"password ok", func() ([]byte, error) { return OpenPassword(pw, "hunter2hunter2") }, nil},
		{"password wrong", func() ([]byte, error) { return OpenPassword(pw, "hunter3hunter3") }, ErrWrongSecret},
		{"password damaged", func() ([]byte, error) { return OpenPassword(tamper(t, pw), "hunter2hunter2") }, ErrDamaged},
		{"passkey ok", func() ([]byte, error) { return OpenPasskey(pk, prf) }, nil},
		{"passkey wrong", func() ([]byte, error) { return OpenPasskey(pk, bytes.Repeat([]byte{8}, 32)) }, ErrWrongSecret},
		{"passkey damaged", func() ([]byte, error) { return OpenPasskey(tamper(t, pk), prf) }, ErrDamaged},
		{"kind mismatch", func() ([]byte, error) { return OpenPassword(unlock, "x") }, bundle.ErrMalformed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tt.open()
			if tt.want == nil {
				if err != nil || !bytes.Equal(got, gdk) {
					t.Fatalf("got %x, %v", got, err)
				}
				return
			}
			if !errors.Is(err, tt.want) {
				t.Fatalf("err = %v, want %v", err, tt.want)
			}
		})
	}
}

func TestPublicSlotsAndChain(t *testing.T) {
	gdk, _ := NewGDK()
	k1, _ := ecdh.P256().GenerateKey(rand.Reader)
	k2, _ := ecdh.P256().GenerateKey(rand.Reader)
	pub, _ := x509.MarshalPKIXPublicKey(k1.PublicKey())
	slot, err := SealPublic(bundle.KindDevice, "d1", 1, bundle.SuiteECDHP256, pub, gdk)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := OpenPublic(slot, k1); err != nil || !bytes.Equal(got, gdk) {
		t.Fatalf("open: %v", err)
	}
	if _, err := OpenPublic(slot, k2); !errors.Is(err, ErrWrongKey) {
		t.Fatalf("other key: %v", err)
	}
	if _, err := OpenPublic(tamper(t, slot), k1); !errors.Is(err, ErrWrongKey) {
		t.Fatalf("tampered: %v", err)
	}
	// The kind is bound into the KDF: relabelling a device slot as a member
	// slot breaks it.
	relabelled := bytes.Replace(slot, []byte(`"kind":"device"`), []byte(`"kind":"member"`), 1)
	if _, err := OpenPublic(relabelled, k1); !errors.Is(err, ErrWrongKey) {
		t.Fatalf("relabelled: %v", err)
	}
	next, _ := NewGDK()
	chain, err := SealChain(gdk, next, 2)
	if err != nil {
		t.Fatal(err)
	}
	if old, err := OpenChain(chain, next); err != nil || !bytes.Equal(old, gdk) {
		t.Fatalf("chain: %v", err)
	}
	if _, err := OpenChain(chain, gdk); !errors.Is(err, ErrWrongKey) {
		t.Fatalf("chain with the wrong GDK: %v", err)
	}
}

func TestRecord(t *testing.T) {
	gdk, _ := NewGDK()
	rec, err := SealRecord(gdk, "g", "r1", 1, []byte("hello"))
	if err != nil {
		t.Fatal(err)
	}
	if _, pt, err := OpenRecord(rec, gdk); err != nil || string(pt) != "hello" {
		t.Fatalf("open: %q, %v", pt, err)
	}
	again, _ := SealRecord(gdk, "g", "r1", 1, []byte("hello"))
	if bytes.Equal(rec, again) {
		t.Fatal("two seals share an IV")
	}
	for name, b := range map[string][]byte{
		"moved to another id":    bytes.Replace(rec, []byte(`"id":"r1"`), []byte(`"id":"r2"`), 1),
		"moved to another group": bytes.Replace(rec, []byte(`"group":"g"`), []byte(`"group":"h"`), 1),
		"other version":          bytes.Replace(rec, []byte(`"gdk_version":1`), []byte(`"gdk_version":2`), 1),
	} {
		if _, _, err := OpenRecord(b, gdk); !errors.Is(err, ErrRecord) {
			t.Errorf("%s: %v", name, err)
		}
	}
}

// ExampleOpenUnlock: a user types the code support read out.
func ExampleOpenUnlock() {
	gdk := bytes.Repeat([]byte{0x42}, 32)
	code, _ := unlockcode.FromMaterial([]byte("0123456789"))
	slot, _ := SealUnlock(gdk, "bob", 1, 1, 0, code, bundle.MinUnlockIterations)
	typed := strings.ToLower(code.String())
	got, err := OpenUnlock(slot, typed)
	fmt.Println(base64.StdEncoding.EncodeToString(got[:3]), err)
	_, err = OpenUnlock(slot, "0000-0000-0000-0000")
	fmt.Println(err)
	// Output:
	// QkJC <nil>
	// this unlock code does not open this device's data
}
