// Package vaulttest runs a real Vault server (tools/vaultdev: Vault 1.13.0
// compiled as a library) for tests.
//
// Each Server is one vaultdev process listening on 127.0.0.1 with a random
// port, with KV v2 at secret/, transit at transit/, a file audit device
// writing JSON lines to AuditLog, and storage under Dir so that Restart
// brings the same Vault back on the same address with the same data and
// root token.
//
// Tests that need their own Vault (in particular those that Stop or Restart
// it) call StartT. A package whose tests can share one Vault starts it once
// in TestMain:
//
//	var vault *vaulttest.Server
//
//	func TestMain(m *testing.M) { os.Exit(vaulttest.RunMain(m, &vault)) }
//
// These are real-Vault tests: a missing vaultdev binary fails them (build it
// with `make vaultdev`); they are never skipped.
package vaulttest

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/vault/api"
)

const (
	// EnvBinary overrides the path of the vaultdev binary.
	EnvBinary = "ESCROWD_VAULTDEV"

	mainModule   = "github.com/escrowd/escrowd"
	startTimeout = 30 * time.Second
	stopTimeout  = 5 * time.Second
)

// Binary returns the path of the vaultdev binary: $ESCROWD_VAULTDEV if set,
// else <repo root>/.cache/bin/vaultdev, where the repo root is the nearest
// directory at or above the working directory whose go.mod declares module
// github.com/escrowd/escrowd.
func Binary() (string, error) {
	if p := os.Getenv(EnvBinary); p != "" {
		if _, err := os.Stat(p); err != nil {
			return "", fmt.Errorf("vaulttest: %s=%s: %w", EnvBinary, p, err)
		}
		return p, nil
	}
	root, err := repoRoot()
	if err != nil {
		return "", err
	}
	p := filepath.Join(root, ".cache", "bin", "vaultdev")
	if _, err := os.Stat(p); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return "", fmt.Errorf("vaulttest: no vaultdev binary at %s: run `make vaultdev` in %s (or set %s)", p, root, EnvBinary)
		}
		return "", fmt.Errorf("vaulttest: %w", err)
	}
	return p, nil
}

func repoRoot() (string, error) {
	wd, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("vaulttest: %w", err)
	}
	for dir := wd; ; {
		if b, err := os.ReadFile(filepath.Join(dir, "go.mod")); err == nil && modulePath(b) == mainModule {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("vaulttest: no go.mod for module %s at or above %s (set %s to the vaultdev binary)", mainModule, wd, EnvBinary)
		}
		dir = parent
	}
}

func modulePath(gomod []byte) string {
	for _, line := range strings.Split(string(gomod), "\n") {
		f := strings.Fields(line)
		if len(f) >= 2 && f[0] == "module" {
			return strings.Trim(f[1], `"`)
		}
	}
	return ""
}

// Server is a running (or stopped) vaultdev process. Its methods are safe for
// concurrent use; Addr, Token, AuditLog and Dir do not change over its life,
// Restart included.
type Server struct {
	Addr     string // http://127.0.0.1:PORT
	Token    string // root token
	AuditLog string // file audit device's log (JSON lines)
	Dir      string // holds storage, address/token files, audit and process logs

	bin string

	mu   sync.Mutex
	proc *process // nil when stopped
}

type process struct {
	cmd   *exec.Cmd
	stdin io.Closer // closing it makes vaultdev shut down (-exit-on-stdin-eof)
	done  chan struct{}
	err   error // cmd.Wait's result, valid after done is closed
}

func (s *Server) addrFile() string  { return filepath.Join(s.Dir, "addr") }
func (s *Server) tokenFile() string { return filepath.Join(s.Dir, "token") }
func (s *Server) dataDir() string   { return filepath.Join(s.Dir, "data") }

// LogFile is vaultdev's stderr (appended to across restarts).
func (s *Server) LogFile() string { return filepath.Join(s.Dir, "vaultdev.log") }

// Start starts vaultdev with its files under dir (created if needed) and
// waits (up to 30 s) until it is ready: unsealed, KV v2 writable, audit
// device enabled.
func Start(dir string) (*Server, error) {
	bin, err := Binary()
	if err != nil {
		return nil, err
	}
	dir, err = filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("vaulttest: %w", err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("vaulttest: %w", err)
	}
	s := &Server{Dir: dir, AuditLog: filepath.Join(dir, "audit.log"), bin: bin}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.startLocked("127.0.0.1:0"); err != nil {
		return nil, err
	}
	return s, nil
}

// StartT starts a Server in a fresh t.TempDir, stops it when the test ends,
// and fails the test (never skips it) if Vault cannot be started.
func StartT(tb testing.TB) *Server {
	tb.Helper()
	s, err := Start(tb.TempDir())
	if err != nil {
		tb.Fatalf("%v", err)
	}
	tb.Cleanup(func() {
		if err := s.Stop(); err != nil {
			tb.Errorf("vaulttest: stopping Vault: %v", err)
		}
	})
	return s
}

// RunMain is for a package's TestMain: it starts one Server for the whole
// package in a temporary directory, stores it in *srv, runs the tests, then
// stops the server and removes the directory. It returns the exit code for
// os.Exit; if Vault cannot be started it prints why and returns 1 without
// running any test.
func RunMain(m *testing.M, srv **Server) int {
	dir, err := os.MkdirTemp("", "vaulttest-")
	if err != nil {
		fmt.Fprintf(os.Stderr, "vaulttest: %v\n", err)
		return 1
	}
	defer os.RemoveAll(dir)
	s, err := Start(dir)
	if err != nil {
		fmt.Fprintf(os.Stderr, "%v\n", err)
		return 1
	}
	*srv = s
	code := m.Run()
	if err := s.Stop(); err != nil {
		fmt.Fprintf(os.Stderr, "vaulttest: stopping Vault: %v\n", err)
		if code == 0 {
			code = 1
		}
	}
	return code
}

func (s *Server) startLocked(listen string) error {
	if s.proc != nil {
		return errors.New("vaulttest: Vault is already running")
	}
	// vaultdev removes a stale address file itself, but do it here too so
	// that we cannot mistake the previous run's file for readiness.
	if err := os.Remove(s.addrFile()); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("vaulttest: %w", err)
	}
	logf, err := os.OpenFile(s.LogFile(), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("vaulttest: %w", err)
	}
	defer logf.Close() // the child has its own copy
	logStart, _ := logf.Seek(0, io.SeekEnd)

	cmd := exec.Command(s.bin,
		"-listen", listen,
		"-addr-file", s.addrFile(),
		"-token-file", s.tokenFile(),
		"-audit-file", s.AuditLog,
		"-data", s.dataDir(),
		"-exit-on-stdin-eof",
	)
	cmd.Dir = s.Dir
	cmd.Stdout = logf
	cmd.Stderr = logf
	// If this test process dies without calling Stop, the pipe's write end
	// closes and vaultdev exits instead of lingering.
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return fmt.Errorf("vaulttest: %w", err)
	}
	if err := cmd.Start(); err != nil {
		stdin.Close()
		return fmt.Errorf("vaulttest: starting %s: %w", s.bin, err)
	}
	p := &process{cmd: cmd, stdin: stdin, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()

	fail := func(format string, args ...any) error {
		msg := fmt.Sprintf(format, args...)
		stopProcess(p)
		return fmt.Errorf("vaulttest: %s; vaultdev stderr (%s):\n%s", msg, s.LogFile(), s.logTail(logStart))
	}
	deadline := time.NewTimer(startTimeout)
	defer deadline.Stop()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		if b, err := os.ReadFile(s.addrFile()); err == nil && len(b) > 0 {
			addr := strings.TrimSpace(string(b))
			tok, err := os.ReadFile(s.tokenFile())
			if err != nil {
				return fail("reading token file: %v", err)
			}
			token := strings.TrimSpace(string(tok))
			if s.Addr != "" && (addr != s.Addr || token != s.Token) {
				return fail("restarted Vault came back as %s (want %s) or with another root token", addr, s.Addr)
			}
			s.Addr, s.Token = addr, token
			s.proc = p
			return nil
		}
		select {
		case <-p.done:
			return fail("vaultdev exited before it was ready (%v)", p.err)
		case <-deadline.C:
			return fail("vaultdev not ready after %v", startTimeout)
		case <-tick.C:
		}
	}
}

// logTail returns the last lines vaultdev wrote to its log since offset.
func (s *Server) logTail(offset int64) string {
	b, err := os.ReadFile(s.LogFile())
	if err != nil {
		return "(" + err.Error() + ")"
	}
	if offset > 0 && offset <= int64(len(b)) {
		b = b[offset:]
	}
	const max = 4096
	if len(b) > max {
		b = b[len(b)-max:]
		if i := bytes.IndexByte(b, '\n'); i >= 0 {
			b = b[i+1:]
		}
	}
	if len(b) == 0 {
		return "(empty)"
	}
	return string(b)
}

// stopProcess asks p to exit (SIGTERM), waits up to 5 s, then kills it.
// It reports an error if vaultdev had to be killed or exited with failure.
func stopProcess(p *process) error {
	select {
	case <-p.done:
	default:
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		t := time.NewTimer(stopTimeout)
		select {
		case <-p.done:
			t.Stop()
		case <-t.C:
			_ = p.cmd.Process.Kill()
			<-p.done
			p.stdin.Close()
			return fmt.Errorf("vaulttest: vaultdev did not exit within %v of SIGTERM; killed", stopTimeout)
		}
	}
	p.stdin.Close()
	if p.err != nil {
		return fmt.Errorf("vaulttest: vaultdev: %w", p.err)
	}
	return nil
}

// Stop shuts Vault down (SIGTERM; SIGKILL after 5 s) and waits for it to
// exit. Requests to Addr fail afterwards. Stopping a stopped Server does
// nothing. Storage is kept, so Restart can bring the same Vault back.
func (s *Server) Stop() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stopLocked()
}

func (s *Server) stopLocked() error {
	if s.proc == nil {
		return nil
	}
	p := s.proc
	s.proc = nil
	return stopProcess(p)
}

// Restart stops Vault (if running) and starts it again on the same address
// with the same storage, audit log and root token.
func (s *Server) Restart() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.stopLocked(); err != nil {
		return err
	}
	listen := strings.TrimPrefix(s.Addr, "http://")
	var err error
	// The port was just released; in the unlikely case something else
	// grabbed it meanwhile, retrying will not help for long, but a short
	// retry covers a slow socket release.
	for attempt := 0; attempt < 5; attempt++ {
		if err = s.startLocked(listen); err == nil {
			return nil
		}
		if !portBusy(listen) {
			return err
		}
		time.Sleep(200 * time.Millisecond)
	}
	return err
}

func portBusy(hostport string) bool {
	l, err := net.Listen("tcp", hostport)
	if err != nil {
		return true
	}
	l.Close()
	return false
}

// Running reports whether the vaultdev process is up (it may still refuse
// requests, e.g. if its audit device cannot write).
func (s *Server) Running() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.proc == nil {
		return false
	}
	select {
	case <-s.proc.done:
		return false
	default:
		return true
	}
}

// Client returns a Vault API client for this server, authenticated with the
// root token. It ignores VAULT_* environment variables that would point it
// elsewhere, and it does not retry: a stopped Vault fails requests at once.
func (s *Server) Client() (*api.Client, error) {
	cfg := api.DefaultConfig()
	if cfg.Error != nil {
		return nil, fmt.Errorf("vaulttest: %w", cfg.Error)
	}
	cfg.Address = s.Addr
	cfg.MaxRetries = 0
	cfg.Timeout = 30 * time.Second
	c, err := api.NewClient(cfg)
	if err != nil {
		return nil, fmt.Errorf("vaulttest: %w", err)
	}
	c.SetToken(s.Token)
	c.ClearNamespace()
	return c, nil
}

// AuditEntries parses the file audit log: one JSON object per line, in the
// order Vault wrote them (a "request" and a "response" entry per request).
// Values are HMAC-SHA256'd by Vault (see AuditHash). A last line that is
// still being written is left out.
func (s *Server) AuditEntries() ([]map[string]any, error) {
	f, err := os.Open(s.AuditLog)
	if err != nil {
		return nil, fmt.Errorf("vaulttest: %w", err)
	}
	defer f.Close()
	var out []map[string]any
	r := bufio.NewReader(f)
	for n := 1; ; n++ {
		line, err := r.ReadBytes('\n')
		if errors.Is(err, io.EOF) {
			return out, nil // partial last line (if any) is not complete yet
		}
		if err != nil {
			return nil, fmt.Errorf("vaulttest: %w", err)
		}
		line = bytes.TrimSpace(line)
		if len(line) == 0 {
			continue
		}
		var e map[string]any
		if err := json.Unmarshal(line, &e); err != nil {
			return nil, fmt.Errorf("vaulttest: %s line %d: %w", s.AuditLog, n, err)
		}
		out = append(out, e)
	}
}

// AuditHash returns the value as it appears in the audit log ("hmac-sha256:…"),
// using Vault's sys/audit-hash endpoint for the file device.
func (s *Server) AuditHash(input string) (string, error) {
	c, err := s.Client()
	if err != nil {
		return "", err
	}
	h, err := c.Sys().AuditHash("file", input)
	if err != nil {
		return "", fmt.Errorf("vaulttest: audit hash: %w", err)
	}
	return h, nil
}
