package daemon

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"syscall"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"google.golang.org/grpc/credentials"
)

// What a connection may cost before it authenticates. The API listener
// requires a client certificate at the TLS handshake, so a caller without
// a valid one never reaches HTTP/2, protobuf, the policy or the audit
// trail; what remains to bound is the handshake itself:
//
//   - at most MaxConnections connections are open at once; past it, new
//     ones wait in the kernel's accept queue;
//   - a connection has HandshakeTimeout to finish its TLS handshake and
//     HTTP/2 set-up;
//   - failed handshakes spend a budget that refills at
//     HandshakeFailureRate a second: while it is spent, the listener
//     accepts new connections only as fast as it refills. A flood of
//     callers without a certificate then waits in the accept queue,
//     costing neither side CPU, instead of being refused as fast as it
//     can reconnect. Connections already open are not affected.
//
// Each refused handshake is counted (HandshakeObserver) and logged, at
// most handshakeLogBurst lines per reason every handshakeLogEvery, the
// number left out carried in the next line.

// HandshakeObserver is an Observer that also learns of refused TLS
// handshakes, by a reason of HandshakeReasons.
type HandshakeObserver interface {
	ObserveHandshakeFailure(reason string)
}

// The reasons ObserveHandshakeFailure reports.
const (
	HandshakeNoCertificate    = "no_certificate"      // the client sent no certificate
	HandshakeExpired          = "expired"             // its certificate (or a CA's) has expired or is not yet valid
	HandshakeUnknownAuthority = "unknown_authority"   // not signed by a CA of -client-ca
	HandshakeBadCertificate   = "invalid_certificate" // any other certificate problem (usage, constraints)
	HandshakeRevoked          = "revoked"             // revoked by the CRL of -client-crl
	HandshakeCRLExpired       = "crl_expired"         // a CRL of -client-crl is past its nextUpdate: all are refused
	HandshakeTimeout          = "timeout"             // did not finish within the handshake timeout
	HandshakeClosed           = "closed"              // the client hung up mid-handshake
	HandshakeProtocol         = "protocol"            // not TLS 1.3, no common cipher, a malformed message
)

// HandshakeReasons lists every reason ObserveHandshakeFailure reports.
func HandshakeReasons() []string {
	return []string{HandshakeNoCertificate, HandshakeExpired, HandshakeUnknownAuthority, HandshakeBadCertificate,
		HandshakeRevoked, HandshakeCRLExpired, HandshakeTimeout, HandshakeClosed, HandshakeProtocol}
}

// Defaults of the listener limits (Config).
const (
	DefaultMaxRecvMsgSize       = 4 << 20
	DefaultMaxConcurrentStreams = 100
	DefaultMaxConnections       = 1000
	DefaultHandshakeTimeout     = 5 * time.Second
	DefaultHandshakeFailureRate = 50
	DefaultRefusalRate          = 50
)

// Fixed limits: the HTTP/2 header list of one request (escrowd's own
// callers send a few hundred bytes), and the health listener's, which
// takes no certificate and serves one small message.
const (
	maxHeaderListSize     = 16 << 10
	healthMaxConnections  = 64
	healthMaxStreams      = 4
	healthMaxRecvMsgSize  = 1 << 10
	handshakeLogEvery     = 10 * time.Second
	handshakeLogBurst     = 5
	handshakeMaxNameBytes = 128
)

// handshakeReason sorts a failed server handshake.
func handshakeReason(err error) string {
	var cve *tls.CertificateVerificationError
	var ne net.Error
	switch {
	case errors.Is(err, ErrRevoked):
		return HandshakeRevoked
	case errors.Is(err, ErrCRLExpired):
		return HandshakeCRLExpired
	case errors.As(err, &cve):
		var inv x509.CertificateInvalidError
		var ua x509.UnknownAuthorityError
		switch {
		case errors.As(cve.Err, &inv) && inv.Reason == x509.Expired:
			return HandshakeExpired
		case errors.As(cve.Err, &ua):
			return HandshakeUnknownAuthority
		}
		return HandshakeBadCertificate
	case strings.Contains(err.Error(), "didn't provide a certificate"):
		return HandshakeNoCertificate
	case errors.As(err, &ne) && ne.Timeout():
		return HandshakeTimeout
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, syscall.ECONNRESET), errors.Is(err, net.ErrClosed):
		return HandshakeClosed
	}
	return HandshakeProtocol
}

// handshakeCreds is the API listener's TLS: it counts and logs every
// handshake it refuses, and charges it to the listener's failure budget.
type handshakeCreds struct {
	credentials.TransportCredentials
	s *Server
}

func (h handshakeCreds) ServerHandshake(raw net.Conn) (net.Conn, credentials.AuthInfo, error) {
	conn, info, err := h.TransportCredentials.ServerHandshake(raw)
	if err != nil {
		h.s.refusedHandshake(raw.RemoteAddr(), err)
	}
	return conn, info, err
}

func (h handshakeCreds) Clone() credentials.TransportCredentials {
	return handshakeCreds{TransportCredentials: h.TransportCredentials.Clone(), s: h.s}
}

// refusedHandshake counts a refused handshake, logs it within bounds and,
// if it cost the server a key exchange, charges the failure budget. A
// connection closed or left idle before its first message (a TCP probe, a
// slow client) cost nothing but its slot, which MaxConnections and the
// handshake timeout bound; it is logged at debug level only.
func (s *Server) refusedHandshake(addr net.Addr, err error) {
	reason := handshakeReason(err)
	if o, ok := s.cfg.Observer.(HandshakeObserver); ok {
		o.ObserveHandshakeFailure(reason)
	}
	lvl := zapcore.WarnLevel
	if reason == HandshakeClosed || reason == HandshakeTimeout {
		lvl = zapcore.DebugLevel
	} else {
		s.budget.spend()
	}
	if !s.log.Core().Enabled(lvl) {
		return
	}
	suppressed, ok := s.handshakeLog.allow(reason, s.now())
	if !ok {
		return
	}
	fields := []zap.Field{zap.String("reason", reason)}
	if addr != nil {
		fields = append(fields, zap.String("peer.address", addr.String()))
	}
	var cve *tls.CertificateVerificationError
	if errors.As(err, &cve) && len(cve.UnverifiedCertificates) > 0 {
		fields = append(fields, zap.String("unverified", SPKIIdentity(cve.UnverifiedCertificates[0])))
	}
	if suppressed > 0 {
		fields = append(fields, zap.Int("suppressed", suppressed))
	}
	s.log.Log(lvl, "TLS handshake refused", fields...)
}

// logLimiter lets through at most handshakeLogBurst lines per reason in
// each handshakeLogEvery window, and says how many it held back.
type logLimiter struct {
	mu sync.Mutex
	by map[string]*logWindow
}

type logWindow struct {
	start      time.Time
	logged     int
	suppressed int
}

// allow reports whether a line of reason may be written now, and how
// many were held back since the last one that was.
func (l *logLimiter) allow(reason string, now time.Time) (int, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.by == nil {
		l.by = map[string]*logWindow{}
	}
	w := l.by[reason]
	if w == nil {
		w = &logWindow{start: now}
		l.by[reason] = w
	}
	if now.Sub(w.start) >= handshakeLogEvery {
		w.start, w.logged = now, 0
	}
	if w.logged >= handshakeLogBurst {
		w.suppressed++
		return 0, false
	}
	w.logged++
	n := w.suppressed
	w.suppressed = 0
	return n, true
}

// failureBudget is a token bucket of failed handshakes. It may go into
// debt (down to -burst), so that failures that were already in flight
// when it ran out lengthen the wait.
type failureBudget struct {
	mu     sync.Mutex
	rate   float64 // tokens a second; 0: no budget, never wait
	burst  float64
	tokens float64
	last   time.Time
}

func newFailureBudget(rate float64) *failureBudget {
	burst := max(rate, 1)
	return &failureBudget{rate: rate, burst: burst, tokens: burst, last: time.Now()}
}

func (b *failureBudget) refill(now time.Time) {
	b.tokens = min(b.burst, b.tokens+now.Sub(b.last).Seconds()*b.rate)
	b.last = now
}

func (b *failureBudget) spend() {
	if b == nil || b.rate <= 0 {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.refill(time.Now())
	b.tokens = max(b.tokens-1, -b.burst)
}

// wait is how long to hold the next accept.
func (b *failureBudget) wait() time.Duration {
	if b == nil || b.rate <= 0 {
		return 0
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.refill(time.Now())
	if b.tokens >= 1 {
		return 0
	}
	return time.Duration((1 - b.tokens) / b.rate * float64(time.Second))
}

// guardedListener bounds open connections and holds accepts while the
// failure budget is spent.
type guardedListener struct {
	net.Listener
	slots  chan struct{}
	budget *failureBudget
	closed chan struct{}
	once   sync.Once
}

func guard(l net.Listener, maxConns int, b *failureBudget) *guardedListener {
	return &guardedListener{Listener: l, slots: make(chan struct{}, maxConns), budget: b, closed: make(chan struct{})}
}

func (l *guardedListener) Accept() (net.Conn, error) {
	for d := l.budget.wait(); d > 0; d = l.budget.wait() {
		t := time.NewTimer(d)
		select {
		case <-t.C:
		case <-l.closed:
			t.Stop()
			return nil, net.ErrClosed
		}
	}
	select {
	case l.slots <- struct{}{}:
	case <-l.closed:
		return nil, net.ErrClosed
	}
	c, err := l.Listener.Accept()
	if err != nil {
		<-l.slots
		return nil, err
	}
	return &slotConn{Conn: c, free: func() { <-l.slots }}, nil
}

func (l *guardedListener) Close() error {
	l.once.Do(func() { close(l.closed) })
	return l.Listener.Close()
}

// slotConn gives its listener slot back when closed.
type slotConn struct {
	net.Conn
	once sync.Once
	free func()
}

func (c *slotConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.free)
	return err
}
