// Package grpcescrowd implements backend.Escrowd over escrowd's gRPC API,
// with mutual TLS as the sync-backend identity. It is the only file of the
// example that sees gRPC types: moving to escrowd's Go client package is a
// change of this file alone.
package grpcescrowd

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	escrowdv1 "github.com/escrowd/escrowd/api/escrowd/v1"
	"github.com/escrowd/escrowd/examples/syncbackend/backend"
)

// Client is a connection to escrowd.
type Client struct {
	conn *grpc.ClientConn
	sync escrowdv1.SyncServiceClient
}

var _ backend.Escrowd = (*Client)(nil)

// Dial connects to escrowd at addr with the client certificate and key in
// certFile and keyFile, trusting the CAs in caFile.
func Dial(addr, caFile, certFile, keyFile string) (*Client, error) {
	pem, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("failed to read the escrowd CA: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("no certificate in %s", caFile)
	}
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("failed to load the client certificate: %w", err)
	}
	cfg := &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS13}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	if err != nil {
		return nil, fmt.Errorf("failed to dial escrowd at %s: %w", addr, err)
	}
	return &Client{conn: conn, sync: escrowdv1.NewSyncServiceClient(conn)}, nil
}

func (c *Client) Close() error { return c.conn.Close() }

// wrap maps a gRPC status to the backend's sentinels, keeping the message.
func wrap(op string, err error) error {
	if err == nil {
		return nil
	}
	st := status.Convert(err)
	return fmt.Errorf("%s: %w: %s: %s", op, sentinel(st.Code()), st.Code(), st.Message())
}

func sentinel(c codes.Code) error {
	switch c {
	case codes.AlreadyExists:
		return backend.ErrEscrowdExists
	case codes.NotFound:
		return backend.ErrEscrowdNotFound
	case codes.Unavailable, codes.DeadlineExceeded, codes.ResourceExhausted, codes.Aborted, codes.Canceled:
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
	r, err := c.sync.ProvisionGroup(ctx, &escrowdv1.ProvisionGroupRequest{GroupId: group})
	if err != nil {
		return backend.EscrowKey{}, wrap("ProvisionGroup", err)
	}
	k := r.GetEscrowKey()
	return backend.EscrowKey{Version: k.GetVersion(), Suite: k.GetSuite(), PublicKey: k.GetPublicKey()}, nil
}

func (c *Client) Rewrap(ctx context.Context, group string, escrowSlot []byte, to backend.Recipient) ([]byte, error) {
	r, err := c.sync.Rewrap(ctx, &escrowdv1.RewrapRequest{GroupId: group, EscrowSlot: escrowSlot, Recipient: recipient(to)})
	if err != nil {
		return nil, wrap("Rewrap", err)
	}
	return r.GetSlot(), nil
}

func (c *Client) IssueUnlockCodes(ctx context.Context, group, user string, escrowSlot []byte) (backend.UnlockEpoch, error) {
	r, err := c.sync.IssueUnlockCodes(ctx, &escrowdv1.IssueUnlockCodesRequest{GroupId: group, UserId: user, EscrowSlot: escrowSlot})
	if err != nil {
		return backend.UnlockEpoch{}, wrap("IssueUnlockCodes", err)
	}
	return backend.UnlockEpoch{User: user, Epoch: r.GetEpoch(), Slots: r.GetSlots()}, nil
}

func (c *Client) MarkUnlockCodeConsumed(ctx context.Context, group, user string, epoch, index uint32) error {
	_, err := c.sync.MarkUnlockCodeConsumed(ctx, &escrowdv1.MarkUnlockCodeConsumedRequest{GroupId: group, UserId: user, Epoch: epoch, Index: index})
	return wrap("MarkUnlockCodeConsumed", err)
}

func (c *Client) RotateGroupKey(ctx context.Context, q backend.RotateRequest) (backend.Rotation, error) {
	req := &escrowdv1.RotateGroupKeyRequest{GroupId: q.Group, EscrowSlot: q.EscrowSlot, OldGdkVersion: q.OldGDKVersion, UnlockUserIds: q.UnlockUsers}
	for _, r := range q.Recipients {
		req.Recipients = append(req.Recipients, recipient(r))
	}
	r, err := c.sync.RotateGroupKey(ctx, req)
	if err != nil {
		return backend.Rotation{}, wrap("RotateGroupKey", err)
	}
	return backend.Rotation{
		GDKVersion: r.GetGdkVersion(), EscrowSlot: r.GetEscrowSlot(), EscrowKeyVersion: r.GetEscrowKeyVersion(),
		RecipientSlots: r.GetRecipientSlots(), ChainSlot: r.GetChainSlot(), Unlock: unlock(r.GetUnlock()), Commitment: r.GetGdkCommitment(),
	}, nil
}

func (c *Client) RewrapToEscrow(ctx context.Context, group string, escrowSlot []byte) ([]byte, uint32, error) {
	r, err := c.sync.RewrapToEscrow(ctx, &escrowdv1.RewrapToEscrowRequest{GroupId: group, EscrowSlot: escrowSlot})
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
	r, err := c.sync.BatchRewrap(ctx, req)
	if err != nil {
		return nil, wrap("BatchRewrap", err)
	}
	if len(r.GetResults()) != len(items) {
		return nil, fmt.Errorf("BatchRewrap: %w: %d results for %d items", backend.ErrEscrowdRefused, len(r.GetResults()), len(items))
	}
	out := make([]backend.BatchResult, len(items))
	for i, res := range r.GetResults() {
		out[i] = backend.BatchResult{Ref: res.GetReference(), Slot: res.GetSlot()}
		if e := res.GetError(); e != nil {
			out[i].Err = wrap("BatchRewrap item "+res.GetReference(), status.Error(codes.Code(e.GetCode()), e.GetMessage()))
		} else if len(res.GetSlot()) == 0 {
			out[i].Err = errors.New("BatchRewrap: an item with neither slot nor error")
		}
	}
	return out, nil
}

func (c *Client) ListEvents(ctx context.Context, after uint64, limit int) (backend.EventPage, error) {
	r, err := c.sync.ListEvents(ctx, &escrowdv1.ListEventsRequest{After: after, Limit: uint32(limit)})
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
