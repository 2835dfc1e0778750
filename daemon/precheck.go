package daemon

import (
	"context"
	"fmt"

	escrowdv1 "github.com/escrowd/escrowd/api/escrowd/v1"
	"github.com/escrowd/escrowd/escrow"
	"github.com/escrowd/escrowd/escrow/bundle"
)

// beforeApproval refuses, before a dual-control request is put to a second
// person, what the request would fail on anyway once approved: a group
// that does not exist, a user with no code left to reveal, a malformed
// id or ticket. Otherwise the caller would wait the whole approval
// timeout, and then be told that no approval came, for a request that
// could never succeed; and an approver would be asked to approve it.
// It only reads: a request that passes may still fail later (the last
// code revealed meanwhile), as it would have without it.
func (s *Server) beforeApproval(ctx context.Context, req any) error {
	switch r := req.(type) {
	case *escrowdv1.RevealUnlockCodeRequest:
		if bundle.ValidateID(r.GetTicket()) != nil {
			return fmt.Errorf("%w: ticket is required: printable ASCII, no spaces, at most %d bytes", escrow.ErrInvalid, bundle.MaxIDLength)
		}
		c, err := s.cfg.Escrow.Codes(ctx, r.GetGroupId(), r.GetUserId())
		if err != nil {
			return err
		}
		if c.Remaining() == 0 {
			return fmt.Errorf("%w: user %s", escrow.ErrExhausted, r.GetUserId())
		}
		return nil
	case *escrowdv1.ProvisionGroupRequest:
		// Its group does not exist yet.
		return nil
	case hasGroup:
		if r.GetGroupId() == "" {
			return nil
		}
		_, err := s.cfg.Escrow.Group(ctx, r.GetGroupId())
		return err
	}
	return nil
}
