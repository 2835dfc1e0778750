package tracing

import (
	"context"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/escrowd/escrowd/store"
)

// Store returns st with a span around every call that takes a context,
// named store.METHOD. Close passes through.
func Store(st store.Store, tp trace.TracerProvider) store.Store {
	return tracedStore{Store: st, t: tp.Tracer(scope)}
}

type tracedStore struct {
	store.Store
	t trace.Tracer
}

var _ store.Store = tracedStore{}

func (s tracedStore) CreateGroup(ctx context.Context, g store.Group) error {
	ctx, span := s.t.Start(ctx, "store.CreateGroup")
	err := s.Store.CreateGroup(ctx, g)
	return end(span, err)
}

func (s tracedStore) Group(ctx context.Context, id string) (store.Group, error) {
	ctx, span := s.t.Start(ctx, "store.Group")
	v, err := s.Store.Group(ctx, id)
	return v, end(span, err)
}

func (s tracedStore) Codes(ctx context.Context, group string, user string) (store.Codes, error) {
	ctx, span := s.t.Start(ctx, "store.Codes")
	v, err := s.Store.Codes(ctx, group, user)
	return v, end(span, err)
}

func (s tracedStore) StartEpoch(ctx context.Context, group string, user string, prevEpoch uint32, unlockVersion uint32, n int, nonce []byte) (store.Codes, error) {
	ctx, span := s.t.Start(ctx, "store.StartEpoch")
	v, err := s.Store.StartEpoch(ctx, group, user, prevEpoch, unlockVersion, n, nonce)
	return v, end(span, err)
}

func (s tracedStore) ClaimCode(ctx context.Context, group string, user string) (int, store.Codes, error) {
	ctx, span := s.t.Start(ctx, "store.ClaimCode")
	a, b, err := s.Store.ClaimCode(ctx, group, user)
	return a, b, end(span, err)
}

func (s tracedStore) RecordGDKRotation(ctx context.Context, r store.GDKRotation) ([]store.Codes, error) {
	ctx, span := s.t.Start(ctx, "store.RecordGDKRotation")
	v, err := s.Store.RecordGDKRotation(ctx, r)
	return v, end(span, err)
}

func (s tracedStore) TakeRate(ctx context.Context, limits []store.RateLimit) (int, error) {
	ctx, span := s.t.Start(ctx, "store.TakeRate")
	v, err := s.Store.TakeRate(ctx, limits)
	return v, end(span, err)
}

func (s tracedStore) CreateApproval(ctx context.Context, a store.Approval) error {
	ctx, span := s.t.Start(ctx, "store.CreateApproval")
	err := s.Store.CreateApproval(ctx, a)
	return end(span, err)
}

func (s tracedStore) Approval(ctx context.Context, id string) (store.Approval, error) {
	ctx, span := s.t.Start(ctx, "store.Approval")
	v, err := s.Store.Approval(ctx, id)
	return v, end(span, err)
}

func (s tracedStore) Approve(ctx context.Context, id string, approver string, now time.Time) (store.Approval, error) {
	ctx, span := s.t.Start(ctx, "store.Approve")
	v, err := s.Store.Approve(ctx, id, approver, now)
	return v, end(span, err)
}

func (s tracedStore) PendingApprovals(ctx context.Context, now time.Time) ([]store.Approval, error) {
	ctx, span := s.t.Start(ctx, "store.PendingApprovals")
	v, err := s.Store.PendingApprovals(ctx, now)
	return v, end(span, err)
}

func (s tracedStore) UpdateGroup(ctx context.Context, id string, fn func(*store.Group) error) (store.Group, error) {
	ctx, span := s.t.Start(ctx, "store.UpdateGroup")
	v, err := s.Store.UpdateGroup(ctx, id, fn)
	return v, end(span, err)
}

func (s tracedStore) ListGroups(ctx context.Context, after string, limit int) ([]store.Group, error) {
	ctx, span := s.t.Start(ctx, "store.ListGroups")
	v, err := s.Store.ListGroups(ctx, after, limit)
	return v, end(span, err)
}

func (s tracedStore) CountGroups(ctx context.Context) (int64, error) {
	ctx, span := s.t.Start(ctx, "store.CountGroups")
	v, err := s.Store.CountGroups(ctx)
	return v, end(span, err)
}

func (s tracedStore) CreateJob(ctx context.Context, j store.Job) error {
	ctx, span := s.t.Start(ctx, "store.CreateJob")
	err := s.Store.CreateJob(ctx, j)
	return end(span, err)
}

func (s tracedStore) Job(ctx context.Context, id string) (store.Job, error) {
	ctx, span := s.t.Start(ctx, "store.Job")
	v, err := s.Store.Job(ctx, id)
	return v, end(span, err)
}

func (s tracedStore) Jobs(ctx context.Context) ([]store.Job, error) {
	ctx, span := s.t.Start(ctx, "store.Jobs")
	v, err := s.Store.Jobs(ctx)
	return v, end(span, err)
}

func (s tracedStore) UpdateJob(ctx context.Context, id string, fn func(*store.Job) error) (store.Job, error) {
	ctx, span := s.t.Start(ctx, "store.UpdateJob")
	v, err := s.Store.UpdateJob(ctx, id, fn)
	return v, end(span, err)
}

func (s tracedStore) CommitBatch(ctx context.Context, b store.Batch) (store.Job, error) {
	ctx, span := s.t.Start(ctx, "store.CommitBatch")
	v, err := s.Store.CommitBatch(ctx, b)
	return v, end(span, err)
}

func (s tracedStore) ConsumeCode(ctx context.Context, group string, user string, epoch uint32, index int) (store.Codes, error) {
	ctx, span := s.t.Start(ctx, "store.ConsumeCode")
	v, err := s.Store.ConsumeCode(ctx, group, user, epoch, index)
	return v, end(span, err)
}

func (s tracedStore) Events(ctx context.Context, after uint64, limit int) (store.EventPage, error) {
	ctx, span := s.t.Start(ctx, "store.Events")
	v, err := s.Store.Events(ctx, after, limit)
	return v, end(span, err)
}

func (s tracedStore) PruneEvents(ctx context.Context, before time.Time, max int) (int, error) {
	ctx, span := s.t.Start(ctx, "store.PruneEvents")
	v, err := s.Store.PruneEvents(ctx, before, max)
	return v, end(span, err)
}
