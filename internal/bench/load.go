package bench

import (
	"context"
	"os"
	"strconv"
	"sync"
	"time"
)

// Op is one request of a load run; it returns the units of work it did
// (1, or a batch's items).
type Op func(ctx context.Context, worker int) (int, error)

// Result is a load run: its Stats, the first error (errors are counted,
// not fatal: a benchmark that stops at the first RESOURCE_EXHAUSTED says
// less than one that reports it), and the escrowd process's CPU.
type Result struct {
	Stats
	FirstErr error
	// CPU is the measured process's CPU time over the run, in percent of
	// one core (200 = both cores of this machine); -1 when not measured.
	CPU float64
	// VaultCPU is the Vault server's, likewise.
	VaultCPU float64
}

// vaultPID is the Vault server's process, measured alongside every run
// (0: not found).
var vaultPID int

// ProcCPU is a process's utime+stime in clock ticks, or an error.
func ProcCPU(pid int) (uint64, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, err
	}
	return ParseProcStatCPU(string(b))
}

// clockTicks is USER_HZ, the unit of /proc/PID/stat's times: 100 on every
// Linux architecture Go supports (it is fixed by the kernel's ABI, not
// by CONFIG_HZ).
const clockTicks = 100

// cpuMeter measures a process's CPU over an interval.
type cpuMeter struct {
	pid   int
	t0    time.Time
	tick0 uint64
	ok    bool
}

func startCPU(pid int) cpuMeter {
	if pid <= 0 {
		return cpuMeter{}
	}
	t, err := ProcCPU(pid)
	return cpuMeter{pid: pid, t0: time.Now(), tick0: t, ok: err == nil}
}

func (m cpuMeter) percent() float64 {
	if !m.ok {
		return -1
	}
	t, err := ProcCPU(m.pid)
	el := time.Since(m.t0).Seconds()
	if err != nil || el <= 0 {
		return -1
	}
	return float64(t-m.tick0) / clockTicks / el * 100
}

// RunClosed runs op on conc workers, each issuing its next request when
// the last one returns, for d; pid's CPU is measured (0: none).
func RunClosed(ctx context.Context, conc int, d time.Duration, pid int, op Op) Result {
	type acc struct {
		lats      []time.Duration
		ops, errs int
		first     error
	}
	accs := make([]acc, conc)
	cpu, vcpu := startCPU(pid), startCPU(vaultPID)
	start := time.Now()
	deadline := start.Add(d)
	var wg sync.WaitGroup
	for w := range conc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			a := &accs[w]
			for ctx.Err() == nil && time.Now().Before(deadline) {
				t0 := time.Now()
				n, err := op(ctx, w)
				if err != nil {
					a.errs++
					if a.first == nil {
						a.first = err
					}
					continue
				}
				a.lats = append(a.lats, time.Since(t0))
				a.ops += n
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	pct, vpct := cpu.percent(), vcpu.percent()
	var lats []time.Duration
	ops, errs := 0, 0
	var first error
	for _, a := range accs {
		lats = append(lats, a.lats...)
		ops += a.ops
		errs += a.errs
		if first == nil {
			first = a.first
		}
	}
	return Result{Stats: Summarize(lats, ops, errs, elapsed), FirstErr: first, CPU: pct, VaultCPU: vpct}
}

// RunOpen issues op at a fixed rate (per second) for d, whatever the
// latency, each request on its own goroutine, at most maxInFlight at
// once. Latency counts from when a request was due, not when it was sent,
// so a stalled server shows in the percentiles instead of slowing the
// load down (coordinated omission).
func RunOpen(ctx context.Context, rate float64, d time.Duration, maxInFlight, pid int, op Op) Result {
	if rate <= 0 {
		return Result{CPU: -1}
	}
	n := int(rate * d.Seconds())
	interval := time.Duration(float64(time.Second) / rate)
	sem := make(chan struct{}, maxInFlight)
	var mu sync.Mutex
	var lats []time.Duration
	ops, errs := 0, 0
	var first error
	var wg sync.WaitGroup
	cpu, vcpu := startCPU(pid), startCPU(vaultPID)
	start := time.Now()
	for i := range n {
		due := start.Add(time.Duration(i) * interval)
		if w := time.Until(due); w > 0 {
			select {
			case <-time.After(w):
			case <-ctx.Done():
			}
		}
		if ctx.Err() != nil {
			break
		}
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			k, err := op(ctx, i%maxInFlight)
			lat := time.Since(due)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs++
				if first == nil {
					first = err
				}
				return
			}
			lats = append(lats, lat)
			ops += k
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	return Result{Stats: Summarize(lats, ops, errs, elapsed), FirstErr: first, CPU: cpu.percent(), VaultCPU: vcpu.percent()}
}
