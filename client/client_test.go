package client

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/durationpb"

	escrowdv1 "github.com/escrowd/escrowd/api/escrowd/v1"
	"github.com/escrowd/escrowd/internal/devpki"
)

// fakeDaemon answers every escrowd RPC from a script: the n-th call of a
// method gets answers[n] (the last one repeats), with a request id header.
// It speaks mutual TLS as escrowd does and counts the calls it saw.
type fakeDaemon struct {
	mu      sync.Mutex
	calls   map[string]int
	answers map[string][]error
	addr    string
	dir     string
}

func startFake(t *testing.T) *fakeDaemon {
	t.Helper()
	ca, err := devpki.NewCA("test CA")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	srv, _ := ca.Server()
	cli, _ := ca.Client("spiffe://escrowd.test/sync-backend", time.Time{}, time.Time{})
	if err := cli.Write(dir, "caller"); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(dir, "ca.crt"), ca.PEM)
	cert, err := srv.TLS()
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeDaemon{calls: map[string]int{}, answers: map[string][]error{}, dir: dir}
	gs := grpc.NewServer(
		grpc.Creds(credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{cert}, ClientCAs: ca.Pool(),
			ClientAuth: tls.RequireAndVerifyClientCert, MinVersion: tls.VersionTLS13})),
		grpc.UnknownServiceHandler(f.handle))
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f.addr = l.Addr().String()
	go gs.Serve(l)
	t.Cleanup(gs.Stop)
	return f
}

func (f *fakeDaemon) handle(_ any, stream grpc.ServerStream) error {
	full, _ := grpc.MethodFromServerStream(stream)
	m := full[strings.LastIndex(full, "/")+1:]
	f.mu.Lock()
	n := f.calls[m]
	f.calls[m]++
	ans := f.answers[m]
	f.mu.Unlock()
	var req escrowdv1.ListJobsRequest // any message: the fake reads no field
	if err := stream.RecvMsg(&req); err != nil {
		return err
	}
	stream.SetHeader(metadata.Pairs("x-request-id", "req-"+m))
	if len(ans) > 0 {
		if err := ans[min(n, len(ans)-1)]; err != nil {
			return err
		}
	}
	return stream.SendMsg(&escrowdv1.ListJobsResponse{})
}

func (f *fakeDaemon) script(method string, answers ...error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.answers[method] = answers
	f.calls[method] = 0
}

func (f *fakeDaemon) count(method string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls[method]
}

func (f *fakeDaemon) dial(t *testing.T, cfg Config) *Client {
	t.Helper()
	cfg.Addr = f.addr
	cfg.CertFile, cfg.KeyFile, cfg.CAFile = filepath.Join(f.dir, "caller.crt"), filepath.Join(f.dir, "caller.key"), filepath.Join(f.dir, "ca.crt")
	c, err := Dial(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// rpcMethods lists every RPC of the API's three services.
func rpcMethods() []string {
	var names []string
	svcs := escrowdv1.File_escrowd_v1_escrowd_proto.Services()
	for i := 0; i < svcs.Len(); i++ {
		ms := svcs.Get(i).Methods()
		for j := 0; j < ms.Len(); j++ {
			names = append(names, string(ms.Get(j).Name()))
		}
	}
	sort.Strings(names)
	return names
}

// call invokes the Client method named m with an empty request.
func call(c *Client, ctx context.Context, m string, opts ...CallOption) error {
	mv := reflect.ValueOf(c).MethodByName(m)
	req := reflect.New(mv.Type().In(1).Elem())
	args := []reflect.Value{reflect.ValueOf(ctx), req}
	for _, o := range opts {
		args = append(args, reflect.ValueOf(o))
	}
	out := mv.Call(args)
	err, _ := out[1].Interface().(error)
	return err
}

var _ protoreflect.FileDescriptor = escrowdv1.File_escrowd_v1_escrowd_proto

// TestEveryRPCHasAMethod: the client reaches every RPC, and states for
// each whether it is retried.
func TestEveryRPCHasAMethod(t *testing.T) {
	ct := reflect.TypeOf(&Client{})
	for _, m := range rpcMethods() {
		if _, ok := ct.MethodByName(m); !ok {
			t.Errorf("no Client.%s", m)
		}
		if _, ok := idempotent[m]; !ok {
			t.Errorf("%s is not in the idempotent table", m)
		}
	}
	if len(idempotent) != len(rpcMethods()) {
		t.Errorf("the idempotent table has %d entries for %d RPCs", len(idempotent), len(rpcMethods()))
	}
}

// TestRetries: each RPC facing a daemon that answers UNAVAILABLE (draining,
// Vault unreachable) or ABORTED twice is sent three times if idempotent
// and succeeds, and sent exactly once, failing, if not.
func TestRetries(t *testing.T) {
	f := startFake(t)
	c := f.dial(t, Config{BaseDelay: time.Millisecond, MaxDelay: 5 * time.Millisecond})
	for _, code := range []codes.Code{codes.Unavailable, codes.Aborted} {
		for _, m := range rpcMethods() {
			t.Run(code.String()+"/"+m, func(t *testing.T) {
				f.script(m, status.Error(code, "audit trail unreachable"), status.Error(code, "still unreachable"), nil)
				var tries int
				var id string
				err := call(c, context.Background(), m, Attempts(&tries), RequestID(&id))
				if Idempotent(m) {
					if err != nil || tries != 3 || f.count(m) != 3 {
						t.Fatalf("idempotent %s: err %v after %d tries, daemon saw %d; want success after 3", m, err, tries, f.count(m))
					}
				} else {
					if err == nil || f.count(m) != 1 || tries != 1 {
						t.Fatalf("%s: err %v, daemon saw %d calls; want the error after exactly one", m, err, f.count(m))
					}
					var e *Error
					if !errors.As(err, &e) || e.Code != Code(code) || e.Method != m {
						t.Fatalf("%s: %#v", m, err)
					}
				}
				if id != "req-"+m {
					t.Fatalf("request id %q", id)
				}
			})
		}
	}
}

// TestNoRetryOfOtherCodes: an error the caller must fix is not retried.
func TestNoRetryOfOtherCodes(t *testing.T) {
	f := startFake(t)
	c := f.dial(t, Config{BaseDelay: time.Millisecond})
	for _, code := range []codes.Code{codes.InvalidArgument, codes.NotFound, codes.PermissionDenied, codes.ResourceExhausted, codes.FailedPrecondition, codes.Internal} {
		f.script("ListJobs", status.Error(code, "no"))
		if err := call(c, context.Background(), "ListJobs"); err == nil || f.count("ListJobs") != 1 {
			t.Errorf("%s: err %v after %d calls, want one call", code, err, f.count("ListJobs"))
		}
	}
}

// TestRetryDeadline: an idempotent call stops retrying at RetryDeadline
// when its context has none, and at the context's deadline otherwise; it
// returns the daemon's last answer, not a bare deadline.
func TestRetryDeadline(t *testing.T) {
	f := startFake(t)
	f.script("GetGroup", status.Error(codes.Unavailable, "draining"))
	c := f.dial(t, Config{MaxAttempts: 1000, BaseDelay: 10 * time.Millisecond, MaxDelay: 20 * time.Millisecond, RetryDeadline: 300 * time.Millisecond})
	start := time.Now()
	err := call(c, context.Background(), "GetGroup")
	took := time.Since(start)
	if !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "draining") {
		t.Fatalf("err %v", err)
	}
	if took > 3*time.Second || f.count("GetGroup") < 3 || f.count("GetGroup") >= 1000 {
		t.Fatalf("took %s for %d calls", took, f.count("GetGroup"))
	}
	f.script("GetGroup", status.Error(codes.Unavailable, "draining"))
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if err := call(c, ctx, "GetGroup"); !errors.Is(err, ErrUnavailable) && !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("with a context deadline: %v", err)
	}
}

// TestBackoff: delays grow up to MaxDelay, and a RetryInfo asking for
// longer wins.
func TestBackoff(t *testing.T) {
	c := &Client{cfg: Config{BaseDelay: 100 * time.Millisecond, MaxDelay: time.Second}}
	for n := 1; n < 70; n++ {
		d := c.backoff(n, nil)
		ceil := min(time.Second, 100*time.Millisecond<<min(n-1, 20))
		if d <= 0 || d > ceil {
			t.Fatalf("retry %d waits %s, ceiling %s", n, d, ceil)
		}
	}
	if d := c.backoff(1, &Error{RetryAfter: 3 * time.Second}); d != 3*time.Second {
		t.Fatalf("RetryInfo 3s: waits %s", d)
	}
	f := startFake(t)
	st, _ := status.New(codes.Unavailable, "busy").WithDetails(&errdetails.RetryInfo{RetryDelay: durationpb.New(40 * time.Millisecond)})
	f.script("ListJobs", st.Err(), nil)
	cl := f.dial(t, Config{BaseDelay: time.Millisecond})
	var waited []time.Duration
	cl.sleep = func(_ context.Context, d time.Duration) error { waited = append(waited, d); return nil }
	if err := call(cl, context.Background(), "ListJobs"); err != nil || len(waited) != 1 || waited[0] != 40*time.Millisecond {
		t.Fatalf("err %v, waits %v; want one wait of the RetryInfo's 40ms", err, waited)
	}
}

// TestTypedErrors: the details escrowd sends come out as fields of *Error.
func TestTypedErrors(t *testing.T) {
	f := startFake(t)
	c := f.dial(t, Config{})
	rl, _ := status.New(codes.ResourceExhausted, "rate limit reveals-per-user reached").WithDetails(
		&errdetails.ErrorInfo{Reason: ReasonRateLimited, Domain: ErrorDomain, Metadata: map[string]string{
			"limit": "reveals-per-user", "max": "3", "window": "24h0m0s", "interval": "8h0m0s"}},
		&errdetails.RetryInfo{RetryDelay: durationpb.New(8 * time.Hour)})
	rt, _ := status.New(codes.FailedPrecondition, "key version retired").WithDetails(
		&errdetails.ErrorInfo{Reason: ReasonKeyVersionRetired, Domain: ErrorDomain, Metadata: map[string]string{
			"group": "g1", "kind": "escrow", "version": "1", "min_version": "2", "latest": "3"}})
	br, _ := status.New(codes.InvalidArgument, "bad group").WithDetails(
		&errdetails.BadRequest{FieldViolations: []*errdetails.BadRequest_FieldViolation{{Field: "group_id", Description: "empty"}}})

	f.script("RevealUnlockCode", rl.Err())
	err := call(c, context.Background(), "RevealUnlockCode")
	var e *Error
	if !errors.As(err, &e) || !errors.Is(err, ErrRateLimited) || errors.Is(err, ErrRetired) {
		t.Fatalf("rate limit: %v", err)
	}
	l, ok := e.RateLimit()
	if !ok || l != (RateLimit{Name: "reveals-per-user", Max: 3, Window: 24 * time.Hour, Interval: 8 * time.Hour}) || e.RetryAfter != 8*time.Hour || e.RequestID != "req-RevealUnlockCode" {
		t.Fatalf("rate limit: %+v %+v", l, e)
	}
	if _, ok := e.Retired(); ok {
		t.Fatal("a rate limit is not a retired version")
	}

	f.script("Rewrap", rt.Err())
	err = call(c, context.Background(), "Rewrap")
	if !errors.As(err, &e) || !errors.Is(err, ErrRetired) || !errors.Is(err, ErrPrecondition) {
		t.Fatalf("retired: %v", err)
	}
	if r, ok := e.Retired(); !ok || r != (RetiredVersion{Group: "g1", Kind: "escrow", Version: 1, MinVersion: 2, Latest: 3}) {
		t.Fatalf("retired: %+v", r)
	}

	f.script("ProvisionGroup", br.Err())
	err = call(c, context.Background(), "ProvisionGroup")
	if !errors.As(err, &e) || !errors.Is(err, ErrInvalid) || len(e.Violations) != 1 || e.Violations[0].Field != "group_id" {
		t.Fatalf("bad request: %#v", err)
	}
	if got := err.Error(); got != "InvalidArgument: bad group" {
		t.Fatalf("Error() = %q", got)
	}
}

func TestBatchErrors(t *testing.T) {
	resp := &escrowdv1.BatchRewrapResponse{Results: []*escrowdv1.BatchRewrapResult{
		{Reference: "a", Slot: []byte("x")},
		{Reference: "b", Error: &escrowdv1.ItemError{Code: int32(codes.ResourceExhausted), Message: "rate limit"}},
		{Reference: "c", Error: &escrowdv1.ItemError{Code: int32(codes.NotFound), Message: "no group"}},
	}}
	errs := BatchErrors(resp)
	if len(errs) != 2 {
		t.Fatalf("%v", errs)
	}
	var e *BatchItemError
	if !errors.As(errs[0], &e) || e.Index != 1 || e.Reference != "b" || !errors.Is(errs[0], ErrRateLimited) {
		t.Fatalf("%#v", errs[0])
	}
	if !errors.Is(errs[1], ErrNotFound) || !strings.Contains(errs[1].Error(), `batch item 2 (reference "c")`) {
		t.Fatalf("%v", errs[1])
	}
	if BatchErrors(&escrowdv1.BatchRewrapResponse{Results: resp.Results[:1]}) != nil {
		t.Fatal("errors for a batch without failures")
	}
}

func TestDialErrors(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name string
		cfg  Config
		want string
	}{
		{"no address", Config{}, "no escrowd address"},
		{"no certificate", Config{Addr: "127.0.0.1:1"}, "client certificate is required"},
		{"missing files", Config{Addr: "127.0.0.1:1", CertFile: dir + "/a", KeyFile: dir + "/b", CAFile: dir + "/c"}, "failed to load the client certificate"},
	}
	for _, tt := range tests {
		if _, err := Dial(context.Background(), tt.cfg); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: %v, want %q", tt.name, err, tt.want)
		}
	}
}

// TestDaemonDown: a daemon that is not listening is UNAVAILABLE, retried
// for an idempotent call until it comes up.
func TestDaemonDown(t *testing.T) {
	f := startFake(t)
	c := f.dial(t, Config{})
	c.Close()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	cfg := c.cfg
	cfg.Addr, cfg.MaxAttempts, cfg.RetryDeadline = addr, 3, 2*time.Second
	cfg.BaseDelay, cfg.MaxDelay = time.Millisecond, 2*time.Millisecond
	c2, err := Dial(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	var tries int
	err = call(c2, context.Background(), "ListJobs", Attempts(&tries))
	if !errors.Is(err, ErrUnavailable) || tries != 3 {
		t.Fatalf("err %v after %d tries", err, tries)
	}
	err = call(c2, context.Background(), "RevealUnlockCode", Attempts(&tries))
	if !errors.Is(err, ErrUnavailable) || tries != 1 {
		t.Fatalf("reveal: err %v after %d tries", err, tries)
	}
}

func writeFile(t *testing.T, p string, b []byte) {
	t.Helper()
	if err := osWriteFile(p, b); err != nil {
		t.Fatal(err)
	}
}
