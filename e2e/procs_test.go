package e2e

import (
	"bytes"
	"crypto/tls"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	escrowdv1 "github.com/escrowd/escrowd/api/escrowd/v1"
	"github.com/escrowd/escrowd/softhsm"
)

// replica is one escrowd process.
type replica struct {
	t      *testing.T
	bin    string
	args   []string
	addr   string
	cmd    *exec.Cmd
	exited chan error
	mu     sync.Mutex
	log    bytes.Buffer
	sec    escrowdv1.SecurityServiceClient
	sup    escrowdv1.SupportServiceClient
	sync   escrowdv1.SyncServiceClient
}

type lockedWriter struct {
	mu *sync.Mutex
	b  *bytes.Buffer
}

func (w lockedWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

// startReplica starts escrowd on tok with the given store and waits until
// it accepts connections. Its audit trail is the test's own (trailOf): a
// trail's chain key is made by the first HSM token that writes it, and
// only that token can go on with it.
func startReplica(t *testing.T, bin string, tok *softhsm.Token, storeSpec string, extra ...string) *replica {
	t.Helper()
	r := &replica{t: t, bin: bin, addr: freeAddr(t)}
	r.args = append([]string{"-listen", r.addr, "-store", storeSpec,
		"-hsm-module", tok.Module, "-hsm-token", tok.Label, "-hsm-pin-file", filepath.Join(tok.Dir, "user.pin"),
		"-vault-addr", vaultSrv.Addr, "-vault-token-file", writeSecret(t, vaultSrv.Token), "-log-level", "warn",
		"-tls-cert", filepath.Join(pki.dir, "server.crt"), "-tls-key", filepath.Join(pki.dir, "server.key"),
		"-client-ca", filepath.Join(pki.dir, "ca.crt"), "-policy", "testdata/policy.yaml", "-audit-prefix", trailOf(t)}, extra...)
	r.start()
	r.connect()
	t.Cleanup(func() { r.kill() })
	return r
}

// connect makes the clients: carol (security), alice (support) and the
// sync backend.
func (r *replica) connect() {
	r.sec = escrowdv1.NewSecurityServiceClient(r.dial("carol"))
	r.sup = escrowdv1.NewSupportServiceClient(r.dial("alice"))
	r.sync = escrowdv1.NewSyncServiceClient(r.dial("sync-backend"))
}

// dial makes a connection of its own as the named identity.
func (r *replica) dial(name string) *grpc.ClientConn {
	r.t.Helper()
	creds := credentials.NewTLS(&tls.Config{RootCAs: pki.ca.Pool(), Certificates: []tls.Certificate{pki.certs[name]}, MinVersion: tls.VersionTLS13})
	conn, err := grpc.NewClient(r.addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		r.t.Fatal(err)
	}
	r.t.Cleanup(func() { conn.Close() })
	return conn
}

func (r *replica) start() {
	r.t.Helper()
	if err := r.launch(); err != nil {
		r.t.Fatal(err)
	}
}

// launch starts the process and waits until it listens. It reports rather
// than fails, so that a test can restart a replica in the background while
// it watches another one.
func (r *replica) launch() error {
	cmd := exec.Command(r.bin, r.args...)
	cmd.Stderr = lockedWriter{&r.mu, &r.log}
	if err := cmd.Start(); err != nil {
		return err
	}
	exited := make(chan error, 1)
	r.mu.Lock()
	r.cmd, r.exited = cmd, exited
	r.mu.Unlock()
	go func() { exited <- cmd.Wait() }()
	deadline := time.Now().Add(60 * time.Second)
	for {
		c, err := net.Dial("tcp", r.addr)
		if err == nil {
			c.Close()
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("escrowd did not listen:\n%s", r.logs())
		}
		select {
		case err := <-exited:
			return fmt.Errorf("escrowd exited: %v\n%s", err, r.logs())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func (r *replica) logs() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.log.String()
}

func (r *replica) pid() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.cmd == nil || r.cmd.Process == nil {
		return 0
	}
	return r.cmd.Process.Pid
}

// kill sends SIGKILL and waits for the process to be gone.
func (r *replica) kill() {
	r.mu.Lock()
	cmd, exited := r.cmd, r.exited
	r.mu.Unlock()
	if cmd == nil || cmd.Process == nil {
		return
	}
	_ = cmd.Process.Signal(syscall.SIGKILL)
	select {
	case <-exited:
	case <-time.After(10 * time.Second):
	}
}

// ctlRun runs escrowctl against addr as carol, the security engineer.
func ctlRun(t *testing.T, escrowctl, addr string, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(escrowctl, args...)
	cmd.Env = append(os.Environ(), "ESCROWD_ADDR="+addr, "ESCROWCTL_CERT="+filepath.Join(pki.dir, "carol.crt"),
		"ESCROWCTL_KEY="+filepath.Join(pki.dir, "carol.key"), "ESCROWCTL_CA="+filepath.Join(pki.dir, "ca.crt"))
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func mustCtl(t *testing.T, escrowctl, addr string, args ...string) string {
	t.Helper()
	out, err := ctlRun(t, escrowctl, addr, args...)
	if err != nil {
		t.Fatalf("escrowctl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}
