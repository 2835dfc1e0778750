package main

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

	escrowdv1 "github.com/escrowd/escrowd/api/escrowd/v1"
	"github.com/escrowd/escrowd/client"
)

func jobsCmd(a *app) *cobra.Command {
	list := jobsList(a, "list")
	// `escrowctl jobs` alone lists, as `jobs list` does.
	c := jobsList(a, "jobs")
	c.Short = "Jobs over every group: list (the default), start, cancel"
	c.Use = "jobs [--watch]"
	c.AddCommand(list, jobsStart(a), jobsCancel(a))
	return c
}

func jobsList(a *app, name string) *cobra.Command {
	var watch bool
	c := &cobra.Command{
		Use:   name + " [--watch]",
		Short: "Jobs with a progress bar and an estimate (SecurityService.ListJobs)",
		Long: `Every job with its pass, a progress bar of the pass, the count of groups done,
changed and left, and an estimate of the time left at the current owner's
rate. --watch refreshes every second until every job has ended; with -o json it
prints one JSON document per refresh.`,
		Args: cobra.NoArgs,
	}
	d := daemonCmd(c, 30*time.Second)
	o := addOutput(c)
	c.Flags().BoolVar(&watch, "watch", false, "refresh until every job has ended")
	c.RunE = func(cmd *cobra.Command, _ []string) error {
		if err := o.check(); err != nil {
			return err
		}
		if watch && !cmd.Flags().Changed("timeout") {
			d.timeout = 24 * time.Hour
		}
		return d.call(cmd, func(ctx context.Context, cl *client.Client) error {
			for {
				r, err := cl.ListJobs(ctx, &escrowdv1.ListJobsRequest{})
				if err != nil {
					return err
				}
				running := false
				for _, j := range r.GetJobs() {
					running = running || j.GetState() == "running"
				}
				if o.json() {
					if err := emitJSONLine(a.out, r, nil); err != nil {
						return err
					}
				} else {
					for _, j := range r.GetJobs() {
						fmt.Fprintln(a.out, jobLine(j, time.Now()))
					}
					if len(r.GetJobs()) == 0 {
						fmt.Fprintln(a.out, "no jobs")
					}
				}
				if !watch || !running {
					return nil
				}
				select {
				case <-ctx.Done():
					return ctx.Err()
				case <-time.After(time.Second):
				}
				if !o.json() {
					fmt.Fprintln(a.out)
				}
			}
		})
	}
	return c
}

func jobsStart(a *app) *cobra.Command {
	var kind string
	var kekVersion uint32
	var escrow, unlock bool
	c := &cobra.Command{
		Use:   "start --kind kek-rotation --kek-version N | --kind group-rotation [--escrow] [--unlock]",
		Short: "Start a job over every group (SecurityService.StartJob)",
		Long: `Start a job over every group: kek-rotation re-wraps every stored key under
master KEK version N (made first with escrowctl hsm init --kek-version N);
group-rotation adds a new escrow and/or unlock key version to every group
(default both). One replica runs it; it survives restarts. Watch it with
escrowctl jobs --watch.`,
		Args: cobra.NoArgs,
	}
	d := daemonCmd(c, 30*time.Second)
	o := addOutput(c)
	c.Flags().StringVar(&kind, "kind", "", "kek-rotation or group-rotation")
	c.Flags().Uint32Var(&kekVersion, "kek-version", 0, "kek-rotation: the master KEK version to move to")
	c.Flags().BoolVar(&escrow, "escrow", false, "group-rotation: rotate escrow keys")
	c.Flags().BoolVar(&unlock, "unlock", false, "group-rotation: rotate unlock keys")
	c.RegisterFlagCompletionFunc("kind", cobra.FixedCompletions([]string{"kek-rotation", "group-rotation"}, cobra.ShellCompDirectiveNoFileComp))
	c.RunE = func(cmd *cobra.Command, _ []string) error {
		if err := firstErr(o.check(), required(cmd, "kind")); err != nil {
			return err
		}
		params := map[string]string{}
		switch kind {
		case "kek-rotation":
			if err := required(cmd, "kek-version"); err != nil {
				return err
			}
			params["to"] = fmt.Sprint(kekVersion)
		case "group-rotation":
			e, u := escrow, unlock
			if !e && !u {
				e, u = true, true
			}
			params["escrow"], params["unlock"] = fmt.Sprint(e), fmt.Sprint(u)
		}
		return d.call(cmd, func(ctx context.Context, cl *client.Client) error {
			var id string
			r, err := cl.StartJob(ctx, &escrowdv1.StartJobRequest{Kind: kind, Params: params}, client.RequestID(&id))
			if err != nil {
				return err
			}
			if o.json() {
				return emitJSON(a.out, r, map[string]any{"request_id": id})
			}
			fmt.Fprintf(a.out, "job %s started (%d groups); follow it with escrowctl jobs --watch\n", r.GetJob().GetId(), r.GetJob().GetTotal())
			return nil
		})
	}
	return c
}

func jobsCancel(a *app) *cobra.Command {
	var id string
	c := &cobra.Command{Use: "cancel --id ID", Short: "Stop a running job at its next checkpoint (SecurityService.CancelJob)", Args: cobra.NoArgs}
	d := daemonCmd(c, 30*time.Second)
	o := addOutput(c)
	c.Flags().StringVar(&id, "id", "", "job id, as escrowctl jobs lists it")
	c.RunE = func(cmd *cobra.Command, _ []string) error {
		if err := firstErr(o.check(), required(cmd, "id")); err != nil {
			return err
		}
		return d.call(cmd, func(ctx context.Context, cl *client.Client) error {
			var rid string
			r, err := cl.CancelJob(ctx, &escrowdv1.CancelJobRequest{Id: id}, client.RequestID(&rid))
			if err != nil {
				return err
			}
			if o.json() {
				return emitJSON(a.out, r, map[string]any{"request_id": rid})
			}
			fmt.Fprintf(a.out, "job %s %s\n", r.GetJob().GetId(), r.GetJob().GetState())
			return nil
		})
	}
	return c
}

// jobLine renders a job: id, kind, state, a progress bar of the current
// pass and an estimate of the time left at the current owner's rate. It
// is one plain line, so that it reads the same in a terminal, a pipe and
// a log; a progress-bar library would redraw in place with escape codes.
func jobLine(j *escrowdv1.Job, now time.Time) string {
	const width = 30
	frac := 0.0
	if j.GetTotal() > 0 {
		frac = min(1, float64(j.GetDone())/float64(j.GetTotal()))
	}
	if j.GetState() == "done" {
		frac = 1
	}
	n := int(frac * width)
	bar := strings.Repeat("#", n) + strings.Repeat(".", width-n)
	eta := "-"
	if j.GetState() == "running" && j.GetRunStartedUnix() > 0 {
		elapsed := now.Sub(time.Unix(j.GetRunStartedUnix(), 0)).Seconds()
		did := j.GetDone() - j.GetRunDone()
		if did > 0 && elapsed > 0 {
			left := float64(j.GetTotal()-j.GetDone()) / (float64(did) / elapsed)
			eta = (time.Duration(max(0, left)) * time.Second).String()
		}
	}
	line := fmt.Sprintf("%s  %-14s %-8s pass %d [%s] %5.1f%% %d/%d changed %d  eta %s",
		j.GetId(), j.GetKind(), j.GetState(), j.GetPass(), bar, 100*frac, j.GetDone(), j.GetTotal(), j.GetChanged(), eta)
	if j.GetOwner() != "" && j.GetState() == "running" {
		line += "  on " + j.GetOwner()
	}
	if j.GetError() != "" {
		line += "\n    error: " + j.GetError()
	}
	return line
}
