package bench

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"fmt"
	"io"
	"os"
	"strconv"
	"time"

	"github.com/hashicorp/vault/api"

	escrowdv1 "github.com/escrowd/escrowd/api/escrowd/v1"
	"github.com/escrowd/escrowd/escrow/bundle"
	"github.com/escrowd/escrowd/hsm"
)

// burstSize is the recipients of a join burst: a device or surrogate
// joins, or a GDK rotates, and the sync backend re-wraps one group's GDK
// to each of them in a row.
const burstSize = 8

// burstMembers makes the ecdh-p256 members of a join burst.
func burstMembers() ([]escrowdv1.Recipient, error) {
	var out []escrowdv1.Recipient
	for i := range burstSize {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return nil, err
		}
		der, err := x509.MarshalPKIXPublicKey(&k.PublicKey)
		if err != nil {
			return nil, err
		}
		out = append(out, escrowdv1.Recipient{Kind: escrowdv1.Recipient_KIND_MEMBER, Id: "burst-" + strconv.Itoa(i), KeyVersion: 1, Suite: bundle.SuiteECDHP256, PublicKey: der})
	}
	return out, nil
}

// joinBurst re-wraps one random group's escrow slot to the burst's
// members, one Rewrap after the other: burstSize operations.
func (r *runner) joinBurst(d *daemon, p *pool) Op {
	return func(ctx context.Context, _ int) (int, error) {
		g := p.ecPick()
		for i := range r.burst {
			if _, err := d.sync.Rewrap(ctx, &escrowdv1.RewrapRequest{GroupId: g.group, EscrowSlot: g.slot, Recipient: &r.burst[i]}); err != nil {
				return i, err
			}
		}
		return len(r.burst), nil
	}
}

// batchBurst sends a join burst as one BatchRewrap: one random group's
// escrow slot to each member of the burst (burstSize operations).
func (r *runner) batchBurst(d *daemon, p *pool) Op {
	return func(ctx context.Context, _ int) (int, error) {
		g := p.ecPick()
		items := make([]*escrowdv1.BatchRewrapItem, len(r.burst))
		for j := range items {
			items[j] = &escrowdv1.BatchRewrapItem{Reference: strconv.Itoa(j), GroupId: g.group, EscrowSlot: g.slot,
				Target: &escrowdv1.BatchRewrapItem_Recipient{Recipient: &r.burst[j]}}
		}
		return sendBatch(ctx, d, items)
	}
}

// batchRandom sends burstSize random groups' slots to one member in one
// BatchRewrap: the same request as batchBurst, without the shared slot.
func (r *runner) batchRandom(d *daemon, p *pool) Op {
	return func(ctx context.Context, _ int) (int, error) {
		items := make([]*escrowdv1.BatchRewrapItem, burstSize)
		for j := range items {
			g := p.ecPick()
			items[j] = &escrowdv1.BatchRewrapItem{Reference: strconv.Itoa(j), GroupId: g.group, EscrowSlot: g.slot,
				Target: &escrowdv1.BatchRewrapItem_Recipient{Recipient: &r.member}}
		}
		return sendBatch(ctx, d, items)
	}
}

func sendBatch(ctx context.Context, d *daemon, items []*escrowdv1.BatchRewrapItem) (int, error) {
	resp, err := d.sync.BatchRewrap(ctx, &escrowdv1.BatchRewrapRequest{Items: items})
	if err != nil {
		return 0, err
	}
	for _, it := range resp.Results {
		if it.Error != nil {
			return 0, fmt.Errorf("batch item: code %d: %s", it.Error.Code, it.Error.Message)
		}
	}
	return len(items), nil
}

// closedSide measures op on conc callers; the process measured is pid.
func closedSide(conc, pid int, op Op) Side {
	return func(ctx context.Context, d time.Duration) (Point, error) {
		res := RunClosed(ctx, conc, d, pid, op)
		if res.Errors > 0 {
			return Point{}, fmt.Errorf("%d errors, the first: %w", res.Errors, res.FirstErr)
		}
		return pointOf(res), nil
	}
}

// rawSide measures the raw PKCS#11 sequence op on sessions sessions, in
// this process, whose CPU it measures.
func rawSide(h *hsm.HSM, op hsm.CeilingOp, in hsm.CeilingInput, sessions int) Side {
	return func(ctx context.Context, d time.Duration) (Point, error) {
		cpu, vcpu := startCPU(selfPID), startCPU(vaultPID)
		res, err := h.Ceiling(ctx, op, in, sessions, d)
		pct, vpct := cpu.percent(), vcpu.percent()
		if err != nil {
			return Point{}, err
		}
		return pointOf(Result{Stats: Summarize(res.Latencies, len(res.Latencies), 0, res.Elapsed), CPU: pct, VaultCPU: vpct}), nil
	}
}

// transitSide measures Vault Transit's rewrap of ct under path; the
// process measured is Vault.
func transitSide(c *api.Client, path, ct string, conc int) Side {
	return func(ctx context.Context, d time.Duration) (Point, error) {
		res := RunClosed(ctx, conc, d, 0, func(ctx context.Context, _ int) (int, error) {
			_, err := c.Logical().WriteWithContext(ctx, path, map[string]any{"ciphertext": ct})
			return 1, err
		})
		if res.Errors > 0 {
			return Point{}, fmt.Errorf("%d errors, the first: %w", res.Errors, res.FirstErr)
		}
		p := pointOf(res)
		p.CPUPerOp = p.VaultCPUPerOp
		return p, nil
	}
}

// pair measures one interleaved ratio and adds it to the report.
func (r *runner) pair(ctx context.Context, name, a, b string, sa, sb Side) error {
	as, bs, err := Interleave(ctx, r.cfg.Pairs, r.cfg.Point, sa, sb)
	if err != nil {
		return fmt.Errorf("bench: %s: %w", name, err)
	}
	x := NewInterleaved(name, a, b, as, bs, r.cfg.Point)
	r.rep.Interleaved = append(r.rep.Interleaved, x)
	r.logf("%-58s ratio %s, CPU-normalised %s, load %s", name, fmtSpread(x.Ratio, 2), fmtSpread(x.CPU, 2), x.Load)
	return nil
}

// interleaved returns the ratio named name, if measured.
func (r *runner) interleaved(name string) (Interleaved, bool) {
	for _, x := range r.rep.Interleaved {
		if x.Name == name {
			return x, true
		}
	}
	return Interleaved{}, false
}

// Names of the interleaved ratios, which the targets look up.
const (
	pairRewrapRaw   = "re-wrap ecdh-p256: escrowd / raw PKCS#11"
	pairRevealRaw   = "reveal: escrowd / raw PKCS#11"
	pairBurst       = "re-wrap ecdh-p256: join burst / random groups"
	pairBurstBatch  = "BatchRewrap of 8: join burst / random groups"
	pairBurstSlots  = "re-wrap ecdh-p256, -hsm-hot-slots 16: join burst / random groups"
	pairHotKeysOff  = "re-wrap ecdh-p256: hot keys as configured / -hsm-hot-keys 0"
	pairAudit       = "reveal: audited / audit off"
	pairRSATransit  = "re-wrap rsa-oaep-sha1: escrowd / Vault Transit rsa-3072"
	pairLargeRewrap = "re-wrap ecdh-p256: large store / small store"
	pairLargeReveal = "reveal: large store / small store"
)

// smallPairs measures the interleaved ratios of the small store: escrowd
// against the raw sequences, a join burst against random groups, audited
// reveals against an escrowd_noaudit daemon on a copy of the store, and
// the RSA re-wrap against Vault Transit.
func (r *runner) smallPairs(ctx context.Context, path string, p *pool) error {
	n := r.cfg.SmallGroups
	c := r.cfg.PairConc
	// The copy is taken before a daemon opens the store.
	dn, stopNoaudit, err := r.startOnCopy("escrowd-noaudit", path, ".noaudit", "escrowd-pairs-noaudit.log")
	if err != nil {
		return err
	}
	defer stopNoaudit()
	d, err := r.env.startDaemon("escrowd-bench", path, "escrowd-pairs.log", r.daemonFlags()...)
	if err != nil {
		return err
	}
	defer d.stop()
	h, err := hsm.Open(r.env.tok.HSMConfig())
	if err != nil {
		return err
	}
	defer h.Close()
	s := r.cfg.HSMSessions
	callers := func(k int) string { return fmt.Sprintf("escrowd, %d callers", k) }
	raw := fmt.Sprintf("raw PKCS#11, %d sessions", s)
	if err := r.pair(ctx, pairRewrapRaw, callers(c), raw,
		closedSide(c, d.pid(), r.rewrapECDH(d, p)), rawSide(h, hsm.CeilingRewrapECDH, hsm.CeilingInput{Source: r.ec[0].src}, s)); err != nil {
		return err
	}
	if err := r.pair(ctx, pairBurst, fmt.Sprintf("one group to %d members in a row, %d callers", burstSize, c), fmt.Sprintf("a random group each, %d callers", c),
		closedSide(c, d.pid(), r.joinBurst(d, p)), closedSide(c, d.pid(), r.rewrapECDH(d, p))); err != nil {
		return err
	}
	if err := r.burstSlots(ctx, path, p); err != nil {
		return err
	}
	if r.cfg.OwnKeys {
		if err := r.hotKeysOff(ctx, d, path, p); err != nil {
			return err
		}
	}
	if err := r.pair(ctx, pairBurstBatch, fmt.Sprintf("one group to %d members, %d callers", burstSize, c/4), fmt.Sprintf("%d random groups, %d callers", burstSize, c/4),
		closedSide(max(c/4, 1), d.pid(), r.batchBurst(d, p)), closedSide(max(c/4, 1), d.pid(), r.batchRandom(d, p))); err != nil {
		return err
	}
	if err := r.pair(ctx, pairAudit, callers(4*c), "escrowd_noaudit, "+strconv.Itoa(4*c)+" callers",
		closedSide(4*c, d.pid(), r.reveal(d, n)), closedSide(4*c, dn.pid(), r.reveal(dn, n))); err != nil {
		return err
	}
	if err := r.pair(ctx, pairRevealRaw, callers(4*c), raw,
		closedSide(4*c, d.pid(), r.reveal(d, n)), rawSide(h, hsm.CeilingReveal, hsm.CeilingInput{Unlock: r.ec[0].unlock}, s)); err != nil {
		return err
	}
	if r.cfg.RSA && r.transitRSA.path != "" && n > 50 {
		if err := r.pair(ctx, pairRSATransit, callers(c), fmt.Sprintf("Vault Transit, %d callers", c),
			closedSide(c, d.pid(), r.rewrapRSA(d, p)), transitSide(r.vault, r.transitRSA.path, r.transitRSA.ct, c)); err != nil {
			return err
		}
	}
	if r.cfg.Profile != "" {
		r.profile(ctx, d, "rewrap-pairs", c, r.rewrapECDH(d, p))
		r.profileRaw(ctx, h, "rewrap-raw", hsm.CeilingRewrapECDH, hsm.CeilingInput{Source: r.ec[0].src}, s)
		r.profile(ctx, d, "burst-pairs", c, r.joinBurst(d, p))
		if r.cfg.RSA && n > 50 {
			r.profile(ctx, d, "rsa-pairs", c, r.rewrapRSA(d, p))
		}
	}
	return nil
}

// burstSlots measures the join burst of 8 Rewrap calls against random
// groups on a daemon that keeps opened slots (-hsm-hot-slots 16; the
// default keeps none), on a copy of the store at path: what hot slots
// (docs/HSM.md, "Hot slots") add to the default's row.
func (r *runner) burstSlots(ctx context.Context, path string, p *pool) error {
	d, stop, err := r.startOnCopy("escrowd-bench", path, ".slots", "escrowd-pairs-slots.log", "-hsm-hot-slots", "16")
	if err != nil {
		return err
	}
	defer stop()
	c := r.cfg.PairConc
	return r.pair(ctx, pairBurstSlots, fmt.Sprintf("one group to %d members in a row, %d callers", burstSize, c), fmt.Sprintf("a random group each, %d callers", c),
		closedSide(c, d.pid(), r.joinBurst(d, p)), closedSide(c, d.pid(), r.rewrapECDH(d, p)))
}

// hotKeysOff measures random-group re-wraps on d against a daemon that
// keeps no escrow key (-hsm-hot-keys 0), on a copy of the store at path.
// With every group its own key (BENCH_OWN_KEYS=1) a kept key is rarely
// found again, so the ratio is what keeping keys costs when it does not
// pay (docs/HSM.md, "Hot escrow keys").
func (r *runner) hotKeysOff(ctx context.Context, d *daemon, path string, p *pool) error {
	d0, stop, err := r.startOnCopy("escrowd-bench", path, ".nohot", "escrowd-pairs-nohot.log", "-hsm-hot-keys", "0")
	if err != nil {
		return err
	}
	defer stop()
	c := r.cfg.PairConc
	return r.pair(ctx, pairHotKeysOff, fmt.Sprintf("escrowd, %d callers", c), fmt.Sprintf("escrowd -hsm-hot-keys 0, %d callers", c),
		closedSide(c, d.pid(), r.rewrapECDH(d, p)), closedSide(c, d0.pid(), r.rewrapECDH(d0, p)))
}

// largePairs measures the large store against the small one, both
// daemons running.
func (r *runner) largePairs(ctx context.Context, d *daemon, p *pool) error {
	if r.smallStore == nil {
		return nil
	}
	ds, err := r.env.startDaemon("escrowd-bench", r.smallStore.path, "escrowd-pairs-small.log", r.daemonFlags()...)
	if err != nil {
		return err
	}
	defer ds.stop()
	c := r.cfg.PairConc
	a, b := thousands(r.cfg.Groups)+" groups, "+strconv.Itoa(c)+" callers", thousands(r.cfg.SmallGroups)+" groups"
	if err := r.pair(ctx, pairLargeRewrap, a, b,
		closedSide(c, d.pid(), r.rewrapECDH(d, p)), closedSide(c, ds.pid(), r.rewrapECDH(ds, r.smallStore.pool))); err != nil {
		return err
	}
	return r.pair(ctx, pairLargeReveal, a, b,
		closedSide(4*c, d.pid(), r.reveal(d, r.cfg.Groups)), closedSide(4*c, ds.pid(), r.reveal(ds, r.cfg.SmallGroups)))
}

// startOnCopy starts escrowd binary bin, with the run's flags and extra,
// on a copy of the store at path (path+suffix), so that two daemons of a
// pair never share a store. stop stops it and removes the copy.
func (r *runner) startOnCopy(bin, path, suffix, logName string, extra ...string) (d *daemon, stop func(), err error) {
	cp := path + suffix
	if err := copyFile(path, cp); err != nil {
		return nil, nil, err
	}
	d, err = r.env.startDaemon(bin, cp, logName, append(r.daemonFlags(), extra...)...)
	if err != nil {
		os.Remove(cp)
		return nil, nil, err
	}
	return d, func() { d.stop(); os.Remove(cp) }, nil
}

func copyFile(from, to string) error {
	in, err := os.Open(from)
	if err != nil {
		return fmt.Errorf("bench: %w", err)
	}
	defer in.Close()
	out, err := os.OpenFile(to, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return fmt.Errorf("bench: %w", err)
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return fmt.Errorf("bench: %w", err)
	}
	return out.Close()
}
