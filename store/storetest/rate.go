package storetest

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/escrowd/escrowd/store"
)

// The rate-limit cases take a Backend: they set the clock the store reads.

var rateTests = []struct {
	name string
	fn   func(*testing.T, Backend)
}{
	{"RateLimitBurstThenInterval", testRateBurst},
	{"RateLimitNoDoubleAcrossBoundary", testRateBoundary},
	{"RateLimitAllOrNothing", testRateAllOrNothing},
	{"RateLimitConcurrentExact", testRateConcurrent},
	{"RateLimitConcurrentOrders", testRateConcurrentOrders},
	{"RateLimitSurvivesReopen", testRateReopen},
	{"RateLimitClockBackAndShorterWindow", testRateClockBack},
	{"RateLimitInvalidRefused", testRateInvalid},
	{"RateLimitSkewedReplicas", testRateSkewedReplicas},
	{"RateLimitReplicasConcurrentExact", testRateReplicasConcurrentExact},
}

// openClocked opens a store whose rate-limit clock reads t0.
func openClocked(t *testing.T, b Backend) (store.Store, func(time.Time)) {
	s, _ := b.Open(t)
	set := b.Clock(t, s)
	set(t0)
	return s, set
}

// takes calls TakeRate n times and fails the test unless every call is
// admitted.
func takes(t *testing.T, s store.Store, n int, l ...store.RateLimit) {
	t.Helper()
	for i := range n {
		if _, err := s.TakeRate(context.Background(), l); err != nil {
			t.Fatalf("take %d of %d: %v", i+1, n, err)
		}
	}
}

// refused fails the test unless TakeRate refuses limit index want.
func refused(t *testing.T, s store.Store, want int, what string, l ...store.RateLimit) {
	t.Helper()
	if i, err := s.TakeRate(context.Background(), l); !errors.Is(err, store.ErrRateLimited) || i != want {
		t.Fatalf("%s: %d, %v; want %d, ErrRateLimited", what, i, err, want)
	}
}

// testRateBurstThenInterval: "3 per hour" is a burst of 3, then one every
// 20 minutes; an idle key gets its burst back, and never more.
func testRateBurst(t *testing.T, b Backend) {
	s, set := openClocked(t, b)
	l := store.RateLimit{Key: "k", Max: 3, Window: time.Hour}
	takes(t, s, 3, l)
	refused(t, s, 0, "4th at once", l)
	set(t0.Add(20*time.Minute - time.Second))
	refused(t, s, 0, "before one interval passed", l)
	set(t0.Add(20 * time.Minute))
	takes(t, s, 1, l)
	refused(t, s, 0, "a second one in the interval", l)
	set(t0.Add(40 * time.Minute))
	takes(t, s, 1, l)
	set(t0.Add(5 * time.Hour))
	takes(t, s, 3, l)
	refused(t, s, 0, "after a long idle time, a 4th at once", l)
	// Keys are independent.
	takes(t, s, 1, store.RateLimit{Key: "other", Max: 1, Window: time.Hour})
}

// testRateBoundary: fixed windows let 2×limit through in a minute across
// a window boundary (5 at 10:59:30, 5 more at 11:00:30). Now the burst
// spent at 10:59:30 comes back one per 12 minutes, wherever the hour
// turns: the hour from 10:59:30 admits 5 + 4.
func testRateBoundary(t *testing.T, b Backend) {
	s, set := openClocked(t, b)
	l := store.RateLimit{Key: "k", Max: 5, Window: time.Hour}
	start := time.Date(2026, 1, 2, 10, 59, 30, 0, time.UTC)
	set(start)
	takes(t, s, 5, l)
	set(start.Add(time.Minute))
	refused(t, s, 0, "one minute later, across the hour", l)
	var admitted []string
	for at := start.Add(time.Minute); at.Before(start.Add(time.Hour)); at = at.Add(30 * time.Second) {
		set(at)
		_, err := s.TakeRate(context.Background(), []store.RateLimit{l})
		switch {
		case err == nil:
			admitted = append(admitted, at.Format("15:04:05"))
		case !errors.Is(err, store.ErrRateLimited):
			t.Fatal(err)
		}
	}
	if got, want := strings.Join(admitted, " "), "11:11:30 11:23:30 11:35:30 11:47:30"; got != want {
		t.Fatalf("in the hour after a burst of 5 at 10:59:30, admitted at %s; want %s", got, want)
	}
}

func testRateAllOrNothing(t *testing.T, b Backend) {
	s, _ := openClocked(t, b)
	small := store.RateLimit{Key: "small", Max: 1, Window: time.Hour}
	big := store.RateLimit{Key: "big", Max: 10, Window: time.Hour}
	takes(t, s, 1, big, small)
	// small is full: the request is refused and big is not counted.
	for range 5 {
		refused(t, s, 1, "take with small full", big, small)
	}
	takes(t, s, 9, big)
	refused(t, s, 0, "big past 10", big)
}

func testRateConcurrent(t *testing.T, b Backend) {
	s, _ := openClocked(t, b)
	const max, tries = 25, 80
	ok, limited := concurrentTakes(t, []store.Store{s}, tries, func(int) []store.RateLimit {
		return []store.RateLimit{{Key: "hot", Max: max, Window: time.Hour}}
	})
	if ok != max || limited != tries-max {
		t.Fatalf("%d allowed and %d limited, want exactly %d and %d", ok, limited, max, tries-max)
	}
}

// testRateConcurrentOrders: concurrent requests naming the same two
// limits in opposite orders neither deadlock nor over-count.
func testRateConcurrentOrders(t *testing.T, b Backend) {
	s, _ := openClocked(t, b)
	a := store.RateLimit{Key: "a", Max: 30, Window: time.Hour}
	z := store.RateLimit{Key: "z", Max: 20, Window: time.Hour}
	ok, limited := concurrentTakes(t, []store.Store{s}, 60, func(i int) []store.RateLimit {
		if i%2 == 0 {
			return []store.RateLimit{a, z}
		}
		return []store.RateLimit{z, a}
	})
	if ok != 20 || limited != 40 {
		t.Fatalf("%d allowed and %d limited, want 20 and 40", ok, limited)
	}
	// z refused 40 requests, and a counted none of them.
	takes(t, s, 10, a)
	refused(t, s, 0, "a past 30", a)
}

// concurrentTakes makes tries concurrent TakeRate calls, call i on
// stores[i%len(stores)] with limits(i), and counts the outcomes.
func concurrentTakes(t *testing.T, stores []store.Store, tries int, limits func(int) []store.RateLimit) (ok, limited int) {
	t.Helper()
	var mu sync.Mutex
	var wg sync.WaitGroup
	for i := range tries {
		wg.Go(func() {
			_, err := stores[i%len(stores)].TakeRate(context.Background(), limits(i))
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
		})
	}
	wg.Wait()
	return ok, limited
}

func testRateReopen(t *testing.T, b Backend) {
	s, reopen := b.Open(t)
	b.Clock(t, s)(t0)
	l := store.RateLimit{Key: "k", Max: 1, Window: 24 * time.Hour}
	takes(t, s, 1, l)
	s = reopen()
	b.Clock(t, s)(t0.Add(time.Minute))
	refused(t, s, 0, "after reopen (a restart must not reset rate limits)", l)
}

// testRateClockBack: a key used under a clock that later went back, or
// under a longer window than the policy now says, is locked out for at
// most one window, as if its burst had been spent just now.
func testRateClockBack(t *testing.T, b Backend) {
	s, set := openClocked(t, b)
	l := store.RateLimit{Key: "k", Max: 2, Window: time.Hour}
	takes(t, s, 2, l) // tat: t0 + 1h
	set(t0.Add(-5 * time.Hour))
	refused(t, s, 0, "the clock went back 5h", l)
	set(t0.Add(-5*time.Hour + 30*time.Minute))
	takes(t, s, 1, l)
	refused(t, s, 0, "a second one", l)

	day := store.RateLimit{Key: "d", Max: 2, Window: 24 * time.Hour}
	set(t0)
	takes(t, s, 2, day) // tat: t0 + 24h
	hour := store.RateLimit{Key: "d", Max: 2, Window: time.Hour}
	set(t0.Add(time.Minute))
	refused(t, s, 0, "the window shortened to 1h", hour)
	set(t0.Add(31 * time.Minute))
	takes(t, s, 1, hour)
}

// testRateInvalidRefused: a key longer than store.MaxRateKey, or a limit
// out of bounds, is refused whole with ErrInvalidLimit, before anything
// is counted; a key of MaxRateKey bytes, none of them repeated in a way
// that compresses, is stored.
func testRateInvalid(t *testing.T, b Backend) {
	s, _ := openClocked(t, b)
	ctx := context.Background()
	one := store.RateLimit{Key: "one", Max: 1, Window: time.Hour}
	var sb strings.Builder
	for i := 0; sb.Len() < store.MaxRateKey; i++ {
		fmt.Fprintf(&sb, "%x", uint64(i)*0x9e3779b97f4a7c15)
	}
	longest := sb.String()[:store.MaxRateKey]
	for _, bad := range []store.RateLimit{
		{Key: longest + "x", Max: 1, Window: time.Hour},
		{Key: strings.Repeat("g", 1<<20), Max: 1, Window: time.Hour},
		{Key: "", Max: 1, Window: time.Hour},
		{Key: "k", Max: 0, Window: time.Hour},
		{Key: "k", Max: store.MaxRateMax + 1, Window: time.Hour},
		{Key: "k", Max: 1, Window: 0},
		{Key: "k", Max: 1, Window: store.MaxRateWindow + 1},
	} {
		if i, err := s.TakeRate(ctx, []store.RateLimit{one, bad}); !errors.Is(err, store.ErrInvalidLimit) || i != -1 {
			t.Fatalf("limit with a %d-byte key, max %d, window %s: %d, %v; want -1, ErrInvalidLimit", len(bad.Key), bad.Max, bad.Window, i, err)
		}
	}
	takes(t, s, 1, one) // nothing was counted
	takes(t, s, 1, store.RateLimit{Key: longest, Max: 1, Window: time.Hour})
	refused(t, s, 0, "the longest key, again", store.RateLimit{Key: longest, Max: 1, Window: time.Hour})
}

// testRateSkewedReplicas: replicas whose own clocks are an hour apart
// share a limit as one: neither resets the other's count, and time passes
// for both by the store's clock alone.
func testRateSkewedReplicas(t *testing.T, b Backend) {
	if b.Replicas == nil {
		t.Skip("one process holds this back end: its clock is the only one")
	}
	ahead := func() time.Time { return t0.Add(time.Hour + 13*time.Minute) }
	behind := func() time.Time { return t0.Add(-time.Hour - 7*time.Minute) }
	hs, set := b.Replicas(t, ahead, behind)
	a, z := hs[0], hs[1]
	set(t0)
	l := store.RateLimit{Key: "k", Max: 2, Window: time.Hour}
	takes(t, a, 1, l)
	takes(t, z, 1, l)
	refused(t, a, 0, "the replica ahead, after a burst of 2", l)
	refused(t, z, 0, "the replica behind, after a burst of 2", l)
	set(t0.Add(30 * time.Minute))
	takes(t, a, 1, l)
	refused(t, z, 0, "the replica behind, in the same interval", l)
	set(t0.Add(time.Hour))
	takes(t, z, 1, l)
	refused(t, a, 0, "the replica ahead, in the same interval", l)
}

// testRateReplicasConcurrentExact: concurrent requests through three
// replicas admit exactly the burst.
func testRateReplicasConcurrentExact(t *testing.T, b Backend) {
	if b.Replicas == nil {
		t.Skip("one process holds this back end")
	}
	hs, set := b.Replicas(t, time.Now, func() time.Time { return time.Now().Add(time.Hour) }, func() time.Time { return time.Now().Add(-time.Hour) })
	set(t0)
	ok, limited := concurrentTakes(t, hs, 90, func(int) []store.RateLimit {
		return []store.RateLimit{{Key: "hot", Max: 25, Window: time.Hour}, {Key: "other", Max: 1000, Window: time.Hour}}
	})
	if ok != 25 || limited != 65 {
		t.Fatalf("%d allowed and %d limited, want exactly 25 and 65", ok, limited)
	}
}
