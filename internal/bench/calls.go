package bench

import (
	"context"
	"crypto/ecdh"
	"crypto/rand"
	"crypto/x509"
	"fmt"
	"sync"
	"time"

	"github.com/escrowd/escrowd/format"
	"github.com/escrowd/escrowd/hsm"
)

// CallCount is how many PKCS#11 calls one operation makes, counted by the
// hsm package's observer on the benchmark's token: on a network HSM each
// is a round trip.
type CallCount struct {
	Op    string `json:"op"`
	Calls int    `json:"calls"`
}

// lastCalls is an hsm.CallObserver keeping the count of the last
// operation.
type lastCalls struct {
	mu    sync.Mutex
	calls int
}

func (*lastCalls) ObserveHSMOp(string, time.Duration, error) {}
func (*lastCalls) ObserveSessionWait(time.Duration, bool)    {}
func (l *lastCalls) ObserveHSMCalls(_ string, calls int, _ error) {
	l.mu.Lock()
	l.calls += calls
	l.mu.Unlock()
}

func (l *lastCalls) take() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := l.calls
	l.calls = 0
	return n
}

// countCalls runs each of ops once on an HSM of the benchmark's token and
// adds its call count to the report.
func (r *runner) countCalls(ctx context.Context, ops []countedOp) error {
	obs := &lastCalls{}
	cfg := r.env.tok.HSMConfig()
	cfg.Observer = obs
	h, err := hsm.Open(cfg)
	if err != nil {
		return err
	}
	defer h.Close()
	for _, o := range ops {
		oh := h
		if o.cfg != nil {
			c := cfg
			o.cfg(&c)
			if oh, err = hsm.Open(c); err != nil {
				return err
			}
			defer oh.Close()
		}
		if o.warm != nil {
			if err := o.warm(ctx, oh); err != nil {
				return fmt.Errorf("bench: count the PKCS#11 calls of %s: %w", o.name, err)
			}
		}
		obs.take()
		if err := o.run(ctx, oh); err != nil {
			return fmt.Errorf("bench: count the PKCS#11 calls of %s: %w", o.name, err)
		}
		n := obs.take()
		r.rep.Calls = append(r.rep.Calls, CallCount{Op: o.name, Calls: n})
		r.logf("PKCS#11 calls: %-48s %d", o.name, n)
	}
	return nil
}

// countedOp is an operation whose calls are counted: run, after warm
// (uncounted) if set, on an HSM of the token opened with cfg applied if
// set.
type countedOp struct {
	name string
	run  func(context.Context, *hsm.HSM) error
	cfg  func(*hsm.Config)
	warm func(context.Context, *hsm.HSM) error
}

// memberTargets makes n ecdh-p256 member targets of GDK version v of the
// bases' group.
func memberTargets(n int, v uint32) ([]hsm.Target, error) {
	var ts []hsm.Target
	for i := range n {
		k, err := ecdh.P256().GenerateKey(rand.Reader)
		if err != nil {
			return nil, err
		}
		der, err := x509.MarshalPKIXPublicKey(k.PublicKey())
		if err != nil {
			return nil, err
		}
		ts = append(ts, hsm.Target{PublicKeyDER: der, Suite: hsm.SuiteECDHP256,
			Context: &format.SlotContext{Kind: "member", Suite: string(hsm.SuiteECDHP256), Group: baseGroup, GDKVersion: v, KeyVersion: 1, ID: fmt.Sprint("m", i)}})
	}
	return ts, nil
}

// minimumCalls is the PKCS#11 calls of each counted operation at the
// minimum docs/HSM.md gives ("PKCS#11 calls per operation"), with hot
// escrow keys and slots off (the benchmark's own HSM keeps none), but for
// the re-wrap of a slot kept opened (a hot slot).
var minimumCalls = map[string]int{
	"rewrap ecdh-p256 (1 member)":                   21,
	"rewrap ecdh-p256 (8 members, one call)":        21 + 7*5,
	"rewrap ecdh-p256, slot kept (1 member)":        5,
	"reveal (HMAC)":                                 4,
	"provision ecdh-p256 (escrow key + unlock key)": 11 + 3,
	"GDK rotation ecdh-p256 (1 member + chain)":     34,
	"rewrap rsa-oaep-sha1 (1 rsa member)":           18,
	"KEK re-wrap (EC escrow key + unlock key)":      6,
}

// baseGroup is the group the bases' slots are sealed to.
const baseGroup = "bench-base"

// callCounts counts the PKCS#11 calls of each operation escrowd makes,
// as it makes them (format v2 slots, with contexts).
func (r *runner) callCounts(ctx context.Context) error {
	one, err := memberTargets(1, 1)
	if err != nil {
		return err
	}
	eight, err := memberTargets(8, 1)
	if err != nil {
		return err
	}
	next, err := memberTargets(1, 2)
	if err != nil {
		return err
	}
	rewrap := func(src hsm.Source, ts []hsm.Target) func(context.Context, *hsm.HSM) error {
		return func(ctx context.Context, h *hsm.HSM) error { _, err := h.RewrapSlot(ctx, src, ts); return err }
	}
	ec := r.ec[0]
	ops := []countedOp{
		{name: "rewrap ecdh-p256 (1 member)", run: rewrap(ec.slot, one)},
		{name: "rewrap ecdh-p256 (8 members, one call)", run: rewrap(ec.slot, eight)},
		{name: "rewrap ecdh-p256, slot kept (1 member)", run: rewrap(ec.slot, one), warm: rewrap(ec.slot, one),
			cfg: func(c *hsm.Config) { c.Sessions, c.HotKeys, c.HotSlots = 1, 1, 1 }},
		{name: "reveal (HMAC)", run: func(ctx context.Context, h *hsm.HSM) error {
			_, err := h.HMAC(ctx, ec.unlock, []byte("escrowd unlock code v1\x00bench"))
			return err
		}},
		{name: "provision ecdh-p256 (escrow key + unlock key)", run: func(ctx context.Context, h *hsm.HSM) error {
			if _, _, err := h.GenerateEscrowKey(ctx, hsm.SuiteECDHP256); err != nil {
				return err
			}
			_, err := h.GenerateUnlockKey(ctx)
			return err
		}},
		{name: "GDK rotation ecdh-p256 (1 member + chain)", run: func(ctx context.Context, h *hsm.HSM) error {
			chain := &format.SlotContext{Kind: "chain", Suite: "aes-kw", Group: baseGroup, GDKVersion: 1, KeyVersion: 2}
			_, _, err := h.Rotate(ctx, ec.slot, chain, next)
			return err
		}},
	}
	if r.cfg.RSA {
		ops = append(ops, countedOp{name: "rewrap rsa-oaep-sha1 (1 rsa member)", run: rewrap(r.rsa.slot, []hsm.Target{{PublicKeyDER: r.rsaMem.PublicKey, Suite: hsm.SuiteRSAOAEPSHA1,
			Context: &format.SlotContext{Kind: "member", Suite: string(hsm.SuiteRSAOAEPSHA1), Group: baseGroup, GDKVersion: 1, KeyVersion: 1, ID: "m"}}})})
	}
	return r.countCalls(ctx, ops)
}

// kekCallCount counts one group's master KEK re-wrap (its EC escrow key
// and its unlock key), once KEK version 2 exists.
func (r *runner) kekCallCount(ctx context.Context) error {
	ec := r.ec[0]
	return r.countCalls(ctx, []countedOp{{name: "KEK re-wrap (EC escrow key + unlock key)", run: func(ctx context.Context, h *hsm.HSM) error {
		if _, err := h.RewrapKEK(ctx, hsm.KeyEscrowEC, ec.escrow, 2); err != nil {
			return err
		}
		_, err := h.RewrapKEK(ctx, hsm.KeyUnlock, ec.unlock, 2)
		return err
	}}})
}
