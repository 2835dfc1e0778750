package e2e

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"

	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"

	escrowdv1 "github.com/escrowd/escrowd/api/escrowd/v1"
	"github.com/escrowd/escrowd/client"
	"github.com/escrowd/escrowd/internal/tracing"
)

// tracedClient dials s through the client package with a client span per
// call, whose context goes to escrowd in the traceparent header.
func tracedClient(t *testing.T, addr, who string, tp trace.TracerProvider) *client.Client {
	return dialClient(t, addr, who, client.Config{DialOptions: []grpc.DialOption{grpc.WithStatsHandler(otelgrpc.NewClientHandler(
		otelgrpc.WithTracerProvider(tp), otelgrpc.WithPropagators(propagation.TraceContext{})))}})
}

// spanTree renders spans as an indented tree, children in start order.
func spanTree(spans tracetest.SpanStubs) string {
	kids := map[trace.SpanID][]tracetest.SpanStub{}
	ids := map[trace.SpanID]bool{}
	for _, s := range spans {
		ids[s.SpanContext.SpanID()] = true
	}
	var roots []tracetest.SpanStub
	for _, s := range spans {
		if p := s.Parent.SpanID(); p.IsValid() && ids[p] {
			kids[p] = append(kids[p], s)
		} else {
			roots = append(roots, s)
		}
	}
	var b strings.Builder
	var walk func(s tracetest.SpanStub, depth int)
	walk = func(s tracetest.SpanStub, depth int) {
		fmt.Fprintf(&b, "%s%s [%s] %s %s\n", strings.Repeat("  ", depth), s.Name, s.SpanKind, s.EndTime.Sub(s.StartTime).Round(time.Microsecond), s.Status.Code)
		ks := kids[s.SpanContext.SpanID()]
		sort.Slice(ks, func(i, j int) bool { return ks[i].StartTime.Before(ks[j].StartTime) })
		for _, k := range ks {
			walk(k, depth+1)
		}
	}
	for _, r := range roots {
		walk(r, 0)
	}
	return b.String()
}

// TestTraceOfAReveal: with tracing on, one reveal is one trace from the
// caller through escrowd: the RPC, its policy decision, the store calls,
// the HSM call that derives the code and the audit commit, each a child
// of the server span. No span or attribute holds the code or an id.
func TestTraceOfAReveal(t *testing.T) {
	exp := tracetest.NewInMemoryExporter()
	tp := tracing.NewProvider(sdktrace.NewSimpleSpanProcessor(exp), tracing.Config{})
	t.Cleanup(func() { tp.Shutdown(context.Background()) })
	s := newStackWith(t, vaultSrv, stackOpts{tracer: tp})
	ctx := ctxT(t)
	issue(t, s, ctx, "traced", "u", 3)
	alice := tracedClient(t, s.addr, "alice", tp)
	exp.Reset()

	r, err := alice.RevealUnlockCode(ctx, &escrowdv1.RevealUnlockCodeRequest{GroupId: "traced", UserId: "u", Ticket: "SUP-5"})
	if err != nil {
		t.Fatal(err)
	}
	if err := tp.ForceFlush(ctx); err != nil {
		t.Fatal(err)
	}
	spans := exp.GetSpans()
	t.Logf("the trace of one reveal:\n%s", spanTree(spans))

	const rpc = "escrowd.v1.SupportService/RevealUnlockCode"
	var server *tracetest.SpanStub
	byName := map[string]int{}
	for i, sp := range spans {
		byName[sp.Name]++
		if sp.Name == rpc && sp.SpanKind == trace.SpanKindServer {
			server = &spans[i]
		}
		if sp.SpanContext.TraceID() != spans[0].SpanContext.TraceID() {
			t.Errorf("span %s is in another trace", sp.Name)
		}
		for _, a := range sp.Attributes {
			v := a.Value.String()
			for _, secret := range []string{r.GetCode(), strings.ReplaceAll(r.GetCode(), "-", ""), "traced", "SUP-5", identities["alice"]} {
				if strings.Contains(v, secret) {
					t.Errorf("span %s attribute %s holds %q", sp.Name, a.Key, secret)
				}
			}
		}
	}
	if server == nil {
		t.Fatalf("no server span %s", rpc)
	}
	for _, want := range []string{"policy.Decide", "store.TakeRate", "store.ClaimCode", "hsm.HMAC", "audit.Commit"} {
		if byName[want] == 0 {
			t.Errorf("no %s span", want)
		}
	}
	if byName[rpc] != 2 {
		t.Errorf("%d spans named %s, want the client's and the server's", byName[rpc], rpc)
	}
	// Every span below the RPC hangs under the server span.
	parent := map[trace.SpanID]trace.SpanID{}
	for _, sp := range spans {
		parent[sp.SpanContext.SpanID()] = sp.Parent.SpanID()
	}
	for _, sp := range spans {
		if sp.Name == rpc {
			continue
		}
		under := false
		for id := sp.Parent.SpanID(); id.IsValid(); id = parent[id] {
			if id == server.SpanContext.SpanID() {
				under = true
				break
			}
		}
		if !under {
			t.Errorf("span %s is not under the server span", sp.Name)
		}
	}
}

// BenchmarkTracingOverhead: RewrapToEscrow (policy, store, an RSA re-wrap
// in the HSM, the audit commit to Vault) on three daemons side by side:
// two with tracing off and one with it on (every request sampled, spans
// batched to an exporter that drops them). Each of 11 rounds runs b.N
// calls on each daemon, in an order that rotates from round to round. It
// reports, over the rounds, the median and range of on/off (the cost of
// tracing) and of off2/off (two identical daemons: the noise floor), from
// each round's mean latency:
//
//	go test ./e2e -run '^$' -bench TracingOverhead -benchtime 60x
func BenchmarkTracingOverhead(b *testing.B) {
	tp := tracing.NewProvider(sdktrace.NewBatchSpanProcessor(tracetest.NewNoopExporter()), tracing.Config{})
	defer tp.Shutdown(context.Background())
	type side struct {
		name string
		c    *client.Client
		slot []byte
	}
	sides := []*side{{name: "off"}, {name: "off2"}, {name: "on"}}
	for _, sd := range sides {
		o := stackOpts{prefix: "escrowd-test/bench-tracing-" + sd.name}
		if sd.name == "on" {
			o.tracer = tp
		}
		s := newStackWith(b, vaultSrv, o)
		var ids []string
		_, sd.slot = s.provisionAndSeal(context.Background(), "bench-"+sd.name, &ids)
		sd.c = dialClient(b, s.addr, "sync-backend", client.Config{})
	}
	const rounds = 11
	ctx := context.Background()
	call := func(sd *side) {
		if _, err := sd.c.RewrapToEscrow(ctx, &escrowdv1.RewrapToEscrowRequest{GroupId: "bench-" + sd.name, EscrowSlot: sd.slot}); err != nil {
			b.Fatal(err)
		}
	}
	for _, sd := range sides { // warm up
		for range 5 {
			call(sd)
		}
	}
	var onOff, noise []float64
	total := map[string]time.Duration{}
	b.ResetTimer()
	for r := range rounds {
		per := map[string]time.Duration{}
		for i := range sides {
			sd := sides[(i+r)%len(sides)]
			start := time.Now()
			for range b.N {
				call(sd)
			}
			per[sd.name] = time.Since(start)
			total[sd.name] += per[sd.name]
		}
		onOff = append(onOff, float64(per["on"])/float64(per["off"]))
		noise = append(noise, float64(per["off2"])/float64(per["off"]))
	}
	b.StopTimer()
	sort.Float64s(onOff)
	sort.Float64s(noise)
	n := float64(rounds * b.N)
	for _, sd := range sides {
		b.ReportMetric(float64(total[sd.name].Microseconds())/n, sd.name+"-µs/call")
	}
	b.ReportMetric(onOff[rounds/2], "on/off-median")
	b.ReportMetric(onOff[0], "on/off-min")
	b.ReportMetric(onOff[rounds-1], "on/off-max")
	b.ReportMetric(noise[rounds/2], "off2/off-median")
	b.ReportMetric(noise[0], "off2/off-min")
	b.ReportMetric(noise[rounds-1], "off2/off-max")
}
