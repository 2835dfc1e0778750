// Package escrowdclient implements backend.Escrowd with escrowd's Go client
// package (github.com/escrowd/escrowd/client): mutual TLS as the
// sync-backend identity, retries of the calls that are safe to repeat,
// and typed errors. It is the only file of the example that sees escrowd's
// API messages.
package escrowdclient

import (
	"context"
	"errors"
	"fmt"
	"time"

	escrowdv1 "github.com/escrowd/escrowd/api/escrowd/v1"
	"github.com/escrowd/escrowd/client"
	"github.com/escrowd/escrowd/examples/syncbackend/backend"
)

// Client is a connection to escrowd.
type Client struct {
	c *client.Client
}

var _ backend.Escrowd = (*Client)(nil)

// Dial connects to escrowd at addr with the client certificate and key in
// certFile and keyFile, trusting the CAs in caFile.
func Dial(addr, caFile, certFile, keyFile string) (*Client, error) {
	c, err := client.Dial(context.Background(), client.Config{Addr: addr, CAFile: caFile, CertFile: certFile, KeyFile: keyFile})
	if err != nil {
		return nil, fmt.Errorf("failed to dial escrowd at %s: %w", addr, err)
	}
	return &Client{c: c}, nil
}

func (c *Client) Close() error { return c.c.Close() }

// wrap maps the client's errors to the backend's sentinels, keeping the
// daemon's message: the backend decides only on those four.
func wrap(op string, err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("%s: %w: %w", op, sentinel(err), err)
}

func sentinel(err error) error {
	switch {
	case errors.Is(err, client.ErrExists):
		return backend.ErrEscrowdExists
	case errors.Is(err, client.ErrNotFound):
		return backend.ErrEscrowdNotFound
	case errors.Is(err, client.ErrUnavailable), errors.Is(err, client.ErrRateLimited), errors.Is(err, client.ErrAborted),
		errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled):
		return backend.ErrEscrowdUnavailable
	}
	return backend.ErrEscrowdRefused
}

func recipient(r backend.Recipient) *escrowdv1.Recipient {
	kind := escrowdv1.Recipient_KIND_MEMBER
	if r.Kind == backend.Device {
		kind = escrowdv1.Recipient_KIND_DEVICE
	}
	return &escrowdv1.Recipient{Kind: kind, Id: r.ID, KeyVersion: r.KeyVersion, Suite: r.Suite, PublicKey: r.PublicKey}
}

func unlock(u []*escrowdv1.UserUnlockSlots) []backend.UnlockEpoch {
	var out []backend.UnlockEpoch
	for _, e := range u {
		out = append(out, backend.UnlockEpoch{User: e.GetUserId(), Epoch: e.GetEpoch(), Slots: e.GetSlots()})
	}
	return out
}

func (c *Client) ProvisionGroup(ctx context.Context, group string) (backend.EscrowKey, error) {
	r, err := c.c.ProvisionGroup(ctx, &escrowdv1.ProvisionGroupRequest{GroupId: group})
	if err != nil {
		return backend.EscrowKey{}, wrap("ProvisionGroup", err)
	}
	k := r.GetEscrowKey()
	return backend.EscrowKey{Version: k.GetVersion(), Suite: k.GetSuite(), PublicKey: k.GetPublicKey()}, nil
}

func (c *Client) Rewrap(ctx context.Context, group string, escrowSlot []byte, to backend.Recipient) ([]byte, error) {
	r, err := c.c.Rewrap(ctx, &escrowdv1.RewrapRequest{GroupId: group, EscrowSlot: escrowSlot, Recipient: recipient(to)})
	if err != nil {
		return nil, wrap("Rewrap", err)
	}
	return r.GetSlot(), nil
}

func (c *Client) IssueUnlockCodes(ctx context.Context, group, user string, escrowSlot []byte) (backend.UnlockEpoch, error) {
	r, err := c.c.IssueUnlockCodes(ctx, &escrowdv1.IssueUnlockCodesRequest{GroupId: group, UserId: user, EscrowSlot: escrowSlot})
	if err != nil {
		return backend.UnlockEpoch{}, wrap("IssueUnlockCodes", err)
	}
	return backend.UnlockEpoch{User: user, Epoch: r.GetEpoch(), Slots: r.GetSlots()}, nil
}

func (c *Client) MarkUnlockCodeConsumed(ctx context.Context, group, user string, epoch, index uint32) error {
	_, err := c.c.MarkUnlockCodeConsumed(ctx, &escrowdv1.MarkUnlockCodeConsumedRequest{GroupId: group, UserId: user, Epoch: epoch, Index: index})
	return wrap("MarkUnlockCodeConsumed", err)
}

func (c *Client) RotateGroupKey(ctx context.Context, q backend.RotateRequest) (backend.Rotation, error) {
	req := &escrowdv1.RotateGroupKeyRequest{GroupId: q.Group, EscrowSlot: q.EscrowSlot, OldGdkVersion: q.OldGDKVersion, UnlockUserIds: q.UnlockUsers}
	for _, r := range q.Recipients {
		req.Recipients = append(req.Recipients, recipient(r))
	}
	r, err := c.c.RotateGroupKey(ctx, req)
	if err != nil {
		return backend.Rotation{}, wrap("RotateGroupKey", err)
	}
	return backend.Rotation{
		GDKVersion: r.GetGdkVersion(), EscrowSlot: r.GetEscrowSlot(), EscrowKeyVersion: r.GetEscrowKeyVersion(),
		RecipientSlots: r.GetRecipientSlots(), ChainSlot: r.GetChainSlot(), Unlock: unlock(r.GetUnlock()), Commitment: r.GetGdkCommitment(),
	}, nil
}

func (c *Client) RewrapToEscrow(ctx context.Context, group string, escrowSlot []byte) ([]byte, uint32, error) {
	r, err := c.c.RewrapToEscrow(ctx, &escrowdv1.RewrapToEscrowRequest{GroupId: group, EscrowSlot: escrowSlot})
	if err != nil {
		return nil, 0, wrap("RewrapToEscrow", err)
	}
	return r.GetSlot(), r.GetEscrowKeyVersion(), nil
}

func (c *Client) BatchRewrap(ctx context.Context, items []backend.BatchItem) ([]backend.BatchResult, error) {
	req := &escrowdv1.BatchRewrapRequest{}
	for _, it := range items {
		bi := &escrowdv1.BatchRewrapItem{Reference: it.Ref, GroupId: it.Group, EscrowSlot: it.EscrowSlot}
		if it.To != nil {
			bi.Target = &escrowdv1.BatchRewrapItem_Recipient{Recipient: recipient(*it.To)}
		} else {
			bi.Target = &escrowdv1.BatchRewrapItem_Escrow{Escrow: &escrowdv1.EscrowTarget{}}
		}
		req.Items = append(req.Items, bi)
	}
	r, err := c.c.BatchRewrap(ctx, req)
	if err != nil {
		return nil, wrap("BatchRewrap", err)
	}
	if len(r.GetResults()) != len(items) {
		return nil, fmt.Errorf("BatchRewrap: %w: %d results for %d items", backend.ErrEscrowdRefused, len(r.GetResults()), len(items))
	}
	out := make([]backend.BatchResult, len(items))
	for i, res := range r.GetResults() {
		out[i] = backend.BatchResult{Ref: res.GetReference(), Slot: res.GetSlot()}
		if res.GetError() == nil && len(res.GetSlot()) == 0 {
			out[i].Err = errors.New("BatchRewrap: an item with neither slot nor error")
		}
	}
	for _, e := range client.BatchErrors(r) {
		var be *client.BatchItemError
		if errors.As(e, &be) && be.Index < len(out) {
			out[be.Index].Err = wrap("BatchRewrap item "+be.Reference, e)
		}
	}
	return out, nil
}

func (c *Client) ListEvents(ctx context.Context, after uint64, limit int) (backend.EventPage, error) {
	r, err := c.c.ListEvents(ctx, &escrowdv1.ListEventsRequest{After: after, Limit: uint32(limit)})
	if err != nil {
		return backend.EventPage{}, wrap("ListEvents", err)
	}
	p := backend.EventPage{Next: r.GetNext(), Missed: r.GetMissed(), Last: r.GetLast()}
	for _, e := range r.GetEvents() {
		p.Events = append(p.Events, backend.Event{
			Sequence: e.GetSequence(), Time: time.Unix(e.GetTimeUnix(), 0).UTC(), Kind: e.GetKind(), Group: e.GetGroupId(),
			User: e.GetUserId(), Epoch: e.GetEpoch(), Index: e.GetIndex(), Ticket: e.GetTicket(), EscrowKeyVersion: e.GetEscrowKeyVersion(),
		})
	}
	return p, nil
}
