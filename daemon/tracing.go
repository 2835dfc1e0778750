package daemon

import (
	"context"

	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
	"google.golang.org/grpc"

	"github.com/escrowd/escrowd/policy"
)

// tracingOptions returns the server options that trace every RPC (a
// span per call, joined to the caller's trace through the W3C
// traceparent header) and sets the tracer of the policy spans. Without a
// TracerProvider there is neither: tracing off costs nothing.
func (s *Server) tracingOptions() []grpc.ServerOption {
	if s.cfg.TracerProvider == nil {
		s.tracer = noop.NewTracerProvider().Tracer("")
		return nil
	}
	s.tracer = s.cfg.TracerProvider.Tracer("github.com/escrowd/escrowd/daemon")
	return []grpc.ServerOption{grpc.StatsHandler(otelgrpc.NewServerHandler(
		otelgrpc.WithTracerProvider(s.cfg.TracerProvider),
		otelgrpc.WithPropagators(propagation.TraceContext{}),
	))}
}

// decide runs the policy decision in a span of its own, which records
// the operation, the outcome and the rule, never the identity or ids.
func (s *Server) decide(ctx context.Context, pol *policy.Policy, r policy.Request) policy.Decision {
	if s.tracer == nil {
		return pol.Decide(r)
	}
	_, span := s.tracer.Start(ctx, "policy.Decide", trace.WithAttributes(attribute.String("escrowd.operation", r.Operation)))
	d := pol.Decide(r)
	if span.IsRecording() {
		span.SetAttributes(attribute.Bool("escrowd.allow", d.Allow), attribute.String("escrowd.rule", d.Rule),
			attribute.Int("escrowd.limits", len(d.Limits)), attribute.Bool("escrowd.dual_control", d.DualControl))
	}
	span.End()
	return d
}
