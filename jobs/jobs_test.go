package jobs_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/escrowd/escrowd/escrow"
	"github.com/escrowd/escrowd/hsm"
	"github.com/escrowd/escrowd/jobs"
	"github.com/escrowd/escrowd/softhsm"
	"github.com/escrowd/escrowd/store"
	"github.com/escrowd/escrowd/store/bolt"
)

var tok *softhsm.Token

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "escrowd-jobs-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	tok, err = softhsm.New(dir, "escrowd-jobs")
	if err != nil {
		fmt.Fprintln(os.Stderr, "FAIL:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// TestGroupRotationTakeover: a bulk unlock-key rotation over 300 groups.
// Runner A stops after a few checkpoints (its context ends, as if it
// died); runner B cannot take the job while A's lease lasts, takes it once
// the lease expired, and finishes. Every group ends with exactly one new
// unlock version: none missed, none rotated twice. A, back, cannot commit.
func TestGroupRotationTakeover(t *testing.T) {
	ctx := context.Background()
	h, err := hsm.Open(tok.HSMConfig())
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	st, err := bolt.Open(filepath.Join(t.TempDir(), "escrowd.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	svc, err := escrow.New(h, st, escrow.Config{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := svc.Provision(ctx, "seed", ""); err != nil {
		t.Fatal(err)
	}
	seed, _ := st.Group(ctx, "seed")
	const n = 300
	for i := range n {
		g := seed
		g.ID = fmt.Sprintf("g-%03d", i)
		if err := st.CreateGroup(ctx, g); err != nil {
			t.Fatal(err)
		}
	}
	lease := 600 * time.Millisecond
	a := jobs.New(st, svc, h, jobs.Config{Owner: "replica-a", Lease: lease, Batch: 7, Poll: 50 * time.Millisecond})
	b := jobs.New(st, svc, h, jobs.Config{Owner: "replica-b", Lease: lease, Batch: 7, Poll: 50 * time.Millisecond})
	if _, err := a.Start(ctx, jobs.KindGroupRotation, map[string]string{"escrow": "false"}); !errors.Is(err, jobs.ErrInvalid) {
		t.Fatalf("a rotation of nothing: %v", err)
	}
	j, err := a.Start(ctx, jobs.KindGroupRotation, map[string]string{"unlock": "true"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.Start(ctx, jobs.KindGroupRotation, map[string]string{"unlock": "true"}); !errors.Is(err, jobs.ErrRunning) {
		t.Fatalf("a second rotation job: %v, want ErrRunning", err)
	}
	actx, stopA := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); a.RunOnce(actx) }()
	for {
		cur, _ := st.Job(ctx, j.ID)
		if cur.Done >= 70 {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	stopA()
	<-done
	mid, _ := st.Job(ctx, j.ID)
	if mid.Owner != "replica-a" || mid.State != store.JobRunning {
		t.Fatalf("job after A stopped: %+v", mid)
	}
	b.RunOnce(ctx) // A's lease still holds
	if cur, _ := st.Job(ctx, j.ID); cur.Owner != "replica-a" || cur.Done != mid.Done {
		t.Fatalf("B took a job whose lease was live: %+v", cur)
	}
	time.Sleep(lease + 100*time.Millisecond)
	b.RunOnce(ctx)
	end, err := st.Job(ctx, j.ID)
	if err != nil || end.State != store.JobDone || end.Pass != 2 {
		t.Fatalf("job after B: %+v, %v", end, err)
	}
	// A cannot commit any more: it lost the lease.
	if _, err := st.CommitBatch(ctx, store.Batch{JobID: j.ID, Owner: "replica-a"}); !errors.Is(err, store.ErrLeaseHeld) {
		t.Fatalf("commit by the old owner: %v", err)
	}
	gs, err := st.ListGroups(ctx, "", n+10)
	if err != nil {
		t.Fatal(err)
	}
	for _, g := range gs {
		if len(g.Unlock) != 2 || g.Unlock[1].Version != 2 || len(g.Escrow) != 1 || g.Unlock[1].Key.KEKVersion != 1 {
			t.Fatalf("group %s: %d unlock versions, %d escrow: want exactly one rotation of the unlock key", g.ID, len(g.Unlock), len(g.Escrow))
		}
	}
	// One key_rotated event per group (the seed was rotated too), naming
	// the job, across the takeover.
	rotated := map[string]int{}
	for after := uint64(0); ; {
		p, err := st.Events(ctx, after, store.MaxEventPage)
		if err != nil {
			t.Fatal(err)
		}
		if len(p.Events) == 0 {
			break
		}
		for _, e := range p.Events {
			if e.Kind != store.EventKeyRotated || e.Job != j.ID || e.UnlockVersion != 2 || e.EscrowVersion != 0 || e.Caller != "" {
				t.Fatalf("event %+v", e)
			}
			rotated[e.Group]++
			after = e.Seq
		}
	}
	if len(rotated) != n+1 {
		t.Fatalf("key_rotated events for %d groups, want %d", len(rotated), n+1)
	}
	for g, c := range rotated {
		if c != 1 {
			t.Fatalf("group %s has %d key_rotated events", g, c)
		}
	}
	// The new versions work.
	g, _ := st.Group(ctx, "g-123")
	if _, err := h.HMAC(ctx, hsm.WrappedKey{KEKVersion: g.Unlock[1].Key.KEKVersion, Blob: g.Unlock[1].Key.Blob}, []byte("x")); err != nil {
		t.Fatal(err)
	}
}
