package bench

import (
	"math"
	"slices"
	"strings"
	"testing"
	"time"
)

func ms(n ...int) []time.Duration {
	out := make([]time.Duration, len(n))
	for i, v := range n {
		out[i] = time.Duration(v) * time.Millisecond
	}
	return out
}

func TestPercentile(t *testing.T) {
	hundred := make([]time.Duration, 100)
	for i := range hundred {
		hundred[i] = time.Duration(i+1) * time.Millisecond
	}
	for _, c := range []struct {
		name   string
		sorted []time.Duration
		p      float64
		want   time.Duration
	}{
		{"empty", nil, 50, 0},
		{"one p50", ms(7), 50, 7 * time.Millisecond},
		{"one p99", ms(7), 99, 7 * time.Millisecond},
		{"two p50", ms(1, 2), 50, 1 * time.Millisecond},
		{"two p99", ms(1, 2), 99, 2 * time.Millisecond},
		{"four p50", ms(1, 2, 3, 4), 50, 2 * time.Millisecond},
		{"four p75", ms(1, 2, 3, 4), 75, 3 * time.Millisecond},
		{"hundred p50", hundred, 50, 50 * time.Millisecond},
		{"hundred p99", hundred, 99, 99 * time.Millisecond},
		{"hundred p100", hundred, 100, 100 * time.Millisecond},
		{"hundred p0", hundred, 0, 0},
		{"hundred p1", hundred, 1, 1 * time.Millisecond},
		{"tail", ms(1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 9, 9), 99, 9 * time.Millisecond},
	} {
		if got := Percentile(c.sorted, c.p); got != c.want {
			t.Errorf("%s: Percentile(%v) = %v, want %v", c.name, c.p, got, c.want)
		}
	}
}

func TestSummarize(t *testing.T) {
	lats := ms(4, 1, 3, 2)
	s := Summarize(lats, 8, 1, 2*time.Second)
	if !slices.IsSorted(lats) {
		t.Error("latencies not sorted in place")
	}
	want := Stats{Ops: 8, Errors: 1, Elapsed: 2 * time.Second, OpsPerSec: 4, P50: 2 * time.Millisecond, P99: 4 * time.Millisecond}
	if s != want {
		t.Fatalf("Summarize = %+v, want %+v", s, want)
	}
	if z := Summarize(nil, 0, 0, 0); z.OpsPerSec != 0 || z.P99 != 0 {
		t.Fatalf("Summarize of nothing = %+v", z)
	}
}

func TestParseProcStatCPU(t *testing.T) {
	for _, c := range []struct {
		name, in string
		want     uint64
		err      bool
	}{
		{"plain", "1234 (escrowd) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 8 0 1000 0 0", 300, false},
		{"spaces and parens in the name", "99 (a b) (c)) R 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15", 23, false},
		{"no command", "1234 escrowd S 1", 0, true},
		{"short", "1 (x) S 1 2 3", 0, true},
		{"not a number", "1 (x) S 1 2 3 4 5 6 7 8 9 10 u s", 0, true},
	} {
		got, err := ParseProcStatCPU(c.in)
		if (err != nil) != c.err || got != c.want {
			t.Errorf("%s: %d, %v; want %d, error %v", c.name, got, err, c.want, c.err)
		}
	}
}

func TestParseVmHWM(t *testing.T) {
	for _, c := range []struct {
		name, in string
		want     uint64
		err      bool
	}{
		{"ok", "Name:\tescrowd\nVmPeak:\t  900 kB\nVmHWM:\t   51200 kB\nVmRSS:\t 40000 kB\n", 51200 * 1024, false},
		{"missing", "Name:\tescrowd\nVmRSS:\t 40000 kB\n", 0, true},
		{"unit", "VmHWM:\t 12 MB\n", 0, true},
		{"garbage", "VmHWM:\t x kB\n", 0, true},
	} {
		got, err := ParseVmHWM(c.in)
		if (err != nil) != c.err || got != c.want {
			t.Errorf("%s: %d, %v; want %d, error %v", c.name, got, err, c.want, c.err)
		}
	}
}

func TestParseStatusKB(t *testing.T) {
	st := "VmHWM:\t 100 kB\nRssAnon:\t  40 kB\nRssFile:\t  60 kB\n"
	for key, want := range map[string]uint64{"RssAnon": 40 * 1024, "RssFile": 60 * 1024} {
		if got, err := ParseStatusKB(st, key); err != nil || got != want {
			t.Errorf("%s: %d, %v", key, got, err)
		}
	}
	if _, err := ParseStatusKB(st, "RssShmem"); err == nil {
		t.Error("missing key: no error")
	}
}

func TestParseInts(t *testing.T) {
	for _, c := range []struct {
		in   string
		want []int
		err  bool
	}{
		{"1,4,16,64", []int{1, 4, 16, 64}, false},
		{" 2 , 8 ,", []int{2, 8}, false},
		{"", nil, true},
		{"1,0", nil, true},
		{"1,x", nil, true},
	} {
		got, err := ParseInts(c.in)
		if (err != nil) != c.err || !slices.Equal(got, c.want) {
			t.Errorf("ParseInts(%q) = %v, %v", c.in, got, err)
		}
	}
}

func TestNewTarget(t *testing.T) {
	for _, c := range []struct {
		name           string
		num, den, want float64
		atMost, pass   bool
		ratio          float64
	}{
		{"above", 95, 100, 0.9, false, true, 0.95},
		{"equal", 90, 100, 0.9, false, true, 0.9},
		{"below", 50, 100, 0.9, false, false, 0.5},
		{"at most ok", 3, 2, 2, true, true, 1.5},
		{"at most over", 5, 2, 2, true, false, 2.5},
	} {
		tg := NewTarget(c.name, c.num, c.den, c.want, c.atMost, "")
		if tg.Pass != c.pass || math.Abs(tg.Ratio-c.ratio) > 1e-9 {
			t.Errorf("%s: %+v", c.name, tg)
		}
	}
	if tg := NewTarget("zero", 1, 0, 0.9, false, ""); tg.Pass || !math.IsNaN(tg.Ratio) || tg.Verdict() != "MISS" {
		t.Errorf("zero denominator: %+v", tg)
	}
}

func TestMarkdown(t *testing.T) {
	r := &Report{Date: "d", Commit: "c", Machine: "m", Load: "l", Wall: "w", Config: map[string]string{"B": "2", "A": "1"},
		Rows:    []Row{{Section: "raw", Op: "reveal", Conc: 1, Stats: Stats{Ops: 10, OpsPerSec: 1234.5, P50: 1500 * time.Microsecond, P99: 3 * time.Millisecond}, CPU: -1, VaultCPU: 12}},
		Targets: []Target{NewTarget("t", 1, 2, 0.9, false, "x")}}
	var b strings.Builder
	r.Markdown(&b)
	for _, want := range []string{"`A=1 B=2`", "| raw | reveal | 1 | 1234 | 1.50 | 3.00 | — | 12 | 0 |  |", "| t | 0.50 | ≥ 0.90 | **MISS** | x |"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("markdown lacks %q:\n%s", want, b.String())
		}
	}
}
