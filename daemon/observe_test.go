package daemon

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	escrowdv1 "github.com/escrowd/escrowd/api/escrowd/v1"
	"github.com/escrowd/escrowd/audit"
	"github.com/escrowd/escrowd/policy"
)

// recorder is an Observer that keeps what it was told.
type recorder struct {
	mu      sync.Mutex
	rpcs    []string // method code
	denials []string // operation reason
	checks  []string // dependency healthy
	// handshakes are the refused TLS handshakes' reasons.
	handshakes []string
}

func (r *recorder) ObserveHandshakeFailure(reason string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.handshakes = append(r.handshakes, reason)
}

func (r *recorder) ObserveRPC(method, code string, took time.Duration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if took < 0 {
		code += " negative duration"
	}
	r.rpcs = append(r.rpcs, method+" "+code)
}

func (r *recorder) ObserveDenial(op, reason string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.denials = append(r.denials, op+" "+reason)
}

func (r *recorder) ObserveCheck(dep string, healthy bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.checks = append(r.checks, fmt.Sprint(dep, " ", healthy))
}

func (r *recorder) snapshot() (rpcs, denials, checks []string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.rpcs), slices.Clone(r.denials), slices.Clone(r.checks)
}

// onlyProvision grants the tester ProvisionGroup and RevealUnlockCode
// (with a ticket) and nothing else.
func onlyProvision(t *testing.T) *policy.Policy {
	t.Helper()
	y := "version: 1\nroles:\n  some:\n    operations: [ProvisionGroup, RevealUnlockCode]\n" +
		"tickets:\n  required_for: [RevealUnlockCode]\n  pattern: '^SUP-[0-9]+$'\n" +
		"identities:\n  - id: " + testerID + "\n    name: tester\n    roles: [some]\n"
	p, err := policy.Parse("test.yaml", []byte(y), Operations())
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// TestObserver: every RPC is reported with its method and code, every
// refusal by the rules with its operation and a reason from the fixed
// set, and every health check; nothing from the request reaches a label.
func TestObserver(t *testing.T) {
	rec := &recorder{}
	a := &fakeAuditor{}
	conn, srv := startWith(t, &fakeEscrow{}, a, map[string]Checker{"vault": fakeCheck{errors.New("down")}}, func(c *Config) {
		c.Observer = rec
		c.Policy = onlyProvision(t)
	})
	healthConn := startHealth(t, srv)
	ctx := context.Background()
	sync := escrowdv1.NewSyncServiceClient(conn)
	if _, err := sync.ProvisionGroup(ctx, &escrowdv1.ProvisionGroupRequest{GroupId: "secret-group-name"}); err != nil {
		t.Fatal(err)
	}
	calls := []struct {
		name string
		call func() error
		code codes.Code
	}{
		{"role", func() error {
			_, err := escrowdv1.NewSecurityServiceClient(conn).GetGroup(ctx, &escrowdv1.GetGroupRequest{GroupId: "secret-group-name"})
			return err
		}, codes.PermissionDenied},
		{"ticket", func() error {
			_, err := escrowdv1.NewSupportServiceClient(conn).RevealUnlockCode(ctx, &escrowdv1.RevealUnlockCodeRequest{GroupId: "g", UserId: "u", Ticket: "T-1"})
			return err
		}, codes.PermissionDenied},
		{"no certificate", func() error {
			_, err := escrowdv1.NewSecurityServiceClient(anonymous).GetGroup(ctx, &escrowdv1.GetGroupRequest{GroupId: "g"})
			return err
		}, codes.Unavailable},
		{"health", func() error {
			_, err := healthpb.NewHealthClient(healthConn).Check(ctx, &healthpb.HealthCheckRequest{})
			return err
		}, codes.OK},
	}
	for _, c := range calls {
		if err := c.call(); status.Code(err) != c.code {
			t.Fatalf("%s: %v, want %v", c.name, err, c.code)
		}
	}
	// An audit failure is reported as what the caller got.
	a.mu.Lock()
	a.err = audit.ErrUnavailable
	a.mu.Unlock()
	if _, err := sync.ProvisionGroup(ctx, &escrowdv1.ProvisionGroupRequest{GroupId: "g2"}); status.Code(err) != codes.Unavailable {
		t.Fatalf("provision with audit down: %v", err)
	}

	rpcs, denials, checks := rec.snapshot()
	// The server counts a refused handshake as the client hears of it.
	var handshakes []string
	for deadline := time.Now().Add(5 * time.Second); len(handshakes) == 0 && time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		rec.mu.Lock()
		handshakes = slices.Clone(rec.handshakes)
		rec.mu.Unlock()
	}
	wantRPCs := []string{
		"/escrowd.v1.SyncService/ProvisionGroup OK",
		"/escrowd.v1.SecurityService/GetGroup PermissionDenied",
		"/escrowd.v1.SupportService/RevealUnlockCode PermissionDenied",
		"/grpc.health.v1.Health/Check OK",
		"/escrowd.v1.SyncService/ProvisionGroup Unavailable",
	}
	if !slices.Equal(rpcs, wantRPCs) {
		t.Errorf("RPCs observed:\n%s\nwant:\n%s", strings.Join(rpcs, "\n"), strings.Join(wantRPCs, "\n"))
	}
	wantDenials := []string{"GetGroup role", "RevealUnlockCode ticket"}
	if !slices.Equal(denials, wantDenials) {
		t.Errorf("denials observed %q, want %q", denials, wantDenials)
	}
	for _, d := range denials {
		if !slices.Contains(DenialReasons(), strings.Fields(d)[1]) {
			t.Errorf("denial reason %q is not in DenialReasons", d)
		}
	}
	// The connection without a certificate was refused at the handshake.
	if !slices.Equal(handshakes, []string{HandshakeNoCertificate}) {
		t.Errorf("handshake failures observed %q, want one %s", handshakes, HandshakeNoCertificate)
	}
	if len(checks) == 0 || checks[0] != "vault false" {
		t.Errorf("checks observed %q, want vault false first", checks)
	}
	for _, l := range append(append(rpcs, denials...), checks...) {
		if strings.Contains(l, "secret-group-name") || strings.Contains(l, "tester") {
			t.Errorf("a request field reached the observer: %q", l)
		}
	}
}
