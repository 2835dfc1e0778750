package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	escrowdv1 "github.com/escrowd/escrowd/api/escrowd/v1"
	"github.com/escrowd/escrowd/client"
)

func codesCmd(a *app) *cobra.Command {
	return parent("codes", "Issue, reveal, list and approve unlock codes",
		codesIssue(a), codesReveal(a), codesList(a), codesPending(a), codesApprove(a), codesConsumed(a))
}

func codesIssue(a *app) *cobra.Command {
	var group, user, slotFile, outDir string
	var count uint32
	c := &cobra.Command{Use: "issue --group ID --user U --escrow-slot FILE [--count N] [--out DIR]", Short: "Start a new unlock-code epoch for a user (SyncService.IssueUnlockCodes)", Args: cobra.NoArgs}
	d := daemonCmd(c, 30*time.Second)
	o := addOutput(c)
	c.Flags().StringVar(&group, "group", "", "group id")
	c.Flags().StringVar(&user, "user", "", "user id")
	c.Flags().StringVar(&slotFile, "escrow-slot", "", "file holding the group's escrow slot")
	c.Flags().Uint32Var(&count, "count", 0, "number of codes (default: the daemon's, 5)")
	c.Flags().StringVar(&outDir, "out", "", "folder to write the unlock slots to, as unlock-EPOCH-INDEX.json")
	c.MarkFlagFilename("escrow-slot", "json")
	c.MarkFlagDirname("out")
	c.RunE = func(cmd *cobra.Command, _ []string) error {
		if err := firstErr(o.check(), required(cmd, "group", "user", "escrow-slot")); err != nil {
			return err
		}
		slot, err := os.ReadFile(slotFile)
		if err != nil {
			return err
		}
		return d.call(cmd, func(ctx context.Context, cl *client.Client) error {
			var id string
			r, err := cl.IssueUnlockCodes(ctx, &escrowdv1.IssueUnlockCodesRequest{GroupId: group, UserId: user, EscrowSlot: slot, Count: count}, client.RequestID(&id))
			if err != nil {
				return err
			}
			var files []string
			if outDir != "" {
				if err := os.MkdirAll(outDir, 0o700); err != nil {
					return err
				}
				for i, s := range r.GetSlots() {
					p := filepath.Join(outDir, fmt.Sprintf("unlock-%d-%d.json", r.GetEpoch(), i))
					if err := os.WriteFile(p, s, 0o600); err != nil {
						return err
					}
					files = append(files, p)
				}
			}
			if o.json() {
				return writeJSON(a.out, map[string]any{"epoch": r.GetEpoch(), "slots": len(r.GetSlots()), "files": files, "request_id": id})
			}
			fmt.Fprintf(a.out, "epoch %d: %d unlock slots, request %s\n", r.GetEpoch(), len(r.GetSlots()), id)
			for _, p := range files {
				fmt.Fprintln(a.out, "  wrote", p)
			}
			return nil
		})
	}
	return c
}

// pendingNoticeAfter is how long a reveal runs before escrowctl looks
// whether it waits for a second technician.
var pendingNoticeAfter = 2 * time.Second

func codesReveal(a *app) *cobra.Command {
	var group, user, ticket string
	c := &cobra.Command{
		Use:   "reveal --group ID --user U --ticket T",
		Short: "Reveal the user's next unlock code (SupportService.RevealUnlockCode)",
		Long: `Reveal the user's next unlock code, to read out to them. The reveal is
recorded in the audit trail before the code is shown.

In a group under dual control the call waits until a second technician
approves it (escrowctl codes pending, then codes approve); escrowctl says so
when that happens, with the command the other person runs. It is never
retried: every call spends a code.`,
		Args: cobra.NoArgs,
	}
	d := daemonCmd(c, 15*time.Minute)
	o := addOutput(c)
	c.Flags().StringVar(&group, "group", "", "group id")
	c.Flags().StringVar(&user, "user", "", "user id")
	c.Flags().StringVar(&ticket, "ticket", "", "support ticket reference")
	c.RunE = func(cmd *cobra.Command, _ []string) error {
		if err := firstErr(o.check(), required(cmd, "group", "user", "ticket")); err != nil {
			return err
		}
		return d.call(cmd, func(ctx context.Context, cl *client.Client) error {
			wctx, stop := context.WithCancel(ctx)
			noticed := make(chan struct{})
			go func() {
				defer close(noticed)
				noticePending(wctx, cl, a.errOut, group, user, ticket)
			}()
			var id string
			r, err := cl.RevealUnlockCode(ctx, &escrowdv1.RevealUnlockCodeRequest{GroupId: group, UserId: user, Ticket: ticket}, client.RequestID(&id))
			stop()
			<-noticed
			if err != nil {
				return err
			}
			if o.json() {
				return emitJSON(a.out, r, map[string]any{"request_id": id, "group_id": group, "user_id": user})
			}
			fmt.Fprintf(a.out, "unlock code %d of epoch %d for %s: %s\n(%d left; request %s)\n",
				r.GetIndex(), r.GetEpoch(), user, r.GetCode(), r.GetRemaining(), id)
			if ap := r.GetApprovedBy(); ap != "" {
				fmt.Fprintf(a.out, "approved by %s\n", ap)
			}
			if r.GetRemaining() == 0 {
				fmt.Fprintf(a.out, "that was the epoch's last code: issue new ones (escrowctl codes issue --group %s --user %s …)\n", group, user)
			}
			return nil
		})
	}
	return c
}

// noticePending tells the person at the terminal, once, that their reveal
// waits for a second technician — only if escrowd lists it as pending,
// that is only in a group under dual control. It looks after
// pendingNoticeAfter, then every second until ctx ends.
func noticePending(ctx context.Context, cl *client.Client, w io.Writer, group, user, ticket string) {
	wait := pendingNoticeAfter
	for {
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		wait = time.Second
		r, err := cl.ListPendingReveals(ctx, &escrowdv1.ListPendingRevealsRequest{})
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			continue // no permission to list, or the daemon is busy: say nothing
		}
		for _, p := range r.GetReveals() {
			if p.GetGroupId() == group && p.GetUserId() == user && p.GetTicket() == ticket {
				fmt.Fprintf(w, "group %s is under dual control: this reveal waits until another technician approves it (until %s). They run:\n"+
					"  escrowctl codes pending\n  escrowctl codes approve --id %s --group %s --user %s --ticket %s\n",
					group, unixTime(p.GetExpiresUnix()), p.GetId(), group, user, ticket)
				return
			}
		}
	}
}

func codeState(s escrowdv1.UnlockCodeState_State) string {
	return strings.ToLower(strings.TrimPrefix(s.String(), "STATE_"))
}

func codesList(a *app) *cobra.Command {
	var group, user string
	c := &cobra.Command{Use: "list --group ID --user U", Short: "The state of a user's codes, never the codes (SupportService.ListUnlockCodes)", Args: cobra.NoArgs}
	d := daemonCmd(c, 30*time.Second)
	o := addOutput(c)
	c.Flags().StringVar(&group, "group", "", "group id")
	c.Flags().StringVar(&user, "user", "", "user id")
	c.RunE = func(cmd *cobra.Command, _ []string) error {
		if err := firstErr(o.check(), required(cmd, "group", "user")); err != nil {
			return err
		}
		return d.call(cmd, func(ctx context.Context, cl *client.Client) error {
			r, err := cl.ListUnlockCodes(ctx, &escrowdv1.ListUnlockCodesRequest{GroupId: group, UserId: user})
			if err != nil {
				return err
			}
			if o.json() {
				return emitJSON(a.out, r, nil)
			}
			fmt.Fprintf(a.out, "epoch %d\n", r.GetEpoch())
			for _, s := range r.GetCodes() {
				fmt.Fprintf(a.out, "  code %d  %s\n", s.GetIndex(), codeState(s.GetState()))
			}
			return nil
		})
	}
	return c
}

func codesPending(a *app) *cobra.Command {
	c := &cobra.Command{Use: "pending", Short: "Reveals waiting for a second technician (SupportService.ListPendingReveals)", Args: cobra.NoArgs}
	d := daemonCmd(c, 30*time.Second)
	o := addOutput(c)
	c.RunE = func(cmd *cobra.Command, _ []string) error {
		if err := o.check(); err != nil {
			return err
		}
		return d.call(cmd, func(ctx context.Context, cl *client.Client) error {
			r, err := cl.ListPendingReveals(ctx, &escrowdv1.ListPendingRevealsRequest{})
			if err != nil {
				return err
			}
			if o.json() {
				return emitJSON(a.out, r, nil)
			}
			if len(r.GetReveals()) == 0 {
				fmt.Fprintln(a.out, "no reveal is waiting for approval")
			}
			for _, p := range r.GetReveals() {
				fmt.Fprintf(a.out, "%s  group %s user %s ticket %s, asked by %s, expires %s\n", p.GetId(), p.GetGroupId(), p.GetUserId(),
					p.GetTicket(), p.GetRequester(), unixTime(p.GetExpiresUnix()))
			}
			if len(r.GetReveals()) > 0 {
				fmt.Fprintln(a.out, "approve one, stating what it is: escrowctl codes approve --id ID --group GROUP --user USER --ticket TICKET")
			}
			return nil
		})
	}
	return c
}

func codesApprove(a *app) *cobra.Command {
	var id, group, user, ticket string
	c := &cobra.Command{
		Use:   "approve --id ID --group ID --user U --ticket T",
		Short: "Approve another person's reveal (SupportService.ApproveReveal)",
		Long: `Approve another person's pending reveal, stating its group, user and ticket
as codes pending lists them: escrowd refuses an approval of anything else.`,
		Args: cobra.NoArgs,
	}
	d := daemonCmd(c, 30*time.Second)
	o := addOutput(c)
	c.Flags().StringVar(&id, "id", "", "pending reveal id, as codes pending lists it")
	c.Flags().StringVar(&group, "group", "", "group id")
	c.Flags().StringVar(&user, "user", "", "user id")
	c.Flags().StringVar(&ticket, "ticket", "", "support ticket reference")
	c.RunE = func(cmd *cobra.Command, _ []string) error {
		if err := firstErr(o.check(), required(cmd, "id", "group", "user", "ticket")); err != nil {
			return err
		}
		return d.call(cmd, func(ctx context.Context, cl *client.Client) error {
			var rid string
			r, err := cl.ApproveReveal(ctx, &escrowdv1.ApproveRevealRequest{Id: id, GroupId: group, UserId: user, Ticket: ticket}, client.RequestID(&rid))
			if err != nil {
				return err
			}
			if o.json() {
				return emitJSON(a.out, r, map[string]any{"request_id": rid})
			}
			p := r.GetReveal()
			fmt.Fprintf(a.out, "approved: %s may now reveal a code of %s in group %s (ticket %s); request %s\n",
				p.GetRequester(), p.GetUserId(), p.GetGroupId(), p.GetTicket(), rid)
			return nil
		})
	}
	return c
}

func codesConsumed(a *app) *cobra.Command {
	var group, user string
	var epoch, index uint32
	c := &cobra.Command{
		Use:   "consumed --group ID --user U --epoch N --index N",
		Short: "Record that a device used a revealed code (SyncService.MarkUnlockCodeConsumed)",
		Long: `Record that a device used a revealed code. It is idempotent. A code never
revealed is refused (it leaked or was guessed), and so is an epoch that is not
the current one.`,
		Args: cobra.NoArgs,
	}
	d := daemonCmd(c, 30*time.Second)
	o := addOutput(c)
	c.Flags().StringVar(&group, "group", "", "group id")
	c.Flags().StringVar(&user, "user", "", "user id")
	c.Flags().Uint32Var(&epoch, "epoch", 0, "epoch of the code")
	c.Flags().Uint32Var(&index, "index", 0, "index of the code in its epoch")
	c.RunE = func(cmd *cobra.Command, _ []string) error {
		if err := firstErr(o.check(), required(cmd, "group", "user", "epoch", "index")); err != nil {
			return err
		}
		return d.call(cmd, func(ctx context.Context, cl *client.Client) error {
			var id string
			r, err := cl.MarkUnlockCodeConsumed(ctx, &escrowdv1.MarkUnlockCodeConsumedRequest{GroupId: group, UserId: user, Epoch: epoch, Index: index}, client.RequestID(&id))
			if err != nil {
				return err
			}
			if o.json() {
				return emitJSON(a.out, r, map[string]any{"request_id": id})
			}
			fmt.Fprintf(a.out, "code %d of epoch %d for %s marked consumed (request %s)\n", index, epoch, user, id)
			for _, s := range r.GetCodes() {
				fmt.Fprintf(a.out, "  code %d  %s\n", s.GetIndex(), codeState(s.GetState()))
			}
			return nil
		})
	}
	return c
}
