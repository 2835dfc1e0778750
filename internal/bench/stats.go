// Package bench is `make bench`: it starts escrowd's real stack (a fresh
// SoftHSM token, the Vault dev server, escrowd binaries with mutual TLS,
// the real policy checks and audit) and measures it against the HSM's raw
// ceiling and Vault Transit. The measuring helpers here are unit-tested;
// the long run itself only runs from cmd/escrowbench, never from go test.
package bench

import (
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Stats summarises one measured run.
type Stats struct {
	Ops       int           `json:"ops"`
	Errors    int           `json:"errors"`
	Elapsed   time.Duration `json:"elapsed_ns"`
	OpsPerSec float64       `json:"ops_per_sec"`
	P50       time.Duration `json:"p50_ns"`
	P99       time.Duration `json:"p99_ns"`
}

// Percentile is the nearest-rank p-th percentile (0 < p ≤ 100) of sorted
// latencies: the smallest value with at least p% of the values at or
// below it. Nearest rank never invents a latency no request had.
func Percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 || p <= 0 {
		return 0
	}
	if p >= 100 {
		return sorted[len(sorted)-1]
	}
	rank := int(math.Ceil(p / 100 * float64(len(sorted))))
	return sorted[max(rank, 1)-1]
}

// Summarize turns latencies (unsorted; sorted in place) into Stats. ops
// counts units of work, which may exceed len(lats) (a batch of 32 is one
// latency and 32 ops).
func Summarize(lats []time.Duration, ops, errs int, elapsed time.Duration) Stats {
	slices.Sort(lats)
	s := Stats{Ops: ops, Errors: errs, Elapsed: elapsed, P50: Percentile(lats, 50), P99: Percentile(lats, 99)}
	if elapsed > 0 {
		s.OpsPerSec = float64(ops) / elapsed.Seconds()
	}
	return s
}

// ParseProcStatCPU reads utime+stime (clock ticks) from the text of
// /proc/PID/stat. The command name (field 2) may hold spaces and
// parentheses, so fields are counted after its last ')'.
func ParseProcStatCPU(stat string) (uint64, error) {
	i := strings.LastIndexByte(stat, ')')
	if i < 0 {
		return 0, errors.New("bench: /proc stat: no command field")
	}
	f := strings.Fields(stat[i+1:])
	// After the command: state(3) ppid(4) ... utime(14) stime(15).
	if len(f) < 13 {
		return 0, fmt.Errorf("bench: /proc stat: %d fields after the command", len(f))
	}
	u, err := strconv.ParseUint(f[11], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("bench: /proc stat utime: %w", err)
	}
	s, err := strconv.ParseUint(f[12], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("bench: /proc stat stime: %w", err)
	}
	return u + s, nil
}

// ParseVmHWM reads the peak resident set size, in bytes, from the text of
// /proc/PID/status.
func ParseVmHWM(status string) (uint64, error) { return ParseStatusKB(status, "VmHWM") }

// ParseStatusKB reads a "Key:  N kB" line of /proc/PID/status, in bytes.
func ParseStatusKB(status, key string) (uint64, error) {
	for line := range strings.Lines(status) {
		rest, ok := strings.CutPrefix(line, key+":")
		if !ok {
			continue
		}
		f := strings.Fields(rest)
		if len(f) != 2 || f[1] != "kB" {
			return 0, fmt.Errorf("bench: /proc status: %s line %q", key, strings.TrimSpace(line))
		}
		kb, err := strconv.ParseUint(f[0], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("bench: /proc status %s: %w", key, err)
		}
		return kb * 1024, nil
	}
	return 0, fmt.Errorf("bench: /proc status: no %s line", key)
}

// ParseInts parses a comma-separated list of positive integers ("1,4,16").
func ParseInts(s string) ([]int, error) {
	var out []int
	for f := range strings.SplitSeq(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		n, err := strconv.Atoi(f)
		if err != nil || n < 1 {
			return nil, fmt.Errorf("bench: %q is not a positive integer", f)
		}
		out = append(out, n)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("bench: empty list %q", s)
	}
	return out, nil
}

// Target is one goal of the benchmark: Ratio against Want.
type Target struct {
	Name  string  `json:"name"`
	Ratio float64 `json:"ratio"`
	Want  float64 `json:"want"`
	// AtMost turns the comparison round: the ratio must not exceed Want.
	AtMost bool   `json:"at_most,omitempty"`
	Pass   bool   `json:"pass"`
	Detail string `json:"detail"`
}

// NewTarget compares num/den with want.
func NewTarget(name string, num, den, want float64, atMost bool, detail string) Target {
	t := Target{Name: name, Want: want, AtMost: atMost, Detail: detail}
	if den > 0 {
		t.Ratio = num / den
	} else {
		t.Ratio = math.NaN()
	}
	if atMost {
		t.Pass = t.Ratio <= want
	} else {
		t.Pass = t.Ratio >= want
	}
	return t
}

// Verdict is PASS or MISS.
func (t Target) Verdict() string {
	if t.Pass {
		return "PASS"
	}
	return "MISS"
}
