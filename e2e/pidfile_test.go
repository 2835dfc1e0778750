package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestPIDFile: escrowd -pid-file writes its process id to the file; a
// second escrowd on the same file refuses to start, naming the first; the
// SIGHUP that scripts/run-dev.sh tells people to send through the file
// reloads the policy of that escrowd only; SIGTERM removes the file; a
// file left by a killed escrowd is taken over by the next.
func TestPIDFile(t *testing.T) {
	escrowd, _ := buildBinaries(t)
	dir := t.TempDir()
	pidPath := filepath.Join(dir, "escrowd.pid")
	readPID := func() int {
		t.Helper()
		b, err := os.ReadFile(pidPath)
		if err != nil {
			t.Fatal(err)
		}
		pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
		if err != nil {
			t.Fatalf("pid file holds %q", b)
		}
		return pid
	}
	start := func(name string) *replica {
		return startReplica(t, escrowd, token, filepath.Join(dir, name+".db"), "-pid-file", pidPath, "-log-level", "info")
	}

	first := start("first")
	if pid := readPID(); pid != first.pid() {
		t.Fatalf("pid file holds %d, want %d", pid, first.pid())
	}

	// A second escrowd on the same pid file stops before it opens anything.
	second := exec.Command(escrowd, append(append([]string{}, first.args...), "-listen", freeAddr(t), "-store", filepath.Join(dir, "second.db"))...)
	out, err := second.CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 ||
		!strings.Contains(string(out), "held by a running process") || !strings.Contains(string(out), strconv.Itoa(first.pid())) {
		t.Fatalf("second escrowd on the pid file: %v\n%s", err, out)
	}
	if pid := readPID(); pid != first.pid() {
		t.Fatalf("after the refused start the pid file holds %d, want %d", pid, first.pid())
	}

	// kill -HUP $(cat pid-file) reloads that escrowd's policy.
	if err := syscall.Kill(readPID(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitLog(t, first, "policy reloaded")

	// SIGTERM: a clean exit removes the file.
	if err := first.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-first.exited:
		if err != nil {
			t.Fatalf("escrowd after SIGTERM: %v\n%s", err, first.logs())
		}
	case <-time.After(30 * time.Second):
		t.Fatal("escrowd did not exit on SIGTERM")
	}
	if _, err := os.Stat(pidPath); !os.IsNotExist(err) {
		t.Fatalf("pid file after a clean exit: %v, want it removed", err)
	}

	// A killed escrowd leaves its file behind; the next one takes it over.
	third := start("third")
	third.kill()
	if pid := readPID(); pid != third.pid() {
		t.Fatalf("after the kill the pid file holds %d, want the dead %d", pid, third.pid())
	}
	fourth := start("fourth")
	if pid := readPID(); pid != fourth.pid() {
		t.Fatalf("pid file holds %d, want %d: the stale file was not taken over", pid, fourth.pid())
	}
}

// waitLog waits up to 10 s for text in r's log.
func waitLog(t *testing.T, r *replica, text string) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if strings.Contains(r.logs(), text) {
			return
		}
	}
	t.Fatalf("escrowd did not log %q:\n%s", text, r.logs())
}
