package daemon

import (
	"context"
	"slices"
	"strings"
	"sync"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	escrowdv1 "github.com/escrowd/escrowd/api/escrowd/v1"
	"github.com/escrowd/escrowd/audit"
)

// TestUnknownMethodAudited: a method escrowd does not serve passes the
// chain too: UNIMPLEMENTED, recorded with the method's name (bounded),
// observed under the label "unknown".
func TestUnknownMethodAudited(t *testing.T) {
	a := &fakeAuditor{}
	obs := &recorder{}
	conn, _ := startWith(t, &fakeEscrow{}, a, nil, func(c *Config) { c.Observer = obs })
	for _, m := range []string{"/escrowd.v1.SyncService/NoSuchMethod", "/" + strings.Repeat("x", 300) + "/M"} {
		err := conn.Invoke(context.Background(), m, &escrowdv1.GetGroupRequest{}, &escrowdv1.GetGroupResponse{})
		if status.Code(err) != codes.Unimplemented {
			t.Fatalf("%.40s: %v", m, err)
		}
	}
	recs := a.await(t, 2)
	if len(recs) != 2 || recs[0].Operation != "/escrowd.v1.SyncService/NoSuchMethod" || recs[1].Operation != "(unknown method of 303 bytes)" ||
		recs[0].Caller != testerID || recs[0].Code != "Unimplemented" {
		t.Fatalf("records %+v", recs)
	}
	rpcs, _, _ := obs.snapshot()
	if !slices.Equal(rpcs, []string{"unknown Unimplemented", "unknown Unimplemented"}) {
		t.Fatalf("observed %q", rpcs)
	}
}

// TestCheckFields: every string at the top level of a request, and in its
// top-level lists and maps, is bounded; nested messages are the
// handlers'. Errors name the field, never the value.
func TestCheckFields(t *testing.T) {
	long := strings.Repeat("v", 129)
	tests := []struct {
		msg  proto.Message
		want string // "" for valid
	}{
		{&escrowdv1.RevealUnlockCodeRequest{GroupId: "g", UserId: "u", Ticket: "SUP-1"}, ""},
		{&escrowdv1.RevealUnlockCodeRequest{GroupId: "g"}, ""}, // required-ness is the handler's
		{&escrowdv1.RevealUnlockCodeRequest{GroupId: long}, "group_id: id is 129 bytes"},
		{&escrowdv1.RevealUnlockCodeRequest{GroupId: "g", Ticket: "SUP 1"}, "ticket: id has a byte outside printable ASCII at offset 3"},
		{&escrowdv1.ApproveRevealRequest{Id: long}, "id: id is 129 bytes"},
		{&escrowdv1.CancelJobRequest{Id: "\x00"}, "id: id has a byte outside"},
		{&escrowdv1.StartJobRequest{Kind: "kek-rotation", Params: map[string]string{"kek-version": "2"}}, ""},
		{&escrowdv1.StartJobRequest{Kind: "kek-rotation", Params: map[string]string{"k": long}}, "params: a value: id is 129 bytes"},
		{&escrowdv1.StartJobRequest{Params: map[string]string{long: "1"}}, "params: a key: id is 129 bytes"},
		{&escrowdv1.RotateGroupKeyRequest{GroupId: "g", UnlockUserIds: []string{"a", long}}, "unlock_user_ids[1]: id is 129 bytes"},
		{&escrowdv1.BatchRewrapRequest{Items: []*escrowdv1.BatchRewrapItem{{GroupId: long}}}, ""}, // the handler's, item by item
	}
	for _, tt := range tests {
		err := checkFields(tt.msg)
		switch {
		case tt.want == "" && err != nil:
			t.Errorf("%v: %v", tt.msg, err)
		case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
			t.Errorf("%T: %v, want %q", tt.msg, err, tt.want)
		case err != nil && strings.Contains(err.Error(), "vvv"):
			t.Errorf("the error quotes the value: %v", err)
		}
	}
}

// TestRefusalLane: refusals (calls refused before their handler) go to
// the auditor's refusal lane; results do not.
func TestRefusalLane(t *testing.T) {
	a := &laneAuditor{}
	conn, s := startWith(t, &fakeEscrow{}, &fakeAuditor{}, nil, func(c *Config) {
		c.Auditor = a
		c.Policy = onlyProvision(t)
	})
	ctx := context.Background()
	if _, err := escrowdv1.NewSyncServiceClient(conn).ProvisionGroup(ctx, &escrowdv1.ProvisionGroupRequest{GroupId: "g"}); err != nil {
		t.Fatal(err)
	}
	if _, err := escrowdv1.NewSecurityServiceClient(conn).GetGroup(ctx, &escrowdv1.GetGroupRequest{GroupId: "g"}); status.Code(err) != codes.PermissionDenied {
		t.Fatal(err)
	}
	if _, err := escrowdv1.NewSecurityServiceClient(dialAs(t, s, strangerID)).GetGroup(ctx, &escrowdv1.GetGroupRequest{GroupId: strings.Repeat("g", 200)}); status.Code(err) != codes.InvalidArgument {
		t.Fatal(err)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if !slices.Equal(a.lanes, []string{"result ", "result OK", "refusal PermissionDenied", "refusal InvalidArgument"}) {
		t.Fatalf("lanes %q", a.lanes)
	}
}

type laneAuditor struct {
	mu    sync.Mutex
	lanes []string
}

func (a *laneAuditor) Commit(_ context.Context, r *audit.Record) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.lanes = append(a.lanes, "result "+r.Code)
	return nil
}

func (a *laneAuditor) CommitRefusal(_ context.Context, r *audit.Record) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.lanes = append(a.lanes, "refusal "+r.Code)
	return nil
}

var _ RefusalAuditor = (*laneAuditor)(nil)
