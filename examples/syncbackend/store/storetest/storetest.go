// Package storetest is the conformance suite every sync backend store
// passes: the embedded one and PostgreSQL run the same tests.
package storetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/escrowd/escrowd/examples/syncbackend/store"
)

// Run runs the suite; open returns a new, empty store for one test.
func Run(t *testing.T, open func(t *testing.T) store.Store) {
	for _, tc := range []struct {
		name string
		fn   func(*testing.T, store.Store)
	}{
		{"Accounts", accounts},
		{"Nonces", nonces},
		{"Groups", groups},
		{"GroupRace", groupRace},
		{"Records", records},
		{"Notifications", notifications},
	} {
		t.Run(tc.name, func(t *testing.T) { tc.fn(t, open(t)) })
	}
}

var ctx = context.Background()

func accounts(t *testing.T, s store.Store) {
	a := store.Account{ID: "ann", MemberKey: []byte{1, 2}, MemberKeyVersion: 1, Created: time.Unix(100, 0).UTC()}
	d := store.Device{ID: "ann-phone", Account: "ann", SignKey: []byte{3}, WrapKey: []byte{4}, WrapKeyVersion: 1, Created: time.Unix(100, 0).UTC()}
	if err := s.CreateAccount(ctx, a, d); err != nil {
		t.Fatal(err)
	}
	if err := s.CreateAccount(ctx, a, store.Device{ID: "other", Account: "ann"}); !errors.Is(err, store.ErrExists) {
		t.Fatalf("second account ann: %v, want ErrExists", err)
	}
	if err := s.CreateAccount(ctx, store.Account{ID: "bob"}, store.Device{ID: "ann-phone", Account: "bob"}); !errors.Is(err, store.ErrExists) {
		t.Fatalf("account with a taken device id: %v, want ErrExists", err)
	}
	// The failed creation left no account behind.
	if _, err := s.Account(ctx, "bob"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("account bob after a failed creation: %v, want ErrNotFound", err)
	}
	got, err := s.Account(ctx, "ann")
	if err != nil || got.ID != "ann" || !bytes.Equal(got.MemberKey, a.MemberKey) || !got.Created.Equal(a.Created) {
		t.Fatalf("Account: %+v, %v", got, err)
	}
	laptop := store.Device{ID: "ann-laptop", Account: "ann", SignKey: []byte{5}, WrapKey: []byte{6}, WrapKeyVersion: 1}
	if err := s.AddDevice(ctx, laptop); err != nil {
		t.Fatal(err)
	}
	if err := s.AddDevice(ctx, laptop); !errors.Is(err, store.ErrExists) {
		t.Fatalf("second device ann-laptop: %v", err)
	}
	if err := s.AddDevice(ctx, store.Device{ID: "x", Account: "nobody"}); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("device of an unknown account: %v, want ErrNotFound", err)
	}
	ds, err := s.Devices(ctx, "ann")
	if err != nil || len(ds) != 2 || ds[0].ID != "ann-laptop" || ds[1].ID != "ann-phone" || !bytes.Equal(ds[1].SignKey, []byte{3}) {
		t.Fatalf("Devices: %+v, %v", ds, err)
	}
	if _, err := s.Device(ctx, "nope"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("Device(nope): %v", err)
	}
}

func nonces(t *testing.T, s store.Store) {
	now := time.Unix(1000, 0)
	if err := s.UseNonce(ctx, "d", "n1", now.Add(time.Minute), now); err != nil {
		t.Fatal(err)
	}
	if err := s.UseNonce(ctx, "d", "n1", now.Add(time.Minute), now.Add(30*time.Second)); !errors.Is(err, store.ErrReplay) {
		t.Fatalf("replayed nonce: %v, want ErrReplay", err)
	}
	// Another device may use the same nonce.
	if err := s.UseNonce(ctx, "e", "n1", now.Add(time.Minute), now); err != nil {
		t.Fatal(err)
	}
	// Once expired, it is forgotten.
	if err := s.UseNonce(ctx, "d", "n1", now.Add(3*time.Minute), now.Add(2*time.Minute)); err != nil {
		t.Fatalf("nonce after its expiry: %v", err)
	}
}

func group(id, owner string, surrogates ...string) store.Group {
	return store.Group{ID: id, Owner: owner, Surrogates: surrogates, GDKVersion: 1, Commitments: [][]byte{{9}},
		EscrowKey: []byte{7}, EscrowSuite: "ecdh-p256", EscrowKeyVersion: 1, Epochs: map[string]uint32{}, Created: time.Unix(5, 0).UTC()}
}

func groups(t *testing.T, s store.Store) {
	if err := s.CreateGroup(ctx, group("g1", "ann")); err != nil {
		t.Fatal(err)
	}
	if err := s.CreateGroup(ctx, group("g1", "bob")); !errors.Is(err, store.ErrExists) {
		t.Fatalf("second g1: %v", err)
	}
	if err := s.CreateGroup(ctx, group("g2", "bob", "ann")); err != nil {
		t.Fatal(err)
	}
	g, err := s.Group(ctx, "g1")
	if err != nil || g.Version != 1 || g.Owner != "ann" {
		t.Fatalf("Group: %+v, %v", g, err)
	}
	g.Surrogates = []string{"bob"}
	g.Bundle = []byte(`{"v":2}`)
	g.Epochs["ann"] = 3
	v, err := s.UpdateGroup(ctx, g)
	if err != nil || v != 2 {
		t.Fatalf("UpdateGroup: %d, %v", v, err)
	}
	// A second writer from version 1 loses, and learns the current one.
	g.Surrogates = nil
	var ce *store.ConflictError
	if _, err := s.UpdateGroup(ctx, g); !errors.As(err, &ce) || ce.Current != 2 || !errors.Is(err, store.ErrConflict) {
		t.Fatalf("stale UpdateGroup: %v, want a conflict at 2", err)
	}
	got, _ := s.Group(ctx, "g1")
	if got.Version != 2 || !slices.Equal(got.Surrogates, []string{"bob"}) || string(got.Bundle) != `{"v":2}` || got.Epochs["ann"] != 3 {
		t.Fatalf("after the lost write: %+v", got)
	}
	if _, err := s.UpdateGroup(ctx, group("nope", "x")); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("UpdateGroup of an unknown group: %v", err)
	}
	for acct, want := range map[string][]string{"ann": {"g1", "g2"}, "bob": {"g1", "g2"}, "carol": nil} {
		if ids, err := s.GroupsOf(ctx, acct); err != nil || !slices.Equal(ids, want) {
			t.Fatalf("GroupsOf(%s) = %v, %v; want %v", acct, ids, err, want)
		}
	}
	// bob leaves g1: the index follows.
	got.Surrogates = nil
	if _, err := s.UpdateGroup(ctx, got); err != nil {
		t.Fatal(err)
	}
	if ids, _ := s.GroupsOf(ctx, "bob"); !slices.Equal(ids, []string{"g2"}) {
		t.Fatalf("GroupsOf(bob) after leaving g1 = %v", ids)
	}
	if err := s.CreateGroup(ctx, group("g0", "c")); err != nil {
		t.Fatal(err)
	}
	var all []string
	for after := ""; ; {
		page, err := s.Groups(ctx, after, 2)
		if err != nil {
			t.Fatal(err)
		}
		if len(page) == 0 {
			break
		}
		all = append(all, page...)
		after = page[len(page)-1]
	}
	if !slices.Equal(all, []string{"g0", "g1", "g2"}) {
		t.Fatalf("Groups paged: %v", all)
	}
}

// groupRace: writers racing from one version, exactly one wins.
func groupRace(t *testing.T, s store.Store) {
	if err := s.CreateGroup(ctx, group("race", "ann")); err != nil {
		t.Fatal(err)
	}
	g, _ := s.Group(ctx, "race")
	var wg sync.WaitGroup
	var mu sync.Mutex
	won := 0
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := g
			c.Surrogates = []string{fmt.Sprint("s", i)}
			_, err := s.UpdateGroup(ctx, c)
			switch {
			case err == nil:
				mu.Lock()
				won++
				mu.Unlock()
			case !errors.Is(err, store.ErrConflict):
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if won != 1 {
		t.Fatalf("%d writers won from one version, want 1", won)
	}
}

func records(t *testing.T, s store.Store) {
	if err := s.CreateGroup(ctx, group("g", "ann")); err != nil {
		t.Fatal(err)
	}
	now := time.Unix(77, 0).UTC()
	v, err := s.PutRecord(ctx, store.Record{Group: "g", ID: "n1", Data: []byte("a"), Updated: now})
	if err != nil || v != 1 {
		t.Fatalf("create: %d, %v", v, err)
	}
	var ce *store.ConflictError
	if _, err := s.PutRecord(ctx, store.Record{Group: "g", ID: "n1", Data: []byte("b")}); !errors.As(err, &ce) || ce.Current != 1 {
		t.Fatalf("create over an existing record: %v", err)
	}
	if _, err := s.PutRecord(ctx, store.Record{Group: "g", ID: "n2", Version: 3, Data: []byte("b")}); !errors.As(err, &ce) || ce.Current != 0 {
		t.Fatalf("update of a missing record: %v", err)
	}
	if v, err := s.PutRecord(ctx, store.Record{Group: "g", ID: "n1", Version: 1, Data: []byte("c"), Updated: now}); err != nil || v != 2 {
		t.Fatalf("update: %d, %v", v, err)
	}
	if _, err := s.PutRecord(ctx, store.Record{Group: "g", ID: "n1", Version: 1, Data: []byte("d")}); !errors.As(err, &ce) || ce.Current != 2 {
		t.Fatalf("stale update: %v, want a conflict at 2", err)
	}
	r, err := s.Record(ctx, "g", "n1")
	if err != nil || r.Version != 2 || string(r.Data) != "c" || !r.Updated.Equal(now) {
		t.Fatalf("Record: %+v, %v", r, err)
	}
	if _, err := s.Record(ctx, "g", "n9"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("missing record: %v", err)
	}
	for _, id := range []string{"n3", "n2", "a0"} {
		if _, err := s.PutRecord(ctx, store.Record{Group: "g", ID: id, Data: []byte(id), Updated: now}); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.CreateGroup(ctx, group("g-other", "ann")); err != nil {
		t.Fatal(err)
	}
	if _, err := s.PutRecord(ctx, store.Record{Group: "g-other", ID: "zz", Data: []byte("x"), Updated: now}); err != nil {
		t.Fatal(err)
	}
	var ids []string
	for after := ""; ; {
		page, err := s.Records(ctx, "g", after, 3)
		if err != nil {
			t.Fatal(err)
		}
		if len(page) == 0 {
			break
		}
		for _, r := range page {
			ids = append(ids, r.ID)
		}
		after = page[len(page)-1].ID
	}
	if !slices.Equal(ids, []string{"a0", "n1", "n2", "n3"}) {
		t.Fatalf("Records paged: %v", ids)
	}
}

func notifications(t *testing.T, s store.Store) {
	if c, err := s.Cursor(ctx); err != nil || c != 0 {
		t.Fatalf("initial cursor %d, %v", c, err)
	}
	n := func(acct string, seq uint64) store.Notification {
		return store.Notification{Account: acct, Sequence: seq, Kind: "code_revealed", Group: "g", Epoch: 1, Index: uint32(seq), Ticket: "SUP-1", Time: time.Unix(int64(seq), 0).UTC()}
	}
	if err := s.AddNotifications(ctx, []store.Notification{n("ann", 3), n("bob", 4)}, 5); err != nil {
		t.Fatal(err)
	}
	// The same page again (delivery is at least once) adds nothing.
	if err := s.AddNotifications(ctx, []store.Notification{n("ann", 3), n("ann", 7)}, 7); err != nil {
		t.Fatal(err)
	}
	if c, _ := s.Cursor(ctx); c != 7 {
		t.Fatalf("cursor %d, want 7", c)
	}
	got, err := s.Notifications(ctx, "ann", 0, 10)
	if err != nil || len(got) != 2 || got[0] != n("ann", 3) || got[1] != n("ann", 7) {
		t.Fatalf("Notifications(ann): %+v, %v", got, err)
	}
	if got, _ := s.Notifications(ctx, "ann", 3, 10); len(got) != 1 || got[0].Sequence != 7 {
		t.Fatalf("Notifications(ann, after 3): %+v", got)
	}
	if got, _ := s.Notifications(ctx, "ann", 0, 1); len(got) != 1 || got[0].Sequence != 3 {
		t.Fatalf("Notifications(ann, limit 1): %+v", got)
	}
	if got, _ := s.Notifications(ctx, "carol", 0, 10); len(got) != 0 {
		t.Fatalf("Notifications(carol): %+v", got)
	}
}
