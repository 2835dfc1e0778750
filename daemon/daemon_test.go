package daemon

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	escrowdv1 "github.com/escrowd/escrowd/api/escrowd/v1"
	"github.com/escrowd/escrowd/audit"
	"github.com/escrowd/escrowd/escrow"
	"github.com/escrowd/escrowd/escrow/unlockcode"
	"github.com/escrowd/escrowd/internal/devpki"
	"github.com/escrowd/escrowd/policy"
	"github.com/escrowd/escrowd/store"
	"github.com/escrowd/escrowd/store/bolt"
)

// These tests cover the daemon's own logic (audit ordering, error mapping,
// health) with fakes around it. The e2e package runs the same paths on
// real SoftHSM, Vault and bbolt.

type fakeEscrow struct {
	err     error
	batched int
	panics  bool
	code    unlockcode.Code
	// entered, if set, receives a value when Provision starts, which then
	// waits for release.
	entered chan struct{}
	release chan struct{}
}

func (f *fakeEscrow) Provision(ctx context.Context, group, suite string) (escrow.EscrowPublic, error) {
	if f.panics {
		panic("boom")
	}
	if f.entered != nil {
		f.entered <- struct{}{}
		<-f.release
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

func (f *fakeEscrow) RewrapToEscrow(ctx context.Context, group string, slot []byte, v uint32) ([]byte, escrow.Used, error) {
	return nil, escrow.Used{}, f.err
}
func (f *fakeEscrow) BatchRewrap(ctx context.Context, items []escrow.BatchItem) ([]escrow.BatchResult, error) {
	f.batched += len(items)
	res := make([]escrow.BatchResult, len(items))
	for i, it := range items {
		res[i] = escrow.BatchResult{Ref: it.Ref, Err: f.err}
		if f.err == nil {
			res[i].Slot = []byte("slot")
		}
	}
	return res, nil
}
func (f *fakeEscrow) ConsumeCode(ctx context.Context, group, user string, epoch, index uint32) (store.Codes, error) {
	return store.Codes{}, f.err
}
func (f *fakeEscrow) Rotate(ctx context.Context, group string, r escrow.Rotation) (escrow.Rotated, error) {
	return escrow.Rotated{}, f.err
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

// testPKI is one CA with a server certificate and a client certificate
// for spiffe://escrowd.test/tester, whom the test policy grants everything.
type testPKI struct {
	ca     *devpki.CA
	server tls.Certificate
	client tls.Certificate
}

const testerID = "spiffe://escrowd.test/tester"

func newPKI(t *testing.T) *testPKI {
	t.Helper()
	ca, err := devpki.NewCA("test CA")
	if err != nil {
		t.Fatal(err)
	}
	sp, err := ca.Server()
	if err != nil {
		t.Fatal(err)
	}
	cp, err := ca.Client(testerID, time.Time{}, time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	p := &testPKI{ca: ca}
	if p.server, err = sp.TLS(); err != nil {
		t.Fatal(err)
	}
	if p.client, err = cp.TLS(); err != nil {
		t.Fatal(err)
	}
	return p
}

func allowAll(t *testing.T) *policy.Policy {
	t.Helper()
	y := "version: 1\nroles:\n  all:\n    operations: [" + strings.Join(Operations(), ", ") + "]\n" +
		"identities:\n  - id: " + testerID + "\n    name: tester\n    roles: [all]\n"
	p, err := policy.Parse("test.yaml", []byte(y), Operations())
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func start(t *testing.T, e *fakeEscrow, a *fakeAuditor, checks map[string]Checker) *grpc.ClientConn {
	t.Helper()
	conn, _ := startWith(t, e, a, checks, nil)
	return conn
}

// startWith is start with the Config changed by mod, and the server.
func startWith(t *testing.T, e *fakeEscrow, a *fakeAuditor, checks map[string]Checker, mod func(*Config)) (*grpc.ClientConn, *Server) {
	t.Helper()
	pki := newPKI(t)
	st, err := bolt.Open(filepath.Join(t.TempDir(), "state.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	cfg := Config{Escrow: e, Auditor: a, Checks: checks, State: st, Policy: allowAll(t),
		TLS: &tls.Config{Certificates: []tls.Certificate{pki.server}}, ClientCAs: pki.ca.Pool()}
	if mod != nil {
		mod(&cfg)
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go s.Serve(lis)
	t.Cleanup(func() { s.Shutdown(context.Background()) })
	dial := func(certs ...tls.Certificate) *grpc.ClientConn {
		creds := credentials.NewTLS(&tls.Config{RootCAs: pki.ca.Pool(), Certificates: certs, MinVersion: tls.VersionTLS13})
		conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(creds))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		return conn
	}
	anonymous = dial()
	lastPKI, lastAddr = pki, lis.Addr().String()
	return dial(pki.client), s
}

// anonymous is a connection without a client certificate to the server
// start made last; lastPKI and lastAddr are that server's CA and address.
var (
	anonymous *grpc.ClientConn
	lastPKI   *testPKI
	lastAddr  string
)

func TestErrorCodes(t *testing.T) {
	tests := []struct {
		err  error
		code codes.Code
	}{
		{nil, codes.OK},
		{fmt.Errorf("%w: group_id: empty id", escrow.ErrInvalid), codes.InvalidArgument},
		{escrow.ErrSlot, codes.InvalidArgument},
		{escrow.ErrBinding, codes.InvalidArgument},
		{escrow.ErrKeyVersion, codes.InvalidArgument},
		{escrow.ErrNotFound, codes.NotFound},
		{escrow.ErrExists, codes.AlreadyExists},
		{escrow.ErrNoCodes, codes.FailedPrecondition},
		{escrow.ErrExhausted, codes.FailedPrecondition},
		{escrow.ErrUnsupported, codes.FailedPrecondition},
		{escrow.ErrConflict, codes.Aborted},
		{escrow.ErrStale, codes.FailedPrecondition},
		{escrow.ErrNotRevealed, codes.FailedPrecondition},
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
			// ProvisionGroup changes state: an intent, then its outcome.
			if len(a.recs) != 2 {
				t.Fatalf("%d audit records, want 2", len(a.recs))
			}
			if in := a.recs[0]; in.Phase != audit.PhaseIntent || in.ID != a.recs[1].ID || in.Code != "" || in.Group != "g1" {
				t.Fatalf("intent %+v", in)
			}
			r := a.recs[1]
			if r.Phase != audit.PhaseOutcome || r.Code != tt.code.String() || r.Group != "g1" || r.Operation != "/escrowd.v1.SyncService/ProvisionGroup" {
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
	code, _ := unlockcode.FromMaterial(0, []byte("0123456789"))
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
	code, _ := unlockcode.FromMaterial(0, []byte("0123456789"))
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
	if len(a.recs) != 2 || a.recs[0].Phase != audit.PhaseIntent || a.recs[0].Ticket != "T-1" {
		t.Fatalf("records %+v, want an intent then the outcome", a.recs)
	}
	r := a.recs[1]
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
	// The empty ticket passes the pipeline's check and is refused by the
	// handler, after its intent: 2 records; the others are refused before.
	if len(a.recs) != 4 || a.recs[1].Outcome != audit.OutcomeError {
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
	if len(a.recs) != 2 || a.recs[1].Code != "Internal" {
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
			conn, s := startWith(t, &fakeEscrow{}, a, tt.checks, nil)
			// Health answers on the health listener without a
			// certificate, and on the API listener with one.
			for _, c := range []*grpc.ClientConn{startHealth(t, s), conn} {
				for _, svc := range serviceNames {
					r, err := healthpb.NewHealthClient(c).Check(context.Background(), &healthpb.HealthCheckRequest{Service: svc})
					if err != nil || r.GetStatus() != tt.want {
						t.Fatalf("health %q: %v %v, want %v", svc, r.GetStatus(), err, tt.want)
					}
				}
			}
			if len(a.recs) != 0 {
				t.Fatal("health checks were audited")
			}
		})
	}
}

// startHealth serves s's health listener and connects to it without TLS.
func startHealth(t *testing.T, s *Server) *grpc.ClientConn {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go s.ServeHealth(lis)
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// TestBatchItemErrors: each item's error is its own, internal errors keep
// their text out of the response, malformed items never reach the service,
// and a batch over the bound is refused whole before any work.
func TestBatchItemErrors(t *testing.T) {
	a := &fakeAuditor{}
	e := &fakeEscrow{err: errors.New("disk on fire at /var/lib/secret-path")}
	c := escrowdv1.NewSyncServiceClient(start(t, e, a, nil))
	rcp := &escrowdv1.BatchRewrapItem_Recipient{Recipient: &escrowdv1.Recipient{Kind: escrowdv1.Recipient_KIND_MEMBER, Id: "m", KeyVersion: 1, Suite: "ecdh-p256"}}
	resp, err := c.BatchRewrap(context.Background(), &escrowdv1.BatchRewrapRequest{Items: []*escrowdv1.BatchRewrapItem{
		{Reference: "r0", GroupId: "g", Target: rcp},
		{Reference: "r1", GroupId: "g"},
		{Reference: "r2", GroupId: "g", Target: &escrowdv1.BatchRewrapItem_Recipient{Recipient: &escrowdv1.Recipient{Id: "m"}}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	r := resp.GetResults()
	if len(r) != 3 || codes.Code(r[0].GetError().GetCode()) != codes.Internal || strings.Contains(r[0].GetError().GetMessage(), "disk") ||
		codes.Code(r[1].GetError().GetCode()) != codes.InvalidArgument || !strings.Contains(r[2].GetError().GetMessage(), "recipient.kind") {
		t.Fatalf("results %v", r)
	}
	if e.batched != 1 {
		t.Fatalf("%d items reached the service, want 1", e.batched)
	}
	if d := strings.Join(a.recs[0].Detail, "\n"); !strings.Contains(d, "item:1 ref:r1 group:g target:none escrow:0 code:InvalidArgument") || !strings.Contains(d, "failed:3") {
		t.Fatalf("record details:\n%s", d)
	}
	big := make([]*escrowdv1.BatchRewrapItem, 257)
	for i := range big {
		big[i] = &escrowdv1.BatchRewrapItem{GroupId: "g", Target: rcp}
	}
	if _, err := c.BatchRewrap(context.Background(), &escrowdv1.BatchRewrapRequest{Items: big}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("257 items: %v", err)
	}
	if e.batched != 1 {
		t.Fatal("an over-bound batch reached the service")
	}
	if _, err := c.BatchRewrap(context.Background(), &escrowdv1.BatchRewrapRequest{}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("empty batch: %v", err)
	}
}
