package client

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Code is a gRPC status code, without the gRPC package.
type Code uint32

// The codes escrowd returns (docs/OPERATIONS.md, "Errors").
const (
	OK                 = Code(codes.OK)
	Canceled           = Code(codes.Canceled)
	Unknown            = Code(codes.Unknown)
	InvalidArgument    = Code(codes.InvalidArgument)
	DeadlineExceeded   = Code(codes.DeadlineExceeded)
	NotFound           = Code(codes.NotFound)
	AlreadyExists      = Code(codes.AlreadyExists)
	PermissionDenied   = Code(codes.PermissionDenied)
	ResourceExhausted  = Code(codes.ResourceExhausted)
	FailedPrecondition = Code(codes.FailedPrecondition)
	Aborted            = Code(codes.Aborted)
	Unimplemented      = Code(codes.Unimplemented)
	Internal           = Code(codes.Internal)
	Unavailable        = Code(codes.Unavailable)
	Unauthenticated    = Code(codes.Unauthenticated)
)

// String is the code's name as gRPC spells it, e.g. "NotFound".
func (c Code) String() string { return codes.Code(c).String() }

// ErrorDomain is the domain of the ErrorInfo details escrowd sends.
const ErrorDomain = "escrowd.dev"

// The reasons of escrowd's ErrorInfo details.
const (
	// ReasonRateLimited: a policy rate limit had no room. Metadata: limit
	// (its name in the policy file), max, window, interval (one request
	// back every interval).
	ReasonRateLimited = "RATE_LIMITED"
	// ReasonKeyVersionRetired: the request needs a key version below the
	// group's minimum decryption version. Metadata: group, kind (escrow,
	// unlock), version, min_version, latest.
	ReasonKeyVersionRetired = "KEY_VERSION_RETIRED"
)

// Sentinels for errors.Is; an *Error matches the one of its code.
var (
	ErrInvalid      = errors.New("invalid request")
	ErrNotFound     = errors.New("not found")
	ErrExists       = errors.New("already exists")
	ErrDenied       = errors.New("permission denied")
	ErrRateLimited  = errors.New("rate limited")
	ErrPrecondition = errors.New("failed precondition")
	ErrAborted      = errors.New("aborted by a concurrent change")
	ErrUnavailable  = errors.New("unavailable")
	ErrInternal     = errors.New("internal error")
	// ErrRetired also matches a FailedPrecondition whose detail says a key
	// version is below the minimum.
	ErrRetired = errors.New("key version retired")
)

var codeSentinels = map[Code]error{
	Canceled:           context.Canceled,
	DeadlineExceeded:   context.DeadlineExceeded,
	InvalidArgument:    ErrInvalid,
	NotFound:           ErrNotFound,
	AlreadyExists:      ErrExists,
	PermissionDenied:   ErrDenied,
	Unauthenticated:    ErrDenied,
	ResourceExhausted:  ErrRateLimited,
	FailedPrecondition: ErrPrecondition,
	Aborted:            ErrAborted,
	Unavailable:        ErrUnavailable,
	Internal:           ErrInternal,
	Unknown:            ErrInternal,
}

// Error is escrowd's answer to a failed call, with the details it sent.
type Error struct {
	// Method is the RPC, e.g. "RevealUnlockCode".
	Method string
	Code   Code
	// Message is the daemon's message: what failed and how to go on.
	Message string
	// RequestID names the request's audit record, "" if it had none.
	RequestID string
	// Reason and Metadata come from the ErrorInfo detail, if any (see
	// the Reason constants).
	Reason   string
	Metadata map[string]string
	// RetryAfter is the RetryInfo detail's delay, 0 if none.
	RetryAfter time.Duration
	// Violations are the BadRequest detail's field violations.
	Violations []FieldViolation
}

// FieldViolation names a request field and what is wrong with it.
type FieldViolation struct {
	Field, Description string
}

// Error reads "Code: message", as grpc-go prints a status.
func (e *Error) Error() string {
	return fmt.Sprintf("%s: %s", e.Code, e.Message)
}

// Is matches the sentinel of the error's code, and ErrRetired for a
// retired key version.
func (e *Error) Is(target error) bool {
	if target == ErrRetired {
		return e.Reason == ReasonKeyVersionRetired
	}
	s, ok := codeSentinels[e.Code]
	return ok && s == target
}

// RateLimit describes the limit of a ReasonRateLimited error.
type RateLimit struct {
	// Name is the limit's name in the policy file.
	Name string
	// Max requests per Window; one comes back every Interval.
	Max      int
	Window   time.Duration
	Interval time.Duration
}

// RateLimit returns the limit the request ran into, if it did.
func (e *Error) RateLimit() (RateLimit, bool) {
	if e.Reason != ReasonRateLimited {
		return RateLimit{}, false
	}
	m := e.Metadata
	n, _ := strconv.Atoi(m["max"])
	w, _ := time.ParseDuration(m["window"])
	iv, _ := time.ParseDuration(m["interval"])
	return RateLimit{Name: m["limit"], Max: n, Window: w, Interval: iv}, true
}

// RetiredVersion describes the key version of a ReasonKeyVersionRetired
// error.
type RetiredVersion struct {
	Group string
	// Kind is escrow or unlock.
	Kind                        string
	Version, MinVersion, Latest uint32
}

// Retired returns the retired key version the request needed, if so.
func (e *Error) Retired() (RetiredVersion, bool) {
	if e.Reason != ReasonKeyVersionRetired {
		return RetiredVersion{}, false
	}
	m := e.Metadata
	u := func(k string) uint32 {
		v, _ := strconv.ParseUint(m[k], 10, 32)
		return uint32(v)
	}
	return RetiredVersion{Group: m["group"], Kind: m["kind"], Version: u("version"), MinVersion: u("min_version"), Latest: u("latest")}, true
}

// fromStatus turns a call's error into an *Error. A call cut short by its
// context is an *Error too (Canceled or DeadlineExceeded), which matches
// context.Canceled or context.DeadlineExceeded.
func fromStatus(method string, err error, requestID string) error {
	if err == nil {
		return nil
	}
	st, ok := status.FromError(err)
	if !ok {
		return err
	}
	e := &Error{Method: method, Code: Code(st.Code()), Message: st.Message(), RequestID: requestID}
	for _, d := range st.Details() {
		switch d := d.(type) {
		case *errdetails.ErrorInfo:
			e.Reason, e.Metadata = d.GetReason(), d.GetMetadata()
		case *errdetails.RetryInfo:
			e.RetryAfter = d.GetRetryDelay().AsDuration()
		case *errdetails.BadRequest:
			for _, v := range d.GetFieldViolations() {
				e.Violations = append(e.Violations, FieldViolation{Field: v.GetField(), Description: v.GetDescription()})
			}
		}
	}
	return e
}

// BatchItemError is the error of one item of a BatchRewrap: the call as a
// whole succeeded.
type BatchItemError struct {
	// Index is the item's place in the request, Reference the caller's
	// reference for it.
	Index     int
	Reference string
	Code      Code
	Message   string
}

func (e *BatchItemError) Error() string {
	return fmt.Sprintf("batch item %d (reference %q): %s: %s", e.Index, e.Reference, e.Code, e.Message)
}

// Is matches the sentinel of the item's code.
func (e *BatchItemError) Is(target error) bool {
	s, ok := codeSentinels[e.Code]
	return ok && s == target
}
