// Package storetest is the conformance suite every store back end passes.
package storetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/escrowd/escrowd/store"
)

// Opener opens a fresh, empty store for one test. Reopen closes the store
// and opens the same data again, as a daemon restart would.
type Opener func(t *testing.T) (s store.Store, reopen func() store.Store)

// Run runs the suite.
func Run(t *testing.T, open Opener) {
	tests := []struct {
		name string
		fn   func(*testing.T, Opener)
	}{
		{"GroupRoundTrip", testGroupRoundTrip},
		{"GroupExists", testGroupExists},
		{"GroupNotFound", testGroupNotFound},
		{"EpochCompareAndSet", testEpochCAS},
		{"ClaimInOrderUntilExhausted", testClaimOrder},
		{"ClaimConcurrentDistinct", testClaimConcurrent},
		{"SurvivesReopen", testReopen},
		{"CanceledContext", testCanceled},
		{"RateLimitWindows", testRateWindows},
		{"RateLimitAllOrNothing", testRateAllOrNothing},
		{"RateLimitConcurrentExact", testRateConcurrent},
		{"RateLimitSurvivesReopen", testRateReopen},
		{"ApprovalRules", testApprovalRules},
		{"ApprovalConcurrent", testApprovalConcurrent},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) { tt.fn(t, open) })
	}
}

func sampleGroup(id string) store.Group {
	now := time.Unix(1700000000, 0).UTC()
	return store.Group{
		ID: id, Created: now,
		Escrow: []store.EscrowKey{{Version: 1, Suite: "rsa-oaep-sha1", PublicKey: []byte{1, 2, 3},
			Private: store.WrappedKey{KEKVersion: 1, Blob: []byte{4, 5, 6}}, Created: now}},
		Unlock: []store.UnlockKey{{Version: 1, Key: store.WrappedKey{KEKVersion: 1, Blob: []byte{7, 8}}, Created: now}},
	}
}

func testGroupRoundTrip(t *testing.T, open Opener) {
	s, _ := open(t)
	ctx := context.Background()
	want := sampleGroup("g-1")
	if err := s.CreateGroup(ctx, want); err != nil {
		t.Fatal(err)
	}
	got, err := s.Group(ctx, "g-1")
	if err != nil {
		t.Fatal(err)
	}
	if got.ID != want.ID || !got.Created.Equal(want.Created) || len(got.Escrow) != 1 || len(got.Unlock) != 1 {
		t.Fatalf("got %+v", got)
	}
	e, _ := got.LatestEscrow()
	if e.Version != 1 || e.Suite != "rsa-oaep-sha1" || !bytes.Equal(e.PublicKey, []byte{1, 2, 3}) ||
		e.Private.KEKVersion != 1 || !bytes.Equal(e.Private.Blob, []byte{4, 5, 6}) {
		t.Fatalf("escrow key %+v", e)
	}
	u, _ := got.LatestUnlock()
	if u.Version != 1 || !bytes.Equal(u.Key.Blob, []byte{7, 8}) {
		t.Fatalf("unlock key %+v", u)
	}
}

func testGroupExists(t *testing.T, open Opener) {
	s, _ := open(t)
	ctx := context.Background()
	if err := s.CreateGroup(ctx, sampleGroup("g")); err != nil {
		t.Fatal(err)
	}
	other := sampleGroup("g")
	other.Escrow[0].PublicKey = []byte{9}
	if err := s.CreateGroup(ctx, other); !errors.Is(err, store.ErrExists) {
		t.Fatalf("second create: %v, want ErrExists", err)
	}
	got, _ := s.Group(ctx, "g")
	if !bytes.Equal(got.Escrow[0].PublicKey, []byte{1, 2, 3}) {
		t.Fatal("second create overwrote the group")
	}
}

func testGroupNotFound(t *testing.T, open Opener) {
	s, _ := open(t)
	ctx := context.Background()
	if _, err := s.Group(ctx, "nope"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("Group: %v, want ErrNotFound", err)
	}
	if _, err := s.Codes(ctx, "nope", "u"); !errors.Is(err, store.ErrNoEpoch) {
		t.Fatalf("Codes: %v, want ErrNoEpoch", err)
	}
	if _, err := s.StartEpoch(ctx, "nope", "u", 0, 1, 5); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("StartEpoch on a missing group: %v, want ErrNotFound", err)
	}
	if _, _, err := s.ClaimCode(ctx, "nope", "u"); !errors.Is(err, store.ErrNoEpoch) {
		t.Fatalf("ClaimCode: %v, want ErrNoEpoch", err)
	}
}

func testEpochCAS(t *testing.T, open Opener) {
	s, _ := open(t)
	ctx := context.Background()
	if err := s.CreateGroup(ctx, sampleGroup("g")); err != nil {
		t.Fatal(err)
	}
	c, err := s.StartEpoch(ctx, "g", "u", 0, 1, 5)
	if err != nil {
		t.Fatal(err)
	}
	if c.Epoch != 1 || len(c.Revealed) != 5 || c.Remaining() != 5 || c.UnlockVersion != 1 {
		t.Fatalf("first epoch %+v", c)
	}
	if _, err := s.StartEpoch(ctx, "g", "u", 0, 1, 5); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("stale StartEpoch: %v, want ErrConflict", err)
	}
	if _, _, err := s.ClaimCode(ctx, "g", "u"); err != nil {
		t.Fatal(err)
	}
	c, err = s.StartEpoch(ctx, "g", "u", 1, 1, 3)
	if err != nil {
		t.Fatal(err)
	}
	if c.Epoch != 2 || len(c.Revealed) != 3 || c.Remaining() != 3 {
		t.Fatalf("second epoch %+v: a new epoch starts with every code unrevealed", c)
	}
	// Another user of the same group is independent.
	if c, err := s.StartEpoch(ctx, "g", "v", 0, 1, 2); err != nil || c.Epoch != 1 {
		t.Fatalf("other user: %+v, %v", c, err)
	}
}

func testClaimOrder(t *testing.T, open Opener) {
	s, _ := open(t)
	ctx := context.Background()
	if err := s.CreateGroup(ctx, sampleGroup("g")); err != nil {
		t.Fatal(err)
	}
	if _, err := s.StartEpoch(ctx, "g", "u", 0, 1, 3); err != nil {
		t.Fatal(err)
	}
	for want := range 3 {
		i, c, err := s.ClaimCode(ctx, "g", "u")
		if err != nil || i != want || c.Remaining() != 2-want {
			t.Fatalf("claim %d: index %d remaining %d err %v", want, i, c.Remaining(), err)
		}
	}
	if _, _, err := s.ClaimCode(ctx, "g", "u"); !errors.Is(err, store.ErrExhausted) {
		t.Fatalf("claim past the end: %v, want ErrExhausted", err)
	}
	c, err := s.Codes(ctx, "g", "u")
	if err != nil || c.Remaining() != 0 {
		t.Fatalf("codes after claims: %+v, %v", c, err)
	}
}

func testClaimConcurrent(t *testing.T, open Opener) {
	s, _ := open(t)
	ctx := context.Background()
	if err := s.CreateGroup(ctx, sampleGroup("g")); err != nil {
		t.Fatal(err)
	}
	const codes, claimers = 20, 50
	if _, err := s.StartEpoch(ctx, "g", "u", 0, 1, codes); err != nil {
		t.Fatal(err)
	}
	var (
		mu        sync.Mutex
		seen      = map[int]int{}
		exhausted int
		wg        sync.WaitGroup
	)
	for range claimers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			i, _, err := s.ClaimCode(ctx, "g", "u")
			mu.Lock()
			defer mu.Unlock()
			switch {
			case errors.Is(err, store.ErrExhausted):
				exhausted++
			case err != nil:
				t.Errorf("claim: %v", err)
			default:
				seen[i]++
			}
		}()
	}
	wg.Wait()
	if len(seen) != codes || exhausted != claimers-codes {
		t.Fatalf("%d distinct indexes and %d exhausted, want %d and %d", len(seen), exhausted, codes, claimers-codes)
	}
	for i, n := range seen {
		if n != 1 {
			t.Errorf("index %d claimed %d times", i, n)
		}
	}
}

func testReopen(t *testing.T, open Opener) {
	s, reopen := open(t)
	ctx := context.Background()
	if err := s.CreateGroup(ctx, sampleGroup("g")); err != nil {
		t.Fatal(err)
	}
	if _, err := s.StartEpoch(ctx, "g", "u", 0, 1, 2); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.ClaimCode(ctx, "g", "u"); err != nil {
		t.Fatal(err)
	}
	s = reopen()
	if _, err := s.Group(ctx, "g"); err != nil {
		t.Fatalf("group lost on reopen: %v", err)
	}
	i, _, err := s.ClaimCode(ctx, "g", "u")
	if err != nil || i != 1 {
		t.Fatalf("claim after reopen: index %d, %v; want 1: a reveal before the restart must stay revealed", i, err)
	}
}

func testCanceled(t *testing.T, open Opener) {
	s, _ := open(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := s.CreateGroup(ctx, sampleGroup("g")); !errors.Is(err, context.Canceled) {
		t.Fatalf("CreateGroup with a canceled context: %v", err)
	}
	if _, err := s.Group(context.Background(), "g"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("a canceled create wrote the group: %v", err)
	}
}

var t0 = time.Date(2026, 1, 2, 10, 30, 0, 0, time.UTC)

func testRateWindows(t *testing.T, open Opener) {
	s, _ := open(t)
	ctx := context.Background()
	l := []store.RateLimit{{Key: "k", Max: 2, Window: time.Hour}}
	for i := range 2 {
		if _, err := s.TakeRate(ctx, t0.Add(time.Duration(i)*time.Minute), l); err != nil {
			t.Fatalf("take %d: %v", i, err)
		}
	}
	if i, err := s.TakeRate(ctx, t0.Add(29*time.Minute), l); !errors.Is(err, store.ErrRateLimited) || i != 0 {
		t.Fatalf("third take in the window: %d, %v; want 0, ErrRateLimited", i, err)
	}
	// The next window (11:00) starts empty.
	if _, err := s.TakeRate(ctx, t0.Add(30*time.Minute), l); err != nil {
		t.Fatalf("take in the next window: %v", err)
	}
	// Keys are independent.
	if _, err := s.TakeRate(ctx, t0, []store.RateLimit{{Key: "other", Max: 1, Window: time.Hour}}); err != nil {
		t.Fatal(err)
	}
}

func testRateAllOrNothing(t *testing.T, open Opener) {
	s, _ := open(t)
	ctx := context.Background()
	small := store.RateLimit{Key: "small", Max: 1, Window: time.Hour}
	big := store.RateLimit{Key: "big", Max: 10, Window: time.Hour}
	if _, err := s.TakeRate(ctx, t0, []store.RateLimit{big, small}); err != nil {
		t.Fatal(err)
	}
	// small is full: the request is refused and big is not counted.
	for range 5 {
		if i, err := s.TakeRate(ctx, t0, []store.RateLimit{big, small}); !errors.Is(err, store.ErrRateLimited) || i != 1 {
			t.Fatalf("take with small full: %d, %v", i, err)
		}
	}
	for i := range 9 {
		if _, err := s.TakeRate(ctx, t0, []store.RateLimit{big}); err != nil {
			t.Fatalf("big take %d: refused requests were counted: %v", i, err)
		}
	}
	if _, err := s.TakeRate(ctx, t0, []store.RateLimit{big}); !errors.Is(err, store.ErrRateLimited) {
		t.Fatalf("big past 10: %v", err)
	}
}

func testRateConcurrent(t *testing.T, open Opener) {
	s, _ := open(t)
	ctx := context.Background()
	const max, tries = 25, 80
	l := []store.RateLimit{{Key: "hot", Max: max, Window: time.Hour}}
	var ok, limited int
	var mu sync.Mutex
	var wg sync.WaitGroup
	for range tries {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := s.TakeRate(ctx, t0, l)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				ok++
			case errors.Is(err, store.ErrRateLimited):
				limited++
			default:
				t.Errorf("TakeRate: %v", err)
			}
		}()
	}
	wg.Wait()
	if ok != max || limited != tries-max {
		t.Fatalf("%d allowed and %d limited, want exactly %d and %d", ok, limited, max, tries-max)
	}
}

func testRateReopen(t *testing.T, open Opener) {
	s, reopen := open(t)
	ctx := context.Background()
	l := []store.RateLimit{{Key: "k", Max: 1, Window: 24 * time.Hour}}
	if _, err := s.TakeRate(ctx, t0, l); err != nil {
		t.Fatal(err)
	}
	s = reopen()
	if _, err := s.TakeRate(ctx, t0.Add(time.Minute), l); !errors.Is(err, store.ErrRateLimited) {
		t.Fatalf("after reopen: %v; a restart must not reset rate limits", err)
	}
}

func testApprovalRules(t *testing.T, open Opener) {
	s, _ := open(t)
	ctx := context.Background()
	a := store.Approval{ID: "a1", Operation: "RevealUnlockCode", Group: "vip", User: "u", Ticket: "SUP-1",
		Requester: "alice", Created: t0, Expires: t0.Add(5 * time.Minute)}
	if err := s.CreateApproval(ctx, a); err != nil {
		t.Fatal(err)
	}
	if err := s.CreateApproval(ctx, a); !errors.Is(err, store.ErrExists) {
		t.Fatalf("duplicate id: %v", err)
	}
	if _, err := s.Approve(ctx, "nope", "bob", t0); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("unknown id: %v", err)
	}
	p, err := s.PendingApprovals(ctx, t0.Add(time.Minute))
	if err != nil || len(p) != 1 || p[0].ID != "a1" || p[0].Requester != "alice" {
		t.Fatalf("pending: %+v, %v", p, err)
	}
	if _, err := s.Approve(ctx, "a1", "alice", t0.Add(time.Minute)); !errors.Is(err, store.ErrSelfApproval) {
		t.Fatalf("self approval: %v", err)
	}
	if _, err := s.Approve(ctx, "a1", "bob", t0.Add(5*time.Minute)); !errors.Is(err, store.ErrExpired) {
		t.Fatalf("approval at the deadline: %v", err)
	}
	got, err := s.Approve(ctx, "a1", "bob", t0.Add(4*time.Minute))
	if err != nil || got.Approver != "bob" || !got.Approved.Equal(t0.Add(4*time.Minute)) {
		t.Fatalf("approve: %+v, %v", got, err)
	}
	if _, err := s.Approve(ctx, "a1", "carol", t0.Add(4*time.Minute)); !errors.Is(err, store.ErrNotPending) {
		t.Fatalf("second approval: %v", err)
	}
	if got, _ := s.Approval(ctx, "a1"); got.Approver != "bob" {
		t.Fatalf("stored approval %+v", got)
	}
	if p, _ := s.PendingApprovals(ctx, t0.Add(time.Minute)); len(p) != 0 {
		t.Fatalf("an approved request is still pending: %+v", p)
	}
	// Expired requests are not pending.
	b := a
	b.ID, b.Expires = "a2", t0.Add(time.Minute)
	if err := s.CreateApproval(ctx, b); err != nil {
		t.Fatal(err)
	}
	if p, _ := s.PendingApprovals(ctx, t0.Add(2*time.Minute)); len(p) != 0 {
		t.Fatalf("an expired request is pending: %+v", p)
	}
}

func testApprovalConcurrent(t *testing.T, open Opener) {
	s, _ := open(t)
	ctx := context.Background()
	if err := s.CreateApproval(ctx, store.Approval{ID: "x", Requester: "alice", Created: t0, Expires: t0.Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	winners := 0
	for i := range 10 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := s.Approve(ctx, "x", fmt.Sprintf("tech-%d", i), t0)
			if err == nil {
				mu.Lock()
				winners++
				mu.Unlock()
			} else if !errors.Is(err, store.ErrNotPending) {
				t.Errorf("Approve: %v", err)
			}
		}()
	}
	wg.Wait()
	if winners != 1 {
		t.Fatalf("%d approvals succeeded, want 1", winners)
	}
}
