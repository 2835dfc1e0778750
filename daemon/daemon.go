// Package daemon serves escrowd's gRPC API. It owns everything gRPC: the
// interceptor that audits every request before its result is released,
// the mapping of errors to status codes, health and reflection. Handlers
// only translate between protobuf messages and the escrow package.
package daemon

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"runtime/debug"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/reflection"
	"google.golang.org/grpc/status"

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
	// TLS holds the server certificate. The server requires TLS 1.3 and
	// asks every caller for a client certificate, verified against
	// ClientCAs.
	TLS       *tls.Config
	ClientCAs *x509.CertPool
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
	// Observer, if set, learns RPC latencies, denials and health checks
	// (metrics).
	Observer Observer
	// Events is the store's event outbox, read by SyncService.ListEvents
	// (events.go); without it that RPC fails with FAILED_PRECONDITION.
	Events EventLog
}

// Server is escrowd's gRPC server.
type Server struct {
	cfg    Config
	log    *zap.Logger
	grpc   *grpc.Server
	health *health.Server
	now    func() time.Time
	policy atomic.Pointer[policy.Policy]
	// verified remembers client certificate chains that verified.
	verified verifyCache

	stopOnce sync.Once
	stop     chan struct{}
	wg       sync.WaitGroup
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
	s := &Server{cfg: cfg, log: cfg.Logger, health: health.NewServer(), now: time.Now, stop: make(chan struct{})}
	s.policy.Store(cfg.Policy)
	tc := cfg.TLS.Clone()
	tc.MinVersion = tls.VersionTLS13
	// Ask, verify in the interceptor: see identity.
	tc.ClientAuth = tls.RequestClientCert
	opts = append(opts, grpc.Creds(credentials.NewTLS(tc)), grpc.ChainUnaryInterceptor(s.intercept))
	s.grpc = grpc.NewServer(opts...)
	escrowdv1.RegisterSyncServiceServer(s.grpc, &syncService{s: s})
	escrowdv1.RegisterSupportServiceServer(s.grpc, &supportService{s: s})
	escrowdv1.RegisterSecurityServiceServer(s.grpc, &securityService{s: s})
	healthpb.RegisterHealthServer(s.grpc, drainingHealth{Server: s.health, stop: s.stop})
	reflection.Register(s.grpc)
	s.setServing(false)
	return s, nil
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

// Serve accepts connections on lis until Shutdown.
func (s *Server) Serve(lis net.Listener) error {
	s.checkHealth()
	s.wg.Add(1)
	go s.watchHealth()
	err := s.grpc.Serve(lis)
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
		s.grpc.GracefulStop()
		close(done)
	}()
	select {
	case <-done:
	case <-ctx.Done():
		s.grpc.Stop()
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
	ok := true
	for name, c := range s.cfg.Checks {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		err := c.Healthy(ctx)
		cancel()
		s.cfg.Observer.ObserveCheck(name, err == nil)
		if err != nil {
			ok = false
			s.log.Warn("dependency unhealthy", zap.String("dependency", name), zap.Error(err))
		}
	}
	s.setServing(ok)
}

type recordKey struct{}

// record returns the audit record of the request in ctx, for handlers to
// fill in what they learn (group, user, key versions).
func record(ctx context.Context) *audit.Record {
	if r, ok := ctx.Value(recordKey{}).(*audit.Record); ok {
		return r
	}
	// Handlers always run under intercept; a bare record keeps them safe
	// if called directly.
	return &audit.Record{}
}

func unaudited(method string) bool {
	// Health probes carry no key operation, need no certificate (load
	// balancers probe without one) and would flood the trail.
	return method == "/grpc.health.v1.Health/Check" || method == "/grpc.health.v1.Health/List"
}

func isReflection(method string) bool {
	return strings.HasPrefix(method, "/grpc.reflection.")
}

// intercept authenticates, authorises, rate-limits and audits every
// request, and releases a result only once its record is committed.
func (s *Server) intercept(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	if unaudited(info.FullMethod) {
		start := time.Now()
		resp, err := handler(ctx, req)
		s.cfg.Observer.ObserveRPC(info.FullMethod, status.Code(err).String(), time.Since(start))
		return resp, err
	}
	start := s.now()
	pol := s.policy.Load()
	id := s.identify(ctx)
	rec := &pendingRecord{Record: audit.Record{
		ID:        audit.NewID(start),
		Time:      start.UTC(),
		Caller:    id.name(pol),
		Operation: info.FullMethod,
	}}
	rec.Group, rec.User, rec.Ticket = requestFields(req)
	_ = grpc.SetHeader(ctx, metadata.Pairs(HeaderRequestID, rec.ID))

	var resp any
	err := s.admit(ctx, req, info.FullMethod, pol, id, rec)
	if err == nil {
		ctx = context.WithValue(ctx, callerKey{}, id.match(pol))
		ctx = context.WithValue(ctx, policyKey{}, pol)
		if a := rec.approver; a != "" {
			ctx = context.WithValue(ctx, approverKey{}, a)
		}
		resp, err = s.call(context.WithValue(ctx, recordKey{}, &rec.Record), req, handler)
	}
	return s.finish(ctx, start, rec, info.FullMethod, resp, err)
}

// pendingRecord is an audit record with what the admission learned.
type pendingRecord struct {
	audit.Record
	approver string
	denial   string // a Denial* reason if the rules refused the request
}

// admit decides whether the request may run: a verified certificate, a
// policy grant, room in its rate limits, and for dual-control operations a
// second identity's approval.
func (s *Server) admit(ctx context.Context, req any, method string, pol *policy.Policy, id identity, rec *pendingRecord) error {
	if len(id.ids) == 0 {
		rec.denial = DenialCertificate
		return status.Error(codes.Unauthenticated, "a client certificate is required")
	}
	if id.err != nil {
		rec.denial = DenialCertificate
		return status.Error(codes.Unauthenticated, id.err.Error())
	}
	if isReflection(method) {
		return nil
	}
	op := operation(method)
	d := pol.Decide(policy.Request{
		Identity: id.match(pol), Operation: op,
		Group: rec.Group, User: rec.User, Ticket: rec.Ticket, Targets: targets(req),
		Batch: batched(req),
	})
	if err := invalidDecision(d); err != nil {
		return err
	}
	if !d.Allow {
		rec.denial = denialFor(d.Rule)
		return status.Error(codes.PermissionDenied, d.Reason)
	}
	if full, err := s.takeRate(ctx, req, d); err != nil {
		if full != nil {
			rec.denial = DenialRateLimit
		}
		return err
	}
	if d.DualControl {
		if err := s.beforeApproval(ctx, req); err != nil {
			return err
		}
		approver, err := s.awaitApproval(ctx, op, id.match(pol), d.ApprovalTimeout, rec)
		if err != nil {
			if status.Code(err) == codes.PermissionDenied {
				rec.denial = DenialApproval
			}
			return err
		}
		rec.approver = pol.Name(approver)
		rec.Detail = append(rec.Detail, "approved-by:"+approver)
	}
	return nil
}

// denialFor maps the policy rule that refused a request to its Denial*
// reason.
func denialFor(rule string) string {
	switch rule {
	case policy.RuleRole:
		return DenialRole
	case policy.RuleTicket:
		return DenialTicket
	}
	return DenialIdentity
}

// awaitApproval records a pending request and waits for a second identity
// to approve it through ApproveReveal, on this replica or another.
func (s *Server) awaitApproval(ctx context.Context, op, requester string, timeout time.Duration, rec *pendingRecord) (string, error) {
	now := s.now()
	a := store.Approval{ID: rec.ID, Operation: op, Group: rec.Group, User: rec.User, Ticket: rec.Ticket,
		Requester: requester, Created: now.UTC(), Expires: now.Add(timeout).UTC()}
	if err := s.cfg.State.CreateApproval(ctx, a); err != nil {
		return "", fmt.Errorf("%w: approvals: %w", escrow.ErrUnavailable, err)
	}
	t := time.NewTicker(approvalPoll)
	defer t.Stop()
	for {
		got, err := s.cfg.State.Approval(ctx, a.ID)
		if err != nil && ctx.Err() == nil {
			return "", fmt.Errorf("%w: approvals: %w", escrow.ErrUnavailable, err)
		}
		if got.Approver != "" {
			return got.Approver, nil
		}
		if !s.now().Before(a.Expires) {
			return "", status.Errorf(codes.PermissionDenied,
				"group %s needs a second technician's approval, and none came within %s (pending request %s)", a.Group, timeout, a.ID)
		}
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case <-t.C:
		}
	}
}

// finish maps the outcome to a status, commits the audit record, and only
// then releases the response.
func (s *Server) finish(ctx context.Context, start time.Time, rec *pendingRecord, method string, resp any, err error) (any, error) {
	st := s.status(rec.ID, err)
	rec.Code = st.Code().String()
	switch st.Code() {
	case codes.OK:
		rec.Outcome = audit.OutcomeOK
	case codes.PermissionDenied, codes.Unauthenticated, codes.ResourceExhausted:
		rec.Outcome, rec.Reason = audit.OutcomeDenied, st.Message()
	default:
		rec.Outcome, rec.Reason = audit.OutcomeError, st.Message()
	}
	// A caller that hangs up does not cancel the record of what was done.
	actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.cfg.AuditTimeout)
	aerr := s.cfg.Auditor.Commit(actx, &rec.Record)
	cancel()
	fields := []zap.Field{
		zap.String("request_id", rec.ID), zap.String("method", method),
		zap.String("identity", rec.Caller), zap.String("code", rec.Code),
		zap.Duration("duration", s.now().Sub(start)),
	}
	if rec.Group != "" {
		fields = append(fields, zap.String("group", rec.Group))
	}
	if rec.denial != "" {
		s.cfg.Observer.ObserveDenial(operation(method), rec.denial)
	}
	if aerr != nil {
		s.log.Error("audit commit failed; result withheld", append(fields, zap.Error(aerr))...)
		s.cfg.Observer.ObserveRPC(method, codes.Unavailable.String(), s.now().Sub(start))
		return nil, status.Errorf(codes.Unavailable,
			"the audit trail cannot record this request, so its result is withheld; retry later (request %s)", rec.ID)
	}
	switch st.Code() {
	case codes.Internal, codes.Unknown:
		s.log.Error("request failed", append(fields, zap.Error(err))...)
	case codes.PermissionDenied, codes.Unauthenticated, codes.ResourceExhausted:
		s.log.Warn("request denied", append(fields, zap.String("reason", st.Message()))...)
	default:
		s.log.Info("request", fields...)
	}
	s.cfg.Observer.ObserveRPC(method, rec.Code, s.now().Sub(start))
	if st.Code() != codes.OK {
		return nil, st.Err()
	}
	return resp, nil
}

// call runs the handler, turning a panic into an Internal error so that
// the request is still audited.
func (s *Server) call(ctx context.Context, req any, handler grpc.UnaryHandler) (resp any, err error) {
	defer func() {
		if p := recover(); p != nil {
			s.log.Error("handler panic", zap.String("panic", fmt.Sprint(p)), zap.ByteString("stack", debug.Stack()))
			resp, err = nil, errPanic
		}
	}()
	return handler(ctx, req)
}

var errPanic = errors.New("handler panic")
