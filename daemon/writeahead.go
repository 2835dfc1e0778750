package daemon

import (
	"context"
	"fmt"
	"slices"

	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/escrowd/escrowd/audit"
	"github.com/escrowd/escrowd/escrow"
)

// Write-ahead audit. A request that changes state commits an intent
// record (audit.PhaseIntent) before it acts and its outcome record
// (audit.PhaseOutcome, the same id) after; if the intent cannot be
// committed nothing happens and the caller gets UNAVAILABLE. Reads keep
// one record, committed before their result leaves.

// Operations that change state, and those that do not. Every operation of
// the API is in exactly one list (TestEveryOperationClassified), so a new
// one must be placed.
var (
	writeAheadOps = []string{
		"ProvisionGroup", "IssueUnlockCodes", "MarkUnlockCodeConsumed", "RotateGroupKey",
		"RevealUnlockCode", "ApproveReveal",
		"RotateGroupKeys", "SetMinDecryptionVersion", "DestroyKeyVersion", "StartJob", "CancelJob", "DestroyKEK",
	}
	readOps = []string{
		"GetEscrowKey", "Rewrap", "RewrapToEscrow", "BatchRewrap", "ListEvents",
		"ListUnlockCodes", "ListPendingReveals", "GetGroup", "ListHSMObjects", "ListJobs",
	}
	// overlappedOps pass escrow's gate (escrow.WithGate) before their
	// first change of state, so their intent is committed alongside the
	// work before it (a reveal's derivation in the HSM). Every other
	// write-ahead operation commits its intent before its handler runs.
	overlappedOps = []string{"RevealUnlockCode"}
	// queuedOutcomeOps release their result once their intent is
	// committed and their outcome is queued (Config.OutcomeBeforeRelease
	// turns it off): the outcome goes out with the next write, so the
	// request waits for one Vault write, not two.
	queuedOutcomeOps = []string{"RevealUnlockCode"}
	// overlappedReadOps are the reads whose result is a secret (a GDK
	// wrapped to a recipient). While outcomes are queued (the default),
	// each commits a record of the request (phase intent) alongside its
	// HSM work and queues its outcome, so that it waits for the larger of
	// the two rather than their sum; nothing is released before that
	// first record is committed. Under dual control, or with
	// OutcomeBeforeRelease, they keep one record, committed after the
	// work.
	overlappedReadOps = []string{"Rewrap", "RewrapToEscrow", "BatchRewrap"}
)

// IntentObserver, if the Observer implements it, learns of every intent
// whose outcome could not be committed: the request may or may not have
// taken effect, and only the state can tell.
type IntentObserver interface {
	ObserveOpenIntent(operation string)
}

// intent is the commit of a call's intent record, maybe still running.
type intent struct {
	done chan struct{}
	err  error // set before done closes
}

// wait is the gate of an overlapped call: it returns once the intent is
// committed, or an error wrapping escrow.ErrUnavailable.
func (in *intent) wait(ctx context.Context) error {
	select {
	case <-in.done:
	case <-ctx.Done():
		return fmt.Errorf("%w: waiting for the intent's audit record: %w", escrow.ErrUnavailable, ctx.Err())
	}
	if in.err != nil {
		return fmt.Errorf("%w: the intent's audit record: %w", escrow.ErrUnavailable, in.err)
	}
	return nil
}

// beginIntent commits the intent of an admitted call that changes state:
// before it returns, or, for an overlapped operation that needs no
// approval, alongside the handler, whose ctx then carries the gate. It
// returns UNAVAILABLE when the intent could not be committed: then
// nothing has been done.
func (s *Server) beginIntent(ctx context.Context, c *call, dualControl bool) (context.Context, error) {
	op := operation(c.method)
	if c.kind != kindAPI {
		return ctx, nil
	}
	read := slices.Contains(overlappedReadOps, op)
	if read && (dualControl || !s.queuesOutcomes()) || !read && !slices.Contains(writeAheadOps, op) {
		return ctx, nil
	}
	rec := c.rec // the handler goes on filling c.rec meanwhile
	rec.KeyVersions, rec.Detail = slices.Clone(rec.KeyVersions), slices.Clone(rec.Detail)
	rec.Phase = audit.PhaseIntent
	in := &intent{done: make(chan struct{})}
	c.intent = in
	commit := func() {
		actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.cfg.AuditTimeout)
		in.err = s.cfg.Auditor.Commit(actx, &rec)
		cancel()
		close(in.done)
	}
	if read {
		// A read changes nothing: it needs no gate, only its record
		// before its result leaves (endIntent).
		go commit()
		return ctx, nil
	}
	if slices.Contains(overlappedOps, op) && !dualControl {
		go commit()
		return escrow.WithGate(ctx, in.wait), nil
	}
	commit()
	if in.err != nil {
		return nil, intentFailed(c)
	}
	return ctx, nil
}

// intentFailed is the status of a call whose intent was not committed.
func intentFailed(c *call) error {
	return status.Errorf(codes.Unavailable,
		"the audit trail cannot record the intent of this request, so nothing was done; retry later (request %s)", c.rec.ID)
}

// endIntent waits for the call's intent, if it has one, and returns the
// error its caller gets: UNAVAILABLE when the intent failed (the handler
// changed nothing: it did not pass the gate), else err. The call's record
// becomes its outcome.
func (s *Server) endIntent(c *call, err error) error {
	if c.intent == nil {
		return err
	}
	<-c.intent.done
	c.rec.Phase = audit.PhaseOutcome
	if c.intent.err != nil {
		s.log.Error("audit commit of an intent failed; nothing done", zap.String("request_id", c.rec.ID),
			zap.String("method", c.rec.Operation), zap.Error(c.intent.err))
		// Nothing was done and nothing is released: the record goes where
		// refusals go.
		c.admitted = false
		return intentFailed(c)
	}
	return err
}

// queueOutcome queues the outcome of a call whose intent is committed, if
// its operation's outcome may follow its result (queuedOutcomeOps and
// overlappedReadOps) and the auditor can queue. It reports whether it did: if it did, aerr is
// nil when the record is held for the next write; a write that then fails
// leaves the intent open and is counted and logged as such.
func (s *Server) queueOutcome(ctx context.Context, c *call) (queued bool, aerr error) {
	op := operation(c.method)
	if !s.queuesOutcomes() || c.intent == nil || c.intent.err != nil ||
		!slices.Contains(queuedOutcomeOps, op) && !slices.Contains(overlappedReadOps, op) {
		return false, nil
	}
	qa := s.cfg.Auditor.(OutcomeAuditor)
	id, method, label := c.rec.ID, c.rec.Operation, operation(c.label())
	return true, qa.Enqueue(ctx, &c.rec, func(err error) {
		if o, ok := s.cfg.Observer.(IntentObserver); ok {
			o.ObserveOpenIntent(label)
		}
		s.log.Error("audit write of a queued outcome failed; its result was released, and its intent stays open",
			zap.String("request_id", id), zap.String("method", method), zap.Error(err))
	})
}

// queuesOutcomes reports whether outcomes may follow their results: the
// auditor can queue, and OutcomeBeforeRelease is off.
func (s *Server) queuesOutcomes() bool {
	_, ok := s.cfg.Auditor.(OutcomeAuditor)
	return ok && !s.cfg.OutcomeBeforeRelease
}

// outcomeFailed is the status of a write-ahead call whose last record
// could not be committed. If its intent was not committed either, nothing
// was done; else it may have taken effect, and its intent stays open.
func (s *Server) outcomeFailed(c *call, aerr error) error {
	if c.intent.err != nil {
		return intentFailed(c)
	}
	if o, ok := s.cfg.Observer.(IntentObserver); ok {
		o.ObserveOpenIntent(operation(c.label()))
	}
	s.log.Error("audit commit of an outcome failed; the request may have taken effect", zap.String("request_id", c.rec.ID),
		zap.String("method", c.rec.Operation), zap.Error(aerr))
	return status.Errorf(codes.Unavailable,
		"the audit trail cannot record the outcome of this request, so its result is withheld; it may have taken effect: its intent is recorded as request %s", c.rec.ID)
}
