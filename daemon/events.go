package daemon

import (
	"context"
	"fmt"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	escrowdv1 "github.com/escrowd/escrowd/api/escrowd/v1"
	"github.com/escrowd/escrowd/escrow"
	"github.com/escrowd/escrowd/store"
)

// The event feed: SyncService.ListEvents reads the store's outbox, which
// the store writes in the transaction of each change (store/events.go).
// It is an ordinary unary RPC: authenticated, authorised by the policy
// (operation ListEvents) and audited like every other request. The
// handlers of the changes hand the store their request's origin (who,
// which ticket, which approver, which request id) through the context.

// EventLog is the store's event outbox.
type EventLog interface {
	Events(ctx context.Context, after uint64, limit int) (store.EventPage, error)
}

// DefaultEventPage is the page size of a ListEvents call that names none.
const DefaultEventPage = 100

func (s *Server) events() (EventLog, error) {
	if s.cfg.Events == nil {
		return nil, fmt.Errorf("%w: the event feed is not configured on this daemon", escrow.ErrPrecondition)
	}
	return s.cfg.Events, nil
}

// withOrigin returns ctx carrying the request's origin for the events the
// store writes: the caller and its person, the request id, the ticket,
// and for a reveal under dual control its approver.
func (s *Server) withOrigin(ctx context.Context) context.Context {
	return store.WithOrigin(ctx, s.origin(ctx))
}

func (s *Server) origin(ctx context.Context) store.Origin {
	rec, pol, caller := record(ctx), s.policyOf(ctx), callerID(ctx)
	o := store.Origin{RequestID: rec.ID, Caller: caller, CallerName: pol.Name(caller), Ticket: rec.Ticket}
	if name := approvedBy(ctx); name != "" {
		o.ApproverName = name
		for _, d := range rec.Detail {
			if id, ok := strings.CutPrefix(d, approvedByDetail); ok {
				o.Approver = id
			}
		}
	}
	return o
}

// approvedByDetail starts the audit detail that names a dual-control
// request's approver (admit).
const approvedByDetail = "approved-by:"

func (h *syncService) ListEvents(ctx context.Context, req *escrowdv1.ListEventsRequest) (*escrowdv1.ListEventsResponse, error) {
	rec := record(ctx)
	after := req.GetAfter()
	rec.Detail = append(rec.Detail, fmt.Sprintf("after:%d", after))
	limit := int(req.GetLimit())
	switch {
	case limit == 0:
		limit = DefaultEventPage
	case limit > store.MaxEventPage:
		return nil, fmt.Errorf("%w: limit %d is more than %d", escrow.ErrInvalid, limit, store.MaxEventPage)
	}
	log, err := h.s.events()
	if err != nil {
		return nil, err
	}
	p, err := log.Events(ctx, after, limit)
	if err != nil {
		return nil, fmt.Errorf("%w: events: %w", escrow.ErrUnavailable, err)
	}
	if after > p.Last {
		return nil, status.Errorf(codes.FailedPrecondition,
			"cursor %d is past the newest event %d: the store was restored from a backup or replaced; resume from %d (docs/OPERATIONS.md, \"The event feed\")",
			after, p.Last, p.Last)
	}
	resp := &escrowdv1.ListEventsResponse{Next: after, Last: p.Last}
	switch {
	case len(p.Events) > 0:
		resp.Next = p.Events[len(p.Events)-1].Seq
		resp.Missed = p.Events[0].Seq - after - 1
	default:
		// Nothing follows after: any number up to Last was pruned.
		resp.Next, resp.Missed = p.Last, p.Last-after
	}
	if after == 0 {
		// A new reader starts at the oldest event kept; it missed nothing.
		resp.Missed = 0
	}
	for _, e := range p.Events {
		resp.Events = append(resp.Events, eventMsg(e))
	}
	rec.Detail = append(rec.Detail, fmt.Sprintf("events:%d", len(resp.Events)), fmt.Sprintf("next:%d", resp.Next))
	if resp.Missed > 0 {
		rec.Detail = append(rec.Detail, fmt.Sprintf("missed:%d", resp.Missed))
	}
	return resp, nil
}

func eventMsg(e store.Event) *escrowdv1.Event {
	return &escrowdv1.Event{
		Sequence: e.Seq, TimeUnix: e.Time.Unix(), Kind: e.Kind, GroupId: e.Group, UserId: e.User,
		Epoch: e.Epoch, Index: e.Index, Codes: uint32(e.Codes),
		UnlockKeyVersion: e.UnlockVersion, EscrowKeyVersion: e.EscrowVersion,
		OldGdkVersion: e.OldGDKVersion, GdkVersion: e.GDKVersion,
		Ticket: e.Ticket, Requester: e.Requester, RequesterName: e.RequesterName, RevealId: e.RevealID,
		Caller: e.Caller, CallerName: e.CallerName, Approver: e.Approver, ApproverName: e.ApproverName,
		RequestId: e.RequestID, JobId: e.Job,
	}
}
