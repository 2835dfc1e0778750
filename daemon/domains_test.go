package daemon

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	escrowdv1 "github.com/escrowd/escrowd/api/escrowd/v1"
	"github.com/escrowd/escrowd/audit"
	"github.com/escrowd/escrowd/internal/devpki"
	"github.com/escrowd/escrowd/policy"
)

// TestTrustDomainBoundToCA: with two client CAs in force and the policy
// binding escrowd.test to the first, a certificate of the second CA
// naming an escrowd.test identity is refused (Unauthenticated, audited),
// while the first CA's certificate for the same identity is served; a
// policy reload that binds the domain to the second CA turns it around.
func TestTrustDomainBoundToCA(t *testing.T) {
	a := &fakeAuditor{}
	conn, s := startWith(t, &fakeEscrow{}, a, nil, nil)
	other, err := devpki.NewCA("other tenant's CA")
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(lastPKI.ca.Cert)
	pool.AddCert(other.Cert)
	s.SetCredentials(nil, pool)
	bind := func(ca *devpki.CA) {
		t.Helper()
		y := "version: 1\nroles:\n  all:\n    operations: [" + strings.Join(Operations(), ", ") + "]\n" +
			"identities:\n  - id: " + testerID + "\n    name: tester\n    roles: [all]\n" +
			"trust_domains:\n  - domain: escrowd.test\n    cas: [\"" + SPKIIdentity(ca.Cert) + "\"]\n"
		p, err := policy.Parse("test.yaml", []byte(y), Operations())
		if err != nil {
			t.Fatal(err)
		}
		s.SetPolicy(p)
	}
	bind(lastPKI.ca)

	pair, err := other.Client(testerID, time.Time{}, time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := pair.TLS()
	creds := credentials.NewTLS(&tls.Config{RootCAs: lastPKI.ca.Pool(), Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS13})
	foreign, err := grpc.NewClient(lastAddr, grpc.WithTransportCredentials(creds))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { foreign.Close() })

	ctx := context.Background()
	call := func(c *grpc.ClientConn) error {
		_, err := escrowdv1.NewSyncServiceClient(c).ProvisionGroup(ctx, &escrowdv1.ProvisionGroupRequest{GroupId: "g1"})
		return err
	}
	if err := call(conn); err != nil {
		t.Fatalf("the bound CA's certificate: %v", err)
	}
	err = call(foreign)
	if status.Code(err) != codes.Unauthenticated || !strings.Contains(err.Error(), "trust domain") {
		t.Fatalf("another CA's certificate for the same identity: %v", err)
	}
	recs := a.await(t, 3) // the first call's intent and outcome, the refusal
	if len(recs) != 3 || recs[2].Outcome != audit.OutcomeDenied || recs[2].Caller == "tester" || recs[2].Caller == testerID {
		t.Fatalf("the refusal's record: %+v", recs)
	}

	bind(other)
	if err := call(foreign); status.Code(err) == codes.Unauthenticated {
		t.Fatalf("after binding the domain to the other CA: %v", err)
	}
	if err := call(conn); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("the first CA after the domain moved: %v", err)
	}
}
