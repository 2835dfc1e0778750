package daemon

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	escrowdv1 "github.com/escrowd/escrowd/api/escrowd/v1"
	"github.com/escrowd/escrowd/audit"
	"github.com/escrowd/escrowd/escrow"
	"github.com/escrowd/escrowd/escrow/unlockcode"
	"github.com/escrowd/escrowd/store"
)

// These tests cover the daemon's own logic (audit ordering, error mapping,
// health) with fakes around it. The e2e package runs the same paths on
// real SoftHSM, Vault and bbolt.

type fakeEscrow struct {
	err    error
	panics bool
	code   unlockcode.Code
}

func (f *fakeEscrow) Provision(ctx context.Context, group, suite string) (escrow.EscrowPublic, error) {
	if f.panics {
		panic("boom")
	}
	return escrow.EscrowPublic{Group: group, Version: 1, Suite: "rsa-oaep-sha1"}, f.err
}
func (f *fakeEscrow) EscrowKey(ctx context.Context, group string) (escrow.EscrowPublic, error) {
	return escrow.EscrowPublic{Group: group, Version: 1}, f.err
}
func (f *fakeEscrow) Rewrap(ctx context.Context, group string, slot []byte, r escrow.Recipient) ([]byte, escrow.Used, error) {
	return []byte("slot"), escrow.Used{EscrowVersion: 1}, f.err
}
func (f *fakeEscrow) IssueCodes(ctx context.Context, group, user string, slot []byte, n int) (escrow.Issued, error) {
	return escrow.Issued{Epoch: 1}, f.err
}
func (f *fakeEscrow) RevealCode(ctx context.Context, group, user string) (escrow.Revealed, error) {
	if f.err != nil {
		return escrow.Revealed{}, f.err
	}
	return escrow.Revealed{Code: f.code, Epoch: 2, Index: 3, Remaining: 1, Used: escrow.Used{UnlockVersion: 1}}, nil
}
func (f *fakeEscrow) Codes(ctx context.Context, group, user string) (store.Codes, error) {
	return store.Codes{Epoch: 1, Revealed: []bool{true, false}}, f.err
}
func (f *fakeEscrow) Group(ctx context.Context, group string) (store.Group, error) {
	return store.Group{ID: group}, f.err
}

type fakeAuditor struct {
	mu   sync.Mutex
	recs []audit.Record
	err  error
}

func (a *fakeAuditor) Commit(ctx context.Context, r *audit.Record) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.err != nil {
		return a.err
	}
	a.recs = append(a.recs, *r)
	return nil
}

type fakeCheck struct{ err error }

func (c fakeCheck) Healthy(context.Context) error { return c.err }

func start(t *testing.T, e *fakeEscrow, a *fakeAuditor, checks map[string]Checker) *grpc.ClientConn {
	t.Helper()
	s, err := New(Config{Escrow: e, Auditor: a, Checks: checks})
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go s.Serve(lis)
	t.Cleanup(func() { s.Shutdown(context.Background()) })
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

func TestErrorCodes(t *testing.T) {
	tests := []struct {
		err  error
		code codes.Code
	}{
		{nil, codes.OK},
		{fmt.Errorf("%w: group_id: empty id", escrow.ErrInvalid), codes.InvalidArgument},
		{escrow.ErrSlot, codes.InvalidArgument},
		{escrow.ErrKeyVersion, codes.InvalidArgument},
		{escrow.ErrNotFound, codes.NotFound},
		{escrow.ErrExists, codes.AlreadyExists},
		{escrow.ErrNoCodes, codes.FailedPrecondition},
		{escrow.ErrExhausted, codes.FailedPrecondition},
		{escrow.ErrUnsupported, codes.FailedPrecondition},
		{escrow.ErrConflict, codes.Aborted},
		{fmt.Errorf("%w: HSM: pool wait", escrow.ErrUnavailable), codes.Unavailable},
		{context.DeadlineExceeded, codes.DeadlineExceeded},
		{errors.New("disk on fire at /var/lib/secret-path"), codes.Internal},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprint(tt.code), func(t *testing.T) {
			a := &fakeAuditor{}
			conn := start(t, &fakeEscrow{err: tt.err}, a, nil)
			_, err := escrowdv1.NewSyncServiceClient(conn).ProvisionGroup(context.Background(), &escrowdv1.ProvisionGroupRequest{GroupId: "g1"})
			if got := status.Code(err); got != tt.code {
				t.Fatalf("code %v, want %v (%v)", got, tt.code, err)
			}
			if tt.code == codes.Internal && strings.Contains(err.Error(), "disk on fire") {
				t.Fatalf("internal error text reached the caller: %v", err)
			}
			if len(a.recs) != 1 {
				t.Fatalf("%d audit records, want 1", len(a.recs))
			}
			r := a.recs[0]
			if r.Code != tt.code.String() || r.Group != "g1" || r.Operation != "/escrowd.v1.SyncService/ProvisionGroup" {
				t.Fatalf("record %+v", r)
			}
			want := audit.OutcomeOK
			if tt.err != nil {
				want = audit.OutcomeError
			}
			if r.Outcome != want {
				t.Fatalf("outcome %s, want %s", r.Outcome, want)
			}
		})
	}
}

// TestAuditFailureWithholdsResult: when the audit commit fails, a reveal
// returns Unavailable and no code.
func TestAuditFailureWithholdsResult(t *testing.T) {
	code, _ := unlockcode.FromMaterial([]byte("0123456789"))
	a := &fakeAuditor{err: fmt.Errorf("%w: connection refused", audit.ErrUnavailable)}
	conn := start(t, &fakeEscrow{code: code}, a, nil)
	resp, err := escrowdv1.NewSupportServiceClient(conn).RevealUnlockCode(context.Background(),
		&escrowdv1.RevealUnlockCodeRequest{GroupId: "g", UserId: "u", Ticket: "T-1"})
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("reveal with audit down: %v, want Unavailable", err)
	}
	if resp.GetCode() != "" {
		t.Fatal("a code came back without its audit record")
	}
	if strings.Contains(err.Error(), code.String()) {
		t.Fatal("the error holds the code")
	}
}

func TestRevealRecord(t *testing.T) {
	code, _ := unlockcode.FromMaterial([]byte("0123456789"))
	a := &fakeAuditor{}
	conn := start(t, &fakeEscrow{code: code}, a, nil)
	var hdr metadata.MD
	resp, err := escrowdv1.NewSupportServiceClient(conn).RevealUnlockCode(context.Background(),
		&escrowdv1.RevealUnlockCodeRequest{GroupId: "g", UserId: "u", Ticket: "T-1"}, grpc.Header(&hdr))
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetCode() != code.String() || resp.GetEpoch() != 2 || resp.GetIndex() != 3 || resp.GetRemaining() != 1 {
		t.Fatalf("response %v", resp)
	}
	r := a.recs[0]
	if got := hdr.Get(HeaderRequestID); len(got) != 1 || got[0] != r.ID {
		t.Fatalf("request id header %v, record id %s", got, r.ID)
	}
	if r.Ticket != "T-1" || r.User != "u" || r.Outcome != audit.OutcomeOK ||
		strings.Join(r.KeyVersions, ",") != "unlock:1" || strings.Join(r.Detail, ",") != "epoch:2,index:3" {
		t.Fatalf("record %+v", r)
	}
	if strings.Contains(fmt.Sprintf("%+v", r), code.String()) {
		t.Fatal("the audit record holds the code")
	}
}

func TestRevealNeedsTicket(t *testing.T) {
	a := &fakeAuditor{}
	conn := start(t, &fakeEscrow{}, a, nil)
	for _, ticket := range []string{"", "has space", strings.Repeat("x", 200)} {
		_, err := escrowdv1.NewSupportServiceClient(conn).RevealUnlockCode(context.Background(),
			&escrowdv1.RevealUnlockCodeRequest{GroupId: "g", UserId: "u", Ticket: ticket})
		if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "ticket") {
			t.Fatalf("ticket %q: %v", ticket, err)
		}
	}
	if len(a.recs) != 3 || a.recs[0].Outcome != audit.OutcomeError {
		t.Fatalf("refusals are audited: %+v", a.recs)
	}
}

func TestPanicIsAuditedInternal(t *testing.T) {
	a := &fakeAuditor{}
	conn := start(t, &fakeEscrow{panics: true}, a, nil)
	_, err := escrowdv1.NewSyncServiceClient(conn).ProvisionGroup(context.Background(), &escrowdv1.ProvisionGroupRequest{GroupId: "g"})
	if status.Code(err) != codes.Internal {
		t.Fatalf("panic: %v", err)
	}
	if len(a.recs) != 1 || a.recs[0].Code != "Internal" {
		t.Fatalf("records %+v", a.recs)
	}
}

func TestHealth(t *testing.T) {
	for _, tt := range []struct {
		name   string
		checks map[string]Checker
		want   healthpb.HealthCheckResponse_ServingStatus
	}{
		{"all healthy", map[string]Checker{"hsm": fakeCheck{}, "vault": fakeCheck{}}, healthpb.HealthCheckResponse_SERVING},
		{"vault down", map[string]Checker{"hsm": fakeCheck{}, "vault": fakeCheck{errors.New("down")}}, healthpb.HealthCheckResponse_NOT_SERVING},
	} {
		t.Run(tt.name, func(t *testing.T) {
			a := &fakeAuditor{}
			conn := start(t, &fakeEscrow{}, a, tt.checks)
			for _, svc := range serviceNames {
				r, err := healthpb.NewHealthClient(conn).Check(context.Background(), &healthpb.HealthCheckRequest{Service: svc})
				if err != nil || r.GetStatus() != tt.want {
					t.Fatalf("health %q: %v %v, want %v", svc, r.GetStatus(), err, tt.want)
				}
			}
			if len(a.recs) != 0 {
				t.Fatal("health checks were audited")
			}
		})
	}
}
