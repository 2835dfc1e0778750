package daemon

import (
	"context"
	"fmt"

	escrowdv1 "github.com/escrowd/escrowd/api/escrowd/v1"
	"github.com/escrowd/escrowd/escrow"
	"github.com/escrowd/escrowd/escrow/bundle"
)

// recipient translates a Recipient message; field names the request field
// for error messages.
func recipient(field string, r *escrowdv1.Recipient) (escrow.Recipient, error) {
	if r == nil {
		return escrow.Recipient{}, fmt.Errorf("%w: %s is required", escrow.ErrInvalid, field)
	}
	kind, ok := recipientKinds[r.GetKind()]
	if !ok {
		return escrow.Recipient{}, fmt.Errorf("%w: %s.kind must be KIND_MEMBER or KIND_DEVICE", escrow.ErrInvalid, field)
	}
	return escrow.Recipient{Kind: kind, ID: r.GetId(), KeyVersion: r.GetKeyVersion(), Suite: r.GetSuite(), PublicKey: r.GetPublicKey()}, nil
}

func (h *syncService) RewrapToEscrow(ctx context.Context, req *escrowdv1.RewrapToEscrowRequest) (*escrowdv1.RewrapToEscrowResponse, error) {
	record(ctx).Group = req.GetGroupId()
	slot, used, err := h.s.cfg.Escrow.RewrapToEscrow(ctx, req.GetGroupId(), req.GetEscrowSlot(), req.GetEscrowKeyVersion())
	noteVersions(ctx, used)
	if err != nil {
		return nil, err
	}
	return &escrowdv1.RewrapToEscrowResponse{Slot: slot, EscrowKeyVersion: used.TargetEscrowVersion}, nil
}

// BatchRewrap audits the call as one record whose details list every
// item's reference, group, target, outcome code and, for an item the
// rules refused, why (never a slot). Each well-formed item is decided by
// the policy under its own group and target, and takes its own rate
// limits, before any item runs (admitItem).
func (h *syncService) BatchRewrap(ctx context.Context, req *escrowdv1.BatchRewrapRequest) (*escrowdv1.BatchRewrapResponse, error) {
	rec := record(ctx)
	items := make([]escrow.BatchItem, len(req.GetItems()))
	if len(items) > escrow.MaxBatch {
		return nil, fmt.Errorf("%w: items: %d items, more than %d: split the batch", escrow.ErrInvalid, len(items), escrow.MaxBatch)
	}
	targets := make([]string, len(items))
	var bad []error
	for i, it := range req.GetItems() {
		items[i] = escrow.BatchItem{Ref: it.GetReference(), Group: it.GetGroupId(), EscrowSlot: it.GetEscrowSlot()}
		if it.GetReference() != "" && bundle.ValidateID(it.GetReference()) != nil {
			return nil, fmt.Errorf("%w: items[%d].reference: printable ASCII without spaces, at most %d bytes", escrow.ErrInvalid, i, bundle.MaxIDLength)
		}
		switch t := it.GetTarget().(type) {
		case *escrowdv1.BatchRewrapItem_Recipient:
			r, err := recipient("recipient", t.Recipient)
			bad = append(bad, err)
			items[i].Recipient = &r
			targets[i] = string(r.Kind)
			if bundle.ValidateID(r.ID) == nil {
				targets[i] += "/" + r.ID
			}
		case *escrowdv1.BatchRewrapItem_Escrow:
			items[i].EscrowVersion = t.Escrow.GetKeyVersion()
			targets[i] = fmt.Sprintf("escrow:%d", items[i].EscrowVersion)
			bad = append(bad, nil)
		default:
			bad = append(bad, fmt.Errorf("%w: target: set recipient or escrow", escrow.ErrInvalid))
			targets[i] = "none"
		}
	}
	// Each well-formed item is decided on its own, in item order; a
	// refused item fails alone and counts against no limit.
	pol := h.s.policyOf(ctx)
	denials := make([]*itemDenial, len(items))
	for i, it := range req.GetItems() {
		if bad[i] != nil {
			continue
		}
		if err := bundle.ValidateID(it.GetGroupId()); err != nil {
			bad[i] = fmt.Errorf("%w: items[%d].group_id: %v", escrow.ErrInvalid, i, err)
			continue
		}
		denials[i], bad[i] = h.s.admitItem(ctx, pol, "BatchRewrap", it.GetGroupId(), batchItemTarget(it))
		if denials[i] != nil {
			h.s.cfg.Observer.ObserveDenial("BatchRewrap", denials[i].reason)
		}
	}
	// Items that are malformed or refused before any key is touched fail
	// alone; the rest go to the service.
	var valid []escrow.BatchItem
	var at []int
	for i, it := range items {
		if bad[i] == nil {
			valid = append(valid, it)
			at = append(at, i)
		}
	}
	res := make([]escrow.BatchResult, len(items))
	for i, it := range items {
		res[i] = escrow.BatchResult{Ref: it.Ref, Err: bad[i]}
	}
	if len(valid) > 0 {
		done, err := h.s.cfg.Escrow.BatchRewrap(ctx, valid)
		if err != nil {
			return nil, err
		}
		for j, r := range done {
			res[at[j]] = r
		}
	} else if len(items) == 0 {
		return nil, fmt.Errorf("%w: items: an empty batch", escrow.ErrInvalid)
	}
	resp := &escrowdv1.BatchRewrapResponse{Results: make([]*escrowdv1.BatchRewrapResult, len(res))}
	failed, denied := 0, 0
	for i, r := range res {
		out := &escrowdv1.BatchRewrapResult{Reference: r.Ref}
		code := "OK"
		if r.Err != nil {
			st := h.s.status(rec.ID, r.Err)
			out.Error = &escrowdv1.ItemError{Code: int32(st.Code()), Message: st.Message()}
			code = st.Code().String()
			failed++
		} else {
			out.Slot = r.Slot
		}
		resp.Results[i] = out
		group := "-"
		if bundle.ValidateID(items[i].Group) == nil {
			group = items[i].Group
		}
		line := fmt.Sprintf("item:%d ref:%s group:%s target:%s escrow:%d code:%s",
			i, r.Ref, group, targets[i], r.Used.EscrowVersion, code)
		if denials[i] != nil {
			line += " denied:" + denials[i].String()
			denied++
		}
		rec.Detail = append(rec.Detail, line)
	}
	rec.Detail = append(rec.Detail, fmt.Sprintf("items:%d", len(res)), fmt.Sprintf("failed:%d", failed), fmt.Sprintf("denied:%d", denied))
	return resp, nil
}

func (h *syncService) MarkUnlockCodeConsumed(ctx context.Context, req *escrowdv1.MarkUnlockCodeConsumedRequest) (*escrowdv1.MarkUnlockCodeConsumedResponse, error) {
	rec := record(ctx)
	rec.Group, rec.User = req.GetGroupId(), req.GetUserId()
	rec.Detail = append(rec.Detail, fmt.Sprintf("epoch:%d", req.GetEpoch()), fmt.Sprintf("index:%d", req.GetIndex()))
	c, err := h.s.cfg.Escrow.ConsumeCode(ctx, req.GetGroupId(), req.GetUserId(), req.GetEpoch(), req.GetIndex())
	if err != nil {
		return nil, err
	}
	return &escrowdv1.MarkUnlockCodeConsumedResponse{Epoch: c.Epoch, Codes: codeStates(c)}, nil
}

func (h *syncService) RotateGroupKey(ctx context.Context, req *escrowdv1.RotateGroupKeyRequest) (*escrowdv1.RotateGroupKeyResponse, error) {
	rec := record(ctx)
	rec.Group = req.GetGroupId()
	rot := escrow.Rotation{EscrowSlot: req.GetEscrowSlot(), OldGDKVersion: req.GetOldGdkVersion(),
		UnlockUsers: req.GetUnlockUserIds(), CodesPerUser: int(req.GetCodesPerUser())}
	for i, r := range req.GetRecipients() {
		rc, err := recipient(fmt.Sprintf("recipients[%d]", i), r)
		if err != nil {
			return nil, err
		}
		rot.Recipients = append(rot.Recipients, rc)
		if bundle.ValidateID(rc.ID) == nil {
			rec.Detail = append(rec.Detail, fmt.Sprintf("recipient:%s/%s", rc.Kind, rc.ID))
		}
	}
	out, err := h.s.cfg.Escrow.Rotate(h.s.withOrigin(ctx), req.GetGroupId(), rot)
	noteVersions(ctx, out.Used)
	if err != nil {
		return nil, err
	}
	rec.Detail = append(rec.Detail, fmt.Sprintf("gdk:%d->%d", req.GetOldGdkVersion(), out.GDKVersion))
	resp := &escrowdv1.RotateGroupKeyResponse{GdkVersion: out.GDKVersion, EscrowSlot: out.EscrowSlot,
		EscrowKeyVersion: out.Used.TargetEscrowVersion, RecipientSlots: out.Slots, ChainSlot: out.Chain, GdkCommitment: out.Commit}
	for _, u := range out.Unlock {
		rec.Detail = append(rec.Detail, fmt.Sprintf("unlock:%s epoch:%d codes:%d", u.User, u.Epoch, len(u.Slots)))
		resp.Unlock = append(resp.Unlock, &escrowdv1.UserUnlockSlots{UserId: u.User, Epoch: u.Epoch, Slots: u.Slots})
	}
	return resp, nil
}
