package daemon

import (
	"context"
	"errors"
	"fmt"
	"runtime/debug"
	"strings"
	"sync/atomic"
	"time"

	middleware "github.com/grpc-ecosystem/go-grpc-middleware/v2"
	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors"
	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/auth"
	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/logging"
	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/recovery"
	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/selector"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/stats"
	"google.golang.org/grpc/status"

	"github.com/escrowd/escrowd/audit"
	"github.com/escrowd/escrowd/escrow"
	"github.com/escrowd/escrowd/policy"
	"github.com/escrowd/escrowd/store"
)

// The request pipeline. Every RPC of the API listener, unary or
// streaming, passes one chain of interceptors, one concern each, in the
// order of go-grpc-middleware's examples/server (metrics → logging → auth
// → recovery), with audit and the policy between:
//
//	begin        the per-request value (call): request id, the policy in force
//	metrics      Observer.ObserveRPC with the code the caller got
//	logging      one line per request, when it ends
//	audit        the record, committed before the result is released
//	authenticate the caller's verified certificate → identity
//	validate     the message decoded; ids and tickets bounded (validate.go)
//	authorize    policy, rate limits, dual control
//	recovery     a handler's panic → INTERNAL, still audited
//
// Health skips logging, audit and the three checks: it needs no
// certificate on the health listener, touches no key, and would flood the
// trail. An RPC grpc-go refuses before the chain (a message over the size
// limit) is still counted, logged and recorded, by unrouted.

// kind sorts the methods the API listener can be asked for.
type kind int

const (
	kindAPI kind = iota
	kindHealth
	kindReflection
	kindUnknown
)

// call is one RPC as the stages see it. begin makes it; the stages fill
// it in, each its own part; audit reads it last.
type call struct {
	start  time.Time
	method string
	kind   kind
	pol    *policy.Policy // in force when the call arrived, for all of it
	who    identity       // set by authenticate
	rec    audit.Record   // the audit record; fields enter it only once checked
	// admitted: the call passed authorize, so its handler ran and may
	// release something. A call refused before is a refusal.
	admitted bool
	denial   string  // a Denial* reason when the rules refused the call
	approver string  // the second technician of a dual-control call
	intent   *intent // the intent record of a call that changes state (writeahead.go)
}

type callKey struct{}

func callFrom(ctx context.Context) *call {
	c, _ := ctx.Value(callKey{}).(*call)
	if c == nil {
		// Handlers always run under the chain; a bare call keeps them
		// safe if called directly.
		c = &call{}
	}
	return c
}

// label is the method as a metric label: from a fixed set, never the
// name a caller made up.
func (c *call) label() string {
	if c.kind == kindUnknown {
		return "unknown"
	}
	return c.method
}

// record returns the audit record of the request in ctx, for handlers to
// fill in what they learn (key versions, details).
func record(ctx context.Context) *audit.Record { return &callFrom(ctx).rec }

const (
	healthService  = "/grpc.health.v1.Health/"
	reflectionV1   = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"
	reflectionV1a  = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
	maxMethodBytes = 128
)

func (s *Server) kindOf(method string) kind {
	switch {
	case s.methods[method]:
		return kindAPI
	case strings.HasPrefix(method, healthService) && s.healthMethods[method]:
		return kindHealth
	case method == reflectionV1 || method == reflectionV1a:
		return kindReflection
	}
	return kindUnknown
}

// operationName is the method as the audit record names it: an unknown
// method's name is the caller's, so it is kept only if short and
// printable.
func operationName(method string, k kind) string {
	if k != kindUnknown {
		return method
	}
	if len(method) > maxMethodBytes {
		return fmt.Sprintf("(unknown method of %d bytes)", len(method))
	}
	for i := 0; i < len(method); i++ {
		if c := method[i]; c <= ' ' || c > '~' {
			return "(unknown method, not printable)"
		}
	}
	return method
}

func notHealth(ctx context.Context, _ interceptors.CallMeta) bool {
	return callFrom(ctx).kind != kindHealth
}

// unaryChain and streamChain are the pipeline; the same stages in the
// same order.
func (s *Server) unaryChain() []grpc.UnaryServerInterceptor {
	m := selector.MatchFunc(notHealth)
	return []grpc.UnaryServerInterceptor{
		s.beginUnary,
		interceptors.UnaryServerInterceptor(s.metricsStage()),
		selector.UnaryServerInterceptor(logging.UnaryServerInterceptor(zapLogger(s.log), s.loggingOptions()...), m),
		selector.UnaryServerInterceptor(s.auditUnary, m),
		selector.UnaryServerInterceptor(auth.UnaryServerInterceptor(s.authenticate), m),
		selector.UnaryServerInterceptor(s.validateUnary, m),
		selector.UnaryServerInterceptor(s.authorizeUnary, m),
		recovery.UnaryServerInterceptor(recovery.WithRecoveryHandlerContext(s.recovered)),
	}
}

func (s *Server) streamChain() []grpc.StreamServerInterceptor {
	m := selector.MatchFunc(notHealth)
	return []grpc.StreamServerInterceptor{
		s.beginStream,
		interceptors.StreamServerInterceptor(s.metricsStage()),
		selector.StreamServerInterceptor(logging.StreamServerInterceptor(zapLogger(s.log), s.loggingOptions()...), m),
		selector.StreamServerInterceptor(s.auditStream, m),
		selector.StreamServerInterceptor(auth.StreamServerInterceptor(s.authenticate), m),
		selector.StreamServerInterceptor(s.validateStream, m),
		selector.StreamServerInterceptor(s.authorizeStream, m),
		recovery.StreamServerInterceptor(recovery.WithRecoveryHandlerContext(s.recovered)),
	}
}

// begin makes the call of an RPC. Every call but health gets a request
// id, sent at once in the x-request-id header: the id of its audit record.
func (s *Server) begin(ctx context.Context, method string) context.Context {
	if t, ok := ctx.Value(tagKey{}).(*rpcTag); ok {
		t.entered.Store(true)
	}
	now := s.now()
	c := &call{start: now, method: method, kind: s.kindOf(method), pol: s.policy.Load()}
	if c.kind != kindHealth {
		c.rec = audit.Record{ID: audit.NewID(now), Time: now.UTC(), Operation: operationName(method, c.kind)}
		_ = grpc.SetHeader(ctx, metadata.Pairs(HeaderRequestID, c.rec.ID))
	}
	return context.WithValue(ctx, callKey{}, c)
}

func (s *Server) beginUnary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	return handler(s.begin(ctx, info.FullMethod), req)
}

func (s *Server) beginStream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	w := middleware.WrapServerStream(ss)
	w.WrappedContext = s.begin(ss.Context(), info.FullMethod)
	return handler(srv, w)
}

// metricsStage reports every RPC to the Observer with the code its caller
// got: the audit stage's UNAVAILABLE included, since it runs inside.
func (s *Server) metricsStage() interceptors.ServerReportable {
	return interceptors.CommonReportableFunc(func(ctx context.Context, _ interceptors.CallMeta) (interceptors.Reporter, context.Context) {
		return rpcReporter{obs: s.cfg.Observer, method: callFrom(ctx).label()}, ctx
	})
}

type rpcReporter struct {
	interceptors.NoopReporter
	obs    Observer
	method string
}

func (r rpcReporter) PostCall(err error, took time.Duration) {
	r.obs.ObserveRPC(r.method, status.Code(err).String(), took)
}

// loggingOptions: one line per request, when it ends ("finished call"),
// with the request id, the full method, the caller and the group beside
// the middleware's own fields (grpc.code, grpc.error: the message the
// caller got, grpc.time_ms).
func (s *Server) loggingOptions() []logging.Option {
	return []logging.Option{
		logging.WithLogOnEvents(logging.FinishCall),
		logging.WithLevels(logLevel),
		logging.WithFieldsFromContext(func(ctx context.Context) logging.Fields {
			c := callFrom(ctx)
			f := logging.Fields{"request_id", c.rec.ID, "method", c.rec.Operation, "identity", c.rec.Caller}
			if c.rec.Group != "" {
				f = append(f, "group", c.rec.Group)
			}
			return f
		}),
	}
}

func logLevel(code codes.Code) logging.Level {
	switch code {
	case codes.Internal, codes.Unknown, codes.DataLoss:
		return logging.LevelError
	case codes.PermissionDenied, codes.Unauthenticated, codes.ResourceExhausted, codes.Unavailable:
		return logging.LevelWarn
	}
	return logging.LevelInfo
}

// zapLogger adapts zap to go-grpc-middleware's logging.Logger, as the
// middleware's zap example does. The caller of every request line would
// be the middleware: it is left out.
func zapLogger(l *zap.Logger) logging.Logger {
	l = l.WithOptions(zap.WithCaller(false))
	return logging.LoggerFunc(func(_ context.Context, lvl logging.Level, msg string, fields ...any) {
		f := make([]zap.Field, 0, len(fields)/2)
		for i := logging.Fields(fields).Iterator(); i.Next(); {
			k, v := i.At()
			f = append(f, zap.Any(k, v))
		}
		switch lvl {
		case logging.LevelDebug:
			l.Debug(msg, f...)
		case logging.LevelInfo:
			l.Info(msg, f...)
		case logging.LevelWarn:
			l.Warn(msg, f...)
		default:
			l.Error(msg, f...)
		}
	})
}

// auditUnary commits the call's record and only then releases the
// response.
func (s *Server) auditUnary(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	resp, err := handler(ctx, req)
	if err := s.settle(ctx, callFrom(ctx), err); err != nil {
		return nil, err
	}
	return resp, nil
}

// auditStream records a stream once: before its first message goes out,
// or when it ends if it sends none. No message leaves before the record
// is committed.
func (s *Server) auditStream(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	as := &auditedStream{ServerStream: ss, s: s, c: callFrom(ss.Context())}
	err := handler(srv, as)
	if as.settled {
		if as.failed != nil {
			return as.failed
		}
		return err
	}
	as.settled = true
	return s.settle(ss.Context(), as.c, err)
}

// auditedStream commits its call's record before the first message it
// sends. A handler sends from one goroutine, as grpc-go requires.
type auditedStream struct {
	grpc.ServerStream
	s       *Server
	c       *call
	settled bool
	failed  error
}

func (a *auditedStream) SendMsg(m any) error {
	if !a.settled {
		a.settled = true
		a.failed = a.s.settle(a.Context(), a.c, nil)
	}
	if a.failed != nil {
		return a.failed
	}
	return a.ServerStream.SendMsg(m)
}

// settle maps the call's outcome to the status its caller gets, commits
// its record and reports it. It returns that status, or UNAVAILABLE when
// the record could not be committed: then nothing of the result leaves.
//
// A call refused before its handler ran releases nothing, so its record
// goes to the auditor's refusal lane if it has one (RefusalAuditor): a
// flood of refusals then cannot delay or fail the records of results. And
// a caller refused more than RefusalRate times a second waits its turn
// first.
func (s *Server) settle(ctx context.Context, c *call, err error) error {
	err = s.endIntent(c, err)
	st := s.status(c.rec.ID, err)
	c.rec.Code = st.Code().String()
	switch st.Code() {
	case codes.OK:
		c.rec.Outcome = audit.OutcomeOK
	case codes.PermissionDenied, codes.Unauthenticated, codes.ResourceExhausted:
		c.rec.Outcome, c.rec.Reason = audit.OutcomeDenied, st.Message()
	default:
		c.rec.Outcome, c.rec.Reason = audit.OutcomeError, st.Message()
	}
	if !c.admitted {
		// A caller refused again and again waits its turn (throttle.go).
		s.refusals.wait(ctx, c.rec.Caller, s.now())
	}
	// A caller that hangs up does not cancel the record of what was done.
	actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.cfg.AuditTimeout)
	var aerr error
	if ra, ok := s.cfg.Auditor.(RefusalAuditor); ok && !c.admitted {
		aerr = ra.CommitRefusal(actx, &c.rec)
	} else if queued, qerr := s.queueOutcome(actx, c); queued {
		aerr = qerr
	} else {
		aerr = s.cfg.Auditor.Commit(actx, &c.rec)
	}
	cancel()
	if c.denial != "" {
		s.cfg.Observer.ObserveDenial(operation(c.label()), c.denial)
	}
	if aerr != nil && c.intent != nil {
		return s.outcomeFailed(c, aerr)
	}
	if aerr != nil {
		s.log.Error("audit commit failed; result withheld", zap.String("request_id", c.rec.ID),
			zap.String("method", c.rec.Operation), zap.Error(aerr))
		return status.Errorf(codes.Unavailable,
			"the audit trail cannot record this request, so its result is withheld; retry later (request %s)", c.rec.ID)
	}
	if code := st.Code(); code == codes.Internal || code == codes.Unknown {
		// The caller got the request id only; the log keeps the cause.
		s.log.Error("request failed", zap.String("request_id", c.rec.ID), zap.String("method", c.rec.Operation), zap.Error(err))
	}
	return st.Err()
}

// authenticate names the caller by its verified client certificate. The
// TLS handshake of the API listener already refused a connection without
// one; this checks the chain again at each request (remembered: see
// identify), so that a certificate that expires during a long connection
// stops working when it expires.
func (s *Server) authenticate(ctx context.Context) (context.Context, error) {
	c := callFrom(ctx)
	c.who = s.identify(ctx)
	c.rec.Caller = c.who.name(c.pol)
	if len(c.who.ids) == 0 {
		c.denial = DenialCertificate
		return nil, status.Error(codes.Unauthenticated, "a client certificate is required")
	}
	if c.who.err == nil {
		// A SPIFFE ID counts only from a CA its trust domain is bound to
		// (the policy's trust_domains).
		c.who.err = c.pol.CheckIssuer(c.who.spiffeIDs(), c.who.issuers)
		if c.who.err != nil {
			c.rec.Caller = c.who.name(c.pol)
		}
	}
	if c.who.err != nil {
		c.denial = DenialCertificate
		return nil, status.Error(codes.Unauthenticated, c.who.err.Error())
	}
	return context.WithValue(ctx, callerKey{}, c.who.match(c.pol)), nil
}

func (s *Server) validateUnary(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	if err := s.validate(callFrom(ctx), req); err != nil {
		return nil, err
	}
	return handler(ctx, req)
}

// validateStream refuses, INVALID_ARGUMENT, a stream message that did not
// decode. Stream messages never enter a record or a policy decision.
func (s *Server) validateStream(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	return handler(srv, &checkedStream{ServerStream: ss, codec: s.codec})
}

type checkedStream struct {
	grpc.ServerStream
	codec *markingCodec
}

func (c *checkedStream) RecvMsg(m any) error {
	if err := c.ServerStream.RecvMsg(m); err != nil {
		return err
	}
	if c.codec.malformed(m) {
		return errMalformed(m)
	}
	return nil
}

func (s *Server) authorizeUnary(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	ctx, err := s.authorize(ctx, callFrom(ctx), req)
	if err != nil {
		return nil, err
	}
	return handler(ctx, req)
}

func (s *Server) authorizeStream(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	ctx, err := s.authorize(ss.Context(), callFrom(ss.Context()), nil)
	if err != nil {
		return err
	}
	w := middleware.WrapServerStream(ss)
	w.WrappedContext = ctx
	return handler(srv, w)
}

// authorize decides whether the call may run. An API call needs a policy
// grant, room in its rate limits and, for dual-control operations, a
// second identity's approval; reflection needs an identity the policy
// lists; a method escrowd does not serve is refused.
//
// req is the request message of a unary call (nil for a stream): what the
// call produces (its targets), whether it is a batch, and its ids for the
// rate limits and the checks before a dual-control wait come from it.
func (s *Server) authorize(ctx context.Context, c *call, req any) (context.Context, error) {
	pol := c.pol
	me := c.who.match(pol)
	switch c.kind {
	case kindUnknown:
		return nil, status.Error(codes.Unimplemented, "escrowd serves no such method")
	case kindReflection:
		if !pol.Has(me) {
			c.denial = DenialIdentity
			return nil, status.Errorf(codes.PermissionDenied, "identity %s is not in the policy", me)
		}
	case kindAPI:
		op := operation(c.method)
		d := s.decide(ctx, pol, policy.Request{
			Identity: me, Operation: op,
			Group: c.rec.Group, User: c.rec.User, Ticket: c.rec.Ticket, Targets: targets(req),
			Batch: batched(req),
		})
		if err := invalidDecision(d); err != nil {
			return nil, err
		}
		if !d.Allow {
			c.denial = denialFor(d.Rule)
			return nil, status.Error(codes.PermissionDenied, d.Reason)
		}
		if full, err := s.takeRate(ctx, req, d); err != nil {
			if full != nil {
				c.denial = DenialRateLimit
			}
			return nil, err
		}
		// Items of a batch are decided one by one by the handler, under
		// the policy the call was admitted under.
		ctx = context.WithValue(ctx, policyKey{}, pol)
		var err error
		if ctx, err = s.beginIntent(ctx, c, d.DualControl); err != nil {
			return nil, err
		}
		if d.DualControl {
			if err := s.beforeApproval(ctx, req); err != nil {
				return nil, err
			}
			approver, err := s.awaitApproval(ctx, op, me, d.ApprovalTimeout, c)
			if err != nil {
				if status.Code(err) == codes.PermissionDenied {
					c.denial = DenialApproval
				}
				return nil, err
			}
			c.approver = pol.Name(approver)
			c.rec.Detail = append(c.rec.Detail, "approved-by:"+approver)
			ctx = context.WithValue(ctx, approverKey{}, c.approver)
		}
	}
	c.admitted = true
	return ctx, nil
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
func (s *Server) awaitApproval(ctx context.Context, op, requester string, timeout time.Duration, c *call) (string, error) {
	now := s.now()
	a := store.Approval{ID: c.rec.ID, Operation: op, Group: c.rec.Group, User: c.rec.User, Ticket: c.rec.Ticket,
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

// recovered turns a handler's panic into an error the audit stage records
// as INTERNAL; the log keeps the panic and its stack.
func (s *Server) recovered(ctx context.Context, p any) error {
	s.log.Error("handler panic", zap.String("request_id", callFrom(ctx).rec.ID),
		zap.String("panic", fmt.Sprint(p)), zap.ByteString("stack", debug.Stack()))
	return errPanic
}

var errPanic = errors.New("handler panic")

// unknownMethod serves every method escrowd does not, so that such calls
// pass the chain too (authorize refuses them); grpc-go would otherwise
// answer UNIMPLEMENTED with no trace.
func unknownMethod(any, grpc.ServerStream) error {
	return status.Error(codes.Unimplemented, "escrowd serves no such method")
}

// unrouted is a stats handler that finds the RPCs grpc-go ended before the
// chain began: a message over the size limit, an unknown compression. It
// counts, logs and records them as the chain would have, in bounded form.
type unrouted struct{ s *Server }

type tagKey struct{}

type rpcTag struct {
	method  string
	start   time.Time
	entered atomic.Bool
}

func (u unrouted) TagRPC(ctx context.Context, info *stats.RPCTagInfo) context.Context {
	return context.WithValue(ctx, tagKey{}, &rpcTag{method: info.FullMethodName, start: u.s.now()})
}

func (u unrouted) HandleRPC(ctx context.Context, rs stats.RPCStats) {
	end, ok := rs.(*stats.End)
	if !ok || end.Error == nil {
		return
	}
	t, ok := ctx.Value(tagKey{}).(*rpcTag)
	if !ok || t.entered.Load() {
		return
	}
	u.s.refusedEarly(ctx, t, end.Error)
}

func (unrouted) TagConn(ctx context.Context, _ *stats.ConnTagInfo) context.Context { return ctx }
func (unrouted) HandleConn(context.Context, stats.ConnStats)                       {}

// maxEarlyReason bounds the reason of a call refused before the chain:
// grpc-go's message may quote a header the caller sent.
const maxEarlyReason = 256

// refusedEarly reports an RPC that ended before the chain: observed, and,
// unless the caller gave up before its request arrived, recorded in the
// refusal lane and logged. Its caller already has its status.
func (s *Server) refusedEarly(ctx context.Context, t *rpcTag, rpcErr error) {
	c := &call{start: t.start, method: t.method, kind: s.kindOf(t.method), pol: s.policy.Load()}
	st := status.Convert(rpcErr)
	s.cfg.Observer.ObserveRPC(c.label(), st.Code().String(), s.now().Sub(t.start))
	if c.kind == kindHealth || st.Code() == codes.Canceled || st.Code() == codes.DeadlineExceeded {
		return
	}
	c.who = s.identify(ctx)
	reason := st.Message()
	if len(reason) > maxEarlyReason {
		reason = reason[:maxEarlyReason] + "…"
	}
	c.rec = audit.Record{ID: audit.NewID(t.start), Time: t.start.UTC(), Caller: c.who.name(c.pol),
		Operation: operationName(t.method, c.kind)}
	_ = s.settle(ctx, c, status.Error(st.Code(), strings.ToValidUTF8(reason, "?")))
	lvl := s.log.Warn
	if st.Code() == codes.Internal || st.Code() == codes.Unknown {
		lvl = s.log.Error
	}
	lvl("finished call", zap.String("request_id", c.rec.ID), zap.String("method", c.rec.Operation),
		zap.String("identity", c.rec.Caller), zap.String("grpc.code", st.Code().String()),
		zap.String("grpc.error", c.rec.Reason), zap.String("refused", "before the request pipeline"))
}

var _ healthpb.HealthServer = drainingHealth{}
