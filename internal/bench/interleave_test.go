package bench

import (
	"context"
	"encoding/json"
	"errors"
	"math"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestSpreadOf(t *testing.T) {
	nan := math.NaN()
	tests := []struct {
		name          string
		in            []float64
		med, min, max float64
		n             int
	}{
		{"odd", []float64{3, 1, 2}, 2, 1, 3, 3},
		{"even", []float64{4, 1, 3, 2}, 2.5, 1, 4, 4},
		{"one", []float64{0.7}, 0.7, 0.7, 0.7, 1},
		{"NaN and Inf left out", []float64{nan, 1, math.Inf(1), 5, 3}, 3, 1, 5, 3},
	}
	for _, tt := range tests {
		s := SpreadOf(tt.in)
		if s.Median != tt.med || s.Min != tt.min || s.Max != tt.max || s.N != tt.n {
			t.Errorf("%s: SpreadOf(%v) = %+v, want median %v min %v max %v n %d", tt.name, tt.in, s, tt.med, tt.min, tt.max, tt.n)
		}
	}
	if s := SpreadOf([]float64{nan}); s.N != 0 || !math.IsNaN(s.Median) {
		t.Errorf("nothing measurable: %+v, want N 0 and a NaN median", s)
	}
}

// TestInterleaveDrift: a machine that slows down point after point moves
// both sides of every pair alike, so the median pair ratio stays at the
// true ratio, where a ratio of the two sides measured one after the other
// would not; and the sides alternate, A first.
func TestInterleaveDrift(t *testing.T) {
	speed := 1000.0
	var order []string
	side := func(name string, factor float64) Side {
		return func(context.Context, time.Duration) (Point, error) {
			order = append(order, name)
			speed *= 0.9 // the machine drifts at every point
			return Point{OpsPerSec: factor * speed, CPUPerOp: 1 / factor, VaultCPUPerOp: math.NaN()}, nil
		}
	}
	as, bs, err := Interleave(context.Background(), 6, time.Millisecond, side("A", 0.5), side("B", 1))
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"A", "B", "A", "B", "A", "B", "A", "B", "A", "B", "A", "B"}; !slices.Equal(order, want) {
		t.Fatalf("order %v, want %v", order, want)
	}
	x := NewInterleaved("r", "a", "b", as, bs, time.Millisecond)
	// Within a pair B runs after A, on a machine 0.9 × as fast: each pair
	// ratio is 0.5/0.9; sequential blocks of six would give 0.5/0.9^6.
	if want := 0.5 / 0.9; math.Abs(x.Ratio.Median-want) > 1e-9 || x.Ratio.Max-x.Ratio.Min > 1e-9 {
		t.Errorf("ratio %+v, want every pair at %.4f", x.Ratio, want)
	}
	if math.Abs(x.CPU.Median-0.5) > 1e-9 {
		t.Errorf("CPU-normalised ratio %+v, want 0.5 (A uses twice B's CPU per op)", x.CPU)
	}
	if x.Pairs != 6 || x.VaultCPU.N != 0 {
		t.Errorf("pairs %d, Vault CPU %+v", x.Pairs, x.VaultCPU)
	}
}

func TestInterleaveError(t *testing.T) {
	boom := errors.New("boom")
	ok := func(context.Context, time.Duration) (Point, error) { return Point{OpsPerSec: 1}, nil }
	bad := func(context.Context, time.Duration) (Point, error) { return Point{}, boom }
	if _, _, err := Interleave(context.Background(), 5, time.Millisecond, ok, bad); !errors.Is(err, boom) {
		t.Fatalf("Interleave with a failing side: %v", err)
	}
}

func TestPointOf(t *testing.T) {
	// 200 ops in 2 s at 50 % of a core: 1 CPU second, 5 ms per op; Vault
	// at 10 %: 1 ms per op.
	p := pointOf(Result{Stats: Stats{Ops: 200, Elapsed: 2 * time.Second, OpsPerSec: 100}, CPU: 50, VaultCPU: 10})
	if math.Abs(p.CPUPerOp-0.005) > 1e-12 || math.Abs(p.VaultCPUPerOp-0.001) > 1e-12 || p.OpsPerSec != 100 {
		t.Errorf("pointOf = %+v", p)
	}
	if p := pointOf(Result{Stats: Stats{Ops: 10, Elapsed: time.Second}, CPU: -1, VaultCPU: -1}); !math.IsNaN(p.CPUPerOp) || !math.IsNaN(p.VaultCPUPerOp) {
		t.Errorf("unmeasured CPU: %+v, want NaN", p)
	}
}

func TestSpreadJSON(t *testing.T) {
	x := NewInterleaved("r", "a", "b", []Point{{OpsPerSec: 2, CPUPerOp: math.NaN(), VaultCPUPerOp: math.NaN()}},
		[]Point{{OpsPerSec: 1, CPUPerOp: math.NaN(), VaultCPUPerOp: math.NaN()}}, time.Second)
	b, err := json.Marshal(x)
	if err != nil {
		t.Fatalf("an unmeasured CPU does not marshal: %v", err)
	}
	if !strings.Contains(string(b), `"cpu_ratio":null`) || !strings.Contains(string(b), `"ratio":{"median":2,"min":2,"max":2,"n":1}`) {
		t.Errorf("JSON %s", b)
	}
}
