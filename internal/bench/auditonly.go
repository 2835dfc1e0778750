package bench

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"

	"github.com/escrowd/escrowd/hsm"
)

// auditOnly (BENCH_ONLY=audit) measures the audit path alone, for work
// on it: on the small store, the interleaved audited / audit-off reveals
// (the audited daemon started with BENCH_AUDIT_FLAGS), a CPU profile of
// the audited daemon under that reveal load when BENCH_PROFILE is set,
// and the p99 at half of the peak re-wrap load with its two bounds (the
// raw sequence on one session, one Vault write), each measured here.
func (r *runner) auditOnly(ctx context.Context) error {
	if err := r.vaultClient(); err != nil {
		return err
	}
	path := filepath.Join(r.env.dir, "small.db")
	if err := r.fill(ctx, path, r.cfg.SmallGroups); err != nil {
		return err
	}
	n := r.cfg.SmallGroups
	p, err := r.sealPool(n)
	if err != nil {
		return err
	}
	// The copy is taken before a daemon opens the store.
	dn, stopNoaudit, err := r.startOnCopy("escrowd-noaudit", path, ".noaudit", "escrowd-audit-noaudit.log")
	if err != nil {
		return err
	}
	flags := append(r.daemonFlags(), r.cfg.AuditFlags...)
	d, err := r.env.startDaemon("escrowd-bench", path, "escrowd-audit.log", flags...)
	if err != nil {
		stopNoaudit()
		return err
	}
	defer d.stop()
	c := r.cfg.PairConc
	err = r.pair(ctx, pairAudit, fmt.Sprintf("escrowd %s, %d callers", strings.Join(r.cfg.AuditFlags, " "), 4*c),
		fmt.Sprintf("escrowd_noaudit, %d callers", 4*c),
		closedSide(4*c, d.pid(), r.reveal(d, n)), closedSide(4*c, dn.pid(), r.reveal(dn, n)))
	stopNoaudit()
	if err != nil {
		return err
	}
	if r.cfg.Profile != "" {
		r.profile(ctx, d, "reveal-audit", 4*c, r.reveal(d, n))
	}
	// The p99 target's bounds, then the open loop at half the peak.
	h, err := hsm.Open(r.env.tok.HSMConfig())
	if err != nil {
		return err
	}
	res, err := h.Ceiling(ctx, hsm.CeilingRewrapECDH, hsm.CeilingInput{Source: r.ec[0].src}, 1, r.cfg.Duration)
	h.Close()
	if err != nil {
		return err
	}
	r.add(sectionRaw, "rewrap ecdh-p256", 1, Result{Stats: Summarize(res.Latencies, len(res.Latencies), 0, res.Elapsed), CPU: -1, VaultCPU: -1}, "sessions")
	sec := r.sectionSmall()
	pk := r.add(sec, "rewrap ecdh-p256", c, RunClosed(ctx, c, r.cfg.Duration, d.pid(), r.rewrapECDH(d, p)), "")
	rate := pk.OpsPerSec / 2
	r.add(sec, "rewrap ecdh-p256 @ half peak", 0, RunOpen(ctx, rate, r.cfg.Duration, 256, d.pid(), r.rewrapECDH(d, p)),
		fmt.Sprintf("open loop, %.0f req/s", rate))
	r.vaultWrite(ctx)
	return nil
}

// vaultWrite measures what one audit commit costs at least: a Vault KV
// write of one record, one caller (the p99 target's other bound).
func (r *runner) vaultWrite(ctx context.Context) {
	rec := map[string]any{"records": strings.Repeat("x", 400)}
	vw := RunClosed(ctx, 1, r.cfg.Duration, 0, func(ctx context.Context, _ int) (int, error) {
		_, err := r.vault.KVv2("secret").Put(ctx, "escrowd/bench/p99", rec)
		return 1, err
	})
	vw.CPU = -1
	r.add(sectionVault, vaultWrite, 1, vw, "KV v2 put of one 400-byte record, as an audit commit")
}

// halfLoadTarget is the p99 target from the rows measured.
func (r *runner) halfLoadTarget() {
	half := peak(r.rows(r.sectionSmall(), "rewrap ecdh-p256 @ half peak"))
	var raw1 Row
	for _, x := range r.rows(sectionRaw, "rewrap ecdh-p256") {
		if x.Conc == 1 {
			raw1 = x
		}
	}
	vw := peak(r.rows(sectionVault, vaultWrite))
	bound := raw1
	if vw.P99 > bound.P99 {
		bound = vw
	}
	r.rep.Targets = append(r.rep.Targets, NewTarget("p99 at half of peak load ≤ 2 × max(raw p99, Vault write p99)", float64(half.P99), float64(bound.P99), 2, true,
		fmt.Sprintf("%s ms at %s / max(%s ms raw, 1 session; %s ms one Vault write) (one run, not interleaved)",
			fmtMS(half.Stats, false), half.Note, fmtMS(raw1.Stats, false), fmtMS(vw.Stats, false))))
}
