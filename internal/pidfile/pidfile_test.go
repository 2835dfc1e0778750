package pidfile

import (
	"bufio"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// holdEnv makes the test binary a child that holds the pid file it names
// until its standard input closes (or it is killed).
const holdEnv = "ESCROWD_PIDFILE_HOLD"

func TestMain(m *testing.M) {
	if path := os.Getenv(holdEnv); path != "" {
		p, err := Acquire(path)
		if err != nil {
			os.Stdout.WriteString("error " + err.Error() + "\n")
			os.Exit(1)
		}
		os.Stdout.WriteString("held\n")
		_, _ = bufio.NewReader(os.Stdin).ReadString('\n')
		p.Release()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func readPID(t *testing.T, path string) int {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatalf("pid file holds %q", b)
	}
	return pid
}

// TestAcquireRelease: the file holds this process's id while held, a
// second Acquire is refused naming it, Release removes the file, and the
// file can be acquired again.
func TestAcquireRelease(t *testing.T) {
	path := filepath.Join(t.TempDir(), "escrowd.pid")
	p, err := Acquire(path)
	if err != nil {
		t.Fatal(err)
	}
	if pid := readPID(t, path); pid != os.Getpid() {
		t.Fatalf("pid file holds %d, want %d", pid, os.Getpid())
	}
	_, err = Acquire(path)
	if !errors.Is(err, ErrHeld) || !strings.Contains(err.Error(), strconv.Itoa(os.Getpid())) {
		t.Fatalf("second Acquire: %v, want ErrHeld naming %d", err, os.Getpid())
	}
	if err := p.Release(); err != nil {
		t.Fatal(err)
	}
	if err := p.Release(); err != nil {
		t.Fatalf("second Release: %v", err)
	}
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("pid file after Release: %v, want it gone", err)
	}
	p, err = Acquire(path)
	if err != nil {
		t.Fatalf("Acquire after Release: %v", err)
	}
	p.Release()
}

// TestStale: a file another process left behind, holding no lock, is
// taken over and rewritten.
func TestStale(t *testing.T) {
	path := filepath.Join(t.TempDir(), "escrowd.pid")
	if err := os.WriteFile(path, []byte("999999999\nrest of a longer file\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	p, err := Acquire(path)
	if err != nil {
		t.Fatalf("Acquire over a stale file: %v", err)
	}
	defer p.Release()
	if b, _ := os.ReadFile(path); string(b) != strconv.Itoa(os.Getpid())+"\n" {
		t.Fatalf("pid file holds %q", b)
	}
}

// TestRefused: a symbolic link or a directory at the path is refused, and
// the link's target is left alone.
func TestRefused(t *testing.T) {
	dir := t.TempDir()
	target := filepath.Join(dir, "target")
	if err := os.WriteFile(target, []byte("keep\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "link.pid")
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
	if _, err := Acquire(link); err == nil || !strings.Contains(err.Error(), "symbolic link") {
		t.Fatalf("Acquire of a symbolic link: %v", err)
	}
	if b, _ := os.ReadFile(target); string(b) != "keep\n" {
		t.Fatalf("the link's target was written: %q", b)
	}
	if _, err := Acquire(dir); err == nil {
		t.Fatal("Acquire of a directory succeeded")
	}
}

// TestOtherProcess: a file held by another running process is refused
// with that process's id; once that process is killed (no clean-up, the
// file stays), the file is taken over.
func TestOtherProcess(t *testing.T) {
	path := filepath.Join(t.TempDir(), "escrowd.pid")
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), holdEnv+"="+path)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer stdin.Close()
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil || line != "held\n" {
		t.Fatalf("child: %q, %v", line, err)
	}
	child := cmd.Process.Pid
	if pid := readPID(t, path); pid != child {
		t.Fatalf("pid file holds %d, want the child's %d", pid, child)
	}
	_, err = Acquire(path)
	if !errors.Is(err, ErrHeld) || !strings.Contains(err.Error(), strconv.Itoa(child)) {
		t.Fatalf("Acquire while the child holds it: %v, want ErrHeld naming %d", err, child)
	}
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	cmd.Wait()
	if pid := readPID(t, path); pid != child {
		t.Fatalf("after the kill the file holds %d, want the dead child's %d (stale)", pid, child)
	}
	p, err := Acquire(path)
	if err != nil {
		t.Fatalf("Acquire of the dead child's file: %v", err)
	}
	defer p.Release()
	if pid := readPID(t, path); pid != os.Getpid() {
		t.Fatalf("pid file holds %d after the take-over, want %d", pid, os.Getpid())
	}
}
