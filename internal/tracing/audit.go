package tracing

import (
	"context"

	"go.opentelemetry.io/otel/trace"

	"github.com/escrowd/escrowd/audit"
)

// Auditor is what the daemon commits audit records to.
type Auditor interface {
	Commit(ctx context.Context, r *audit.Record) error
}

// RefusalAuditor is an Auditor with a lane for refused requests.
type RefusalAuditor interface {
	Auditor
	CommitRefusal(ctx context.Context, r *audit.Record) error
}

// Audit returns a with a span around each commit, named audit.Commit (the
// group commit to Vault that releases a result) or audit.CommitRefusal. A
// RefusalAuditor stays one.
func Audit(a Auditor, tp trace.TracerProvider) Auditor {
	t := tracedAuditor{a: a, t: tp.Tracer(scope)}
	if r, ok := a.(RefusalAuditor); ok {
		return tracedRefusals{tracedAuditor: t, r: r}
	}
	return t
}

type tracedAuditor struct {
	a Auditor
	t trace.Tracer
}

func (x tracedAuditor) Commit(ctx context.Context, r *audit.Record) error {
	ctx, span := x.t.Start(ctx, "audit.Commit")
	return end(span, x.a.Commit(ctx, r))
}

type tracedRefusals struct {
	tracedAuditor
	r RefusalAuditor
}

func (x tracedRefusals) CommitRefusal(ctx context.Context, r *audit.Record) error {
	ctx, span := x.t.Start(ctx, "audit.CommitRefusal")
	return end(span, x.r.CommitRefusal(ctx, r))
}
