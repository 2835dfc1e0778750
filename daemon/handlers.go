package daemon

import (
	"context"
	"errors"
	"fmt"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	escrowdv1 "github.com/escrowd/escrowd/api/escrowd/v1"
	"github.com/escrowd/escrowd/escrow"
	"github.com/escrowd/escrowd/escrow/bundle"
	"github.com/escrowd/escrowd/store"
)

type syncService struct {
	escrowdv1.UnimplementedSyncServiceServer
	s *Server
}

type supportService struct {
	escrowdv1.UnimplementedSupportServiceServer
	s *Server
}

type securityService struct {
	escrowdv1.UnimplementedSecurityServiceServer
	s *Server
}

func escrowKeyMsg(k escrow.EscrowPublic) *escrowdv1.EscrowKey {
	return &escrowdv1.EscrowKey{GroupId: k.Group, Version: k.Version, Suite: k.Suite, PublicKey: k.PublicKey}
}

func noteVersions(ctx context.Context, u escrow.Used) {
	rec := record(ctx)
	if u.EscrowVersion != 0 {
		rec.KeyVersions = append(rec.KeyVersions, fmt.Sprintf("escrow:%d", u.EscrowVersion))
	}
	if u.UnlockVersion != 0 {
		rec.KeyVersions = append(rec.KeyVersions, fmt.Sprintf("unlock:%d", u.UnlockVersion))
	}
	if u.TargetEscrowVersion != 0 {
		rec.KeyVersions = append(rec.KeyVersions, fmt.Sprintf("target-escrow:%d", u.TargetEscrowVersion))
	}
}

func (h *syncService) ProvisionGroup(ctx context.Context, req *escrowdv1.ProvisionGroupRequest) (*escrowdv1.ProvisionGroupResponse, error) {
	record(ctx).Group = req.GetGroupId()
	k, err := h.s.cfg.Escrow.Provision(ctx, req.GetGroupId(), req.GetSuite())
	if err != nil {
		return nil, err
	}
	noteVersions(ctx, escrow.Used{EscrowVersion: k.Version})
	record(ctx).Detail = append(record(ctx).Detail, "suite:"+k.Suite)
	return &escrowdv1.ProvisionGroupResponse{EscrowKey: escrowKeyMsg(k)}, nil
}

func (h *syncService) GetEscrowKey(ctx context.Context, req *escrowdv1.GetEscrowKeyRequest) (*escrowdv1.GetEscrowKeyResponse, error) {
	record(ctx).Group = req.GetGroupId()
	k, err := h.s.cfg.Escrow.EscrowKey(ctx, req.GetGroupId())
	if err != nil {
		return nil, err
	}
	noteVersions(ctx, escrow.Used{EscrowVersion: k.Version})
	return &escrowdv1.GetEscrowKeyResponse{EscrowKey: escrowKeyMsg(k)}, nil
}

var recipientKinds = map[escrowdv1.Recipient_Kind]bundle.Kind{
	escrowdv1.Recipient_KIND_MEMBER: bundle.KindMember,
	escrowdv1.Recipient_KIND_DEVICE: bundle.KindDevice,
}

func (h *syncService) Rewrap(ctx context.Context, req *escrowdv1.RewrapRequest) (*escrowdv1.RewrapResponse, error) {
	rec := record(ctx)
	rec.Group = req.GetGroupId()
	r := req.GetRecipient()
	if r == nil {
		return nil, fmt.Errorf("%w: recipient is required", escrow.ErrInvalid)
	}
	kind, ok := recipientKinds[r.GetKind()]
	if !ok {
		return nil, fmt.Errorf("%w: recipient.kind must be KIND_MEMBER or KIND_DEVICE", escrow.ErrInvalid)
	}
	if bundle.ValidateID(r.GetId()) == nil {
		rec.Detail = append(rec.Detail, fmt.Sprintf("recipient:%s/%s", kind, r.GetId()))
	}
	slot, used, err := h.s.cfg.Escrow.Rewrap(ctx, req.GetGroupId(), req.GetEscrowSlot(), escrow.Recipient{
		Kind: kind, ID: r.GetId(), KeyVersion: r.GetKeyVersion(), Suite: r.GetSuite(), PublicKey: r.GetPublicKey(),
	})
	noteVersions(ctx, used)
	if err != nil {
		return nil, err
	}
	return &escrowdv1.RewrapResponse{Slot: slot}, nil
}

func (h *syncService) IssueUnlockCodes(ctx context.Context, req *escrowdv1.IssueUnlockCodesRequest) (*escrowdv1.IssueUnlockCodesResponse, error) {
	rec := record(ctx)
	rec.Group, rec.User = req.GetGroupId(), req.GetUserId()
	ctx = h.s.withOrigin(ctx)
	is, err := h.s.cfg.Escrow.IssueCodes(ctx, req.GetGroupId(), req.GetUserId(), req.GetEscrowSlot(), int(req.GetCount()))
	noteVersions(ctx, is.Used)
	if err != nil {
		return nil, err
	}
	rec.Detail = append(rec.Detail, fmt.Sprintf("epoch:%d", is.Epoch), fmt.Sprintf("codes:%d", len(is.Slots)))
	return &escrowdv1.IssueUnlockCodesResponse{Epoch: is.Epoch, Slots: is.Slots}, nil
}

func (h *supportService) RevealUnlockCode(ctx context.Context, req *escrowdv1.RevealUnlockCodeRequest) (*escrowdv1.RevealUnlockCodeResponse, error) {
	rec := record(ctx)
	rec.Group, rec.User = req.GetGroupId(), req.GetUserId()
	if bundle.ValidateID(req.GetTicket()) != nil {
		return nil, fmt.Errorf("%w: ticket is required: printable ASCII, no spaces, at most %d bytes", escrow.ErrInvalid, bundle.MaxIDLength)
	}
	rec.Ticket = req.GetTicket()
	ctx = h.s.withOrigin(ctx)
	rv, err := h.s.cfg.Escrow.RevealCode(ctx, req.GetGroupId(), req.GetUserId())
	noteVersions(ctx, rv.Used)
	if err != nil {
		return nil, err
	}
	rec.Detail = append(rec.Detail, fmt.Sprintf("epoch:%d", rv.Epoch), fmt.Sprintf("index:%d", rv.Index))
	resp := &escrowdv1.RevealUnlockCodeResponse{
		Code: rv.Code.String(), Epoch: rv.Epoch, Index: rv.Index, Remaining: uint32(rv.Remaining),
		ApprovedBy: approvedBy(ctx),
	}
	rv.Code.Clear()
	return resp, nil
}

func (h *supportService) ListUnlockCodes(ctx context.Context, req *escrowdv1.ListUnlockCodesRequest) (*escrowdv1.ListUnlockCodesResponse, error) {
	rec := record(ctx)
	rec.Group, rec.User = req.GetGroupId(), req.GetUserId()
	c, err := h.s.cfg.Escrow.Codes(ctx, req.GetGroupId(), req.GetUserId())
	if err != nil {
		return nil, err
	}
	return &escrowdv1.ListUnlockCodesResponse{Epoch: c.Epoch, Codes: codeStates(c)}, nil
}

func codeStates(c store.Codes) []*escrowdv1.UnlockCodeState {
	var out []*escrowdv1.UnlockCodeState
	for i, r := range c.Revealed {
		st := escrowdv1.UnlockCodeState_STATE_UNREVEALED
		switch {
		case c.IsConsumed(i):
			st = escrowdv1.UnlockCodeState_STATE_CONSUMED
		case r:
			st = escrowdv1.UnlockCodeState_STATE_REVEALED
		}
		out = append(out, &escrowdv1.UnlockCodeState{Index: uint32(i), State: st})
	}
	return out
}

func pendingMsg(a store.Approval) *escrowdv1.PendingReveal {
	return &escrowdv1.PendingReveal{Id: a.ID, GroupId: a.Group, UserId: a.User, Ticket: a.Ticket,
		Requester: a.Requester, CreatedUnix: a.Created.Unix(), ExpiresUnix: a.Expires.Unix()}
}

func (h *supportService) ListPendingReveals(ctx context.Context, _ *escrowdv1.ListPendingRevealsRequest) (*escrowdv1.ListPendingRevealsResponse, error) {
	list, err := h.s.cfg.State.PendingApprovals(ctx, h.s.now())
	if err != nil {
		return nil, fmt.Errorf("%w: approvals: %w", escrow.ErrUnavailable, err)
	}
	resp := &escrowdv1.ListPendingRevealsResponse{}
	for _, a := range list {
		resp.Reveals = append(resp.Reveals, pendingMsg(a))
	}
	return resp, nil
}

// ApproveReveal approves a pending dual-control request. The approval must
// state the group, user and ticket of the request it approves, and comes
// from another person than the requester, as the policy names persons: a
// person holding two certificates cannot approve their own reveal.
func (h *supportService) ApproveReveal(ctx context.Context, req *escrowdv1.ApproveRevealRequest) (*escrowdv1.ApproveRevealResponse, error) {
	rec := record(ctx)
	if bundle.ValidateID(req.GetId()) != nil {
		return nil, fmt.Errorf("%w: id must name a pending reveal", escrow.ErrInvalid)
	}
	rec.Detail = append(rec.Detail, "approves:"+req.GetId())
	if req.GetGroupId() == "" {
		return nil, fmt.Errorf("%w: an approval states the group_id, user_id and ticket of the reveal it approves, as `escrowctl codes pending` lists them", escrow.ErrInvalid)
	}
	// The request's group, user and ticket never change once stored, so
	// checking them, and the persons, before the store's Approve is safe;
	// Approve itself decides atomically whether the request is still
	// pending.
	p, err := h.s.cfg.State.Approval(ctx, req.GetId())
	switch {
	case errors.Is(err, store.ErrNotFound):
		return nil, status.Errorf(codes.NotFound, "no reveal %s is waiting for approval", req.GetId())
	case err != nil:
		return nil, fmt.Errorf("%w: approvals: %w", escrow.ErrUnavailable, err)
	}
	// The record names what the request is, whatever the approval says.
	rec.Group, rec.User, rec.Ticket = p.Group, p.User, p.Ticket
	if req.GetGroupId() != p.Group || req.GetUserId() != p.User || req.GetTicket() != p.Ticket {
		rec.Detail = append(rec.Detail, fmt.Sprintf("states:group:%s user:%s ticket:%s",
			auditID(req.GetGroupId()), auditID(req.GetUserId()), auditID(req.GetTicket())))
		return nil, status.Errorf(codes.FailedPrecondition,
			"reveal %s is for group %s, user %s, ticket %s: not what this approval states (group %s, user %s, ticket %s); check `escrowctl codes pending`",
			p.ID, p.Group, p.User, p.Ticket, auditID(req.GetGroupId()), auditID(req.GetUserId()), auditID(req.GetTicket()))
	}
	pol, approver := h.s.policyOf(ctx), callerID(ctx)
	if _, ok := pol.Person(p.Requester); !ok {
		return nil, status.Errorf(codes.FailedPrecondition,
			"reveal %s cannot be approved: its requester is no longer in the policy, so it cannot be told apart from you", p.ID)
	}
	if pol.SamePerson(approver, p.Requester) {
		return nil, status.Error(codes.PermissionDenied,
			"you cannot approve your own reveal, from this certificate or another of yours: a second person must")
	}
	o := h.s.origin(ctx)
	o.RequesterName = pol.Name(p.Requester)
	a, err := h.s.cfg.State.Approve(store.WithOrigin(ctx, o), req.GetId(), approver, h.s.now())
	switch {
	case errors.Is(err, store.ErrNotFound):
		return nil, status.Errorf(codes.NotFound, "no reveal %s is waiting for approval", req.GetId())
	case errors.Is(err, store.ErrSelfApproval):
		return nil, status.Error(codes.PermissionDenied, "you cannot approve your own reveal: a second person must")
	case errors.Is(err, store.ErrExpired), errors.Is(err, store.ErrNotPending):
		return nil, status.Errorf(codes.FailedPrecondition, "reveal %s cannot be approved: %v", req.GetId(), err)
	case err != nil:
		return nil, fmt.Errorf("%w: approvals: %w", escrow.ErrUnavailable, err)
	}
	return &escrowdv1.ApproveRevealResponse{Reveal: pendingMsg(a)}, nil
}

// auditID is id if it is a valid id, for records and messages, else "-".
func auditID(id string) string {
	if bundle.ValidateID(id) != nil {
		return "-"
	}
	return id
}

func (h *securityService) GetGroup(ctx context.Context, req *escrowdv1.GetGroupRequest) (*escrowdv1.GetGroupResponse, error) {
	record(ctx).Group = req.GetGroupId()
	g, err := h.s.cfg.Escrow.Group(ctx, req.GetGroupId())
	if err != nil {
		return nil, err
	}
	return groupMsg(g), nil
}

func unixOrZero(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.Unix()
}

func groupMsg(g store.Group) *escrowdv1.GetGroupResponse {
	resp := &escrowdv1.GetGroupResponse{GroupId: g.ID, CreatedUnix: g.Created.Unix(),
		MinEscrowVersion: g.MinEscrowVersion, MinUnlockVersion: g.MinUnlockVersion}
	for _, k := range g.Escrow {
		resp.EscrowKeys = append(resp.EscrowKeys, &escrowdv1.KeyVersion{
			Version: k.Version, Suite: k.Suite, KekVersion: k.Private.KEKVersion, CreatedUnix: k.Created.Unix(),
			DestroyedUnix: unixOrZero(k.Destroyed)})
	}
	for _, k := range g.Unlock {
		resp.UnlockKeys = append(resp.UnlockKeys, &escrowdv1.KeyVersion{
			Version: k.Version, Suite: "hmac-sha256", KekVersion: k.Key.KEKVersion, CreatedUnix: k.Created.Unix(),
			DestroyedUnix: unixOrZero(k.Destroyed)})
	}
	return resp
}

func (h *securityService) ListHSMObjects(ctx context.Context, _ *escrowdv1.ListHSMObjectsRequest) (*escrowdv1.ListHSMObjectsResponse, error) {
	if h.s.cfg.Objects == nil {
		return nil, fmt.Errorf("%w: no HSM object lister configured", escrow.ErrUnsupported)
	}
	objs, err := h.s.cfg.Objects.Objects(ctx)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", escrow.ErrUnavailable, err)
	}
	resp := &escrowdv1.ListHSMObjectsResponse{}
	for _, o := range objs {
		resp.Objects = append(resp.Objects, &escrowdv1.HSMObject{
			Class: o.Class, KeyType: o.KeyType, Label: o.Label, Token: o.Token, Private: o.Private,
			Sensitive: o.Sensitive, Extractable: o.Extractable, WrapWithTrusted: o.WrapWithTrusted, Trusted: o.Trusted,
		})
	}
	return resp, nil
}
