package main

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/escrowd/escrowd/internal/devpki"
)

// Development identities: one sync backend, two support technicians, one
// security engineer.
var devIdentities = []struct{ name, id string }{
	{"sync-backend", "spiffe://escrowd.dev/sync-backend"},
	{"alice", "spiffe://escrowd.dev/support/alice"},
	{"bob", "spiffe://escrowd.dev/support/bob"},
	{"carol", "spiffe://escrowd.dev/security/carol"},
}

const devPolicy = `# Development policy written by escrowctl dev pki.
version: 1

roles:
  sync-backend:
    operations: [ProvisionGroup, GetEscrowKey, Rewrap, IssueUnlockCodes, RewrapToEscrow, BatchRewrap, MarkUnlockCodeConsumed, RotateGroupKey, ListEvents]
    rewrap_targets: [member, device, unlock, escrow]
  support:
    operations: [RevealUnlockCode, ListUnlockCodes, ListPendingReveals, ApproveReveal]
  security:
    operations: [GetGroup, ListHSMObjects, RotateGroupKeys, SetMinDecryptionVersion, DestroyKeyVersion, StartJob, ListJobs, CancelJob, DestroyKEK]

identities:
  - {id: "spiffe://escrowd.dev/sync-backend", name: sync-backend, roles: [sync-backend]}
  - {id: "spiffe://escrowd.dev/support/alice", name: alice, roles: [support]}
  - {id: "spiffe://escrowd.dev/support/bob", name: bob, roles: [support]}
  - {id: "spiffe://escrowd.dev/security/carol", name: carol, roles: [security]}

tickets:
  required_for: [RevealUnlockCode]
  pattern: '^[A-Z]+-[0-9]+$'

# Reveals for groups named vip-* wait for a second technician.
dual_control:
  operations: [RevealUnlockCode]
  groups: ["vip-*"]
  timeout: 10m

# Generous limits for trying things out; a production policy allows a user
# a few reveals a day (docs/POLICY.md). Edit, then send escrowd SIGHUP.
rate_limits:
` + devRateLimits

// devRateLimits are the development policy's limits, which dev pki
// prints: someone trying escrowd out should not meet a production limit.
const devRateLimits = `  - {name: reveals-per-user, operations: [RevealUnlockCode], per: user, limit: 100, window: 1h}
  - {name: reveals-per-technician, operations: [RevealUnlockCode], per: caller, limit: 1000, window: 1h}
`

// devPKI writes a CA, certificates and a policy into dir, unless dir has
// them already (make run restarts keep them).
func devPKI(dir string, out io.Writer) error {
	if _, err := os.Stat(filepath.Join(dir, "ca.crt")); err == nil {
		return nil
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	ca, err := devpki.NewCA("escrowd development CA")
	if err != nil {
		return err
	}
	srv, err := ca.Server()
	if err != nil {
		return err
	}
	if err := srv.Write(dir, "server"); err != nil {
		return err
	}
	for _, id := range devIdentities {
		p, err := ca.Client(id.id, time.Time{}, time.Time{})
		if err != nil {
			return err
		}
		if err := p.Write(dir, id.name); err != nil {
			return err
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "policy.yaml"), []byte(devPolicy), 0o644); err != nil {
		return err
	}
	// Written last: its presence means the folder is complete.
	if err := os.WriteFile(filepath.Join(dir, "ca.crt"), ca.PEM, 0o644); err != nil {
		return err
	}
	fmt.Fprintf(out, "wrote a development CA, certificates and policy.yaml to %s\n", dir)
	fmt.Fprintf(out, "its rate limits, meant for trying things out (edit %s, then send escrowd SIGHUP):\n%s",
		filepath.Join(dir, "policy.yaml"), devRateLimits)
	return nil
}
