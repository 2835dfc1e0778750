package audit

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestOversizedRecordFailsAlone: a record too large for one Vault write
// fails by itself; the records that would have shared its write are
// committed. (A 40 MiB record used to take its whole group commit down
// with it: Vault answers 413 past 32 MiB, and every request of the batch
// got UNAVAILABLE.)
func TestOversizedRecordFailsAlone(t *testing.T) {
	v, err := NewVault(VaultConfig{Address: vaultSrv.Addr, Token: vaultSrv.Token, Prefix: prefixFor(t),
		Timeout: 10 * time.Second, Linger: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { v.Close() })
	big := rec(999)
	big.Detail = []string{strings.Repeat("x", 40<<20)}
	var wg sync.WaitGroup
	errs := make([]error, 20)
	var bigErr error
	wg.Add(1)
	go func() {
		defer wg.Done()
		bigErr = v.Commit(context.Background(), big)
	}()
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = v.Commit(context.Background(), rec(i))
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("record %d shared a write with the oversized one and failed: %v", i, err)
		}
	}
	if !errors.Is(bigErr, ErrUnavailable) {
		t.Fatalf("the oversized record: %v, want ErrUnavailable", bigErr)
	}
	verifyOK(t, v, len(errs))
}

// TestBatchBytesBound: a group commit is cut before the record that would
// take it past MaxBatchBytes; every record is committed, in one chain.
func TestBatchBytesBound(t *testing.T) {
	v, err := NewVault(VaultConfig{Address: vaultSrv.Addr, Token: vaultSrv.Token, Prefix: prefixFor(t),
		Timeout: 5 * time.Second, Linger: 200 * time.Millisecond, MaxBatchBytes: 64 << 10, MaxRecordBytes: 16 << 10})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { v.Close() })
	var wg sync.WaitGroup
	errs := make(chan error, 30)
	for i := range 30 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rec(i)
			r.Detail = []string{strings.Repeat("d", 10<<10)}
			errs <- v.Commit(context.Background(), r)
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	verifyOK(t, v, 30)
	err = v.Walk(context.Background(), func(seq uint64, b *Batch) error {
		raw, err := encodeBatch(b)
		if err != nil {
			return err
		}
		if len(raw) > 64<<10 {
			t.Errorf("batch %d is %d bytes, more than the bound", seq, len(raw))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func refusal(i int) *Record {
	return &Record{ID: fmt.Sprintf("ref-%05d", i), Time: time.Unix(1700000000, 0).UTC(),
		Caller: "spiffe://escrowd.test/mallory", Operation: "/escrowd.v1.SupportService/RevealUnlockCode",
		Outcome: OutcomeDenied, Code: "PermissionDenied", Reason: "identity is not in the policy"}
}

// TestRefusalLane: a flood of refusals beside the commits of results. No
// result fails; no write carries more refusals than RefusalShare; every
// refusal is in the trail, either as its own record or counted in a
// summary record; and the chain verifies.
func TestRefusalLane(t *testing.T) {
	const (
		share    = 8
		results  = 200
		refusals = 3000
	)
	v, err := NewVault(VaultConfig{Address: vaultSrv.Addr, Token: vaultSrv.Token, Prefix: prefixFor(t),
		Timeout: 5 * time.Second, MaxBatch: 64, RefusalShare: share, RefusalQueue: 4})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { v.Close() })
	ctx := context.Background()
	var wg sync.WaitGroup
	var refErrs, resErrs atomic.Int64
	for w := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < refusals; i += 16 {
				if err := v.CommitRefusal(ctx, refusal(i)); err != nil {
					refErrs.Add(1)
				}
			}
		}()
	}
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < results; i += 8 {
				if err := v.Commit(ctx, rec(i)); err != nil {
					resErrs.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	if n := resErrs.Load(); n > 0 {
		t.Fatalf("%d results failed beside the refusals", n)
	}
	if n := refErrs.Load(); n > 0 {
		t.Fatalf("%d refusals failed", n)
	}
	// The summary of the last overflow goes with the next write.
	if err := v.Commit(ctx, rec(results)); err != nil {
		t.Fatal(err)
	}
	var individual, counted, summaries, res int
	err = v.Walk(ctx, func(seq uint64, b *Batch) error {
		inBatch := 0
		for _, r := range b.Records {
			switch {
			case r.Operation == SummaryOperation:
				summaries++
				for _, d := range r.Detail {
					if n, ok := strings.CutPrefix(d, "refusals:"); ok {
						k, err := strconv.Atoi(n)
						if err != nil {
							return err
						}
						counted += k
					}
				}
			case strings.HasPrefix(r.ID, "ref-"):
				individual++
				inBatch++
			default:
				res++
			}
		}
		if inBatch > share {
			t.Errorf("batch %d carries %d refusals, more than %d", seq, inBatch, share)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if res != results+1 || individual+counted != refusals {
		t.Fatalf("%d results, %d refusals recorded and %d counted in %d summaries; want %d results and %d refusals",
			res, individual, counted, summaries, results+1, refusals)
	}
	if summaries == 0 {
		t.Fatal("the lane never overflowed: the test floods too little")
	}
	t.Logf("%d refusals recorded one by one, %d counted in %d summaries", individual, counted, summaries)
	verifyOK(t, v, res+individual+summaries)
}

// TestLargestRecordFits: the record of the largest request escrowd
// serves, a BatchRewrap of 256 items whose every id has the longest
// length and whose every item failed, fits the default MaxRecordBytes.
func TestLargestRecordFits(t *testing.T) {
	long := strings.Repeat("i", 128)
	r := rec(0)
	r.Operation = "/escrowd.v1.SyncService/BatchRewrap"
	for i := range 256 {
		r.Detail = append(r.Detail, fmt.Sprintf("item:%d ref:%s group:%s target:device/%s escrow:%d code:%s",
			i, long, long, long, uint32(1<<32-1), "FailedPrecondition"))
	}
	r.Detail = append(r.Detail, "items:256", "failed:256")
	v := &Vault{cfg: VaultConfig{}.withDefaults()}
	p, err := v.pending(r)
	if err != nil {
		t.Fatalf("the largest record is refused: %v", err)
	}
	if p.size > v.cfg.MaxBatchBytes {
		t.Fatalf("the largest record costs %d bytes of a write, more than a write's %d", p.size, v.cfg.MaxBatchBytes)
	}
}
