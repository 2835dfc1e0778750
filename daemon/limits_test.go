package daemon

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"slices"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	escrowdv1 "github.com/escrowd/escrowd/api/escrowd/v1"
)

// tlsDial makes one TLS connection to the server startWith made last,
// with the given client certificates, and reports the handshake's error
// as the client sees it once it has read the server's answer.
func tlsDial(t *testing.T, certs ...tls.Certificate) (*tls.Conn, error) {
	t.Helper()
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", lastAddr, &tls.Config{
		RootCAs: lastPKI.ca.Pool(), Certificates: certs, MinVersion: tls.VersionTLS13, NextProtos: []string{"h2"},
	})
	if err != nil {
		return nil, err
	}
	// TLS 1.3: the server's verdict on the client certificate comes after
	// the client's side of the handshake; read to hear it.
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err != nil && !errors.Is(err, io.EOF) {
		var ne net.Error
		if !errors.As(err, &ne) || !ne.Timeout() {
			c.Close()
			return nil, err
		}
	}
	return c, nil
}

// TestHandshakeFailuresObservedAndLogged: each refused handshake is
// counted by its reason, and logged with no more than a few lines per
// reason however many there are; the line names the certificate's key,
// never anything else the client sent.
func TestHandshakeFailuresObservedAndLogged(t *testing.T) {
	obs := &recorder{}
	core, logs := observer.New(zapcore.InfoLevel)
	startWith(t, &fakeEscrow{}, &fakeAuditor{}, nil, func(c *Config) {
		c.Observer = obs
		c.Logger = zap.New(core)
		c.HandshakeFailureRate = -1 // this test counts, it does not measure the budget
	})
	expiredPair, err := lastPKI.ca.Client(testerID, time.Now().Add(-48*time.Hour), time.Now().Add(-time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	expired, _ := expiredPair.TLS()
	foreignCA := newPKI(t)
	for range 12 {
		if c, err := tlsDial(t); err == nil {
			c.Close()
		}
	}
	for _, cert := range []tls.Certificate{expired, foreignCA.client} {
		if c, err := tlsDial(t, cert); err == nil {
			c.Close()
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		obs.mu.Lock()
		n := len(obs.handshakes)
		obs.mu.Unlock()
		if n >= 14 || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	obs.mu.Lock()
	got := slices.Clone(obs.handshakes)
	obs.mu.Unlock()
	count := map[string]int{}
	for _, r := range got {
		count[r]++
	}
	if count[HandshakeNoCertificate] != 12 || count[HandshakeExpired] != 1 || count[HandshakeUnknownAuthority] != 1 {
		t.Fatalf("handshake failures observed: %v", count)
	}
	lines := logs.FilterMessage("TLS handshake refused")
	if n := lines.FilterField(zap.String("reason", HandshakeNoCertificate)).Len(); n != handshakeLogBurst {
		t.Fatalf("%d lines for 12 handshakes without a certificate, want %d", n, handshakeLogBurst)
	}
	if lines.FilterField(zap.String("reason", HandshakeExpired)).FilterFieldKey("unverified").Len() != 1 {
		t.Fatal("the expired certificate's line does not name its key")
	}
}

// TestLogLimiter: at most handshakeLogBurst lines per reason and window;
// the next line says how many were held back.
func TestLogLimiter(t *testing.T) {
	var l logLimiter
	t0 := time.Now()
	for i := range handshakeLogBurst {
		if n, ok := l.allow("a", t0); !ok || n != 0 {
			t.Fatalf("line %d: %d %v", i, n, ok)
		}
	}
	for range 7 {
		if _, ok := l.allow("a", t0.Add(time.Second)); ok {
			t.Fatal("a line past the burst was let through")
		}
	}
	if _, ok := l.allow("b", t0.Add(time.Second)); !ok {
		t.Fatal("another reason was held back")
	}
	if n, ok := l.allow("a", t0.Add(handshakeLogEvery)); !ok || n != 7 {
		t.Fatalf("next window: %d held back, %v; want 7, true", n, ok)
	}
}

// TestFailedHandshakesSlowAccepts: once failed handshakes have spent the
// budget, the listener accepts new connections only as it refills, while
// a connection that is already open keeps being served.
func TestFailedHandshakesSlowAccepts(t *testing.T) {
	const rate = 20
	conn, _ := startWith(t, &fakeEscrow{}, &fakeAuditor{}, nil, func(c *Config) { c.HandshakeFailureRate = rate })
	client := escrowdv1.NewSyncServiceClient(conn)
	if _, err := client.GetEscrowKey(context.Background(), &escrowdv1.GetEscrowKeyRequest{GroupId: "g"}); err != nil {
		t.Fatal(err)
	}
	// 3 × the burst: the last 2 × burst wait for the refill, about 2 s.
	const attempts = 3 * rate
	t0 := time.Now()
	var wg sync.WaitGroup
	stop := make(chan struct{})
	var honest []time.Duration
	var honestErr error
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
			s := time.Now()
			if _, err := client.GetEscrowKey(context.Background(), &escrowdv1.GetEscrowKeyRequest{GroupId: "g"}); err != nil {
				honestErr = err
				return
			}
			honest = append(honest, time.Since(s))
		}
	}()
	for range attempts {
		if c, err := tlsDial(t); err == nil {
			c.Close()
		}
	}
	took := time.Since(t0)
	close(stop)
	wg.Wait()
	if honestErr != nil {
		t.Fatalf("the open connection failed during the flood: %v", honestErr)
	}
	if min := time.Duration(float64(attempts-2*rate) / rate * 0.8 * float64(time.Second)); took < min {
		t.Fatalf("%d failed handshakes took %s, want at least %s: the budget did not hold accepts", attempts, took, min)
	}
	// Latency under a flood is measured by e2e's TestAnonymousFlood; here
	// the open connection only has to keep working.
	slices.Sort(honest)
	if len(honest) < 10 {
		t.Fatalf("%d calls on the open connection during the flood", len(honest))
	}
	t.Logf("%d failed handshakes in %s; %d calls on the open connection meanwhile, slowest %s", attempts, took, len(honest), honest[len(honest)-1])
}

// TestConnectionLimit: past MaxConnections, a new connection waits until
// one closes.
func TestConnectionLimit(t *testing.T) {
	startWith(t, &fakeEscrow{}, &fakeAuditor{}, nil, func(c *Config) { c.MaxConnections = 2 })
	var open []*tls.Conn
	for range 2 {
		c, err := tlsDial(t, lastPKI.client)
		if err != nil {
			t.Fatal(err)
		}
		open = append(open, c)
	}
	done := make(chan error, 1)
	go func() {
		c, err := tlsDial(t, lastPKI.client)
		if err == nil {
			c.Close()
		}
		done <- err
	}()
	select {
	case err := <-done:
		t.Fatalf("a third connection was served at once (%v)", err)
	case <-time.After(500 * time.Millisecond):
	}
	open[0].Close()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("the third connection, once a slot was free: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the third connection was never served")
	}
	open[1].Close()
}

// TestHandshakeTimeout: a connection that says nothing is closed after
// HandshakeTimeout, counted as a timeout.
func TestHandshakeTimeout(t *testing.T) {
	obs := &recorder{}
	startWith(t, &fakeEscrow{}, &fakeAuditor{}, nil, func(c *Config) {
		c.HandshakeTimeout = 300 * time.Millisecond
		c.Observer = obs
	})
	c, err := net.Dial("tcp", lastAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	t0 := time.Now()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err = c.Read(make([]byte, 1))
	if took := time.Since(t0); err == nil || took > 3*time.Second {
		t.Fatalf("a silent connection: %v after %s, want it closed after about 300ms", err, took)
	}
	deadline := time.Now().Add(2 * time.Second)
	for {
		obs.mu.Lock()
		got := slices.Clone(obs.handshakes)
		obs.mu.Unlock()
		if slices.Contains(got, HandshakeTimeout) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("handshake failures observed %v, want a timeout", got)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestMaxConcurrentStreams: a connection runs at most
// MaxConcurrentStreams calls at once; the next waits for one to finish.
func TestMaxConcurrentStreams(t *testing.T) {
	e := &fakeEscrow{entered: make(chan struct{}, 4), release: make(chan struct{})}
	conn, _ := startWith(t, e, &fakeAuditor{}, nil, func(c *Config) { c.MaxConcurrentStreams = 1 })
	client := escrowdv1.NewSyncServiceClient(conn)
	errs := make(chan error, 2)
	for range 2 {
		go func() {
			_, err := client.ProvisionGroup(context.Background(), &escrowdv1.ProvisionGroupRequest{GroupId: "g"})
			errs <- err
		}()
	}
	<-e.entered
	select {
	case <-e.entered:
		t.Fatal("two calls ran at once on one connection")
	case <-time.After(500 * time.Millisecond):
	}
	e.release <- struct{}{}
	<-e.entered
	e.release <- struct{}{}
	for range 2 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
}

// TestMaxRecvMsgSize: a request over MaxRecvMsgSize is refused
// RESOURCE_EXHAUSTED, and recorded.
func TestMaxRecvMsgSize(t *testing.T) {
	a := &fakeAuditor{}
	conn, _ := startWith(t, &fakeEscrow{}, a, nil, func(c *Config) { c.MaxRecvMsgSize = 64 << 10 })
	client := escrowdv1.NewSyncServiceClient(conn)
	slot := make([]byte, 100<<10)
	_, err := client.RewrapToEscrow(context.Background(), &escrowdv1.RewrapToEscrowRequest{GroupId: "g", EscrowSlot: slot})
	if status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("a 100 KiB request over a 64 KiB limit: %v", err)
	}
	if _, err := client.RewrapToEscrow(context.Background(), &escrowdv1.RewrapToEscrowRequest{GroupId: "g", EscrowSlot: slot[:32<<10]}); err != nil {
		t.Fatalf("a 32 KiB request: %v", err)
	}
	recs := a.await(t, 2)
	if len(recs) != 2 || recs[0].Code != "ResourceExhausted" && recs[1].Code != "ResourceExhausted" {
		t.Fatalf("records %+v", recs)
	}
}

// TestRefusalPacerTurns: a caller gets its burst, then one turn every
// 1/rate; its debt is bounded; callers are paced apart.
func TestRefusalPacerTurns(t *testing.T) {
	p := refusalPacer{rate: 10}
	t0 := time.Now()
	for i := range 10 {
		if d := p.reserve("a", t0); d != 0 {
			t.Fatalf("refusal %d of the burst waits %s", i, d)
		}
	}
	if d := p.reserve("a", t0); d != 100*time.Millisecond {
		t.Fatalf("the 11th waits %s, want 100ms", d)
	}
	if d := p.reserve("b", t0); d != 0 {
		t.Fatalf("another caller waits %s", d)
	}
	for range 1000 {
		p.reserve("a", t0)
	}
	if d := p.reserve("a", t0); d > maxRefusalWait {
		t.Fatalf("the debt grew to %s", d)
	}
	if d := p.reserve("a", t0.Add(maxRefusalWait+2*time.Second)); d != 0 {
		t.Fatalf("a caller that stopped for longer than the debt still waits %s", d)
	}
}

// TestRefusedCallerPaced: a caller refused past RefusalRate waits its
// turn for each further refusal, however many it sends at once, while a
// caller that is not refused is not held up.
func TestRefusedCallerPaced(t *testing.T) {
	const rate = 20
	a := &fakeAuditor{}
	conn, s := startWith(t, &fakeEscrow{}, a, nil, func(c *Config) { c.RefusalRate = rate })
	stranger := escrowdv1.NewSyncServiceClient(dialAs(t, s, strangerID))
	tester := escrowdv1.NewSyncServiceClient(conn)
	ctx := context.Background()
	const refusals = 3 * rate
	t0 := time.Now()
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < refusals; i += 8 {
				if _, err := stranger.GetEscrowKey(ctx, &escrowdv1.GetEscrowKeyRequest{GroupId: "g"}); status.Code(err) != codes.PermissionDenied {
					t.Errorf("the stranger: %v", err)
				}
			}
		}()
	}
	var served int
	var slowest time.Duration
	done := make(chan struct{})
	go func() {
		wg.Wait()
		close(done)
	}()
	for wait := true; wait; {
		select {
		case <-done:
			wait = false
		default:
			s := time.Now()
			if _, err := tester.GetEscrowKey(ctx, &escrowdv1.GetEscrowKeyRequest{GroupId: "g"}); err != nil {
				t.Fatal(err)
			}
			served++
			slowest = max(slowest, time.Since(s))
			time.Sleep(10 * time.Millisecond)
		}
	}
	took := time.Since(t0)
	if min := time.Duration(float64(refusals-rate) / rate * 0.8 * float64(time.Second)); took < min {
		t.Fatalf("%d refusals took %s, want at least %s", refusals, took, min)
	}
	if served < 20 {
		t.Fatalf("the tester was served %d times meanwhile", served)
	}
	t.Logf("%d refusals in %s; the tester served %d times meanwhile, slowest %s", refusals, took, served, slowest)
	if n := len(a.await(t, refusals+served)); n != refusals+served {
		t.Fatalf("%d records, want %d", n, refusals+served)
	}
}
