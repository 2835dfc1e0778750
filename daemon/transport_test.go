package daemon

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"io"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/grpc/status"

	escrowdv1 "github.com/escrowd/escrowd/api/escrowd/v1"
	"github.com/escrowd/escrowd/audit"
	"github.com/escrowd/escrowd/policy"
)

// These tests pin what reaches the request pipeline and in what form:
// nothing without a certificate, every stream through the same stages as
// unary calls, and refused requests recorded in bounded form. They use
// only the Config of the first release of the pipeline, so that each one
// can be run against older code and seen to fail.

const strangerID = "spiffe://escrowd.test/stranger" // a valid chain, not in the policy

// dialAs connects to the server startWith made last with a client
// certificate the test CA issues for id.
func dialAs(t *testing.T, s *Server, id string) *grpc.ClientConn {
	t.Helper()
	pair, err := lastPKI.ca.Client(id, time.Time{}, time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	cert, err := pair.TLS()
	if err != nil {
		t.Fatal(err)
	}
	creds := credentials.NewTLS(&tls.Config{RootCAs: lastPKI.ca.Pool(), Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS13})
	conn, err := grpc.NewClient(lastAddr, grpc.WithTransportCredentials(creds))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// records returns what the fake auditor holds once it holds at least n
// records, or after 5 s.
func (a *fakeAuditor) await(t *testing.T, n int) []audit.Record {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		a.mu.Lock()
		got := append([]audit.Record(nil), a.recs...)
		a.mu.Unlock()
		if len(got) >= n || time.Now().After(deadline) {
			return got
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// reflect opens a reflection stream and asks for the services.
func reflect(ctx context.Context, conn *grpc.ClientConn) error {
	st, err := reflectionpb.NewServerReflectionClient(conn).ServerReflectionInfo(ctx)
	if err != nil {
		return err
	}
	if err := st.Send(&reflectionpb.ServerReflectionRequest{MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{ListServices: "*"}}); err != nil {
		if err == io.EOF {
			// The server ended the stream: its status comes with Recv.
			_, err = st.Recv()
		}
		return err
	}
	_, err = st.Recv()
	st.CloseSend()
	return err
}

// TestNoCertificateGetsNothing: a connection without a client certificate
// is refused at the TLS handshake: no unary call, no stream (reflection)
// reaches the server, and nothing is written to the audit trail for it.
func TestNoCertificateGetsNothing(t *testing.T) {
	a := &fakeAuditor{}
	start(t, &fakeEscrow{}, a, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := escrowdv1.NewSecurityServiceClient(anonymous).GetGroup(ctx, &escrowdv1.GetGroupRequest{GroupId: "g"})
	// The client sees the alert or, if it was writing, a broken pipe.
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("GetGroup without a certificate: %v, want the handshake refused", err)
	}
	if err := reflect(ctx, anonymous); status.Code(err) != codes.Unavailable {
		t.Fatalf("reflection without a certificate: %v, want the handshake refused", err)
	}
	if recs := a.await(t, 1); len(recs) != 0 {
		t.Fatalf("a connection without a certificate reached the audit trail: %+v", recs)
	}
}

// TestStreamsPassTheChain: a stream is authenticated, authorised and
// audited as a unary call is. Reflection answers a caller the policy
// lists, with one record; a valid certificate the policy does not list
// gets PERMISSION_DENIED, recorded; health Watch is served and not
// recorded.
func TestStreamsPassTheChain(t *testing.T) {
	a := &fakeAuditor{}
	conn, s := startWith(t, &fakeEscrow{}, a, nil, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	stranger := dialAs(t, s, strangerID)
	if err := reflect(ctx, stranger); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("reflection as an identity the policy does not list: %v, want PermissionDenied", err)
	}
	if err := reflect(ctx, conn); err != nil {
		t.Fatalf("reflection as the tester: %v", err)
	}
	w, err := healthpb.NewHealthClient(conn).Watch(ctx, &healthpb.HealthCheckRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Recv(); err != nil {
		t.Fatalf("health Watch: %v", err)
	}
	recs := a.await(t, 2)
	if len(recs) != 2 {
		t.Fatalf("%d records, want 2 (the two reflection streams): %+v", len(recs), recs)
	}
	const method = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"
	var denied, ok bool
	for _, r := range recs {
		if r.Operation != method {
			t.Errorf("record of %s, want only reflection", r.Operation)
		}
		switch {
		case r.Outcome == audit.OutcomeDenied && r.Code == "PermissionDenied" && r.Caller == strangerID:
			denied = true
		case r.Outcome == audit.OutcomeOK && r.Caller == testerID:
			ok = true
		}
	}
	if !denied || !ok {
		t.Fatalf("records %+v: want the stranger denied and the tester served", recs)
	}
}

// revealLimited grants the tester reveals under a per-user rate limit, so
// that a reveal builds a rate-limit key from its group and user.
func revealLimited(t *testing.T) *policy.Policy {
	t.Helper()
	y := "version: 1\nroles:\n  support:\n    operations: [RevealUnlockCode, ApproveReveal]\n" +
		"identities:\n  - id: " + testerID + "\n    name: tester\n    roles: [support]\n" +
		"rate_limits:\n  - {name: per-user, operations: [RevealUnlockCode], per: user, limit: 3, window: 24h}\n"
	p, err := policy.Parse("test.yaml", []byte(y), Operations())
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// TestOversizedIDIsInvalidArgument: an authenticated reveal with a 1 MiB
// group id is refused INVALID_ARGUMENT before its id builds a rate-limit
// key (it used to be UNAVAILABLE: the store refused the key), and its
// record holds no part of the id.
func TestOversizedIDIsInvalidArgument(t *testing.T) {
	a := &fakeAuditor{}
	conn, _ := startWith(t, &fakeEscrow{}, a, nil, func(c *Config) { c.Policy = revealLimited(t) })
	big := strings.Repeat("g", 1<<20)
	for _, req := range []*escrowdv1.RevealUnlockCodeRequest{
		{GroupId: big, UserId: "u", Ticket: "SUP-1"},
		{GroupId: "g", UserId: big, Ticket: "SUP-1"},
		{GroupId: "g", UserId: "u", Ticket: big},
		{GroupId: "g\x00x", UserId: "u", Ticket: "SUP-1"},
	} {
		_, err := escrowdv1.NewSupportServiceClient(conn).RevealUnlockCode(context.Background(), req)
		if status.Code(err) != codes.InvalidArgument {
			t.Fatalf("reveal with an oversized id: %v, want InvalidArgument", status.Code(err))
		}
		if len(status.Convert(err).Message()) > 512 {
			t.Fatalf("the refusal quotes the request: %d bytes", len(status.Convert(err).Message()))
		}
	}
	recs := a.await(t, 4)
	if len(recs) != 4 {
		t.Fatalf("%d records, want 4", len(recs))
	}
	for _, r := range recs {
		if b, _ := json.Marshal(r); len(b) > 2048 || strings.Contains(string(b), "ggggggggg") {
			t.Fatalf("a record of %d bytes holds the oversized id", len(b))
		}
		if r.Code != "InvalidArgument" {
			t.Fatalf("record code %s, want InvalidArgument", r.Code)
		}
	}
}

// TestRefusedFieldsBounded: a caller the policy refuses cannot put
// megabytes of group, user and ticket text into its denied record.
func TestRefusedFieldsBounded(t *testing.T) {
	a := &fakeAuditor{}
	_, s := startWith(t, &fakeEscrow{}, a, nil, nil)
	stranger := escrowdv1.NewSupportServiceClient(dialAs(t, s, strangerID))
	big := strings.Repeat("x", 1<<20)
	_, err := stranger.RevealUnlockCode(context.Background(), &escrowdv1.RevealUnlockCodeRequest{GroupId: big, UserId: big, Ticket: big})
	if c := status.Code(err); c != codes.InvalidArgument && c != codes.PermissionDenied {
		t.Fatalf("a stranger's oversized reveal: %v", c)
	}
	recs := a.await(t, 1)
	if len(recs) != 1 {
		t.Fatalf("%d records, want 1", len(recs))
	}
	if b, _ := json.Marshal(recs[0]); len(b) > 2048 {
		t.Fatalf("the refused request's record is %d bytes", len(b))
	}
}

// rawCodec sends its []byte as the message, whatever it holds.
type rawCodec struct{}

func (rawCodec) Marshal(v any) ([]byte, error)   { return v.([]byte), nil }
func (rawCodec) Unmarshal(_ []byte, _ any) error { return nil }
func (rawCodec) Name() string                    { return "proto" }

// TestMalformedRequest: a request that is not valid protobuf gets
// INVALID_ARGUMENT with a request id, one audit record, one log line and
// one observation, like any refused request (it used to be INTERNAL from
// grpc-go, with none of them).
func TestMalformedRequest(t *testing.T) {
	a := &fakeAuditor{}
	obs := &recorder{}
	core, logs := observer.New(zapcore.InfoLevel)
	conn, _ := startWith(t, &fakeEscrow{}, a, nil, func(c *Config) {
		c.Observer = obs
		c.Logger = zap.New(core)
	})
	const method = "/escrowd.v1.SupportService/RevealUnlockCode"
	// Field 1 (group_id) says 100 bytes follow; 3 do.
	garbage := []byte{0x0a, 100, 'a', 'b', 'c'}
	var hdr metadata.MD
	err := conn.Invoke(context.Background(), method, garbage, new([]byte), grpc.ForceCodec(rawCodec{}), grpc.Header(&hdr))
	if status.Code(err) != codes.InvalidArgument {
		t.Fatalf("malformed request: %v, want InvalidArgument", err)
	}
	ids := hdr.Get(HeaderRequestID)
	if len(ids) != 1 {
		t.Fatal("no request id came back")
	}
	recs := a.await(t, 1)
	if len(recs) != 1 || recs[0].ID != ids[0] || recs[0].Code != "InvalidArgument" || recs[0].Operation != method {
		t.Fatalf("records %+v, want one InvalidArgument record of request %s", recs, ids[0])
	}
	found := false
	for _, e := range logs.All() {
		for _, f := range e.Context {
			if f.Key == "request_id" && f.String == ids[0] {
				found = true
			}
		}
	}
	if !found {
		t.Fatal("no log line names the request")
	}
	rpcs, _, _ := obs.snapshot()
	if len(rpcs) != 1 || rpcs[0] != method+" InvalidArgument" {
		t.Fatalf("observed %q, want the method with InvalidArgument", rpcs)
	}
}

// TestOversizedMessageRecorded: a message over the receive limit is
// refused by grpc-go before any interceptor runs; it is still counted,
// logged and recorded (in bounded form: no part of the message).
func TestOversizedMessageRecorded(t *testing.T) {
	a := &fakeAuditor{}
	obs := &recorder{}
	core, logs := observer.New(zapcore.InfoLevel)
	conn, _ := startWith(t, &fakeEscrow{}, a, nil, func(c *Config) {
		c.Observer = obs
		c.Logger = zap.New(core)
	})
	const method = "/escrowd.v1.SyncService/ProvisionGroup"
	_, err := escrowdv1.NewSyncServiceClient(conn).ProvisionGroup(context.Background(),
		&escrowdv1.ProvisionGroupRequest{GroupId: strings.Repeat("y", 5<<20)}, grpc.MaxCallSendMsgSize(64<<20))
	if status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("a 5 MiB request: %v, want ResourceExhausted", err)
	}
	recs := a.await(t, 1)
	if len(recs) != 1 || recs[0].Code != "ResourceExhausted" || recs[0].Operation != method || recs[0].Caller != testerID {
		t.Fatalf("records %+v, want one ResourceExhausted record of the tester", recs)
	}
	if b, _ := json.Marshal(recs[0]); len(b) > 2048 {
		t.Fatalf("the record is %d bytes", len(b))
	}
	deadline := time.Now().Add(5 * time.Second)
	for logs.FilterField(zap.String("request_id", recs[0].ID)).Len() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("no log line names the request")
		}
		time.Sleep(10 * time.Millisecond)
	}
	rpcs, _, _ := obs.snapshot()
	if len(rpcs) != 1 || rpcs[0] != method+" ResourceExhausted" {
		t.Fatalf("observed %q", rpcs)
	}
}
