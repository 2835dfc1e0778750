package device

import (
	"bytes"
	"crypto/ecdh"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"flag"
	"os"
	"testing"

	"github.com/escrowd/escrowd/escrow/bundle"
	"github.com/escrowd/escrowd/escrow/kdf"
	"github.com/escrowd/escrowd/escrow/unlockcode"
)

var update = flag.Bool("update", false, "regenerate testdata/vectors.json")

// Vectors is testdata/vectors.json: one vector per suite and slot kind,
// with the inputs a device has, the intermediate values of the KDF and the
// GDK it must get. web/device.js opens the same file in the browser test.
type Vectors struct {
	Comment string       `json:"comment"`
	GDK     string       `json:"gdk"`       // hex, GDK version 2
	OldGDK  string       `json:"old_gdk"`   // hex, GDK version 1
	RSA     string       `json:"rsa_pkcs8"` // hex PKCS#8 of the RSA-2048 recipient
	P256    string       `json:"p256_pkcs8"`
	Slots   []SlotVector `json:"slots"`
	Record  RecordVector `json:"record"`
}

type SlotVector struct {
	Name string          `json:"name"`
	Slot json.RawMessage `json:"slot"`
	// Exactly one of the secrets: "rsa" or "p256" names the private key.
	PrivateKey string `json:"private_key,omitempty"`
	Code       string `json:"code,omitempty"`     // as read aloud
	Password   string `json:"password,omitempty"` // NFC
	PRF        string `json:"prf,omitempty"`      // hex
	Chain      bool   `json:"chain,omitempty"`    // opened with "gdk"
	// Intermediate values, hex.
	Z       string `json:"z,omitempty"`       // ECDH shared secret
	Message string `json:"message,omitempty"` // HMAC input of ecdh-p256
	Secret  string `json:"secret,omitempty"`  // the KDF input (code symbols, password bytes)
	Key     string `json:"key,omitempty"`     // the AES-KW key
	Check   string `json:"check,omitempty"`
	// Want is the key the slot holds, hex.
	Want string `json:"want"`
}

type RecordVector struct {
	Record    json.RawMessage `json:"record"`
	AAD       string          `json:"aad"` // hex
	GDK       string          `json:"gdk"` // hex
	Plaintext string          `json:"plaintext"`
}

func unhex(t *testing.T, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func generateVectors(t *testing.T) Vectors {
	gdk, _ := NewGDK()
	old, _ := NewGDK()
	rk, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	ek, _ := ecdh.P256().GenerateKey(rand.Reader)
	rsaDER, _ := x509.MarshalPKCS8PrivateKey(rk)
	ecDER, _ := x509.MarshalPKCS8PrivateKey(ek)
	rsaPub, _ := x509.MarshalPKIXPublicKey(&rk.PublicKey)
	ecPub, _ := x509.MarshalPKIXPublicKey(ek.PublicKey())
	v := Vectors{
		Comment: "escrowd key bundle format v1 test vectors (docs/FORMAT.md); hex unless a slot or record field says base64",
		GDK:     hex.EncodeToString(gdk), OldGDK: hex.EncodeToString(old),
		RSA: hex.EncodeToString(rsaDER), P256: hex.EncodeToString(ecDER),
	}
	must := func(b []byte, err error) []byte {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	add := func(name string, slot []byte, sv SlotVector) {
		sv.Name, sv.Slot = name, slot
		if sv.Want == "" {
			sv.Want = v.GDK
		}
		v.Slots = append(v.Slots, sv)
	}
	add("escrow rsa-oaep-sha1", must(SealPublic(bundle.KindEscrow, "", 1, bundle.SuiteRSAOAEPSHA1, rsaPub, gdk)), SlotVector{PrivateKey: "rsa"})
	add("member rsa-oaep-sha256", must(SealPublic(bundle.KindMember, "alice", 1, bundle.SuiteRSAOAEPSHA256, rsaPub, gdk)), SlotVector{PrivateKey: "rsa"})
	for _, k := range []bundle.Kind{bundle.KindEscrow, bundle.KindMember, bundle.KindDevice} {
		id := map[bundle.Kind]string{bundle.KindMember: "alice", bundle.KindDevice: "phone-1"}[k]
		add(string(k)+" ecdh-p256", must(SealPublic(k, id, 1, bundle.SuiteECDHP256, ecPub, gdk)), SlotVector{PrivateKey: "p256"})
	}
	code := must(func() ([]byte, error) { return hex.DecodeString("6b2f1e0c9d8a7b6c5d4e") }())
	c, _ := unlockcode.FromMaterial(code)
	add("unlock", must(SealUnlock(gdk, "bob", 1, 3, 2, c, bundle.MinUnlockIterations)), SlotVector{Code: c.String()})
	add("password", must(SealPassword(gdk, "bob", 1, "correct horse battery staple", bundle.MinPasswordIterations)), SlotVector{Password: "correct horse battery staple"})
	prf := make([]byte, 32)
	rand.Read(prf)
	add("passkey-prf", must(SealPasskey(gdk, "cred-AbC_1", 1, prf)), SlotVector{PRF: hex.EncodeToString(prf)})
	add("chain", must(SealChain(old, gdk, 2)), SlotVector{Chain: true, Want: v.OldGDK})
	rec := must(SealRecord(old, "family-42", "note-1", 1, []byte("the group's first note")))
	v.Record = RecordVector{Record: rec, AAD: hex.EncodeToString(bundle.RecordAAD("family-42", "note-1", 1)), GDK: v.OldGDK, Plaintext: "the group's first note"}
	// Intermediates.
	for i := range v.Slots {
		fillIntermediates(t, &v, &v.Slots[i])
	}
	return v
}

// fillIntermediates computes the KDF's intermediate values of sv.
func fillIntermediates(t *testing.T, v *Vectors, sv *SlotVector) {
	t.Helper()
	s, err := bundle.ParseSlot(sv.Slot)
	if err != nil {
		t.Fatalf("%s: %v", sv.Name, err)
	}
	var key []byte
	switch {
	case s.Suite == bundle.SuiteECDHP256:
		k, err := x509.ParsePKCS8PrivateKey(unhex(t, v.P256))
		if err != nil {
			t.Fatal(err)
		}
		priv := k.(interface {
			ECDH() (*ecdh.PrivateKey, error)
		})
		ep, _ := priv.ECDH()
		peer, _ := ecdh.P256().NewPublicKey(s.EPK)
		z, _ := ep.ECDH(peer)
		msg, _ := kdf.ECDHMessage(string(s.Kind), s.EPK, ep.PublicKey().Bytes())
		key, _ = kdf.ECDHKey(z, msg)
		sv.Z, sv.Message = hex.EncodeToString(z), hex.EncodeToString(msg)
	case s.Kind == bundle.KindUnlock:
		c, err := unlockcode.Parse(sv.Code)
		if err != nil {
			t.Fatal(err)
		}
		sv.Secret = hex.EncodeToString(c.Secret())
		key, _ = kdf.PasswordKey(c.Secret(), s.KDF.Salt, int(s.KDF.Iterations))
	case s.Kind == bundle.KindPassword:
		sv.Secret = hex.EncodeToString([]byte(sv.Password))
		key, _ = kdf.PasswordKey([]byte(sv.Password), s.KDF.Salt, int(s.KDF.Iterations))
	case s.Kind == bundle.KindPasskeyPRF:
		key, _ = kdf.PasskeyKey(unhex(t, sv.PRF), s.KDF.Salt)
	default:
		return
	}
	sv.Key = hex.EncodeToString(key)
	if s.Check != nil {
		sv.Check = hex.EncodeToString(kdf.CheckValue(key))
	}
}

// TestVectors opens every vector of testdata/vectors.json as a device and
// recomputes its intermediate values. go test -run TestVectors -update
// makes a new file.
func TestVectors(t *testing.T) {
	const path = "testdata/vectors.json"
	if *update {
		b, err := json.MarshalIndent(generateVectors(t), "", "  ")
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, append(b, '\n'), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var v Vectors
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatal(err)
	}
	rk, err := x509.ParsePKCS8PrivateKey(unhex(t, v.RSA))
	if err != nil {
		t.Fatal(err)
	}
	ek, err := x509.ParsePKCS8PrivateKey(unhex(t, v.P256))
	if err != nil {
		t.Fatal(err)
	}
	ecKey, _ := ek.(interface {
		ECDH() (*ecdh.PrivateKey, error)
	}).ECDH()
	kinds := map[string]bool{}
	for _, sv := range v.Slots {
		t.Run(sv.Name, func(t *testing.T) {
			want := sv
			fillIntermediates(t, &v, &want)
			if want.Z != sv.Z || want.Message != sv.Message || want.Key != sv.Key || want.Check != sv.Check || want.Secret != sv.Secret {
				t.Errorf("intermediate values differ from the file:\n got %+v\nfile %+v", want, sv)
			}
			var got []byte
			var err error
			switch {
			case sv.PrivateKey == "rsa":
				got, err = OpenPublic(sv.Slot, rk)
			case sv.PrivateKey == "p256":
				got, err = OpenPublic(sv.Slot, ecKey)
			case sv.Code != "":
				got, err = OpenUnlock(sv.Slot, sv.Code)
			case sv.Password != "":
				got, err = OpenPassword(sv.Slot, sv.Password)
			case sv.PRF != "":
				got, err = OpenPasskey(sv.Slot, unhex(t, sv.PRF))
			case sv.Chain:
				got, err = OpenChain(sv.Slot, unhex(t, v.GDK))
			}
			if err != nil || !bytes.Equal(got, unhex(t, sv.Want)) {
				t.Fatalf("opened %x, %v; want %s", got, err, sv.Want)
			}
			s, _ := bundle.ParseSlot(sv.Slot)
			kinds[string(s.Kind)+"/"+s.Suite] = true
		})
	}
	for _, k := range []string{"escrow/rsa-oaep-sha1", "member/rsa-oaep-sha256", "escrow/ecdh-p256", "member/ecdh-p256",
		"device/ecdh-p256", "unlock/pbkdf2-sha256-aes-kw", "password/pbkdf2-sha256-aes-kw", "passkey-prf/hkdf-sha256-aes-kw", "chain/aes-kw"} {
		if !kinds[k] {
			t.Errorf("no vector for %s", k)
		}
	}
	r, pt, err := OpenRecord(v.Record.Record, unhex(t, v.Record.GDK))
	if err != nil || string(pt) != v.Record.Plaintext {
		t.Fatalf("record: %q, %v", pt, err)
	}
	if hex.EncodeToString(bundle.RecordAAD(r.Group, r.ID, r.GDKVersion)) != v.Record.AAD {
		t.Fatal("record AAD differs from the file")
	}
}
