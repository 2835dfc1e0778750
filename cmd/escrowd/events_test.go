package main

import (
	"bytes"
	"context"
	"path/filepath"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/escrowd/escrowd/store"
	"github.com/escrowd/escrowd/store/bolt"
)

// TestPruneEvents: the pruner drops events past the retention at start
// and the oldest beyond the count bound on a later round, and stops with
// its context.
func TestPruneEvents(t *testing.T) {
	ctx := context.Background()
	st, err := bolt.Open(filepath.Join(t.TempDir(), "escrowd.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if err := st.CreateGroup(ctx, store.Group{ID: "g"}); err != nil {
		t.Fatal(err)
	}
	for _, u := range []string{"a", "b", "c", "d"} {
		if _, err := st.StartEpoch(ctx, "g", u, 0, 1, 1, bytes.Repeat([]byte{1}, store.NonceSize)); err != nil {
			t.Fatal(err)
		}
	}
	// At first the clock says the events are a day old, past a retention
	// of an hour; then that they are new, with at most 1 kept.
	clock := make(chan time.Time, 2)
	clock <- time.Now().Add(24 * time.Hour)
	clock <- time.Now()
	now := func() time.Time {
		select {
		case c := <-clock:
			return c
		default:
			return time.Now()
		}
	}
	pctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		pruneEvents(pctx, st, 10*time.Millisecond, time.Hour, 0, now, zap.NewNop())
	}()
	waitEvents := func(want int) {
		t.Helper()
		for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(5 * time.Millisecond) {
			p, err := st.Events(ctx, 0, 10)
			if err != nil {
				t.Fatal(err)
			}
			if len(p.Events) == want {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%d events left, want %d", len(p.Events), want)
			}
		}
	}
	waitEvents(0)
	cancel()
	<-done
	for _, u := range []string{"e", "f", "g"} {
		if _, err := st.StartEpoch(ctx, "g", u, 0, 1, 1, bytes.Repeat([]byte{1}, store.NonceSize)); err != nil {
			t.Fatal(err)
		}
	}
	pctx, cancel = context.WithCancel(ctx)
	defer cancel()
	go pruneEvents(pctx, st, 10*time.Millisecond, time.Hour, 1, time.Now, zap.NewNop())
	waitEvents(1)
	if p, _ := st.Events(ctx, 0, 10); p.Events[0].User != "g" || p.Events[0].Seq != 7 {
		t.Fatalf("kept %+v, want the newest", p.Events[0])
	}
}
