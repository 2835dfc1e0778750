package e2e

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	escrowdv1 "github.com/escrowd/escrowd/api/escrowd/v1"
	"github.com/escrowd/escrowd/daemon"
	"github.com/escrowd/escrowd/internal/devpki"
)

var daemonSPKI = daemon.SPKIIdentity

// handshake makes one TLS connection to addr as the named identity and
// returns the server's verdict on the client certificate (TLS 1.3 sends
// it after the client's side of the handshake: read to hear it).
func handshake(t *testing.T, addr string, cert tls.Certificate, roots *devpki.CA) error {
	t.Helper()
	_, err := served(t, addr, cert, roots)
	return err
}

// served is handshake that also returns the server's certificate.
func served(t *testing.T, addr string, cert tls.Certificate, roots *devpki.CA) (*x509.Certificate, error) {
	t.Helper()
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, &tls.Config{
		RootCAs: roots.Pool(), Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS13, NextProtos: []string{"h2"},
	})
	if err != nil {
		return nil, err
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(2 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err != nil && !errors.Is(err, io.EOF) {
		var ne net.Error
		if !errors.As(err, &ne) || !ne.Timeout() {
			return nil, err
		}
	}
	return c.ConnectionState().PeerCertificates[0], nil
}

// sighup signals r and waits until its log holds want once more than
// before.
func (r *replica) sighup(t *testing.T, want string) {
	t.Helper()
	before := strings.Count(r.logs(), want)
	if err := r.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(10 * time.Second); strings.Count(r.logs(), want) == before; {
		if time.Now().After(deadline) {
			t.Fatalf("no %q logged after SIGHUP:\n%s", want, r.logs())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestCRLReloadRevokes: escrowd started with -client-crl; a certificate
// revoked by a new CRL is refused from the SIGHUP on, at the handshake and
// on a connection it had opened before; a broken CRL is refused on reload
// and the one in force stays; other certificates keep working.
func TestCRLReloadRevokes(t *testing.T) {
	escrowd, _ := buildBinaries(t)
	crlPath := filepath.Join(t.TempDir(), "clients.crl")
	issued := time.Now().Add(-2 * time.Minute)
	writeCRL := func(revoked ...*big.Int) []byte {
		t.Helper()
		issued = issued.Add(time.Minute) // each CRL issued after the one before
		der, err := pki.ca.CRL(revoked, issued, time.Now().Add(time.Hour))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(crlPath, devpki.PEMCRL(der), 0o644); err != nil {
			t.Fatal(err)
		}
		return devpki.PEMCRL(der)
	}
	first := writeCRL()
	r := startReplica(t, escrowd, token, filepath.Join(t.TempDir(), "escrowd.db"),
		"-client-crl", crlPath, "-log-level", "info", "-audit-prefix", trailOf(t))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := r.sync.ProvisionGroup(ctx, &escrowdv1.ProvisionGroupRequest{GroupId: "crl-family"}); err != nil {
		t.Fatal(err)
	}
	backend := pki.certs["sync-backend"]
	if err := handshake(t, r.addr, backend, pki.ca); err != nil {
		t.Fatalf("handshake before revocation: %v", err)
	}

	writeCRL(backend.Leaf.SerialNumber)
	r.sighup(t, "client CRL reloaded")
	refused := func(when string) {
		t.Helper()
		if err := handshake(t, r.addr, backend, pki.ca); err == nil {
			t.Fatalf("%s: handshake with a revoked certificate succeeded", when)
		}
		_, err := r.sync.ProvisionGroup(ctx, &escrowdv1.ProvisionGroupRequest{GroupId: "crl-family-2"})
		if c := status.Code(err); c != codes.Unauthenticated && c != codes.Unavailable {
			t.Fatalf("%s: request on the revoked certificate's open connection: %v", when, err)
		}
	}
	refused("after the reload")
	if _, err := r.sec.GetGroup(ctx, &escrowdv1.GetGroupRequest{GroupId: "crl-family"}); err != nil {
		t.Fatalf("a certificate the CRL does not name: %v", err)
	}

	// A broken CRL, then one signed by another CA: each refused, the
	// revocation stays in force.
	if err := os.WriteFile(crlPath, []byte("-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	r.sighup(t, "client CRL reload refused")
	other, err := devpki.NewCA("another CA")
	if err != nil {
		t.Fatal(err)
	}
	der, err := other.CRL(nil, time.Now().Add(-time.Minute), time.Now().Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(crlPath, devpki.PEMCRL(der), 0o644); err != nil {
		t.Fatal(err)
	}
	r.sighup(t, "not signed by a client CA")
	// The first CRL again, which does not revoke it: an old copy must not
	// undo a revocation.
	if err := os.WriteFile(crlPath, first, 0o644); err != nil {
		t.Fatal(err)
	}
	r.sighup(t, "older than the CRL in force")
	refused("after bad CRLs")
	if _, err := r.sec.GetGroup(ctx, &escrowdv1.GetGroupRequest{GroupId: "crl-family"}); err != nil {
		t.Fatalf("a certificate the CRL does not name, after bad CRLs: %v", err)
	}
}

// TestServerCertReloaded: a rotated server certificate is served from the
// SIGHUP on while the connections open before keep working; a broken new
// pair is refused and the one in force stays.
func TestServerCertReloaded(t *testing.T) {
	escrowd, _ := buildBinaries(t)
	dir := t.TempDir()
	first, err := pki.ca.Server()
	if err != nil {
		t.Fatal(err)
	}
	if err := first.Write(dir, "server"); err != nil {
		t.Fatal(err)
	}
	r := startReplica(t, escrowd, token, filepath.Join(t.TempDir(), "escrowd.db"), "-log-level", "info", "-audit-prefix", trailOf(t),
		"-tls-cert", filepath.Join(dir, "server.crt"), "-tls-key", filepath.Join(dir, "server.key"))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := r.sync.ProvisionGroup(ctx, &escrowdv1.ProvisionGroupRequest{GroupId: "rotate-family"}); err != nil {
		t.Fatal(err)
	}
	servedSerial := func() *big.Int {
		t.Helper()
		c, err := served(t, r.addr, pki.certs["carol"], pki.ca)
		if err != nil {
			t.Fatal(err)
		}
		return c.SerialNumber
	}
	if got := servedSerial(); got.Cmp(first.Cert.SerialNumber) != 0 {
		t.Fatalf("served %x, want the first certificate %x", got, first.Cert.SerialNumber)
	}
	second, err := pki.ca.Server()
	if err != nil {
		t.Fatal(err)
	}
	if err := second.Write(dir, "server"); err != nil {
		t.Fatal(err)
	}
	r.sighup(t, "server certificate reloaded")
	if got := servedSerial(); got.Cmp(second.Cert.SerialNumber) != 0 {
		t.Fatalf("served %x after the reload, want the rotated certificate %x", got, second.Cert.SerialNumber)
	}
	if _, err := r.sync.GetEscrowKey(ctx, &escrowdv1.GetEscrowKeyRequest{GroupId: "rotate-family"}); err != nil {
		t.Fatalf("the connection open before the reload: %v", err)
	}
	// A key that does not match the certificate: refused, the rotated
	// certificate stays.
	third, err := pki.ca.Server()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "server.crt"), third.CertPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	r.sighup(t, "server certificate reload refused")
	if got := servedSerial(); got.Cmp(second.Cert.SerialNumber) != 0 {
		t.Fatalf("served %x after a broken reload, want %x", got, second.Cert.SerialNumber)
	}
}

// TestCrossDomainIdentityRefused: escrowd trusts two client CAs, and its
// policy binds escrowd.test to the e2e CA. A certificate the other CA
// issued for carol's SPIFFE ID is refused at its first request, audited;
// carol's own certificate works; a certificate of the other CA in its own
// trust domain is let through to the policy (which does not list it).
func TestCrossDomainIdentityRefused(t *testing.T) {
	escrowd, _ := buildBinaries(t)
	dir := t.TempDir()
	other, err := devpki.NewCA("tenant CA")
	if err != nil {
		t.Fatal(err)
	}
	bundle := filepath.Join(dir, "cas.crt")
	if err := os.WriteFile(bundle, append(append([]byte{}, pki.ca.PEM...), other.PEM...), 0o644); err != nil {
		t.Fatal(err)
	}
	base, err := os.ReadFile("testdata/policy.yaml")
	if err != nil {
		t.Fatal(err)
	}
	policyPath := filepath.Join(dir, "policy.yaml")
	bound := string(base) + "\ntrust_domains:\n  - {domain: escrowd.test, cas: [\"" + daemonSPKI(pki.ca.Cert) + "\"]}\n" +
		"  - {domain: tenant.test, cas: [\"" + daemonSPKI(other.Cert) + "\"]}\n"
	if err := os.WriteFile(policyPath, []byte(bound), 0o644); err != nil {
		t.Fatal(err)
	}
	r := startReplica(t, escrowd, token, filepath.Join(t.TempDir(), "escrowd.db"), "-audit-prefix", trailOf(t),
		"-client-ca", bundle, "-policy", policyPath)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	dialWith := func(id string) escrowdv1.SecurityServiceClient {
		t.Helper()
		pair, err := other.Client(id, time.Time{}, time.Time{})
		if err != nil {
			t.Fatal(err)
		}
		cert, err := pair.TLS()
		if err != nil {
			t.Fatal(err)
		}
		creds := credentials.NewTLS(&tls.Config{RootCAs: pki.ca.Pool(), Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS13})
		conn, err := grpc.NewClient(r.addr, grpc.WithTransportCredentials(creds))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		return escrowdv1.NewSecurityServiceClient(conn)
	}
	_, err = dialWith(identities["carol"]).ListJobs(ctx, &escrowdv1.ListJobsRequest{})
	if status.Code(err) != codes.Unauthenticated || !strings.Contains(err.Error(), "trust domain") {
		t.Fatalf("carol's ID from the tenant CA: %v", err)
	}
	if _, err := r.sec.ListJobs(ctx, &escrowdv1.ListJobsRequest{}); err != nil {
		t.Fatalf("carol's own certificate: %v", err)
	}
	_, err = dialWith("spiffe://tenant.test/security/carol").ListJobs(ctx, &escrowdv1.ListJobsRequest{})
	if status.Code(err) != codes.PermissionDenied {
		t.Fatalf("the tenant CA in its own trust domain: %v (want PermissionDenied: not in the policy)", err)
	}
}

// TestClientCAReloaded: a CA added to the client CA bundle is trusted from
// the SIGHUP on, a bundle with no certificate is refused on reload and the
// CAs in force stay, and a CA taken out stops answering for its open
// connections at the reload.
func TestClientCAReloaded(t *testing.T) {
	escrowd, _ := buildBinaries(t)
	dir := t.TempDir()
	tenant, err := devpki.NewCA("tenant CA")
	if err != nil {
		t.Fatal(err)
	}
	pair, err := tenant.Client("spiffe://tenant.test/someone", time.Time{}, time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	tenantCert, err := pair.TLS()
	if err != nil {
		t.Fatal(err)
	}
	bundle := filepath.Join(dir, "cas.crt")
	write := func(b []byte) {
		t.Helper()
		if err := os.WriteFile(bundle, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(pki.ca.PEM)
	r := startReplica(t, escrowd, token, filepath.Join(t.TempDir(), "escrowd.db"), "-log-level", "info", "-audit-prefix", trailOf(t),
		"-client-ca", bundle)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := handshake(t, r.addr, tenantCert, pki.ca); err == nil {
		t.Fatal("a certificate of a CA not in the bundle got in")
	}
	write(append(append([]byte{}, pki.ca.PEM...), tenant.PEM...))
	r.sighup(t, "client CAs reloaded")
	if err := handshake(t, r.addr, tenantCert, pki.ca); err != nil {
		t.Fatalf("a certificate of the CA added: %v", err)
	}
	write([]byte("no certificate here\n"))
	r.sighup(t, "client CA reload refused")
	if err := handshake(t, r.addr, tenantCert, pki.ca); err != nil {
		t.Fatalf("after a broken bundle: %v", err)
	}
	if _, err := r.sec.ListJobs(ctx, &escrowdv1.ListJobsRequest{}); err != nil {
		t.Fatal(err)
	}
	// The e2e CA taken out: carol's open connection is refused its next
	// request, and a new handshake too.
	write(tenant.PEM)
	r.sighup(t, "client CAs reloaded")
	if _, err := r.sec.ListJobs(ctx, &escrowdv1.ListJobsRequest{}); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("an open connection of the CA taken out: %v", err)
	}
	if err := handshake(t, r.addr, pki.certs["carol"], pki.ca); err == nil {
		t.Fatal("a certificate of the CA taken out got in")
	}
}
