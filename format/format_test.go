package format

import (
	"bytes"
	"crypto/ecdh"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
)

// webcryptoPins were computed by testdata/webcrypto_pins.mjs with node's
// WebCrypto, the way the browser device computes them (DK as AES-CBC with
// a zero IV per 16-byte half, first 16 bytes kept), and nothing of escrowd.
var webcryptoPins = struct {
	dkRecord, dkChain, dkBind, dkZero, dkFIPS197 string
	ecdhEPK, ecdhRPK, ecdhZ, ecdhInfo, ecdhKey   string
	bindFull, passkeyKey, passwordKey            string
}{
	dkRecord:    "1f9d32da40239767a724e2edf7a4f4c77099e5e622b5a254755de527c900d22a",
	dkChain:     "94a53dc58e8ee47071b6fb4fc31cb3de43a62b73ca91e0bfa9950358a876327d",
	dkBind:      "0106c9ed36737e2c8d9795b4a4ba6b5228b2b07b586260ec88c62465ca2d5158",
	dkZero:      "dc95c078a2408989ad48a21492842087dc95c078a2408989ad48a21492842087",
	dkFIPS197:   "8ea2b7ca516745bfeafc49904b4960898ea2b7ca516745bfeafc49904b496089",
	ecdhEPK:     "0460fed4ba255a9d31c961eb74c6356d68c049b8923b61fa6ce669622e60f29fb67903fe1008b8bc99a41ae9e95628bc64f2f1b20c2d7e9f5177a3c294d4462299",
	ecdhRPK:     "041ccbe91c075fc7f4f033bfa248db8fccd3565de94bbfb12f3c59ff46c271bf83ce4014c68811f9a21a1fdb2c0e6113e06db7ca93b7404e78dc7ccd5ca89a4ca9",
	ecdhZ:       "874cc88baf56772eba61b4ccb240ed93d96f2345b346d0e7f9d58a3a555535d0",
	ecdhInfo:    "02ef8e97e3038501db03a1480c9ecc16e6dcd287ac8d777c565ac35c3b49e49b",
	ecdhKey:     "76ef5b8a3c131d43163538331c8466f1b3dde5d8767ae2acc1dfdc4413fbb620",
	bindFull:    "41b00d7faf29e83f0659cb116cf9e679ab05102604819d1d86cf9a7b5f167ece",
	passkeyKey:  "810582eb2cab1a4a13c107263265611c0ee947e049f4aefbf836296065b173fc",
	passwordKey: "b203db10c7d51feb6174652094286b721b1a15586029e886b78a5e76d123c305",
}

// pythonPins were computed by testdata/pins.py with hashlib, hmac and
// struct from the byte layouts of the doc comments, and nothing of escrowd.
var pythonPins = struct {
	commitment, ecdhInfo, messageFull, messageEscrow, prfInput string
	checkZero, checkKey0, recordAAD, codeMessage               string
	rfc7914a, rfc7914b, passwordKey                            string
}{
	commitment:    "b984d4fa62bdbce622c5c462d77390b66cdc361ec2d5c1d64481fcd925141323",
	ecdhInfo:      "73f336c868a14ae4c4a63ccff4570cef2023f573d5abdff8d3a79d0fd8d19b69",
	messageFull:   "657363726f776420763220736c6f740006756e6c6f636b1470626b6466322d7368613235362d6165732d6b77000966616d696c792d343200000002000000030003626f6200030102034104111111111111111111111111111111111111111111111111111111111111111111111111111111111111111111111111111111111111111111111111111111111022222222222222222222222222222222000100000000000700000003083333333333333333204444444444444444444444444444444444444444444444444444444444444444002855555555555555555555555555555555555555555555555555555555555555555555555555555555",
	messageEscrow: "657363726f776420763220736c6f740006657363726f770f7273612d6f6165702d736861323536000167000000010000000100000000000000000000000000000000000000204444444444444444444444444444444444444444444444444444444444444444010066666666666666666666666666666666666666666666666666666666666666666666666666666666666666666666666666666666666666666666666666666666666666666666666666666666666666666666666666666666666666666666666666666666666666666666666666666666666666666666666666666666666666666666666666666666666666666666666666666666666666666666666666666666666666666666666666666666666666666666666666666666666666666666666666666666666666666666666666666666666666666666666666666666666666666666666666666666666666666666666666666666666666666666666666666666",
	prfInput:      "657363726f776420763220706173736b65792d70726600fffefdfcfbfaf9f8f7f6f5f4f3f2f1f0efeeedecebeae9e8e7e6e5e4e3e2e1e0",
	checkZero:     "a028623d2e240905",
	checkKey0:     "1d1fe8f60550a996",
	recordAAD:     "657363726f7764207632207265636f726400000966616d696c792d343200066e6f74652d3100000002",
	codeMessage:   "657363726f776420756e6c6f636b20636f646520763200000966616d696c792d34320003626f62000000070000001f10707172737475767778797a7b7c7d7e7f",
	rfc7914a:      "55ac046e56e3089fec1691c22544b605f94185216dde0465e68b9d57c20dacbc",
	rfc7914b:      "4ddcd8f60b98be21830cee5ef22701f9641a4418d04c0414aeff08876b34ab56",
	passwordKey:   "b203db10c7d51feb6174652094286b721b1a15586029e886b78a5e76d123c305",
}

func unhex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func seq(n int, f func(int) byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = f(i)
	}
	return b
}

// key0 is 00 01 .. 1f, the key of the pins.
var key0 = seq(32, func(i int) byte { return byte(i) })

func rep(n int, c byte) []byte { return bytes.Repeat([]byte{c}, n) }

func TestLabels(t *testing.T) {
	for _, tt := range []struct {
		l    Label
		name string
	}{{LabelRecord, "record key"}, {LabelChain, "chain key"}, {LabelBind, "bind key"}} {
		want := make([]byte, 32)
		copy(want, "escrowd v2 "+tt.name)
		if !bytes.Equal(tt.l[:], want) {
			t.Errorf("label %q = %q", tt.name, tt.l[:])
		}
	}
	if LabelRecord == LabelChain || LabelChain == LabelBind || LabelRecord == LabelBind {
		t.Fatal("two labels are equal")
	}
}

func TestDK(t *testing.T) {
	var fips Label
	copy(fips[:16], unhex(t, "00112233445566778899aabbccddeeff"))
	copy(fips[16:], fips[:16])
	tests := []struct {
		name  string
		key   []byte
		label Label
		want  string
	}{
		{"record", key0, LabelRecord, webcryptoPins.dkRecord},
		{"chain", key0, LabelChain, webcryptoPins.dkChain},
		{"bind", key0, LabelBind, webcryptoPins.dkBind},
		// AES-256 of the zero block under the zero key, twice.
		{"zero", make([]byte, 32), Label{}, webcryptoPins.dkZero},
		// FIPS-197 appendix C.3, twice.
		{"FIPS-197 C.3", key0, fips, webcryptoPins.dkFIPS197},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := DK(tt.key, tt.label)
			if err != nil || hex.EncodeToString(got) != tt.want {
				t.Fatalf("DK = %x, %v; want %s", got, err, tt.want)
			}
		})
	}
	// Every key size but AES-256 is refused, AES-128 and AES-192 included.
	for _, n := range []int{0, 1, 16, 24, 31, 33, 64} {
		if k, err := DK(make([]byte, n), LabelRecord); !errors.Is(err, ErrInput) || k != nil {
			t.Errorf("DK with a %d-byte key = %x, %v; want ErrInput", n, k, err)
		}
	}
	// The key is not modified, and DK is a function.
	k := bytes.Clone(key0)
	a, _ := DK(k, LabelBind)
	b, _ := DK(k, LabelBind)
	if !bytes.Equal(k, key0) || !bytes.Equal(a, b) {
		t.Fatal("DK modified its key or is not deterministic")
	}
}

func TestECDHInfo(t *testing.T) {
	epk := append([]byte{4}, rep(64, 0x11)...)
	rpk := append([]byte{4}, rep(64, 0x22)...)
	got, err := ECDHInfo(epk, rpk)
	if err != nil || hex.EncodeToString(got[:]) != pythonPins.ecdhInfo {
		t.Fatalf("ECDHInfo = %x, %v; want %s", got, err, pythonPins.ecdhInfo)
	}
	// The order of the keys matters: the sender's is first.
	if swapped, _ := ECDHInfo(rpk, epk); swapped == got {
		t.Fatal("ECDHInfo(epk, rpk) = ECDHInfo(rpk, epk)")
	}
	compressed := append([]byte{2}, rep(32, 0x11)...)
	hybrid := append([]byte{6}, rep(64, 0x11)...)
	for _, tt := range []struct {
		name     string
		epk, rpk []byte
	}{
		{"empty epk", nil, rpk},
		{"empty rpk", epk, nil},
		{"compressed epk", compressed, rpk},
		{"compressed rpk", epk, compressed},
		{"hybrid epk (0x06)", hybrid, rpk},
		{"epk of 64 bytes", epk[:64], rpk},
		{"rpk of 66 bytes", epk, append(bytes.Clone(rpk), 0)},
		{"raw x||y rpk", epk, append(rep(1, 0x22), rep(64, 0x22)...)},
		{"point at infinity", []byte{0}, rpk},
	} {
		if l, err := ECDHInfo(tt.epk, tt.rpk); !errors.Is(err, ErrInput) || l != (Label{}) {
			t.Errorf("%s: ECDHInfo = %x, %v; want ErrInput", tt.name, l, err)
		}
	}
}

// TestECDHKey runs ecdh-p256 end to end with Go's crypto/ecdh and checks
// every step against node's WebCrypto.
func TestECDHKey(t *testing.T) {
	eph, err := ecdh.P256().NewPrivateKey(unhex(t, "c9afa9d845ba75166b5c215767b1d6934e50c3db36e89b127b8a622b120f6721"))
	if err != nil {
		t.Fatal(err)
	}
	rcp, err := ecdh.P256().NewPrivateKey(unhex(t, "519b423d715f8b581f4fa8ee59f4771a5b44c8130b4e3eacca54a56dda72b464"))
	if err != nil {
		t.Fatal(err)
	}
	epk, rpk := eph.PublicKey().Bytes(), rcp.PublicKey().Bytes()
	if hex.EncodeToString(epk) != webcryptoPins.ecdhEPK || hex.EncodeToString(rpk) != webcryptoPins.ecdhRPK {
		t.Fatalf("public keys differ from node's: %x %x", epk, rpk)
	}
	// The sender and the recipient get the same Z.
	z, _ := eph.ECDH(rcp.PublicKey())
	z2, _ := rcp.ECDH(eph.PublicKey())
	if !bytes.Equal(z, z2) || hex.EncodeToString(z) != webcryptoPins.ecdhZ {
		t.Fatalf("Z = %x / %x, want %s", z, z2, webcryptoPins.ecdhZ)
	}
	info, err := ECDHInfo(epk, rpk)
	if err != nil || hex.EncodeToString(info[:]) != webcryptoPins.ecdhInfo {
		t.Fatalf("info = %x, %v", info, err)
	}
	k, err := ECDHKey(z, info)
	if err != nil || hex.EncodeToString(k) != webcryptoPins.ecdhKey {
		t.Fatalf("ECDHKey = %x, %v; want %s", k, err, webcryptoPins.ecdhKey)
	}
	if dk, _ := DK(z, info); !bytes.Equal(dk, k) {
		t.Fatal("ECDHKey is not DK(Z, info)")
	}
	for _, n := range []int{0, 16, 31, 33, 65} {
		if k, err := ECDHKey(make([]byte, n), info); !errors.Is(err, ErrInput) || k != nil {
			t.Errorf("ECDHKey with a %d-byte Z = %x, %v; want ErrInput", n, k, err)
		}
	}
}

func TestCommitment(t *testing.T) {
	got := Commitment("family-42", 2, key0)
	if hex.EncodeToString(got) != pythonPins.commitment {
		t.Fatalf("Commitment = %x, want %s", got, pythonPins.commitment)
	}
	h := sha256.Sum256(append(CommitmentPrefix("family-42", 2), key0...))
	if !bytes.Equal(h[:], got) {
		t.Fatal("Commitment is not SHA-256(CommitmentPrefix || gdk)")
	}
	if p := CommitmentPrefix("g", 0x01020304); hex.EncodeToString(p) != hex.EncodeToString([]byte(CommitmentLabel))+"00"+"0001"+"67"+"01020304" {
		t.Fatalf("CommitmentPrefix = %x", p)
	}
	// Each input changes it; the length prefix keeps group and version apart.
	other := bytes.Clone(key0)
	other[31] ^= 1
	for name, c := range map[string][]byte{
		"group":   Commitment("family-43", 2, key0),
		"version": Commitment("family-42", 3, key0),
		"gdk":     Commitment("family-42", 2, other),
		"shifted": Commitment("family-4", 0x32000002, key0),
	} {
		if bytes.Equal(c, got) {
			t.Errorf("changing the %s does not change the commitment", name)
		}
	}
}

// fullContext has every field set, as no real slot does: it is the
// context of pythonPins.messageFull and webcryptoPins.bindFull.
func fullContext() *SlotContext {
	return &SlotContext{
		Kind: "unlock", Suite: "pbkdf2-sha256-aes-kw", Group: "family-42",
		GDKVersion: 2, KeyVersion: 3, ID: "bob",
		Credential: []byte{1, 2, 3},
		EPK:        append([]byte{4}, rep(64, 0x11)...),
		Salt:       rep(16, 0x22), Iterations: 65536,
		Epoch: 7, Index: 3,
		Check:   rep(8, 0x33),
		Commit:  rep(32, 0x44),
		Wrapped: rep(40, 0x55),
	}
}

func TestMessage(t *testing.T) {
	if got := hex.EncodeToString(fullContext().Message()); got != pythonPins.messageFull {
		t.Fatalf("Message of the full context:\n got %s\nwant %s", got, pythonPins.messageFull)
	}
	escrow := &SlotContext{Kind: "escrow", Suite: "rsa-oaep-sha256", Group: "g", GDKVersion: 1, KeyVersion: 1,
		Commit: rep(32, 0x44), Wrapped: rep(256, 0x66)}
	if got := hex.EncodeToString(escrow.Message()); got != pythonPins.messageEscrow {
		t.Fatalf("Message of an escrow context:\n got %s\nwant %s", got, pythonPins.messageEscrow)
	}
	// An absent field and an empty one are the same (the bundle never has
	// empty fields: "absent" is the only way to say nothing).
	e2 := *escrow
	e2.Credential, e2.EPK, e2.Salt, e2.Check = []byte{}, []byte{}, []byte{}, []byte{}
	if !bytes.Equal(e2.Message(), escrow.Message()) {
		t.Fatal("nil and empty fields give different messages")
	}
	// The largest fields the bundle accepts fit their length prefixes.
	max := &SlotContext{Kind: "passkey-prf", Suite: "hkdf-sha256-aes-kw", Group: strings.Repeat("g", 128),
		GDKVersion: 1<<31 - 1, KeyVersion: 1<<31 - 1, ID: strings.Repeat("i", 128), Credential: rep(1023, 1),
		EPK: rep(65, 4), Salt: rep(32, 2), Iterations: 10_000_000, Epoch: 1<<31 - 1, Index: 31,
		Check: rep(8, 3), Commit: rep(32, 4), Wrapped: rep(512, 5)}
	if n := len(max.Message()); n != len(BindLabel)+1+1+11+1+18+2+128+4+4+2+128+2+1023+1+65+1+32+4+4+4+1+8+1+32+2+512 {
		t.Fatalf("Message of the largest context is %d bytes", n)
	}
}

// mutations returns, for every field of SlotContext, a copy of c with that
// field changed: found by reflection, so a field added to SlotContext (and
// so to the binding) is covered without editing this test.
func mutations(t *testing.T, c *SlotContext) map[string]*SlotContext {
	t.Helper()
	out := map[string]*SlotContext{}
	rt := reflect.TypeOf(*c)
	for i := range rt.NumField() {
		for j, change := range []string{"grow", "alter"} {
			m := *c
			m.Credential, m.EPK, m.Salt = bytes.Clone(c.Credential), bytes.Clone(c.EPK), bytes.Clone(c.Salt)
			m.Check, m.Commit, m.Wrapped = bytes.Clone(c.Check), bytes.Clone(c.Commit), bytes.Clone(c.Wrapped)
			f := reflect.ValueOf(&m).Elem().Field(i)
			switch v := f.Addr().Interface().(type) {
			case *string:
				if j == 0 {
					*v += "x"
				} else if *v != "" {
					*v = (*v)[:len(*v)-1] + string((*v)[len(*v)-1]^1)
				} else {
					continue
				}
			case *uint32:
				if j == 0 {
					*v++
				} else {
					*v ^= 1 << 31
				}
			case *[]byte:
				if j == 0 {
					*v = append(*v, 0)
				} else if len(*v) > 0 {
					(*v)[0] ^= 0x80
				} else {
					continue
				}
			default:
				t.Fatalf("SlotContext.%s is a %s: teach this test to change it", rt.Field(i).Name, f.Type())
			}
			out[rt.Field(i).Name+" "+change] = &m
		}
	}
	return out
}

// TestMessageEveryField: changing any single field of a context changes
// its message, and so its binding.
func TestMessageEveryField(t *testing.T) {
	for _, base := range []*SlotContext{fullContext(), {Kind: "chain", Suite: "aes-kw", Group: "g", GDKVersion: 1, KeyVersion: 2,
		Commit: rep(32, 1), Wrapped: rep(40, 2)}} {
		msg := base.Message()
		bind, err := Bind(key0, base)
		if err != nil {
			t.Fatal(err)
		}
		muts := mutations(t, base)
		if n := reflect.TypeOf(*base).NumField(); len(muts) < n {
			t.Fatalf("%d mutations for %d fields", len(muts), n)
		}
		for name, m := range muts {
			if bytes.Equal(m.Message(), msg) {
				t.Errorf("%s/%s: changing %s does not change the message", base.Kind, name, name)
			}
			if b, _ := Bind(key0, m); hmac.Equal(b, bind) {
				t.Errorf("%s/%s: changing %s does not change the binding", base.Kind, name, name)
			}
		}
	}
}

// TestMessageBoundaries: moving bytes across the boundary of two adjacent
// variable-length fields changes the message (the lengths are explicit).
func TestMessageBoundaries(t *testing.T) {
	a := &SlotContext{Kind: "member", Suite: "ecdh-p256", Group: "ab", ID: "c"}
	b := &SlotContext{Kind: "member", Suite: "ecdh-p256", Group: "a", ID: "bc"}
	c := &SlotContext{Kind: "membere", Suite: "cdh-p256", Group: "ab", ID: "c"}
	d := &SlotContext{Kind: "member", Suite: "ecdh-p256", Group: "ab", ID: "c", Check: []byte{1}}
	e := &SlotContext{Kind: "member", Suite: "ecdh-p256", Group: "ab", ID: "c", Commit: []byte{1}}
	f := &SlotContext{Kind: "member", Suite: "ecdh-p256", Group: "ab", ID: "c", Salt: []byte{1}}
	g := &SlotContext{Kind: "member", Suite: "ecdh-p256", Group: "ab", ID: "c", EPK: []byte{1}}
	seen := map[string]int{}
	for i, x := range []*SlotContext{a, b, c, d, e, f, g} {
		m := string(x.Message())
		if j, ok := seen[m]; ok {
			t.Fatalf("contexts %d and %d have the same message", j, i)
		}
		seen[m] = i
	}
}

func TestBind(t *testing.T) {
	got, err := Bind(key0, fullContext())
	if err != nil || hex.EncodeToString(got) != webcryptoPins.bindFull {
		t.Fatalf("Bind = %x, %v; want %s", got, err, webcryptoPins.bindFull)
	}
	// The key is DK(gdk, LabelBind), not the GDK.
	m := hmac.New(sha256.New, key0)
	m.Write(fullContext().Message())
	if hmac.Equal(m.Sum(nil), got) {
		t.Fatal("Bind is keyed with the GDK itself")
	}
	kb, _ := DK(key0, LabelBind)
	m = hmac.New(sha256.New, kb)
	m.Write(fullContext().Message())
	if !hmac.Equal(m.Sum(nil), got) {
		t.Fatal("Bind is not HMAC-SHA256(DK(gdk, LabelBind), Message)")
	}
	other := bytes.Clone(key0)
	other[0] ^= 1
	if b, _ := Bind(other, fullContext()); hmac.Equal(b, got) {
		t.Fatal("another GDK gives the same binding")
	}
	for _, n := range []int{0, 16, 31, 33} {
		if b, err := Bind(make([]byte, n), fullContext()); !errors.Is(err, ErrInput) || b != nil {
			t.Errorf("Bind with a %d-byte GDK = %x, %v", n, b, err)
		}
	}
}

func TestPRFInput(t *testing.T) {
	salt := seq(32, func(i int) byte { return byte(255 - i) })
	if got := hex.EncodeToString(PRFInput(salt)); got != pythonPins.prfInput {
		t.Fatalf("PRFInput = %s, want %s", got, pythonPins.prfInput)
	}
	// PRFInput does not write into its argument or share memory with it.
	s := make([]byte, 32, 64)
	in := PRFInput(s)
	in[len(in)-1] = 9
	if s[31] != 0 {
		t.Fatal("PRFInput aliases the salt")
	}
	if bytes.Equal(PRFInput(salt), PRFInput(key0)) {
		t.Fatal("two salts give the same PRF input")
	}
}

func TestPasskeyKey(t *testing.T) {
	prf := seq(32, func(i int) byte { return 0xa0 + byte(i%16) })
	salt := seq(32, func(i int) byte { return byte(255 - i) })
	got, err := PasskeyKey(prf, salt)
	if err != nil || hex.EncodeToString(got) != webcryptoPins.passkeyKey {
		t.Fatalf("PasskeyKey = %x, %v; want %s", got, err, webcryptoPins.passkeyKey)
	}
	other := bytes.Clone(salt)
	other[0] ^= 1
	if k, _ := PasskeyKey(prf, other); bytes.Equal(k, got) {
		t.Fatal("the salt does not change the key")
	}
	for _, n := range []int{0, 16, 31, 33, 64} {
		if k, err := PasskeyKey(make([]byte, n), salt); !errors.Is(err, ErrInput) || k != nil {
			t.Errorf("PasskeyKey with a %d-byte PRF output = %x, %v", n, k, err)
		}
	}
}

func TestPasswordKey(t *testing.T) {
	tests := []struct {
		name         string
		secret, salt []byte
		iterations   int
		want         string
	}{
		// RFC 7914 §11, the first 32 bytes of each 64-byte output.
		{"RFC 7914 1", []byte("passwd"), []byte("salt"), 1, pythonPins.rfc7914a},
		{"RFC 7914 2", []byte("Password"), []byte("NaCl"), 80000, pythonPins.rfc7914b},
		// An NFC password: its UTF-8 bytes, as the browser's TextEncoder gives them.
		{"NFC password", []byte("Gr\u00fc\u00dfe, J\u00fcrgen"), seq(16, func(i int) byte { return byte(i) }), 1000, webcryptoPins.passwordKey},
	}
	if webcryptoPins.passwordKey != pythonPins.passwordKey {
		t.Fatal("node and Python disagree on the password key")
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := PasswordKey(tt.secret, tt.salt, tt.iterations)
			if err != nil || hex.EncodeToString(got) != tt.want {
				t.Fatalf("PasswordKey = %x, %v; want %s", got, err, tt.want)
			}
		})
	}
	for _, n := range []int{0, -1, -65536} {
		if k, err := PasswordKey([]byte("x"), []byte("salt"), n); !errors.Is(err, ErrInput) || k != nil {
			t.Errorf("PasswordKey with %d iterations = %x, %v", n, k, err)
		}
	}
}

func TestCheckValue(t *testing.T) {
	for _, tt := range []struct {
		key  []byte
		want string
	}{{make([]byte, 32), pythonPins.checkZero}, {key0, pythonPins.checkKey0}} {
		if got := hex.EncodeToString(CheckValue(tt.key)); got != tt.want {
			t.Errorf("CheckValue(%x) = %s, want %s", tt.key, got, tt.want)
		}
	}
	if len(CheckValue(key0)) != 8 {
		t.Fatal("a check value is not 8 bytes")
	}
}

func TestRecordAAD(t *testing.T) {
	if got := hex.EncodeToString(RecordAAD("family-42", "note-1", 2)); got != pythonPins.recordAAD {
		t.Fatalf("RecordAAD = %s, want %s", got, pythonPins.recordAAD)
	}
	seen := map[string]string{}
	for _, c := range []struct {
		group, id string
		v         uint32
	}{{"ab", "c", 1}, {"a", "bc", 1}, {"ab", "c", 2}, {"ab", "", 1}, {"", "abc", 1}, {"ab", "c\x00\x00\x00", 1}} {
		k := string(RecordAAD(c.group, c.id, c.v))
		name := fmt.Sprintf("%q/%q/%d", c.group, c.id, c.v)
		if other, ok := seen[k]; ok {
			t.Errorf("%s and %s have the same AAD", other, name)
		}
		seen[k] = name
	}
}

func TestCodeMessage(t *testing.T) {
	nonce := make([]byte, CodeNonceSize)
	for i := range nonce {
		nonce[i] = byte(0x70 + i)
	}
	if got := hex.EncodeToString(CodeMessage("family-42", "bob", 7, 31, nonce)); got != pythonPins.codeMessage {
		t.Fatalf("CodeMessage = %s, want %s", got, pythonPins.codeMessage)
	}
	n1, n2 := bytes.Repeat([]byte{1}, CodeNonceSize), bytes.Repeat([]byte{2}, CodeNonceSize)
	seen := map[string]string{}
	for _, c := range []struct {
		group, user  string
		epoch, index uint32
		nonce        []byte
	}{{"ab", "c", 1, 0, n1}, {"a", "bc", 1, 0, n1}, {"ab", "c", 2, 0, n1}, {"ab", "c", 1, 1, n1}, {"ab", "c", 0, 1 << 31, n1},
		// The same group, user, epoch and index under another epoch nonce:
		// an epoch issued again under its old number after a restore.
		{"ab", "c", 1, 0, n2}, {"ab", "c", 1, 0, nil}} {
		k := string(CodeMessage(c.group, c.user, c.epoch, c.index, c.nonce))
		name := fmt.Sprintf("%q/%q/%d/%d/%x", c.group, c.user, c.epoch, c.index, c.nonce)
		if other, ok := seen[k]; ok {
			t.Errorf("%s and %s have the same message", other, name)
		}
		seen[k] = name
	}
	// The code message and the record AAD start with different labels.
	if bytes.HasPrefix(CodeMessage("g", "u", 1, 1, n1), []byte(RecordLabel)) {
		t.Fatal("labels overlap")
	}
}

// Example derives what a device derives from a GDK: the record key, the
// commitment that names the GDK, and a slot's binding.
func Example() {
	gdk := bytes.Repeat([]byte{0x42}, KeySize)
	recordKey, _ := DK(gdk, LabelRecord)
	fmt.Printf("record key  %x…\n", recordKey[:8])
	fmt.Printf("commitment  %x…\n", Commitment("family-42", 1, gdk)[:8])
	slot := &SlotContext{Kind: "chain", Suite: "aes-kw", Group: "family-42", GDKVersion: 1, KeyVersion: 2,
		Commit: Commitment("family-42", 1, gdk), Wrapped: make([]byte, 40)}
	bind, _ := Bind(gdk, slot)
	fmt.Printf("binding     %x…\n", bind[:8])
	_, err := DK(gdk[:16], LabelRecord)
	fmt.Println(err)
	// Output:
	// record key  f5102368e53b6a7c…
	// commitment  d9144f904a694f3e…
	// binding     ac1ebecfb916f227…
	// format: invalid input: AES-256 key of 16 bytes
}
