package audit

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/escrowd/escrowd/internal/vaulttest"
)

// failures collects what the writer reports of queued records.
type failures struct {
	mu   sync.Mutex
	errs []error
}

func (f *failures) add(err error) { f.mu.Lock(); f.errs = append(f.errs, err); f.mu.Unlock() }
func (f *failures) n() int        { f.mu.Lock(); defer f.mu.Unlock(); return len(f.errs) }

// TestEnqueueWrittenWithTheNextWrite: a queued record goes out with the
// next write, between the committed records around it, and a close writes
// what is still queued rather than dropping it.
func TestEnqueueWrittenWithTheNextWrite(t *testing.T) {
	v := newSink(t, vaultSrv, prefixFor(t))
	var f failures
	commitAll(t, v, 0, 3)
	for i := 3; i < 6; i++ {
		if err := v.Enqueue(context.Background(), rec(i), f.add); err != nil {
			t.Fatal(err)
		}
	}
	commitAll(t, v, 6, 7)
	verifyOK(t, v, 7)

	// Queued, then closed at once: the close writes them.
	for i := 7; i < 40; i++ {
		if err := v.Enqueue(context.Background(), rec(i), f.add); err != nil {
			t.Fatal(err)
		}
	}
	if err := v.Close(); err != nil {
		t.Fatal(err)
	}
	if f.n() != 0 {
		t.Fatalf("queued records failed: %v", f.errs)
	}
	w := newSink(t, vaultSrv, prefixFor(t))
	verifyOK(t, w, 40)
	for _, id := range []string{"req-0004", "req-0039"} {
		if got, err := w.Find(context.Background(), id); err != nil || got.ID != id {
			t.Fatalf("Find %s: %+v, %v", id, got, err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if err := w.Enqueue(context.Background(), rec(40), f.add); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Enqueue on a closed writer: %v, want ErrUnavailable", err)
	}
}

// TestEnqueueFailureReported: with Vault down, a queued record's write
// fails and the writer says so through its callback, once; the records
// written before stay intact.
func TestEnqueueFailureReported(t *testing.T) {
	srv := vaulttest.StartT(t)
	v := newSink(t, srv, "escrowd/audit")
	commitAll(t, v, 0, 2)
	if err := srv.Stop(); err != nil {
		t.Fatal(err)
	}
	got := make(chan error, 2)
	if err := v.Enqueue(context.Background(), rec(2), func(err error) { got <- err }); err != nil {
		t.Fatalf("Enqueue with Vault down: %v (the writer holds it; its write fails later)", err)
	}
	select {
	case err := <-got:
		if !errors.Is(err, ErrUnavailable) {
			t.Fatalf("queued record failed with %v, want ErrUnavailable", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("no failure reported for a record queued while Vault was down")
	}
	if err := srv.Restart(); err != nil {
		t.Fatal(err)
	}
	commitAll(t, v, 3, 5)
	verifyOK(t, v, 4)
	if len(got) != 0 {
		t.Fatalf("a second failure reported: %v", <-got)
	}
}

// TestEnqueueRefusesOversized: a record too large is refused at once,
// not held, so its result is withheld.
func TestEnqueueRefusesOversized(t *testing.T) {
	v := newSink(t, vaultSrv, prefixFor(t))
	r := rec(0)
	r.Detail = []string{string(make([]byte, 2<<20))}
	called := false
	if err := v.Enqueue(context.Background(), r, func(error) { called = true }); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Enqueue of a %d-byte detail: %v, want ErrUnavailable", len(r.Detail[0]), err)
	}
	if called {
		t.Fatal("the callback of a refused record was called")
	}
}

// TestQueuedRecordsRideWithTheNextCommit: a record queued alone waits,
// up to QueuedLinger, for a record someone waits on, and goes out in its
// write; alone it goes out when the linger ends. Else a caller making one
// request after another would find each request's intent behind the
// write of the previous one's outcome.
func TestQueuedRecordsRideWithTheNextCommit(t *testing.T) {
	v, err := NewVault(VaultConfig{Address: vaultSrv.Addr, Token: vaultSrv.Token, Prefix: prefixFor(t),
		Timeout: 3 * time.Second, QueuedLinger: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	ctx := context.Background()
	if err := v.Enqueue(ctx, rec(0), nil); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond)
	start := time.Now()
	if err := v.Commit(ctx, rec(1)); err != nil {
		t.Fatal(err)
	}
	if batches, records, _ := v.Stats(); batches != 1 || records != 2 {
		t.Fatalf("a queued record then a commit: %d records in %d writes, want 2 in 1", records, batches)
	}
	if took := time.Since(start); took > 900*time.Millisecond {
		t.Fatalf("the commit waited %v: it must not wait out the queued record's linger", took)
	}
	// Alone, it goes out when the linger ends.
	if err := v.Enqueue(ctx, rec(2), nil); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		if batches, records, _ := v.Stats(); batches == 2 && records == 3 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("a queued record alone was not written after its linger")
		}
		time.Sleep(50 * time.Millisecond)
	}
	verifyOK(t, v, 3)
}
