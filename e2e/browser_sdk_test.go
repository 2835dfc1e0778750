package e2e

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	escrowdv1 "github.com/escrowd/escrowd/api/escrowd/v1"
	"github.com/escrowd/escrowd/escrow/bundle"
	"github.com/escrowd/escrowd/escrow/device"
	"github.com/escrowd/escrowd/format"
)

// sdkBackend is the test's sync backend for the SDK page: it stores bundles
// and records per group, relays to the running escrowd over gRPC what a
// real backend would (Rewrap, RotateGroupKey, IssueUnlockCodes,
// MarkUnlockCodeConsumed) and lets the test play support (RevealUnlockCode).
type sdkBackend struct {
	t   *testing.T
	s   *stack
	ctx context.Context

	user, keyGroup, deviceID string

	mu       sync.Mutex
	slots    map[string][][]byte
	records  map[string][]string
	pins     map[string]map[uint32]string
	escrow   map[string][]byte // the newest escrow slot per group
	gdks     map[string]map[uint32][]byte
	other    keys // a second member of the rotated group, held by the test
	codes    []string
	consumed []*escrowdv1.MarkUnlockCodeConsumedRequest
	epochs   int
	plain    []string // the plaintexts of the records the test wrote
}

const (
	sdkFamily    = "sdk-family"    // bob's own group, rotated once he is enrolled
	sdkSurrogate = "sdk-surrogate" // a group bob is a surrogate member of
)

func (b *sdkBackend) fail(w http.ResponseWriter, err error) {
	b.t.Errorf("sync backend: %v", err)
	http.Error(w, err.Error(), http.StatusInternalServerError)
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(v)
}

func (b *sdkBackend) bundleText(group string) ([]byte, error) {
	if len(b.slots[group]) == 0 {
		return nil, nil
	}
	bd := bundle.Bundle{Group: group}
	for _, raw := range b.slots[group] {
		sl, err := bundle.ParseSlot(raw)
		if err != nil {
			return nil, err
		}
		bd.Slots = append(bd.Slots, *sl)
	}
	return bd.Marshal()
}

// provision makes a group with GDK 1 (the test's, as a group creator's
// device would) and a record under it.
func (b *sdkBackend) provision(group, text string) {
	b.t.Helper()
	prov, err := b.s.sync.ProvisionGroup(b.ctx, &escrowdv1.ProvisionGroupRequest{GroupId: group})
	if err != nil {
		b.t.Fatalf("ProvisionGroup %s: %v", group, err)
	}
	ek := prov.GetEscrowKey()
	gdk, err := device.NewGDK()
	if err != nil {
		b.t.Fatal(err)
	}
	es, err := device.SealEscrow(ek.GetPublicKey(), device.To{Group: group, GDKVersion: 1, KeyVersion: ek.GetVersion()}, ek.GetSuite(), gdk)
	if err != nil {
		b.t.Fatal(err)
	}
	rec, err := device.SealRecord(gdk, group, "note-1", 1, []byte(text))
	if err != nil {
		b.t.Fatal(err)
	}
	b.escrow[group] = es
	b.slots[group] = [][]byte{es}
	b.gdks[group] = map[uint32][]byte{1: gdk}
	b.pins[group] = map[uint32]string{1: hex.EncodeToString(format.Commitment(group, 1, gdk))}
	b.records[group] = []string{string(rec)}
	b.plain = append(b.plain, text)
}

// enrol gives bob's member key and this device's key a slot of each group
// (Rewrap), then rotates his own group to GDK 2 for him, his device and
// another member, as after someone left, and writes a record under GDK 2.
func (b *sdkBackend) enrol(memberSPKI, deviceSPKI []byte) error {
	member := &escrowdv1.Recipient{Kind: escrowdv1.Recipient_KIND_MEMBER, Id: b.user, KeyVersion: 1, Suite: bundle.SuiteECDHP256, PublicKey: memberSPKI}
	dev := &escrowdv1.Recipient{Kind: escrowdv1.Recipient_KIND_DEVICE, Id: b.deviceID, KeyVersion: 1, Suite: bundle.SuiteECDHP256, PublicKey: deviceSPKI}
	for _, g := range []string{sdkFamily, sdkSurrogate} {
		for _, r := range []*escrowdv1.Recipient{member, dev} {
			rw, err := b.s.sync.Rewrap(b.ctx, &escrowdv1.RewrapRequest{GroupId: g, EscrowSlot: b.escrow[g], Recipient: r})
			if err != nil {
				return fmt.Errorf("Rewrap %s to %s: %w", g, r.GetId(), err)
			}
			b.slots[g] = append(b.slots[g], rw.GetSlot())
		}
	}
	other := b.other.recipient(escrowdv1.Recipient_KIND_MEMBER, "alice", bundle.SuiteECDHP256)
	rot, err := b.s.sync.RotateGroupKey(b.ctx, &escrowdv1.RotateGroupKeyRequest{
		GroupId: sdkFamily, EscrowSlot: b.escrow[sdkFamily], OldGdkVersion: 1,
		Recipients: []*escrowdv1.Recipient{member, dev, other},
	})
	if err != nil {
		return fmt.Errorf("RotateGroupKey: %w", err)
	}
	gdk2, _, err := device.OpenPublic(rot.GetRecipientSlots()[2], device.Want{Group: sdkFamily, ID: "alice"}, b.other.ec)
	if err != nil {
		return err
	}
	b.gdks[sdkFamily][2] = gdk2
	b.pins[sdkFamily][2] = hex.EncodeToString(rot.GetGdkCommitment())
	b.escrow[sdkFamily] = rot.GetEscrowSlot()
	b.slots[sdkFamily] = append(b.slots[sdkFamily], rot.GetEscrowSlot(), rot.GetChainSlot(), rot.GetRecipientSlots()[0], rot.GetRecipientSlots()[1])
	const text = "sdk-family note under GDK 2, after the rotation"
	rec, err := device.SealRecord(gdk2, sdkFamily, "note-2", 2, []byte(text))
	if err != nil {
		return err
	}
	b.records[sdkFamily] = append(b.records[sdkFamily], string(rec))
	b.plain = append(b.plain, text)
	return nil
}

// issueCodes starts a new unlock-code epoch of bob's key group and puts
// its unlock slots in the key group's bundle in place of the old ones.
func (b *sdkBackend) issueCodes() error {
	iss, err := b.s.sync.IssueUnlockCodes(b.ctx, &escrowdv1.IssueUnlockCodesRequest{GroupId: b.keyGroup, UserId: b.user, EscrowSlot: b.escrow[b.keyGroup], Count: 3})
	if err != nil {
		return fmt.Errorf("IssueUnlockCodes: %w", err)
	}
	var kept [][]byte
	for _, raw := range b.slots[b.keyGroup] {
		if sl, err := bundle.ParseSlot(raw); err == nil && sl.Kind != bundle.KindUnlock {
			kept = append(kept, raw)
		}
	}
	b.slots[b.keyGroup] = append(kept, iss.GetSlots()...)
	b.epochs++
	return nil
}

func (b *sdkBackend) routes(mux *http.ServeMux) {
	mux.HandleFunc("/sync/bundle", func(w http.ResponseWriter, r *http.Request) {
		b.mu.Lock()
		defer b.mu.Unlock()
		group := r.URL.Query().Get("group")
		if r.Method == http.MethodGet {
			text, err := b.bundleText(group)
			if err != nil {
				b.fail(w, err)
				return
			}
			var v *string
			if text != nil {
				s := string(text)
				v = &s
			}
			writeJSON(w, map[string]*string{"bundle": v})
			return
		}
		var req struct{ Bundle string }
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
			b.fail(w, err)
			return
		}
		// The backend checks what a device pushes with the Go decoder.
		bd, err := bundle.Parse([]byte(req.Bundle))
		if err != nil || bd.Group != group {
			b.fail(w, fmt.Errorf("a pushed bundle of %s does not decode: %v", group, err))
			return
		}
		var slots [][]byte
		for i := range bd.Slots {
			raw, err := bd.Slots[i].Marshal()
			if err != nil {
				b.fail(w, err)
				return
			}
			slots = append(slots, raw)
			if bd.Slots[i].Kind == bundle.KindEscrow && group == b.keyGroup {
				b.escrow[group] = raw
			}
		}
		b.slots[group] = slots
		if group == b.keyGroup && b.epochs == 0 {
			if err := b.issueCodes(); err != nil {
				b.fail(w, err)
				return
			}
		}
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("/sync/enrol", func(w http.ResponseWriter, r *http.Request) {
		b.mu.Lock()
		defer b.mu.Unlock()
		var req struct {
			User         string
			MemberSPKI   []byte `json:"member_spki"`
			DeviceSPKI   []byte `json:"device_spki"`
			MemberRecord string `json:"member_record"`
			Commit       string
		}
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil || req.User != b.user {
			b.fail(w, fmt.Errorf("enrol: %v", err))
			return
		}
		// Trust on first use for the key group: the device made it.
		b.pins[b.keyGroup] = map[uint32]string{1: req.Commit}
		b.records[b.keyGroup] = []string{req.MemberRecord}
		if err := b.enrol(req.MemberSPKI, req.DeviceSPKI); err != nil {
			b.fail(w, err)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("/sync/enrolments", func(w http.ResponseWriter, r *http.Request) {
		b.mu.Lock()
		defer b.mu.Unlock()
		type pin struct {
			Version uint32 `json:"version"`
			Commit  string `json:"commit"`
		}
		type enrolment struct {
			Group string `json:"group"`
			Pins  []pin  `json:"pins"`
		}
		var out []enrolment
		for _, g := range []string{b.keyGroup, sdkFamily, sdkSurrogate} {
			e := enrolment{Group: g, Pins: []pin{}}
			for v := uint32(1); b.pins[g][v] != ""; v++ {
				e.Pins = append(e.Pins, pin{v, b.pins[g][v]})
			}
			out = append(out, e)
		}
		writeJSON(w, map[string]any{"enrolments": out})
	})
	mux.HandleFunc("/sync/records", func(w http.ResponseWriter, r *http.Request) {
		b.mu.Lock()
		defer b.mu.Unlock()
		group := r.URL.Query().Get("group")
		if r.Method == http.MethodGet {
			writeJSON(w, map[string]any{"records": append([]string{}, b.records[group]...)})
			return
		}
		var req struct{ Records []string }
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
			b.fail(w, err)
			return
		}
		for _, rec := range req.Records {
			if _, err := bundle.ParseRecord([]byte(rec)); err != nil {
				b.fail(w, err)
				return
			}
		}
		b.records[group] = append(b.records[group], req.Records...)
		w.WriteHeader(http.StatusNoContent)
	})
	// A device used an unlock code: relay to escrowd, then a new epoch.
	mux.HandleFunc("/sync/consumed", func(w http.ResponseWriter, r *http.Request) {
		b.mu.Lock()
		defer b.mu.Unlock()
		var req struct {
			Group, User  string
			Epoch, Index uint32
		}
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
			b.fail(w, err)
			return
		}
		m := &escrowdv1.MarkUnlockCodeConsumedRequest{GroupId: req.Group, UserId: req.User, Epoch: req.Epoch, Index: req.Index}
		if _, err := b.s.sync.MarkUnlockCodeConsumed(b.ctx, m); err != nil {
			b.fail(w, fmt.Errorf("MarkUnlockCodeConsumed: %w", err))
			return
		}
		b.consumed = append(b.consumed, m)
		if err := b.issueCodes(); err != nil {
			b.fail(w, err)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
	// Support reveals a code of bob's key group and reads it out.
	mux.HandleFunc("/test/reveal", func(w http.ResponseWriter, r *http.Request) {
		rv, err := b.s.support.RevealUnlockCode(b.ctx, &escrowdv1.RevealUnlockCodeRequest{GroupId: b.keyGroup, UserId: b.user, Ticket: "SUP-7"})
		if err != nil {
			b.fail(w, fmt.Errorf("RevealUnlockCode: %w", err))
			return
		}
		b.mu.Lock()
		b.codes = append(b.codes, rv.GetCode())
		b.mu.Unlock()
		writeJSON(w, map[string]string{"code": rv.GetCode()})
	})
}

type sdkResult struct {
	Console []string                   `json:"console"`
	Errors  map[string]string          `json:"errors"`
	Timings map[string]int             `json:"timings"`
	Results map[string]json.RawMessage `json:"results"`
	Dumps   map[string]struct {
		Text       string `json:"text"`
		CryptoKeys []struct {
			Extractable bool   `json:"extractable"`
			Type        string `json:"type"`
		} `json:"cryptoKeys"`
	} `json:"dumps"`
	Secrets []string `json:"secrets"`
}

type sdkAttempt struct {
	OK      bool   `json:"ok"`
	Code    string `json:"code"`
	Message string `json:"message"`
}

// TestBrowserSDK runs @escrowd/device in Chromium against the running
// daemon, through a sync backend of the test's: a user enrols (key group,
// member key, password), gets member and device slots of two groups from
// escrowd (one rotated after enrolment) and unlocks all of them with one
// password; the device key alone opens them after a lock, in the page and
// in the service worker; a passkey with
// PRF (virtual authenticator) gets a slot and unlocks; offline, after a
// reload served by the service worker, the password unlocks and records
// are read and written; offline still, a code support revealed over gRPC,
// typed in lower case with dashes, recovers everything (and again after a
// reload in the middle, which starts the page's DeviceSession failed,
// interrupted, step "recovery"; the report queued once) and sets a new password,
// the old one opening nothing; back online the "code consumed"
// report reaches escrowd once and the backend's new epoch retires the
// code. After every step, IndexedDB, Cache Storage and localStorage hold
// none of the passwords, codes, PRF outputs, keys or plaintexts. The page
// also measures unlock and record throughput (clients/web/README.md).
func TestBrowserSDK(t *testing.T) {
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
	bundleDir := buildDeviceBundle(t, "test/browser/sdk.ts", "sdk.js")
	swDir := buildDeviceBundle(t, "test/browser/sw.ts", "sw.js")
	pageDir, err := filepath.Abs("../clients/web/test/browser")
	if err != nil {
		t.Fatal(err)
	}

	s := newStack(t, vaultSrv)
	ctx := ctxT(t)
	b := &sdkBackend{t: t, s: s, ctx: ctx, user: "bob", keyGroup: "key.bob", deviceID: "bob-laptop",
		slots: map[string][][]byte{}, records: map[string][]string{}, pins: map[string]map[uint32]string{},
		escrow: map[string][]byte{}, gdks: map[string]map[uint32][]byte{}, other: newKeys(t)}
	b.provision(sdkFamily, "sdk-family note under GDK 1, before the rotation")
	b.provision(sdkSurrogate, "sdk-surrogate note, read by a surrogate")
	prov, err := s.sync.ProvisionGroup(ctx, &escrowdv1.ProvisionGroupRequest{GroupId: b.keyGroup})
	if err != nil {
		t.Fatalf("ProvisionGroup %s: %v", b.keyGroup, err)
	}
	ek := prov.GetEscrowKey()
	const password, newPassword = "first password, forgotten later", "the second password"
	fixture := map[string]any{
		"user": b.user, "keyGroup": b.keyGroup, "deviceId": b.deviceID, "password": password, "new_password": newPassword,
		"escrow": map[string]any{"spki": base64.StdEncoding.EncodeToString(ek.GetPublicKey()), "suite": ek.GetSuite(), "version": ek.GetVersion()},
	}
	fixtureJSON, _ := json.Marshal(fixture)

	mux := http.NewServeMux()
	mux.HandleFunc("/fixture.json", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Write(fixtureJSON)
	})
	b.routes(mux)
	page := http.FileServer(http.Dir(pageDir))
	bundleFiles := http.FileServer(http.Dir(bundleDir))
	swFiles := http.FileServer(http.Dir(swDir))
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/sdk.html":
			page.ServeHTTP(w, r)
		case "/sdk.js":
			bundleFiles.ServeHTTP(w, r)
		case "/sw.js":
			swFiles.ServeHTTP(w, r)
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
	cmd := exec.CommandContext(runCtx, node, filepath.Join(webDir, "sdk_run.mjs"), fmt.Sprintf("http://localhost:%d/", lis.Addr().(*net.TCPAddr).Port))
	cmd.Dir = webDir
	cmd.Env = append(os.Environ(), "PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	start := time.Now()
	out, runErr := cmd.Output()
	t.Logf("Chromium run took %v", time.Since(start).Round(time.Millisecond))
	if p := os.Getenv("ESCROWD_BROWSER_OUTPUT"); p != "" {
		os.WriteFile(p, out, 0o644)
	}
	var res sdkResult
	if err := json.Unmarshal(out, &res); err != nil {
		t.Fatalf("node sdk_run.mjs: %v; output: %v\n%.4000s\n%s", runErr, err, out, stderr.String())
	}
	t.Logf("timings (ms): %v", res.Timings)
	for _, c := range res.Console {
		// The offline steps' requests fail on purpose; Chromium logs them.
		if strings.Contains(c, "net::ERR_INTERNET_DISCONNECTED") {
			continue
		}
		if strings.HasPrefix(c, "pageerror") || strings.HasPrefix(c, "error") {
			t.Errorf("page console: %s", c)
		}
	}
	for stage, e := range res.Errors {
		t.Errorf("page, %s: %.4000s", stage, e)
	}
	if runErr != nil && len(res.Errors) == 0 {
		t.Errorf("node sdk_run.mjs: %v\n%s", runErr, stderr.String())
	}
	result := func(name string, into any) bool {
		t.Helper()
		raw, ok := res.Results[name]
		if !ok {
			t.Errorf("no result for %s", name)
			return false
		}
		if err := json.Unmarshal(raw, into); err != nil {
			t.Errorf("%s: %v: %s", name, err, raw)
			return false
		}
		return true
	}
	wantGroups := []string{sdkFamily, sdkSurrogate}
	goRecords := map[string]string{
		sdkFamily + "/note-1":    "sdk-family note under GDK 1, before the rotation",
		sdkFamily + "/note-2":    "sdk-family note under GDK 2, after the rotation",
		sdkSurrogate + "/note-1": "sdk-surrogate note, read by a surrogate",
	}
	wantRead := func(name string, read map[string]string, extra map[string]string) {
		t.Helper()
		for k, v := range goRecords {
			if read[k] != v {
				t.Errorf("%s: record %s reads %q, want %q", name, k, read[k], v)
			}
		}
		for k, v := range extra {
			if read[k] != v {
				t.Errorf("%s: record %s reads %q, want %q", name, k, read[k], v)
			}
		}
	}
	pageNotes := map[string]string{}
	for _, g := range wantGroups {
		pageNotes[g+"/page-note"] = "written by the page in " + g
	}

	var enrol struct {
		Groups   []string            `json:"groups"`
		Versions map[string][]uint32 `json:"versions"`
		Read     map[string]string   `json:"read"`
		UnlockMS float64             `json:"unlockMs"`
		Pushed   struct {
			Records int `json:"records"`
		} `json:"pushed"`
	}
	if result("enrol", &enrol) {
		if strings.Join(enrol.Groups, ",") != strings.Join(wantGroups, ",") {
			t.Errorf("enrol: one password opened %v, want %v", enrol.Groups, wantGroups)
		}
		if fmt.Sprint(enrol.Versions[sdkFamily]) != "[1 2]" {
			t.Errorf("enrol: %s versions %v, want GDK 1 (down the chain) and 2", sdkFamily, enrol.Versions[sdkFamily])
		}
		wantRead("enrol", enrol.Read, nil)
		if enrol.Pushed.Records != len(wantGroups) {
			t.Errorf("enrol: a sync pushed %d records, want the page's %d", enrol.Pushed.Records, len(wantGroups))
		}
	}
	// The page's records, read by the Go device with the GDKs it holds.
	for _, g := range wantGroups {
		found := false
		for _, rec := range b.records[g] {
			r, err := bundle.ParseRecord([]byte(rec))
			if err != nil || r.ID != "page-note" {
				continue
			}
			_, pt, err := device.OpenRecord([]byte(rec), b.gdks[g][r.GDKVersion])
			if err != nil || string(pt) != "written by the page in "+g {
				t.Errorf("the page's record of %s: the Go device reads %q, %v", g, pt, err)
			}
			want := uint32(1)
			if g == sdkFamily {
				want = 2
			}
			if r.GDKVersion != want {
				t.Errorf("the page wrote its record of %s under GDK %d, want the newest, %d", g, r.GDKVersion, want)
			}
			found = true
		}
		if !found {
			t.Errorf("the page pushed no record of %s", g)
		}
	}

	var dk struct {
		AfterLock sdkAttempt        `json:"afterLock"`
		Groups    []string          `json:"groups"`
		Read      map[string]string `json:"read"`
	}
	if result("device key", &dk) {
		if dk.AfterLock.OK || dk.AfterLock.Code != "locked" {
			t.Errorf("a record read after lock: %+v, want locked", dk.AfterLock)
		}
		if strings.Join(dk.Groups, ",") != strings.Join(wantGroups, ",") {
			t.Errorf("the device key opened %v, want %v", dk.Groups, wantGroups)
		}
		wantRead("device key", dk.Read, pageNotes)
	}

	var sw struct {
		OK       bool              `json:"ok"`
		Code     string            `json:"code"`
		Message  string            `json:"message"`
		Groups   []string          `json:"groups"`
		Read     map[string]string `json:"read"`
		DeviceID string            `json:"deviceId"`
	}
	if result("service worker", &sw) {
		if !sw.OK {
			t.Errorf("service worker: %s: %s", sw.Code, sw.Message)
		} else {
			if strings.Join(sw.Groups, ",") != strings.Join(wantGroups, ",") || sw.DeviceID != b.deviceID {
				t.Errorf("service worker: the device key (id %q) opened %v, want %v", sw.DeviceID, sw.Groups, wantGroups)
			}
			wantRead("service worker", sw.Read, pageNotes)
		}
	}

	var pk struct {
		Credential    string            `json:"credential"`
		Groups        []string          `json:"groups"`
		Read          map[string]string `json:"read"`
		Wrong         sdkAttempt        `json:"wrong"`
		Authenticator []string          `json:"authenticator"`
	}
	if result("passkey", &pk) {
		if strings.Join(pk.Groups, ",") != strings.Join(wantGroups, ",") {
			t.Errorf("the passkey opened %v, want %v", pk.Groups, wantGroups)
		}
		wantRead("passkey", pk.Read, pageNotes)
		if pk.Wrong.OK || pk.Wrong.Code != "wrong-secret" {
			t.Errorf("a wrong PRF output: %+v, want wrong-secret", pk.Wrong)
		}
		if len(pk.Authenticator) != 1 || pk.Authenticator[0] != pk.Credential {
			t.Errorf("the authenticator holds %v, the slot names %s", pk.Authenticator, pk.Credential)
		}
		// The passkey slot is in the key group's bundle at the backend.
		found := false
		for _, raw := range b.slots[b.keyGroup] {
			sl, err := bundle.ParseSlot(raw)
			if err == nil && sl.Kind == bundle.KindPasskeyPRF && base64.StdEncoding.EncodeToString(sl.Credential) == pk.Credential {
				found = true
			}
		}
		if !found {
			t.Error("the passkey slot did not reach the sync backend")
		}
	}

	var off struct {
		Start struct {
			Controlled bool `json:"controlled"`
		} `json:"start"`
		Groups []string          `json:"groups"`
		Read   map[string]string `json:"read"`
		Again  map[string]string `json:"again"`
		Push   sdkAttempt        `json:"push"`
	}
	if result("offline reload", &off) {
		if !off.Start.Controlled {
			t.Error("offline reload: the page was not served by its service worker")
		}
		if strings.Join(off.Groups, ",") != strings.Join(wantGroups, ",") {
			t.Errorf("offline: the password opened %v, want %v", off.Groups, wantGroups)
		}
		wantRead("offline", off.Read, pageNotes)
		written := map[string]string{}
		for _, g := range wantGroups {
			written[g+"/offline-note"] = "written offline in " + g
		}
		wantRead("offline, after writing", off.Again, written)
		if off.Push.OK || off.Push.Code != "offline" {
			t.Errorf("offline: a push %+v, want offline", off.Push)
		}
	}

	var rec struct {
		Typed  string `json:"typed"`
		Report struct {
			Group string `json:"group"`
			User  string `json:"user"`
			Epoch uint32 `json:"epoch"`
			Index uint32 `json:"index"`
		} `json:"report"`
		Read        map[string]string `json:"read"`
		Groups      []string          `json:"groups"`
		OldPassword sdkAttempt        `json:"oldPassword"`
		Pending     int               `json:"pending"`
		WrongCode   sdkAttempt        `json:"wrongCode"`
		Before      int               `json:"pendingBeforeReload"`
		Begun       sdkSession        `json:"begun"`
		AfterReload sdkSession        `json:"afterReload"`
		AfterSet    sdkSession        `json:"afterSet"`
	}
	if result("recovery offline", &rec) {
		// The page's DeviceSession marks the recovery pending from the code's
		// unlock until the new password is sealed: a reload in between starts
		// failed, interrupted, step "recovery"; the retry then finishes it.
		if rec.Begun.State != "unlocked" || !strings.Contains(rec.Begun.Marker, `"step":"recovery"`) || strings.Contains(rec.Begun.Marker, rec.Typed) {
			t.Errorf("recovery: before the reload %+v, want unlocked with the step marked (and no code)", rec.Begun)
		}
		if rec.AfterReload.State != "failed" || rec.AfterReload.Failure != "interrupted" || rec.AfterReload.Step != "recovery" || rec.AfterReload.Marker != "" {
			t.Errorf("recovery: after a reload in the middle %+v, want failed, interrupted, step recovery, marker consumed", rec.AfterReload)
		}
		if rec.AfterSet.State != "unlocked" || rec.AfterSet.Marker != "" {
			t.Errorf("recovery: once the new password is set %+v, want unlocked and no step pending", rec.AfterSet)
		}
		if len(b.codes) != 1 || rec.Typed != strings.ToLower(b.codes[0]) || !strings.Contains(rec.Typed, "-") {
			t.Errorf("recovery: typed %q for the revealed code", rec.Typed)
		}
		wantRead("recovery", rec.Read, pageNotes)
		if strings.Join(rec.Groups, ",") != strings.Join(wantGroups, ",") {
			t.Errorf("recovery: the new password opened %v, want %v", rec.Groups, wantGroups)
		}
		if rec.OldPassword.OK || rec.OldPassword.Code != "wrong-secret" {
			t.Errorf("recovery: the old password %+v, want wrong-secret", rec.OldPassword)
		}
		if rec.Before != 1 {
			t.Errorf("recovery: %d reports queued before the reload, want 1", rec.Before)
		}
		if rec.Pending != 1 || rec.Report.Group != b.keyGroup || rec.Report.User != b.user || rec.Report.Epoch != 1 {
			t.Errorf("recovery offline: report %+v, %d pending; want one queued for %s/%s epoch 1", rec.Report, rec.Pending, b.keyGroup, b.user)
		}
		if rec.WrongCode.OK || rec.WrongCode.Code != "wrong-code" {
			t.Errorf("a code of no slot: %+v, want wrong-code", rec.WrongCode)
		}
	}
	var online struct {
		Sent    int        `json:"sent"`
		Records int        `json:"records"`
		Pending int        `json:"pending"`
		Used    sdkAttempt `json:"used"`
	}
	if result("back online", &online) {
		if online.Sent != 1 || online.Pending != 0 || online.Records != len(wantGroups) {
			t.Errorf("back online: sent %d reports and %d records, %d pending; want 1, %d, 0", online.Sent, online.Records, online.Pending, len(wantGroups))
		}
		// The records written offline reached the backend; the Go device reads them.
		for _, g := range wantGroups {
			found := false
			for _, rec := range b.records[g] {
				r, err := bundle.ParseRecord([]byte(rec))
				if err != nil || r.ID != "offline-note" {
					continue
				}
				_, pt, err := device.OpenRecord([]byte(rec), b.gdks[g][r.GDKVersion])
				if err == nil && string(pt) == "written offline in "+g {
					found = true
				}
			}
			if !found {
				t.Errorf("back online: the record written offline in %s did not reach the backend readable", g)
			}
		}
		if online.Used.OK || online.Used.Code != "wrong-code" {
			t.Errorf("the used code after the new epoch: %+v, want wrong-code", online.Used)
		}
	}
	if len(b.consumed) != 1 || b.consumed[0].GetIndex() != rec.Report.Index || b.consumed[0].GetEpoch() != rec.Report.Epoch {
		t.Errorf("escrowd got %d consumed reports (%v), want exactly the recovery's", len(b.consumed), b.consumed)
	}
	// The daemon's own view: the code is consumed (in the epoch it was
	// issued in; the new epoch replaced it afterwards, so look before).
	lc, err := s.support.ListUnlockCodes(ctx, &escrowdv1.ListUnlockCodesRequest{GroupId: b.keyGroup, UserId: b.user})
	if err != nil || lc.GetEpoch() != 2 {
		t.Errorf("ListUnlockCodes after the report: epoch %d, %v; want the new epoch, 2", lc.GetEpoch(), err)
	}
	// The backend holds the new password slot only.
	for _, raw := range b.slots[b.keyGroup] {
		sl, err := bundle.ParseSlot(raw)
		if err != nil || sl.Kind != bundle.KindPassword {
			continue
		}
		if _, _, err := device.OpenPassword(raw, device.Want{Group: b.keyGroup, ID: b.user}, password); err == nil {
			t.Error("the sync backend still holds a password slot the old password opens")
		}
		if _, _, err := device.OpenPassword(raw, device.Want{Group: b.keyGroup, ID: b.user}, newPassword); err != nil {
			t.Errorf("the backend's password slot does not open with the new password: %v", err)
		}
	}

	var stale struct {
		Before   bool       `json:"before"`
		Stale    sdkAttempt `json:"stale"`
		After    bool       `json:"after"`
		Versions []uint32   `json:"versions"`
		Old      string     `json:"old"`
		Written  uint32     `json:"written"`
		Failed   []struct {
			Group string `json:"group"`
			Code  string `json:"code"`
		} `json:"failed"`
		Opened   []string   `json:"opened"`
		Tampered sdkAttempt `json:"tampered"`
	}
	if result("stale key", &stale) {
		if !stale.Before || stale.Stale.OK || stale.Stale.Code != "stale" || !stale.After {
			t.Errorf("stale key: wrote before %v, with GDK 1 once GDK 2 arrived %+v (want stale), after unlocking again %v", stale.Before, stale.Stale, stale.After)
		}
		if len(stale.Failed) != 1 || stale.Failed[0].Group != "tampered" || stale.Failed[0].Code != "binding" || strings.Join(stale.Opened, ",") != "shared" {
			t.Errorf("a group with an altered slot: failed %+v, opened %v; want tampered failed (binding) and shared open", stale.Failed, stale.Opened)
		}
		if stale.Tampered.OK || stale.Tampered.Code != "record" {
			t.Errorf("a record altered at the backend: %+v, want record", stale.Tampered)
		}
		if fmt.Sprint(stale.Versions) != "[1 2]" || stale.Old != "before the rotation" || stale.Written != 2 {
			t.Errorf("stale key: after unlocking again the keys hold %v, read %q, write under GDK %d", stale.Versions, stale.Old, stale.Written)
		}
	}

	var hostile struct {
		Limit   sdkAttempt `json:"limit"`
		LimitMS float64    `json:"limitMs"`
		Range   sdkAttempt `json:"range"`
		Size    sdkAttempt `json:"size"`
		Deep    sdkAttempt `json:"deep"`
	}
	if result("hostile", &hostile) {
		// "limit" is thrown before PBKDF2 runs; the time is reported, not judged.
		t.Logf("hostile: 9 000 000 iterations refused in %.1f ms", hostile.LimitMS)
		for name, w := range map[string]struct {
			got  sdkAttempt
			code string
		}{"9 000 000 iterations": {hostile.Limit, "limit"}, "10 000 001 iterations": {hostile.Range, "range"},
			"a 2 MiB bundle": {hostile.Size, "size"}, "nesting 5000 deep": {hostile.Deep, "syntax"}} {
			if w.got.OK || w.got.Code != w.code {
				t.Errorf("hostile: %s: %+v, want %s", name, w.got, w.code)
			}
		}
	}

	var lo struct {
		Databases []string `json:"databases"`
	}
	if result("logout", &lo) && len(lo.Databases) != 0 {
		t.Errorf("after logout the origin still has databases %v", lo.Databases)
	}

	// Nothing secret at rest, after any step.
	forbidden := map[string]string{"password": password, "new password": newPassword}
	for i, c := range b.codes {
		forbidden[fmt.Sprintf("code %d", i)] = c
		forbidden[fmt.Sprintf("code %d lower", i)] = strings.ToLower(c)
		forbidden[fmt.Sprintf("code %d bare", i)] = strings.ReplaceAll(c, "-", "")
	}
	for i, p := range b.plain {
		forbidden[fmt.Sprintf("plaintext %d", i)] = p
	}
	for k, v := range pageNotes {
		forbidden[k] = v
	}
	for _, g := range wantGroups {
		forbidden["offline note "+g] = "written offline in " + g
	}
	for g, vs := range b.gdks {
		for v, k := range vs {
			forbidden[fmt.Sprintf("GDK %s/%d hex", g, v)] = hex.EncodeToString(k)
			forbidden[fmt.Sprintf("GDK %s/%d b64", g, v)] = base64.StdEncoding.EncodeToString(k)
		}
	}
	for i, sec := range res.Secrets {
		forbidden[fmt.Sprintf("page secret %d", i)] = sec
	}
	if len(res.Secrets) < 8 {
		t.Errorf("the page reported %d keys and PRF outputs, want the user key, every GDK and the PRF outputs", len(res.Secrets))
	}
	for step, d := range res.Dumps {
		if step != "logout" && !strings.Contains(d.Text, "idb escrowd-test/records") {
			t.Errorf("dump after %s: no record store; the dump is not reading the device's database", step)
		}
		for what, v := range forbidden {
			if v != "" && strings.Contains(d.Text, v) {
				t.Errorf("after %s: browser storage holds the %s", step, what)
			}
		}
		for _, k := range d.CryptoKeys {
			if k.Type == "private" && k.Extractable {
				t.Errorf("after %s: an extractable private key is stored", step)
			}
		}
	}
	if len(res.Dumps) != 11 {
		t.Errorf("%d storage dumps, want one after each of 11 steps", len(res.Dumps))
	}

	var bench map[string]json.RawMessage
	if result("bench", &bench) {
		for k, v := range bench {
			t.Logf("bench %s: %s", k, v)
		}
	}
}

// sdkSession is the page's DeviceSession as the test page reports it.
type sdkSession struct {
	State   string `json:"state"`
	Failure string `json:"failure"`
	Step    string `json:"step"`
	Marker  string `json:"marker"`
}
