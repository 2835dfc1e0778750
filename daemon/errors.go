package daemon

import (
	"context"
	"errors"
	"strconv"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/escrowd/escrowd/escrow"
	"github.com/escrowd/escrowd/jobs"
	"github.com/escrowd/escrowd/store"
)

// errorCodes maps escrow's sentinels to status codes. Their messages name
// the field or state to fix and never hold a secret, so they go to the
// caller as they are.
var errorCodes = []struct {
	err  error
	code codes.Code
}{
	{escrow.ErrInvalid, codes.InvalidArgument},
	{escrow.ErrSlot, codes.InvalidArgument},
	{escrow.ErrBinding, codes.InvalidArgument},
	{escrow.ErrKeyVersion, codes.InvalidArgument},
	{escrow.ErrNotFound, codes.NotFound},
	{escrow.ErrExists, codes.AlreadyExists},
	{escrow.ErrNoCodes, codes.FailedPrecondition},
	{escrow.ErrExhausted, codes.FailedPrecondition},
	{escrow.ErrUnsupported, codes.FailedPrecondition},
	{escrow.ErrRetired, codes.FailedPrecondition},
	{escrow.ErrDestroyed, codes.FailedPrecondition},
	{escrow.ErrPrecondition, codes.FailedPrecondition},
	{jobs.ErrInvalid, codes.InvalidArgument},
	{jobs.ErrRunning, codes.FailedPrecondition},
	{store.ErrNotFound, codes.NotFound},
	{escrow.ErrStale, codes.FailedPrecondition},
	{escrow.ErrNotRevealed, codes.FailedPrecondition},
	{escrow.ErrConflict, codes.Aborted},
	{escrow.ErrUnavailable, codes.Unavailable},
	{context.DeadlineExceeded, codes.DeadlineExceeded},
	{context.Canceled, codes.Canceled},
}

// ErrorDomain is the domain of the ErrorInfo details the daemon sends.
const ErrorDomain = "escrowd.dev"

// withDetails adds to st the details err carries: an ErrorInfo naming the
// key version that is below the minimum.
func withDetails(st *status.Status, err error) *status.Status {
	var r *escrow.RetiredError
	if !errors.As(err, &r) {
		return st
	}
	d, derr := st.WithDetails(&errdetails.ErrorInfo{Reason: "KEY_VERSION_RETIRED", Domain: ErrorDomain, Metadata: map[string]string{
		"group": r.Group, "kind": string(r.Kind), "version": strconv.FormatUint(uint64(r.Version), 10),
		"min_version": strconv.FormatUint(uint64(r.MinVersion), 10), "latest": strconv.FormatUint(uint64(r.Latest), 10)}})
	if derr != nil {
		return st
	}
	return d
}

// status turns a handler error into the status the caller gets. Errors of
// no known class become Internal with the request id only: their text may
// describe internals, and the log has it.
func (s *Server) status(requestID string, err error) *status.Status {
	if err == nil {
		return status.New(codes.OK, "")
	}
	if st, ok := status.FromError(err); ok {
		return st
	}
	for _, m := range errorCodes {
		if errors.Is(err, m.err) {
			return withDetails(status.New(m.code, err.Error()), err)
		}
	}
	return status.Newf(codes.Internal, "internal error; the operators can find it by request id %s", requestID)
}
