package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	escrowdv1 "github.com/escrowd/escrowd/api/escrowd/v1"
	"github.com/escrowd/escrowd/client"
)

// eventsFollowEvery is how often `events -follow` asks for new events once
// it has caught up.
const eventsFollowEvery = time.Second

// eventLister is the call events makes.
type eventLister interface {
	ListEvents(ctx context.Context, req *escrowdv1.ListEventsRequest, opts ...client.CallOption) (*escrowdv1.ListEventsResponse, error)
}

func eventsCmd(a *app) *cobra.Command {
	var after uint64
	var limit uint32
	var follow bool
	c := &cobra.Command{
		Use:   "events [--after N] [--limit N] [--follow]",
		Short: "The event feed, as the sync backend reads it (SyncService.ListEvents)",
		Long: `The event feed: one line per event after sequence N (default 0: from the
oldest kept) until caught up; the cursor to go on from goes to stderr.
--follow keeps asking every second until interrupted. With -o json, one JSON
object per event (JSON Lines).`,
		Args:      cobra.MatchAll(cobra.MaximumNArgs(1), cobra.OnlyValidArgs),
		ValidArgs: []string{"list"},
	}
	d := daemonCmd(c, 30*time.Second)
	o := addOutput(c)
	c.Flags().Uint64Var(&after, "after", 0, "events after this sequence number (0: from the oldest kept)")
	c.Flags().Uint32Var(&limit, "limit", 0, "events per request (default: the daemon's, 100; at most 1000)")
	c.Flags().BoolVar(&follow, "follow", false, "keep asking for new events until interrupted")
	c.RunE = func(cmd *cobra.Command, _ []string) error {
		if err := o.check(); err != nil {
			return err
		}
		timeout := d.timeout
		if follow {
			// No overall deadline: each request has its own, until ^C.
			d.timeout = 100 * 365 * 24 * time.Hour
		}
		ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
		defer stop()
		cmd.SetContext(ctx)
		return d.call(cmd, func(ctx context.Context, cl *client.Client) error {
			return listEvents(ctx, cl, after, limit, follow, o.json(), timeout, a.out, a.errOut)
		})
	}
	return c
}

// listEvents prints every event after after, one line each, page by page
// until it has caught up; with follow it then keeps asking until ctx ends.
// Each call gets its own timeout. The cursor to go on from, and any
// events pruned before they could be read, go to info.
func listEvents(ctx context.Context, c eventLister, after uint64, limit uint32, follow, asJSON bool, timeout time.Duration, out, info io.Writer) error {
	for {
		cctx, cancel := context.WithTimeout(ctx, timeout)
		r, err := c.ListEvents(cctx, &escrowdv1.ListEventsRequest{After: after, Limit: limit})
		cancel()
		if err != nil {
			if follow && ctx.Err() != nil {
				return nil
			}
			return err
		}
		if m := r.GetMissed(); m > 0 {
			fmt.Fprintf(info, "warning: %d events after %d were pruned before they could be read\n", m, after)
		}
		for _, e := range r.GetEvents() {
			if asJSON {
				if err := emitJSONLine(out, e, nil); err != nil {
					return err
				}
				continue
			}
			fmt.Fprintln(out, eventLine(e))
		}
		after = r.GetNext()
		if after < r.GetLast() {
			continue
		}
		if !follow {
			fmt.Fprintf(info, "cursor %d: `escrowctl events -after %d` goes on from here\n", after, after)
			return nil
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(eventsFollowEvery):
		}
	}
}

// eventLine renders an event on one line: sequence, time, kind, group and
// user, then what its kind says, who did it and the request.
func eventLine(e *escrowdv1.Event) string {
	f := []string{fmt.Sprint(e.GetSequence()), time.Unix(e.GetTimeUnix(), 0).UTC().Format(time.RFC3339), fmt.Sprintf("%-15s", e.GetKind()),
		"group " + e.GetGroupId()}
	add := func(format string, args ...any) { f = append(f, fmt.Sprintf(format, args...)) }
	if e.GetUserId() != "" {
		add("user %s", e.GetUserId())
	}
	switch e.GetKind() {
	case "code_revealed":
		add("epoch %d index %d (unlock key v%d)", e.GetEpoch(), e.GetIndex(), e.GetUnlockKeyVersion())
	case "epoch_issued":
		add("epoch %d: %d codes (unlock key v%d)", e.GetEpoch(), e.GetCodes(), e.GetUnlockKeyVersion())
		if e.GetGdkVersion() != 0 {
			add("for GDK v%d", e.GetGdkVersion())
		}
	case "gdk_rotated":
		add("GDK v%d -> v%d", e.GetOldGdkVersion(), e.GetGdkVersion())
	case "key_rotated":
		if e.GetEscrowKeyVersion() != 0 {
			add("escrow key v%d", e.GetEscrowKeyVersion())
		}
		if e.GetUnlockKeyVersion() != 0 {
			add("unlock key v%d", e.GetUnlockKeyVersion())
		}
	case "reveal_approved":
		add("reveal %s of %s", e.GetRevealId(), who(e.GetRequesterName(), e.GetRequester()))
	}
	if e.GetTicket() != "" {
		add("ticket %s", e.GetTicket())
	}
	if e.GetCaller() != "" {
		add("by %s", who(e.GetCallerName(), e.GetCaller()))
	}
	if e.GetApprover() != "" || e.GetApproverName() != "" {
		add("approved by %s", who(e.GetApproverName(), e.GetApprover()))
	}
	if e.GetJobId() != "" {
		add("job %s", e.GetJobId())
	}
	if e.GetRequestId() != "" {
		add("request %s", e.GetRequestId())
	}
	return strings.Join(f, "  ")
}

// who names a person and their identity.
func who(name, id string) string {
	switch {
	case name == "" || name == id:
		return id
	case id == "":
		return name
	}
	return name + " (" + id + ")"
}
