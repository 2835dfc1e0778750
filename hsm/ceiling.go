package hsm

import (
	"context"
	"crypto/ecdh"
	"crypto/rand"
	"fmt"
	"sync"
	"time"

	"github.com/miekg/pkcs11"
)

// The raw ceiling: the PKCS#11 call sequence of each escrowd operation,
// run in a loop on sessions held for the whole run, with nothing around
// it — no pool checkout per call, no store, no gRPC, no policy, no audit.
// `make bench` divides escrowd's throughput by it, so a daemon that adds
// little shows a ratio near 1. It lives here because PKCS#11 types never
// leave this package.

// CeilingOp names the call sequence Ceiling runs.
type CeilingOp string

const (
	// CeilingRewrapECDH is one ecdh-p256 re-wrap as RewrapSlot does it:
	// unwrap the EC escrow key under the KEK, ECDH derive, AES-ECB derive
	// of K, AES-KW unwrap of the GDK (its length is checked in Go, with no
	// call), the binding key, commitment and binding, import the target's
	// K, AES-KW wrap, the output's binding, destroy everything. The target
	// side's Go ECDH is left out: it is not an HSM mechanism.
	CeilingRewrapECDH CeilingOp = "rewrap-ecdh-p256"
	// CeilingRewrapRSA is one rsa-oaep-sha1 re-wrap: unwrap the RSA escrow
	// key, OAEP unwrap of the GDK, length check, import the target public
	// key, OAEP wrap, destroy.
	CeilingRewrapRSA CeilingOp = "rewrap-rsa-oaep-sha1"
	// CeilingReveal is what a reveal asks of the HSM: unwrap the unlock
	// key, HMAC-SHA256, destroy.
	CeilingReveal CeilingOp = "reveal"
	// CeilingProvision is an ecdh-p256 provisioning: generate the P-256
	// pair, read the point, the self-test (ECDH derive + HMAC), wrap under
	// the KEK, generate and wrap the unlock key, destroy.
	CeilingProvision CeilingOp = "provision-ecdh-p256"
	// CeilingKEKRewrap is one group of a master KEK rotation: the EC escrow
	// key and the unlock key each unwrapped under KEK From and wrapped under
	// KEK To, inside the token.
	CeilingKEKRewrap CeilingOp = "kek-rewrap"
)

// CeilingInput is what the sequences work on: keys made by this token.
type CeilingInput struct {
	// Source is the escrow slot the re-wrap sequences open.
	Source Source
	// Target is the RSA target of CeilingRewrapRSA.
	Target Target
	// Unlock is the unlock key of CeilingReveal and CeilingKEKRewrap;
	// Source.EscrowPrivate is the escrow key of CeilingKEKRewrap.
	Unlock WrappedKey
	// ToKEK is the KEK version CeilingKEKRewrap wraps under.
	ToKEK uint32
}

// CeilingResult is one run: the latency of every completed sequence.
type CeilingResult struct {
	Latencies []time.Duration
	Elapsed   time.Duration
}

// Ceiling runs op on sessions goroutines, each holding its own pooled
// session, for d, and returns every sequence's latency. The first error
// ends the run.
func (h *HSM) Ceiling(ctx context.Context, op CeilingOp, in CeilingInput, sessions int, d time.Duration) (CeilingResult, error) {
	if sessions < 1 || sessions > h.cfg.Sessions {
		return CeilingResult{}, fmt.Errorf("hsm: ceiling: %w: %d sessions, pool has %d", ErrInvalidInput, sessions, h.cfg.Sessions)
	}
	step, err := h.ceilingStep(op, in)
	if err != nil {
		return CeilingResult{}, err
	}
	ss := make([]session, 0, sessions)
	errs := make([]error, sessions)
	defer func() {
		// A session whose sequence failed in the module is closed, as
		// h.do does, never pooled.
		for i, s := range ss {
			_, failed := ckrCode(errs[i])
			h.release(s, failed)
		}
	}()
	for range sessions {
		s, err := h.acquire(ctx)
		if err != nil {
			return CeilingResult{}, err
		}
		ss = append(ss, s)
	}
	lats := make([][]time.Duration, sessions)
	start := time.Now()
	deadline := start.Add(d)
	var wg sync.WaitGroup
	for i, s := range ss {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				t0 := time.Now()
				if t0.After(deadline) {
					return
				}
				if err := step(s); err != nil {
					errs[i] = fmt.Errorf("hsm: ceiling %s: %w", op, err)
					return
				}
				lats[i] = append(lats[i], time.Since(t0))
			}
		}()
	}
	wg.Wait()
	res := CeilingResult{Elapsed: time.Since(start)}
	for i := range ss {
		if errs[i] != nil {
			return CeilingResult{}, errs[i]
		}
		res.Latencies = append(res.Latencies, lats[i]...)
	}
	return res, ctx.Err()
}

// ceilingStep returns the sequence of op, its inputs checked and parsed
// once so that the loop runs PKCS#11 calls only.
func (h *HSM) ceilingStep(op CeilingOp, in CeilingInput) (func(session) error, error) {
	switch op {
	case CeilingRewrapECDH:
		pub, err := ParseP256(in.Source.EscrowPublicDER)
		if err != nil {
			return nil, err
		}
		if _, err := ecdh.P256().NewPublicKey(in.Source.EPK); err != nil {
			return nil, fmt.Errorf("hsm: ceiling: %w: EPK", ErrInvalidInput)
		}
		point := pub.Bytes()
		k := make([]byte, 32)
		if _, err := rand.Read(k); err != nil {
			return nil, err
		}
		return func(s session) error {
			gdk, err := h.openGDK(s, in.Source, point)
			if err != nil {
				return err
			}
			defer h.destroy(s, gdk)
			kb, err := h.ceilingVerify(s, gdk, true)
			if err != nil {
				return err
			}
			defer h.destroy(s, kb)
			t, err := h.importAES(s, k, true)
			if err != nil {
				return wrapErr("import slot key", err)
			}
			defer h.destroy(s, t)
			if _, err = s.p.WrapKey(s.h, kw, t, gdk); err != nil {
				return wrapErr("wrap GDK with AES-KW", err)
			}
			_, err = h.mac(s, kb, ceilingMessage[:])
			return err
		}, nil
	case CeilingRewrapRSA:
		ts, err := parseTargets([]Target{in.Target})
		if err != nil {
			return nil, err
		}
		return func(s session) error {
			gdk, err := h.openGDK(s, in.Source, nil)
			if err != nil {
				return err
			}
			defer h.destroy(s, gdk)
			kb, err := h.ceilingVerify(s, gdk, false)
			if err != nil {
				return err
			}
			defer h.destroy(s, kb)
			if _, err = h.wrapToTarget(s, gdk, ts[0], ""); err != nil {
				return err
			}
			_, err = h.mac(s, kb, ceilingMessage[:])
			return err
		}, nil
	case CeilingReveal:
		if err := checkWrapped(in.Unlock, "unlock key"); err != nil {
			return nil, err
		}
		msg := []byte("escrowd unlock code v1\x00ceiling")
		hmac := []*pkcs11.Mechanism{pkcs11.NewMechanism(pkcs11.CKM_SHA256_HMAC, nil)}
		return func(s session) error {
			k, err := h.unwrapUnlock(s, in.Unlock)
			if err != nil {
				return err
			}
			defer h.destroy(s, k)
			if err := s.p.SignInit(s.h, hmac, k); err != nil {
				return wrapErr("HMAC", err)
			}
			mac, err := s.p.Sign(s.h, msg)
			clear(mac)
			return wrapErr("HMAC", err)
		}, nil
	case CeilingProvision:
		return func(s session) error {
			if _, _, err := h.genECEscrowKey(s); err != nil {
				return err
			}
			_, err := h.genUnlockKey(s)
			return err
		}, nil
	case CeilingKEKRewrap:
		keys := []struct {
			kind KeyKind
			w    WrappedKey
		}{{KeyEscrowEC, in.Source.EscrowPrivate}, {KeyUnlock, in.Unlock}}
		for _, k := range keys {
			if err := checkWrapped(k.w, k.kind.String()); err != nil {
				return nil, err
			}
		}
		return func(s session) error {
			dst, err := h.kekFor(s, in.ToKEK)
			if err != nil {
				return err
			}
			for _, k := range keys {
				o, err := h.unwrapUnderKEK(s, k.w, k.kind, "unwrap "+k.kind.String()+" for KEK rotation")
				if err != nil {
					return err
				}
				c, _ := classOf(k.kind)
				_, err = s.p.WrapKey(s.h, kwp, dst.h[c], o)
				h.destroy(s, o)
				if err != nil {
					return wrapErr("wrap under the new KEK", err)
				}
			}
			return nil
		}, nil
	}
	return nil, fmt.Errorf("hsm: ceiling: %w: unknown op %q", ErrInvalidInput, string(op))
}

// ceilingMessage stands in for a binding message: about the size of an
// ecdh-p256 slot's.
var ceilingMessage [220]byte

// ceilingVerify is the v2 check of an opened escrow slot as RewrapSlot
// makes it: the GDK's length (rsa-oaep only) and binding key, its commitment and the
// binding MAC. The ceiling compares the results with nothing: it measures
// the calls.
func (h *HSM) ceilingVerify(s session, gdk pkcs11.ObjectHandle, lengthKnown bool) (pkcs11.ObjectHandle, error) {
	kb, err := h.gdkBindKey(s, gdk, lengthKnown)
	if err != nil {
		return 0, err
	}
	if _, err := h.commitment(s, gdk, "ceiling", 1); err != nil {
		h.destroy(s, kb)
		return 0, err
	}
	if _, err := h.mac(s, kb, ceilingMessage[:]); err != nil {
		h.destroy(s, kb)
		return 0, err
	}
	return kb, nil
}
