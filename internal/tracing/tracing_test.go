package tracing

import (
	"context"
	"errors"
	"testing"

	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/escrowd/escrowd/audit"
	"github.com/escrowd/escrowd/store"
)

func TestOffByDefault(t *testing.T) {
	tp, stop, err := New(context.Background(), Config{})
	if err != nil || tp != nil || stop(context.Background()) != nil {
		t.Fatalf("no endpoint: %v %v", tp, err)
	}
	for _, r := range []float64{-0.1, 1.5} {
		if _, _, err := New(context.Background(), Config{Endpoint: "127.0.0.1:4317", SampleRatio: r}); err == nil {
			t.Errorf("sample ratio %v accepted", r)
		}
	}
	tp, stop, err = New(context.Background(), Config{Endpoint: "127.0.0.1:4317", Insecure: true, SampleRatio: 0.5})
	if err != nil || tp == nil {
		t.Fatalf("an endpoint: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel() // nothing listens: do not wait for it
	stop(ctx)
}

type fakeAuditor struct{ err error }

func (f fakeAuditor) Commit(context.Context, *audit.Record) error { return f.err }

type fakeRefusals struct{ fakeAuditor }

func (fakeRefusals) CommitRefusal(context.Context, *audit.Record) error { return nil }

// TestAuditSpans: a commit is a span, a failed one marked failed without
// the error's text; a RefusalAuditor keeps its refusal lane.
func TestAuditSpans(t *testing.T) {
	exp := tracetest.NewInMemoryExporter()
	tp := NewProvider(sdktrace.NewSimpleSpanProcessor(exp), Config{})
	a := Audit(fakeAuditor{err: errors.New("vault sealed: group g-secret")}, tp)
	if _, ok := a.(RefusalAuditor); ok {
		t.Fatal("a plain auditor became a RefusalAuditor")
	}
	if err := a.Commit(context.Background(), &audit.Record{}); err == nil {
		t.Fatal("the error was lost")
	}
	r := Audit(fakeRefusals{}, tp)
	ra, ok := r.(RefusalAuditor)
	if !ok {
		t.Fatal("the refusal lane was lost")
	}
	ra.CommitRefusal(context.Background(), &audit.Record{})
	spans := exp.GetSpans()
	if len(spans) != 2 || spans[0].Name != "audit.Commit" || spans[0].Status.Code != codes.Error || spans[1].Name != "audit.CommitRefusal" {
		t.Fatalf("%+v", spans)
	}
	if spans[0].Status.Description != "failed" {
		t.Fatalf("the status holds the error's text: %q", spans[0].Status.Description)
	}
}

type fakeStore struct {
	store.Store
	closed bool
}

func (f *fakeStore) Group(_ context.Context, id string) (store.Group, error) {
	return store.Group{ID: id}, nil
}

func (f *fakeStore) Close() error { f.closed = true; return nil }

func TestStoreSpans(t *testing.T) {
	exp := tracetest.NewInMemoryExporter()
	tp := NewProvider(sdktrace.NewSimpleSpanProcessor(exp), Config{})
	f := &fakeStore{}
	st := Store(f, tp)
	g, err := st.Group(context.Background(), "g1")
	if err != nil || g.ID != "g1" {
		t.Fatalf("%v %v", g, err)
	}
	st.Close()
	if !f.closed {
		t.Fatal("Close did not reach the store")
	}
	if spans := exp.GetSpans(); len(spans) != 1 || spans[0].Name != "store.Group" || spans[0].Status.Code == codes.Error {
		t.Fatalf("%+v", spans)
	}
}

// BenchmarkSpan: what one traced store call costs over a plain one, in
// process with no I/O: tracing off (no wrapper), and on with every span
// sampled and batched to an exporter that drops it.
func BenchmarkSpan(b *testing.B) {
	f := &fakeStore{}
	tp := NewProvider(sdktrace.NewBatchSpanProcessor(tracetest.NewNoopExporter()), Config{})
	defer tp.Shutdown(context.Background())
	ctx := context.Background()
	for _, bc := range []struct {
		name string
		st   store.Store
	}{{"off", f}, {"on", Store(f, tp)}} {
		b.Run(bc.name, func(b *testing.B) {
			for b.Loop() {
				bc.st.Group(ctx, "g")
			}
		})
	}
}
