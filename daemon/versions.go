package daemon

import (
	"context"
	"fmt"

	escrowdv1 "github.com/escrowd/escrowd/api/escrowd/v1"
	"github.com/escrowd/escrowd/escrow"
	"github.com/escrowd/escrowd/store"
)

// Handlers of key versions and jobs: thin, as the others.

func (s *Server) versions() (Versions, error) {
	if s.cfg.Versions == nil {
		return nil, fmt.Errorf("%w: key versions are not configured on this daemon", escrow.ErrPrecondition)
	}
	return s.cfg.Versions, nil
}

func (s *Server) jobs() (Jobs, error) {
	if s.cfg.Jobs == nil {
		return nil, fmt.Errorf("%w: jobs are not configured on this daemon", escrow.ErrPrecondition)
	}
	return s.cfg.Jobs, nil
}

func (h *securityService) RotateGroupKeys(ctx context.Context, req *escrowdv1.RotateGroupKeysRequest) (*escrowdv1.RotateGroupKeysResponse, error) {
	rec := record(ctx)
	rec.Group = req.GetGroupId()
	v, err := h.s.versions()
	if err != nil {
		return nil, err
	}
	g, err := v.RotateGroup(h.s.withOrigin(ctx), req.GetGroupId(), req.GetEscrow(), req.GetUnlock())
	if err != nil {
		return nil, err
	}
	e, _ := g.LatestEscrow()
	u, _ := g.LatestUnlock()
	noteVersions(ctx, escrow.Used{EscrowVersion: e.Version, UnlockVersion: u.Version})
	return &escrowdv1.RotateGroupKeysResponse{Group: groupMsg(g)}, nil
}

func (h *securityService) SetMinDecryptionVersion(ctx context.Context, req *escrowdv1.SetMinDecryptionVersionRequest) (*escrowdv1.SetMinDecryptionVersionResponse, error) {
	rec := record(ctx)
	rec.Group = req.GetGroupId()
	rec.Detail = append(rec.Detail, fmt.Sprintf("min_escrow:%d", req.GetMinEscrowVersion()), fmt.Sprintf("min_unlock:%d", req.GetMinUnlockVersion()))
	v, err := h.s.versions()
	if err != nil {
		return nil, err
	}
	g, err := v.SetMinVersions(ctx, req.GetGroupId(), req.GetMinEscrowVersion(), req.GetMinUnlockVersion())
	if err != nil {
		return nil, err
	}
	return &escrowdv1.SetMinDecryptionVersionResponse{Group: groupMsg(g)}, nil
}

func (h *securityService) DestroyKeyVersion(ctx context.Context, req *escrowdv1.DestroyKeyVersionRequest) (*escrowdv1.DestroyKeyVersionResponse, error) {
	rec := record(ctx)
	rec.Group = req.GetGroupId()
	kind := escrow.KeyKind(req.GetKind())
	if kind != escrow.KindEscrow && kind != escrow.KindUnlock {
		return nil, fmt.Errorf("%w: kind must be escrow or unlock", escrow.ErrInvalid)
	}
	rec.KeyVersions = append(rec.KeyVersions, fmt.Sprintf("%s:%d", kind, req.GetVersion()))
	rec.Detail = append(rec.Detail, "destroy")
	v, err := h.s.versions()
	if err != nil {
		return nil, err
	}
	g, err := v.DestroyVersion(ctx, req.GetGroupId(), kind, req.GetVersion())
	if err != nil {
		return nil, err
	}
	return &escrowdv1.DestroyKeyVersionResponse{Group: groupMsg(g)}, nil
}

func jobMsg(j store.Job) *escrowdv1.Job {
	return &escrowdv1.Job{
		Id: j.ID, Kind: j.Kind, Params: j.Params, State: j.State, Pass: uint32(j.Pass),
		Done: j.Done, Total: j.Total, Changed: j.Changed, Owner: j.Owner, LeaseUntilUnix: unixOrZero(j.LeaseUntil),
		Error: j.Error, CreatedUnix: unixOrZero(j.Created), UpdatedUnix: unixOrZero(j.Updated),
		RunStartedUnix: unixOrZero(j.RunStarted), RunDone: j.RunDone,
	}
}

func (h *securityService) StartJob(ctx context.Context, req *escrowdv1.StartJobRequest) (*escrowdv1.StartJobResponse, error) {
	rec := record(ctx)
	rec.Detail = append(rec.Detail, "job:"+req.GetKind())
	js, err := h.s.jobs()
	if err != nil {
		return nil, err
	}
	j, err := js.Start(ctx, req.GetKind(), req.GetParams())
	if err != nil {
		return nil, err
	}
	rec.Detail = append(rec.Detail, "job_id:"+j.ID)
	return &escrowdv1.StartJobResponse{Job: jobMsg(j)}, nil
}

func (h *securityService) ListJobs(ctx context.Context, _ *escrowdv1.ListJobsRequest) (*escrowdv1.ListJobsResponse, error) {
	js, err := h.s.jobs()
	if err != nil {
		return nil, err
	}
	all, err := js.Jobs(ctx)
	if err != nil {
		return nil, fmt.Errorf("%w: store: %w", escrow.ErrUnavailable, err)
	}
	resp := &escrowdv1.ListJobsResponse{}
	for _, j := range all {
		resp.Jobs = append(resp.Jobs, jobMsg(j))
	}
	return resp, nil
}

func (h *securityService) CancelJob(ctx context.Context, req *escrowdv1.CancelJobRequest) (*escrowdv1.CancelJobResponse, error) {
	record(ctx).Detail = append(record(ctx).Detail, "job_id:"+req.GetId())
	js, err := h.s.jobs()
	if err != nil {
		return nil, err
	}
	j, err := js.Cancel(ctx, req.GetId())
	if err != nil {
		return nil, err
	}
	return &escrowdv1.CancelJobResponse{Job: jobMsg(j)}, nil
}

func (h *securityService) DestroyKEK(ctx context.Context, req *escrowdv1.DestroyKEKRequest) (*escrowdv1.DestroyKEKResponse, error) {
	record(ctx).KeyVersions = append(record(ctx).KeyVersions, fmt.Sprintf("kek:%d", req.GetVersion()))
	js, err := h.s.jobs()
	if err != nil {
		return nil, err
	}
	if err := js.DestroyKEK(ctx, req.GetVersion()); err != nil {
		return nil, err
	}
	return &escrowdv1.DestroyKEKResponse{Version: req.GetVersion()}, nil
}
