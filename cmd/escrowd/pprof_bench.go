//go:build escrowd_pprof

package main

import (
	"net/http"
	_ "net/http/pprof" // registers /debug/pprof on http.DefaultServeMux
	"os"
)

// A profiling endpoint for `make bench` only: a binary built with the
// escrowd_pprof tag serves net/http/pprof on $ESCROWD_PPROF (a loopback
// address) when it is set, so that a benchmark that misses a target can
// show where the time goes. Operators' builds never carry it.
func init() {
	if addr := os.Getenv("ESCROWD_PPROF"); addr != "" {
		go func() { _ = http.ListenAndServe(addr, nil) }()
	}
}
