package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/spf13/cobra"

	escrowdv1 "github.com/escrowd/escrowd/api/escrowd/v1"
	"github.com/escrowd/escrowd/client"
	"github.com/escrowd/escrowd/escrow/device"
	"github.com/escrowd/escrowd/hsm"
	"github.com/escrowd/escrowd/softhsm"
)

func devCmd(a *app) *cobra.Command {
	return parent("dev", "For trying escrowd out; never for production", devToken(a), devPKICmd(a), devSealEscrow(a))
}

func devToken(a *app) *cobra.Command {
	var dir, token string
	c := &cobra.Command{
		Use:   "token --dir DIR --token LABEL",
		Short: "Create or reuse a SoftHSM token with its master KEK; prints the module path",
		Args:  cobra.NoArgs,
	}
	c.Flags().StringVar(&dir, "dir", "", "folder of the development token")
	c.Flags().StringVar(&token, "token", "", "token label")
	c.MarkFlagDirname("dir")
	c.RunE = func(cmd *cobra.Command, _ []string) error {
		if err := required(cmd, "dir", "token"); err != nil {
			return err
		}
		t, err := softhsm.New(dir, token)
		if err != nil {
			return err
		}
		// A token made before master KEKs were private holds its KEK in
		// clear: say how to get out of it before escrowd refuses it.
		h, err := hsm.Open(t.HSMConfig())
		if errors.Is(err, hsm.ErrKEKPublic) {
			return fmt.Errorf("the development token in %s has a public master KEK (made before KEKs were private): delete %s and the store it served (make run: .run/softhsm and .run/escrowd.db), or migrate it (docs/LIFECYCLE.md)", dir, dir)
		}
		if err != nil {
			return err
		}
		h.Close()
		// The module path, for the caller's -hsm-module.
		fmt.Fprintln(a.out, t.Module)
		return nil
	}
	return c
}

func devPKICmd(a *app) *cobra.Command {
	var dir string
	c := &cobra.Command{
		Use:   "pki --dir DIR",
		Short: "A CA, certificates for the server, sync-backend, alice, bob (support) and carol (security), and a policy for trying things out",
		Args:  cobra.NoArgs,
	}
	c.Flags().StringVar(&dir, "dir", "", "folder of the development PKI")
	c.MarkFlagDirname("dir")
	c.RunE = func(cmd *cobra.Command, _ []string) error {
		if err := required(cmd, "dir"); err != nil {
			return err
		}
		return devPKI(dir, a.out)
	}
	return c
}

func devSealEscrow(a *app) *cobra.Command {
	var group, outFile, gdkOut string
	c := &cobra.Command{
		Use:   "seal-escrow --group ID --out FILE [--gdk-out FILE]",
		Short: "Wrap a fresh group data key to the group's escrow key, as a device would",
		Args:  cobra.NoArgs,
	}
	d := daemonCmd(c, 30*time.Second)
	c.Flags().StringVar(&group, "group", "", "group id")
	c.Flags().StringVar(&outFile, "out", "", "where to write the escrow slot")
	c.Flags().StringVar(&gdkOut, "gdk-out", "", "where to write the group data key (development only)")
	c.RunE = func(cmd *cobra.Command, _ []string) error {
		if err := required(cmd, "group", "out"); err != nil {
			return err
		}
		return d.call(cmd, func(ctx context.Context, cl *client.Client) error {
			r, err := cl.GetEscrowKey(ctx, &escrowdv1.GetEscrowKeyRequest{GroupId: group})
			if err != nil {
				return err
			}
			k := r.GetEscrowKey()
			gdk, err := device.NewGDK()
			if err != nil {
				return err
			}
			defer clear(gdk)
			slot, err := device.SealEscrow(k.GetPublicKey(), device.To{Group: group, GDKVersion: 1, KeyVersion: k.GetVersion()}, k.GetSuite(), gdk)
			if err != nil {
				return err
			}
			if err := os.WriteFile(outFile, slot, 0o600); err != nil {
				return err
			}
			if gdkOut != "" {
				if err := os.WriteFile(gdkOut, gdk, 0o600); err != nil {
					return err
				}
			}
			fmt.Fprintf(a.out, "wrote an escrow slot (escrow key v%d) to %s\n", k.GetVersion(), outFile)
			return nil
		})
	}
	return c
}
