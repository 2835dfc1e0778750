package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"slices"
	"time"
)

// Ratios on two shared cores. A ratio of two rows measured one after the
// other carries any drift in the machine's speed between them (another
// process starting, the CPU's clock, the page cache). Interleave measures
// both sides in alternating short points, A B A B …, and the ratio is the
// median of the ratios of each pair, printed with the smallest and the
// largest: drift slower than a pair cancels, a burst lands in one pair and
// the median ignores it, and the spread says how much to trust the value.

// Point is one short measured run of one side of a ratio.
type Point struct {
	OpsPerSec float64
	// CPUPerOp is the measured process's CPU seconds per operation (the
	// daemon with SoftHSM inside it, or this process for the raw
	// sequences); NaN when not measured.
	CPUPerOp float64
	// VaultCPUPerOp is the Vault server's CPU seconds per operation; NaN
	// when not measured.
	VaultCPUPerOp float64
}

// Side measures one point of duration d.
type Side func(ctx context.Context, d time.Duration) (Point, error)

// Interleave measures pairs points of a and of b, alternating, a first.
func Interleave(ctx context.Context, pairs int, d time.Duration, a, b Side) (as, bs []Point, err error) {
	for i := range pairs {
		pa, err := a(ctx, d)
		if err != nil {
			return nil, nil, fmt.Errorf("bench: pair %d, first side: %w", i, err)
		}
		pb, err := b(ctx, d)
		if err != nil {
			return nil, nil, fmt.Errorf("bench: pair %d, second side: %w", i, err)
		}
		as, bs = append(as, pa), append(bs, pb)
	}
	return as, bs, nil
}

// Spread is the median of some values with their smallest and largest.
type Spread struct {
	Median float64 `json:"median"`
	Min    float64 `json:"min"`
	Max    float64 `json:"max"`
	N      int     `json:"n"`
}

// MarshalJSON writes a Spread of nothing measured as null: JSON has no NaN.
func (s Spread) MarshalJSON() ([]byte, error) {
	if s.N == 0 {
		return []byte("null"), nil
	}
	type plain Spread
	return json.Marshal(plain(s))
}

// SpreadOf summarises xs, leaving out NaN and infinities; N counts what
// was kept (0: the Spread is NaN).
func SpreadOf(xs []float64) Spread {
	var v []float64
	for _, x := range xs {
		if !math.IsNaN(x) && !math.IsInf(x, 0) {
			v = append(v, x)
		}
	}
	if len(v) == 0 {
		return Spread{Median: math.NaN(), Min: math.NaN(), Max: math.NaN()}
	}
	slices.Sort(v)
	m := v[len(v)/2]
	if len(v)%2 == 0 {
		m = (v[len(v)/2-1] + v[len(v)/2]) / 2
	}
	return Spread{Median: m, Min: v[0], Max: v[len(v)-1], N: len(v)}
}

// PairRatios applies f to each pair.
func PairRatios(as, bs []Point, f func(a, b Point) float64) []float64 {
	out := make([]float64, min(len(as), len(bs)))
	for i := range out {
		out[i] = f(as[i], bs[i])
	}
	return out
}

// throughputRatio is A's operations per second over B's.
func throughputRatio(a, b Point) float64 { return a.OpsPerSec / b.OpsPerSec }

// cpuRatio is A's operations per CPU second over B's: B's CPU per
// operation over A's. Near 1, A adds little CPU to what B does.
func cpuRatio(a, b Point) float64 { return b.CPUPerOp / a.CPUPerOp }

// Interleaved is one ratio measured by Interleave.
type Interleaved struct {
	Name  string `json:"name"`
	A     string `json:"a"`
	B     string `json:"b"`
	Pairs int    `json:"pairs"`
	Point string `json:"point"`
	// Ratio is A's throughput over B's, pair by pair.
	Ratio Spread `json:"ratio"`
	// CPU is A's operations per CPU second over B's (N 0: not measured).
	CPU Spread `json:"cpu_ratio"`
	// ACPU and BCPU are each side's CPU milliseconds per operation;
	// VaultCPU is the Vault server's per operation of A.
	ACPU     Spread `json:"a_cpu_ms_per_op"`
	BCPU     Spread `json:"b_cpu_ms_per_op"`
	VaultCPU Spread `json:"a_vault_cpu_ms_per_op"`
	// AOps and BOps are each side's operations per second.
	AOps Spread `json:"a_ops_per_sec"`
	BOps Spread `json:"b_ops_per_sec"`
	// Load is /proc/loadavg's first three fields when the pairs ended.
	Load string `json:"load"`
}

// NewInterleaved summarises the pairs of as and bs.
func NewInterleaved(name, a, b string, as, bs []Point, d time.Duration) Interleaved {
	ms := func(ps []Point, f func(Point) float64) Spread {
		xs := make([]float64, len(ps))
		for i, p := range ps {
			xs[i] = f(p) * 1000
		}
		return SpreadOf(xs)
	}
	ops := func(ps []Point) Spread {
		xs := make([]float64, len(ps))
		for i, p := range ps {
			xs[i] = p.OpsPerSec
		}
		return SpreadOf(xs)
	}
	return Interleaved{
		Name: name, A: a, B: b, Pairs: min(len(as), len(bs)), Point: d.String(),
		Ratio:    SpreadOf(PairRatios(as, bs, throughputRatio)),
		CPU:      SpreadOf(PairRatios(as, bs, cpuRatio)),
		ACPU:     ms(as, func(p Point) float64 { return p.CPUPerOp }),
		BCPU:     ms(bs, func(p Point) float64 { return p.CPUPerOp }),
		VaultCPU: ms(as, func(p Point) float64 { return p.VaultCPUPerOp }),
		AOps:     ops(as), BOps: ops(bs),
		Load: loadAvg(),
	}
}

// pointOf turns a load run into a Point; the CPU percentages are of one
// core over the run.
func pointOf(res Result) Point {
	p := Point{OpsPerSec: res.OpsPerSec, CPUPerOp: math.NaN(), VaultCPUPerOp: math.NaN()}
	if res.Ops == 0 {
		return p
	}
	el := res.Elapsed.Seconds()
	if res.CPU >= 0 {
		p.CPUPerOp = res.CPU / 100 * el / float64(res.Ops)
	}
	if res.VaultCPU >= 0 {
		p.VaultCPUPerOp = res.VaultCPU / 100 * el / float64(res.Ops)
	}
	return p
}

// selfPID is this process: the raw sequences run in it.
var selfPID = os.Getpid()

func fmtSpread(s Spread, prec int) string {
	if s.N == 0 {
		return "—"
	}
	return fmt.Sprintf("%.*f (%.*f–%.*f)", prec, s.Median, prec, s.Min, prec, s.Max)
}
