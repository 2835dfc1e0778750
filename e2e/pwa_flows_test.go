package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

type pwaFlowStep struct {
	Name  string `json:"name"`
	OK    bool   `json:"ok"`
	Error string `json:"error"`
	// reload during unlock
	Attempts    int     `json:"attempts"`
	Interrupted bool    `json:"interrupted"`
	Login       bool    `json:"login"`
	Message     string  `json:"message"`
	Unchanged   bool    `json:"unchanged"`
	Marker      *string `json:"marker"`
	// decryption failure
	Code      string `json:"code"`
	NoteError string `json:"noteError"`
	// storage
	DumpBytes int      `json:"dumpBytes"`
	Found     []string `json:"found"`
	// logout in both tabs
	Notice     string   `json:"notice"`
	Databases  []string `json:"databases"`
	Local      []string `json:"local"`
	MainHidden bool     `json:"mainHidden"`
}

// TestPWAFlows runs the demo PWA's flows around keys at rest in Chromium
// against the real stack (escrowd with SoftHSM and Vault, the sync backend
// over mutual TLS): a reload in the middle of a password unlock leaves the
// app locked with nothing written, and it unlocks; a note altered in
// IndexedDB does not decrypt and the app offers "retry or log out": Retry
// fetches it again, Log out (in one of two tabs) logs out both tabs and
// leaves no database or localStorage entry. Browser storage holds no
// password or note text.
func TestPWAFlows(t *testing.T) {
	h := newPWAHarness(t, nil)
	nodeCtx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cmd := exec.CommandContext(nodeCtx, h.node, "../examples/pwa/test/flows.mjs", h.origin+"/", h.shots)
	cmd.Env = append(os.Environ(), "PLAYWRIGHT_DIR="+filepath.Join(h.webDir, "node_modules"), "PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	start := time.Now()
	out, runErr := cmd.Output()
	t.Logf("Chromium run took %v; screenshots in %s", time.Since(start).Round(time.Millisecond), h.shots)
	var res struct {
		Steps   []pwaFlowStep  `json:"steps"`
		Console []string       `json:"console"`
		Timings map[string]int `json:"timings"`
	}
	if err := json.Unmarshal(out, &res); err != nil {
		t.Fatalf("node flows.mjs: %v; output: %v\n%.4000s\n%s", runErr, err, out, stderr.String())
	}
	t.Logf("timings (ms): %v", res.Timings)
	for _, c := range res.Console {
		if strings.HasPrefix(c, "pageerror") {
			t.Errorf("page: %s", c)
		}
	}
	steps := map[string]pwaFlowStep{}
	for _, st := range res.Steps {
		if !st.OK {
			t.Fatalf("step %q: %s\nconsole:\n%s", st.Name, st.Error, strings.Join(res.Console, "\n"))
		}
		steps[st.Name] = st
	}
	for _, name := range []string{"sign up and write a note", "reload during unlock", "decryption failure: retry", "storage holds no secret", "two tabs", "decryption failure: log out, in both tabs"} {
		if _, ok := steps[name]; !ok {
			t.Fatalf("step %q did not run (node: %v)\n%s", name, runErr, stderr.String())
		}
	}

	st := steps["reload during unlock"]
	t.Logf("reload during unlock: %d attempt(s) to land the reload in the middle", st.Attempts)
	if !st.Interrupted || !st.Login || !strings.Contains(st.Message, "interrupted") {
		t.Errorf("after a reload in the middle of the unlock: interrupted %v, unlock screen %v, message %q", st.Interrupted, st.Login, st.Message)
	}
	if !st.Unchanged {
		t.Error("the interrupted unlock changed IndexedDB")
	}
	if st.Marker != nil {
		t.Errorf("the unlock marker is still in sessionStorage after the page read it: %q", *st.Marker)
	}

	st = steps["decryption failure: retry"]
	if st.Code != "record" || st.NoteError != "record" || !strings.Contains(st.Message, "could not be decrypted") || !strings.Contains(st.Message, "Retry") || !strings.Contains(st.Message, "Log out") {
		t.Errorf("the failure shown: code %q, the note's %q, message %q", st.Code, st.NoteError, st.Message)
	}

	if st := steps["storage holds no secret"]; st.DumpBytes == 0 || len(st.Found) != 0 {
		t.Errorf("browser storage (%d bytes) holds %d secrets of the run", st.DumpBytes, len(st.Found))
	}

	st = steps["decryption failure: log out, in both tabs"]
	if !strings.Contains(st.Notice, "logged out in another tab") || !st.MainHidden {
		t.Errorf("the second tab after the logout: notice %q, notes hidden %v", st.Notice, st.MainHidden)
	}
	if len(st.Databases) != 0 || len(st.Local) != 0 {
		t.Errorf("after the logout the second tab sees databases %v and localStorage entries %v", st.Databases, st.Local)
	}
	if st.DumpBytes == 0 || len(st.Found) != 0 {
		t.Errorf("after the logout browser storage (%d bytes: the app shell's cache) holds %d secrets of the run", st.DumpBytes, len(st.Found))
	}

	// The sync backend's database holds neither the password nor the note.
	db, err := os.ReadFile(h.dbPath)
	if err != nil {
		t.Fatal(err)
	}
	for _, secret := range []string{"ann's password for the flows", "pick up the parcel"} {
		if bytes.Contains(db, []byte(secret)) {
			t.Errorf("the sync backend's database holds %q", secret[:6]+"…")
		}
	}
}
