package daemon

import (
	"context"
	"errors"
	"regexp"
	"strconv"
	"strings"
	"sync"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/protoadapt"
	"google.golang.org/protobuf/reflect/protoreflect"

	escrowdv1 "github.com/escrowd/escrowd/api/escrowd/v1"
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
// key version that is below the minimum, or a BadRequest naming the field
// of an invalid request.
func withDetails(st *status.Status, err error) *status.Status {
	var detail protoadapt.MessageV1
	var r *escrow.RetiredError
	switch {
	case errors.As(err, &r):
		detail = &errdetails.ErrorInfo{Reason: "KEY_VERSION_RETIRED", Domain: ErrorDomain, Metadata: map[string]string{
			"group": r.Group, "kind": string(r.Kind), "version": strconv.FormatUint(uint64(r.Version), 10),
			"min_version": strconv.FormatUint(uint64(r.MinVersion), 10), "latest": strconv.FormatUint(uint64(r.Latest), 10)}}
	case errors.Is(err, escrow.ErrInvalid):
		if f, ok := invalidField(err.Error()); ok {
			detail = &errdetails.BadRequest{FieldViolations: []*errdetails.BadRequest_FieldViolation{{Field: f, Description: err.Error()}}}
		}
	}
	if detail == nil {
		return st
	}
	d, derr := st.WithDetails(detail)
	if derr != nil {
		return st
	}
	return d
}

// fieldPath is how an invalid request's message names its field, after
// the sentinel's text: group_id, recipient.kind, items[3].group_id.
var fieldPath = regexp.MustCompile(`^([a-z][a-z_]*(?:\[[0-9]+\])?(?:\.[a-z][a-z_]*)*)[: ]`)

// invalidField finds the request field an invalid request's message
// names, if it names one: the path's every part must be a field of the
// API, so that words of a sentence are never taken for a field.
func invalidField(msg string) (string, bool) {
	rest, ok := strings.CutPrefix(msg, escrow.ErrInvalid.Error()+": ")
	if !ok {
		return "", false
	}
	m := fieldPath.FindStringSubmatch(rest)
	if m == nil {
		return "", false
	}
	for _, part := range strings.Split(m[1], ".") {
		if name, _, _ := strings.Cut(part, "["); !apiFields()[name] {
			return "", false
		}
	}
	return m[1], true
}

// apiFields is the set of field names of the API's messages.
var apiFields = sync.OnceValue(func() map[string]bool {
	names := map[string]bool{}
	var add func(ms protoreflect.MessageDescriptors)
	add = func(ms protoreflect.MessageDescriptors) {
		for i := 0; i < ms.Len(); i++ {
			if ms.Get(i).IsMapEntry() {
				continue // key and value name no field of a request
			}
			fs := ms.Get(i).Fields()
			for j := 0; j < fs.Len(); j++ {
				names[string(fs.Get(j).Name())] = true
			}
			add(ms.Get(i).Messages())
		}
	}
	add(escrowdv1.File_escrowd_v1_escrowd_proto.Messages())
	return names
})

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
