package e2e

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/emptypb"

	escrowdv1 "github.com/escrowd/escrowd/api/escrowd/v1"
	"github.com/escrowd/escrowd/audit"
	"github.com/escrowd/escrowd/daemon"
	"github.com/escrowd/escrowd/escrow/bundle"
	"github.com/escrowd/escrowd/escrow/device"
	"github.com/escrowd/escrowd/internal/vaulttest"
)

// matrixRequests has a well-formed request for every RPC, so that an
// allowed call fails, if at all, for reasons other than authorization.
var matrixRequests = map[string]proto.Message{
	"ProvisionGroup":          &escrowdv1.ProvisionGroupRequest{GroupId: "matrix-new"},
	"GetEscrowKey":            &escrowdv1.GetEscrowKeyRequest{GroupId: "matrix-none"},
	"Rewrap":                  &escrowdv1.RewrapRequest{GroupId: "matrix-none", Recipient: &escrowdv1.Recipient{Kind: escrowdv1.Recipient_KIND_MEMBER, Id: "m", KeyVersion: 1, Suite: bundle.SuiteRSAOAEPSHA1}},
	"IssueUnlockCodes":        &escrowdv1.IssueUnlockCodesRequest{GroupId: "matrix-none", UserId: "u"},
	"RevealUnlockCode":        &escrowdv1.RevealUnlockCodeRequest{GroupId: "matrix-none", UserId: "u", Ticket: "SUP-1"},
	"ListUnlockCodes":         &escrowdv1.ListUnlockCodesRequest{GroupId: "matrix-none", UserId: "u"},
	"ListPendingReveals":      &escrowdv1.ListPendingRevealsRequest{},
	"ApproveReveal":           &escrowdv1.ApproveRevealRequest{Id: "no-such-request"},
	"GetGroup":                &escrowdv1.GetGroupRequest{GroupId: "matrix-none"},
	"ListHSMObjects":          &escrowdv1.ListHSMObjectsRequest{},
	"RewrapToEscrow":          &escrowdv1.RewrapToEscrowRequest{GroupId: "matrix-none"},
	"BatchRewrap":             &escrowdv1.BatchRewrapRequest{Items: []*escrowdv1.BatchRewrapItem{{Reference: "r", GroupId: "matrix-none"}}},
	"MarkUnlockCodeConsumed":  &escrowdv1.MarkUnlockCodeConsumedRequest{GroupId: "matrix-none", UserId: "u", Epoch: 1},
	"RotateGroupKey":          &escrowdv1.RotateGroupKeyRequest{GroupId: "matrix-none"},
	"RotateGroupKeys":         &escrowdv1.RotateGroupKeysRequest{GroupId: "matrix-none", Escrow: true},
	"SetMinDecryptionVersion": &escrowdv1.SetMinDecryptionVersionRequest{GroupId: "matrix-none", MinEscrowVersion: 1},
	"DestroyKeyVersion":       &escrowdv1.DestroyKeyVersionRequest{GroupId: "matrix-none", Kind: "escrow", Version: 1},
	"StartJob":                &escrowdv1.StartJobRequest{Kind: "no-such-kind"},
	"ListJobs":                &escrowdv1.ListJobsRequest{},
	"CancelJob":               &escrowdv1.CancelJobRequest{Id: "no-such-job"},
	"DestroyKEK":              &escrowdv1.DestroyKEKRequest{Version: 99},
	"ListEvents":              &escrowdv1.ListEventsRequest{},
}

// grants is testdata/policy.yaml as a table: which caller may call what.
var grants = map[string][]string{
	"sync-backend": {"ProvisionGroup", "GetEscrowKey", "Rewrap", "IssueUnlockCodes", "RewrapToEscrow", "BatchRewrap",
		"MarkUnlockCodeConsumed", "RotateGroupKey", "ListEvents"},
	"alice": {"RevealUnlockCode", "ListUnlockCodes", "ListPendingReveals", "ApproveReveal"},
	"bob":   {"RevealUnlockCode", "ListUnlockCodes", "ListPendingReveals", "ApproveReveal"},
	"carol": {"GetGroup", "ListHSMObjects", "RotateGroupKeys", "SetMinDecryptionVersion", "DestroyKeyVersion",
		"StartJob", "ListJobs", "CancelJob", "DestroyKEK"},
}

// streams are the streaming RPCs the API listener serves (escrowd's own
// services have none: the matrix checks that too). Each is opened, sent
// a first message if it takes one, and read once.
var streams = []struct {
	method string
	desc   grpc.StreamDesc
	req    proto.Message
	// audited: a stream that passes the pipeline's audit stage;
	// health is served without a record.
	audited bool
}{
	{"/grpc.reflection.v1.ServerReflection/ServerReflectionInfo", grpc.StreamDesc{ClientStreams: true, ServerStreams: true},
		&reflectionpb.ServerReflectionRequest{MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{ListServices: "*"}}, true},
	{"/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", grpc.StreamDesc{ClientStreams: true, ServerStreams: true},
		&reflectionpb.ServerReflectionRequest{MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{ListServices: "*"}}, true},
	{"/grpc.health.v1.Health/Watch", grpc.StreamDesc{ServerStreams: true}, &healthpb.HealthCheckRequest{}, false},
}

// openStream runs one of streams on conn and returns the request id
// header and its first answer's error.
func openStream(ctx context.Context, conn *grpc.ClientConn, i int) ([]string, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	st := streams[i]
	cs, err := conn.NewStream(ctx, &st.desc, st.method)
	if err != nil {
		return nil, err
	}
	if err := cs.SendMsg(st.req); err != nil {
		return nil, recvErr(cs)
	}
	if !st.desc.ClientStreams {
		cs.CloseSend()
	}
	err = recvErr(cs)
	hdr, _ := cs.Header()
	return hdr.Get(daemon.HeaderRequestID), err
}

func recvErr(cs grpc.ClientStream) error {
	var m emptypb.Empty
	err := cs.RecvMsg(&m)
	if err == io.EOF {
		return nil
	}
	return err
}

// TestAuthorizationMatrix calls every RPC, unary and streaming, as every
// role, and on connections with no certificate, an expired one and one
// from another CA: each is allowed or denied as the policy says, every
// denial is audited, and a connection without a valid certificate gets
// nothing but health (on the health listener): the API listener refuses
// it at the TLS handshake, before any RPC, so it leaves no record.
func TestAuthorizationMatrix(t *testing.T) {
	s := newStack(t, vaultSrv)
	ctx := ctxT(t)
	methods := map[string]string{}
	for _, sd := range []grpc.ServiceDesc{escrowdv1.SyncService_ServiceDesc, escrowdv1.SupportService_ServiceDesc, escrowdv1.SecurityService_ServiceDesc} {
		for _, m := range sd.Methods {
			methods[m.MethodName] = "/" + sd.ServiceName + "/" + m.MethodName
		}
		if len(sd.Streams) > 0 {
			t.Fatalf("%s has streaming RPCs: add them to the matrix's streams", sd.ServiceName)
		}
	}
	if len(methods) != len(matrixRequests) {
		t.Fatalf("%d RPCs but %d matrix requests: add the new RPC to the matrix", len(methods), len(matrixRequests))
	}
	callers := []struct {
		name string
		// refused: the TLS handshake refuses the connection.
		refused bool
	}{
		{"sync-backend", false},
		{"alice", false},
		{"carol", false},
		{"mallory", false}, // a valid certificate the policy does not list
		{"", true},
		{"expired", true},
		{"foreign", true},
	}
	var denials, served []string
	for _, c := range callers {
		conn := s.dial(c.name)
		name := c.name
		if name == "" {
			name = "no certificate"
		}
		_, listed := grants[c.name]
		for op, method := range methods {
			allowed := slices.Contains(grants[c.name], op)
			var hdr metadata.MD
			err := conn.Invoke(ctx, method, matrixRequests[op], &emptypb.Empty{}, grpc.Header(&hdr))
			code := status.Code(err)
			ids := hdr.Get(daemon.HeaderRequestID)
			switch {
			case c.refused:
				if code != codes.Unavailable || len(ids) != 0 {
					t.Errorf("%s → %s: %v (request ids %v), want the connection refused", name, op, err, ids)
				}
			case allowed:
				if code == codes.PermissionDenied || code == codes.Unauthenticated {
					t.Errorf("%s → %s: %v, want it allowed", name, op, err)
				}
			case code != codes.PermissionDenied:
				t.Errorf("%s → %s: %v, want PermissionDenied", name, op, err)
			case len(ids) != 1:
				t.Errorf("%s → %s: no request id", name, op)
			default:
				denials = append(denials, ids[0])
			}
		}
		for i, st := range streams {
			ids, err := openStream(ctx, conn, i)
			code := status.Code(err)
			switch {
			case c.refused:
				if code != codes.Unavailable || len(ids) != 0 {
					t.Errorf("%s → stream %s: %v, want the connection refused", name, st.method, err)
				}
			case !st.audited:
				if err != nil || len(ids) != 0 {
					t.Errorf("%s → stream %s: %v (request ids %v), want it served unaudited", name, st.method, err, ids)
				}
			case !listed:
				if code != codes.PermissionDenied || len(ids) != 1 {
					t.Errorf("%s → stream %s: %v, want PermissionDenied with a request id", name, st.method, err)
					continue
				}
				denials = append(denials, ids[0])
			default:
				if err != nil || len(ids) != 1 {
					t.Errorf("%s → stream %s: %v (request ids %v), want it served with a request id", name, st.method, err, ids)
					continue
				}
				served = append(served, ids[0])
			}
		}
		// Health answers everyone on the health listener.
		if r, err := s.healthClient().Check(ctx, &healthpb.HealthCheckRequest{}); err != nil || r.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			t.Errorf("%s → health listener: %v %v", name, r.GetStatus(), err)
		}
	}
	wantDenials := 4*len(methods) - len(grants["sync-backend"]) - len(grants["alice"]) - len(grants["carol"]) + 2 // mallory's reflection streams
	if len(denials) != wantDenials || len(served) != 3*2 {
		t.Fatalf("%d denials and %d served streams, want %d and %d", len(denials), len(served), wantDenials, 3*2)
	}
	byID := map[string]audit.Chained{}
	err := s.audit.Walk(ctx, func(_ uint64, b *audit.Batch) error {
		for _, r := range b.Records {
			byID[r.ID] = r
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range denials {
		r, ok := byID[id]
		if !ok {
			t.Errorf("denial %s was not audited", id)
			continue
		}
		if r.Outcome != audit.OutcomeDenied || r.Reason == "" {
			t.Errorf("denial %s recorded as %s (%q)", id, r.Outcome, r.Reason)
		}
	}
	for _, id := range served {
		if r, ok := byID[id]; !ok || r.Outcome != audit.OutcomeOK || !strings.Contains(r.Operation, "ServerReflection") {
			t.Errorf("stream %s recorded as %+v", id, r)
		}
	}
	// Nothing of a refused connection reached the trail; health is not in it.
	for _, r := range byID {
		if strings.HasPrefix(r.Caller, "anonymous") || strings.HasPrefix(r.Caller, "unverified") || strings.Contains(r.Operation, "Health") {
			t.Errorf("record %s: caller %s, operation %s", r.ID, r.Caller, r.Operation)
		}
	}
}

func issue(t *testing.T, s *stack, ctx context.Context, group, user string, n uint32) *escrowdv1.IssueUnlockCodesResponse {
	t.Helper()
	var ids []string
	_, escrowSlot := s.provisionAndSeal(ctx, group, &ids)
	is, err := s.sync.IssueUnlockCodes(ctx, &escrowdv1.IssueUnlockCodesRequest{GroupId: group, UserId: user, EscrowSlot: escrowSlot, Count: n})
	if err != nil {
		t.Fatal(err)
	}
	return is
}

// TestRateLimitAcrossRestart: the per-user limit (3 per 24 h) holds after
// the daemon restarts on the same store.
func TestRateLimitAcrossRestart(t *testing.T) {
	storePath := filepath.Join(t.TempDir(), "escrowd.db")
	s := newStackWith(t, vaultSrv, stackOpts{storePath: storePath})
	ctx := ctxT(t)
	issue(t, s, ctx, "rl-group", "u", 10)
	reveal := func(s *stack) error {
		_, err := s.support.RevealUnlockCode(ctx, &escrowdv1.RevealUnlockCodeRequest{GroupId: "rl-group", UserId: "u", Ticket: "SUP-77"})
		return err
	}
	for i := range 3 {
		if err := reveal(s); err != nil {
			t.Fatalf("reveal %d: %v", i, err)
		}
	}
	err := reveal(s)
	if status.Code(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), "reveals-per-user") {
		t.Fatalf("4th reveal: %v, want ResourceExhausted naming the limit", err)
	}
	s.stop()
	s2 := newStackWith(t, vaultSrv, stackOpts{storePath: storePath, prefix: s.prefix + "-2"})
	if err := reveal(s2); status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("reveal after restart: %v, want ResourceExhausted", err)
	}
	// Another user of the group has their own window.
	c, err := s2.support.ListUnlockCodes(ctx, &escrowdv1.ListUnlockCodesRequest{GroupId: "rl-group", UserId: "u"})
	if err != nil {
		t.Fatal(err)
	}
	revealed := 0
	for _, st := range c.GetCodes() {
		if st.GetState() == escrowdv1.UnlockCodeState_STATE_REVEALED {
			revealed++
		}
	}
	if revealed != 3 {
		t.Fatalf("%d codes revealed, want 3: a refused reveal must not burn a code", revealed)
	}
}

// TestDualControl: a reveal in a flagged group waits for a second,
// different technician; the requester cannot approve it; an approval
// after the time limit is refused.
func TestDualControl(t *testing.T) {
	s := newStack(t, vaultSrv)
	ctx := ctxT(t)
	is := issue(t, s, ctx, "vip-ceo", "u", 5)
	bob := escrowdv1.NewSupportServiceClient(s.dial("bob"))

	type result struct {
		resp *escrowdv1.RevealUnlockCodeResponse
		err  error
	}
	done := make(chan result, 1)
	go func() {
		r, err := s.support.RevealUnlockCode(ctx, &escrowdv1.RevealUnlockCodeRequest{GroupId: "vip-ceo", UserId: "u", Ticket: "INC-4"})
		done <- result{r, err}
	}()
	var pending *escrowdv1.PendingReveal
	for deadline := time.Now().Add(2 * time.Second); pending == nil; {
		l, err := bob.ListPendingReveals(ctx, &escrowdv1.ListPendingRevealsRequest{})
		if err != nil {
			t.Fatal(err)
		}
		if len(l.GetReveals()) == 1 {
			pending = l.GetReveals()[0]
		} else if time.Now().After(deadline) {
			t.Fatal("the reveal never appeared as pending")
		} else {
			time.Sleep(50 * time.Millisecond)
		}
	}
	if pending.GetRequester() != identities["alice"] || pending.GetGroupId() != "vip-ceo" || pending.GetTicket() != "INC-4" {
		t.Fatalf("pending %v", pending)
	}
	// alice cannot approve her own reveal.
	_, err := s.support.ApproveReveal(ctx, approval(pending))
	if status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "own") {
		t.Fatalf("self-approval: %v", err)
	}
	select {
	case r := <-done:
		t.Fatalf("the reveal finished before approval: %v %v", r.resp, r.err)
	default:
	}
	if _, err := bob.ApproveReveal(ctx, approval(pending)); err != nil {
		t.Fatalf("bob's approval: %v", err)
	}
	r := <-done
	if r.err != nil || r.resp.GetApprovedBy() != "bob" {
		t.Fatalf("approved reveal: %v, %v", r.resp, r.err)
	}
	if _, _, err := device.OpenUnlock(is.GetSlots(), device.Want{Group: "vip-ceo", ID: "u"}, r.resp.GetCode()); err != nil {
		t.Fatalf("the approved code does not open its slot: %v", err)
	}

	// Nobody approves: the reveal is refused at the time limit (3 s), and a
	// late approval is refused too.
	start := time.Now()
	var hdr metadata.MD
	_, err = s.support.RevealUnlockCode(ctx, &escrowdv1.RevealUnlockCodeRequest{GroupId: "vip-ceo", UserId: "u", Ticket: "INC-5"}, grpc.Header(&hdr))
	if status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "approval") {
		t.Fatalf("unapproved reveal: %v", err)
	}
	if waited := time.Since(start); waited < 3*time.Second {
		t.Fatalf("refused after %v, before the 3 s limit", waited)
	}
	id := hdr.Get(daemon.HeaderRequestID)[0]
	_, err = bob.ApproveReveal(ctx, &escrowdv1.ApproveRevealRequest{Id: id, GroupId: "vip-ceo", UserId: "u", Ticket: "INC-5"})
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "closed") {
		t.Fatalf("late approval: %v", err)
	}
	c, _ := s.support.ListUnlockCodes(ctx, &escrowdv1.ListUnlockCodesRequest{GroupId: "vip-ceo", UserId: "u"})
	if c.GetCodes()[1].GetState() != escrowdv1.UnlockCodeState_STATE_UNREVEALED {
		t.Fatal("an unapproved reveal burnt a code")
	}
	rec, err := s.find(ctx, id)
	if err != nil || rec.Outcome != audit.OutcomeDenied {
		t.Fatalf("unapproved reveal's record: %+v, %v", rec, err)
	}
}

// TestNoResultWithoutRecord: Vault stops in the middle of a run of
// concurrent requests; every request that got a result has its record.
func TestNoResultWithoutRecord(t *testing.T) {
	v := vaulttest.StartT(t)
	s := newStack(t, v)
	ctx := ctxT(t)
	issue(t, s, ctx, "midrun", "u", 1)
	var (
		mu      sync.Mutex
		okIDs   []string
		failed  atomic.Int64
		stopped atomic.Bool
		wg      sync.WaitGroup
	)
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 400 && !(stopped.Load() && failed.Load() > 20); i++ {
				var hdr metadata.MD
				_, err := s.sync.GetEscrowKey(ctx, &escrowdv1.GetEscrowKeyRequest{GroupId: "midrun"}, grpc.Header(&hdr))
				switch {
				case err == nil:
					mu.Lock()
					okIDs = append(okIDs, hdr.Get(daemon.HeaderRequestID)[0])
					mu.Unlock()
				case status.Code(err) == codes.Unavailable:
					failed.Add(1)
				default:
					t.Errorf("worker %d: %v", w, err)
					return
				}
			}
		}()
	}
	time.Sleep(300 * time.Millisecond)
	if err := v.Stop(); err != nil {
		t.Fatal(err)
	}
	stopped.Store(true)
	wg.Wait()
	if failed.Load() == 0 || len(okIDs) == 0 {
		t.Fatalf("%d succeeded and %d failed: the run did not straddle the outage", len(okIDs), failed.Load())
	}
	if err := v.Restart(); err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	err := s.audit.Walk(ctx, func(_ uint64, b *audit.Batch) error {
		for _, r := range b.Records {
			seen[r.ID] = true
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range okIDs {
		if !seen[id] {
			t.Fatalf("request %s returned a result but has no audit record", id)
		}
	}
	t.Logf("%d results, all recorded; %d requests refused while Vault was down", len(okIDs), failed.Load())
	if p, _, _, err := s.audit.Verify(ctx); err != nil || p != nil {
		t.Fatalf("trail after the outage: %v %v", p, err)
	}
}

// TestAuditVerifyCLI tampers with the trail directly in Vault and checks
// that `escrowctl audit verify` names each change.
func TestAuditVerifyCLI(t *testing.T) {
	_, escrowctl := buildBinaries(t)
	s := newStack(t, vaultSrv)
	ctx := ctxT(t)
	for range 12 {
		if _, err := s.sync.GetEscrowKey(ctx, &escrowdv1.GetEscrowKeyRequest{GroupId: "none"}); status.Code(err) != codes.NotFound {
			t.Fatal(err)
		}
	}
	verify := func() (string, error) {
		cmd := exec.Command(escrowctl, "audit", "verify", "-audit-prefix", s.prefix, "-vault-addr", vaultSrv.Addr)
		cmd.Env = append(os.Environ(), "VAULT_TOKEN="+vaultSrv.Token)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	out, err := verify()
	if err != nil || !strings.Contains(out, "audit trail intact: 12 records") {
		t.Fatalf("verify of an intact trail: %v\n%s", err, out)
	}
	vc, err := vaultSrv.Client()
	if err != nil {
		t.Fatal(err)
	}
	kv := vc.KVv2("secret")
	// Sequential requests each made their own batch: batch n holds record n.
	edit := func(seq int, fn func(recs []any) []any) (undo func()) {
		p := fmt.Sprintf("%s/chain/%020d", s.prefix, seq)
		sec, err := kv.Get(ctx, p)
		if err != nil {
			t.Fatal(err)
		}
		orig := sec.Data
		raw, _ := json.Marshal(orig)
		var data map[string]any
		json.Unmarshal(raw, &data)
		var recs []any
		if err := json.Unmarshal([]byte(data["records"].(string)), &recs); err != nil {
			t.Fatal(err)
		}
		edited, _ := json.Marshal(fn(recs))
		data["records"] = string(edited)
		if _, err := kv.Put(ctx, p, data); err != nil {
			t.Fatal(err)
		}
		return func() {
			if _, err := kv.Put(ctx, p, orig); err != nil {
				t.Fatal(err)
			}
		}
	}
	recordID := func(seq int) string {
		sec, _ := kv.Get(ctx, fmt.Sprintf("%s/chain/%020d", s.prefix, seq))
		var recs []map[string]any
		if err := json.Unmarshal([]byte(sec.Data["records"].(string)), &recs); err != nil {
			t.Fatal(err)
		}
		return recs[0]["id"].(string)
	}
	tests := []struct {
		name   string
		change func() func()
		want   string
	}{
		{"changed", func() func() {
			return edit(4, func(r []any) []any { r[0].(map[string]any)["outcome"] = "ok"; return r })
		}, "batch 4 entry 0 (record " + recordID(4) + "): changed"},
		{"deleted", func() func() {
			return edit(5, func(r []any) []any { return append(r, nil)[:0] })
		}, "batch 5: deleted"},
		{"reordered", func() func() {
			// Move record 7 into batch 6, after record 6: 7 now stands
			// before 6's successor position and batch 7 is empty.
			var moved any
			undo7 := edit(7, func(r []any) []any { moved = r[0]; return r[:0] })
			undo6 := edit(6, func(r []any) []any { return []any{moved, r[0]} })
			return func() { undo6(); undo7() }
		}, "batch 6 entry 0 (record " + recordID(7) + "): reordered"},
		{"inserted", func() func() {
			return edit(8, func(r []any) []any {
				forged := map[string]any{}
				for k, v := range r[0].(map[string]any) {
					forged[k] = v
				}
				forged["id"], forged["ticket"] = "forged-record", "SUP-1"
				return []any{forged, r[0]}
			})
		}, "batch 8 entry 0 (record forged-record): "},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			undo := tt.change()
			defer undo()
			out, err := verify()
			var ee *exec.ExitError
			if !errors.As(err, &ee) || !strings.Contains(out, tt.want) {
				t.Fatalf("verify: %v\n%s\nwant it to say %q", err, out, tt.want)
			}
			t.Logf("%s", strings.TrimSpace(out))
		})
	}
	if out, err := verify(); err != nil {
		t.Fatalf("after undoing every change: %v\n%s", err, out)
	}
}

// TestNoSecretInAuditTrail runs a full workflow and scans every audit
// record it wrote, and Vault's own audit log, for every secret it handled.
func TestNoSecretInAuditTrail(t *testing.T) {
	s := newStack(t, vaultSrv)
	ctx := ctxT(t)
	var ids []string
	gdk, escrowSlot := s.provisionAndSeal(ctx, "scan-group", &ids)
	is, err := s.sync.IssueUnlockCodes(ctx, &escrowdv1.IssueUnlockCodesRequest{GroupId: "scan-group", UserId: "u", EscrowSlot: escrowSlot, Count: 3})
	if err != nil {
		t.Fatal(err)
	}
	secrets := map[string]string{
		"user PIN":    token.UserPIN,
		"SO PIN":      token.SOPIN,
		"Vault token": vaultSrv.Token,
		"GDK":         base64.StdEncoding.EncodeToString(gdk),
		"escrow slot": slotWrapped(t, escrowSlot),
	}
	for i, sl := range is.GetSlots() {
		secrets[fmt.Sprintf("unlock slot %d", i)] = slotWrapped(t, sl)
	}
	for i := range 3 {
		rv, err := s.support.RevealUnlockCode(ctx, &escrowdv1.RevealUnlockCodeRequest{GroupId: "scan-group", UserId: "u", Ticket: "SUP-3"})
		if err != nil {
			t.Fatal(err)
		}
		secrets[fmt.Sprintf("code %d", i)] = rv.GetCode()
		secrets[fmt.Sprintf("code %d without dashes", i)] = strings.ReplaceAll(rv.GetCode(), "-", "")
	}
	// The last reveal's outcome follows its code: scan it too.
	if _, err := s.verifySettled(ctx); err != nil {
		t.Fatal(err)
	}
	var trail strings.Builder
	records := 0
	err = s.audit.Walk(ctx, func(_ uint64, b *audit.Batch) error {
		for _, r := range b.Records {
			records++
			j, _ := json.Marshal(r)
			trail.Write(j)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	// Five requests, each changing state: an intent and an outcome each.
	if records != 10 {
		t.Fatalf("%d records, want 10", records)
	}
	vaultLog, err := os.ReadFile(vaultSrv.AuditLog)
	if err != nil {
		t.Fatal(err)
	}
	for name, sec := range secrets {
		if sec == "" {
			t.Fatalf("secret %s is empty", name)
		}
		if strings.Contains(trail.String(), sec) {
			t.Errorf("the audit trail holds the %s", name)
		}
		if strings.Contains(string(vaultLog), sec) {
			t.Errorf("Vault's audit log holds the %s", name)
		}
	}
}

func slotWrapped(t *testing.T, slot []byte) string {
	t.Helper()
	sl, err := bundle.ParseSlot(slot)
	if err != nil {
		t.Fatal(err)
	}
	return base64.StdEncoding.EncodeToString(sl.Wrapped)
}

// TestPolicyReloadUnderLoad swaps policies while requests run: none fails.
func TestPolicyReloadUnderLoad(t *testing.T) {
	s := newStack(t, vaultSrv)
	ctx := ctxT(t)
	issue(t, s, ctx, "reload", "u", 1)
	p := loadPolicy(t, "testdata/policy.yaml")
	var wg sync.WaitGroup
	var calls atomic.Int64
	stop := make(chan struct{})
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				if _, err := s.sync.GetEscrowKey(ctx, &escrowdv1.GetEscrowKeyRequest{GroupId: "reload"}); err != nil {
					t.Errorf("request during reloads: %v", err)
					return
				}
				calls.Add(1)
			}
		}()
	}
	for range 200 {
		s.srv.SetPolicy(loadPolicy(t, "testdata/policy.yaml"))
		s.srv.SetPolicy(p)
	}
	close(stop)
	wg.Wait()
	if calls.Load() == 0 {
		t.Fatal("no request ran during the reloads")
	}
	t.Logf("%d requests during 400 policy swaps, none failed", calls.Load())
}
