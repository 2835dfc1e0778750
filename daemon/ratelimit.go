package daemon

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/escrowd/escrowd/escrow"
	"github.com/escrowd/escrowd/escrow/bundle"
	"github.com/escrowd/escrowd/policy"
	"github.com/escrowd/escrowd/store"
)

// Rate limits are taken in the store, after the policy allowed the
// request and only from ids that are ids: the policy builds no key from
// an id that is not one (policy.RuleInvalid), and takeRate refuses a
// request that lacks an id its RPC needs, before anything is counted. So
// a malformed request is INVALID_ARGUMENT and counts against no limit,
// and a key never outgrows what the store takes.

// invalidDecision is the error of a decision the policy refused as
// malformed (policy.RuleInvalid), or nil.
func invalidDecision(d policy.Decision) error {
	if d.Rule != policy.RuleInvalid {
		return nil
	}
	return fmt.Errorf("%w: %s", escrow.ErrInvalid, d.Reason)
}

// takeRate takes every rate limit of d for req. It returns the limit
// that had no room, with a RESOURCE_EXHAUSTED error, or another error:
// INVALID_ARGUMENT for a request without the ids its RPC needs,
// UNAVAILABLE if the store cannot answer.
func (s *Server) takeRate(ctx context.Context, req any, d policy.Decision) (*policy.Limit, error) {
	if len(d.Limits) == 0 {
		return nil, nil
	}
	if err := requiredIDs(req); err != nil {
		return nil, err
	}
	limits := make([]store.RateLimit, len(d.Limits))
	for i, l := range d.Limits {
		limits[i] = store.RateLimit{Key: l.Key, Max: l.Max, Window: l.Window}
	}
	i, err := s.cfg.State.TakeRate(ctx, limits)
	switch {
	case errors.Is(err, store.ErrRateLimited):
		l := d.Limits[i]
		return &l, rateLimited(l)
	case errors.Is(err, store.ErrInvalidLimit):
		// The policy builds no such limit: a bug, neither the caller's
		// fault nor an outage (INTERNAL).
		return nil, fmt.Errorf("rate limits: %w", err)
	case err != nil:
		return nil, fmt.Errorf("%w: rate limits: %w", escrow.ErrUnavailable, err)
	}
	return nil, nil
}

// requiredIDs refuses a request whose group or user id, for an RPC that
// has one, is not an id: every handler needs both of those it has, and
// would refuse the request after its limits were taken.
func requiredIDs(req any) error {
	if r, ok := req.(hasGroup); ok {
		if err := bundle.ValidateID(r.GetGroupId()); err != nil {
			return fmt.Errorf("%w: group_id: %v", escrow.ErrInvalid, err)
		}
	}
	if r, ok := req.(hasUser); ok {
		if err := bundle.ValidateID(r.GetUserId()); err != nil {
			return fmt.Errorf("%w: user_id: %v", escrow.ErrInvalid, err)
		}
	}
	return nil
}

// rateLimited is the status of a request that met limit l: the message
// names the limit and where it is set, an ErrorInfo carries its numbers
// and a RetryInfo the time until one request's room comes back.
func rateLimited(l policy.Limit) error {
	interval := store.RateLimit{Max: l.Max, Window: l.Window}.Interval().Round(time.Millisecond)
	st := status.Newf(codes.ResourceExhausted, "rate limit %s reached: %d per %s, as a burst of %d and then one every %s (the policy file's rate_limits)",
		l.Name, l.Max, l.Window, l.Max, interval)
	if d, err := st.WithDetails(
		&errdetails.ErrorInfo{Reason: "RATE_LIMITED", Domain: ErrorDomain, Metadata: map[string]string{
			"limit": l.Name, "max": strconv.Itoa(int(l.Max)), "window": l.Window.String(), "interval": interval.String()}},
		&errdetails.RetryInfo{RetryDelay: durationpb.New(interval)},
	); err == nil {
		st = d
	}
	return st.Err()
}
