package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	escrowdv1 "github.com/escrowd/escrowd/api/escrowd/v1"
	"github.com/escrowd/escrowd/client"
)

func groupCmd(a *app) *cobra.Command {
	return parent("group", "Provision groups, read their keys, rotate, retire and destroy key versions",
		groupProvision(a), groupShow(a), groupKey(a), groupRotate(a), groupRetire(a), groupDestroy(a),
		groupRewrapEscrow(a), groupRotateGDK(a))
}

func groupProvision(a *app) *cobra.Command {
	var group, suite string
	c := &cobra.Command{Use: "provision --group ID [--suite S]", Short: "Generate a group's escrow and unlock keys in the HSM (SyncService.ProvisionGroup)", Args: cobra.NoArgs}
	d := daemonCmd(c, 30*time.Second)
	o := addOutput(c)
	c.Flags().StringVar(&group, "group", "", "group id")
	c.Flags().StringVar(&suite, "suite", "", "escrow key suite: ecdh-p256, rsa-oaep-sha1, rsa-oaep-sha256 (default: the daemon's)")
	c.RegisterFlagCompletionFunc("suite", cobra.FixedCompletions(suites, cobra.ShellCompDirectiveNoFileComp))
	c.RunE = func(cmd *cobra.Command, _ []string) error {
		if err := firstErr(o.check(), required(cmd, "group")); err != nil {
			return err
		}
		return d.call(cmd, func(ctx context.Context, cl *client.Client) error {
			var id string
			r, err := cl.ProvisionGroup(ctx, &escrowdv1.ProvisionGroupRequest{GroupId: group, Suite: suite}, client.RequestID(&id))
			if err != nil {
				return err
			}
			if o.json() {
				return emitJSON(a.out, r, map[string]any{"request_id": id})
			}
			k := r.GetEscrowKey()
			fmt.Fprintf(a.out, "group %s provisioned: escrow key v%d (%s), request %s\n", k.GetGroupId(), k.GetVersion(), k.GetSuite(), id)
			fmt.Fprintf(a.out, "next: seal the group's data key to it (escrowctl group key --group %s), or try it out with escrowctl dev seal-escrow\n", k.GetGroupId())
			return nil
		})
	}
	return c
}

var suites = []string{"ecdh-p256", "rsa-oaep-sha1", "rsa-oaep-sha256"}

func groupShow(a *app) *cobra.Command {
	var group string
	c := &cobra.Command{Use: "show --group ID", Short: "A group's key versions (SecurityService.GetGroup)", Args: cobra.NoArgs}
	d := daemonCmd(c, 30*time.Second)
	o := addOutput(c)
	c.Flags().StringVar(&group, "group", "", "group id")
	c.RunE = func(cmd *cobra.Command, _ []string) error {
		if err := firstErr(o.check(), required(cmd, "group")); err != nil {
			return err
		}
		return d.call(cmd, func(ctx context.Context, cl *client.Client) error {
			r, err := cl.GetGroup(ctx, &escrowdv1.GetGroupRequest{GroupId: group})
			if err != nil {
				return err
			}
			if o.json() {
				return emitJSON(a.out, r, nil)
			}
			fmt.Fprintf(a.out, "group %s, created %s\n", r.GetGroupId(), unixTime(r.GetCreatedUnix()))
			for _, k := range r.GetEscrowKeys() {
				fmt.Fprintf(a.out, "  escrow v%d  %-16s kek v%d  %s\n", k.GetVersion(), k.GetSuite(), k.GetKekVersion(), unixTime(k.GetCreatedUnix()))
			}
			for _, k := range r.GetUnlockKeys() {
				fmt.Fprintf(a.out, "  unlock v%d  %-16s kek v%d  %s\n", k.GetVersion(), k.GetSuite(), k.GetKekVersion(), unixTime(k.GetCreatedUnix()))
			}
			return nil
		})
	}
	return c
}

func groupKey(a *app) *cobra.Command {
	var group, format string
	c := &cobra.Command{
		Use:   "key --group ID [--format pem|der|jwk]",
		Short: "The group's newest escrow public key (SyncService.GetEscrowKey)",
		Long: `The group's newest escrow public key.

pem (default): "# " lines naming group, key version and suite, then a plain
PUBLIC KEY block (PKIX), as OpenSSL reads. der: the PKIX DER alone on stdout,
the "# " lines on stderr. jwk: one JSON object, kid GROUP/VERSION, use enc,
alg RSA-OAEP (rsa-oaep-sha1) or RSA-OAEP-256 (rsa-oaep-sha256), none for
ecdh-p256 (its KDF is not JOSE's), and "escrowd_suite", the suite: for an EC
key no standard member says how to seal to it.`,
		Args: cobra.NoArgs,
	}
	d := daemonCmd(c, 30*time.Second)
	c.Flags().StringVar(&group, "group", "", "group id")
	c.Flags().StringVar(&format, "format", string(formatPEM), "output: pem, der or jwk")
	c.RegisterFlagCompletionFunc("format", cobra.FixedCompletions([]string{"pem", "der", "jwk"}, cobra.ShellCompDirectiveNoFileComp))
	c.RunE = func(cmd *cobra.Command, _ []string) error {
		f, err := parseKeyFormat(format)
		if err != nil {
			return err
		}
		if err := required(cmd, "group"); err != nil {
			return err
		}
		return d.call(cmd, func(ctx context.Context, cl *client.Client) error {
			r, err := cl.GetEscrowKey(ctx, &escrowdv1.GetEscrowKeyRequest{GroupId: group})
			if err != nil {
				return err
			}
			k := r.GetEscrowKey()
			g := k.GetGroupId()
			if g == "" {
				g = group
			}
			return writeEscrowKey(a.out, a.errOut, escrowPublicKey{Group: g, Version: k.GetVersion(), Suite: k.GetSuite(), DER: k.GetPublicKey()}, f)
		})
	}
	return c
}

// printGroup renders a group's versions after a change.
func printGroup(out io.Writer, g *escrowdv1.GetGroupResponse) {
	fmt.Fprintf(out, "group %s: min escrow version %d, min unlock version %d\n", g.GetGroupId(), g.GetMinEscrowVersion(), g.GetMinUnlockVersion())
	for _, set := range []struct {
		name string
		ks   []*escrowdv1.KeyVersion
	}{{"escrow", g.GetEscrowKeys()}, {"unlock", g.GetUnlockKeys()}} {
		for _, k := range set.ks {
			state := "live"
			if k.GetDestroyedUnix() != 0 {
				state = "destroyed " + unixTime(k.GetDestroyedUnix())
			}
			fmt.Fprintf(out, "  %s v%d  %-16s kek v%d  %s\n", set.name, k.GetVersion(), k.GetSuite(), k.GetKekVersion(), state)
		}
	}
}

// groupChange is the shape of rotate, retire and destroy: one call that
// returns the group.
func groupChange(a *app, c *cobra.Command, need []string, do func(ctx context.Context, cl *client.Client, id *string) (*escrowdv1.GetGroupResponse, error)) {
	d := daemonCmd(c, 30*time.Second)
	o := addOutput(c)
	c.Args = cobra.NoArgs
	c.RunE = func(cmd *cobra.Command, _ []string) error {
		if err := firstErr(o.check(), required(cmd, need...)); err != nil {
			return err
		}
		return d.call(cmd, func(ctx context.Context, cl *client.Client) error {
			var id string
			g, err := do(ctx, cl, &id)
			if err != nil {
				return err
			}
			if o.json() {
				return emitJSON(a.out, g, map[string]any{"request_id": id})
			}
			printGroup(a.out, g)
			return nil
		})
	}
}

func groupRotate(a *app) *cobra.Command {
	var group string
	var escrow, unlock bool
	c := &cobra.Command{Use: "rotate --group ID [--escrow] [--unlock]", Short: "Add a new key version (default: escrow and unlock) (SecurityService.RotateGroupKeys)"}
	c.Flags().StringVar(&group, "group", "", "group id")
	c.Flags().BoolVar(&escrow, "escrow", false, "rotate the escrow key")
	c.Flags().BoolVar(&unlock, "unlock", false, "rotate the unlock key")
	groupChange(a, c, []string{"group"}, func(ctx context.Context, cl *client.Client, id *string) (*escrowdv1.GetGroupResponse, error) {
		e, u := escrow, unlock
		if !e && !u {
			e, u = true, true
		}
		r, err := cl.RotateGroupKeys(ctx, &escrowdv1.RotateGroupKeysRequest{GroupId: group, Escrow: e, Unlock: u}, client.RequestID(id))
		return r.GetGroup(), err
	})
	return c
}

func groupRetire(a *app) *cobra.Command {
	var group string
	var minEscrow, minUnlock uint32
	c := &cobra.Command{Use: "retire --group ID [--min-escrow N] [--min-unlock N]", Short: "Set minimum decryption versions (SecurityService.SetMinDecryptionVersion)"}
	c.Flags().StringVar(&group, "group", "", "group id")
	c.Flags().Uint32Var(&minEscrow, "min-escrow", 0, "minimum escrow key version (0: unchanged)")
	c.Flags().Uint32Var(&minUnlock, "min-unlock", 0, "minimum unlock key version (0: unchanged)")
	groupChange(a, c, []string{"group"}, func(ctx context.Context, cl *client.Client, id *string) (*escrowdv1.GetGroupResponse, error) {
		r, err := cl.SetMinDecryptionVersion(ctx, &escrowdv1.SetMinDecryptionVersionRequest{GroupId: group, MinEscrowVersion: minEscrow, MinUnlockVersion: minUnlock}, client.RequestID(id))
		return r.GetGroup(), err
	})
	return c
}

func groupDestroy(a *app) *cobra.Command {
	var group, kind string
	var version uint32
	c := &cobra.Command{Use: "destroy --group ID --kind escrow|unlock --version N", Short: "Crypto-shred a retired key version (SecurityService.DestroyKeyVersion)"}
	c.Flags().StringVar(&group, "group", "", "group id")
	c.Flags().StringVar(&kind, "kind", "", "key kind: escrow or unlock")
	c.Flags().Uint32Var(&version, "version", 0, "key version")
	c.RegisterFlagCompletionFunc("kind", cobra.FixedCompletions([]string{"escrow", "unlock"}, cobra.ShellCompDirectiveNoFileComp))
	groupChange(a, c, []string{"group", "kind", "version"}, func(ctx context.Context, cl *client.Client, id *string) (*escrowdv1.GetGroupResponse, error) {
		r, err := cl.DestroyKeyVersion(ctx, &escrowdv1.DestroyKeyVersionRequest{GroupId: group, Kind: kind, Version: version}, client.RequestID(id))
		return r.GetGroup(), err
	})
	return c
}

func groupRewrapEscrow(a *app) *cobra.Command {
	var group, slotFile, outFile string
	c := &cobra.Command{Use: "rewrap-escrow --group ID --escrow-slot FILE --out FILE", Short: "Seal an escrow slot to the group's newest escrow key (SyncService.RewrapToEscrow)", Args: cobra.NoArgs}
	d := daemonCmd(c, 30*time.Second)
	o := addOutput(c)
	c.Flags().StringVar(&group, "group", "", "group id")
	c.Flags().StringVar(&slotFile, "escrow-slot", "", "file holding the group's escrow slot")
	c.Flags().StringVar(&outFile, "out", "", "where to write the new escrow slot")
	c.MarkFlagFilename("escrow-slot", "json")
	c.RunE = func(cmd *cobra.Command, _ []string) error {
		if err := firstErr(o.check(), required(cmd, "group", "escrow-slot", "out")); err != nil {
			return err
		}
		slot, err := os.ReadFile(slotFile)
		if err != nil {
			return err
		}
		return d.call(cmd, func(ctx context.Context, cl *client.Client) error {
			var id string
			r, err := cl.RewrapToEscrow(ctx, &escrowdv1.RewrapToEscrowRequest{GroupId: group, EscrowSlot: slot}, client.RequestID(&id))
			if err != nil {
				return err
			}
			if err := os.WriteFile(outFile, r.GetSlot(), 0o600); err != nil {
				return err
			}
			if o.json() {
				return writeJSON(a.out, map[string]any{"escrow_key_version": r.GetEscrowKeyVersion(), "out": outFile, "request_id": id})
			}
			fmt.Fprintf(a.out, "wrote an escrow slot sealed to the newest escrow key (v%d) to %s (request %s)\n", r.GetEscrowKeyVersion(), outFile, id)
			return nil
		})
	}
	return c
}

func groupRotateGDK(a *app) *cobra.Command {
	var group, slotFile, outDir string
	var oldVersion, perUser uint32
	var recipients, users []string
	c := &cobra.Command{
		Use:   "rotate-gdk --group ID --escrow-slot FILE --old-gdk-version N --out DIR [--recipient SPEC]... [--unlock-user U]...",
		Short: "Make a new group data key in the HSM when a member leaves (SyncService.RotateGroupKey)",
		Long: `Make a new group data key in the HSM, wrapped to each --recipient, to the
group's newest escrow key and to a new unlock-code epoch per --unlock-user, with
the old key wrapped under the new one as a chain slot. Neither key leaves the
HSM in clear. The slots go to DIR: escrow.json, chain.json, recipient-N.json
(in --recipient order) and unlock-USER-EPOCH-N.json.

` + recipientHelp,
		Args: cobra.NoArgs,
	}
	d := daemonCmd(c, 60*time.Second)
	o := addOutput(c)
	c.Flags().StringVar(&group, "group", "", "group id")
	c.Flags().StringVar(&slotFile, "escrow-slot", "", "file holding an escrow slot of the current group data key")
	c.Flags().Uint32Var(&oldVersion, "old-gdk-version", 0, "version of the current group data key (1 for a group's first)")
	c.Flags().StringArrayVar(&recipients, "recipient", nil, "a member or device that keeps access (repeat)")
	c.Flags().StringArrayVar(&users, "unlock-user", nil, "a user who gets a new epoch of unlock codes (repeat)")
	c.Flags().Uint32Var(&perUser, "count", 0, "codes per user (default: the daemon's, 5)")
	c.Flags().StringVar(&outDir, "out", "", "folder for the new slots")
	c.MarkFlagFilename("escrow-slot", "json")
	c.MarkFlagDirname("out")
	c.RunE = func(cmd *cobra.Command, _ []string) error {
		if err := firstErr(o.check(), required(cmd, "group", "escrow-slot", "old-gdk-version", "out")); err != nil {
			return err
		}
		slot, err := os.ReadFile(slotFile)
		if err != nil {
			return err
		}
		req := &escrowdv1.RotateGroupKeyRequest{GroupId: group, EscrowSlot: slot, OldGdkVersion: oldVersion, UnlockUserIds: users, CodesPerUser: perUser}
		for _, spec := range recipients {
			r, err := parseRecipient(spec)
			if err != nil {
				return err
			}
			req.Recipients = append(req.Recipients, r)
		}
		return d.call(cmd, func(ctx context.Context, cl *client.Client) error {
			var id string
			r, err := cl.RotateGroupKey(ctx, req, client.RequestID(&id))
			if err != nil {
				return err
			}
			if err := os.MkdirAll(outDir, 0o700); err != nil {
				return err
			}
			files := map[string][]byte{"escrow.json": r.GetEscrowSlot(), "chain.json": r.GetChainSlot()}
			for i, s := range r.GetRecipientSlots() {
				files[fmt.Sprintf("recipient-%d.json", i)] = s
			}
			for _, u := range r.GetUnlock() {
				for i, s := range u.GetSlots() {
					files[fmt.Sprintf("unlock-%s-%d-%d.json", u.GetUserId(), u.GetEpoch(), i)] = s
				}
			}
			for name, b := range files {
				if err := os.WriteFile(filepath.Join(outDir, name), b, 0o600); err != nil {
					return err
				}
			}
			if o.json() {
				return emitJSON(a.out, r, map[string]any{"request_id": id, "out": outDir})
			}
			fmt.Fprintf(a.out, "group %s: data key v%d (escrow key v%d), %d recipient slots, %d users with new codes; slots in %s (request %s)\n",
				group, r.GetGdkVersion(), r.GetEscrowKeyVersion(), len(r.GetRecipientSlots()), len(r.GetUnlock()), outDir, id)
			fmt.Fprintf(a.out, "commitment %x: hand it to devices over their authenticated channel\n", r.GetGdkCommitment())
			return nil
		})
	}
	return c
}

func firstErr(errs ...error) error {
	for _, e := range errs {
		if e != nil {
			return e
		}
	}
	return nil
}
