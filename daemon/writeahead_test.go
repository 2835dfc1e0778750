package daemon

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	escrowdv1 "github.com/escrowd/escrowd/api/escrowd/v1"
	"github.com/escrowd/escrowd/audit"
	"github.com/escrowd/escrowd/escrow"
	"github.com/escrowd/escrowd/store"
)

// TestEveryOperationClassified: each operation of the API either changes
// state (write-ahead) or does not, and is listed once.
func TestEveryOperationClassified(t *testing.T) {
	all := append(slices.Clone(writeAheadOps), readOps...)
	slices.Sort(all)
	ops := Operations()
	slices.Sort(ops)
	if !slices.Equal(all, ops) {
		t.Fatalf("classified %v\nthe API has %v", all, ops)
	}
	for _, op := range overlappedOps {
		if !slices.Contains(writeAheadOps, op) {
			t.Fatalf("%s is overlapped but not write-ahead", op)
		}
	}
	for _, op := range overlappedReadOps {
		if !slices.Contains(readOps, op) {
			t.Fatalf("%s is an overlapped read but not a read", op)
		}
	}
}

// recordingEscrow logs every call that would change state, in the order
// they come, into a log it shares with an auditor.
type recordingEscrow struct {
	fakeEscrow
	log *callLog
}

type callLog struct {
	mu    sync.Mutex
	calls []string
	fail  bool // the auditor fails every commit
}

func (l *callLog) add(s string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.calls = append(l.calls, s)
}

func (l *callLog) Commit(_ context.Context, r *audit.Record) error {
	if l.fail {
		return fmt.Errorf("%w: connection refused", audit.ErrUnavailable)
	}
	l.add("audit " + r.Phase + " " + operation(r.Operation))
	return nil
}

func (e *recordingEscrow) Provision(ctx context.Context, g, s string) (escrow.EscrowPublic, error) {
	e.log.add("escrow Provision")
	return e.fakeEscrow.Provision(ctx, g, s)
}
func (e *recordingEscrow) IssueCodes(ctx context.Context, g, u string, slot []byte, n int) (escrow.Issued, error) {
	e.log.add("escrow IssueCodes")
	return e.fakeEscrow.IssueCodes(ctx, g, u, slot, n)
}
func (e *recordingEscrow) RevealCode(ctx context.Context, g, u string) (escrow.Revealed, error) {
	if err := escrow.PassGate(ctx); err != nil {
		return escrow.Revealed{}, err
	}
	e.log.add("escrow RevealCode")
	return e.fakeEscrow.RevealCode(ctx, g, u)
}
func (e *recordingEscrow) ConsumeCode(ctx context.Context, g, u string, ep, i uint32) (store.Codes, error) {
	e.log.add("escrow ConsumeCode")
	return e.fakeEscrow.ConsumeCode(ctx, g, u, ep, i)
}
func (e *recordingEscrow) Rotate(ctx context.Context, g string, r escrow.Rotation) (escrow.Rotated, error) {
	e.log.add("escrow Rotate")
	return e.fakeEscrow.Rotate(ctx, g, r)
}
func (e *recordingEscrow) RotateGroup(context.Context, string, bool, bool) (store.Group, error) {
	e.log.add("versions RotateGroup")
	return store.Group{}, nil
}
func (e *recordingEscrow) SetMinVersions(context.Context, string, uint32, uint32) (store.Group, error) {
	e.log.add("versions SetMinVersions")
	return store.Group{}, nil
}
func (e *recordingEscrow) DestroyVersion(context.Context, string, escrow.KeyKind, uint32) (store.Group, error) {
	e.log.add("versions DestroyVersion")
	return store.Group{}, nil
}
func (e *recordingEscrow) Start(context.Context, string, map[string]string) (store.Job, error) {
	e.log.add("jobs Start")
	return store.Job{}, nil
}
func (e *recordingEscrow) Jobs(context.Context) ([]store.Job, error) { return nil, nil }
func (e *recordingEscrow) Cancel(context.Context, string) (store.Job, error) {
	e.log.add("jobs Cancel")
	return store.Job{}, nil
}
func (e *recordingEscrow) DestroyKEK(context.Context, uint32) error {
	e.log.add("jobs DestroyKEK")
	return nil
}

// mutatingCalls calls each write-ahead RPC, with fields enough to pass the
// pipeline's checks.
func mutatingCalls(conn *grpc.ClientConn) map[string]func(context.Context) error {
	syncc, sup, sec := escrowdv1.NewSyncServiceClient(conn), escrowdv1.NewSupportServiceClient(conn), escrowdv1.NewSecurityServiceClient(conn)
	ign := func(_ proto.Message, err error) error { return err }
	return map[string]func(context.Context) error{
		"ProvisionGroup": func(ctx context.Context) error {
			return ign(syncc.ProvisionGroup(ctx, &escrowdv1.ProvisionGroupRequest{GroupId: "g"}))
		},
		"IssueUnlockCodes": func(ctx context.Context) error {
			return ign(syncc.IssueUnlockCodes(ctx, &escrowdv1.IssueUnlockCodesRequest{GroupId: "g", UserId: "u", Count: 4}))
		},
		"MarkUnlockCodeConsumed": func(ctx context.Context) error {
			return ign(syncc.MarkUnlockCodeConsumed(ctx, &escrowdv1.MarkUnlockCodeConsumedRequest{GroupId: "g", UserId: "u", Epoch: 1}))
		},
		"RotateGroupKey": func(ctx context.Context) error {
			return ign(syncc.RotateGroupKey(ctx, &escrowdv1.RotateGroupKeyRequest{GroupId: "g"}))
		},
		"RevealUnlockCode": func(ctx context.Context) error {
			return ign(sup.RevealUnlockCode(ctx, &escrowdv1.RevealUnlockCodeRequest{GroupId: "g", UserId: "u", Ticket: "T-1"}))
		},
		"ApproveReveal": func(ctx context.Context) error {
			return ign(sup.ApproveReveal(ctx, &escrowdv1.ApproveRevealRequest{Id: "r1", GroupId: "g", UserId: "u", Ticket: "T-1"}))
		},
		"RotateGroupKeys": func(ctx context.Context) error {
			return ign(sec.RotateGroupKeys(ctx, &escrowdv1.RotateGroupKeysRequest{GroupId: "g"}))
		},
		"SetMinDecryptionVersion": func(ctx context.Context) error {
			return ign(sec.SetMinDecryptionVersion(ctx, &escrowdv1.SetMinDecryptionVersionRequest{GroupId: "g", MinEscrowVersion: 1}))
		},
		"DestroyKeyVersion": func(ctx context.Context) error {
			return ign(sec.DestroyKeyVersion(ctx, &escrowdv1.DestroyKeyVersionRequest{GroupId: "g", Version: 1}))
		},
		"StartJob": func(ctx context.Context) error {
			return ign(sec.StartJob(ctx, &escrowdv1.StartJobRequest{Kind: "rewrap-kek"}))
		},
		"CancelJob": func(ctx context.Context) error {
			return ign(sec.CancelJob(ctx, &escrowdv1.CancelJobRequest{Id: "j1"}))
		},
		"DestroyKEK": func(ctx context.Context) error {
			return ign(sec.DestroyKEK(ctx, &escrowdv1.DestroyKEKRequest{Version: 1}))
		},
	}
}

func startRecording(t *testing.T, log *callLog) *grpc.ClientConn {
	e := &recordingEscrow{log: log}
	conn, _ := startWith(t, &e.fakeEscrow, &fakeAuditor{}, nil, func(c *Config) {
		c.Escrow, c.Versions, c.Jobs, c.Auditor = e, e, e, log
	})
	return conn
}

// TestNothingDoneWithoutIntent: with the audit trail failing, no
// state-changing RPC reaches the code that changes state, and each answers
// UNAVAILABLE saying that nothing was done.
func TestNothingDoneWithoutIntent(t *testing.T) {
	log := &callLog{fail: true}
	conn := startRecording(t, log)
	calls := mutatingCalls(conn)
	if len(calls) != len(writeAheadOps) {
		t.Fatalf("%d calls for %d write-ahead operations", len(calls), len(writeAheadOps))
	}
	for _, op := range writeAheadOps {
		err := calls[op](context.Background())
		if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "nothing was done") {
			t.Errorf("%s with the audit trail down: %v, want Unavailable, nothing was done", op, err)
		}
	}
	if len(log.calls) != 0 {
		t.Fatalf("state changed without an intent on record: %q", log.calls)
	}
}

// TestIntentBeforeAction: each state-changing RPC commits its intent
// before it acts and its outcome after.
func TestIntentBeforeAction(t *testing.T) {
	log := &callLog{}
	conn := startRecording(t, log)
	for op, call := range mutatingCalls(conn) {
		log.calls = nil
		_ = call(context.Background()) // ApproveReveal finds no pending reveal: its intent and outcome still pair
		if n := len(log.calls); n < 2 || log.calls[0] != "audit intent "+op || log.calls[n-1] != "audit outcome "+op {
			t.Errorf("%s: %q, want the intent first and the outcome last", op, log.calls)
		}
	}
}

// queueLog is a callLog that can also queue an outcome (OutcomeAuditor),
// keeping the callback a failed write would call.
type queueLog struct {
	*callLog
	failQueue bool
	failed    []func(error)
}

func (q *queueLog) Enqueue(_ context.Context, r *audit.Record, failed func(error)) error {
	if q.failQueue {
		return fmt.Errorf("%w: audit queue full", audit.ErrUnavailable)
	}
	q.add("audit queued " + r.Phase + " " + operation(r.Operation))
	q.failed = append(q.failed, failed)
	return nil
}

type openIntents struct {
	nopObserver
	mu sync.Mutex
	n  map[string]int
}

func (o *openIntents) ObserveOpenIntent(op string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.n[op]++
}

// TestRevealOutcomeQueued: a reveal's code leaves once its intent is
// committed and its outcome queued, and no other operation's result
// does; a queued outcome whose write fails counts an open intent. With
// OutcomeBeforeRelease the outcome is committed before the code leaves.
func TestRevealOutcomeQueued(t *testing.T) {
	for _, before := range []bool{false, true} {
		t.Run(fmt.Sprintf("OutcomeBeforeRelease=%v", before), func(t *testing.T) {
			q := &queueLog{callLog: &callLog{}}
			obs := &openIntents{n: map[string]int{}}
			e := &recordingEscrow{log: q.callLog}
			conn, _ := startWith(t, &e.fakeEscrow, &fakeAuditor{}, nil, func(c *Config) {
				c.Escrow, c.Versions, c.Jobs, c.Auditor, c.Observer = e, e, e, q, obs
				c.OutcomeBeforeRelease = before
			})
			for op, call := range mutatingCalls(conn) {
				q.calls = nil
				_ = call(context.Background())
				want := "audit outcome " + op
				if op == "RevealUnlockCode" && !before {
					want = "audit queued outcome " + op
				}
				if n := len(q.calls); n < 2 || q.calls[0] != "audit intent "+op || q.calls[n-1] != want {
					t.Errorf("%s: %q, want the intent first and %q last", op, q.calls, want)
				}
			}
			if before {
				if len(q.failed) != 0 {
					t.Fatalf("%d outcomes queued with OutcomeBeforeRelease", len(q.failed))
				}
				return
			}
			if len(q.failed) != 1 {
				t.Fatalf("%d outcomes queued, want the reveal's", len(q.failed))
			}
			q.failed[0](fmt.Errorf("%w: Vault sealed", audit.ErrUnavailable))
			if obs.n["RevealUnlockCode"] != 1 {
				t.Fatalf("open intents counted after the queued outcome's write failed: %v", obs.n)
			}
			// An outcome the auditor cannot even hold withholds the code.
			q.failQueue = true
			sup := escrowdv1.NewSupportServiceClient(conn)
			rv, err := sup.RevealUnlockCode(context.Background(), &escrowdv1.RevealUnlockCodeRequest{GroupId: "g", UserId: "u", Ticket: "T-1"})
			if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "may have taken effect") || rv.GetCode() != "" {
				t.Fatalf("reveal whose outcome could not be queued: %v (code %q), want Unavailable, may have taken effect", err, rv.GetCode())
			}
		})
	}
}

// overlapLog is a queueLog whose commit of a Rewrap's first record holds
// until the re-wrap has reached the HSM layer: a pipeline that committed
// it before the work, not alongside, would wait here until it fails.
type overlapLog struct {
	*queueLog
	working chan struct{}
}

func (o *overlapLog) Commit(ctx context.Context, r *audit.Record) error {
	if r.Phase == audit.PhaseIntent && operation(r.Operation) == "Rewrap" {
		select {
		case <-o.working:
		case <-time.After(5 * time.Second):
			return fmt.Errorf("%w: the re-wrap did not start while its record was written", audit.ErrUnavailable)
		}
	}
	return o.queueLog.Commit(ctx, r)
}

type workingEscrow struct {
	*recordingEscrow
	working chan struct{}
	once    sync.Once
}

func (e *workingEscrow) Rewrap(ctx context.Context, group string, slot []byte, r escrow.Recipient) ([]byte, escrow.Used, error) {
	e.once.Do(func() { close(e.working) })
	e.log.add("escrow Rewrap")
	return e.fakeEscrow.Rewrap(ctx, group, slot, r)
}

// TestRewrapRecordAlongsideWork: a re-wrap's first record is written
// while the HSM works, and its outcome queued; its result leaves only
// once that record is committed. With OutcomeBeforeRelease it keeps one
// record, committed after the work.
func TestRewrapRecordAlongsideWork(t *testing.T) {
	req := &escrowdv1.RewrapRequest{GroupId: "g", EscrowSlot: []byte{1},
		Recipient: &escrowdv1.Recipient{Kind: escrowdv1.Recipient_KIND_MEMBER, Id: "m", KeyVersion: 1, Suite: "ecdh-p256"}}
	for _, c := range []struct {
		name               string
		before, failIntent bool
		want               []string
	}{
		{"queued", false, false, []string{"escrow Rewrap", "audit intent Rewrap", "audit queued outcome Rewrap"}},
		{"before release", true, false, []string{"escrow Rewrap", "audit  Rewrap"}},
		{"first record fails", false, true, []string{"escrow Rewrap"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			working := make(chan struct{})
			q := &overlapLog{queueLog: &queueLog{callLog: &callLog{}}, working: working}
			e := &workingEscrow{recordingEscrow: &recordingEscrow{log: q.callLog}, working: working}
			conn, _ := startWith(t, &e.fakeEscrow, &fakeAuditor{}, nil, func(cfg *Config) {
				cfg.Escrow, cfg.Auditor, cfg.OutcomeBeforeRelease = e, q, c.before
			})
			q.fail = c.failIntent
			resp, err := escrowdv1.NewSyncServiceClient(conn).Rewrap(context.Background(), req)
			if c.failIntent {
				if status.Code(err) != codes.Unavailable || len(resp.GetSlot()) != 0 {
					t.Fatalf("re-wrap whose record failed: %v (%d bytes of slot), want Unavailable and nothing", err, len(resp.GetSlot()))
				}
			} else if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(q.calls, c.want) {
				t.Fatalf("calls %q, want %q", q.calls, c.want)
			}
		})
	}
}
