package main

import (
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/escrowd/escrowd/daemon"
	"github.com/escrowd/escrowd/policy"
)

func policyCmd(a *app) *cobra.Command {
	return parent("policy", "Policy files", policyCheck(a))
}

func policyCheck(a *app) *cobra.Command {
	var file string
	c := &cobra.Command{
		Use:   "check FILE",
		Short: "Validate a policy file offline; errors name file and line",
		Args:  cobra.MaximumNArgs(1),
	}
	c.Flags().StringVar(&file, "policy", "", "policy file (or the argument)")
	c.MarkFlagFilename("policy", "yaml", "yml")
	c.ValidArgsFunction = func(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
		return []string{"yaml", "yml"}, cobra.ShellCompDirectiveFilterFileExt
	}
	c.RunE = func(cmd *cobra.Command, args []string) error {
		if file == "" && len(args) == 1 {
			file = args[0]
		}
		if file == "" {
			return usageError{"policy check: a policy file is required"}
		}
		b, err := os.ReadFile(file)
		if err != nil {
			return err
		}
		if _, err := policy.Parse(file, b, daemon.Operations()); err != nil {
			return err
		}
		fmt.Fprintf(a.out, "%s: ok\n", file)
		return nil
	}
	return c
}
