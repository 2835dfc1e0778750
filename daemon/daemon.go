// Package daemon serves escrowd's gRPC API. It owns everything gRPC: the
// interceptor that audits every request before its result is released,
// the mapping of errors to status codes, health and reflection. Handlers
// only translate between protobuf messages and the escrow package.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"net"
	"runtime/debug"
	"sync"
	"time"

	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/reflection"
	"google.golang.org/grpc/status"

	escrowdv1 "github.com/escrowd/escrowd/api/escrowd/v1"
	"github.com/escrowd/escrowd/audit"
	"github.com/escrowd/escrowd/escrow"
	"github.com/escrowd/escrowd/hsm"
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
}

// Versions manages a group's key versions (SecurityService and
// SyncService.RewrapEscrowSlot).
type Versions interface {
	RewrapEscrowSlot(ctx context.Context, group string, escrowSlot []byte) ([]byte, escrow.Used, error)
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

// Config wires a Server.
type Config struct {
	Escrow  Escrow
	Auditor Auditor
	// Versions and Jobs are optional: without them their RPCs fail with
	// FAILED_PRECONDITION.
	Versions Versions
	Jobs     Jobs
	Objects  ObjectLister
	// Checks gate the health service: while any fails, every service
	// reports NOT_SERVING. Keyed by a name used in logs.
	Checks        map[string]Checker
	CheckInterval time.Duration
	Logger        *zap.Logger
	// AuditTimeout bounds the audit commit of one request.
	AuditTimeout time.Duration
}

// Server is escrowd's gRPC server.
type Server struct {
	cfg    Config
	log    *zap.Logger
	grpc   *grpc.Server
	health *health.Server
	now    func() time.Time

	stopOnce sync.Once
	stop     chan struct{}
	wg       sync.WaitGroup
}

// HeaderRequestID carries the request id, which is also the audit record id.
const HeaderRequestID = "x-request-id"

// New builds a server. Call Serve to accept connections.
func New(cfg Config, opts ...grpc.ServerOption) (*Server, error) {
	if cfg.Escrow == nil || cfg.Auditor == nil {
		return nil, errors.New("daemon: Escrow and Auditor are required")
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
	s := &Server{cfg: cfg, log: cfg.Logger, health: health.NewServer(), now: time.Now, stop: make(chan struct{})}
	opts = append(opts, grpc.ChainUnaryInterceptor(s.intercept))
	s.grpc = grpc.NewServer(opts...)
	escrowdv1.RegisterSyncServiceServer(s.grpc, &syncService{s: s})
	escrowdv1.RegisterSupportServiceServer(s.grpc, &supportService{s: s})
	escrowdv1.RegisterSecurityServiceServer(s.grpc, &securityService{s: s})
	healthpb.RegisterHealthServer(s.grpc, s.health)
	reflection.Register(s.grpc)
	s.setServing(false)
	return s, nil
}

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
// ends, then cuts the rest.
func (s *Server) Shutdown(ctx context.Context) {
	s.stopOnce.Do(func() { close(s.stop) })
	s.health.Shutdown()
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
	// Health probes and reflection carry no key operation and would
	// flood the trail.
	return method == "/grpc.health.v1.Health/Check" || method == "/grpc.health.v1.Health/List" ||
		len(method) > 21 && method[:21] == "/grpc.reflection.v1."
}

// intercept audits every request, allowed or failed, and releases the
// result only once its record is committed.
func (s *Server) intercept(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	if unaudited(info.FullMethod) {
		return handler(ctx, req)
	}
	start := s.now()
	rec := &audit.Record{
		ID:        audit.NewID(start),
		Time:      start.UTC(),
		Caller:    caller(ctx),
		Operation: info.FullMethod,
	}
	_ = grpc.SetHeader(ctx, metadata.Pairs(HeaderRequestID, rec.ID))
	resp, err := s.call(context.WithValue(ctx, recordKey{}, rec), req, handler)
	st := s.status(rec.ID, err)
	rec.Code = st.Code().String()
	switch {
	case st.Code() == codes.OK:
		rec.Outcome = audit.OutcomeOK
	case st.Code() == codes.PermissionDenied || st.Code() == codes.Unauthenticated:
		rec.Outcome, rec.Reason = audit.OutcomeDenied, st.Message()
	default:
		rec.Outcome, rec.Reason = audit.OutcomeError, st.Message()
	}
	// A caller that hangs up does not cancel the record of what was done.
	actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.cfg.AuditTimeout)
	aerr := s.cfg.Auditor.Commit(actx, rec)
	cancel()
	fields := []zap.Field{
		zap.String("request_id", rec.ID), zap.String("method", info.FullMethod),
		zap.String("caller", rec.Caller), zap.String("code", rec.Code),
		zap.Duration("duration", s.now().Sub(start)),
	}
	if rec.Group != "" {
		fields = append(fields, zap.String("group", rec.Group))
	}
	if aerr != nil {
		s.log.Error("audit commit failed; result withheld", append(fields, zap.Error(aerr))...)
		return nil, status.Errorf(codes.Unavailable,
			"the audit trail cannot record this request, so its result is withheld; retry later (request %s)", rec.ID)
	}
	if st.Code() == codes.Internal || st.Code() == codes.Unknown {
		s.log.Error("request failed", append(fields, zap.Error(err))...)
	} else {
		s.log.Info("request", fields...)
	}
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

// caller names the peer. Until mutual TLS identities are configured, a
// caller is known only by its address.
func caller(ctx context.Context) string {
	if p, ok := peer.FromContext(ctx); ok && p.Addr != nil {
		return "anonymous@" + p.Addr.String()
	}
	return "anonymous"
}
