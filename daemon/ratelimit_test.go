package daemon

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	escrowdv1 "github.com/escrowd/escrowd/api/escrowd/v1"
	"github.com/escrowd/escrowd/escrow"
	"github.com/escrowd/escrowd/escrow/unlockcode"
	"github.com/escrowd/escrowd/policy"
	"github.com/escrowd/escrowd/store"
)

// countingState counts the calls of TakeRate.
type countingState struct {
	State
	takes atomic.Int64
}

func (c *countingState) TakeRate(ctx context.Context, limits []store.RateLimit) (int, error) {
	c.takes.Add(1)
	return c.State.TakeRate(ctx, limits)
}

// TestRateLimitAfterValidIDs: an authenticated caller's request whose
// group or user id is not an id — a megabyte long, with a space, or
// missing — is refused INVALID_ARGUMENT before any rate limit is taken
// (it used to get UNAVAILABLE "rate limits: key too large", from a key
// built of the raw id), and counts against none: the caller's one reveal
// an hour is still there for a well-formed request.
func TestRateLimitAfterValidIDs(t *testing.T) {
	code, _ := unlockcode.FromMaterial(0, []byte("0123456789"))
	a := &fakeAuditor{}
	var st *countingState
	conn, _ := startWith(t, &fakeEscrow{code: code}, a, nil, func(c *Config) {
		y := "version: 1\nroles:\n  all:\n    operations: [" + strings.Join(Operations(), ", ") + "]\n" +
			"identities:\n  - id: " + testerID + "\n    roles: [all]\n" +
			"rate_limits:\n" +
			"  - {name: per-user, operations: [RevealUnlockCode], per: user, limit: 3, window: 24h}\n" +
			"  - {name: per-caller, operations: [RevealUnlockCode], per: caller, limit: 1, window: 1h}\n"
		p, err := policy.Parse("limits.yaml", []byte(y), Operations())
		if err != nil {
			t.Fatal(err)
		}
		st = &countingState{State: c.State}
		c.Policy, c.State = p, st
	})
	support := escrowdv1.NewSupportServiceClient(conn)
	huge := strings.Repeat("g", 1<<20)
	reveal := func(group, user string) error {
		_, err := support.RevealUnlockCode(context.Background(), &escrowdv1.RevealUnlockCodeRequest{GroupId: group, UserId: user, Ticket: "T-1"})
		return err
	}
	for _, tt := range []struct{ name, group, user, field string }{
		{"a group id of 1 MiB", huge, "u", "group_id"},
		{"a user id of 1 MiB", "g", huge, "user_id"},
		{"a group id of 129 bytes", strings.Repeat("g", 129), "u", "group_id"},
		{"a user id with a space", "g", "u v", "user_id"},
		{"no user id", "g", "", "user_id"},
		{"no group id", "", "u", "group_id"},
	} {
		err := reveal(tt.group, tt.user)
		if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), tt.field) {
			t.Fatalf("%s: %.200v; want INVALID_ARGUMENT naming %s", tt.name, err, tt.field)
		}
	}
	if n := st.takes.Load(); n != 0 {
		t.Fatalf("TakeRate was called %d times for malformed requests", n)
	}
	if err := reveal("g", "u"); err != nil {
		t.Fatalf("a well-formed reveal after the malformed ones: %v (they were counted)", err)
	}
	err := reveal("g", "u2")
	if status.Code(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), "per-caller") {
		t.Fatalf("a second reveal in the hour: %v, want RESOURCE_EXHAUSTED naming per-caller", err)
	}
	// The caller gets the limit's numbers as an ErrorInfo and the time
	// until one request's room comes back as a RetryInfo.
	var info *errdetails.ErrorInfo
	var retry *errdetails.RetryInfo
	for _, d := range status.Convert(err).Details() {
		switch d := d.(type) {
		case *errdetails.ErrorInfo:
			info = d
		case *errdetails.RetryInfo:
			retry = d
		}
	}
	if info == nil || info.GetReason() != "RATE_LIMITED" || info.GetDomain() != ErrorDomain || info.GetMetadata()["limit"] != "per-caller" ||
		info.GetMetadata()["window"] == "" || info.GetMetadata()["max"] == "" || retry == nil || retry.GetRetryDelay().AsDuration() <= 0 {
		t.Fatalf("details of a rate limit: %v %v", info, retry)
	}
	for _, r := range a.recs[:6] {
		if r.Code != codes.InvalidArgument.String() {
			t.Fatalf("record %s: code %s, want InvalidArgument", r.ID, r.Code)
		}
	}
}

// TestRetiredDetails: a key version below the minimum comes with an
// ErrorInfo naming the group, kind and versions.
func TestRetiredDetails(t *testing.T) {
	s := &Server{}
	err := fmt.Errorf("rewrap: %w", &escrow.RetiredError{Group: "g1", Kind: escrow.KindEscrow, Version: 1, MinVersion: 2, Latest: 3})
	st := s.status("req-1", err)
	if st.Code() != codes.FailedPrecondition || !strings.Contains(st.Message(), "below its minimum decryption version 2") {
		t.Fatalf("%v", st)
	}
	var info *errdetails.ErrorInfo
	for _, d := range st.Details() {
		if i, ok := d.(*errdetails.ErrorInfo); ok {
			info = i
		}
	}
	want := map[string]string{"group": "g1", "kind": "escrow", "version": "1", "min_version": "2", "latest": "3"}
	if info == nil || info.GetReason() != "KEY_VERSION_RETIRED" || fmt.Sprint(info.GetMetadata()) != fmt.Sprint(want) {
		t.Fatalf("details: %v", info)
	}
	if d := s.status("req-2", fmt.Errorf("%w: x", escrow.ErrNotFound)).Details(); len(d) != 0 {
		t.Fatalf("a plain error got details %v", d)
	}
}

// TestBadRequestDetails: an invalid request names its field in a
// BadRequest detail when its message starts with a field of the API, and
// only then.
func TestBadRequestDetails(t *testing.T) {
	s := &Server{}
	for _, tt := range []struct {
		err   error
		field string
	}{
		{fmt.Errorf("%w: group_id: too long", escrow.ErrInvalid), "group_id"},
		{fmt.Errorf("%w: items[3].group_id: empty", escrow.ErrInvalid), "items[3].group_id"},
		{fmt.Errorf("%w: recipient.kind must be KIND_MEMBER or KIND_DEVICE", escrow.ErrInvalid), "recipient.kind"},
		{fmt.Errorf("%w: escrow_slot is a unlock slot", escrow.ErrInvalid), "escrow_slot"},
		{fmt.Errorf("%w: count 30 outside 1 to 20", escrow.ErrInvalid), "count"},
		{fmt.Errorf("%w: user u epoch 1 has no code 9", escrow.ErrInvalid), ""},
		{fmt.Errorf("%w: key kind %q, want escrow or unlock", escrow.ErrInvalid, "x"), ""},
		{fmt.Errorf("%w: Group_id: x", escrow.ErrInvalid), ""},
		{fmt.Errorf("%w: group_id.nope: x", escrow.ErrInvalid), ""},
		{fmt.Errorf("%w: ", escrow.ErrInvalid), ""},
		{fmt.Errorf("%w: group_id: x", escrow.ErrNotFound), ""},
	} {
		var got string
		for _, d := range s.status("r", tt.err).Details() {
			if br, ok := d.(*errdetails.BadRequest); ok && len(br.GetFieldViolations()) == 1 {
				got = br.GetFieldViolations()[0].GetField()
				if br.GetFieldViolations()[0].GetDescription() != tt.err.Error() {
					t.Errorf("%v: description %q", tt.err, br.GetFieldViolations()[0].GetDescription())
				}
			}
		}
		if got != tt.field {
			t.Errorf("%v: field %q, want %q", tt.err, got, tt.field)
		}
	}
}
