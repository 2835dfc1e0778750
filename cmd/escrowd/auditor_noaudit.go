//go:build escrowd_noaudit

package main

import (
	"context"

	"go.uber.org/zap"

	"github.com/escrowd/escrowd/audit"
)

type auditor interface {
	Commit(ctx context.Context, r *audit.Record) error
	Healthy(ctx context.Context) error
	Close() error
}

// discard drops every record. It exists only so that `make bench` can
// measure what audit costs; a binary built with escrowd_noaudit says so
// at every start and must never serve real traffic.
type discard struct{}

func (discard) Commit(context.Context, *audit.Record) error { return nil }
func (discard) Healthy(context.Context) error               { return nil }
func (discard) Close() error                                { return nil }

// auditNeedsVault: this build writes no audit trail.
const auditNeedsVault = false

func newAuditor(_ *options, _ string, log *zap.Logger, _ audit.Observer, _ audit.Keyer, _ audit.Anchor) (auditor, error) {
	log.Warn("AUDIT IS OFF: this escrowd was built with the escrowd_noaudit tag, for benchmarks only")
	return discard{}, nil
}
