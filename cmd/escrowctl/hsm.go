package main

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

	escrowdv1 "github.com/escrowd/escrowd/api/escrowd/v1"
	"github.com/escrowd/escrowd/client"
	"github.com/escrowd/escrowd/hsm"
	"github.com/escrowd/escrowd/internal/secret"
)

func hsmCmd(a *app) *cobra.Command {
	return parent("hsm", "The HSM: the master KEK ceremony (on the token), objects and old KEKs (through escrowd)",
		hsmInit(a), hsmObjects(a), hsmDestroyKEK(a))
}

func hsmInit(a *app) *cobra.Command {
	var module, token, soPINFile, pinFile, kekLabel string
	var kekVersion uint32
	c := &cobra.Command{
		Use:   "init --module PATH --token LABEL --so-pin-file FILE --pin-file FILE [--kek-label L] [--kek-version N]",
		Short: "Create master KEK version N on the token (the HSM ceremony; runs against the token directly)",
		Long: `Create master KEK version N (default 1; N+1 to start a rotation): one private,
trusted KEK per key class. It needs the SO PIN and the user PIN, from files or
$ESCROWD_SO_PIN and $ESCROWD_HSM_PIN, never from flags.`,
		Args: cobra.NoArgs,
	}
	c.Flags().StringVar(&module, "module", "/usr/lib/softhsm/libsofthsm2.so", "PKCS#11 module")
	c.Flags().StringVar(&token, "token", "", "HSM token label")
	c.Flags().StringVar(&soPINFile, "so-pin-file", "", "file holding the security officer PIN (else $ESCROWD_SO_PIN)")
	c.Flags().StringVar(&pinFile, "pin-file", "", "file holding the HSM user PIN (else $ESCROWD_HSM_PIN)")
	c.Flags().StringVar(&kekLabel, "kek-label", "escrowd-kek", "master KEK label")
	c.Flags().Uint32Var(&kekVersion, "kek-version", 0, "master KEK version (default 1)")
	c.MarkFlagFilename("module", "so")
	c.RunE = func(cmd *cobra.Command, _ []string) error {
		if err := required(cmd, "module", "token"); err != nil {
			return err
		}
		so, err := secret.Load("SO PIN", soPINFile, "ESCROWD_SO_PIN")
		if err != nil {
			return err
		}
		// The user PIN too: the SO makes the trusted KEK, the user copies
		// it into a private object, which the token encrypts at rest.
		userPIN, err := secret.Load("HSM user PIN", pinFile, "ESCROWD_HSM_PIN")
		if err != nil {
			return err
		}
		v := kekVersion
		if v == 0 {
			v = hsm.CurrentKEKVersion
		}
		rep, err := hsm.InitKEKVersion(module, token, so, userPIN, kekLabel, v)
		if err != nil {
			return err
		}
		fmt.Fprintf(a.out, "master KEK version %d created on token %q: one private, trusted KEK per key class (%s); unwrap templates enforced\n",
			v, token, strings.Join(rep.Labels, ", "))
		if !rep.AllowedMechanisms {
			fmt.Fprintln(a.out, "WARNING: the module refused CKA_ALLOWED_MECHANISMS: the KEKs and the keys unwrapped under them are not limited to one mechanism each (docs/HSM.md)")
		}
		if v > 1 {
			fmt.Fprintf(a.out, "new keys stay under the current KEK until: escrowctl jobs start --kind kek-rotation --kek-version %d\n", v)
		}
		return nil
	}
	return c
}

func hsmObjects(a *app) *cobra.Command {
	c := &cobra.Command{
		Use:   "objects",
		Short: "Objects on the daemon's token (SecurityService.ListHSMObjects)",
		Long: `The objects on the daemon's token, to check that their number does not grow
with the fleet and that every key object is sensitive.`,
		Args: cobra.NoArgs,
	}
	d := daemonCmd(c, 30*time.Second)
	o := addOutput(c)
	c.RunE = func(cmd *cobra.Command, _ []string) error {
		if err := o.check(); err != nil {
			return err
		}
		return d.call(cmd, func(ctx context.Context, cl *client.Client) error {
			r, err := cl.ListHSMObjects(ctx, &escrowdv1.ListHSMObjectsRequest{})
			if err != nil {
				return err
			}
			if o.json() {
				return emitJSON(a.out, r, nil)
			}
			fmt.Fprintf(a.out, "%-32s %-12s %-8s %s\n", "LABEL", "CLASS", "TYPE", "ATTRIBUTES")
			for _, ob := range r.GetObjects() {
				var attrs []string
				for _, f := range []struct {
					on   bool
					name string
				}{{ob.GetToken(), "token"}, {ob.GetPrivate(), "private"}, {ob.GetSensitive(), "sensitive"}, {ob.GetExtractable(), "extractable"},
					{ob.GetWrapWithTrusted(), "wrap-with-trusted"}, {ob.GetTrusted(), "trusted"}} {
					if f.on {
						attrs = append(attrs, f.name)
					}
				}
				fmt.Fprintf(a.out, "%-32s %-12s %-8s %s\n", ob.GetLabel(), ob.GetClass(), ob.GetKeyType(), strings.Join(attrs, ","))
			}
			fmt.Fprintf(a.out, "%d objects\n", len(r.GetObjects()))
			return nil
		})
	}
	return c
}

func hsmDestroyKEK(a *app) *cobra.Command {
	var version uint32
	c := &cobra.Command{
		Use:   "destroy-kek --kek-version N",
		Short: "Destroy an old master KEK once no key needs it (SecurityService.DestroyKEK)",
		Args:  cobra.NoArgs,
	}
	d := daemonCmd(c, 30*time.Second)
	o := addOutput(c)
	c.Flags().Uint32Var(&version, "kek-version", 0, "master KEK version to destroy")
	c.RunE = func(cmd *cobra.Command, _ []string) error {
		if err := firstErr(o.check(), required(cmd, "kek-version")); err != nil {
			return err
		}
		return d.call(cmd, func(ctx context.Context, cl *client.Client) error {
			var id string
			r, err := cl.DestroyKEK(ctx, &escrowdv1.DestroyKEKRequest{Version: version}, client.RequestID(&id))
			if err != nil {
				return err
			}
			if o.json() {
				return emitJSON(a.out, r, map[string]any{"request_id": id})
			}
			fmt.Fprintf(a.out, "master KEK version %d destroyed (request %s)\n", version, id)
			return nil
		})
	}
	return c
}
