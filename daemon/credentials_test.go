package daemon

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"math/big"
	"net"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	escrowdv1 "github.com/escrowd/escrowd/api/escrowd/v1"
	"github.com/escrowd/escrowd/internal/devpki"
)

// serverCertOf handshakes with the server startWith made last, as cert,
// and returns the certificate the server presented.
func serverCertOf(t *testing.T, cert tls.Certificate, cache tls.ClientSessionCache) (*x509.Certificate, error) {
	t.Helper()
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", lastAddr, &tls.Config{
		RootCAs: lastPKI.ca.Pool(), Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS13,
		NextProtos: []string{"h2"}, ClientSessionCache: cache,
	})
	if err != nil {
		return nil, err
	}
	defer c.Close()
	// The server's verdict on the client certificate, and its session
	// ticket if any, come after the client's side of the handshake.
	c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	if _, err := c.Read(make([]byte, 1)); err != nil {
		if ne, ok := err.(net.Error); !ok || !ne.Timeout() {
			return nil, err
		}
	}
	return c.ConnectionState().PeerCertificates[0], nil
}

// TestServerCertificateRotates: a new server certificate put in force is
// served to the next handshake, and a connection open before keeps
// working.
func TestServerCertificateRotates(t *testing.T) {
	conn, s := startWith(t, &fakeEscrow{}, &fakeAuditor{}, nil, nil)
	sync := escrowdv1.NewSyncServiceClient(conn)
	ctx := context.Background()
	if _, err := sync.ProvisionGroup(ctx, &escrowdv1.ProvisionGroupRequest{GroupId: "g1"}); err != nil {
		t.Fatal(err)
	}
	before, err := serverCertOf(t, lastPKI.client, nil)
	if err != nil {
		t.Fatal(err)
	}
	pair, err := lastPKI.ca.Server()
	if err != nil {
		t.Fatal(err)
	}
	cert, err := pair.TLS()
	if err != nil {
		t.Fatal(err)
	}
	s.SetCredentials(&cert, nil)
	after, err := serverCertOf(t, lastPKI.client, nil)
	if err != nil {
		t.Fatal(err)
	}
	if after.SerialNumber.Cmp(pair.Cert.SerialNumber) != 0 || after.SerialNumber.Cmp(before.SerialNumber) == 0 {
		t.Fatalf("served serial %x after the rotation, want %x (was %x)", after.SerialNumber, pair.Cert.SerialNumber, before.SerialNumber)
	}
	if _, err := sync.ProvisionGroup(ctx, &escrowdv1.ProvisionGroupRequest{GroupId: "g2"}); err != nil {
		t.Fatalf("the connection open before the rotation: %v", err)
	}
}

// TestClientCAsReplaced: new client CAs put in force refuse a certificate
// of a CA taken out, at the handshake and on its open connection (whose
// chain was remembered as verified), and admit one of a CA put in.
func TestClientCAsReplaced(t *testing.T) {
	conn, s := startWith(t, &fakeEscrow{}, &fakeAuditor{}, nil, nil)
	sync := escrowdv1.NewSyncServiceClient(conn)
	ctx := context.Background()
	if _, err := sync.ProvisionGroup(ctx, &escrowdv1.ProvisionGroupRequest{GroupId: "g1"}); err != nil {
		t.Fatal(err)
	}
	newCA, err := devpki.NewCA("new client CA")
	if err != nil {
		t.Fatal(err)
	}
	pair, _ := newCA.Client(testerID, time.Time{}, time.Time{})
	newClient, _ := pair.TLS()
	if _, err := serverCertOf(t, newClient, nil); err == nil {
		t.Fatal("a certificate of a CA not yet in force got in")
	}
	s.SetCredentials(nil, newCA.Pool())
	if _, err := serverCertOf(t, newClient, nil); err != nil {
		t.Fatalf("a certificate of the new CA: %v", err)
	}
	if _, err := serverCertOf(t, lastPKI.client, nil); err == nil {
		t.Fatal("a certificate of the CA taken out got in")
	}
	_, err = sync.ProvisionGroup(ctx, &escrowdv1.ProvisionGroupRequest{GroupId: "g2"})
	if status.Code(err) != codes.Unauthenticated {
		t.Fatalf("open connection of the CA taken out: %v", err)
	}
}

// TestNoResumptionPastRevocation: a client that kept a TLS session from
// before its certificate was revoked cannot resume it: the handshake is
// refused as a full one would be.
func TestNoResumptionPastRevocation(t *testing.T) {
	_, s := startWith(t, &fakeEscrow{}, &fakeAuditor{}, nil, nil)
	cache := tls.NewLRUClientSessionCache(4)
	if _, err := serverCertOf(t, lastPKI.client, cache); err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	r, err := ParseCRLs(mustCRL(t, lastPKI.ca, []*big.Int{lastPKI.client.Leaf.SerialNumber}, now.Add(-time.Minute), now.Add(time.Hour)),
		[]*x509.Certificate{lastPKI.ca.Cert}, now)
	if err != nil {
		t.Fatal(err)
	}
	s.SetRevocations(r)
	if _, err := serverCertOf(t, lastPKI.client, cache); err == nil {
		t.Fatal("a revoked certificate's session resumed")
	}
}
