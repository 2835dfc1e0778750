package e2e

import (
	"bytes"
	"crypto/tls"
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
// it accepts connections.
func startReplica(t *testing.T, bin string, tok *softhsm.Token, storeSpec string, extra ...string) *replica {
	t.Helper()
	r := &replica{t: t, bin: bin, addr: freeAddr(t)}
	r.args = append([]string{"-listen", r.addr, "-store", storeSpec,
		"-hsm-module", tok.Module, "-hsm-token", tok.Label, "-hsm-pin-file", filepath.Join(tok.Dir, "user.pin"),
		"-vault-addr", vaultSrv.Addr, "-vault-token-file", writeSecret(t, vaultSrv.Token), "-log-level", "warn",
		"-tls-cert", filepath.Join(pki.dir, "server.crt"), "-tls-key", filepath.Join(pki.dir, "server.key"),
		"-client-ca", filepath.Join(pki.dir, "ca.crt"), "-policy", "testdata/policy.yaml"}, extra...)
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
	t := r.t
	t.Helper()
	r.cmd = exec.Command(r.bin, r.args...)
	r.cmd.Stderr = lockedWriter{&r.mu, &r.log}
	if err := r.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	r.exited = exited
	cmd := r.cmd
	go func() { exited <- cmd.Wait() }()
	deadline := time.Now().Add(60 * time.Second)
	for {
		c, err := net.Dial("tcp", r.addr)
		if err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("escrowd did not listen:\n%s", r.logs())
		}
		select {
		case err := <-exited:
			t.Fatalf("escrowd exited: %v\n%s", err, r.logs())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func (r *replica) logs() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.log.String()
}

func (r *replica) pid() int { return r.cmd.Process.Pid }

// kill sends SIGKILL and waits for the process to be gone.
func (r *replica) kill() {
	if r.cmd == nil || r.cmd.Process == nil {
		return
	}
	_ = r.cmd.Process.Signal(syscall.SIGKILL)
	select {
	case <-r.exited:
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
