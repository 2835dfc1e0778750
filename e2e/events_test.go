package e2e

import (
	"context"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	escrowdv1 "github.com/escrowd/escrowd/api/escrowd/v1"
	"github.com/escrowd/escrowd/audit"
	"github.com/escrowd/escrowd/daemon"
	"github.com/escrowd/escrowd/escrow/bundle"
)

// requestID returns a call option that appends the call's request id to
// ids.
func requestID(ids *[]string) (grpc.CallOption, func()) {
	var hdr metadata.MD
	return grpc.Header(&hdr), func() { *ids = append(*ids, hdr.Get(daemon.HeaderRequestID)...) }
}

// TestEventFeed runs a reveal, a dual-control approval and reveal,
// IssueUnlockCodes, RotateGroupKey and RotateGroupKeys on the real stack,
// with failed calls between them: the sync backend reads exactly one
// event per change, in order, naming who did it, the ticket and the
// request, and no secret; every ListEvents call is audited; support and
// security identities are refused the feed, and audited as refused; and
// `escrowctl events` prints the same feed, and follows it.
func TestEventFeed(t *testing.T) {
	s := newStack(t, vaultSrv)
	ctx := ctxT(t)
	ids := map[string]string{}
	call := func(name string) (grpc.CallOption, func()) {
		var got []string
		opt, done := requestID(&got)
		return opt, func() {
			done()
			if len(got) != 1 {
				t.Fatalf("%s: no request id", name)
			}
			ids[name] = got[0]
		}
	}
	var secrets []string

	// A user's epoch, then alice reveals one of its codes.
	_, slot, _ := s.provisionSuite(ctx, "ev-family", "")
	opt, done := call("issue")
	if _, err := s.sync.IssueUnlockCodes(ctx, &escrowdv1.IssueUnlockCodesRequest{GroupId: "ev-family", UserId: "bob", EscrowSlot: slot, Count: 3}, opt); err != nil {
		t.Fatal(err)
	}
	done()
	opt, done = call("reveal")
	rv, err := s.support.RevealUnlockCode(ctx, &escrowdv1.RevealUnlockCodeRequest{GroupId: "ev-family", UserId: "bob", Ticket: "SUP-42"}, opt)
	if err != nil {
		t.Fatal(err)
	}
	done()
	secrets = append(secrets, rv.GetCode(), strings.ReplaceAll(rv.GetCode(), "-", ""))

	// Calls that change nothing write no event: a reveal for a user
	// without codes, an issue from a slot of another group, a rotation
	// naming the wrong GDK version.
	if _, err := s.support.RevealUnlockCode(ctx, &escrowdv1.RevealUnlockCodeRequest{GroupId: "ev-family", UserId: "nobody", Ticket: "SUP-42"}); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("reveal for a user without codes: %v", err)
	}
	if _, err := s.sync.IssueUnlockCodes(ctx, &escrowdv1.IssueUnlockCodesRequest{GroupId: "ev-other", UserId: "bob", EscrowSlot: slot}); err == nil {
		t.Fatal("an issue from another group's slot succeeded")
	}
	if _, err := s.sync.RotateGroupKey(ctx, &escrowdv1.RotateGroupKeyRequest{GroupId: "ev-family", EscrowSlot: slot, OldGdkVersion: 2}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("a rotation from the wrong GDK version: %v", err)
	}

	// Dual control: alice asks, bob approves, alice's reveal completes.
	_, vipSlot, _ := s.provisionSuite(ctx, "vip-ev", "")
	opt, done = call("vip-issue")
	if _, err := s.sync.IssueUnlockCodes(ctx, &escrowdv1.IssueUnlockCodesRequest{GroupId: "vip-ev", UserId: "u", EscrowSlot: vipSlot, Count: 2}, opt); err != nil {
		t.Fatal(err)
	}
	done()
	pending, revealed := pendingReveal(t, s, ctx, "vip-ev", "u", "INC-7")
	bob := escrowdv1.NewSupportServiceClient(s.dial("bob"))
	opt, done = call("approve")
	if _, err := bob.ApproveReveal(ctx, approval(pending), opt); err != nil {
		t.Fatal(err)
	}
	done()
	r := <-revealed
	if r.err != nil || r.resp.GetApprovedBy() != "bob" {
		t.Fatalf("approved reveal: %v, %v", r.resp, r.err)
	}
	secrets = append(secrets, r.resp.GetCode(), strings.ReplaceAll(r.resp.GetCode(), "-", ""))

	// A member leaves: a new GDK with a new epoch for bob; then carol
	// rotates the group's escrow key.
	stay := newKeys(t)
	opt, done = call("rotate")
	if _, err := s.sync.RotateGroupKey(ctx, &escrowdv1.RotateGroupKeyRequest{GroupId: "ev-family", EscrowSlot: slot, OldGdkVersion: 1,
		Recipients:    []*escrowdv1.Recipient{stay.recipient(escrowdv1.Recipient_KIND_MEMBER, "alice", bundle.SuiteRSAOAEPSHA1)},
		UnlockUserIds: []string{"bob"}, CodesPerUser: 2}, opt); err != nil {
		t.Fatal(err)
	}
	done()
	opt, done = call("keys")
	if _, err := s.sec.RotateGroupKeys(ctx, &escrowdv1.RotateGroupKeysRequest{GroupId: "ev-family", Escrow: true}, opt); err != nil {
		t.Fatal(err)
	}
	done()

	sync, alice, carol := identities["sync-backend"], identities["alice"], identities["carol"]
	want := []*escrowdv1.Event{
		{Kind: "epoch_issued", GroupId: "ev-family", UserId: "bob", Epoch: 1, Codes: 3, UnlockKeyVersion: 1,
			Caller: sync, CallerName: "sync-backend", RequestId: ids["issue"]},
		{Kind: "code_revealed", GroupId: "ev-family", UserId: "bob", Epoch: 1, Index: 0, UnlockKeyVersion: 1, Ticket: "SUP-42",
			Caller: alice, CallerName: "alice", RequestId: ids["reveal"]},
		{Kind: "epoch_issued", GroupId: "vip-ev", UserId: "u", Epoch: 1, Codes: 2, UnlockKeyVersion: 1,
			Caller: sync, CallerName: "sync-backend", RequestId: ids["vip-issue"]},
		{Kind: "reveal_approved", GroupId: "vip-ev", UserId: "u", Ticket: "INC-7", Requester: alice, RequesterName: "alice", RevealId: pending.GetId(),
			Caller: identities["bob"], CallerName: "bob", RequestId: ids["approve"]},
		{Kind: "code_revealed", GroupId: "vip-ev", UserId: "u", Epoch: 1, Index: 0, UnlockKeyVersion: 1, Ticket: "INC-7",
			Caller: alice, CallerName: "alice", Approver: identities["bob"], ApproverName: "bob", RequestId: pending.GetId()},
		{Kind: "gdk_rotated", GroupId: "ev-family", OldGdkVersion: 1, GdkVersion: 2,
			Caller: sync, CallerName: "sync-backend", RequestId: ids["rotate"]},
		{Kind: "epoch_issued", GroupId: "ev-family", UserId: "bob", Epoch: 2, Codes: 2, UnlockKeyVersion: 1, GdkVersion: 2,
			Caller: sync, CallerName: "sync-backend", RequestId: ids["rotate"]},
		{Kind: "key_rotated", GroupId: "ev-family", EscrowKeyVersion: 2,
			Caller: carol, CallerName: "carol", RequestId: ids["keys"]},
	}

	// The sync backend reads them three at a time.
	var got []*escrowdv1.Event
	var listIDs []string
	var after uint64
	for {
		opt, done := requestID(&listIDs)
		page, err := s.sync.ListEvents(ctx, &escrowdv1.ListEventsRequest{After: after, Limit: 3}, opt)
		done()
		if err != nil {
			t.Fatal(err)
		}
		if page.GetMissed() != 0 || page.GetLast() != uint64(len(want)) {
			t.Fatalf("page after %d: %v", after, page)
		}
		got = append(got, page.GetEvents()...)
		if len(page.GetEvents()) == 0 {
			if page.GetNext() != after {
				t.Fatalf("an empty page moved the cursor from %d to %d", after, page.GetNext())
			}
			break
		}
		after = page.GetNext()
	}
	if len(got) != len(want) {
		t.Fatalf("%d events, want %d:\n%v", len(got), len(want), got)
	}
	start := time.Now().Add(-5 * time.Minute).Unix()
	for i, e := range got {
		if e.GetSequence() != uint64(i+1) || e.GetTimeUnix() < start || e.GetTimeUnix() > time.Now().Unix()+1 {
			t.Errorf("event %d: sequence %d, time %d", i+1, e.GetSequence(), e.GetTimeUnix())
		}
		c := proto.Clone(e).(*escrowdv1.Event)
		c.Sequence, c.TimeUnix = 0, 0
		if !proto.Equal(c, want[i]) {
			t.Errorf("event %d:\n got %v\nwant %v", i+1, c, want[i])
		}
	}
	feed, _ := protojson.Marshal(&escrowdv1.ListEventsResponse{Events: got})
	for _, sec := range secrets {
		if sec == "" || strings.Contains(string(feed), sec) {
			t.Errorf("the feed holds a code (%q)", sec)
		}
	}

	// Every ListEvents call has its audit record, saying what it read.
	if len(listIDs) != 4 {
		t.Fatalf("%d ListEvents request ids, want 4", len(listIDs))
	}
	for i, id := range listIDs {
		rec, err := s.find(ctx, id)
		if err != nil {
			t.Fatalf("ListEvents %s: %v", id, err)
		}
		n := max(0, min(3, len(want)-3*i))
		if rec.Operation != "/escrowd.v1.SyncService/ListEvents" || rec.Caller != sync || rec.Outcome != audit.OutcomeOK ||
			!slices.Contains(rec.Detail, "events:"+strconv.Itoa(n)) {
			t.Errorf("ListEvents record %+v, want %d events", rec.Record, n)
		}
	}

	// Support and security are refused the feed, and audited as refused.
	for _, name := range []string{"alice", "bob", "carol", "mallory"} {
		var hdr metadata.MD
		_, err := escrowdv1.NewSyncServiceClient(s.dial(name)).ListEvents(ctx, &escrowdv1.ListEventsRequest{}, grpc.Header(&hdr))
		if status.Code(err) != codes.PermissionDenied {
			t.Fatalf("%s reads the feed: %v, want PermissionDenied", name, err)
		}
		rec, err := s.find(ctx, hdr.Get(daemon.HeaderRequestID)[0])
		if err != nil || rec.Outcome != audit.OutcomeDenied || rec.Operation != "/escrowd.v1.SyncService/ListEvents" {
			t.Fatalf("%s's refused ListEvents: %+v, %v", name, rec, err)
		}
	}

	// escrowctl prints the same feed, one line per event.
	_, escrowctl := buildBinaries(t)
	env := append(os.Environ(), "ESCROWD_ADDR="+s.addr, "ESCROWCTL_PKI="+pki.dir)
	cmd := exec.Command(escrowctl, "events", "-as", "sync-backend", "-after", "1", "-limit", "2")
	cmd.Env = env
	var stderr syncBuffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("escrowctl events: %v\n%s%s", err, out, stderr.String())
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if len(lines) != len(want)-1 || !strings.Contains(stderr.String(), "cursor 8") {
		t.Fatalf("escrowctl events -after 1: %d lines\n%s\n%s", len(lines), out, stderr.String())
	}
	for _, l := range [][]string{
		{"2  ", "code_revealed", "group ev-family", "user bob", "epoch 1 index 0", "ticket SUP-42", "by alice (" + alice + ")", "request " + ids["reveal"]},
		{"4  ", "reveal_approved", "group vip-ev", "reveal " + pending.GetId() + " of alice", "ticket INC-7", "by bob"},
		{"5  ", "code_revealed", "approved by bob (" + identities["bob"] + ")"},
		{"6  ", "gdk_rotated", "GDK v1 -> v2"},
		{"8  ", "key_rotated", "escrow key v2", "by carol"},
	} {
		line, found := "", false
		for _, cand := range lines {
			if strings.HasPrefix(cand, l[0]) {
				line, found = cand, true
			}
		}
		if !found {
			t.Fatalf("no line %q…", l[0])
		}
		for _, part := range l[1:] {
			if !strings.Contains(line, part) {
				t.Errorf("line %q does not say %q", line, part)
			}
		}
	}
	cmd = exec.Command(escrowctl, "events", "-as", "alice")
	cmd.Env = env
	if out, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(out), "PermissionDenied") {
		t.Fatalf("escrowctl events as alice: %v\n%s", err, out)
	}

	// -follow prints an event written after it started.
	fctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var fout syncBuffer
	cmd = exec.CommandContext(fctx, escrowctl, "events", "-as", "sync-backend", "-after", "8", "-follow")
	cmd.Env, cmd.Stdout, cmd.Stderr = env, &fout, &fout
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		cancel()
		_ = cmd.Wait()
	}()
	if _, err := s.support.RevealUnlockCode(ctx, &escrowdv1.RevealUnlockCodeRequest{GroupId: "ev-family", UserId: "bob", Ticket: "SUP-43"}); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(20 * time.Second); !strings.Contains(fout.String(), "ticket SUP-43"); time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("escrowctl events -follow did not print the new reveal:\n%s", fout.String())
		}
	}
	if !strings.HasPrefix(fout.String(), "9  ") || strings.Count(fout.String(), "\n") != 1 {
		t.Fatalf("escrowctl events -follow -after 8 printed:\n%s", fout.String())
	}
}
