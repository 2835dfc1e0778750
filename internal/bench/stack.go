package bench

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/escrowd/escrowd/client"
	"github.com/escrowd/escrowd/internal/devpki"
	"github.com/escrowd/escrowd/internal/vaulttest"
	"github.com/escrowd/escrowd/softhsm"
)

// The callers of the benchmark: the identities and roles of the e2e
// policy, with rate limits sized so that a benchmark never reaches them
// (they are still taken, in the store, on every reveal).
var identities = map[string]string{
	"sync-backend": "spiffe://escrowd.bench/sync-backend",
	"alice":        "spiffe://escrowd.bench/support/alice",
	"carol":        "spiffe://escrowd.bench/security/carol",
}

const benchPolicy = `# The policy of make bench: the e2e roles, rate limits out of reach.
version: 1

roles:
  sync-backend:
    operations: [ProvisionGroup, GetEscrowKey, Rewrap, IssueUnlockCodes, RewrapToEscrow, BatchRewrap, MarkUnlockCodeConsumed, RotateGroupKey]
    rewrap_targets: [member, device, unlock, escrow]
  support:
    operations: [RevealUnlockCode, ListUnlockCodes, ListPendingReveals, ApproveReveal]
  security:
    operations: [GetGroup, ListHSMObjects, RotateGroupKeys, SetMinDecryptionVersion, DestroyKeyVersion, StartJob, ListJobs, CancelJob, DestroyKEK]

identities:
  - {id: "spiffe://escrowd.bench/sync-backend", name: sync-backend, roles: [sync-backend]}
  - {id: "spiffe://escrowd.bench/support/alice", name: alice, roles: [support]}
  - {id: "spiffe://escrowd.bench/security/carol", name: carol, roles: [security]}

tickets:
  required_for: [RevealUnlockCode]
  pattern: '^(SUP|INC)-[0-9]+$'

dual_control:
  operations: [RevealUnlockCode]
  groups: ["vip-*"]
  timeout: 3s

rate_limits:
  - {name: reveals-per-user, operations: [RevealUnlockCode], per: user, limit: 1000, window: 24h}
  - {name: reveals-per-technician, operations: [RevealUnlockCode], per: caller, limit: 100000000, window: 1h}
`

// env is the stack every daemon of a run shares.
type env struct {
	vaultPID int // 0 if not found
	dir      string
	tok      *softhsm.Token
	vault    *vaulttest.Server
	ca       *devpki.CA
	certs    map[string]tls.Certificate
	policy   string
	bin      string
}

func newEnv(dir, bin string) (*env, error) {
	e := &env{dir: dir, bin: bin, certs: map[string]tls.Certificate{}}
	var err error
	if e.tok, err = softhsm.New(filepath.Join(dir, "softhsm"), "escrowd-bench"); err != nil {
		return nil, err
	}
	if e.ca, err = devpki.NewCA("escrowd bench CA"); err != nil {
		return nil, err
	}
	pki := filepath.Join(dir, "pki")
	if err := os.MkdirAll(pki, 0o700); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(pki, "ca.crt"), e.ca.PEM, 0o644); err != nil {
		return nil, err
	}
	srv, err := e.ca.Server()
	if err != nil {
		return nil, err
	}
	if err := srv.Write(pki, "server"); err != nil {
		return nil, err
	}
	for name, id := range identities {
		p, err := e.ca.Client(id, time.Time{}, time.Time{})
		if err != nil {
			return nil, err
		}
		if e.certs[name], err = p.TLS(); err != nil {
			return nil, err
		}
	}
	e.policy = filepath.Join(dir, "policy.yaml")
	if err := os.WriteFile(e.policy, []byte(benchPolicy), 0o600); err != nil {
		return nil, err
	}
	if e.vault, err = vaulttest.Start(filepath.Join(dir, "vault")); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, "vault.token"), []byte(e.vault.Token+"\n"), 0o600); err != nil {
		return nil, err
	}
	e.vaultPID = FindPID(filepath.Join(e.vault.Dir, "addr"))
	return e, nil
}

func (e *env) close() {
	if e.vault != nil {
		_ = e.vault.Stop()
	}
}

// daemon is one escrowd process and its clients.
type daemon struct {
	cmd    *exec.Cmd
	exited chan error
	addr   string
	pprof  string // host:port of net/http/pprof
	// One client per identity, as callers reach escrowd; never
	// retrying, so that every failure counts as one.
	conns []*client.Client
	sync  *client.Client
	sup   *client.Client
	sec   *client.Client
	log   string
}

func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// startDaemon runs binary name of e.bin on storePath with the real
// policy, mutual TLS and Vault audit, and waits until it listens.
func (e *env) startDaemon(name, storePath, logName string, extra ...string) (*daemon, error) {
	addr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	pki := filepath.Join(e.dir, "pki")
	args := append([]string{"-listen", addr, "-store", storePath,
		"-hsm-module", e.tok.Module, "-hsm-token", e.tok.Label, "-hsm-pin-file", filepath.Join(e.tok.Dir, "user.pin"),
		"-vault-addr", e.vault.Addr, "-vault-token-file", filepath.Join(e.dir, "vault.token"), "-log-level", "warn",
		"-tls-cert", filepath.Join(pki, "server.crt"), "-tls-key", filepath.Join(pki, "server.key"),
		"-client-ca", filepath.Join(pki, "ca.crt"), "-policy", e.policy, "-job-poll", "200ms"}, extra...)
	pprof, err := freeAddr()
	if err != nil {
		return nil, err
	}
	d := &daemon{addr: addr, pprof: pprof, log: filepath.Join(e.dir, logName)}
	lf, err := os.Create(d.log)
	if err != nil {
		return nil, err
	}
	defer lf.Close()
	d.cmd = exec.Command(filepath.Join(e.bin, name), args...)
	d.cmd.Stdout, d.cmd.Stderr = lf, lf
	d.cmd.Env = append(os.Environ(), "ESCROWD_PPROF="+pprof)
	if err := d.cmd.Start(); err != nil {
		return nil, fmt.Errorf("bench: start %s: %w", name, err)
	}
	d.exited = make(chan error, 1)
	go func() { d.exited <- d.cmd.Wait() }()
	deadline := time.Now().Add(60 * time.Second)
	for {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			d.stop()
			return nil, fmt.Errorf("bench: %s did not listen in 60 s (log %s)", name, d.log)
		}
		select {
		case err := <-d.exited:
			return nil, fmt.Errorf("bench: %s exited: %v (log %s)", name, err, d.log)
		case <-time.After(50 * time.Millisecond):
		}
	}
	dial := func(who string) (*client.Client, error) {
		tc := &tls.Config{RootCAs: e.ca.Pool(), Certificates: []tls.Certificate{e.certs[who]}, MinVersion: tls.VersionTLS13}
		c, err := client.Dial(context.Background(), client.Config{Addr: addr, TLS: tc, MaxAttempts: 1})
		if err == nil {
			d.conns = append(d.conns, c)
		}
		return c, err
	}
	for who, set := range map[string]func(*client.Client){
		"sync-backend": func(c *client.Client) { d.sync = c },
		"alice":        func(c *client.Client) { d.sup = c },
		"carol":        func(c *client.Client) { d.sec = c },
	} {
		c, err := dial(who)
		if err != nil {
			d.stop()
			return nil, err
		}
		set(c)
	}
	return d, nil
}

func (d *daemon) pid() int { return d.cmd.Process.Pid }

// memory describes the daemon's peak RSS (VmHWM) and what its resident
// set is now: anonymous memory (heap, stacks) and file pages (bbolt's
// memory map of the store, which the kernel can drop).
func (d *daemon) memory() string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", d.pid()))
	if err != nil {
		return "unreadable"
	}
	hwm, _ := ParseVmHWM(string(b))
	anon, _ := ParseStatusKB(string(b), "RssAnon")
	file, _ := ParseStatusKB(string(b), "RssFile")
	return fmt.Sprintf("%s peak (VmHWM); now %s anonymous + %s file pages (the store's memory map)", mib(hwm), mib(anon), mib(file))
}

// stop sends SIGTERM, waits for the drain, and kills after 20 s.
func (d *daemon) stop() {
	for _, c := range d.conns {
		_ = c.Close()
	}
	if d.cmd == nil || d.cmd.Process == nil {
		return
	}
	_ = d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.exited:
	case <-time.After(20 * time.Second):
		_ = d.cmd.Process.Kill()
		<-d.exited
	}
}

// ctl runs escrowctl with args.
func (e *env) ctl(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, filepath.Join(e.bin, "escrowctl"), args...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("bench: escrowctl %v: %w", args[:min(2, len(args))], err)
	}
	return string(out), nil
}

var errNoBinary = errors.New("bench: binary missing: run `make bench`, which builds them")

func checkBinaries(bin string) error {
	for _, n := range []string{"escrowd-bench", "escrowd-noaudit", "escrowctl"} {
		if _, err := os.Stat(filepath.Join(bin, n)); err != nil {
			return fmt.Errorf("%w: %s", errNoBinary, filepath.Join(bin, n))
		}
	}
	return nil
}

// FindPID finds the process whose command line holds arg (the Vault
// server's address file, unique to this run), for its CPU figures.
func FindPID(arg string) int {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return 0
	}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		for _, a := range strings.Split(string(b), "\x00") {
			if a == arg {
				return pid
			}
		}
	}
	return 0
}
