package daemon

import (
	"bytes"
	"context"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	escrowdv1 "github.com/escrowd/escrowd/api/escrowd/v1"
	"github.com/escrowd/escrowd/escrow"
	"github.com/escrowd/escrowd/store"
	"github.com/escrowd/escrowd/store/bolt"
)

// storeEscrow is fakeEscrow whose issues and reveals reach a real store,
// so that the events they write show the origin the handlers gave them.
type storeEscrow struct {
	fakeEscrow
	st store.Store
}

func (e *storeEscrow) IssueCodes(ctx context.Context, group, user string, slot []byte, n int) (escrow.Issued, error) {
	c, err := e.st.StartEpoch(ctx, group, user, 0, 1, n, bytes.Repeat([]byte{1}, store.NonceSize))
	return escrow.Issued{Epoch: c.Epoch}, err
}

func (e *storeEscrow) RevealCode(ctx context.Context, group, user string) (escrow.Revealed, error) {
	i, c, err := e.st.ClaimCode(ctx, group, user)
	return escrow.Revealed{Epoch: c.Epoch, Index: uint32(i)}, err
}

// TestListEvents: the events of requests carry their caller, person,
// ticket and request id; ListEvents pages them, says what a reader missed
// to pruning, refuses a cursor past the newest event and a page too
// large, and is audited like any request.
func TestListEvents(t *testing.T) {
	ctx := context.Background()
	st, err := bolt.Open(filepath.Join(t.TempDir(), "events.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	if err := st.CreateGroup(ctx, store.Group{ID: "g"}); err != nil {
		t.Fatal(err)
	}
	a := &fakeAuditor{}
	conn, _ := startWith(t, &fakeEscrow{}, a, nil, nil)
	if _, err := escrowdv1.NewSyncServiceClient(conn).ListEvents(ctx, &escrowdv1.ListEventsRequest{}); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("ListEvents without an event log: %v, want FailedPrecondition", err)
	}

	a = &fakeAuditor{}
	conn, _ = startWith(t, &fakeEscrow{}, a, nil, func(c *Config) { c.Escrow, c.Events = &storeEscrow{st: st}, st })
	syncc, support := escrowdv1.NewSyncServiceClient(conn), escrowdv1.NewSupportServiceClient(conn)
	var issueHdr, revealHdr metadata.MD
	if _, err := syncc.IssueUnlockCodes(ctx, &escrowdv1.IssueUnlockCodesRequest{GroupId: "g", UserId: "u", Count: 3}, grpc.Header(&issueHdr)); err != nil {
		t.Fatal(err)
	}
	if _, err := support.RevealUnlockCode(ctx, &escrowdv1.RevealUnlockCodeRequest{GroupId: "g", UserId: "u", Ticket: "SUP-7"}, grpc.Header(&revealHdr)); err != nil {
		t.Fatal(err)
	}
	var hdr metadata.MD
	r, err := syncc.ListEvents(ctx, &escrowdv1.ListEventsRequest{}, grpc.Header(&hdr))
	if err != nil {
		t.Fatal(err)
	}
	if len(r.GetEvents()) != 2 || r.GetNext() != 2 || r.GetLast() != 2 || r.GetMissed() != 0 {
		t.Fatalf("ListEvents: %v", r)
	}
	issued, revealed := r.GetEvents()[0], r.GetEvents()[1]
	if issued.GetSequence() != 1 || issued.GetKind() != store.EventEpochIssued || issued.GetCodes() != 3 || issued.GetEpoch() != 1 ||
		issued.GetCaller() != testerID || issued.GetCallerName() != "tester" || issued.GetRequestId() != issueHdr.Get(HeaderRequestID)[0] {
		t.Fatalf("epoch event %v", issued)
	}
	if revealed.GetSequence() != 2 || revealed.GetKind() != store.EventCodeRevealed || revealed.GetGroupId() != "g" || revealed.GetUserId() != "u" ||
		revealed.GetIndex() != 0 || revealed.GetTicket() != "SUP-7" || revealed.GetCaller() != testerID || revealed.GetCallerName() != "tester" ||
		revealed.GetApprover() != "" || revealed.GetRequestId() != revealHdr.Get(HeaderRequestID)[0] ||
		revealed.GetTimeUnix() < time.Now().Add(-time.Minute).Unix() {
		t.Fatalf("reveal event %v", revealed)
	}
	// The call is audited, with the cursor and what it returned.
	rec := a.recs[len(a.recs)-1]
	if rec.ID != hdr.Get(HeaderRequestID)[0] || rec.Operation != "/escrowd.v1.SyncService/ListEvents" || rec.Caller != testerID ||
		!slices.Equal(rec.Detail, []string{"after:0", "events:2", "next:2"}) {
		t.Fatalf("ListEvents record %+v", rec)
	}
	if r, err = syncc.ListEvents(ctx, &escrowdv1.ListEventsRequest{After: 1, Limit: 1}); err != nil || len(r.GetEvents()) != 1 || r.GetNext() != 2 {
		t.Fatalf("page after 1: %v, %v", r, err)
	}
	if r, err = syncc.ListEvents(ctx, &escrowdv1.ListEventsRequest{After: 2}); err != nil || len(r.GetEvents()) != 0 || r.GetNext() != 2 || r.GetMissed() != 0 {
		t.Fatalf("page after the last: %v, %v", r, err)
	}
	if _, err = syncc.ListEvents(ctx, &escrowdv1.ListEventsRequest{Limit: store.MaxEventPage + 1}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("a page too large: %v, want InvalidArgument", err)
	}
	_, err = syncc.ListEvents(ctx, &escrowdv1.ListEventsRequest{After: 3})
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "past the newest event 2") {
		t.Fatalf("a cursor past the newest event: %v, want FailedPrecondition", err)
	}
	if rec := a.recs[len(a.recs)-1]; rec.Outcome != "error" || !slices.Equal(rec.Detail, []string{"after:3"}) {
		t.Fatalf("refused ListEvents record %+v", rec)
	}

	// Pruned before a reader read them: the reader is told how many it
	// missed, and where to go on from.
	for range 2 {
		if _, err := support.RevealUnlockCode(ctx, &escrowdv1.RevealUnlockCodeRequest{GroupId: "g", UserId: "u", Ticket: "SUP-7"}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := st.PruneEvents(ctx, time.Now().Add(-time.Hour), 1); err != nil {
		t.Fatal(err)
	}
	r, err = syncc.ListEvents(ctx, &escrowdv1.ListEventsRequest{After: 1})
	if err != nil || len(r.GetEvents()) != 1 || r.GetEvents()[0].GetSequence() != 4 || r.GetMissed() != 2 || r.GetNext() != 4 {
		t.Fatalf("reading past pruned events: %v, %v; want event 4, 2 missed", r, err)
	}
	if rec := a.recs[len(a.recs)-1]; !slices.Equal(rec.Detail, []string{"after:1", "events:1", "next:4", "missed:2"}) {
		t.Fatalf("record %+v", rec)
	}
	if r, err = syncc.ListEvents(ctx, &escrowdv1.ListEventsRequest{}); err != nil || r.GetMissed() != 0 || len(r.GetEvents()) != 1 {
		t.Fatalf("a new reader: %v, %v; it starts at the oldest kept and missed nothing", r, err)
	}
	if _, err := st.PruneEvents(ctx, time.Now().Add(time.Hour), 0); err != nil {
		t.Fatal(err)
	}
	if r, err = syncc.ListEvents(ctx, &escrowdv1.ListEventsRequest{After: 2}); err != nil || len(r.GetEvents()) != 0 || r.GetMissed() != 2 || r.GetNext() != 4 {
		t.Fatalf("every event pruned: %v, %v; want none, 2 missed, next 4", r, err)
	}
}
