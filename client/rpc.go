// One method per RPC; the idempotent table decides which are retried.

package client

import (
	"context"

	"google.golang.org/grpc"

	escrowdv1 "github.com/escrowd/escrowd/api/escrowd/v1"
)

// idempotent names the RPCs that are retried (see the package doc).
var idempotent = map[string]bool{
	"ProvisionGroup":          false,
	"GetEscrowKey":            true,
	"Rewrap":                  true,
	"IssueUnlockCodes":        false,
	"RewrapToEscrow":          true,
	"BatchRewrap":             true,
	"MarkUnlockCodeConsumed":  true,
	"RotateGroupKey":          false,
	"ListEvents":              true,
	"RevealUnlockCode":        false,
	"ListUnlockCodes":         true,
	"ListPendingReveals":      true,
	"ApproveReveal":           false,
	"GetGroup":                true,
	"ListHSMObjects":          true,
	"RotateGroupKeys":         false,
	"SetMinDecryptionVersion": true,
	"DestroyKeyVersion":       false,
	"StartJob":                false,
	"ListJobs":                true,
	"CancelJob":               false,
	"DestroyKEK":              false,
}

// ProvisionGroup generates a group's keys in the HSM. Not idempotent: a second call is AlreadyExists.
func (c *Client) ProvisionGroup(ctx context.Context, req *escrowdv1.ProvisionGroupRequest, opts ...CallOption) (*escrowdv1.ProvisionGroupResponse, error) {
	var resp *escrowdv1.ProvisionGroupResponse
	err := c.invoke(ctx, "ProvisionGroup", false, opts, func(ctx context.Context, o ...grpc.CallOption) (err error) {
		resp, err = c.sync.ProvisionGroup(ctx, req, o...)
		return err
	})
	if err != nil {
		return nil, err
	}
	return resp, nil
}

// GetEscrowKey returns the group's newest escrow public key.
func (c *Client) GetEscrowKey(ctx context.Context, req *escrowdv1.GetEscrowKeyRequest, opts ...CallOption) (*escrowdv1.GetEscrowKeyResponse, error) {
	var resp *escrowdv1.GetEscrowKeyResponse
	err := c.invoke(ctx, "GetEscrowKey", true, opts, func(ctx context.Context, o ...grpc.CallOption) (err error) {
		resp, err = c.sync.GetEscrowKey(ctx, req, o...)
		return err
	})
	if err != nil {
		return nil, err
	}
	return resp, nil
}

// Rewrap wraps an escrow slot's group data key to a member or device key. Idempotent: it changes no stored state, and a repeat gives another slot of the same key.
func (c *Client) Rewrap(ctx context.Context, req *escrowdv1.RewrapRequest, opts ...CallOption) (*escrowdv1.RewrapResponse, error) {
	var resp *escrowdv1.RewrapResponse
	err := c.invoke(ctx, "Rewrap", true, opts, func(ctx context.Context, o ...grpc.CallOption) (err error) {
		resp, err = c.sync.Rewrap(ctx, req, o...)
		return err
	})
	if err != nil {
		return nil, err
	}
	return resp, nil
}

// IssueUnlockCodes starts a new unlock-code epoch. Not idempotent: each call kills the epoch before it.
func (c *Client) IssueUnlockCodes(ctx context.Context, req *escrowdv1.IssueUnlockCodesRequest, opts ...CallOption) (*escrowdv1.IssueUnlockCodesResponse, error) {
	var resp *escrowdv1.IssueUnlockCodesResponse
	err := c.invoke(ctx, "IssueUnlockCodes", false, opts, func(ctx context.Context, o ...grpc.CallOption) (err error) {
		resp, err = c.sync.IssueUnlockCodes(ctx, req, o...)
		return err
	})
	if err != nil {
		return nil, err
	}
	return resp, nil
}

// RewrapToEscrow seals an escrow slot's group data key to the newest escrow key version. Idempotent, as Rewrap.
func (c *Client) RewrapToEscrow(ctx context.Context, req *escrowdv1.RewrapToEscrowRequest, opts ...CallOption) (*escrowdv1.RewrapToEscrowResponse, error) {
	var resp *escrowdv1.RewrapToEscrowResponse
	err := c.invoke(ctx, "RewrapToEscrow", true, opts, func(ctx context.Context, o ...grpc.CallOption) (err error) {
		resp, err = c.sync.RewrapToEscrow(ctx, req, o...)
		return err
	})
	if err != nil {
		return nil, err
	}
	return resp, nil
}

// BatchRewrap runs up to 256 re-wraps. Idempotent, as Rewrap. An item's failure is in its result, not the call's error: see BatchErrors.
func (c *Client) BatchRewrap(ctx context.Context, req *escrowdv1.BatchRewrapRequest, opts ...CallOption) (*escrowdv1.BatchRewrapResponse, error) {
	var resp *escrowdv1.BatchRewrapResponse
	err := c.invoke(ctx, "BatchRewrap", true, opts, func(ctx context.Context, o ...grpc.CallOption) (err error) {
		resp, err = c.sync.BatchRewrap(ctx, req, o...)
		return err
	})
	if err != nil {
		return nil, err
	}
	return resp, nil
}

// MarkUnlockCodeConsumed records that a device used a revealed code. Idempotent by contract.
func (c *Client) MarkUnlockCodeConsumed(ctx context.Context, req *escrowdv1.MarkUnlockCodeConsumedRequest, opts ...CallOption) (*escrowdv1.MarkUnlockCodeConsumedResponse, error) {
	var resp *escrowdv1.MarkUnlockCodeConsumedResponse
	err := c.invoke(ctx, "MarkUnlockCodeConsumed", true, opts, func(ctx context.Context, o ...grpc.CallOption) (err error) {
		resp, err = c.sync.MarkUnlockCodeConsumed(ctx, req, o...)
		return err
	})
	if err != nil {
		return nil, err
	}
	return resp, nil
}

// RotateGroupKey makes a new group data key. Not idempotent: each call makes another key and new epochs.
func (c *Client) RotateGroupKey(ctx context.Context, req *escrowdv1.RotateGroupKeyRequest, opts ...CallOption) (*escrowdv1.RotateGroupKeyResponse, error) {
	var resp *escrowdv1.RotateGroupKeyResponse
	err := c.invoke(ctx, "RotateGroupKey", false, opts, func(ctx context.Context, o ...grpc.CallOption) (err error) {
		resp, err = c.sync.RotateGroupKey(ctx, req, o...)
		return err
	})
	if err != nil {
		return nil, err
	}
	return resp, nil
}

// ListEvents pages through the event feed.
func (c *Client) ListEvents(ctx context.Context, req *escrowdv1.ListEventsRequest, opts ...CallOption) (*escrowdv1.ListEventsResponse, error) {
	var resp *escrowdv1.ListEventsResponse
	err := c.invoke(ctx, "ListEvents", true, opts, func(ctx context.Context, o ...grpc.CallOption) (err error) {
		resp, err = c.sync.ListEvents(ctx, req, o...)
		return err
	})
	if err != nil {
		return nil, err
	}
	return resp, nil
}

// RevealUnlockCode reveals the user's next code. Not idempotent: every call spends a code, and an UNAVAILABLE answer may come after the code was spent (burnt) — never retried.
func (c *Client) RevealUnlockCode(ctx context.Context, req *escrowdv1.RevealUnlockCodeRequest, opts ...CallOption) (*escrowdv1.RevealUnlockCodeResponse, error) {
	var resp *escrowdv1.RevealUnlockCodeResponse
	err := c.invoke(ctx, "RevealUnlockCode", false, opts, func(ctx context.Context, o ...grpc.CallOption) (err error) {
		resp, err = c.support.RevealUnlockCode(ctx, req, o...)
		return err
	})
	if err != nil {
		return nil, err
	}
	return resp, nil
}

// ListUnlockCodes reports the state of a user's codes, never the codes.
func (c *Client) ListUnlockCodes(ctx context.Context, req *escrowdv1.ListUnlockCodesRequest, opts ...CallOption) (*escrowdv1.ListUnlockCodesResponse, error) {
	var resp *escrowdv1.ListUnlockCodesResponse
	err := c.invoke(ctx, "ListUnlockCodes", true, opts, func(ctx context.Context, o ...grpc.CallOption) (err error) {
		resp, err = c.support.ListUnlockCodes(ctx, req, o...)
		return err
	})
	if err != nil {
		return nil, err
	}
	return resp, nil
}

// ListPendingReveals lists the reveals waiting for a second technician.
func (c *Client) ListPendingReveals(ctx context.Context, req *escrowdv1.ListPendingRevealsRequest, opts ...CallOption) (*escrowdv1.ListPendingRevealsResponse, error) {
	var resp *escrowdv1.ListPendingRevealsResponse
	err := c.invoke(ctx, "ListPendingReveals", true, opts, func(ctx context.Context, o ...grpc.CallOption) (err error) {
		resp, err = c.support.ListPendingReveals(ctx, req, o...)
		return err
	})
	if err != nil {
		return nil, err
	}
	return resp, nil
}

// ApproveReveal approves another person's pending reveal. Not idempotent: a second approval is refused.
func (c *Client) ApproveReveal(ctx context.Context, req *escrowdv1.ApproveRevealRequest, opts ...CallOption) (*escrowdv1.ApproveRevealResponse, error) {
	var resp *escrowdv1.ApproveRevealResponse
	err := c.invoke(ctx, "ApproveReveal", false, opts, func(ctx context.Context, o ...grpc.CallOption) (err error) {
		resp, err = c.support.ApproveReveal(ctx, req, o...)
		return err
	})
	if err != nil {
		return nil, err
	}
	return resp, nil
}

// GetGroup reports a group's key versions.
func (c *Client) GetGroup(ctx context.Context, req *escrowdv1.GetGroupRequest, opts ...CallOption) (*escrowdv1.GetGroupResponse, error) {
	var resp *escrowdv1.GetGroupResponse
	err := c.invoke(ctx, "GetGroup", true, opts, func(ctx context.Context, o ...grpc.CallOption) (err error) {
		resp, err = c.security.GetGroup(ctx, req, o...)
		return err
	})
	if err != nil {
		return nil, err
	}
	return resp, nil
}

// ListHSMObjects lists the objects on the daemon's token.
func (c *Client) ListHSMObjects(ctx context.Context, req *escrowdv1.ListHSMObjectsRequest, opts ...CallOption) (*escrowdv1.ListHSMObjectsResponse, error) {
	var resp *escrowdv1.ListHSMObjectsResponse
	err := c.invoke(ctx, "ListHSMObjects", true, opts, func(ctx context.Context, o ...grpc.CallOption) (err error) {
		resp, err = c.security.ListHSMObjects(ctx, req, o...)
		return err
	})
	if err != nil {
		return nil, err
	}
	return resp, nil
}

// RotateGroupKeys adds key versions to a group. Not idempotent: each call adds another.
func (c *Client) RotateGroupKeys(ctx context.Context, req *escrowdv1.RotateGroupKeysRequest, opts ...CallOption) (*escrowdv1.RotateGroupKeysResponse, error) {
	var resp *escrowdv1.RotateGroupKeysResponse
	err := c.invoke(ctx, "RotateGroupKeys", false, opts, func(ctx context.Context, o ...grpc.CallOption) (err error) {
		resp, err = c.security.RotateGroupKeys(ctx, req, o...)
		return err
	})
	if err != nil {
		return nil, err
	}
	return resp, nil
}

// SetMinDecryptionVersion retires the versions below a minimum. Idempotent: it sets a value.
func (c *Client) SetMinDecryptionVersion(ctx context.Context, req *escrowdv1.SetMinDecryptionVersionRequest, opts ...CallOption) (*escrowdv1.SetMinDecryptionVersionResponse, error) {
	var resp *escrowdv1.SetMinDecryptionVersionResponse
	err := c.invoke(ctx, "SetMinDecryptionVersion", true, opts, func(ctx context.Context, o ...grpc.CallOption) (err error) {
		resp, err = c.security.SetMinDecryptionVersion(ctx, req, o...)
		return err
	})
	if err != nil {
		return nil, err
	}
	return resp, nil
}

// DestroyKeyVersion crypto-shreds a retired key version. Not retried: a repeat after success is refused.
func (c *Client) DestroyKeyVersion(ctx context.Context, req *escrowdv1.DestroyKeyVersionRequest, opts ...CallOption) (*escrowdv1.DestroyKeyVersionResponse, error) {
	var resp *escrowdv1.DestroyKeyVersionResponse
	err := c.invoke(ctx, "DestroyKeyVersion", false, opts, func(ctx context.Context, o ...grpc.CallOption) (err error) {
		resp, err = c.security.DestroyKeyVersion(ctx, req, o...)
		return err
	})
	if err != nil {
		return nil, err
	}
	return resp, nil
}

// StartJob starts a job over every group. Not idempotent.
func (c *Client) StartJob(ctx context.Context, req *escrowdv1.StartJobRequest, opts ...CallOption) (*escrowdv1.StartJobResponse, error) {
	var resp *escrowdv1.StartJobResponse
	err := c.invoke(ctx, "StartJob", false, opts, func(ctx context.Context, o ...grpc.CallOption) (err error) {
		resp, err = c.security.StartJob(ctx, req, o...)
		return err
	})
	if err != nil {
		return nil, err
	}
	return resp, nil
}

// ListJobs reports every job and its progress.
func (c *Client) ListJobs(ctx context.Context, req *escrowdv1.ListJobsRequest, opts ...CallOption) (*escrowdv1.ListJobsResponse, error) {
	var resp *escrowdv1.ListJobsResponse
	err := c.invoke(ctx, "ListJobs", true, opts, func(ctx context.Context, o ...grpc.CallOption) (err error) {
		resp, err = c.security.ListJobs(ctx, req, o...)
		return err
	})
	if err != nil {
		return nil, err
	}
	return resp, nil
}

// CancelJob stops a running job. Not retried: a repeat after success is refused.
func (c *Client) CancelJob(ctx context.Context, req *escrowdv1.CancelJobRequest, opts ...CallOption) (*escrowdv1.CancelJobResponse, error) {
	var resp *escrowdv1.CancelJobResponse
	err := c.invoke(ctx, "CancelJob", false, opts, func(ctx context.Context, o ...grpc.CallOption) (err error) {
		resp, err = c.security.CancelJob(ctx, req, o...)
		return err
	})
	if err != nil {
		return nil, err
	}
	return resp, nil
}

// DestroyKEK destroys an old master KEK version. Not retried: a repeat after success is refused.
func (c *Client) DestroyKEK(ctx context.Context, req *escrowdv1.DestroyKEKRequest, opts ...CallOption) (*escrowdv1.DestroyKEKResponse, error) {
	var resp *escrowdv1.DestroyKEKResponse
	err := c.invoke(ctx, "DestroyKEK", false, opts, func(ctx context.Context, o ...grpc.CallOption) (err error) {
		resp, err = c.security.DestroyKEK(ctx, req, o...)
		return err
	})
	if err != nil {
		return nil, err
	}
	return resp, nil
}

// Idempotent reports whether the RPC of that name (e.g. "ListJobs") is
// retried: whether sending it twice leaves the same state as once.
func Idempotent(method string) bool { return idempotent[method] }

// BatchErrors returns the errors of a BatchRewrap's failed items, in
// request order, each a *BatchItemError; nil if every item succeeded.
func BatchErrors(resp *escrowdv1.BatchRewrapResponse) []error {
	var errs []error
	for i, r := range resp.GetResults() {
		if e := r.GetError(); e != nil {
			errs = append(errs, &BatchItemError{Index: i, Reference: r.GetReference(), Code: Code(e.GetCode()), Message: e.GetMessage()})
		}
	}
	return errs
}
