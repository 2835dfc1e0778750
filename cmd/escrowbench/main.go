// Command escrowbench is `make bench`: it starts escrowd's real stack and
// prints how fast it is against the HSM's raw ceiling and Vault Transit,
// as markdown for docs/BENCHMARKS.md, and writes the same as JSON.
//
// Knobs (environment): BENCH_GROUPS, BENCH_SMALL_GROUPS, BENCH_SECONDS,
// BENCH_CONC, BENCH_SESSIONS, BENCH_BATCH, BENCH_RSA, BENCH_KEK, BENCH_OUT,
// BENCH_BIN, BENCH_DIR; see docs/BENCHMARKS.md. A smoke run:
//
//	BENCH_GROUPS=10000 BENCH_SECONDS=2 make bench
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/escrowd/escrowd/internal/bench"
)

func main() {
	cfg, err := bench.FromEnv()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := bench.Run(ctx, cfg, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "escrowbench:", err)
		os.Exit(1)
	}
}
