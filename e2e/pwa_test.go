package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	escrowdv1 "github.com/escrowd/escrowd/api/escrowd/v1"
	"github.com/escrowd/escrowd/escrow/bundle"
	"github.com/escrowd/escrowd/examples/syncbackend/store"
)

// buildPWA builds the demo PWA (examples/pwa/build.sh) into a directory
// ready to serve, configured for the sync backend at backendURL.
func buildPWA(t *testing.T, backendURL string) string {
	t.Helper()
	if _, err := os.Stat("../clients/web/node_modules/.bin/esbuild"); err != nil {
		t.Fatalf("esbuild: %v (run `make deps`: npm ci --prefix clients/web)", err)
	}
	dist := t.TempDir()
	if out, err := exec.Command("../examples/pwa/build.sh", dist, backendURL).CombinedOutput(); err != nil {
		t.Fatalf("examples/pwa/build.sh: %v\n%s", err, out)
	}
	return dist
}

type pwaStep struct {
	Name string `json:"name"`
	OK   bool   `json:"ok"`
	// Error is a failed step's; a page's error text for "add a passkey".
	Error string `json:"error"`
	// Step results.
	Sync       string   `json:"sync"`
	Meta       string   `json:"meta"`
	Notes      []string `json:"notes"`
	Epoch      uint32   `json:"epoch"`
	Index      uint32   `json:"index"`
	Typed      string   `json:"typed"`
	OldPass    string   `json:"oldPassword"`
	OldCode    string   `json:"oldCode"`
	Notice     string   `json:"notice"`
	Creds      int      `json:"credentials"`
	GroupLine  string   `json:"groupLine"`
	Databases  []string `json:"databases"`
	Local      int      `json:"local"`
	Before     int      `json:"before"`
	After      int      `json:"after"`
	DumpBytes  int      `json:"dumpBytes"`
	FoundInDmp []string `json:"found"`
	// The second device and the background sync.
	Fingerprint string   `json:"fingerprint"`
	Request     string   `json:"request"`
	Approval    string   `json:"approval"`
	Records     int      `json:"records"`
	PhoneBefore int      `json:"phoneBefore"`
	PhoneAfter  int      `json:"phoneAfter"`
	OwnBefore   int      `json:"ownBefore"`
	OwnAfter    int      `json:"ownAfter"`
	PhoneNotes  []string `json:"phoneNotes"`
	// A surrogate leaves: the new note's GDK version, and what Bob's app
	// shows for its ciphertext.
	GDK      uint32 `json:"gdk"`
	Injected struct {
		Text  string `json:"text"`
		Error string `json:"error"`
	} `json:"injected"`
	Command string `json:"command"`
	// Scenario 3: one of Bob's groups locked while the other works on.
	GroupLock struct {
		RecordsBefore int      `json:"recordsBefore"`
		RecordsAfter  int      `json:"recordsAfter"`
		ShownRecords  int      `json:"shownRecords"`
		NotesShown    int      `json:"notesShown"`
		FormHidden    bool     `json:"formHidden"`
		Plaintext     []string `json:"plaintext"`
		GroupLine     string   `json:"groupLine"`
		LockedText    string   `json:"lockedText"`
	} `json:"groupLock"`
	// Scan is the search for the run's secrets after the step: every
	// profile's storage and the backend's database.
	Scan *struct {
		BrowserBytes int      `json:"browserBytes"`
		DBBytes      int      `json:"dbBytes"`
		Found        []string `json:"found"`
	} `json:"scan"`
}

// TestPWA runs the demo PWA in Chromium against the reference sync backend
// and a real escrowd (SoftHSM, Vault, mutual TLS): sign-up, a group, a
// note; a second device of the account (Ann's phone) approved from the
// first; Bob and Ann surrogates of each other's groups; the phone's and
// Bob's service workers syncing in the background with the device key;
// Ann removing Bob (the GDK rotates: Bob cannot open a note written after,
// Ann's devices read the older ones through the chain); an offline reload
// read after a password unlock; then recovery with a code support reveals
// with escrowctl, typed offline in lower case with dashes, a new password,
// the old one refused, the consumed report reaching escrowd once online (a
// new epoch), and the reveal's notice in the page. After every step no
// secret of the run is in any profile's storage or the backend's database.
func TestPWA(t *testing.T) {
	const group, user, ticket = "ann-keys", "ann", "SUP-77"
	const afterNote = "ann, after bob left: the new alarm code is with mum"
	var revealed *revealOutput
	escrowctl := buildEscrowctl(t)
	h := newPWAHarness(t, func(h *pwaHarness) http.Handler {
		// The support technician's side, on its own listener: the page cannot
		// reach it. /reveal runs escrowctl as the technician alice, with her
		// certificate, as a technician on the phone with Ann would.
		ctl := http.NewServeMux()
		ctl.HandleFunc("/reveal", func(w http.ResponseWriter, _ *http.Request) {
			rv, err := revealWithEscrowctl(h.ctx, escrowctl, h.stack.addr, "alice", group, user, ticket)
			if err != nil {
				http.Error(w, err.Error(), http.StatusBadGateway)
				return
			}
			revealed = rv
			w.Header().Set("Content-Type", "application/json")
			json.NewEncoder(w).Encode(rv)
		})
		// /scan searches the sync backend's database file for the run's
		// secrets, so the page's script checks it after every step as it
		// checks the browsers' storage. It answers which secrets (by position
		// in the list) were found, never the file.
		ctl.HandleFunc("/scan", func(w http.ResponseWriter, r *http.Request) {
			var secrets []string
			if err := json.NewDecoder(r.Body).Decode(&secrets); err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			db, err := os.ReadFile(h.dbPath)
			if err != nil {
				http.Error(w, err.Error(), http.StatusInternalServerError)
				return
			}
			found := []int{}
			low := bytes.ToLower(db)
			for i, sec := range secrets {
				if sec != "" && (bytes.Contains(db, []byte(sec)) || bytes.Contains(low, bytes.ToLower([]byte(sec)))) {
					found = append(found, i)
				}
			}
			w.Header().Set("Content-Type", "application/json")
			json.NewEncoder(w).Encode(map[string]any{"bytes": len(db), "found": found})
		})
		return ctl
	})
	s, ctx, st, dbPath, origin, cs, shots, node, webDir := h.stack, h.ctx, h.store, h.dbPath, h.origin, h.control, h.shots, h.node, h.webDir
	// Three browser profiles: the run takes about a minute on a quiet
	// machine, and several on a loaded one.
	nodeCtx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(nodeCtx, node, "../examples/pwa/test/e2e.mjs", origin+"/", cs.URL, shots)
	cmd.Env = append(os.Environ(), "PLAYWRIGHT_DIR="+filepath.Join(webDir, "node_modules"), "PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	start := time.Now()
	out, runErr := cmd.Output()
	t.Logf("Chromium run took %v; screenshots in %s", time.Since(start).Round(time.Millisecond), shots)
	var res struct {
		Steps   []pwaStep      `json:"steps"`
		Console []string       `json:"console"`
		Timings map[string]int `json:"timings"`
	}
	if err := json.Unmarshal(out, &res); err != nil {
		t.Fatalf("node e2e.mjs: %v; output: %v\n%.4000s\n%s", runErr, err, out, stderr.String())
	}
	t.Logf("timings (ms): %v", res.Timings)
	for _, c := range res.Console {
		if strings.HasPrefix(c, "pageerror") {
			t.Errorf("page: %s", c)
		}
	}
	steps := map[string]pwaStep{}
	for _, st := range res.Steps {
		if !st.OK {
			t.Fatalf("step %q: %s\nconsole:\n%s", st.Name, st.Error, strings.Join(res.Console, "\n"))
		}
		steps[st.Name] = st
	}
	want := []string{"sign up", "create a group", "write a note", "ann's phone asks to join", "ann approves her phone on her laptop", "ann's phone joins and reads her note",
		"bob signs up on his device", "bob's own group, ann its surrogate", "ann adds bob as a surrogate", "bob reads ann's note",
		"bob writes in ann's group, ann reads it", "bob locks ann's group, his own works on", "bob opens ann's group again", "ann's phone and bob's device sync in the background", "ann removes bob", "bob no longer reads new notes",
		"ann's devices read old notes through the chain", "add a passkey", "offline reload and password unlock", "offline passkey unlock", "support reveals a code",
		"forgot password, offline", "the old password fails", "online: the report is sent", "support's notice", "the old code opens nothing", "storage holds no secret", "bob logs out"}
	for _, name := range want {
		if _, ok := steps[name]; !ok {
			t.Fatalf("step %q did not run (node: %v)\n%s", name, runErr, stderr.String())
		}
	}
	if m := steps["create a group"].Meta; m != "your group" {
		t.Errorf("the group's line: %q", m)
	}
	if st := steps["ann adds bob as a surrogate"]; st.Error != "" {
		t.Errorf("adding bob: %s", st.Error)
	}
	if st := steps["bob reads ann's note"]; st.Meta != "you are a surrogate for ann" || !strings.Contains(st.GroupLine, "surrogate for ann") {
		t.Errorf("bob's view of ann's group: %q, %q", st.Meta, st.GroupLine)
	}
	// After every step: no secret of the run in any profile's storage or
	// in the backend's database.
	for _, st := range res.Steps {
		if st.Scan == nil || st.Scan.DBBytes == 0 || st.Scan.BrowserBytes == 0 {
			t.Errorf("step %q: no storage was searched for secrets", st.Name)
		} else if len(st.Scan.Found) != 0 {
			t.Errorf("after step %q the run's secrets are in %v (profile or backend : index in the secrets list)", st.Name, st.Scan.Found)
		}
	}
	// The phone: the same fingerprint on both devices, an approval, its
	// own keys at the backend, and Ann's note read after a password unlock.
	ask, approve, joined := steps["ann's phone asks to join"], steps["ann approves her phone on her laptop"], steps["ann's phone joins and reads her note"]
	if ask.Fingerprint == "" || ask.Fingerprint != approve.Fingerprint {
		t.Errorf("the phone shows fingerprint %q, the laptop %q", ask.Fingerprint, approve.Fingerprint)
	}
	if joined.Meta != "your group" || !slices.Contains(joined.Notes, "buy milk, eggs and the 7:40 train tickets") || joined.Records != 1 {
		t.Errorf("the phone after joining: %q, notes %q, %d records synced before the unlock", joined.Meta, joined.Notes, joined.Records)
	}
	var req struct {
		Device string `json:"device"`
	}
	if err := json.Unmarshal([]byte(ask.Request), &req); err != nil {
		t.Fatalf("the phone's request %q: %v", ask.Request, err)
	}
	devs, err := st.Devices(ctx, user)
	if err != nil {
		t.Fatal(err)
	}
	if len(devs) != 2 || !slices.ContainsFunc(devs, func(d store.Device) bool { return d.ID == req.Device }) {
		t.Errorf("ann's devices at the backend: %v, want two, the phone %s among them", devs, req.Device)
	}
	if m := steps["bob's own group, ann its surrogate"]; m.Meta != "you are a surrogate for bob" || !strings.Contains(m.GroupLine, "surrogate for bob") {
		t.Errorf("ann's view of bob's group: %q, %q", m.Meta, m.GroupLine)
	}
	// Scenario 3: Bob locked Ann's group on his device: no note of it in
	// the page, no way to write, its records still arrive by sync; his own
	// group was read, written and synced meanwhile (Ann read the note), and
	// Ann's group opened again alone with every note.
	if gl := steps["bob locks ann's group, his own works on"].GroupLock; gl.RecordsAfter != gl.RecordsBefore+1 || gl.ShownRecords != gl.RecordsAfter ||
		gl.NotesShown != 0 || !gl.FormHidden || len(gl.Plaintext) != 0 || !strings.Contains(gl.GroupLine, "locked") || !strings.Contains(gl.LockedText, "is locked") {
		t.Errorf("ann's group locked on bob's device: %+v; want one more record by sync, no note shown, no form, no plaintext in the page", gl)
	}
	if st := steps["bob opens ann's group again"]; st.Error != "" || st.Meta != "you are a surrogate for ann" || strings.Contains(st.GroupLine, "locked") ||
		!slices.Contains(st.Notes, "buy milk, eggs and the 7:40 train tickets") || !slices.Contains(st.Notes, "ann, while bob's copy was locked: the gate code is 4711") {
		t.Errorf("ann's group opened again on bob's device: error %q, meta %q, line %q, notes %q", st.Error, st.Meta, st.GroupLine, st.Notes)
	}
	// Scenario 5: the periodic sync of each worker brought the new notes,
	// both of Bob's groups alike, before anyone unlocked.
	if st := steps["ann's phone and bob's device sync in the background"]; st.After != st.Before+1 || st.OwnAfter != st.OwnBefore+1 || st.PhoneAfter != st.PhoneBefore+1 {
		t.Errorf("records before and after the periodic sync: ann's group on bob's device %d → %d, bob's own group %d → %d, ann's group on her phone %d → %d; want one more each",
			st.Before, st.After, st.OwnBefore, st.OwnAfter, st.PhoneBefore, st.PhoneAfter)
	}
	// Scenario 4: Bob was removed and the GDK rotated.
	if st := steps["ann removes bob"]; st.Error != "" {
		t.Errorf("removing bob: %s", st.Error)
	}
	gone := steps["bob no longer reads new notes"]
	if gone.GDK != 2 || !strings.Contains(gone.Meta, "ann removed you") || !strings.Contains(gone.GroupLine, "removed") {
		t.Errorf("bob's view after his removal: GDK %d of the new note, %q, %q", gone.GDK, gone.Meta, gone.GroupLine)
	}
	if slices.Contains(gone.Notes, afterNote) || !slices.Contains(gone.Notes, "buy milk, eggs and the 7:40 train tickets") || gone.Records != 4 {
		t.Errorf("bob's device after his removal holds %d records of ann's group, notes %q: want the four old ones, not the new", gone.Records, gone.Notes)
	}
	if gone.Injected.Error == "" || !strings.HasPrefix(gone.Injected.Text, "(this note does not open") || strings.Contains(gone.Injected.Text, "alarm") {
		t.Errorf("bob's app opened the new note's ciphertext, or said so wrongly: %q (error %q)", gone.Injected.Text, gone.Injected.Error)
	}
	chain := steps["ann's devices read old notes through the chain"]
	for _, notes := range [][]string{chain.Notes, chain.PhoneNotes} {
		for _, n := range []string{"buy milk, eggs and the 7:40 train tickets", "bob: the boiler man comes on Thursday", afterNote} {
			if !slices.Contains(notes, n) {
				t.Errorf("after the rotation ann's device reads %q, not %q", notes, n)
			}
		}
	}
	if chain.PhoneAfter != chain.PhoneBefore+1 {
		t.Errorf("the phone's periodic sync after the rotation: %d → %d records, want one more", chain.PhoneBefore, chain.PhoneAfter)
	}
	ng, err := st.Group(ctx, "ann-notes")
	if err != nil {
		t.Fatal(err)
	}
	nb, err := bundle.Parse(ng.Bundle)
	if err != nil {
		t.Fatal(err)
	}
	if ng.GDKVersion != 2 || len(ng.Surrogates) != 0 {
		t.Errorf("ann-notes at the backend: GDK %d, surrogates %v; want GDK 2, none", ng.GDKVersion, ng.Surrogates)
	}
	deviceSlots := map[string]bool{}
	for _, sl := range nb.Slots {
		if strings.HasPrefix(sl.ID, "bob") || (sl.Kind != bundle.KindChain && sl.GDKVersion != 2) {
			t.Errorf("ann-notes' bundle after the rotation holds a %s slot of GDK %d for %q", sl.Kind, sl.GDKVersion, sl.ID)
		}
		if sl.Kind == bundle.KindDevice {
			deviceSlots[sl.ID] = true
		}
	}
	if !deviceSlots[req.Device] || len(deviceSlots) != 2 {
		t.Errorf("ann-notes' device slots after the rotation: %v, want ann's two devices", deviceSlots)
	}
	if st := steps["add a passkey"]; st.Creds != 1 || st.Error != "" {
		t.Errorf("adding a passkey: %d credentials, error %q", st.Creds, st.Error)
	}
	if st := steps["offline passkey unlock"]; st.Sync != "offline" {
		t.Errorf("the passkey unlock's status is %q, want offline", st.Sync)
	}
	if st := steps["offline reload and password unlock"]; st.Sync != "offline" {
		t.Errorf("after the offline reload the status is %q, want offline", st.Sync)
	}
	if st := steps["forgot password, offline"]; st.Typed != "lower case with dashes" || !strings.Contains(st.Sync, "1 report waiting") {
		t.Errorf("recovery: typed %q, status %q", st.Typed, st.Sync)
	}
	if c := steps["the old password fails"].OldPass; c != "wrong-secret" {
		t.Errorf("the old password after recovery: %q, want wrong-secret", c)
	}
	if c := steps["the old code opens nothing"].OldCode; c != "wrong-code" {
		t.Errorf("the revealed code typed again after the new epoch: %q, want wrong-code", c)
	}
	if n := steps["support's notice"].Notice; !strings.Contains(n, ticket) || !strings.Contains(n, "Support revealed an unlock code") {
		t.Errorf("the notice: %q", n)
	}
	if st := steps["bob logs out"]; len(st.Databases) != 0 || st.Local != 0 {
		t.Errorf("after bob's logout his browser keeps databases %v and %d localStorage items", st.Databases, st.Local)
	}
	if st := steps["storage holds no secret"]; st.DumpBytes == 0 || len(st.FoundInDmp) != 0 {
		t.Errorf("browser storage (%d bytes) holds secrets of the run: %v", st.DumpBytes, st.FoundInDmp)
	}
	if c := steps["support reveals a code"].Command; !strings.HasPrefix(c, "escrowctl codes reveal -as alice ") || !strings.Contains(c, "-ticket "+ticket) {
		t.Errorf("the reveal's command: %q", c)
	}

	// The consumed report reached escrowd: the revealed code's epoch is
	// over and the user has a new one.
	if revealed == nil {
		t.Fatal("no code was revealed")
	}
	ls, err := s.support.ListUnlockCodes(ctx, &escrowdv1.ListUnlockCodesRequest{GroupId: group, UserId: user})
	if err != nil {
		t.Fatal(err)
	}
	if ls.GetEpoch() != revealed.Epoch+1 {
		t.Errorf("escrowd's epoch for %s/%s is %d after the report, want %d", group, user, ls.GetEpoch(), revealed.Epoch+1)
	}
	// The slots the device made reached the backend: the new password's
	// (the old one's gone) and the passkey's, beside a new epoch's unlock slots.
	g, err := st.Group(ctx, group)
	if err != nil {
		t.Fatal(err)
	}
	b, err := bundle.Parse(g.Bundle)
	if err != nil {
		t.Fatal(err)
	}
	kinds := map[bundle.Kind]int{}
	epochs := map[uint32]bool{}
	for _, sl := range b.Slots {
		if sl.ID == user {
			kinds[sl.Kind]++
		}
		if sl.Kind == bundle.KindUnlock {
			epochs[sl.Unlock.Epoch] = true
		}
	}
	if kinds[bundle.KindPassword] != 1 || kinds[bundle.KindPasskeyPRF] != 1 || !epochs[revealed.Epoch+1] || epochs[revealed.Epoch] {
		t.Errorf("the key group's bundle at the backend: %v of %s's slots, unlock epochs %v", kinds, user, epochs)
	}
	// The backend's database holds none of the run's secrets.
	db, err := os.ReadFile(dbPath)
	if err != nil {
		t.Fatal(err)
	}
	for _, secret := range []string{"first password, soon forgotten", "the second password, after support", "buy milk, eggs", "boiler man", "spare key", "dentist", "plumber", "alarm code", "bob's own password",
		revealed.Code, strings.ToLower(revealed.Code), strings.ReplaceAll(revealed.Code, "-", "")} {
		if bytes.Contains(db, []byte(secret)) {
			t.Errorf("the sync backend's database holds %q", fmt.Sprintf("%.6s…", secret))
		}
	}
}

// buildEscrowctl compiles escrowctl, the support technician's tool.
func buildEscrowctl(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "escrowctl")
	if out, err := exec.Command("go", "build", "-o", bin, "../cmd/escrowctl").CombinedOutput(); err != nil {
		t.Fatalf("go build escrowctl: %v\n%s", err, out)
	}
	return bin
}

// revealOutput is what a technician reads off escrowctl's screen.
type revealOutput struct {
	Code    string `json:"code"`
	Epoch   uint32 `json:"epoch"`
	Index   uint32 `json:"index"`
	Command string `json:"command"`
	Output  string `json:"output"`
}

var revealLine = regexp.MustCompile(`(?m)^unlock code (\d+) of epoch (\d+) for (\S+): ([0-9A-Z]{4}(?:-[0-9A-Z]{4})+)$`)

// revealWithEscrowctl runs `escrowctl codes reveal` as the technician as,
// with that technician's certificate from the e2e PKI, and reads the code
// from its human-readable output.
func revealWithEscrowctl(ctx context.Context, escrowctl, addr, as, group, user, ticket string) (*revealOutput, error) {
	args := []string{"codes", "reveal", "-as", as, "-group", group, "-user", user, "-ticket", ticket}
	cmd := exec.CommandContext(ctx, escrowctl, args...)
	cmd.Env = append(os.Environ(), "ESCROWD_ADDR="+addr, "ESCROWCTL_PKI="+pki.dir)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("escrowctl %s: %w: %s", strings.Join(args, " "), err, stderr.String())
	}
	m := revealLine.FindSubmatch(out)
	if m == nil || string(m[3]) != user {
		return nil, fmt.Errorf("escrowctl printed no code for %s: %q", user, out)
	}
	index, err := strconv.ParseUint(string(m[1]), 10, 32)
	if err != nil {
		return nil, err
	}
	epoch, err := strconv.ParseUint(string(m[2]), 10, 32)
	if err != nil {
		return nil, err
	}
	return &revealOutput{Code: string(m[4]), Epoch: uint32(epoch), Index: uint32(index),
		Command: "escrowctl " + strings.Join(args, " "), Output: string(out)}, nil
}
