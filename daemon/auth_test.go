package daemon

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"testing"
	"time"

	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"

	"github.com/escrowd/escrowd/internal/devpki"
)

// callerCtx is the context of a request whose connection presented certs.
func callerCtx(certs ...*x509.Certificate) context.Context {
	return peer.NewContext(context.Background(), &peer.Peer{
		AuthInfo: credentials.TLSInfo{State: tls.ConnectionState{PeerCertificates: certs}},
	})
}

// TestIdentifyRemembersOnlyWhatAFreshCheckWouldSay: a remembered chain
// answers as verifying it again would, at every moment: valid while it is,
// refused from the moment its certificate expires, and a chain from
// another CA is never taken for a remembered one.
func TestIdentifyRemembersOnlyWhatAFreshCheckWouldSay(t *testing.T) {
	ca, err := devpki.NewCA("test CA")
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Now().Truncate(time.Second)
	expires := t0.Add(2 * time.Minute) // sooner than verifyTTL
	pair, err := ca.Client(testerID, t0.Add(-time.Hour), expires)
	if err != nil {
		t.Fatal(err)
	}
	leaf := parseLeaf(t, pair)
	other, err := devpki.NewCA("another CA")
	if err != nil {
		t.Fatal(err)
	}
	foreignPair, err := other.Client(testerID, time.Time{}, time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	foreign := parseLeaf(t, foreignPair)

	now := t0
	s := &Server{cfg: Config{ClientCAs: ca.Pool()}, now: func() time.Time { return now }}
	steps := []struct {
		name  string
		at    time.Time
		cert  *x509.Certificate
		valid bool
	}{
		{"first request verifies", t0, leaf, true},
		{"remembered", t0.Add(time.Minute), leaf, true},
		{"foreign CA, same identity", t0.Add(time.Minute), foreign, false},
		{"just before expiry", expires.Add(-time.Second), leaf, true},
		{"expired, though remembered", expires.Add(time.Second), leaf, false},
		{"still expired", expires.Add(time.Hour), leaf, false},
	}
	for _, st := range steps {
		now = st.at
		id := s.identify(callerCtx(st.cert))
		if (id.err == nil) != st.valid {
			t.Fatalf("%s: err = %v, want valid %v", st.name, id.err, st.valid)
		}
		if len(id.ids) == 0 || id.ids[0] != testerID {
			t.Fatalf("%s: ids %v", st.name, id.ids)
		}
	}
}

// TestVerifyCacheBounded: many callers do not grow the cache without end.
func TestVerifyCacheBounded(t *testing.T) {
	var c verifyCache
	now := time.Now()
	chain := [][]*x509.Certificate{{{NotAfter: now.Add(time.Hour)}}}
	var last [32]byte
	for i := range 3 * verifyEntries {
		last[0], last[1], last[2] = byte(i), byte(i>>8), byte(i>>16)
		c.add(last, 0, now, chain, nil)
		if len(c.until) > verifyEntries {
			t.Fatalf("%d entries after %d callers", len(c.until), i+1)
		}
	}
	_, fresh := c.valid(last, now)
	if _, stale := c.valid(last, now.Add(verifyTTL)); !fresh || stale {
		t.Fatal("the newest entry is gone, or an entry outlived the TTL")
	}
}

// TestVerifyCacheGeneration: a verification that began before a reset
// (new client CAs or CRL) is not remembered after it.
func TestVerifyCacheGeneration(t *testing.T) {
	var c verifyCache
	now := time.Now()
	chain := [][]*x509.Certificate{{{NotAfter: now.Add(time.Hour)}}}
	key := [32]byte{1}
	gen := c.generation()
	c.reset() // the CAs change while the chain is being verified
	c.add(key, gen, now, chain, nil)
	if _, ok := c.valid(key, now); ok {
		t.Fatal("a chain verified under the CAs of before the reset was remembered")
	}
	c.add(key, c.generation(), now, chain, nil)
	if _, ok := c.valid(key, now); !ok {
		t.Fatal("a chain verified after the reset was not remembered")
	}
}

func parseLeaf(t *testing.T, p *devpki.Pair) *x509.Certificate {
	t.Helper()
	c, err := p.TLS()
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(c.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	return leaf
}
