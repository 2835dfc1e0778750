package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/escrowd/escrowd/audit"
	"github.com/escrowd/escrowd/audit/hsmkey"
	"github.com/escrowd/escrowd/hsm"
	"github.com/escrowd/escrowd/internal/secret"
)

// auditOptions are the flags of audit verify and audit checkpoint.
type auditOptions struct {
	vault audit.VaultConfig
	// The HSM, to check the chain key's MACs: used when token is set.
	module, token, pinFile, kekLabel string
	expectHead                       string
	timeout                          time.Duration
}

// openHSM opens the token that holds the chain key.
func (o *auditOptions) openHSM() (*hsm.HSM, error) {
	pin, err := secret.Load("HSM user PIN", o.pinFile, "ESCROWD_HSM_PIN")
	if err != nil {
		return nil, err
	}
	return hsm.Open(hsm.Config{Module: o.module, TokenLabel: o.token, PIN: pin, KEKLabel: o.kekLabel, Sessions: 1})
}

// auditCommand runs audit verify or audit checkpoint.
func auditCommand(cmd string, o auditOptions, out io.Writer) error {
	var expect []audit.Head
	if o.expectHead != "" {
		h, err := audit.ParseHead(o.expectHead)
		if err != nil {
			return err
		}
		expect = append(expect, h)
	}
	if o.token != "" {
		h, err := o.openHSM()
		if err != nil {
			return err
		}
		defer h.Close()
		o.vault.Keyer = hsmkey.Keyer{HSM: h}
	}
	v, err := audit.NewVault(o.vault)
	if err != nil {
		return err
	}
	defer v.Close()
	ctx, cancel := context.WithTimeout(context.Background(), o.timeout)
	defer cancel()
	for _, h := range expect {
		switch {
		case h.MAC != "" && o.token != "":
			if err := v.CheckHead(ctx, h); err != nil {
				return err
			}
			fmt.Fprintf(out, "checkpoint %d:%s taken %s: its MAC verifies\n", h.N, h.Hash, time.Unix(h.At, 0).UTC().Format(time.RFC3339))
		case h.MAC != "":
			fmt.Fprintln(out, "checkpoint's MAC not checked (no -token: the chain key is in the HSM)")
		}
	}
	r, err := v.VerifyAll(ctx, expect...)
	if err != nil {
		return err
	}
	if cmd == "audit checkpoint" {
		return auditCheckpoint(ctx, v, o.token != "", r, out)
	}
	if o.token != "" {
		if err := printAcknowledged(ctx, v, r, out); err != nil {
			return err
		}
	}
	return printReport(r, out)
}

// printAcknowledged names, for each position with a break, the operator's
// acknowledgement of it, if one verifies under the chain key: the break
// stays a break (the entry was not written by escrowd), now with the
// ticket of the incident that looked at it.
func printAcknowledged(ctx context.Context, v *audit.Vault, r *audit.Report, out io.Writer) error {
	seen := map[uint64]bool{}
	for _, p := range r.Problems {
		if seen[p.Batch] || p.Batch == 0 {
			continue
		}
		seen[p.Batch] = true
		a, err := v.Acknowledged(ctx, p.Batch)
		if err != nil {
			return err
		}
		if a != nil {
			fmt.Fprintf(out, "ACKNOWLEDGED batch %d: ticket %s, %s (%s)\n", a.Seq, a.Ticket, a.At.Format(time.RFC3339), a.What)
		}
	}
	return nil
}

// printReport prints every break the walk found, then every intent
// without an outcome (a state-changing request that may or may not have
// taken effect). It fails (errTampered) if there is a break; open intents
// alone are reported, not failed on: a request still running has one.
func printReport(r *audit.Report, out io.Writer) error {
	for i := range r.Problems {
		fmt.Fprintf(out, "BREAK %s\n", &r.Problems[i])
	}
	for i := range r.Open {
		fmt.Fprintf(out, "OPEN %s\n", &r.Open[i])
	}
	keyed := "MACs not checked (no -token: the chain key is in the HSM)"
	if r.Keyed {
		keyed = fmt.Sprintf("every MAC checked (%d batches from before the chain was keyed)", r.Unkeyed)
	}
	if r.Unverified > 0 {
		keyed = fmt.Sprintf("%d batches' MACs could not be computed (%s); the others checked", r.Unverified, r.UnverifiedWhy)
	}
	if len(r.Problems) > 0 {
		fmt.Fprintf(out, "audit trail BROKEN: %d breaks in %d records, head record %d %s; %s\n", len(r.Problems), r.Records, r.N, r.Head, keyed)
		return errTampered
	}
	fmt.Fprintf(out, "audit trail intact: %d records, head %s; %d intents without outcome; %s\n", r.Records, r.Head, len(r.Open), keyed)
	return nil
}

// auditCheckpoint prints the head of an intact trail, for the operator to
// keep outside Vault and give later to audit verify -expect-head; with the
// HSM, signed: N:HASH:AT:MAC.
func auditCheckpoint(ctx context.Context, v *audit.Vault, sign bool, r *audit.Report, out io.Writer) error {
	if len(r.Problems) > 0 {
		if err := printReport(r, out); err != nil {
			return fmt.Errorf("no checkpoint of a broken trail: %w", err)
		}
	}
	if r.N == 0 {
		return errors.New("the trail is empty: nothing to checkpoint")
	}
	h, now := audit.Head{N: r.N, Hash: r.Head}, time.Now().UTC()
	if sign {
		var err error
		if h, err = v.SignHead(ctx, h, now); err != nil {
			return err
		}
	}
	fmt.Fprintf(out, "%s\n", h)
	fmt.Fprintf(out, "# record %d of the trail, taken %s; keep this line outside Vault and check it later with: escrowctl audit verify -expect-head %s\n",
		r.N, now.Format(time.RFC3339), h)
	return nil
}
