// Package storetest is the conformance suite every store back end passes.
package storetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/escrowd/escrowd/store"
)

// Opener opens a fresh, empty store for one test. Reopen closes the store
// and opens the same data again, as a daemon restart would.
type Opener func(t *testing.T) (s store.Store, reopen func() store.Store)

// Backend is a back end under test.
type Backend struct {
	// Open opens a fresh, empty store for one test.
	Open Opener
	// Clock returns a function that sets the time the rate limits of s
	// read from then on: the process's clock of a store one process holds,
	// the database's clock of a shared one. s is a store that Open, or its
	// reopen, returned.
	Clock func(t *testing.T, s store.Store) func(time.Time)
	// Replicas, if not nil, opens one handle per element of nows on one
	// fresh, empty store, as replicas on as many machines would: each
	// handle's own (process) clock is its element of nows. setClock sets
	// the clock the store's rate limits read, as Clock does. Nil for a
	// back end that one process holds.
	Replicas func(t *testing.T, nows ...func() time.Time) (handles []store.Store, setClock func(time.Time))
}

// Run runs the suite.
func Run(t *testing.T, b Backend) {
	open := b.Open
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
		{"ConsumeCode", testConsume},
		{"EpochNonce", testEpochNonce},
		{"SurvivesReopen", testReopen},
		{"CanceledContext", testCanceled},
		{"UpdateGroupVersions", testUpdateGroup},
		{"UpdateGroupAbort", testUpdateGroupAbort},
		{"UpdateGroupConcurrent", testUpdateGroupConcurrent},
		{"ListGroupsPaged", testListGroups},
		{"Jobs", testJobs},
		{"JobLeaseConcurrent", testJobLeaseConcurrent},
		{"CommitBatch", testCommitBatch},
		{"CommitBatchFenced", testCommitBatchFenced},
		{"CommitBatchConflictWritesNothing", testCommitBatchConflict},
		{"JobsSurviveReopen", testJobsReopen},
		{"ApprovalRules", testApprovalRules},
		{"ApprovalConcurrent", testApprovalConcurrent},
		{"EventsEachChange", testEventsEachChange},
		{"EventsOnlyWithChange", testEventsOnlyWithChange},
		{"EventsPaged", testEventsPaged},
		{"EventsPrune", testEventsPrune},
		{"EventsConcurrentReader", testEventsConcurrentReader},
		{"AuditHead", testAuditHead},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) { tt.fn(t, open) })
	}
	for _, tt := range rateTests {
		t.Run(tt.name, func(t *testing.T) { tt.fn(t, b) })
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
	if _, err := s.StartEpoch(ctx, "nope", "u", 0, 1, 5, nonce(1)); !errors.Is(err, store.ErrNotFound) {
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
	c, err := s.StartEpoch(ctx, "g", "u", 0, 1, 5, nonce(1))
	if err != nil {
		t.Fatal(err)
	}
	if c.Epoch != 1 || len(c.Revealed) != 5 || c.Remaining() != 5 || c.UnlockVersion != 1 {
		t.Fatalf("first epoch %+v", c)
	}
	if _, err := s.StartEpoch(ctx, "g", "u", 0, 1, 5, nonce(1)); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("stale StartEpoch: %v, want ErrConflict", err)
	}
	if _, _, err := s.ClaimCode(ctx, "g", "u"); err != nil {
		t.Fatal(err)
	}
	c, err = s.StartEpoch(ctx, "g", "u", 1, 1, 3, nonce(1))
	if err != nil {
		t.Fatal(err)
	}
	if c.Epoch != 2 || len(c.Revealed) != 3 || c.Remaining() != 3 {
		t.Fatalf("second epoch %+v: a new epoch starts with every code unrevealed", c)
	}
	// Another user of the same group is independent.
	if c, err := s.StartEpoch(ctx, "g", "v", 0, 1, 2, nonce(1)); err != nil || c.Epoch != 1 {
		t.Fatalf("other user: %+v, %v", c, err)
	}
}

// nonce is an epoch nonce whose bytes are all b.
func nonce(b byte) []byte { return bytes.Repeat([]byte{b}, store.NonceSize) }

// testEpochNonce: the nonce given to StartEpoch is the epoch's, returned
// by every read of it and across a reopen; a new epoch replaces it; a
// nonce of the wrong size is refused and writes nothing.
func testEpochNonce(t *testing.T, open Opener) {
	s, reopen := open(t)
	ctx := context.Background()
	if err := s.CreateGroup(ctx, sampleGroup("g")); err != nil {
		t.Fatal(err)
	}
	for _, bad := range [][]byte{nil, {}, make([]byte, store.NonceSize-1), make([]byte, store.NonceSize+1)} {
		if _, err := s.StartEpoch(ctx, "g", "u", 0, 1, 2, bad); err == nil {
			t.Fatalf("StartEpoch with a %d-byte nonce succeeded", len(bad))
		}
	}
	if _, err := s.Codes(ctx, "g", "u"); !errors.Is(err, store.ErrNoEpoch) {
		t.Fatalf("a refused StartEpoch wrote an epoch: %v", err)
	}
	n1 := nonce(0xa1)
	c, err := s.StartEpoch(ctx, "g", "u", 0, 1, 2, n1)
	if err != nil || !bytes.Equal(c.Nonce, n1) {
		t.Fatalf("StartEpoch: nonce %x, %v; want %x", c.Nonce, err, n1)
	}
	n1[0] = 0 // the store keeps its own copy
	n1 = nonce(0xa1)
	if c, err := s.Codes(ctx, "g", "u"); err != nil || !bytes.Equal(c.Nonce, n1) {
		t.Fatalf("Codes: nonce %x, %v; want %x", c.Nonce, err, n1)
	}
	if _, c, err := s.ClaimCode(ctx, "g", "u"); err != nil || !bytes.Equal(c.Nonce, n1) {
		t.Fatalf("ClaimCode: nonce %x, %v; want %x", c.Nonce, err, n1)
	}
	if c, err := s.ConsumeCode(ctx, "g", "u", 1, 0); err != nil || !bytes.Equal(c.Nonce, n1) {
		t.Fatalf("ConsumeCode: nonce %x, %v; want %x", c.Nonce, err, n1)
	}
	s = reopen()
	if c, err := s.Codes(ctx, "g", "u"); err != nil || !bytes.Equal(c.Nonce, n1) {
		t.Fatalf("Codes after reopen: nonce %x, %v; want %x", c.Nonce, err, n1)
	}
	n2 := nonce(0xb2)
	if c, err := s.StartEpoch(ctx, "g", "u", 1, 1, 2, n2); err != nil || !bytes.Equal(c.Nonce, n2) || c.Epoch != 2 {
		t.Fatalf("second epoch: %+v, %v; want nonce %x", c, err, n2)
	}
	if c, err := s.Codes(ctx, "g", "u"); err != nil || !bytes.Equal(c.Nonce, n2) {
		t.Fatalf("Codes of the second epoch: nonce %x, %v; want %x", c.Nonce, err, n2)
	}
	// A refused StartEpoch leaves the current epoch's nonce alone.
	if _, err := s.StartEpoch(ctx, "g", "u", 2, 1, 2, nil); err == nil {
		t.Fatal("StartEpoch without a nonce succeeded")
	}
	if c, err := s.Codes(ctx, "g", "u"); err != nil || c.Epoch != 2 || !bytes.Equal(c.Nonce, n2) {
		t.Fatalf("after a refused StartEpoch: %+v, %v", c, err)
	}
}

func testClaimOrder(t *testing.T, open Opener) {
	s, _ := open(t)
	ctx := context.Background()
	if err := s.CreateGroup(ctx, sampleGroup("g")); err != nil {
		t.Fatal(err)
	}
	if _, err := s.StartEpoch(ctx, "g", "u", 0, 1, 3, nonce(1)); err != nil {
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

func testConsume(t *testing.T, open Opener) {
	s, _ := open(t)
	ctx := context.Background()
	if err := s.CreateGroup(ctx, sampleGroup("g")); err != nil {
		t.Fatal(err)
	}
	if _, err := s.ConsumeCode(ctx, "g", "u", 1, 0); !errors.Is(err, store.ErrNoEpoch) {
		t.Fatalf("consume before any epoch: %v, want ErrNoEpoch", err)
	}
	if _, err := s.StartEpoch(ctx, "g", "u", 0, 1, 3, nonce(1)); err != nil {
		t.Fatal(err)
	}
	if _, err := s.ConsumeCode(ctx, "g", "u", 1, 0); !errors.Is(err, store.ErrNotRevealed) {
		t.Fatalf("consume an unrevealed code: %v, want ErrNotRevealed", err)
	}
	if _, _, err := s.ClaimCode(ctx, "g", "u"); err != nil {
		t.Fatal(err)
	}
	for range 2 { // twice: idempotent
		c, err := s.ConsumeCode(ctx, "g", "u", 1, 0)
		if err != nil || !c.IsConsumed(0) || c.IsConsumed(1) {
			t.Fatalf("consume: %+v, %v", c, err)
		}
	}
	if _, err := s.ConsumeCode(ctx, "g", "u", 2, 0); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("consume in another epoch: %v, want ErrConflict", err)
	}
	if _, err := s.ConsumeCode(ctx, "g", "u", 1, 3); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("consume index 3 of 3: %v, want ErrNotFound", err)
	}
	c, err := s.Codes(ctx, "g", "u")
	if err != nil || !c.IsConsumed(0) || c.Remaining() != 2 {
		t.Fatalf("codes after consume: %+v, %v", c, err)
	}
	// A new epoch forgets consumption with the old codes.
	if c, err = s.StartEpoch(ctx, "g", "u", 1, 1, 2, nonce(1)); err != nil || c.IsConsumed(0) {
		t.Fatalf("new epoch: %+v, %v", c, err)
	}
}

func testClaimConcurrent(t *testing.T, open Opener) {
	s, _ := open(t)
	ctx := context.Background()
	if err := s.CreateGroup(ctx, sampleGroup("g")); err != nil {
		t.Fatal(err)
	}
	const codes, claimers = 20, 50
	if _, err := s.StartEpoch(ctx, "g", "u", 0, 1, codes, nonce(1)); err != nil {
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
	// One code_revealed event per code claimed, none for the claims
	// refused, whatever transactions the claims shared.
	es, _ := allEvents(t, s, 0)
	revealed := map[uint32]int{}
	for _, e := range es[1:] {
		if e.Kind != store.EventCodeRevealed {
			t.Fatalf("event %+v", e)
		}
		revealed[e.Index]++
	}
	if len(es) != 1+codes || len(revealed) != codes {
		t.Fatalf("%d events for %d distinct codes, want 1 epoch_issued and %d code_revealed", len(es), len(revealed), codes)
	}
}

func testReopen(t *testing.T, open Opener) {
	s, reopen := open(t)
	ctx := context.Background()
	if err := s.CreateGroup(ctx, sampleGroup("g")); err != nil {
		t.Fatal(err)
	}
	if _, err := s.StartEpoch(ctx, "g", "u", 0, 1, 2, nonce(1)); err != nil {
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

// testUpdateGroup: a rotation appends a version, a retirement raises the
// minimum decryption version, a destroy empties a wrapped key; each
// survives a read, and Rev counts the updates.
func testUpdateGroup(t *testing.T, open Opener) {
	s, _ := open(t)
	ctx := context.Background()
	if err := s.CreateGroup(ctx, sampleGroup("g")); err != nil {
		t.Fatal(err)
	}
	g0, _ := s.Group(ctx, "g")
	if g0.Rev != 1 {
		t.Fatalf("new group Rev %d, want 1", g0.Rev)
	}
	destroyed := time.Unix(1700000100, 0).UTC()
	got, err := s.UpdateGroup(ctx, "g", func(g *store.Group) error {
		g.Unlock = append(g.Unlock, store.UnlockKey{Version: 2, Key: store.WrappedKey{KEKVersion: 1, Blob: []byte{9}}, Created: destroyed})
		g.MinUnlockVersion = 2
		g.Unlock[0].Key.Blob = nil
		g.Unlock[0].Destroyed = destroyed
		g.ID, g.Rev = "other", 77 // ignored: the store owns both
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if got.ID != "g" || got.Rev != 2 {
		t.Fatalf("UpdateGroup returned id %q rev %d, want g and 2", got.ID, got.Rev)
	}
	r, err := s.Group(ctx, "g")
	if err != nil {
		t.Fatal(err)
	}
	if r.Rev != 2 || r.MinUnlockVersion != 2 || len(r.Unlock) != 2 || r.Unlock[0].Key.Blob != nil ||
		!r.Unlock[0].Destroyed.Equal(destroyed) || !r.Unlock[1].Destroyed.IsZero() || !bytes.Equal(r.Unlock[1].Key.Blob, []byte{9}) {
		t.Fatalf("after update: %+v", r)
	}
	if _, err := s.Group(ctx, "other"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("UpdateGroup moved the group: %v", err)
	}
	if _, err := s.UpdateGroup(ctx, "nope", func(*store.Group) error { return nil }); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("UpdateGroup of a missing group: %v, want ErrNotFound", err)
	}
}

func testUpdateGroupAbort(t *testing.T, open Opener) {
	s, _ := open(t)
	ctx := context.Background()
	if err := s.CreateGroup(ctx, sampleGroup("g")); err != nil {
		t.Fatal(err)
	}
	boom := errors.New("boom")
	_, err := s.UpdateGroup(ctx, "g", func(g *store.Group) error {
		g.MinEscrowVersion = 9
		return boom
	})
	if !errors.Is(err, boom) {
		t.Fatalf("UpdateGroup: %v, want fn's error", err)
	}
	if g, _ := s.Group(ctx, "g"); g.MinEscrowVersion != 0 || g.Rev != 1 {
		t.Fatalf("an aborted update was written: %+v", g)
	}
}

// testUpdateGroupConcurrent: concurrent rotations each add their own
// version: none lost, none doubled.
func testUpdateGroupConcurrent(t *testing.T, open Opener) {
	s, _ := open(t)
	ctx := context.Background()
	if err := s.CreateGroup(ctx, sampleGroup("g")); err != nil {
		t.Fatal(err)
	}
	const n = 20
	var wg sync.WaitGroup
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := s.UpdateGroup(ctx, "g", func(g *store.Group) error {
				last, _ := g.LatestUnlock()
				g.Unlock = append(g.Unlock, store.UnlockKey{Version: last.Version + 1, Key: store.WrappedKey{KEKVersion: 1, Blob: []byte{1}}})
				return nil
			})
			if err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	g, err := s.Group(ctx, "g")
	if err != nil {
		t.Fatal(err)
	}
	if len(g.Unlock) != n+1 || g.Rev != n+1 {
		t.Fatalf("%d unlock versions, rev %d; want %d and %d", len(g.Unlock), g.Rev, n+1, n+1)
	}
	for i, k := range g.Unlock {
		if k.Version != uint32(i+1) {
			t.Fatalf("version %d at position %d: a concurrent update was lost or doubled", k.Version, i)
		}
	}
}

func testListGroups(t *testing.T, open Opener) {
	s, _ := open(t)
	ctx := context.Background()
	ids := []string{"b", "a", "B", "a-1", "Z9", "c", "a_0"}
	for _, id := range ids {
		if err := s.CreateGroup(ctx, sampleGroup(id)); err != nil {
			t.Fatal(err)
		}
	}
	sort.Strings(ids) // byte order
	var got []string
	after := ""
	for {
		page, err := s.ListGroups(ctx, after, 3)
		if err != nil {
			t.Fatal(err)
		}
		if len(page) > 3 {
			t.Fatalf("page of %d, limit 3", len(page))
		}
		if len(page) == 0 {
			break
		}
		for _, g := range page {
			if g.Rev != 1 || len(g.Escrow) != 1 {
				t.Fatalf("listed group %+v", g)
			}
			got = append(got, g.ID)
		}
		after = page[len(page)-1].ID
	}
	if fmt.Sprint(got) != fmt.Sprint(ids) {
		t.Fatalf("listed %v, want %v (byte order)", got, ids)
	}
	if n, err := s.CountGroups(ctx); err != nil || n != int64(len(ids)) {
		t.Fatalf("CountGroups %d, %v; want %d", n, err, len(ids))
	}
}

func sampleJob(id string) store.Job {
	return store.Job{ID: id, Kind: "kek-rotation", Params: map[string]string{"to": "2"}, State: store.JobRunning,
		Pass: 1, Total: 3, Created: time.Unix(1700000000, 0).UTC(), Updated: time.Unix(1700000000, 0).UTC()}
}

func testJobs(t *testing.T, open Opener) {
	s, _ := open(t)
	ctx := context.Background()
	if _, err := s.Job(ctx, "j1"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("Job of a missing job: %v", err)
	}
	if _, err := s.UpdateJob(ctx, "j1", func(*store.Job) error { return nil }); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("UpdateJob of a missing job: %v", err)
	}
	j1, j2 := sampleJob("j1"), sampleJob("j0")
	j2.Created = j1.Created.Add(time.Second)
	for _, j := range []store.Job{j1, j2} {
		if err := s.CreateJob(ctx, j); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.CreateJob(ctx, sampleJob("j1")); !errors.Is(err, store.ErrExists) {
		t.Fatalf("second CreateJob: %v, want ErrExists", err)
	}
	all, err := s.Jobs(ctx)
	if err != nil || len(all) != 2 || all[0].ID != "j1" || all[1].ID != "j0" {
		t.Fatalf("Jobs: %+v, %v; want j1 then j0 (oldest first)", all, err)
	}
	lease := time.Unix(1700000500, 0).UTC()
	if _, err := s.UpdateJob(ctx, "j1", func(j *store.Job) error {
		j.Owner, j.LeaseUntil = "replica-a", lease
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	got, err := s.Job(ctx, "j1")
	if err != nil || got.Owner != "replica-a" || !got.LeaseUntil.Equal(lease) || got.Params["to"] != "2" || got.Kind != "kek-rotation" {
		t.Fatalf("job after update %+v, %v", got, err)
	}
}

// testJobLeaseConcurrent: of many replicas trying to take a free lease at
// once, exactly one gets it.
func testJobLeaseConcurrent(t *testing.T, open Opener) {
	s, _ := open(t)
	ctx := context.Background()
	if err := s.CreateJob(ctx, sampleJob("j")); err != nil {
		t.Fatal(err)
	}
	var (
		wg  sync.WaitGroup
		mu  sync.Mutex
		won []string
	)
	for i := range 10 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			me := fmt.Sprintf("replica-%d", i)
			_, err := s.UpdateJob(ctx, "j", func(j *store.Job) error {
				if j.Owner != "" {
					return store.ErrLeaseHeld
				}
				j.Owner = me
				return nil
			})
			if err == nil {
				mu.Lock()
				won = append(won, me)
				mu.Unlock()
			} else if !errors.Is(err, store.ErrLeaseHeld) {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	j, _ := s.Job(ctx, "j")
	if len(won) != 1 || j.Owner != won[0] {
		t.Fatalf("lease won by %v, job owner %q: want exactly one", won, j.Owner)
	}
}

func leased(t *testing.T, s store.Store, id, owner string) {
	t.Helper()
	if _, err := s.UpdateJob(context.Background(), id, func(j *store.Job) error {
		j.Owner = owner
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

func testCommitBatch(t *testing.T, open Opener) {
	s, _ := open(t)
	ctx := context.Background()
	for _, id := range []string{"a", "b"} {
		if err := s.CreateGroup(ctx, sampleGroup(id)); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.CreateJob(ctx, sampleJob("j")); err != nil {
		t.Fatal(err)
	}
	leased(t, s, "j", "me")
	a, _ := s.Group(ctx, "a")
	a.Escrow[0].Private = store.WrappedKey{KEKVersion: 2, Blob: []byte{42}}
	j, err := s.CommitBatch(ctx, store.Batch{JobID: "j", Owner: "me", Groups: []store.Group{a}, Cursor: "a", Done: 1, Changed: 1})
	if err != nil {
		t.Fatal(err)
	}
	if j.Cursor != "a" || j.Done != 1 || j.Changed != 1 || j.Owner != "me" || j.Pass != 1 {
		t.Fatalf("job after commit %+v", j)
	}
	got, _ := s.Group(ctx, "a")
	if got.Rev != 2 || got.Escrow[0].Private.KEKVersion != 2 || !bytes.Equal(got.Escrow[0].Private.Blob, []byte{42}) {
		t.Fatalf("group after commit %+v", got)
	}
	// A checkpoint with no group changed.
	if j, err = s.CommitBatch(ctx, store.Batch{JobID: "j", Owner: "me", Cursor: "b", Done: 2, Changed: 1}); err != nil || j.Cursor != "b" {
		t.Fatalf("empty batch: %+v, %v", j, err)
	}
	if _, err := s.CommitBatch(ctx, store.Batch{JobID: "nope", Owner: "me"}); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("CommitBatch of a missing job: %v", err)
	}
}

// testCommitBatchFenced: a replica whose lease was taken over cannot commit.
func testCommitBatchFenced(t *testing.T, open Opener) {
	s, _ := open(t)
	ctx := context.Background()
	if err := s.CreateGroup(ctx, sampleGroup("a")); err != nil {
		t.Fatal(err)
	}
	if err := s.CreateJob(ctx, sampleJob("j")); err != nil {
		t.Fatal(err)
	}
	leased(t, s, "j", "old")
	a, _ := s.Group(ctx, "a")
	leased(t, s, "j", "new")
	a.MinEscrowVersion = 5
	if _, err := s.CommitBatch(ctx, store.Batch{JobID: "j", Owner: "old", Groups: []store.Group{a}, Cursor: "a", Done: 1}); !errors.Is(err, store.ErrLeaseHeld) {
		t.Fatalf("commit by a replica that lost the lease: %v, want ErrLeaseHeld", err)
	}
	if g, _ := s.Group(ctx, "a"); g.MinEscrowVersion != 0 || g.Rev != 1 {
		t.Fatalf("a fenced commit changed the group: %+v", g)
	}
	if j, _ := s.Job(ctx, "j"); j.Cursor != "" || j.Done != 0 {
		t.Fatalf("a fenced commit moved the checkpoint: %+v", j)
	}
}

// testCommitBatchConflict: one stale group makes the whole batch fail, and
// nothing of it is written.
func testCommitBatchConflict(t *testing.T, open Opener) {
	s, _ := open(t)
	ctx := context.Background()
	for _, id := range []string{"a", "b"} {
		if err := s.CreateGroup(ctx, sampleGroup(id)); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.CreateJob(ctx, sampleJob("j")); err != nil {
		t.Fatal(err)
	}
	leased(t, s, "j", "me")
	a, _ := s.Group(ctx, "a")
	b, _ := s.Group(ctx, "b")
	// b is rotated behind the job's back.
	if _, err := s.UpdateGroup(ctx, "b", func(g *store.Group) error { g.MinUnlockVersion = 1; return nil }); err != nil {
		t.Fatal(err)
	}
	a.MinEscrowVersion, b.MinEscrowVersion = 3, 3
	if _, err := s.CommitBatch(ctx, store.Batch{JobID: "j", Owner: "me", Groups: []store.Group{a, b}, Cursor: "b", Done: 2}); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("commit over a changed group: %v, want ErrConflict", err)
	}
	if g, _ := s.Group(ctx, "a"); g.MinEscrowVersion != 0 || g.Rev != 1 {
		t.Fatalf("a failed batch wrote group a: %+v", g)
	}
	if g, _ := s.Group(ctx, "b"); g.MinEscrowVersion != 0 || g.MinUnlockVersion != 1 {
		t.Fatalf("a failed batch overwrote group b: %+v", g)
	}
	if j, _ := s.Job(ctx, "j"); j.Cursor != "" || j.Done != 0 {
		t.Fatalf("a failed batch moved the checkpoint: %+v", j)
	}
}

func testJobsReopen(t *testing.T, open Opener) {
	s, reopen := open(t)
	ctx := context.Background()
	if err := s.CreateGroup(ctx, sampleGroup("a")); err != nil {
		t.Fatal(err)
	}
	if err := s.CreateJob(ctx, sampleJob("j")); err != nil {
		t.Fatal(err)
	}
	leased(t, s, "j", "me")
	if _, err := s.CommitBatch(ctx, store.Batch{JobID: "j", Owner: "me", Cursor: "a", Done: 1, Changed: 1}); err != nil {
		t.Fatal(err)
	}
	s = reopen()
	j, err := s.Job(ctx, "j")
	if err != nil || j.Cursor != "a" || j.Done != 1 || j.Owner != "me" {
		t.Fatalf("job after reopen %+v, %v: a checkpoint must survive a restart", j, err)
	}
}

var t0 = time.Date(2026, 1, 2, 10, 30, 0, 0, time.UTC)

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

// auditAnchor is what a store offers the audit trail (audit.Anchor).
type auditAnchor interface {
	AuditHead(ctx context.Context, trail string) (seq, n uint64, hash string, err error)
	AdvanceAuditHead(ctx context.Context, trail string, seq, n uint64, hash string) error
}

// testAuditHead: the anchored head only moves forward, is kept by trail,
// and survives a reopen.
func testAuditHead(t *testing.T, open Opener) {
	ctx := context.Background()
	s, reopen := open(t)
	a, ok := s.(auditAnchor)
	if !ok {
		t.Fatal("the store keeps no audit head")
	}
	const trail = "secret/escrowd/audit"
	if seq, _, _, err := a.AuditHead(ctx, trail); err != nil || seq != 0 {
		t.Fatalf("empty store: head %d, %v", seq, err)
	}
	steps := []struct {
		seq, n   uint64
		hash     string
		wantSeq  uint64
		wantHash string
	}{
		{5, 40, "h5", 5, "h5"},
		{3, 20, "h3", 5, "h5"}, // never back
		{5, 41, "other", 5, "h5"},
		{9, 70, "h9", 9, "h9"},
	}
	for _, st := range steps {
		if err := a.AdvanceAuditHead(ctx, trail, st.seq, st.n, st.hash); err != nil {
			t.Fatal(err)
		}
		seq, _, hash, err := a.AuditHead(ctx, trail)
		if err != nil || seq != st.wantSeq || hash != st.wantHash {
			t.Fatalf("after advancing to %d: head %d %s, %v; want %d %s", st.seq, seq, hash, err, st.wantSeq, st.wantHash)
		}
	}
	// Another trail has a head of its own.
	if seq, _, _, err := a.AuditHead(ctx, "secret/other"); err != nil || seq != 0 {
		t.Fatalf("another trail: head %d, %v", seq, err)
	}
	if err := a.AdvanceAuditHead(ctx, "secret/other", 2, 1, "o2"); err != nil {
		t.Fatal(err)
	}
	s = reopen()
	if seq, n, hash, err := s.(auditAnchor).AuditHead(ctx, trail); err != nil || seq != 9 || n != 70 || hash != "h9" {
		t.Fatalf("after reopening: %d %d %s, %v", seq, n, hash, err)
	}
	if seq, _, hash, err := s.(auditAnchor).AuditHead(ctx, "secret/other"); err != nil || seq != 2 || hash != "o2" {
		t.Fatalf("the other trail after reopening: %d %s, %v", seq, hash, err)
	}
}
