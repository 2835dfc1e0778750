package e2e

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	escrowdv1 "github.com/escrowd/escrowd/api/escrowd/v1"
	"github.com/escrowd/escrowd/escrow/bundle"
	"github.com/escrowd/escrowd/escrow/device"
	"github.com/escrowd/escrowd/escrow/unlockcode"
	"github.com/escrowd/escrowd/format"
)

const chromiumPath = "/usr/bin/chromium"

// The vector files the page runs, as the test serves them.
var browserVectorFiles = map[string]string{
	"/vectors/strictjson.json": "../format/strictjson/testdata/vectors.json",
	"/vectors/unlockcode.json": "../escrow/unlockcode/testdata/vectors.json",
	"/vectors/device.json":     "../escrow/device/testdata/vectors.json",
}

// browserFixture is what the page gets: slots the running daemon made over
// gRPC (and the Go reference device, for the kinds that are the device's:
// password, passkey-prf, rsa-oaep-sha256), records, the device's own keys
// and the commitments a device gets over its enrolment channel. Never a
// GDK.
type browserFixture struct {
	Group   string `json:"group"`
	Commit1 []byte `json:"commit1"` // the group creator's GDK 1
	Commit2 []byte `json:"commit2"` // RotateGroupKey's gdk_commitment
	Keys    struct {
		RSA     []byte `json:"rsa_pkcs8"`
		RSASPKI []byte `json:"rsa_spki"`
		P256    []byte `json:"p256_pkcs8"`
	} `json:"keys"`
	Slots    []browserSlot            `json:"slots"`
	Escrow   []browserEscrow          `json:"escrow"`
	Chains   map[string]string        `json:"chains"`
	Records  []browserRecord          `json:"records"`
	Password browserSecretSlot        `json:"password"`
	Passkey  browserSecretSlot        `json:"passkey"`
	Unlock   map[string]browserUnlock `json:"unlock"`
	User     string                   `json:"unlock_user"`
	Typed    []browserTyped           `json:"typed"`
	Bundle   string                   `json:"bundle"`
	BSlots   []string                 `json:"bundle_slots"`
}

type browserSlot struct {
	Name    string `json:"name"`
	Key     string `json:"key"` // "rsa" or "p256"
	ID      string `json:"id"`
	Slot    string `json:"slot"`
	Version uint32 `json:"version"`
}

type browserEscrow struct {
	Name       string `json:"name"`
	Slot       string `json:"slot"`
	GDKVersion uint32 `json:"-"`
	KeyVersion uint32 `json:"-"`
}

type browserRecord struct {
	Name    string `json:"name"`
	Record  string `json:"record"`
	Version uint32 `json:"version"`
	Text    string `json:"-"`
	ID      string `json:"-"`
}

type browserSecretSlot struct {
	Slot     string `json:"slot"`
	User     string `json:"user"`
	Password string `json:"password,omitempty"`
	PRF      []byte `json:"prf,omitempty"`
	PRFInput []byte `json:"prf_input,omitempty"`
}

type browserUnlock struct {
	Label string   `json:"label"`
	Slots []string `json:"slots"`
}

type browserTyped struct {
	Name string `json:"name"`
	Set  string `json:"set"` // an option of the page's unlock slot list
	Code string `json:"code"`
}

type pageAttempt struct {
	OK      bool            `json:"ok"`
	Value   json.RawMessage `json:"value"`
	Cls     string          `json:"cls"`
	Message string          `json:"message"`
}

type pageOpened struct {
	Commit  string `json:"commit"`
	Version uint32 `json:"version"`
	Kind    string `json:"kind"`
	Suite   string `json:"suite"`
	ID      string `json:"id"`
	Trusted string `json:"trusted"`
}

type pageVectorRun struct {
	Passed   int `json:"passed"`
	Failures []struct {
		Name string `json:"name"`
		Want any    `json:"want"`
		Got  any    `json:"got"`
	} `json:"failures"`
	Counts map[string]int `json:"counts"`
}

type pageResult struct {
	Console []string               `json:"console"`
	Errors  map[string]string      `json:"errors"`
	Timings map[string]int         `json:"timings"`
	All     map[string]pageAttempt `json:"all"`
	Vectors struct {
		StrictJSON pageVectorRun `json:"strictjson"`
		UnlockCode pageVectorRun `json:"unlockcode"`
		Device     pageVectorRun `json:"device"`
		MS         int           `json:"ms"`
	} `json:"vectors"`
	Passkey struct {
		PRFEnabled    bool        `json:"prf_enabled"`
		Credential    string      `json:"credential"`
		Slot          string      `json:"slot"`
		PRFInput      string      `json:"prf_input"`
		Inputs        []string    `json:"inputs"`
		Opened        pageAttempt `json:"opened"`
		OtherSalt     pageAttempt `json:"other salt"`
		Authenticator []struct {
			ID       string `json:"id"`
			Resident bool   `json:"resident"`
		} `json:"authenticator"`
	} `json:"passkey"`
	Typed map[string]struct {
		Code    string `json:"code"`
		Commit  string `json:"commit"`
		Version string `json:"version"`
		Text    string `json:"text"`
		Typed   string `json:"typed"`
	} `json:"typed"`
}

// typedLikeAPerson writes a code in lower case with the separators a phone
// or a PDF gives: an en dash and a no-break space.
func typedLikeAPerson(code string) string {
	g := strings.Split(strings.ToLower(code), "-")
	if len(g) != 4 {
		return strings.ToLower(code)
	}
	return g[0] + "\u2013" + g[1] + "\u00a0" + g[2] + "\u2013" + g[3]
}

// TestBrowserDevice: the running daemon (SoftHSM, Vault, mTLS) makes, over
// gRPC, every v2 slot kind it produces: member and device slots in
// ecdh-p256 and rsa-oaep-sha1 (Rewrap), an escrow slot of the newest escrow
// key (RewrapToEscrow), unlock slots (IssueUnlockCodes) whose codes support
// reveals, and a rotation (RotateGroupKey: recipient slots, an escrow slot,
// a new unlock epoch, the chain slot and the new commitment). The Go
// reference device adds a password, a passkey-prf and an rsa-oaep-sha256
// slot and a record under each GDK. Headless Chromium then, with
// @escrowd/device (clients/web, WebCrypto only): opens all of it; decodes the escrow
// slots and checks their commitments; applies the keyring's adoption
// rules (pinned, chained up, chained down); reads the records through the
// chain and writes records the Go device reads; refuses each binding
// attack with its class; makes and opens a passkey-prf slot with a real
// WebAuthn PRF (a virtual authenticator); runs the three vector files; and
// opens unlock slots with codes typed into the page as a person types
// them, with a distinct message for each kind of failure. A missing
// Chromium, Node, playwright-core or esbuild fails the test.
// ESCROWD_BROWSER_SCREENSHOT=file.png saves the unlock form after the right
// code; ESCROWD_BROWSER_OUTPUT=file.json saves what the page reported.
func TestBrowserDevice(t *testing.T) {
	node, err := exec.LookPath("node")
	if err != nil {
		t.Fatal("node is not installed: run `make deps`")
	}
	if _, err := os.Stat(chromiumPath); err != nil {
		t.Fatalf("Chromium is not installed at %s: run `make deps` (apt-get install chromium)", chromiumPath)
	}
	webDir, err := filepath.Abs("../web")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(webDir, "node_modules", "playwright-core", "package.json")); err != nil {
		t.Fatal("web/node_modules/playwright-core is missing: run `make deps` (npm ci --prefix web)")
	}
	vectorFiles := map[string][]byte{}
	for route, path := range browserVectorFiles {
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		vectorFiles[route] = b
	}

	s := newStack(t, vaultSrv)
	ctx := ctxT(t)
	const group = "browser-family"
	must := func(b []byte, err error) []byte {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return b
	}

	// The group's creator makes GDK 1 and seals it to the escrow key.
	prov, err := s.sync.ProvisionGroup(ctx, &escrowdv1.ProvisionGroupRequest{GroupId: group})
	if err != nil {
		t.Fatalf("ProvisionGroup: %v", err)
	}
	ek := prov.GetEscrowKey()
	gdk1 := must(device.NewGDK())
	commit1 := format.Commitment(group, 1, gdk1)
	escrow1 := must(device.SealEscrow(ek.GetPublicKey(), device.To{Group: group, GDKVersion: 1, KeyVersion: ek.GetVersion()}, ek.GetSuite(), gdk1))
	alice := newKeys(t) // her member id "alice" and her phone "alice-phone" use the same keys
	rewrap := func(escrowSlot []byte, r *escrowdv1.Recipient) []byte {
		t.Helper()
		rw, err := s.sync.Rewrap(ctx, &escrowdv1.RewrapRequest{GroupId: group, EscrowSlot: escrowSlot, Recipient: r})
		if err != nil {
			t.Fatalf("Rewrap to %s %s: %v", r.GetId(), r.GetSuite(), err)
		}
		return rw.GetSlot()
	}
	member, dev := escrowdv1.Recipient_KIND_MEMBER, escrowdv1.Recipient_KIND_DEVICE
	fx := browserFixture{Group: group, Commit1: commit1, User: "bob", Chains: map[string]string{}}
	addSlot := func(name, key, id string, version uint32, slot []byte) {
		fx.Slots = append(fx.Slots, browserSlot{Name: name, Key: key, ID: id, Slot: string(slot), Version: version})
	}
	addSlot("v1 member alice rsa-oaep-sha1 (Rewrap)", "rsa", "alice", 1, rewrap(escrow1, alice.recipient(member, "alice", bundle.SuiteRSAOAEPSHA1)))
	addSlot("v1 member alice ecdh-p256 (Rewrap)", "p256", "alice", 1, rewrap(escrow1, alice.recipient(member, "alice", bundle.SuiteECDHP256)))
	addSlot("v1 device alice-phone ecdh-p256 (Rewrap)", "p256", "alice-phone", 1, rewrap(escrow1, alice.recipient(dev, "alice-phone", bundle.SuiteECDHP256)))
	addSlot("v1 device alice-phone rsa-oaep-sha1 (Rewrap)", "rsa", "alice-phone", 1, rewrap(escrow1, alice.recipient(dev, "alice-phone", bundle.SuiteRSAOAEPSHA1)))

	// Unlock codes for bob (epoch 1, GDK 1); support reveals two.
	issued, err := s.sync.IssueUnlockCodes(ctx, &escrowdv1.IssueUnlockCodesRequest{GroupId: group, UserId: "bob", EscrowSlot: escrow1, Count: 3})
	if err != nil {
		t.Fatalf("IssueUnlockCodes: %v", err)
	}
	reveal := func() *escrowdv1.RevealUnlockCodeResponse {
		t.Helper()
		rv, err := s.support.RevealUnlockCode(ctx, &escrowdv1.RevealUnlockCodeRequest{GroupId: group, UserId: "bob", Ticket: "SUP-4242"})
		if err != nil {
			t.Fatalf("RevealUnlockCode: %v", err)
		}
		return rv
	}
	codeA, codeB := reveal(), reveal()
	if codeA.GetEpoch() != 1 || codeA.GetIndex() != 0 || codeB.GetIndex() != 1 {
		t.Fatalf("reveals: %v, %v", codeA, codeB)
	}
	record1 := must(device.SealRecord(gdk1, group, "note-1", 1, []byte("written before Carol left")))

	// A new escrow key version; the group's escrow slot is re-wrapped to it.
	if _, err := s.sec.RotateGroupKeys(ctx, &escrowdv1.RotateGroupKeysRequest{GroupId: group, Escrow: true}); err != nil {
		t.Fatalf("RotateGroupKeys: %v", err)
	}
	rte, err := s.sync.RewrapToEscrow(ctx, &escrowdv1.RewrapToEscrowRequest{GroupId: group, EscrowSlot: escrow1})
	if err != nil {
		t.Fatalf("RewrapToEscrow: %v", err)
	}
	if rte.GetEscrowKeyVersion() != 2 {
		t.Fatalf("RewrapToEscrow wrapped to escrow key version %d, want the newest, 2", rte.GetEscrowKeyVersion())
	}

	// Carol leaves: GDK 2 for alice (member, RSA) and her phone (device,
	// ECDH), new unlock codes for bob.
	rot, err := s.sync.RotateGroupKey(ctx, &escrowdv1.RotateGroupKeyRequest{
		GroupId: group, EscrowSlot: rte.GetSlot(), OldGdkVersion: 1,
		Recipients: []*escrowdv1.Recipient{
			alice.recipient(member, "alice", bundle.SuiteRSAOAEPSHA1),
			alice.recipient(dev, "alice-phone", bundle.SuiteECDHP256),
		},
		UnlockUserIds: []string{"bob"}, CodesPerUser: 3,
	})
	if err != nil {
		t.Fatalf("RotateGroupKey: %v", err)
	}
	gdk2, _, err := device.OpenPublic(rot.GetRecipientSlots()[0], device.Want{Group: group, ID: "alice"}, alice.rsa)
	if err != nil {
		t.Fatalf("open the rotation's member slot: %v", err)
	}
	commit2 := format.Commitment(group, 2, gdk2)
	if !bytes.Equal(rot.GetGdkCommitment(), commit2) || rot.GetGdkVersion() != 2 {
		t.Fatalf("RotateGroupKey: GDK version %d, commitment %x; want 2, %x", rot.GetGdkVersion(), rot.GetGdkCommitment(), commit2)
	}
	fx.Commit2 = rot.GetGdkCommitment()
	if len(rot.GetUnlock()) != 1 {
		t.Fatalf("RotateGroupKey gave %d users' unlock slots, want 1", len(rot.GetUnlock()))
	}
	codeC := reveal()
	if codeC.GetEpoch() != rot.GetUnlock()[0].GetEpoch() || codeC.GetIndex() != 0 {
		t.Fatalf("reveal after the rotation: %v", codeC)
	}
	addSlot("v2 member alice rsa-oaep-sha1 (RotateGroupKey)", "rsa", "alice", 2, rot.GetRecipientSlots()[0])
	addSlot("v2 device alice-phone ecdh-p256 (RotateGroupKey)", "p256", "alice-phone", 2, rot.GetRecipientSlots()[1])
	addSlot("v2 member alice ecdh-p256 (Rewrap)", "p256", "alice", 2, rewrap(rot.GetEscrowSlot(), alice.recipient(member, "alice", bundle.SuiteECDHP256)))
	addSlot("v2 device alice-phone rsa-oaep-sha1 (Rewrap)", "rsa", "alice-phone", 2, rewrap(rot.GetEscrowSlot(), alice.recipient(dev, "alice-phone", bundle.SuiteRSAOAEPSHA1)))
	// SoftHSM does OAEP with SHA-1 only: the Go device makes the
	// rsa-oaep-sha256 slot, so the browser proves that suite too.
	addSlot("v2 member alice rsa-oaep-sha256 (Go device)", "rsa", "alice", 2,
		must(device.SealPublic(bundle.KindMember, device.To{Group: group, GDKVersion: 2, KeyVersion: 1, ID: "alice"}, bundle.SuiteRSAOAEPSHA256, alice.rsaPub, gdk2)))
	fx.Escrow = []browserEscrow{
		{Name: "GDK 1 (device-made)", Slot: string(escrow1), GDKVersion: 1, KeyVersion: 1},
		{Name: "GDK 1 (RewrapToEscrow)", Slot: string(rte.GetSlot()), GDKVersion: 1, KeyVersion: 2},
		{Name: "GDK 2 (RotateGroupKey)", Slot: string(rot.GetEscrowSlot()), GDKVersion: 2, KeyVersion: rot.GetEscrowKeyVersion()},
	}
	fx.Chains["1"] = string(rot.GetChainSlot())

	// The Go device's own kinds: password and passkey-prf (its PRF stands
	// in for an authenticator: HMAC under a secret of its own).
	const password = "Correct horse, battery staple"
	fx.Password = browserSecretSlot{User: "alice", Password: password,
		Slot: string(must(device.SealPassword(gdk2, device.To{Group: group, GDKVersion: 2, KeyVersion: 1, ID: "alice"}, password, bundle.MinPasswordIterations)))}
	prfSecret := must(device.NewGDK())
	var prfIn, prfOut []byte
	pk := must(device.SealPasskey(gdk2, device.To{Group: group, GDKVersion: 2, KeyVersion: 1, ID: "alice"}, []byte("go-credential-1"), func(in []byte) ([]byte, error) {
		m := hmac.New(sha256.New, prfSecret)
		m.Write(in)
		prfIn, prfOut = append([]byte(nil), in...), m.Sum(nil)
		return append([]byte(nil), prfOut...), nil
	}))
	fx.Passkey = browserSecretSlot{User: "alice", Slot: string(pk), PRF: prfOut, PRFInput: prfIn}

	record2 := must(device.SealRecord(gdk2, group, "note-2", 2, []byte("written after Carol left")))
	fx.Records = []browserRecord{
		{Name: "record 1", Record: string(record1), Version: 1, ID: "note-1", Text: "written before Carol left"},
		{Name: "record 2", Record: string(record2), Version: 2, ID: "note-2", Text: "written after Carol left"},
	}

	// Bob's unlock slots as his device has them: epoch 1, the rotation's
	// epoch, and epoch 1 with slot 0's wrapped key damaged in storage.
	damaged := append([][]byte(nil), issued.GetSlots()...)
	ds, err := bundle.ParseSlot(damaged[0])
	if err != nil {
		t.Fatal(err)
	}
	ds.Wrapped[9] ^= 0x01
	damaged[0] = must(ds.Marshal())
	strs := func(bs [][]byte) []string {
		out := make([]string, len(bs))
		for i, b := range bs {
			out[i] = string(b)
		}
		return out
	}
	fx.Unlock = map[string]browserUnlock{
		"issued":  {Label: "epoch 1 (IssueUnlockCodes)", Slots: strs(issued.GetSlots())},
		"rotated": {Label: "epoch 2 (RotateGroupKey)", Slots: strs(rot.GetUnlock()[0].GetSlots())},
		"damaged": {Label: "epoch 1, damaged in storage", Slots: strs(damaged)},
	}
	mat := make([]byte, unlockcode.MinMaterial)
	rand.Read(mat)
	wrongCode, err := unlockcode.FromMaterial(0, mat) // a well-formed code of index 0 that is no slot's
	if err != nil {
		t.Fatal(err)
	}
	typedA := typedLikeAPerson(codeA.GetCode())
	mistyped := []rune(typedA)
	mistyped[5] = map[bool]rune{true: 'x', false: 'y'}[mistyped[5] != 'x']
	fx.Typed = []browserTyped{
		{"right code", "issued", typedA},
		{"second code", "issued", strings.ToLower(codeB.GetCode())},
		{"rotated code", "rotated", typedLikeAPerson(codeC.GetCode())},
		{"wrong code", "issued", strings.ToLower(wrongCode.String())},
		{"old code on the new slots", "rotated", typedA},
		{"mistyped", "issued", string(mistyped)},
		{"not a code", "issued", "1234-5678"},
		{"damaged slot", "damaged", typedA},
	}

	// Every slot the daemon made for the group, as one bundle.
	var all [][]byte
	all = append(all, escrow1, rte.GetSlot(), rot.GetEscrowSlot(), rot.GetChainSlot())
	for _, sl := range fx.Slots {
		if strings.HasSuffix(sl.Name, "(Go device)") {
			continue
		}
		all = append(all, []byte(sl.Slot))
	}
	all = append(all, issued.GetSlots()...)
	all = append(all, rot.GetUnlock()[0].GetSlots()...)
	bd := bundle.Bundle{Group: group}
	for _, raw := range all {
		sl, err := bundle.ParseSlot(raw)
		if err != nil {
			t.Fatalf("a slot of the daemon does not decode: %v", err)
		}
		bd.Slots = append(bd.Slots, *sl)
		fx.BSlots = append(fx.BSlots, string(raw))
	}
	fx.Bundle = string(must(bd.Marshal()))

	rsaDER, _ := x509.MarshalPKCS8PrivateKey(alice.rsa)
	ecDER, _ := x509.MarshalPKCS8PrivateKey(alice.ec)
	fx.Keys.RSA, fx.Keys.RSASPKI, fx.Keys.P256 = rsaDER, alice.rsaPub, ecDER
	fixtureJSON, err := json.Marshal(fx)
	if err != nil {
		t.Fatal(err)
	}
	// The page is given no GDK.
	for _, g := range [][]byte{gdk1, gdk2} {
		if bytes.Contains(fixtureJSON, []byte(base64.StdEncoding.EncodeToString(g))) || bytes.Contains(fixtureJSON, []byte(hex.EncodeToString(g))) {
			t.Fatal("the fixture holds a GDK")
		}
	}

	res := runBrowser(t, node, webDir, fixtureJSON, vectorFiles)

	hex1, hex2 := hex.EncodeToString(commit1), hex.EncodeToString(commit2)
	commitOf := map[uint32]string{1: hex1, 2: hex2}
	checked := map[string]bool{}
	get := func(name string) pageAttempt {
		t.Helper()
		checked[name] = true
		r, ok := res.All[name]
		if !ok {
			t.Errorf("page: no result for %q", name)
		}
		return r
	}
	wantOK := func(name string, into any) bool {
		t.Helper()
		r := get(name)
		if !r.OK {
			t.Errorf("page: %s failed: %s: %s", name, r.Cls, r.Message)
			return false
		}
		if err := json.Unmarshal(r.Value, into); err != nil {
			t.Errorf("page: %s: %v (%s)", name, err, r.Value)
			return false
		}
		return true
	}
	wantClass := func(name, cls string) {
		t.Helper()
		if r := get(name); r.OK || r.Cls != cls {
			t.Errorf("page: %s = ok %v, class %q (%s); want class %q", name, r.OK, r.Cls, r.Message, cls)
		}
	}
	wantOpened := func(name string, version uint32) {
		t.Helper()
		var o pageOpened
		if wantOK(name, &o) && (o.Commit != commitOf[version] || o.Version != version) {
			t.Errorf("page: %s opened GDK %d with commitment %s; want GDK %d, %s", name, o.Version, o.Commit, version, commitOf[version])
		}
	}
	wantString := func(name, want string) {
		t.Helper()
		var v string
		if wantOK(name, &v) && v != want {
			t.Errorf("page: %s = %q, want %q", name, v, want)
		}
	}

	// Every slot the daemon made, and the Go device's.
	for _, sl := range fx.Slots {
		wantOpened("open "+sl.Name, sl.Version)
	}
	wantOpened("password", 2)
	wantClass("password wrong", "wrong-secret")
	wantOpened("passkey-prf (Go device)", 2)
	for _, e := range fx.Escrow {
		var v struct {
			Kind       string `json:"kind"`
			GDKVersion uint32 `json:"gdk_version"`
			KeyVersion uint32 `json:"key_version"`
			Commit     string `json:"commit"`
			Pinned     bool   `json:"commit_is_pinned"`
		}
		if wantOK("escrow "+e.Name, &v) && (v.Kind != "escrow" || v.GDKVersion != e.GDKVersion || v.KeyVersion != e.KeyVersion ||
			v.Commit != commitOf[e.GDKVersion] || !v.Pinned) {
			t.Errorf("page: escrow slot %s decoded as %+v; want GDK %d, escrow key %d, commitment %s", e.Name, v, e.GDKVersion, e.KeyVersion, commitOf[e.GDKVersion])
		}
	}
	var nBundle int
	if wantOK("bundle", &nBundle) && nBundle != len(bd.Slots) {
		t.Errorf("page: the bundle has %d slots, want %d", nBundle, len(bd.Slots))
	}

	// The keyrings: pinned, chained up, chained down.
	wantString("phone adds GDK 1", hex1)
	wantClass("phone adds GDK 2 unpinned", "untrusted")
	wantString("phone adopts GDK 2 chained up", hex2)
	wantString("laptop adds GDK 2", hex2)
	wantString("laptop adopts GDK 1 chained down", hex1)
	for _, who := range []string{"phone", "laptop"} {
		for _, r := range fx.Records {
			var v struct {
				Group, ID, Text string
				Version         uint32 `json:"gdk_version"`
			}
			name := who + " reads " + r.Name
			if wantOK(name, &v) && (v.Group != group || v.ID != r.ID || v.Version != r.Version || v.Text != r.Text) {
				t.Errorf("page: %s = %+v", name, v)
			}
		}
	}
	wantClass("record 1 under GDK 2", "record")
	// The page's records and chain, read by the Go device.
	for name, w := range map[string]struct {
		gdk     []byte
		version uint32
		id      string
		text    string
	}{
		"page writes record under GDK 2": {gdk2, 2, "page-note-2", "written by the browser under GDK 2"},
		"page writes record under GDK 1": {gdk1, 1, "page-note-1", "written by the browser under GDK 1"},
	} {
		var text string
		if !wantOK(name, &text) {
			continue
		}
		r, pt, err := device.OpenRecord([]byte(text), w.gdk)
		if err != nil || r.Group != group || r.ID != w.id || r.GDKVersion != w.version || string(pt) != w.text {
			t.Errorf("%s: the Go device reads %+v %q, %v", name, r, pt, err)
		}
	}
	var pageChain string
	if wantOK("page writes chain", &pageChain) {
		old, cs, err := device.OpenChain([]byte(pageChain), group, gdk2)
		if err != nil || !bytes.Equal(old, gdk1) || cs.GDKVersion != 1 {
			t.Errorf("the page's chain slot: the Go device opens %v", err)
		}
	}

	// The attacks, each with its class.
	for name, cls := range map[string]string{
		"attack: moved to another group, opened there":                          "commitment",
		"attack: moved to another group, opened here":                           "binding",
		"attack: moved to another recipient":                                    "binding",
		"attack: moved to another GDK version":                                  "commitment",
		"attack: moved to GDK version 1":                                        "commitment",
		"attack: moved to another kind (member to device)":                      "binding",
		"attack: another key version":                                           "binding",
		"attack: tampered commitment":                                           "commitment",
		"attack: tampered bind":                                                 "binding",
		"attack: tampered wrapped (ecdh-p256)":                                  "wrong-key",
		"attack: chain relabelled to GDK 2":                                     "mismatch",
		"attack: chain with a tampered bind":                                    "binding",
		"attack: substituted GDK, pinned keyring":                               "untrusted",
		"attack: substituted GDK, keyring holding GDK 2":                        "untrusted",
		"attack: substituted GDK, unpinned keyring without a chain":             "untrusted",
		"attack: removed member's chain, commitment 2 pinned":                   "untrusted",
		"attack: real GDK 2 with the real chain, keyring holding another GDK 1": "untrusted",
		"attack: bundle with the substituted slot":                              "mismatch",
		"attack: record moved to another id":                                    "record",
	} {
		wantClass(name, cls)
	}
	// The substituted GDK is a well-formed slot (steps 1 to 5 pass); only
	// trust refuses it. Without the pin, a removed member's chain is
	// adopted: the documented limit ("What this leaves").
	var sub pageOpened
	if wantOK("attack: substituted GDK opens", &sub) && (sub.Version != 2 || sub.Commit == hex2) {
		t.Errorf("page: the substituted GDK opened as %+v", sub)
	}
	var adopted string
	if wantOK("attack: removed member's chain, nothing pinned for 2", &adopted) && adopted != sub.Commit {
		t.Errorf("page: the removed member's chain adopted %s, want the substituted GDK %s", adopted, sub.Commit)
	}
	var unchecked []string
	for name := range res.All {
		if !checked[name] {
			unchecked = append(unchecked, name)
		}
	}
	if len(unchecked) > 0 {
		sort.Strings(unchecked)
		t.Errorf("page results the test does not check: %q", unchecked)
	}

	checkBrowserPasskey(t, res, group, gdk2, commit2)
	checkBrowserVectors(t, res, vectorFiles)

	// The unlock form, typed as a person.
	typedWant := map[string]struct {
		code, commit, version, say string
	}{
		"right code":                {"ok", hex1, "1", "written before Carol left"},
		"second code":               {"ok", hex1, "1", "written before Carol left"},
		"rotated code":              {"ok", hex2, "2", "written before Carol left"},
		"wrong code":                {"wrong-code", "", "", "does not open this device's data"},
		"old code on the new slots": {"wrong-code", "", "", "does not open this device's data"},
		"mistyped":                  {"mistyped", "", "", "a character is wrong or two are swapped"},
		"not a code":                {"not-a-code", "", "", "not an unlock code"},
		"damaged slot":              {"damaged", "", "", "damaged or was tampered with"},
	}
	seen := map[string]string{}
	for _, c := range fx.Typed {
		w := typedWant[c.Name]
		got, ok := res.Typed[c.Name]
		if !ok || got.Code != w.code || got.Commit != w.commit || got.Version != w.version || !strings.Contains(strings.ToLower(got.Text), strings.ToLower(w.say)) {
			t.Errorf("typed %s: %+v; want %s (GDK %q) saying %q", c.Name, got, w.code, w.version, w.say)
		}
		if got.Typed != c.Code {
			t.Errorf("typed %s: the field holds %q, want %q as typed", c.Name, got.Typed, c.Code)
		}
		if w.code != "ok" {
			if other, dup := seen[got.Text]; dup && res.Typed[other].Code != got.Code {
				t.Errorf("%s and %s show the same message for different failures", c.Name, other)
			}
			seen[got.Text] = c.Name
		}
	}
}

// buildDeviceBundle bundles @escrowd/device with the page's vector runners
// (clients/web/test/browser.ts) with the package's own esbuild, into a
// directory of the test's, and returns it. The browser test loads this
// bundle, never a copy checked in.
func buildDeviceBundle(t *testing.T, entry, name string) string {
	t.Helper()
	pkg, err := filepath.Abs("../clients/web")
	if err != nil {
		t.Fatal(err)
	}
	esbuild := filepath.Join(pkg, "node_modules", ".bin", "esbuild")
	if _, err := os.Stat(esbuild); err != nil {
		t.Fatal("clients/web/node_modules/esbuild is missing: run `make deps` (npm ci --prefix clients/web)")
	}
	out := t.TempDir()
	cmd := exec.Command(esbuild, entry, "--bundle", "--format=esm", "--log-level=warning",
		"--outfile="+filepath.Join(out, name))
	cmd.Dir = pkg
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("esbuild: %v\n%s", err, b)
	}
	return out
}

// runBrowser serves the test page (clients/web/test/browser), the package's
// bundle and the fixture, and runs web/run.mjs in Chromium.
func runBrowser(t *testing.T, node, webDir string, fixtureJSON []byte, vectorFiles map[string][]byte) pageResult {
	t.Helper()
	bundleDir := buildDeviceBundle(t, "test/browser.ts", "device.js")
	pageDir, err := filepath.Abs("../clients/web/test/browser")
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	serveJSON := func(b []byte) http.HandlerFunc {
		return func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			w.Write(b)
		}
	}
	mux.HandleFunc("/fixture.json", serveJSON(fixtureJSON))
	for route, b := range vectorFiles {
		mux.HandleFunc(route, serveJSON(b))
	}
	page := http.FileServer(http.Dir(pageDir))
	bundle := http.FileServer(http.Dir(bundleDir))
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/", "/index.html":
			page.ServeHTTP(w, r)
		case "/device.js":
			bundle.ServeHTTP(w, r)
		default:
			http.NotFound(w, r)
		}
	})
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(lis)
	t.Cleanup(func() { srv.Close() })

	runCtx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	// localhost, not 127.0.0.1: WebAuthn takes a domain as the RP ID, and
	// http://localhost is a secure context.
	port := lis.Addr().(*net.TCPAddr).Port
	args := []string{filepath.Join(webDir, "run.mjs"), fmt.Sprintf("http://localhost:%d/", port)}
	if p := os.Getenv("ESCROWD_BROWSER_SCREENSHOT"); p != "" {
		args = append(args, p)
	}
	cmd := exec.CommandContext(runCtx, node, args...)
	cmd.Dir = webDir
	cmd.Env = append(os.Environ(), "PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	start := time.Now()
	out, err := cmd.Output()
	t.Logf("Chromium run took %v", time.Since(start).Round(time.Millisecond))
	if p := os.Getenv("ESCROWD_BROWSER_OUTPUT"); p != "" {
		if werr := os.WriteFile(p, out, 0o644); werr != nil {
			t.Error(werr)
		}
	}
	var res pageResult
	if jerr := json.Unmarshal(out, &res); jerr != nil {
		t.Fatalf("node run.mjs: %v; output: %v\n%s\n%s", err, jerr, out, stderr.String())
	}
	t.Logf("page timings (ms): %v; vectors %d ms", res.Timings, res.Vectors.MS)
	for _, c := range res.Console {
		if strings.HasPrefix(c, "pageerror") || strings.HasPrefix(c, "error") {
			t.Errorf("page console: %s", c)
		}
	}
	if run, ok := res.Errors["run"]; ok {
		t.Fatalf("node run.mjs: %v: %s\n%s", err, run, stderr.String())
	}
	for stage, e := range res.Errors {
		t.Errorf("page, %s: %s", stage, e)
	}
	if err != nil && len(res.Errors) == 0 {
		t.Errorf("node run.mjs: %v\n%s", err, stderr.String())
	}
	return res
}

// checkBrowserPasskey: the page made a passkey-prf slot of GDK 2 with a
// real WebAuthn PRF (the virtual authenticator) and opened it again. Go
// cannot evaluate that PRF; it checks that the slot decodes, has a
// 32-byte salt and the authenticator's credential, asked for the format's
// PRF input, and that its commitment and binding are GDK 2's.
func checkBrowserPasskey(t *testing.T, res pageResult, group string, gdk2, commit2 []byte) {
	t.Helper()
	p := res.Passkey
	if !p.PRFEnabled {
		t.Error("passkey: the authenticator did not enable the PRF extension")
	}
	cred, err := base64.StdEncoding.DecodeString(p.Credential)
	if err != nil || len(cred) == 0 {
		t.Errorf("passkey: credential %q: %v", p.Credential, err)
		return
	}
	found := false
	for _, c := range p.Authenticator {
		if id, err := base64.StdEncoding.DecodeString(c.ID); err == nil && bytes.Equal(id, cred) && c.Resident {
			found = true
		}
	}
	if !found {
		t.Errorf("passkey: the virtual authenticator holds %+v, not the page's credential", p.Authenticator)
	}
	s, err := bundle.ParseSlot([]byte(p.Slot))
	if err != nil {
		t.Errorf("passkey: the page's slot does not decode: %v\n%s", err, p.Slot)
		return
	}
	if s.Kind != bundle.KindPasskeyPRF || s.Suite != bundle.SuiteHKDFAESKW || s.Group != group || s.ID != "alice" || s.GDKVersion != 2 || s.KeyVersion != 1 {
		t.Errorf("passkey: the page's slot is %s %s %s/%s GDK %d key %d", s.Kind, s.Suite, s.Group, s.ID, s.GDKVersion, s.KeyVersion)
	}
	if len(s.KDF.Salt) != bundle.PasskeySaltSize || s.KDF.Iterations != 0 {
		t.Errorf("passkey: salt of %d bytes, iterations %d", len(s.KDF.Salt), s.KDF.Iterations)
	}
	if !bytes.Equal(s.Credential, cred) {
		t.Errorf("passkey: the slot's credential %x is not the authenticator's %x", s.Credential, cred)
	}
	if !bytes.Equal(s.Commit, commit2) {
		t.Errorf("passkey: commitment %x, want GDK 2's %x", s.Commit, commit2)
	}
	if bind, err := format.Bind(gdk2, s.Context()); err != nil || !bytes.Equal(bind, s.Bind) {
		t.Errorf("passkey: the page's binding does not verify under GDK 2: %v", err)
	}
	in := hex.EncodeToString(format.PRFInput(s.KDF.Salt))
	if p.PRFInput != in || len(p.Inputs) < 2 {
		t.Errorf("passkey: PRF inputs %q (slot's %s), want %s for sealing and opening", p.Inputs, p.PRFInput, in)
	}
	for i, x := range p.Inputs[:min(2, len(p.Inputs))] {
		if x != in {
			t.Errorf("passkey: PRF call %d asked for %s, want %s", i, x, in)
		}
	}
	var o pageOpened
	if !p.Opened.OK {
		t.Errorf("passkey: the page could not open its slot: %s: %s", p.Opened.Cls, p.Opened.Message)
	} else if err := json.Unmarshal(p.Opened.Value, &o); err != nil || o.Commit != hex.EncodeToString(commit2) || o.Trusted != o.Commit {
		t.Errorf("passkey: opened %+v, %v", o, err)
	}
	if p.OtherSalt.OK || p.OtherSalt.Cls != "wrong-secret" {
		t.Errorf("passkey: a slot with another salt: %+v, want wrong-secret", p.OtherSalt)
	}
}

// checkBrowserVectors: the page ran the three vector files with no failure
// and as many cases as the files hold.
func checkBrowserVectors(t *testing.T, res pageResult, files map[string][]byte) {
	t.Helper()
	report := func(file string, r pageVectorRun) {
		t.Helper()
		for _, f := range r.Failures {
			t.Errorf("%s: vector %q: got %v, want %v", file, f.Name, f.Got, f.Want)
		}
	}
	// strictjson: an array of cases, one check each.
	var sjv []json.RawMessage
	if err := json.Unmarshal(files["/vectors/strictjson.json"], &sjv); err != nil {
		t.Fatal(err)
	}
	report("format/strictjson", res.Vectors.StrictJSON)
	if n := res.Vectors.StrictJSON.Passed; n == 0 || n != len(sjv) {
		t.Errorf("format/strictjson: the page passed %d vectors, the file has %d", n, len(sjv))
	}
	// unlockcode: runVectors counts checks: 4 per code (from material, two
	// parses, the key) and 2 more with an HMAC; one per typing and per
	// invalid typing; one for the separator set.
	var ucv struct {
		Codes   []struct{ HMAC json.RawMessage } `json:"codes"`
		Typings []json.RawMessage                `json:"typings"`
		Invalid []json.RawMessage                `json:"invalid"`
	}
	if err := json.Unmarshal(files["/vectors/unlockcode.json"], &ucv); err != nil {
		t.Fatal(err)
	}
	want := len(ucv.Typings) + len(ucv.Invalid) + 1
	for _, c := range ucv.Codes {
		want += 4
		if len(c.HMAC) > 0 && string(c.HMAC) != "null" {
			want += 2
		}
	}
	report("escrow/unlockcode", res.Vectors.UnlockCode)
	if n := res.Vectors.UnlockCode.Passed; len(ucv.Codes) == 0 || n != want {
		t.Errorf("escrow/unlockcode: the page passed %d checks, the file makes %d (%d codes)", n, want, len(ucv.Codes))
	}
	// device: counts per section.
	var dv struct {
		Format   int               `json:"format"`
		GDKs     map[string]string `json:"gdks"`
		Positive []json.RawMessage `json:"positive"`
		Negative []json.RawMessage `json:"negative"`
		Records  []json.RawMessage `json:"records"`
	}
	if err := json.Unmarshal(files["/vectors/device.json"], &dv); err != nil {
		t.Fatal(err)
	}
	if dv.Format != 2 {
		t.Errorf("escrow/device/testdata/vectors.json is not format 2 (format %d): regenerate it", dv.Format)
	}
	report("escrow/device", res.Vectors.Device)
	fileCounts := map[string]int{"gdks": len(dv.GDKs), "positive": len(dv.Positive), "negative": len(dv.Negative), "records": len(dv.Records)}
	total := 0
	for sec, n := range fileCounts {
		total += n
		if n == 0 || res.Vectors.Device.Counts[sec] != n {
			t.Errorf("escrow/device: the page ran %d %s vectors, the file has %d", res.Vectors.Device.Counts[sec], sec, n)
		}
	}
	if res.Vectors.Device.Passed != total {
		t.Errorf("escrow/device: the page passed %d vectors of %d", res.Vectors.Device.Passed, total)
	}
	t.Logf("vectors in Chromium: strictjson %d, unlockcode %d checks, device %d (%v)",
		res.Vectors.StrictJSON.Passed, res.Vectors.UnlockCode.Passed, res.Vectors.Device.Passed, res.Vectors.Device.Counts)
}
