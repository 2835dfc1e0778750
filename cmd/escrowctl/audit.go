package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/escrowd/escrowd/audit"
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
	return parent("audit", "Read and verify the audit trail in Vault (reads Vault directly)", auditVerify(a), auditRead(a))
}

func auditVerify(a *app) *cobra.Command {
	c := &cobra.Command{
		Use:   "verify",
		Short: "Walk the whole trail; name the first record changed, deleted, moved or inserted",
		Args:  cobra.NoArgs,
	}
	v := addVaultFlags(c)
	c.RunE = func(cmd *cobra.Command, _ []string) error {
		vault, err := v.open()
		if err != nil {
			return err
		}
		defer vault.Close()
		ctx, cancel := context.WithTimeout(cmd.Context(), v.timeout)
		defer cancel()
		return verifyTrail(ctx, vault, a.out)
	}
	return c
}

// verifyTrail walks the trail and says whether it is intact.
func verifyTrail(ctx context.Context, v *audit.Vault, out io.Writer) error {
	p, n, head, err := v.Verify(ctx)
	if err != nil {
		return err
	}
	if p != nil {
		fmt.Fprintf(out, "audit trail BROKEN after %d good records: %s\n", n, p)
		return errTampered
	}
	fmt.Fprintf(out, "audit trail intact: %d records, head %s\n", n, head)
	return nil
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
