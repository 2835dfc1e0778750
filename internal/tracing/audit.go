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

// queuer is an auditor that can queue a record without waiting for its
// write (daemon.OutcomeAuditor).
type queuer interface {
	Enqueue(ctx context.Context, r *audit.Record, failed func(error)) error
}

// Audit returns a with a span around each commit, named audit.Commit (the
// group commit to Vault that releases a result), audit.CommitRefusal or
// audit.Enqueue. A RefusalAuditor stays one, and one that queues too
// stays both.
func Audit(a Auditor, tp trace.TracerProvider) Auditor {
	t := tracedAuditor{a: a, t: tp.Tracer(scope)}
	r, refuses := a.(RefusalAuditor)
	q, queues := a.(queuer)
	switch {
	case refuses && queues:
		return tracedQueue{tracedRefusals: tracedRefusals{tracedAuditor: t, r: r}, q: q}
	case refuses:
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

type tracedQueue struct {
	tracedRefusals
	q queuer
}

func (x tracedQueue) Enqueue(ctx context.Context, r *audit.Record, failed func(error)) error {
	ctx, span := x.t.Start(ctx, "audit.Enqueue")
	return end(span, x.q.Enqueue(ctx, r, failed))
}
