// Command escrowctl is the command line of support and security engineers:
// it provisions and inspects groups, reveals unlock codes against a running
// escrowd, reaches every RPC of its API, and runs the HSM setup ceremony.
//
// Each command group lives in its own file (group.go, codes.go, rewrap.go,
// jobs.go, events.go, hsm.go, audit.go, policy.go, dev.go); root.go holds
// what they share: the daemon connection flags, -o json, and the error
// messages that say what to do next.
package main

import (
	"errors"
	"fmt"
	"os"
)

func main() {
	if err := run(os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "escrowctl:", describe(err))
		os.Exit(exitCode(err))
	}
}

// exitCode is 2 for a usage error, 1 for any other.
func exitCode(err error) int {
	if errors.Is(err, errUsage) {
		return 2
	}
	return 1
}

var (
	errUsage    = errors.New("usage")
	errTampered = errors.New("the audit trail does not verify")
)
