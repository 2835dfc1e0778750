package e2e

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	escrowdv1 "github.com/escrowd/escrowd/api/escrowd/v1"
	"github.com/escrowd/escrowd/escrow/bundle"
	"github.com/escrowd/escrowd/escrow/device"
)

const chromiumPath = "/usr/bin/chromium"

// browserFixture is what the page gets: slots the running daemon made over
// gRPC (and the Go reference device, for the kinds that are the device's),
// the keys and secrets a user's device would hold, never a GDK.
type browserFixture struct {
	Group       string         `json:"group"`
	RSAPKCS8    []byte         `json:"rsa_pkcs8"`
	P256PKCS8   []byte         `json:"p256_pkcs8"`
	MemberSlots []namedSlot    `json:"member_slots"`
	UnlockSlots []string       `json:"unlock_slots"`
	Tampered    string         `json:"tampered_unlock_slot"`
	Password    string         `json:"password"`
	PasswordSl  string         `json:"password_slot"`
	PRF         []byte         `json:"prf"`
	PasskeySl   string         `json:"passkey_slot"`
	Chain       string         `json:"chain_slot"`
	RecordV1    string         `json:"record_v1"`
	RecordV2    string         `json:"record_v2"`
	Typed       []typedAttempt `json:"typed"`
}

type namedSlot struct {
	Name string `json:"name"`
	Key  string `json:"key"` // "rsa" or "p256"
	Slot string `json:"slot"`
}

type typedAttempt struct {
	Name string `json:"name"`
	Slot string `json:"slot"` // option value of the page's slot list
	Code string `json:"code"`
}

type attemptResult struct {
	OK      bool   `json:"ok"`
	Value   string `json:"value"`
	Code    string `json:"code"`
	Message string `json:"message"`
}

type pageResult struct {
	Console []string                 `json:"console"`
	All     map[string]attemptResult `json:"all"`
	Typed   map[string]struct {
		Code string `json:"code"`
		GDK  string `json:"gdk"`
		Text string `json:"text"`
	} `json:"typed"`
}

// TestBrowserDevice: the running daemon produces, over gRPC, member slots
// in each public-key suite the HSM can do, a rotated GDK with its chain and
// unlock slots, and reveals a code; the Go reference device adds a
// password, a passkey-prf and an rsa-oaep-sha256 member slot and two
// records. Headless Chromium then opens all of it with web/device.js
// (WebCrypto only), a code typed as a person would, and shows a distinct
// error for a wrong code, a mistyped character and a damaged slot.
// Missing Chromium or Node fails the test.
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
	if _, err := os.Stat(filepath.Join(webDir, "node_modules", "playwright-core")); err != nil {
		t.Fatal("web/node_modules/playwright-core is missing: run `make deps` (npm ci --prefix web)")
	}

	s := newStack(t, vaultSrv)
	ctx := ctxT(t)
	const group = "browser-family"
	gdk1, slot1, _ := s.provisionSuite(ctx, group, "")
	record1, err := device.SealRecord(gdk1, group, "note-1", 1, []byte("written before Carol left"))
	if err != nil {
		t.Fatal(err)
	}
	alice := newKeys(t)
	// Carol leaves: rotate to GDK 2 for alice (RSA member, ECDH device) and
	// new unlock codes for bob.
	rot, err := s.sync.RotateGroupKey(ctx, &escrowdv1.RotateGroupKeyRequest{
		GroupId: group, EscrowSlot: slot1, OldGdkVersion: 1,
		Recipients: []*escrowdv1.Recipient{
			alice.recipient(escrowdv1.Recipient_KIND_MEMBER, "alice", bundle.SuiteRSAOAEPSHA1),
			alice.recipient(escrowdv1.Recipient_KIND_DEVICE, "alice-phone", bundle.SuiteECDHP256),
		},
		UnlockUserIds: []string{"bob"}, CodesPerUser: 3,
	})
	if err != nil {
		t.Fatalf("RotateGroupKey: %v", err)
	}
	gdk2 := alice.open(t, rot.GetRecipientSlots()[0])
	// A member slot in ecdh-p256 through Rewrap of the new escrow slot.
	rw, err := s.sync.Rewrap(ctx, &escrowdv1.RewrapRequest{GroupId: group, EscrowSlot: rot.GetEscrowSlot(),
		Recipient: alice.recipient(escrowdv1.Recipient_KIND_MEMBER, "alice", bundle.SuiteECDHP256)})
	if err != nil {
		t.Fatalf("Rewrap: %v", err)
	}
	// SoftHSM cannot wrap with RSA-OAEP-SHA256; the Go device makes that
	// slot so the browser proves the suite too.
	sha256Slot, err := device.SealPublic(bundle.KindMember, "alice", 1, bundle.SuiteRSAOAEPSHA256, alice.rsaPub, gdk2)
	if err != nil {
		t.Fatal(err)
	}
	unlock := rot.GetUnlock()[0].GetSlots()
	// Support reveals two codes over gRPC.
	var codes []string
	for range 2 {
		rv, err := s.support.RevealUnlockCode(ctx, &escrowdv1.RevealUnlockCodeRequest{GroupId: group, UserId: "bob", Ticket: "SUP-4242"})
		if err != nil {
			t.Fatalf("RevealUnlockCode: %v", err)
		}
		codes = append(codes, rv.GetCode())
	}
	const password = "Correct horse, battery staple"
	pwSlot, err := device.SealPassword(gdk2, "alice", 1, password, bundle.MinPasswordIterations)
	if err != nil {
		t.Fatal(err)
	}
	prf := bytes.Repeat([]byte{0x5a}, 32) // a fixed WebAuthn PRF output
	pkSlot, err := device.SealPasskey(gdk2, "cred-alice-1", 1, prf)
	if err != nil {
		t.Fatal(err)
	}
	record2, err := device.SealRecord(gdk2, group, "note-2", 2, []byte("written after Carol left"))
	if err != nil {
		t.Fatal(err)
	}
	tampered, _ := bundle.ParseSlot(unlock[0])
	tampered.Wrapped[9] ^= 0x01
	tamperedSlot, _ := tampered.Marshal()

	typed0 := strings.ToLower(codes[0]) // as a person types it: lower case, dashes
	mistyped := []byte(typed0)
	mistyped[5] = map[bool]byte{true: 'x', false: 'y'}[mistyped[5] != 'x']
	rsaDER, _ := x509.MarshalPKCS8PrivateKey(alice.rsa)
	ecDER, _ := x509.MarshalPKCS8PrivateKey(alice.ec)
	fx := browserFixture{
		Group: group, RSAPKCS8: rsaDER, P256PKCS8: ecDER,
		MemberSlots: []namedSlot{
			{"member rsa-oaep-sha1 (daemon)", "rsa", string(rot.GetRecipientSlots()[0])},
			{"device ecdh-p256 (daemon)", "p256", string(rot.GetRecipientSlots()[1])},
			{"member ecdh-p256 (daemon)", "p256", string(rw.GetSlot())},
			{"member rsa-oaep-sha256 (Go device)", "rsa", string(sha256Slot)},
		},
		Tampered: string(tamperedSlot), Password: password, PasswordSl: string(pwSlot),
		PRF: prf, PasskeySl: string(pkSlot), Chain: string(rot.GetChainSlot()),
		RecordV1: string(record1), RecordV2: string(record2),
		Typed: []typedAttempt{
			{"right code", "0", typed0},
			{"second code", "1", strings.ToLower(codes[1])},
			{"wrong code", "0", strings.ToLower(codes[1])},
			{"mistyped", "0", string(mistyped)},
			{"not a code", "0", "1234-5678"},
			{"damaged slot", "tampered", typed0},
		},
	}
	for _, u := range unlock {
		fx.UnlockSlots = append(fx.UnlockSlots, string(u))
	}
	fixtureJSON, err := json.Marshal(fx)
	if err != nil {
		t.Fatal(err)
	}
	vectors, err := os.ReadFile("../escrow/device/testdata/vectors.json")
	if err != nil {
		t.Fatal(err)
	}

	mux := http.NewServeMux()
	mux.HandleFunc("/fixture.json", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Write(fixtureJSON)
	})
	mux.HandleFunc("/vectors.json", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Write(vectors)
	})
	files := http.FileServer(http.Dir(webDir))
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/", "/index.html", "/device.js":
			files.ServeHTTP(w, r)
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

	runCtx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	args := []string{filepath.Join(webDir, "run.mjs"), "http://" + lis.Addr().String() + "/"}
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
	if err != nil {
		t.Fatalf("node run.mjs: %v\n%s", err, stderr.String())
	}
	t.Logf("Chromium run took %v", time.Since(start).Round(time.Millisecond))
	var res pageResult
	if err := json.Unmarshal(out, &res); err != nil {
		t.Fatalf("page output: %v\n%s", err, out)
	}
	for _, c := range res.Console {
		if strings.HasPrefix(c, "pageerror") || strings.HasPrefix(c, "error") {
			t.Errorf("page console: %s", c)
		}
	}

	hex1, hex2 := hex.EncodeToString(gdk1), hex.EncodeToString(gdk2)
	for name, want := range map[string]string{
		"member rsa-oaep-sha1 (daemon)":      hex2,
		"device ecdh-p256 (daemon)":          hex2,
		"member ecdh-p256 (daemon)":          hex2,
		"member rsa-oaep-sha256 (Go device)": hex2,
		"password":                           hex2,
		"passkey":                            hex2,
		"chain":                              hex1,
		"record_v2":                          "written after Carol left",
		"record_v1":                          "written before Carol left",
	} {
		if r := res.All[name]; !r.OK || r.Value != want {
			t.Errorf("page: %s = %+v, want %s", name, r, want)
		}
	}
	for name, code := range map[string]string{"password wrong": "wrong-secret", "record_v1 with the new GDK": "record"} {
		if r := res.All[name]; r.OK || r.Code != code {
			t.Errorf("page: %s = %+v, want error %s", name, r, code)
		}
	}
	nVectors := 0
	for name, r := range res.All {
		if strings.HasPrefix(name, "vector ") {
			nVectors++
			if !r.OK || r.Value != "ok" {
				t.Errorf("page: %s = %+v", name, r)
			}
		}
	}
	if nVectors != 10 {
		t.Errorf("the page checked %d vectors, want 10", nVectors)
	}

	typedWant := map[string]struct{ code, gdk, say string }{
		"right code":   {"ok", hex2, "written before Carol left"},
		"second code":  {"ok", hex2, "Unlocked"},
		"wrong code":   {"wrong-code", "", "does not open this device's data"},
		"mistyped":     {"mistyped", "", "a character is wrong or two are swapped"},
		"not a code":   {"not-a-code", "", "not an unlock code"},
		"damaged slot": {"damaged", "", "damaged or was tampered with"},
	}
	seen := map[string]string{}
	for name, w := range typedWant {
		got, ok := res.Typed[name]
		if !ok || got.Code != w.code || got.GDK != w.gdk || !strings.Contains(strings.ToLower(got.Text), strings.ToLower(w.say)) {
			t.Errorf("typed %s: %+v; want code %s saying %q", name, got, w.code, w.say)
		}
		if w.code != "ok" {
			if other, dup := seen[got.Text]; dup {
				t.Errorf("%s and %s show the same message", name, other)
			}
			seen[got.Text] = name
		}
	}
	// The page had no GDK given to it: nothing in the fixture is one.
	for _, g := range [][]byte{gdk1, gdk2} {
		if bytes.Contains(fixtureJSON, []byte(base64.StdEncoding.EncodeToString(g))) || bytes.Contains(fixtureJSON, []byte(hex.EncodeToString(g))) {
			t.Fatal("the fixture holds a GDK")
		}
	}
}
