package daemon

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"

	escrowdv1 "github.com/escrowd/escrowd/api/escrowd/v1"
)

// TestDrain: at the start of a drain health says NOT_SERVING, on Check and
// on a Watch stream, while a request still runs; the request finishes; and
// the Watch stream does not hold the shutdown up.
func TestDrain(t *testing.T) {
	e := &fakeEscrow{entered: make(chan struct{}), release: make(chan struct{})}
	conn, srv := startWith(t, e, &fakeAuditor{}, map[string]Checker{"hsm": fakeCheck{}}, nil)
	ctx := context.Background()
	hc := healthpb.NewHealthClient(conn)
	watch, err := hc.Watch(ctx, &healthpb.HealthCheckRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if r, err := watch.Recv(); err != nil || r.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("watch before drain: %v %v", r.GetStatus(), err)
	}
	inflight := make(chan error, 1)
	go func() {
		_, err := escrowdv1.NewSyncServiceClient(conn).ProvisionGroup(ctx, &escrowdv1.ProvisionGroupRequest{GroupId: "g"})
		inflight <- err
	}()
	<-e.entered

	sctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	stopped := make(chan time.Duration, 1)
	go func() {
		t0 := time.Now()
		srv.Shutdown(sctx)
		stopped <- time.Since(t0)
	}()
	// The watcher hears NOT_SERVING while the request is still running.
	for {
		r, err := watch.Recv()
		if err != nil {
			t.Fatalf("watch during drain ended before NOT_SERVING: %v", err)
		}
		if r.GetStatus() == healthpb.HealthCheckResponse_NOT_SERVING {
			break
		}
	}
	select {
	case err := <-inflight:
		t.Fatalf("the request finished before it was released: %v", err)
	default:
	}
	close(e.release)
	if err := <-inflight; err != nil {
		t.Fatalf("the in-flight request was cut: %v", err)
	}
	select {
	case d := <-stopped:
		if d > 10*time.Second {
			t.Fatalf("shutdown took %s: something held the drain", d)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("shutdown did not finish: the Watch stream holds the drain")
	}
}

// reasonErr is a dependency error that may be said on the health
// listener, as audit.HaltError is.
type reasonErr struct{ reason string }

func (e reasonErr) Error() string        { return "secret detail: " + e.reason }
func (e reasonErr) HealthReason() string { return e.reason }

// TestNotServingReason: a NOT_SERVING answer names each failing
// dependency in HeaderNotServing, with the reason of an error that gives
// one, and only the dependency's name for any other (its text may hold
// what the unauthenticated listener must not say); SERVING carries none.
func TestNotServingReason(t *testing.T) {
	tests := []struct {
		name   string
		checks map[string]Checker
		status healthpb.HealthCheckResponse_ServingStatus
		want   []string
	}{
		{"serving", map[string]Checker{"hsm": fakeCheck{}, "vault": fakeCheck{}}, healthpb.HealthCheckResponse_SERVING, nil},
		{"poisoned trail", map[string]Checker{"hsm": fakeCheck{},
			"vault": fakeCheck{err: fmt.Errorf("wrapped: %w", reasonErr{"audit trail poisoned at position 7"})}},
			healthpb.HealthCheckResponse_NOT_SERVING, []string{"vault: audit trail poisoned at position 7"}},
		{"two down, one without a reason", map[string]Checker{"hsm": fakeCheck{err: errors.New("token pin-file /x secret")},
			"vault": fakeCheck{err: reasonErr{"audit trail truncated"}}},
			healthpb.HealthCheckResponse_NOT_SERVING, []string{"hsm: unhealthy (escrowd's log says why)", "vault: audit trail truncated"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			conn, _ := startWith(t, &fakeEscrow{}, &fakeAuditor{}, tt.checks, nil)
			var hdr metadata.MD
			r, err := healthpb.NewHealthClient(conn).Check(context.Background(), &healthpb.HealthCheckRequest{}, grpc.Header(&hdr))
			if err != nil {
				t.Fatal(err)
			}
			if r.GetStatus() != tt.status || !slices.Equal(hdr.Get(HeaderNotServing), tt.want) {
				t.Fatalf("health %v, %s %q; want %v, %q", r.GetStatus(), HeaderNotServing, hdr.Get(HeaderNotServing), tt.status, tt.want)
			}
			for _, v := range hdr.Get(HeaderNotServing) {
				if strings.Contains(v, "secret") {
					t.Fatalf("health says an error's text: %q", v)
				}
			}
		})
	}
}
