// Package tracing gives escrowd OpenTelemetry traces: the exporter named
// in the configuration file, and spans around the calls a request makes
// to the store, the HSM and the audit trail (the daemon adds the gRPC
// and policy spans). It is off unless an OTLP endpoint is configured;
// then every request costs a few spans (docs/OPERATIONS.md, "Tracing").
//
// Spans carry operation names and outcomes only: no identity, group,
// user, ticket, code, key or wrapped value.
package tracing

import (
	"context"
	"errors"
	"fmt"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
)

// scope is the instrumentation scope of the spans made here.
const scope = "github.com/escrowd/escrowd"

// Config is the tracing section of escrowd's configuration.
type Config struct {
	// Endpoint is the OTLP/gRPC collector, host:port; empty turns
	// tracing off.
	Endpoint string
	// Insecure sends spans without TLS (a collector on loopback or a
	// sidecar); otherwise the collector's certificate must verify
	// against the system roots.
	Insecure bool
	// SampleRatio is the share of traces kept when the caller sent no
	// sampling decision, 0 < r ≤ 1 (0 means 1).
	SampleRatio float64
	// ServiceName defaults to escrowd.
	ServiceName string
}

// Validate reports a setting that cannot work.
func (c Config) Validate() error {
	if c.SampleRatio < 0 || c.SampleRatio > 1 {
		return fmt.Errorf("tracing: sample ratio %v is not in (0, 1]", c.SampleRatio)
	}
	return nil
}

// New returns the tracer provider of c, and a shutdown that flushes the
// spans still buffered; nil and a no-op when tracing is off.
func New(ctx context.Context, c Config) (*sdktrace.TracerProvider, func(context.Context) error, error) {
	if c.Endpoint == "" {
		return nil, func(context.Context) error { return nil }, nil
	}
	if err := c.Validate(); err != nil {
		return nil, nil, err
	}
	opts := []otlptracegrpc.Option{otlptracegrpc.WithEndpoint(c.Endpoint)}
	if c.Insecure {
		opts = append(opts, otlptracegrpc.WithInsecure())
	}
	exp, err := otlptracegrpc.New(ctx, opts...)
	if err != nil {
		return nil, nil, fmt.Errorf("tracing: OTLP exporter to %s: %w", c.Endpoint, err)
	}
	tp := NewProvider(sdktrace.NewBatchSpanProcessor(exp), c)
	return tp, tp.Shutdown, nil
}

// NewProvider makes a tracer provider over sp (tests use an in-memory
// exporter).
func NewProvider(sp sdktrace.SpanProcessor, c Config) *sdktrace.TracerProvider {
	name, ratio := c.ServiceName, c.SampleRatio
	if name == "" {
		name = "escrowd"
	}
	if ratio == 0 {
		ratio = 1
	}
	return sdktrace.NewTracerProvider(
		sdktrace.WithSpanProcessor(sp),
		sdktrace.WithSampler(sdktrace.ParentBased(sdktrace.TraceIDRatioBased(ratio))),
		sdktrace.WithResource(resource.NewSchemaless(attribute.String("service.name", name))),
	)
}

// end closes span with err's outcome and returns err. Only the error's
// class is recorded: store and HSM errors may name groups.
func end(span trace.Span, err error) error {
	if err != nil && !errors.Is(err, context.Canceled) {
		span.SetStatus(codes.Error, "failed")
	}
	span.End()
	return err
}
