package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/escrowd/escrowd/audit"
	"github.com/escrowd/escrowd/audit/hsmkey"
	"github.com/escrowd/escrowd/internal/secret"
)

// vaultFlags are the flags of the commands that read the audit trail from
// Vault directly.
type vaultFlags struct {
	addr, tokenFile, mount, prefix string
	timeout                        time.Duration
}

func addVaultFlags(c *cobra.Command) *vaultFlags {
	v := &vaultFlags{}
	f := c.Flags()
	f.StringVar(&v.addr, "vault-addr", os.Getenv("VAULT_ADDR"), "Vault address ($VAULT_ADDR)")
	f.StringVar(&v.tokenFile, "vault-token-file", "", "file holding a Vault token (else $VAULT_TOKEN)")
	f.StringVar(&v.mount, "audit-mount", "secret", "KV v2 mount of the audit trail")
	f.StringVar(&v.prefix, "audit-prefix", "escrowd/audit", "folder of the audit trail")
	f.DurationVar(&v.timeout, "timeout", 30*time.Second, "time allowed for the command")
	c.MarkFlagFilename("vault-token-file")
	return v
}

// open reads the token and opens the trail.
func (v *vaultFlags) open() (*audit.Vault, error) {
	tok, err := secret.Load("Vault token", v.tokenFile, "VAULT_TOKEN")
	if err != nil {
		return nil, err
	}
	return audit.NewVault(audit.VaultConfig{Address: v.addr, Token: tok, Mount: v.mount, Prefix: v.prefix})
}

func auditCmd(a *app) *cobra.Command {
	return parent("audit", "Read and verify the audit trail in Vault (reads Vault directly)", auditVerify(a), auditCheckpointCmd(a), auditRead(a), auditAcknowledgeCmd(a))
}

// addChainKeyFlags adds the HSM flags that let verify and checkpoint check
// the chain's MACs: the chain key never leaves the HSM.
func addChainKeyFlags(c *cobra.Command, o *auditOptions) {
	f := c.Flags()
	f.StringVar(&o.module, "module", "/usr/lib/softhsm/libsofthsm2.so", "PKCS#11 module (with --token)")
	f.StringVar(&o.token, "token", "", "HSM token label: check every batch's MAC under the chain key in the HSM")
	f.StringVar(&o.pinFile, "pin-file", "", "file holding the HSM user PIN (else $ESCROWD_HSM_PIN)")
	f.StringVar(&o.kekLabel, "kek-label", "escrowd-kek", "master KEK label")
	c.MarkFlagFilename("module", "so")
	c.MarkFlagFilename("pin-file")
}

// runAudit reads the Vault token and runs verify or checkpoint.
func runAudit(name string, v *vaultFlags, o auditOptions, out io.Writer) error {
	tok, err := secret.Load("Vault token", v.tokenFile, "VAULT_TOKEN")
	if err != nil {
		return err
	}
	o.vault = audit.VaultConfig{Address: v.addr, Token: tok, Mount: v.mount, Prefix: v.prefix}
	o.timeout = v.timeout
	return auditCommand(name, o, out)
}

func auditCheckpointCmd(a *app) *cobra.Command {
	var o auditOptions
	c := &cobra.Command{
		Use:   "checkpoint [--token LABEL --pin-file FILE]",
		Short: "Print the head N:HASH of an intact trail, to keep outside Vault; with the HSM, signed under the chain key",
		Args:  cobra.NoArgs,
	}
	v := addVaultFlags(c)
	addChainKeyFlags(c, &o)
	c.RunE = func(cmd *cobra.Command, _ []string) error {
		return runAudit("audit checkpoint", v, o, a.out)
	}
	return c
}

func auditVerify(a *app) *cobra.Command {
	var o auditOptions
	c := &cobra.Command{
		Use:   "verify [--expect-head N:HASH] [--token LABEL --pin-file FILE]",
		Short: "Walk the whole trail; name every break, forged batch, truncation and intent without an outcome",
		Long: `Walk the whole trail and name every record changed, deleted, moved,
inserted or forged (MACs checked with the HSM when --token is given), a
truncation or rewrite before the head given with --expect-head (from audit
checkpoint), and every intent without an outcome: a state-changing request
that may or may not have taken effect.`,
		Args: cobra.NoArgs,
	}
	v := addVaultFlags(c)
	addChainKeyFlags(c, &o)
	c.Flags().StringVar(&o.expectHead, "expect-head", "", "a head N:HASH[:AT:MAC] from audit checkpoint that the trail must still hold")
	c.RunE = func(cmd *cobra.Command, _ []string) error {
		return runAudit("audit verify", v, o, a.out)
	}
	return c
}

func auditRead(a *app) *cobra.Command {
	var n int
	c := &cobra.Command{
		Use:   "read [-n N]",
		Short: "Print the last N records, one JSON object each",
		Args:  cobra.NoArgs,
	}
	v := addVaultFlags(c)
	c.Flags().IntVarP(&n, "n", "n", 20, "number of records")
	c.RunE = func(cmd *cobra.Command, _ []string) error {
		vault, err := v.open()
		if err != nil {
			return err
		}
		defer vault.Close()
		ctx, cancel := context.WithTimeout(cmd.Context(), v.timeout)
		defer cancel()
		return readTrail(ctx, vault, n, a.out)
	}
	return c
}

func readTrail(ctx context.Context, v *audit.Vault, n int, out io.Writer) error {
	var recs []audit.Chained
	err := v.Walk(ctx, func(_ uint64, b *audit.Batch) error {
		if b != nil {
			recs = append(recs, b.Records...)
			if len(recs) > n {
				recs = recs[len(recs)-n:]
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	enc := json.NewEncoder(out)
	for _, r := range recs {
		if err := enc.Encode(r); err != nil {
			return err
		}
	}
	return nil
}

func auditAcknowledgeCmd(a *app) *cobra.Command {
	var o auditOptions
	c := &cobra.Command{
		Use:   "acknowledge -seq N -ticket TICKET --token LABEL [--pin-file FILE]",
		Short: "Acknowledge a poisoned trail position, so that escrowd's writers go on past it",
		Long: `Record, beside the trail in Vault and under the chain key (so the HSM is
needed), that the operator has looked at position N: it holds something
that is not a batch, or a batch whose MAC does not verify, and escrowd has
stopped writing because of it. The acknowledgement names the ticket of the
incident and is bound to the exact entry found there; escrowd's writers
then chain past the position, after the last good batch, and resume within
one health check. The entry is left as it is: audit verify keeps naming it.
Do this only after keeping a copy of the entry and revoking the token that
wrote it (docs/OPERATIONS.md, "The audit trail truncated or poisoned").`,
		Args: cobra.NoArgs,
	}
	v := addVaultFlags(c)
	addChainKeyFlags(c, &o)
	var seq uint64
	var ticket string
	c.Flags().Uint64Var(&seq, "seq", 0, "the poisoned position, as audit verify and escrowd's health name it")
	c.Flags().StringVar(&ticket, "ticket", "", "the incident's ticket, kept in the acknowledgement")
	c.MarkFlagRequired("seq")
	c.MarkFlagRequired("ticket")
	c.RunE = func(cmd *cobra.Command, _ []string) error {
		if o.token == "" {
			return errors.New("--token is required: an acknowledgement is made with the chain key, in the HSM")
		}
		tok, err := secret.Load("Vault token", v.tokenFile, "VAULT_TOKEN")
		if err != nil {
			return err
		}
		o.vault = audit.VaultConfig{Address: v.addr, Token: tok, Mount: v.mount, Prefix: v.prefix}
		h, err := o.openHSM()
		if err != nil {
			return err
		}
		defer h.Close()
		o.vault.Keyer = hsmkey.Keyer{HSM: h}
		vault, err := audit.NewVault(o.vault)
		if err != nil {
			return err
		}
		defer vault.Close()
		ctx, cancel := context.WithTimeout(cmd.Context(), v.timeout)
		defer cancel()
		ack, err := vault.Acknowledge(ctx, seq, ticket)
		if err != nil {
			return err
		}
		fmt.Fprintf(a.out, "position %d acknowledged under ticket %s at %s (entry sha256 %s; %s)\n", ack.Seq, ack.Ticket,
			ack.At.Format(time.RFC3339), ack.Digest, ack.What)
		fmt.Fprintln(a.out, "escrowd's writers go on past it at their next write; audit verify keeps naming the position")
		return nil
	}
	return c
}
