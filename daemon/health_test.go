package daemon

import (
	"context"
	"testing"
	"time"

	healthpb "google.golang.org/grpc/health/grpc_health_v1"

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
