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
	"strings"
	"testing"
	"time"

	escrowdv1 "github.com/escrowd/escrowd/api/escrowd/v1"
	"github.com/escrowd/escrowd/escrow/bundle"
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
	Notice     string   `json:"notice"`
	Creds      int      `json:"credentials"`
	GroupLine  string   `json:"groupLine"`
	Databases  []string `json:"databases"`
	Local      int      `json:"local"`
	Before     int      `json:"before"`
	After      int      `json:"after"`
	DumpBytes  int      `json:"dumpBytes"`
	FoundInDmp []string `json:"found"`
}

// TestPWA runs the demo PWA in Chromium against the reference sync backend
// and a real escrowd (SoftHSM, Vault, mutual TLS): sign-up, a group, a
// note, an offline reload read after a password unlock; then recovery with
// a code support reveals over gRPC, typed offline in lower case with
// dashes, a new password, the old one refused, the consumed report reaching
// escrowd once online (a new epoch), and the reveal's notice in the page.
func TestPWA(t *testing.T) {
	const group, user, ticket = "ann-keys", "ann", "SUP-77"
	var revealed *escrowdv1.RevealUnlockCodeResponse
	// The support technician's side, on its own listener: the page cannot reach it.
	h := newPWAHarness(t, func(h *pwaHarness) http.Handler {
		ctl := http.NewServeMux()
		ctl.HandleFunc("/reveal", func(w http.ResponseWriter, _ *http.Request) {
			rv, err := h.stack.support.RevealUnlockCode(h.ctx, &escrowdv1.RevealUnlockCodeRequest{GroupId: group, UserId: user, Ticket: ticket})
			if err != nil {
				http.Error(w, err.Error(), http.StatusBadGateway)
				return
			}
			revealed = rv
			w.Header().Set("Content-Type", "application/json")
			json.NewEncoder(w).Encode(map[string]any{"code": rv.GetCode(), "epoch": rv.GetEpoch(), "index": rv.GetIndex()})
		})
		return ctl
	})
	s, ctx, st, dbPath, origin, cs, shots, node, webDir := h.stack, h.ctx, h.store, h.dbPath, h.origin, h.control, h.shots, h.node, h.webDir
	nodeCtx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
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
	want := []string{"sign up", "create a group", "write a note", "bob signs up on his device", "ann adds bob as a surrogate", "bob reads ann's note",
		"bob writes in ann's group, ann reads it", "bob's device syncs in the background", "add a passkey", "offline reload and password unlock", "offline passkey unlock", "support reveals a code",
		"forgot password, offline", "the old password fails", "online: the report is sent", "support's notice", "storage holds no secret", "bob logs out"}
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
	if st := steps["bob's device syncs in the background"]; st.After != st.Before+1 {
		t.Errorf("bob's device held %d records of ann's group before the periodic sync, %d after; want one more", st.Before, st.After)
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
	if n := steps["support's notice"].Notice; !strings.Contains(n, ticket) || !strings.Contains(n, "Support revealed an unlock code") {
		t.Errorf("the notice: %q", n)
	}
	if st := steps["bob logs out"]; len(st.Databases) != 0 || st.Local != 0 {
		t.Errorf("after bob's logout his browser keeps databases %v and %d localStorage items", st.Databases, st.Local)
	}
	if st := steps["storage holds no secret"]; st.DumpBytes == 0 || len(st.FoundInDmp) != 0 {
		t.Errorf("browser storage (%d bytes) holds %d secrets of the run", st.DumpBytes, len(st.FoundInDmp))
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
	if ls.GetEpoch() != revealed.GetEpoch()+1 {
		t.Errorf("escrowd's epoch for %s/%s is %d after the report, want %d", group, user, ls.GetEpoch(), revealed.GetEpoch()+1)
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
	if kinds[bundle.KindPassword] != 1 || kinds[bundle.KindPasskeyPRF] != 1 || !epochs[revealed.GetEpoch()+1] || epochs[revealed.GetEpoch()] {
		t.Errorf("the key group's bundle at the backend: %v of %s's slots, unlock epochs %v", kinds, user, epochs)
	}
	// The backend's database holds none of the run's secrets.
	db, err := os.ReadFile(dbPath)
	if err != nil {
		t.Fatal(err)
	}
	for _, secret := range []string{"first password, soon forgotten", "the second password, after support", "buy milk, eggs", "boiler man", "spare key", "bob's own password", revealed.GetCode(), strings.ToLower(revealed.GetCode())} {
		if bytes.Contains(db, []byte(secret)) {
			t.Errorf("the sync backend's database holds %q", fmt.Sprintf("%.6s…", secret))
		}
	}
}
