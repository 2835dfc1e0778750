package storetest

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/escrowd/escrowd/store"
)

// allEvents reads every event after after, page by page, checking that
// the numbers follow one another.
func allEvents(t *testing.T, s store.Store, after uint64) ([]store.Event, uint64) {
	t.Helper()
	var out []store.Event
	for {
		p, err := s.Events(context.Background(), after, 4)
		if err != nil {
			t.Fatalf("Events(%d): %v", after, err)
		}
		if len(p.Events) == 0 {
			return out, p.Last
		}
		for _, e := range p.Events {
			// The first may follow pruned events; the rest follow it.
			if e.Seq <= after || len(out) > 0 && e.Seq != after+1 {
				t.Fatalf("event %d follows %d: numbers must follow one another", e.Seq, after)
			}
			after = e.Seq
			out = append(out, e)
		}
	}
}

// lastEvent is the highest event number given so far.
func lastEvent(t *testing.T, s store.Store) uint64 {
	t.Helper()
	p, err := s.Events(context.Background(), 0, 1)
	if err != nil {
		t.Fatal(err)
	}
	return p.Last
}

func withOrigin(o store.Origin) context.Context { return store.WithOrigin(context.Background(), o) }

// testEventsEachChange: every change a user should hear of writes its
// event, with what the change was and the origin of the request, numbered
// 1, 2, 3, … in order; changes users need not hear of write none.
func testEventsEachChange(t *testing.T, open Opener) {
	s, _ := open(t)
	bg := context.Background()
	if p, err := s.Events(bg, 0, 10); err != nil || len(p.Events) != 0 || p.Last != 0 {
		t.Fatalf("events of an empty store: %+v, %v", p, err)
	}
	if err := s.CreateGroup(bg, sampleGroup("g")); err != nil {
		t.Fatal(err)
	}
	sync := store.Origin{RequestID: "req-issue", Caller: "spiffe://t/sync", CallerName: "sync-backend"}
	if _, err := s.StartEpoch(withOrigin(sync), "g", "u", 0, 1, 3, nonce(0x5a)); err != nil {
		t.Fatal(err)
	}
	reveal := store.Origin{RequestID: "req-reveal", Caller: "spiffe://t/alice", CallerName: "alice", Ticket: "SUP-1",
		Approver: "spiffe://t/bob", ApproverName: "bob"}
	if _, _, err := s.ClaimCode(withOrigin(reveal), "g", "u"); err != nil {
		t.Fatal(err)
	}
	if err := s.CreateApproval(bg, store.Approval{ID: "req-pending", Operation: store.OperationReveal, Group: "g", User: "u",
		Ticket: "SUP-2", Requester: "spiffe://t/alice", Created: t0, Expires: t0.Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	approve := store.Origin{RequestID: "req-approve", Caller: "spiffe://t/bob", CallerName: "bob", RequesterName: "alice"}
	if _, err := s.Approve(withOrigin(approve), "req-pending", "spiffe://t/bob", t0.Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	// An approval of another operation is no reveal: no event.
	if err := s.CreateApproval(bg, store.Approval{ID: "req-rewrap", Operation: "Rewrap", Group: "g",
		Requester: "spiffe://t/alice", Created: t0, Expires: t0.Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Approve(withOrigin(approve), "req-rewrap", "spiffe://t/bob", t0.Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	rotate := store.Origin{RequestID: "req-rotate", Caller: "spiffe://t/carol", CallerName: "carol"}
	if _, err := s.UpdateGroup(withOrigin(rotate), "g", func(g *store.Group) error {
		g.Unlock = append(g.Unlock, store.UnlockKey{Version: 2, Key: store.WrappedKey{KEKVersion: 1, Blob: []byte{2}}})
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	// Retiring a version adds none: no event.
	if _, err := s.UpdateGroup(withOrigin(rotate), "g", func(g *store.Group) error { g.MinUnlockVersion = 2; return nil }); err != nil {
		t.Fatal(err)
	}
	// Consuming a code is the device's own act: no event.
	if _, err := s.ConsumeCode(bg, "g", "u", 1, 0); err != nil {
		t.Fatal(err)
	}
	gdk := store.Origin{RequestID: "req-gdk", Caller: "spiffe://t/sync", CallerName: "sync-backend"}
	cs, err := s.RecordGDKRotation(withOrigin(gdk), store.GDKRotation{Group: "g", OldGDKVersion: 1, GDKVersion: 2, Epochs: []store.EpochStart{
		{User: "u", PrevEpoch: 1, UnlockVersion: 2, Codes: 2, Nonce: nonce(0x6b)},
		{User: "v", PrevEpoch: 0, UnlockVersion: 2, Codes: 4, Nonce: nonce(0x7c)},
	}})
	if err != nil {
		t.Fatal(err)
	}
	if len(cs) != 2 || cs[0].User != "u" || cs[0].Epoch != 2 || cs[0].Remaining() != 2 || cs[1].User != "v" || cs[1].Epoch != 1 || len(cs[1].Revealed) != 4 {
		t.Fatalf("RecordGDKRotation returned %+v", cs)
	}
	if c, err := s.Codes(bg, "g", "u"); err != nil || c.Epoch != 2 || c.UnlockVersion != 2 || c.Remaining() != 2 || c.IsConsumed(0) {
		t.Fatalf("u after the rotation: %+v, %v", c, err)
	}
	// A job's checkpoint that adds an escrow version.
	if err := s.CreateJob(bg, sampleJob("job-1")); err != nil {
		t.Fatal(err)
	}
	leased(t, s, "job-1", "me")
	g, _ := s.Group(bg, "g")
	g.Escrow = append(g.Escrow, store.EscrowKey{Version: 2, Suite: "rsa-oaep-sha1", PublicKey: []byte{9}, Private: store.WrappedKey{KEKVersion: 1, Blob: []byte{9}}})
	if _, err := s.CommitBatch(withOrigin(store.Origin{Job: "job-1"}), store.Batch{JobID: "job-1", Owner: "me", Groups: []store.Group{g}, Cursor: "g", Done: 1, Changed: 1}); err != nil {
		t.Fatal(err)
	}

	got, last := allEvents(t, s, 0)
	want := []store.Event{
		{Seq: 1, Kind: store.EventEpochIssued, Group: "g", User: "u", Epoch: 1, Codes: 3, UnlockVersion: 1,
			Caller: sync.Caller, CallerName: sync.CallerName, RequestID: sync.RequestID},
		{Seq: 2, Kind: store.EventCodeRevealed, Group: "g", User: "u", Epoch: 1, Index: 0, UnlockVersion: 1, Ticket: "SUP-1",
			Caller: reveal.Caller, CallerName: "alice", Approver: reveal.Approver, ApproverName: "bob", RequestID: reveal.RequestID},
		{Seq: 3, Kind: store.EventRevealApproved, Group: "g", User: "u", Ticket: "SUP-2", Requester: "spiffe://t/alice", RequesterName: "alice",
			RevealID: "req-pending", Caller: approve.Caller, CallerName: "bob", RequestID: approve.RequestID},
		{Seq: 4, Kind: store.EventKeyRotated, Group: "g", UnlockVersion: 2, Caller: rotate.Caller, CallerName: "carol", RequestID: rotate.RequestID},
		{Seq: 5, Kind: store.EventGDKRotated, Group: "g", OldGDKVersion: 1, GDKVersion: 2, Caller: gdk.Caller, CallerName: gdk.CallerName, RequestID: gdk.RequestID},
		{Seq: 6, Kind: store.EventEpochIssued, Group: "g", User: "u", Epoch: 2, Codes: 2, UnlockVersion: 2, GDKVersion: 2,
			Caller: gdk.Caller, CallerName: gdk.CallerName, RequestID: gdk.RequestID},
		{Seq: 7, Kind: store.EventEpochIssued, Group: "g", User: "v", Epoch: 1, Codes: 4, UnlockVersion: 2, GDKVersion: 2,
			Caller: gdk.Caller, CallerName: gdk.CallerName, RequestID: gdk.RequestID},
		{Seq: 8, Kind: store.EventKeyRotated, Group: "g", EscrowVersion: 2, Job: "job-1"},
	}
	if last != uint64(len(want)) || len(got) != len(want) {
		t.Fatalf("%d events, last %d; want %d:\n%s", len(got), last, len(want), describeEvents(got))
	}
	start := time.Now().Add(-time.Hour)
	for i, e := range got {
		switch {
		case e.Kind == store.EventRevealApproved:
			if !e.Time.Equal(t0.Add(time.Minute)) {
				t.Errorf("reveal_approved at %v, want the approval's time %v", e.Time, t0.Add(time.Minute))
			}
		case e.Time.Before(start) || e.Time.After(time.Now().Add(time.Minute)):
			t.Errorf("event %d: time %v, want the store's clock at the change", e.Seq, e.Time)
		}
		e.Time = time.Time{}
		if e != want[i] {
			t.Errorf("event %d:\n got %+v\nwant %+v", i+1, e, want[i])
		}
	}
	// No event holds an epoch's nonce, and none has a field for a key.
	raw, _ := json.Marshal(got)
	for _, n := range [][]byte{nonce(0x5a), nonce(0x6b), nonce(0x7c)} {
		if strings.Contains(string(raw), base64.StdEncoding.EncodeToString(n)) {
			t.Errorf("an event holds the nonce %x", n)
		}
	}
	for _, f := range []string{"nonce", "blob", "public_key", "private", "wrapped"} {
		if strings.Contains(string(raw), f) {
			t.Errorf("events have a field %q:\n%s", f, raw)
		}
	}
}

func describeEvents(es []store.Event) string {
	var b strings.Builder
	for _, e := range es {
		fmt.Fprintf(&b, "  %+v\n", e)
	}
	return b.String()
}

// testEventsOnlyWithChange: a call that fails changes nothing and writes
// no event, whatever stage it fails at.
func testEventsOnlyWithChange(t *testing.T, open Opener) {
	s, _ := open(t)
	ctx := context.Background()
	expect := func(n uint64, what string) {
		t.Helper()
		if got := lastEvent(t, s); got != n {
			t.Fatalf("after %s: %d events, want %d", what, got, n)
		}
	}
	if _, err := s.StartEpoch(ctx, "nope", "u", 0, 1, 2, nonce(1)); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("StartEpoch of a missing group: %v", err)
	}
	expect(0, "StartEpoch of a missing group")
	for _, id := range []string{"g", "h"} {
		if err := s.CreateGroup(ctx, sampleGroup(id)); err != nil {
			t.Fatal(err)
		}
	}
	expect(0, "CreateGroup")
	if _, err := s.StartEpoch(ctx, "g", "u", 0, 1, 2, []byte{1}); err == nil {
		t.Fatal("StartEpoch with a short nonce succeeded")
	}
	expect(0, "StartEpoch with a short nonce")
	if _, _, err := s.ClaimCode(ctx, "g", "u"); !errors.Is(err, store.ErrNoEpoch) {
		t.Fatalf("ClaimCode before any epoch: %v", err)
	}
	expect(0, "ClaimCode before any epoch")
	if _, err := s.StartEpoch(ctx, "g", "u", 0, 1, 1, nonce(1)); err != nil {
		t.Fatal(err)
	}
	expect(1, "StartEpoch")
	if _, err := s.StartEpoch(ctx, "g", "u", 0, 1, 1, nonce(1)); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("stale StartEpoch: %v", err)
	}
	expect(1, "a stale StartEpoch")
	if _, _, err := s.ClaimCode(ctx, "g", "u"); err != nil {
		t.Fatal(err)
	}
	expect(2, "ClaimCode")
	if _, _, err := s.ClaimCode(ctx, "g", "u"); !errors.Is(err, store.ErrExhausted) {
		t.Fatalf("ClaimCode past the end: %v", err)
	}
	expect(2, "ClaimCode past the end")

	a := store.Approval{ID: "p", Operation: store.OperationReveal, Group: "g", User: "u", Ticket: "SUP-1",
		Requester: "alice", Created: t0, Expires: t0.Add(time.Minute)}
	if err := s.CreateApproval(ctx, a); err != nil {
		t.Fatal(err)
	}
	expect(2, "CreateApproval")
	for _, bad := range []struct {
		id, approver string
		at           time.Time
		err          error
	}{
		{"nope", "bob", t0, store.ErrNotFound},
		{"p", "alice", t0, store.ErrSelfApproval},
		{"p", "bob", t0.Add(time.Minute), store.ErrExpired},
	} {
		if _, err := s.Approve(ctx, bad.id, bad.approver, bad.at); !errors.Is(err, bad.err) {
			t.Fatalf("Approve(%s, %s): %v, want %v", bad.id, bad.approver, err, bad.err)
		}
		expect(2, fmt.Sprintf("a refused Approve (%v)", bad.err))
	}
	if _, err := s.Approve(ctx, "p", "bob", t0); err != nil {
		t.Fatal(err)
	}
	expect(3, "Approve")
	if _, err := s.Approve(ctx, "p", "carol", t0); !errors.Is(err, store.ErrNotPending) {
		t.Fatalf("second Approve: %v", err)
	}
	expect(3, "a second Approve")

	boom := errors.New("boom")
	if _, err := s.UpdateGroup(ctx, "g", func(g *store.Group) error {
		g.Escrow = append(g.Escrow, store.EscrowKey{Version: 2})
		return boom
	}); !errors.Is(err, boom) {
		t.Fatalf("aborted UpdateGroup: %v", err)
	}
	expect(3, "an aborted rotation")
	if _, err := s.UpdateGroup(ctx, "nope", func(g *store.Group) error {
		g.Escrow = append(g.Escrow, store.EscrowKey{Version: 2})
		return nil
	}); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("UpdateGroup of a missing group: %v", err)
	}
	expect(3, "UpdateGroup of a missing group")

	// A GDK rotation whose second user's epoch moved on: nothing of it is
	// written, not even the first user's epoch.
	rot := store.GDKRotation{Group: "g", OldGDKVersion: 1, GDKVersion: 2, Epochs: []store.EpochStart{
		{User: "w", PrevEpoch: 0, UnlockVersion: 1, Codes: 2, Nonce: nonce(2)},
		{User: "u", PrevEpoch: 0, UnlockVersion: 1, Codes: 2, Nonce: nonce(2)},
	}}
	if _, err := s.RecordGDKRotation(ctx, rot); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("RecordGDKRotation over a moved epoch: %v, want ErrConflict", err)
	}
	expect(3, "a conflicting GDK rotation")
	if _, err := s.Codes(ctx, "g", "w"); !errors.Is(err, store.ErrNoEpoch) {
		t.Fatalf("a failed GDK rotation started w's epoch: %v", err)
	}
	if c, _ := s.Codes(ctx, "g", "u"); c.Epoch != 1 {
		t.Fatalf("a failed GDK rotation moved u's epoch: %+v", c)
	}
	rot.Epochs[1].PrevEpoch, rot.Epochs[1].Nonce = 1, []byte{3}
	if _, err := s.RecordGDKRotation(ctx, rot); err == nil {
		t.Fatal("RecordGDKRotation with a short nonce succeeded")
	}
	expect(3, "a GDK rotation with a short nonce")
	rot.Epochs[1].Nonce = nonce(3)
	rot.Group = "nope"
	if _, err := s.RecordGDKRotation(ctx, rot); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("RecordGDKRotation of a missing group: %v", err)
	}
	expect(3, "a GDK rotation of a missing group")
	rot.Group = "g"
	if _, err := s.RecordGDKRotation(ctx, rot); err != nil {
		t.Fatal(err)
	}
	expect(6, "a GDK rotation with two epochs")

	// A job checkpoint over a group that changed: no event for any group.
	if err := s.CreateJob(ctx, sampleJob("j")); err != nil {
		t.Fatal(err)
	}
	leased(t, s, "j", "me")
	g, _ := s.Group(ctx, "g")
	h, _ := s.Group(ctx, "h")
	if _, err := s.UpdateGroup(ctx, "h", func(g *store.Group) error { g.MinEscrowVersion = 1; return nil }); err != nil {
		t.Fatal(err)
	}
	expect(6, "a retirement")
	for _, x := range []*store.Group{&g, &h} {
		x.Escrow = append(x.Escrow, store.EscrowKey{Version: 2})
	}
	if _, err := s.CommitBatch(ctx, store.Batch{JobID: "j", Owner: "me", Groups: []store.Group{g, h}, Cursor: "h", Done: 2}); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("CommitBatch over a changed group: %v", err)
	}
	expect(6, "a conflicting checkpoint")
	if _, err := s.CommitBatch(ctx, store.Batch{JobID: "j", Owner: "other", Groups: []store.Group{g}, Cursor: "g", Done: 1}); !errors.Is(err, store.ErrLeaseHeld) {
		t.Fatalf("fenced CommitBatch: %v", err)
	}
	expect(6, "a fenced checkpoint")
	canceled, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := s.StartEpoch(canceled, "g", "z", 0, 1, 1, nonce(1)); err == nil {
		t.Fatal("StartEpoch with a canceled context succeeded")
	}
	if _, _, err := s.ClaimCode(canceled, "g", "w"); err == nil {
		t.Fatal("ClaimCode with a canceled context succeeded")
	}
	expect(6, "calls with a canceled context")
	if _, err := s.Events(canceled, 0, 1); !errors.Is(err, context.Canceled) {
		t.Fatalf("Events with a canceled context: %v", err)
	}
}

// issueN writes n events: one epoch each for users e000, e001, … of
// group g, which it creates if needed.
func issueN(t *testing.T, s store.Store, from, n int) {
	t.Helper()
	ctx := context.Background()
	if _, err := s.Group(ctx, "g"); errors.Is(err, store.ErrNotFound) {
		if err := s.CreateGroup(ctx, sampleGroup("g")); err != nil {
			t.Fatal(err)
		}
	}
	for i := from; i < from+n; i++ {
		if _, err := s.StartEpoch(ctx, "g", fmt.Sprintf("e%03d", i), 0, 1, 1, nonce(1)); err != nil {
			t.Fatal(err)
		}
	}
}

// testEventsPaged: pages follow the cursor; an empty page after the last
// event; limits are clamped to 1 … MaxEventPage.
func testEventsPaged(t *testing.T, open Opener) {
	s, _ := open(t)
	ctx := context.Background()
	issueN(t, s, 0, 25)
	var after uint64
	for _, want := range []int{10, 10, 5, 0} {
		p, err := s.Events(ctx, after, 10)
		if err != nil || len(p.Events) != want || p.Last != 25 {
			t.Fatalf("page after %d: %d events, last %d, %v; want %d, last 25", after, len(p.Events), p.Last, err, want)
		}
		for i, e := range p.Events {
			if e.Seq != after+uint64(i)+1 || e.User != fmt.Sprintf("e%03d", e.Seq-1) {
				t.Fatalf("page after %d, event %d: %+v", after, i, e)
			}
		}
		if want > 0 {
			after = p.Events[len(p.Events)-1].Seq
		}
	}
	for _, tt := range []struct {
		after uint64
		limit int
		want  int
	}{{0, 0, 1}, {0, -5, 1}, {3, store.MaxEventPage + 50, 22}, {24, 1, 1}, {25, 5, 0}, {1 << 63, 5, 0}, {^uint64(0), 5, 0}} {
		p, err := s.Events(ctx, tt.after, tt.limit)
		if err != nil || len(p.Events) != tt.want || p.Last != 25 {
			t.Fatalf("Events(%d, %d): %d events, last %d, %v; want %d", tt.after, tt.limit, len(p.Events), p.Last, err, tt.want)
		}
	}
	// One transaction of MaxEventPage+1 events (a rotation's epochs).
	rot := store.GDKRotation{Group: "g", OldGDKVersion: 1, GDKVersion: 2}
	for i := range store.MaxEventPage {
		rot.Epochs = append(rot.Epochs, store.EpochStart{User: fmt.Sprintf("r%04d", i), UnlockVersion: 1, Codes: 1, Nonce: nonce(1)})
	}
	if _, err := s.RecordGDKRotation(ctx, rot); err != nil {
		t.Fatal(err)
	}
	p, err := s.Events(ctx, 25, store.MaxEventPage+1)
	if err != nil || len(p.Events) != store.MaxEventPage || p.Last != 25+store.MaxEventPage+1 ||
		p.Events[0].Kind != store.EventGDKRotated || p.Events[1].User != "r0000" || p.Events[store.MaxEventPage-1].User != fmt.Sprintf("r%04d", store.MaxEventPage-2) {
		t.Fatalf("a page larger than MaxEventPage: %d events, last %d, %v", len(p.Events), p.Last, err)
	}
}

// testEventsPrune: pruning by age and by count removes a prefix; numbers
// are never reused, across a reopen too.
func testEventsPrune(t *testing.T, open Opener) {
	s, reopen := open(t)
	ctx := context.Background()
	issueN(t, s, 0, 3)
	time.Sleep(5 * time.Millisecond)
	mid := time.Now()
	time.Sleep(5 * time.Millisecond)
	issueN(t, s, 3, 3)
	seqs := func() []uint64 {
		t.Helper()
		es, _ := allEvents(t, s, 0)
		var out []uint64
		for _, e := range es {
			out = append(out, e.Seq)
		}
		return out
	}
	if n, err := s.PruneEvents(ctx, mid.Add(-time.Hour), 0); err != nil || n != 0 {
		t.Fatalf("pruning nothing: %d, %v", n, err)
	}
	if n, err := s.PruneEvents(ctx, mid, 0); err != nil || n != 3 {
		t.Fatalf("pruning by age: %d, %v; want 3", n, err)
	}
	if got := fmt.Sprint(seqs()); got != "[4 5 6]" {
		t.Fatalf("after pruning by age: %s", got)
	}
	// A reader whose cursor fell behind the pruned events sees the next
	// one, and can tell from the gap that it missed some.
	if p, err := s.Events(ctx, 1, 10); err != nil || len(p.Events) != 3 || p.Events[0].Seq != 4 || p.Last != 6 {
		t.Fatalf("reading from a pruned cursor: %+v, %v", p, err)
	}
	if n, err := s.PruneEvents(ctx, mid.Add(-time.Hour), 2); err != nil || n != 1 {
		t.Fatalf("pruning by count: %d, %v; want 1", n, err)
	}
	if got := fmt.Sprint(seqs()); got != "[5 6]" {
		t.Fatalf("after pruning to 2 events: %s", got)
	}
	issueN(t, s, 6, 1)
	s = reopen()
	issueN(t, s, 7, 1)
	if got := fmt.Sprint(seqs()); got != "[5 6 7 8]" {
		t.Fatalf("after a reopen: %s; numbers must go on, never be reused", got)
	}
	if n, err := s.PruneEvents(ctx, time.Now().Add(time.Hour), 0); err != nil || n != 4 {
		t.Fatalf("pruning everything: %d, %v", n, err)
	}
	if p, err := s.Events(ctx, 0, 10); err != nil || len(p.Events) != 0 || p.Last != 8 {
		t.Fatalf("after pruning everything: %+v, %v; want no event and last 8", p, err)
	}
	issueN(t, s, 8, 1)
	if got := fmt.Sprint(seqs()); got != "[9]" {
		t.Fatalf("the event after pruning everything: %s", got)
	}
}

// testEventsConcurrentReader: writers on several users, and a reader
// following the cursor while they write. The reader sees every event
// exactly once, numbered without a gap, however the writers' transactions
// interleave and commit.
func testEventsConcurrentReader(t *testing.T, open Opener) {
	s, _ := open(t)
	ctx := context.Background()
	if err := s.CreateGroup(ctx, sampleGroup("g")); err != nil {
		t.Fatal(err)
	}
	const writers, each = 8, 15
	var wg sync.WaitGroup
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			user := fmt.Sprintf("w%d", w)
			for i := range each {
				if _, err := s.StartEpoch(ctx, "g", user, uint32(i), 1, 1, nonce(1)); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	seen := map[string]int{}
	var after uint64
	for finished := false; ; {
		select {
		case <-done:
			finished = true
		default:
		}
		p, err := s.Events(ctx, after, 3)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range p.Events {
			if e.Seq != after+1 {
				t.Fatalf("event %d after %d: the reader skipped an event", e.Seq, after)
			}
			after = e.Seq
			seen[fmt.Sprintf("%s/%d", e.User, e.Epoch)]++
		}
		if finished && len(p.Events) == 0 {
			break
		}
	}
	if len(seen) != writers*each {
		t.Fatalf("the reader saw %d distinct events, want %d", len(seen), writers*each)
	}
	for k, n := range seen {
		if n != 1 {
			t.Errorf("event %s seen %d times", k, n)
		}
	}
}
