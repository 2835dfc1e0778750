package e2e

import (
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	escrowdv1 "github.com/escrowd/escrowd/api/escrowd/v1"
	"github.com/escrowd/escrowd/audit"
	"github.com/escrowd/escrowd/escrow/bundle"
	"github.com/escrowd/escrowd/internal/vaulttest"
)

// TestVaultFailsBeforeEachMutatingRPC makes Vault fail the audit writes
// (a proxy in front of the real server answers them 503) just before each
// state-changing RPC, one at a time. Ten of the twelve requests succeed
// with Vault up (checked by hand with the proxy passing every write);
// CancelJob names a job that has ended and DestroyKEK the current KEK,
// which escrowd refuses after their intent, so for those two the test
// shows only that the refusal comes first and changes nothing. Each
// answers UNAVAILABLE saying nothing was done; the state
// read back (groups, key versions, codes, pending reveals, jobs, HSM
// objects) is what it was; and the trail, once Vault answers again, holds
// no intent without an outcome.
func TestVaultFailsBeforeEachMutatingRPC(t *testing.T) {
	proxy := newVaultProxy(t)
	s := newStackWith(t, &vaulttest.Server{Addr: proxy.URL, Token: vaultSrv.Token}, stackOpts{jobs: true, policy: unlimitedReveals(t)})
	ctx := ctxT(t)
	const group, vip = "wa-family", "vip-wa"
	_, slot, _ := s.provisionSuite(ctx, group, bundle.SuiteRSAOAEPSHA1)
	if _, err := s.sync.IssueUnlockCodes(ctx, &escrowdv1.IssueUnlockCodesRequest{GroupId: group, UserId: "u", EscrowSlot: slot, Count: 3}); err != nil {
		t.Fatal(err)
	}
	rv, err := s.support.RevealUnlockCode(ctx, &escrowdv1.RevealUnlockCodeRequest{GroupId: group, UserId: "u", Ticket: "SUP-1"})
	if err != nil {
		t.Fatal(err)
	}
	epoch := rv.GetEpoch()
	if _, err := s.sec.RotateGroupKeys(ctx, &escrowdv1.RotateGroupKeysRequest{GroupId: group, Escrow: true}); err != nil {
		t.Fatal(err)
	}
	_, vipSlot, _ := s.provisionSuite(ctx, vip, bundle.SuiteRSAOAEPSHA1)
	if _, err := s.sync.IssueUnlockCodes(ctx, &escrowdv1.IssueUnlockCodesRequest{GroupId: vip, UserId: "u", EscrowSlot: vipSlot, Count: 2}); err != nil {
		t.Fatal(err)
	}
	job, err := s.sec.StartJob(ctx, &escrowdv1.StartJobRequest{Kind: "group-rotation", Params: map[string]string{"escrow": "true"}})
	if err != nil {
		t.Fatal(err)
	}
	alice := newKeys(t)
	bob := escrowdv1.NewSupportServiceClient(s.dial("bob"))

	// snapshot reads what the calls below would change.
	snapshot := func() map[string]proto.Message {
		t.Helper()
		out := map[string]proto.Message{}
		add := func(name string, m proto.Message, err error) {
			t.Helper()
			if err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			out[name] = m
		}
		g, err := s.sec.GetGroup(ctx, &escrowdv1.GetGroupRequest{GroupId: group})
		add("group", g, err)
		g, err = s.sec.GetGroup(ctx, &escrowdv1.GetGroupRequest{GroupId: vip})
		add("vip group", g, err)
		if _, err := s.sec.GetGroup(ctx, &escrowdv1.GetGroupRequest{GroupId: "wa-new"}); status.Code(err) != codes.NotFound {
			t.Fatalf("GetGroup wa-new: %v, want NotFound", err)
		}
		c, err := s.support.ListUnlockCodes(ctx, &escrowdv1.ListUnlockCodesRequest{GroupId: group, UserId: "u"})
		add("codes of u", c, err)
		c, err = s.support.ListUnlockCodes(ctx, &escrowdv1.ListUnlockCodesRequest{GroupId: vip, UserId: "u"})
		add("vip codes of u", c, err)
		c, err = s.support.ListUnlockCodes(ctx, &escrowdv1.ListUnlockCodesRequest{GroupId: group, UserId: "v"})
		if st := status.Code(err); st != codes.OK && st != codes.NotFound && st != codes.FailedPrecondition {
			t.Fatalf("codes of v: %v", err)
		}
		out["codes of v"] = c
		pr, err := bob.ListPendingReveals(ctx, &escrowdv1.ListPendingRevealsRequest{})
		add("pending reveals", pr, err)
		j, err := s.sec.ListJobs(ctx, &escrowdv1.ListJobsRequest{})
		add("jobs", j, err)
		o, err := s.sec.ListHSMObjects(ctx, &escrowdv1.ListHSMObjectsRequest{})
		add("HSM objects", o, err)
		return out
	}
	// The job ends by itself; wait, so that its progress does not move
	// the snapshot.
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		l, err := s.sec.ListJobs(ctx, &escrowdv1.ListJobsRequest{})
		if err != nil {
			t.Fatal(err)
		}
		if len(l.GetJobs()) == 1 && l.GetJobs()[0].GetState() != "running" && l.GetJobs()[0].GetState() != "pending" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("job %s did not end: %v", job.GetJob().GetId(), l.GetJobs())
		}
	}
	var revealed chan revealResult
	calls := []struct {
		op   string
		prep func() // with Vault up
		call func() error
	}{
		{"ProvisionGroup", nil, func() error {
			_, err := s.sync.ProvisionGroup(ctx, &escrowdv1.ProvisionGroupRequest{GroupId: "wa-new"})
			return err
		}},
		{"IssueUnlockCodes", nil, func() error {
			_, err := s.sync.IssueUnlockCodes(ctx, &escrowdv1.IssueUnlockCodesRequest{GroupId: group, UserId: "v", EscrowSlot: slot, Count: 2})
			return err
		}},
		{"MarkUnlockCodeConsumed", nil, func() error {
			_, err := s.sync.MarkUnlockCodeConsumed(ctx, &escrowdv1.MarkUnlockCodeConsumedRequest{GroupId: group, UserId: "u", Epoch: epoch, Index: 0})
			return err
		}},
		{"RotateGroupKey", nil, func() error {
			_, err := s.sync.RotateGroupKey(ctx, &escrowdv1.RotateGroupKeyRequest{GroupId: group, EscrowSlot: slot, OldGdkVersion: 1,
				Recipients:    []*escrowdv1.Recipient{alice.recipient(escrowdv1.Recipient_KIND_MEMBER, "alice", bundle.SuiteRSAOAEPSHA1)},
				UnlockUserIds: []string{"u"}, CodesPerUser: 2})
			return err
		}},
		{"RevealUnlockCode", nil, func() error {
			_, err := s.support.RevealUnlockCode(ctx, &escrowdv1.RevealUnlockCodeRequest{GroupId: group, UserId: "u", Ticket: "SUP-2"})
			return err
		}},
		{"ApproveReveal", nil, nil}, // set below: it needs the pending reveal
		{"RotateGroupKeys", nil, func() error {
			_, err := s.sec.RotateGroupKeys(ctx, &escrowdv1.RotateGroupKeysRequest{GroupId: group, Escrow: true, Unlock: true})
			return err
		}},
		{"SetMinDecryptionVersion", nil, func() error {
			_, err := s.sec.SetMinDecryptionVersion(ctx, &escrowdv1.SetMinDecryptionVersionRequest{GroupId: group, MinEscrowVersion: 2})
			return err
		}},
		{"DestroyKeyVersion", nil, func() error {
			_, err := s.sec.DestroyKeyVersion(ctx, &escrowdv1.DestroyKeyVersionRequest{GroupId: group, Kind: "escrow", Version: 1})
			return err
		}},
		{"StartJob", nil, func() error {
			_, err := s.sec.StartJob(ctx, &escrowdv1.StartJobRequest{Kind: "group-rotation", Params: map[string]string{"escrow": "true"}})
			return err
		}},
		{"CancelJob", nil, func() error {
			_, err := s.sec.CancelJob(ctx, &escrowdv1.CancelJobRequest{Id: job.GetJob().GetId()})
			return err
		}},
		{"DestroyKEK", nil, func() error {
			_, err := s.sec.DestroyKEK(ctx, &escrowdv1.DestroyKEKRequest{Version: 1})
			return err
		}},
	}
	var pending *escrowdv1.PendingReveal
	for i := range calls {
		if calls[i].op == "ApproveReveal" {
			// The pending reveal waits for an approval (3 s at most), so it
			// is made just before its approval, and approved for real just
			// after, each with Vault up.
			calls[i].prep = func() { pending, revealed = pendingReveal(t, s, ctx, vip, "u", "INC-9") }
			calls[i].call = func() error { _, err := bob.ApproveReveal(ctx, approval(pending)); return err }
		}
	}
	before := snapshot()
	done := map[string]bool{}
	for _, c := range calls {
		if c.prep != nil {
			c.prep()
		}
		proxy.stop(func(string) bool { return true }, false)
		err := c.call()
		proxy.stop(nil, false)
		if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "nothing was done") {
			t.Fatalf("%s with Vault failing: %v, want Unavailable, nothing was done", c.op, err)
		}
		done[c.op] = true
		if c.op == "ApproveReveal" {
			// The reveal is still pending: approve it for real, so that it
			// ends (it would otherwise time out, and be recorded so).
			if l, err := bob.ListPendingReveals(ctx, &escrowdv1.ListPendingRevealsRequest{}); err != nil || len(l.GetReveals()) != 1 {
				t.Fatalf("pending reveals after the failed approval: %v, %v", l, err)
			}
			if _, err := bob.ApproveReveal(ctx, approval(pending)); err != nil {
				t.Fatalf("the approval with Vault back: %v", err)
			}
			if r := <-revealed; r.err != nil || r.resp.GetIndex() != 0 {
				t.Fatalf("the approved reveal: %v, %v", r.resp, r.err)
			}
			// Its outcome follows the code (docs/AUDIT.md, "When the
			// outcome is written"): let it reach Vault before the next
			// call makes Vault fail.
			if rec, err := s.find(ctx, pending.GetId()); err != nil || rec.Phase != audit.PhaseOutcome {
				t.Fatalf("the approved reveal's outcome: %+v, %v", rec, err)
			}
		}
	}
	if len(done) != 12 {
		t.Fatalf("%d operations covered, want the 12 write-ahead operations", len(done))
	}
	after := snapshot()
	// The approved vip reveal did change the vip codes and the pending
	// list; every other read is as before.
	for name, b := range before {
		if name == "vip codes of u" || name == "pending reveals" {
			continue
		}
		if !proto.Equal(b, after[name]) {
			t.Errorf("%s changed by a refused call:\nbefore %v\nafter  %v", name, b, after[name])
		}
	}
	r, err := s.verifySettled(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Problems) != 0 || len(r.Open) != 0 {
		t.Fatalf("verify: problems %v, open intents %v; want none", r.Problems, r.Open)
	}
}
