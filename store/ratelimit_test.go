package store

import (
	"math/rand/v2"
	"testing"
	"time"
)

// TestTakeBurstExact: from idle, exactly Max requests conform at once,
// for limits whose Window/Max is not a whole number of nanoseconds too
// (rounding the interval down, with a tolerance of Window − T, would
// let Max + 1 through for the 1,000,000 per 1.9999995 s).
func TestTakeBurstExact(t *testing.T) {
	now := time.Date(2026, 1, 2, 10, 30, 0, 0, time.UTC).UnixNano()
	for _, l := range []RateLimit{
		{Max: 1, Window: time.Second},
		{Max: 3, Window: 24 * time.Hour},
		{Max: 7, Window: time.Hour},
		{Max: 1000, Window: time.Hour},
		{Max: 1_000_000, Window: 1999999500 * time.Nanosecond},
		{Max: MaxRateMax, Window: time.Second},
		{Max: MaxRateMax, Window: MaxRateWindow},
		{Max: 1, Window: MaxRateWindow},
	} {
		tat, n := int64(0), 0
		if l.Max > 1000 {
			// Skip to the state after Max − 1 requests at now.
			tat, n = now+int64(l.Max-1)*int64(l.Interval()), l.Max-1
		}
		for {
			next, ok := l.Take(tat, now)
			if !ok {
				break
			}
			tat, n = next, n+1
			if n > l.Max {
				break
			}
		}
		if n != l.Max {
			t.Errorf("%d per %s: a burst of %d, want %d", l.Max, l.Window, n, l.Max)
		}
		if l.Interval()*time.Duration(l.Max) < l.Window {
			t.Errorf("%d per %s: interval %s is faster than the limit", l.Max, l.Window, l.Interval())
		}
	}
}

// TestTakeSpanBound: under requests at random times, no span of length L
// ever holds more than Max + ⌊L/T⌋ conforming requests, in particular at
// most Max in any span shorter than T and at most 2·Max − 1 in any span
// shorter than Window; and a caller who keeps asking gets the long-run
// rate of Max per Window.
func TestTakeSpanBound(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for _, l := range []RateLimit{{Max: 3, Window: time.Hour}, {Max: 5, Window: time.Hour}, {Max: 20, Window: time.Minute}} {
		T := int64(l.Interval())
		now, tat := int64(0), int64(0)
		var got []int64
		for range 20000 {
			now += rng.Int64N(2 * T / 3)
			if next, ok := l.Take(tat, now); ok {
				tat = next
				got = append(got, now)
			}
		}
		for i := range got {
			for j := i; j < len(got); j++ {
				span := got[j] - got[i]
				if n := int64(j - i + 1); n > int64(l.Max)+span/T {
					t.Fatalf("%d per %s: %d requests in %s", l.Max, l.Window, n, time.Duration(span))
				}
				if span < int64(l.Window) && j-i+1 > 2*l.Max-1 {
					t.Fatalf("%d per %s: %d requests within one window", l.Max, l.Window, j-i+1)
				}
				if span >= int64(l.Window) {
					break
				}
			}
		}
		if want := float64(now) / float64(l.Window) * float64(l.Max); float64(len(got)) < 0.95*want || float64(len(got)) > want+float64(l.Max) {
			t.Errorf("%d per %s: %d admitted over %s, want about %.0f", l.Max, l.Window, len(got), time.Duration(now), want)
		}
	}
}

// TestTakeAll: all or nothing; a refused request stores only a clamp.
func TestTakeAll(t *testing.T) {
	now := int64(1_000_000_000_000)
	a := RateLimit{Key: "a", Max: 2, Window: time.Hour}
	b := RateLimit{Key: "b", Max: 1, Window: time.Hour}
	w, full := TakeAll([]RateLimit{a, b}, map[string]int64{}, now)
	if full != -1 || len(w) != 2 || w["a"] != now+int64(30*time.Minute) || w["b"] != now+int64(time.Hour) {
		t.Fatalf("first take: %v, %d", w, full)
	}
	if w, full := TakeAll([]RateLimit{a, b}, w, now); full != 1 || len(w) != 0 {
		t.Fatalf("b full: %v, %d; want index 1 and nothing to store", w, full)
	}
	// b's tat is 5h ahead (a clock that went back): clamped to 1h ahead.
	if w, full := TakeAll([]RateLimit{a, b}, map[string]int64{"b": now + int64(5*time.Hour)}, now); full != 1 || len(w) != 1 || w["b"] != now+int64(time.Hour) {
		t.Fatalf("clamp: %v, %d", w, full)
	}
	// One key twice in a request counts twice.
	if w, full := TakeAll([]RateLimit{a, a}, nil, now); full != -1 || w["a"] != now+int64(time.Hour) {
		t.Fatalf("a twice: %v, %d", w, full)
	}
}
