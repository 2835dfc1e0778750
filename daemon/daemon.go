// Package daemon serves escrowd's gRPC API. It owns everything gRPC: the
// listeners and what a connection may cost before it authenticates
// (listen.go), the request pipeline that authenticates, checks, authorises
// and audits every request, unary or streaming, before its result is
// released (pipeline.go), the mapping of errors to status codes, health
// and reflection. Handlers only translate between protobuf messages and
// the escrow package.
package daemon

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors"
	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/recovery"
	"go.opentelemetry.io/otel/trace"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/reflection"

	escrowdv1 "github.com/escrowd/escrowd/api/escrowd/v1"
	"github.com/escrowd/escrowd/audit"
	"github.com/escrowd/escrowd/escrow"
	"github.com/escrowd/escrowd/hsm"
	"github.com/escrowd/escrowd/policy"
	"github.com/escrowd/escrowd/store"
)

// Escrow is the key service the handlers call.
type Escrow interface {
	Provision(ctx context.Context, group, suite string) (escrow.EscrowPublic, error)
	EscrowKey(ctx context.Context, group string) (escrow.EscrowPublic, error)
	Rewrap(ctx context.Context, group string, escrowSlot []byte, r escrow.Recipient) ([]byte, escrow.Used, error)
	IssueCodes(ctx context.Context, group, user string, escrowSlot []byte, n int) (escrow.Issued, error)
	RevealCode(ctx context.Context, group, user string) (escrow.Revealed, error)
	Codes(ctx context.Context, group, user string) (store.Codes, error)
	Group(ctx context.Context, group string) (store.Group, error)
	RewrapToEscrow(ctx context.Context, group string, escrowSlot []byte, version uint32) ([]byte, escrow.Used, error)
	BatchRewrap(ctx context.Context, items []escrow.BatchItem) ([]escrow.BatchResult, error)
	ConsumeCode(ctx context.Context, group, user string, epoch, index uint32) (store.Codes, error)
	Rotate(ctx context.Context, group string, r escrow.Rotation) (escrow.Rotated, error)
}

// Versions manages a group's key versions (SecurityService and
// SyncService.RewrapToEscrow).
type Versions interface {
	RotateGroup(ctx context.Context, group string, escrowKey, unlockKey bool) (store.Group, error)
	SetMinVersions(ctx context.Context, group string, minEscrow, minUnlock uint32) (store.Group, error)
	DestroyVersion(ctx context.Context, group string, kind escrow.KeyKind, version uint32) (store.Group, error)
}

// Jobs starts, lists and cancels jobs, and destroys old master KEKs.
type Jobs interface {
	Start(ctx context.Context, kind string, params map[string]string) (store.Job, error)
	Jobs(ctx context.Context) ([]store.Job, error)
	Cancel(ctx context.Context, id string) (store.Job, error)
	DestroyKEK(ctx context.Context, version uint32) error
}

// Auditor commits a record; an error means the result must not be released.
type Auditor interface {
	Commit(ctx context.Context, r *audit.Record) error
}

// RefusalAuditor is an Auditor with a lane of its own for requests refused
// before their handler ran, which release nothing. CommitRefusal returns
// once the record is committed, or at once when the lane is full and the
// refusal is counted into a summary record instead; either way a flood of
// refusals cannot delay or fail the records of results.
type RefusalAuditor interface {
	Auditor
	CommitRefusal(ctx context.Context, r *audit.Record) error
}

// OutcomeAuditor is an Auditor that can take a record without waiting
// for its write: Enqueue returns once the record is held for the next
// write, and calls failed, later, if that write fails. A reveal's outcome
// goes this way unless Config.OutcomeBeforeRelease is set (writeahead.go).
type OutcomeAuditor interface {
	Auditor
	Enqueue(ctx context.Context, r *audit.Record, failed func(error)) error
}

// ObjectLister lists the HSM token's objects.
type ObjectLister interface {
	Objects(ctx context.Context) ([]hsm.ObjectInfo, error)
}

// Checker reports whether a dependency can serve.
type Checker interface {
	Healthy(ctx context.Context) error
}

// State keeps what policy enforcement must share across restarts and
// replicas: rate limits (on the store's clock) and dual-control approvals.
type State interface {
	TakeRate(ctx context.Context, limits []store.RateLimit) (int, error)
	CreateApproval(ctx context.Context, a store.Approval) error
	Approval(ctx context.Context, id string) (store.Approval, error)
	Approve(ctx context.Context, id, approver string, now time.Time) (store.Approval, error)
	PendingApprovals(ctx context.Context, now time.Time) ([]store.Approval, error)
}

// Config wires a Server.
type Config struct {
	Escrow  Escrow
	Auditor Auditor
	Objects ObjectLister
	State   State
	// Policy is in force from the start; SetPolicy replaces it.
	Policy *policy.Policy
	// TLS holds the server certificate. The API listener requires TLS
	// 1.3 and a client certificate that verifies against ClientCAs, at
	// the handshake, and issues no session tickets. SetCredentials
	// replaces the certificate and the CAs.
	TLS       *tls.Config
	ClientCAs *x509.CertPool
	// Revocations, if set, are the client CRLs in force from the start
	// (revocation.go); SetRevocations replaces them.
	Revocations *Revocations
	// Versions and Jobs are optional: without them their RPCs fail with
	// FAILED_PRECONDITION.
	Versions Versions
	Jobs     Jobs
	// Checks gate the health service: while any fails, every service
	// reports NOT_SERVING. Keyed by a name used in logs.
	Checks        map[string]Checker
	CheckInterval time.Duration
	Logger        *zap.Logger
	// AuditTimeout bounds the audit commit of one request.
	AuditTimeout time.Duration
	// OutcomeBeforeRelease makes a reveal wait for its outcome record's
	// write, as well as its intent's, before its code leaves; by default
	// the outcome is only queued (writeahead.go, docs/AUDIT.md).
	OutcomeBeforeRelease bool
	// Observer, if set, learns RPC latencies, denials and health checks
	// (metrics), and refused handshakes if it is a HandshakeObserver.
	Observer Observer
	// Events is the store's event outbox, read by SyncService.ListEvents
	// (events.go); without it that RPC fails with FAILED_PRECONDITION.
	Events EventLog
	// TracerProvider, if set, traces every RPC and its policy decision
	// (tracing.go); nil turns tracing off.
	TracerProvider trace.TracerProvider

	// Limits of the API listener; zero takes the Default* value
	// (listen.go explains each).
	MaxRecvMsgSize       int           // bytes of one request message
	MaxConcurrentStreams uint32        // RPCs one connection runs at once
	MaxConnections       int           // connections open at once
	HandshakeTimeout     time.Duration // TLS handshake and HTTP/2 set-up
	// HandshakeFailureRate is the failed handshakes a second the listener
	// absorbs before it slows its accepts; negative: no such bound.
	HandshakeFailureRate float64
	// RefusalRate is how many refusals a second one caller gets answered
	// before the next waits its turn (throttle.go); zero takes
	// DefaultRefusalRate, negative: no pacing.
	RefusalRate float64
}

func (cfg Config) withDefaults() Config {
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	if cfg.AuditTimeout <= 0 {
		cfg.AuditTimeout = 5 * time.Second
	}
	if cfg.CheckInterval <= 0 {
		cfg.CheckInterval = 5 * time.Second
	}
	if cfg.Observer == nil {
		cfg.Observer = nopObserver{}
	}
	if cfg.MaxRecvMsgSize <= 0 {
		cfg.MaxRecvMsgSize = DefaultMaxRecvMsgSize
	}
	if cfg.MaxConcurrentStreams == 0 {
		cfg.MaxConcurrentStreams = DefaultMaxConcurrentStreams
	}
	if cfg.MaxConnections <= 0 {
		cfg.MaxConnections = DefaultMaxConnections
	}
	if cfg.HandshakeTimeout <= 0 {
		cfg.HandshakeTimeout = DefaultHandshakeTimeout
	}
	if cfg.HandshakeFailureRate == 0 {
		cfg.HandshakeFailureRate = DefaultHandshakeFailureRate
	}
	if cfg.RefusalRate == 0 {
		cfg.RefusalRate = DefaultRefusalRate
	}
	return cfg
}

// Server is escrowd's gRPC server: the API listener, and optionally a
// plain health listener (ServeHealth) for orchestrators that have no
// client certificate.
type Server struct {
	tracer     trace.Tracer
	cfg        Config
	log        *zap.Logger
	grpc       *grpc.Server
	healthGRPC *grpc.Server
	health     *health.Server
	now        func() time.Time
	policy     atomic.Pointer[policy.Policy]
	// revocations are the client CRLs in force; nil: none.
	revocations atomic.Pointer[Revocations]
	// tlsBase is the API listener's TLS configuration but for the server
	// certificate and the client CAs, which creds holds (SetCredentials).
	tlsBase *tls.Config
	creds   atomic.Pointer[credState]
	credsMu sync.Mutex
	// verified remembers client certificate chains that verified.
	verified verifyCache
	codec    *markingCodec
	// methods and healthMethods are the full names the API listener
	// serves, for the pipeline's kindOf.
	methods, healthMethods map[string]bool
	budget                 *failureBudget
	handshakeLog           logLimiter
	refusals               refusalPacer

	// notServing is why health last reported NOT_SERVING (health.go).
	notServing notServingReasons

	watchOnce sync.Once
	stopOnce  sync.Once
	stop      chan struct{}
	wg        sync.WaitGroup
}

// HeaderRequestID carries the request id, which is also the audit record id.
const HeaderRequestID = "x-request-id"

// New builds a server. Call Serve to accept connections.
func New(cfg Config, opts ...grpc.ServerOption) (*Server, error) {
	if cfg.Escrow == nil || cfg.Auditor == nil || cfg.State == nil {
		return nil, errors.New("daemon: Escrow, Auditor and State are required")
	}
	if cfg.Policy == nil {
		return nil, errors.New("daemon: a policy is required")
	}
	if cfg.TLS == nil || len(cfg.TLS.Certificates) == 0 && cfg.TLS.GetCertificate == nil {
		return nil, errors.New("daemon: a TLS server certificate is required")
	}
	if cfg.ClientCAs == nil {
		return nil, errors.New("daemon: client CAs are required")
	}
	cfg = cfg.withDefaults()
	s := &Server{cfg: cfg, log: cfg.Logger, health: health.NewServer(), now: time.Now, stop: make(chan struct{}),
		codec: newMarkingCodec(), methods: map[string]bool{}, healthMethods: map[string]bool{}}
	for _, m := range Methods() {
		s.methods[m] = true
	}
	for _, m := range healthpb.Health_ServiceDesc.Methods {
		s.healthMethods[healthService+m.MethodName] = true
	}
	for _, m := range healthpb.Health_ServiceDesc.Streams {
		s.healthMethods[healthService+m.StreamName] = true
	}
	if cfg.HandshakeFailureRate > 0 {
		s.budget = newFailureBudget(cfg.HandshakeFailureRate)
	}
	s.refusals.rate = max(cfg.RefusalRate, 0)
	s.policy.Store(cfg.Policy)
	s.revocations.Store(cfg.Revocations)
	s.tlsBase = cfg.TLS.Clone()
	s.tlsBase.MinVersion = tls.VersionTLS13
	s.tlsBase.ClientAuth = tls.RequireAndVerifyClientCert
	s.tlsBase.VerifyConnection = s.verifyConn
	// No resumption: every connection presents and verifies its
	// certificate against the CAs and CRLs in force when it connects.
	s.tlsBase.SessionTicketsDisabled = true
	s.tlsBase.GetConfigForClient = nil
	var cert *tls.Certificate
	if len(cfg.TLS.Certificates) > 0 {
		cert = &cfg.TLS.Certificates[0]
	}
	s.SetCredentials(cert, cfg.ClientCAs)
	tc := s.tlsBase.Clone()
	tc.GetConfigForClient = func(*tls.ClientHelloInfo) (*tls.Config, error) { return s.creds.Load().tls, nil }
	opts = append(opts, s.tracingOptions()...)
	opts = append(opts,
		grpc.Creds(handshakeCreds{TransportCredentials: credentials.NewTLS(tc), s: s}),
		grpc.ForceServerCodecV2(s.codec),
		grpc.MaxRecvMsgSize(cfg.MaxRecvMsgSize),
		grpc.MaxConcurrentStreams(cfg.MaxConcurrentStreams),
		grpc.ConnectionTimeout(cfg.HandshakeTimeout),
		grpc.MaxHeaderListSize(maxHeaderListSize),
		grpc.StatsHandler(unrouted{s}),
		grpc.UnknownServiceHandler(unknownMethod),
		grpc.ChainUnaryInterceptor(s.unaryChain()...),
		grpc.ChainStreamInterceptor(s.streamChain()...),
	)
	s.grpc = grpc.NewServer(opts...)
	escrowdv1.RegisterSyncServiceServer(s.grpc, &syncService{s: s})
	escrowdv1.RegisterSupportServiceServer(s.grpc, &supportService{s: s})
	escrowdv1.RegisterSecurityServiceServer(s.grpc, &securityService{s: s})
	hs := drainingHealth{Server: s.health, stop: s.stop, reasons: &s.notServing}
	healthpb.RegisterHealthServer(s.grpc, hs)
	reflection.Register(s.grpc)

	// The health listener: plain gRPC, health only, small limits, and no
	// audit (it serves nothing else). Its chain is the metrics and
	// recovery stages of the API's.
	s.healthGRPC = grpc.NewServer(
		grpc.MaxRecvMsgSize(healthMaxRecvMsgSize),
		grpc.MaxConcurrentStreams(healthMaxStreams),
		grpc.ConnectionTimeout(cfg.HandshakeTimeout),
		grpc.MaxHeaderListSize(maxHeaderListSize),
		grpc.ChainUnaryInterceptor(s.beginUnary, interceptors.UnaryServerInterceptor(s.metricsStage()),
			recovery.UnaryServerInterceptor(recovery.WithRecoveryHandlerContext(s.recovered))),
		grpc.ChainStreamInterceptor(s.beginStream, interceptors.StreamServerInterceptor(s.metricsStage()),
			recovery.StreamServerInterceptor(recovery.WithRecoveryHandlerContext(s.recovered))),
	)
	healthpb.RegisterHealthServer(s.healthGRPC, hs)
	s.setServing(false)
	return s, nil
}

// credState is the server certificate and client CAs in force, and the
// TLS configuration handshakes take them from.
type credState struct {
	tls *tls.Config
	cas *x509.CertPool
}

// SetCredentials puts a server certificate (nil: keep the one in force)
// and client CAs (nil: keep those in force) in force for handshakes from
// now on, and for the chain verification of every request. Connections
// open stay open; chains remembered as verified are forgotten, so that a
// CA taken out of the bundle stops answering for its certificates at
// once.
func (s *Server) SetCredentials(cert *tls.Certificate, clientCAs *x509.CertPool) {
	s.credsMu.Lock()
	defer s.credsMu.Unlock()
	tc := s.tlsBase.Clone()
	old := s.creds.Load()
	switch {
	case cert != nil:
		tc.Certificates = []tls.Certificate{*cert}
	case old != nil:
		tc.Certificates = old.tls.Certificates
	}
	tc.ClientCAs = clientCAs
	if clientCAs == nil && old != nil {
		tc.ClientCAs = old.cas
	}
	s.creds.Store(&credState{tls: tc, cas: tc.ClientCAs})
	if clientCAs != nil {
		s.verified.reset()
	}
}

// SetPolicy puts p in force for requests that arrive from now on; those
// in flight finish under the policy they started with.
func (s *Server) SetPolicy(p *policy.Policy) { s.policy.Store(p) }

var serviceNames = []string{
	"",
	escrowdv1.SyncService_ServiceDesc.ServiceName,
	escrowdv1.SupportService_ServiceDesc.ServiceName,
	escrowdv1.SecurityService_ServiceDesc.ServiceName,
}

func (s *Server) setServing(ok bool) {
	st := healthpb.HealthCheckResponse_NOT_SERVING
	if ok {
		st = healthpb.HealthCheckResponse_SERVING
	}
	for _, n := range serviceNames {
		s.health.SetServingStatus(n, st)
	}
}

// startChecks runs the dependency checks, once, from the first Serve.
func (s *Server) startChecks() {
	s.watchOnce.Do(func() {
		s.checkHealth()
		s.wg.Add(1)
		go s.watchHealth()
	})
}

// Serve accepts API connections on lis until Shutdown, within the
// listener limits of Config.
func (s *Server) Serve(lis net.Listener) error {
	s.startChecks()
	err := s.grpc.Serve(guard(lis, s.cfg.MaxConnections, s.budget))
	if errors.Is(err, grpc.ErrServerStopped) {
		return nil
	}
	return err
}

// ServeHealth serves gRPC health alone, in plain text, on lis until
// Shutdown: for orchestrators' probes, which carry no client certificate.
// It takes at most 64 connections, 4 streams each.
func (s *Server) ServeHealth(lis net.Listener) error {
	s.startChecks()
	err := s.healthGRPC.Serve(guard(lis, healthMaxConnections, nil))
	if errors.Is(err, grpc.ErrServerStopped) {
		return nil
	}
	return err
}

// Shutdown stops accepting requests, lets running ones finish until ctx
// ends, then cuts the rest. Health reports NOT_SERVING from its first
// moment, and health Watch streams end with that status, so that load
// balancers stop sending traffic while the requests drain.
func (s *Server) Shutdown(ctx context.Context) {
	s.health.Shutdown()
	s.stopOnce.Do(func() { close(s.stop) })
	done := make(chan struct{})
	go func() {
		var wg sync.WaitGroup
		for _, g := range []*grpc.Server{s.grpc, s.healthGRPC} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				g.GracefulStop()
			}()
		}
		wg.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-ctx.Done():
		s.grpc.Stop()
		s.healthGRPC.Stop()
		<-done
	}
	s.wg.Wait()
}

func (s *Server) watchHealth() {
	defer s.wg.Done()
	t := time.NewTicker(s.cfg.CheckInterval)
	defer t.Stop()
	for {
		select {
		case <-s.stop:
			return
		case <-t.C:
			s.checkHealth()
		}
	}
}

func (s *Server) checkHealth() {
	var reasons []string
	for name, c := range s.cfg.Checks {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		err := c.Healthy(ctx)
		cancel()
		s.cfg.Observer.ObserveCheck(name, err == nil)
		if err != nil {
			reasons = append(reasons, healthReason(name, err))
			s.log.Warn("dependency unhealthy", zap.String("dependency", name), zap.Error(err))
		}
	}
	s.notServing.set(reasons)
	s.setServing(len(reasons) == 0)
}
