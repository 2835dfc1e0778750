package daemon

import (
	"context"
	"crypto/x509"
	"errors"
	"math/big"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	escrowdv1 "github.com/escrowd/escrowd/api/escrowd/v1"
	"github.com/escrowd/escrowd/internal/devpki"
)

func mustCRL(t *testing.T, ca *devpki.CA, serials []*big.Int, this, next time.Time) []byte {
	t.Helper()
	der, err := ca.CRL(serials, this, next)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

// TestParseCRLs: a CRL file is taken only if every CRL in it is signed by
// a client CA, one per CA, and not past its nextUpdate.
func TestParseCRLs(t *testing.T) {
	ca, _ := devpki.NewCA("client CA")
	ca2, _ := devpki.NewCA("second client CA")
	foreign, _ := devpki.NewCA("foreign CA")
	now := time.Now()
	good := mustCRL(t, ca, []*big.Int{big.NewInt(7)}, now.Add(-time.Hour), now.Add(time.Hour))
	good2 := mustCRL(t, ca2, nil, now.Add(-time.Hour), now.Add(time.Hour))
	cas := []*x509.Certificate{ca.Cert, ca2.Cert}
	tests := []struct {
		name    string
		file    []byte
		want    int
		wantErr string
	}{
		{"PEM", devpki.PEMCRL(good), 1, ""},
		{"DER", good, 1, ""},
		{"two CAs, PEM", append(devpki.PEMCRL(good), devpki.PEMCRL(good2)...), 2, ""},
		{"foreign signer", devpki.PEMCRL(mustCRL(t, foreign, nil, now.Add(-time.Hour), now.Add(time.Hour))), 0, "not signed by a client CA"},
		{"expired", devpki.PEMCRL(mustCRL(t, ca, nil, now.Add(-2*time.Hour), now.Add(-time.Hour))), 0, "expired"},
		{"same CA twice", append(devpki.PEMCRL(good), devpki.PEMCRL(good)...), 0, "second CRL"},
		{"a certificate, not a CRL", ca.PEM, 0, "unexpected PEM block"},
		{"garbage DER", []byte("not a CRL"), 0, "CRL 1"},
		{"tampered", append(good[:len(good)-4:len(good)-4], 1, 2, 3, 4), 0, "CRL 1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := ParseCRLs(tt.file, cas, now)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if r.Len() != tt.want {
				t.Fatalf("%d CRLs, want %d", r.Len(), tt.want)
			}
		})
	}
}

// TestRevocationCheck: a certificate is revoked only by the CRL of its own
// issuer; and once a CRL passes its nextUpdate every certificate is
// refused (fail closed).
func TestRevocationCheck(t *testing.T) {
	ca, _ := devpki.NewCA("client CA")
	other, _ := devpki.NewCA("other CA")
	now := time.Now()
	pair, _ := ca.Client(testerID, time.Time{}, time.Time{})
	otherPair, _ := other.Client(testerID, time.Time{}, time.Time{})
	leaf, otherLeaf := parseLeaf(t, pair), parseLeaf(t, otherPair)
	// other's certificate carries the same serial: only the issuer tells
	// them apart.
	otherLeaf.SerialNumber = leaf.SerialNumber
	next := now.Add(time.Hour)
	r, err := ParseCRLs(mustCRL(t, ca, []*big.Int{leaf.SerialNumber}, now.Add(-time.Hour), next), []*x509.Certificate{ca.Cert, other.Cert}, now)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.check([]*x509.Certificate{leaf, ca.Cert}, now); !errors.Is(err, ErrRevoked) {
		t.Fatalf("revoked leaf: %v", err)
	}
	if err := r.check([]*x509.Certificate{otherLeaf}, now); err != nil {
		t.Fatalf("another CA's certificate with the same serial: %v", err)
	}
	if err := r.check([]*x509.Certificate{otherLeaf}, next); !errors.Is(err, ErrCRLExpired) {
		t.Fatalf("at nextUpdate: %v", err)
	}
	if err := (*Revocations)(nil).check([]*x509.Certificate{leaf}, now); err != nil {
		t.Fatalf("no CRL: %v", err)
	}
}

// TestIdentifyRevokedDespiteRememberedChain: a chain remembered as
// verified is refused from the moment a CRL revoking it is put in force,
// not when the remembered verification would have run out.
func TestIdentifyRevokedDespiteRememberedChain(t *testing.T) {
	ca, _ := devpki.NewCA("test CA")
	pair, _ := ca.Client(testerID, time.Time{}, time.Time{})
	leaf := parseLeaf(t, pair)
	now := time.Now()
	s := &Server{cfg: Config{ClientCAs: ca.Pool()}, now: func() time.Time { return now }}
	if id := s.identify(callerCtx(leaf)); id.err != nil {
		t.Fatal(id.err)
	}
	r, err := ParseCRLs(mustCRL(t, ca, []*big.Int{leaf.SerialNumber}, now.Add(-time.Minute), now.Add(time.Hour)), []*x509.Certificate{ca.Cert}, now)
	if err != nil {
		t.Fatal(err)
	}
	s.SetRevocations(r)
	now = now.Add(time.Second)
	if id := s.identify(callerCtx(leaf)); !errors.Is(id.err, ErrRevoked) {
		t.Fatalf("after the CRL: %v", id.err)
	}
	if len(s.verified.until) != 0 {
		t.Fatal("the verified-chain cache survived a new CRL")
	}
}

// TestRevokedRefusedAtHandshake: over real TLS, a certificate revoked by
// the CRL in force is refused at the handshake (counted as revoked), and
// a connection opened before the CRL was put in force is refused its next
// request; a certificate the CRL does not name still gets in.
func TestRevokedRefusedAtHandshake(t *testing.T) {
	obs := &recorder{}
	conn, s := startWith(t, &fakeEscrow{}, &fakeAuditor{}, nil, func(c *Config) {
		c.Observer = obs
		c.HandshakeFailureRate = -1
	})
	sync := escrowdv1.NewSyncServiceClient(conn)
	ctx := context.Background()
	if _, err := sync.ProvisionGroup(ctx, &escrowdv1.ProvisionGroupRequest{GroupId: "g1"}); err != nil {
		t.Fatal(err)
	}
	revoked := lastPKI.client
	now := time.Now()
	r, err := ParseCRLs(mustCRL(t, lastPKI.ca, []*big.Int{revoked.Leaf.SerialNumber}, now.Add(-time.Minute), now.Add(time.Hour)),
		[]*x509.Certificate{lastPKI.ca.Cert}, now)
	if err != nil {
		t.Fatal(err)
	}
	s.SetRevocations(r)

	// The connection opened before: its next request is refused.
	_, err = sync.ProvisionGroup(ctx, &escrowdv1.ProvisionGroupRequest{GroupId: "g2"})
	if c := status.Code(err); c != codes.Unauthenticated && c != codes.PermissionDenied {
		t.Fatalf("request on a connection of a revoked certificate: %v", err)
	}
	// A new connection: refused at the handshake.
	if c, err := tlsDial(t, revoked); err == nil {
		c.Close()
		t.Fatal("handshake with a revoked certificate succeeded")
	}
	// Another certificate of the same CA: in.
	pair, _ := lastPKI.ca.Client(strangerID, time.Time{}, time.Time{})
	other, _ := pair.TLS()
	c, err := tlsDial(t, other)
	if err != nil {
		t.Fatalf("handshake with a certificate not revoked: %v", err)
	}
	c.Close()
	deadline := time.Now().Add(5 * time.Second)
	for {
		obs.mu.Lock()
		got := slices.Clone(obs.handshakes)
		obs.mu.Unlock()
		if slices.Contains(got, HandshakeRevoked) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("handshake failures observed: %v, want %s", got, HandshakeRevoked)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestExpiredCRLFailsClosed: once the CRL in force passes its nextUpdate,
// every client certificate is refused at the handshake.
func TestExpiredCRLFailsClosed(t *testing.T) {
	obs := &recorder{}
	_, s := startWith(t, &fakeEscrow{}, &fakeAuditor{}, nil, func(c *Config) {
		c.Observer = obs
		c.HandshakeFailureRate = -1
	})
	now := time.Now()
	// A CRL's times are whole seconds: this one expires 2 to 3 s from now.
	next := now.Truncate(time.Second).Add(3 * time.Second)
	r, err := ParseCRLs(mustCRL(t, lastPKI.ca, nil, now.Add(-time.Minute), next), []*x509.Certificate{lastPKI.ca.Cert}, now)
	if err != nil {
		t.Fatal(err)
	}
	s.SetRevocations(r)
	c, err := tlsDial(t, lastPKI.client)
	if err != nil {
		t.Fatalf("before nextUpdate: %v", err)
	}
	c.Close()
	time.Sleep(time.Until(next) + 100*time.Millisecond)
	if c, err := tlsDial(t, lastPKI.client); err == nil {
		c.Close()
		t.Fatal("handshake succeeded past the CRL's nextUpdate")
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		obs.mu.Lock()
		got := slices.Clone(obs.handshakes)
		obs.mu.Unlock()
		if slices.Contains(got, HandshakeCRLExpired) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("handshake failures observed: %v, want %s", got, HandshakeCRLExpired)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestOlderCRLRefused: a CRL file whose CRL of a CA was issued before the
// one in force is refused (an old copy would un-revoke certificates); the
// same CRL again, a newer one, or one of another CA is not.
func TestOlderCRLRefused(t *testing.T) {
	ca, _ := devpki.NewCA("client CA")
	ca2, _ := devpki.NewCA("second client CA")
	cas := []*x509.Certificate{ca.Cert, ca2.Cert}
	now := time.Now()
	parse := func(ca *devpki.CA, issued time.Time) *Revocations {
		t.Helper()
		r, err := ParseCRLs(mustCRL(t, ca, nil, issued, now.Add(time.Hour)), cas, now)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	inForce := parse(ca, now.Add(-time.Hour))
	if err := parse(ca, now.Add(-2*time.Hour)).NotOlder(inForce); !errors.Is(err, ErrOlderCRL) {
		t.Fatalf("an older CRL: %v", err)
	}
	for name, r := range map[string]*Revocations{
		"the same": inForce, "newer": parse(ca, now.Add(-time.Minute)), "another CA's": parse(ca2, now.Add(-3*time.Hour)),
	} {
		if err := r.NotOlder(inForce); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
	if err := inForce.NotOlder(nil); err != nil {
		t.Errorf("none in force: %v", err)
	}
}
