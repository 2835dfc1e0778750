//go:build !escrowd_noaudit

package main

import (
	"context"

	"go.uber.org/zap"

	"github.com/escrowd/escrowd/audit"
)

// auditor is what run needs of the audit trail: commits for the daemon, a
// health check for start-up and the health service, and a flush on exit.
type auditor interface {
	Commit(ctx context.Context, r *audit.Record) error
	Healthy(ctx context.Context) error
	Close() error
}

// auditNeedsVault: this build writes the audit trail to Vault, so
// -vault-addr is required.
const auditNeedsVault = true

// newAuditor opens the Vault audit trail. Every build that operators run
// uses this one; the escrowd_noaudit build tag (benchmarks only) swaps it.
// The chain is keyed under a key of the HSM (audit/hsmkey), and its head
// anchored in the store.
func newAuditor(o *options, token string, _ *zap.Logger, obs audit.Observer, keyer audit.Keyer, anchor audit.Anchor) (auditor, error) {
	return audit.NewVault(audit.VaultConfig{
		Address: o.vaultAddr, Token: token, Mount: o.auditMount, Prefix: o.auditPrefix,
		Timeout: o.auditTimeout, MaxBatch: o.auditMaxBatch, Linger: o.auditLinger, Observer: obs, Keyer: keyer,
		Anchor: anchor, AcceptTruncation: o.auditAcceptTruncation,
	})
}
