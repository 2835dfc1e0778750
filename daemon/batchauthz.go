package daemon

import (
	"context"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/escrowd/escrowd/policy"
)

// A batch is admitted as a call (a caller the policy lets call the
// operation at all: policy.Request.Batch) and then item by item, here:
// each item is decided under its own group and target kind, takes its own
// rate limits and is refused alone if its group is under dual control.
// Every item's decision is written in the batch's audit record, which is
// committed before any result of the batch leaves.

type policyKey struct{}

// policyOf returns the policy the request was admitted under, so that its
// items are decided under the same one even if a reload comes between.
func (s *Server) policyOf(ctx context.Context) *policy.Policy {
	if p, ok := ctx.Value(policyKey{}).(*policy.Policy); ok {
		return p
	}
	return s.policy.Load()
}

// itemDenial is why the rules refused one item: a Denial* reason, and
// the limit for a rate-limit denial.
type itemDenial struct {
	reason string
	limit  string
}

func (d itemDenial) String() string {
	if d.limit != "" {
		return d.reason + ":" + d.limit
	}
	return d.reason
}

// admitItem decides one item of a batch of operation op: nil if it may
// run; otherwise the error the item fails with and, if the rules refused
// it, why. A refused item counts against no limit.
func (s *Server) admitItem(ctx context.Context, pol *policy.Policy, op, group, target string) (*itemDenial, error) {
	d := s.decide(ctx, pol, policy.Request{Identity: callerID(ctx), Operation: op, Group: group, Targets: []string{target}})
	if err := invalidDecision(d); err != nil {
		return nil, err
	}
	if !d.Allow {
		return &itemDenial{reason: denialFor(d.Rule)}, status.Error(codes.PermissionDenied, d.Reason)
	}
	if d.DualControl {
		// An item cannot wait for a second technician without holding
		// up the whole batch: the single-item RPC can.
		return &itemDenial{reason: DenialDualControl}, status.Errorf(codes.PermissionDenied,
			"group %s is under dual control and a batch cannot wait for an approval: re-wrap this item with Rewrap or RewrapToEscrow", group)
	}
	if full, err := s.takeRate(ctx, nil, d); err != nil {
		if full != nil {
			return &itemDenial{reason: DenialRateLimit, limit: full.Name}, err
		}
		return nil, err
	}
	return nil, nil
}
