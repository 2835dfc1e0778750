package e2e

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	escrowdv1 "github.com/escrowd/escrowd/api/escrowd/v1"
	"github.com/escrowd/escrowd/internal/vaulttest"
	"github.com/escrowd/escrowd/softhsm"
)

const healthEvery = 100 * time.Millisecond

// healthClient connects to the stack's health listener as an
// orchestrator's probe would: plain gRPC, no certificate.
func (s *stack) healthClient() healthpb.HealthClient {
	s.t.Helper()
	conn, err := grpc.NewClient(s.healthAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		s.t.Fatal(err)
	}
	s.t.Cleanup(func() { conn.Close() })
	return healthpb.NewHealthClient(conn)
}

// awaitHealth polls gRPC health on the health listener (as a load
// balancer would, without a client certificate) until it reports want,
// for at most 15 s.
func (s *stack) awaitHealth(t *testing.T, want healthpb.HealthCheckResponse_ServingStatus) {
	t.Helper()
	hc := s.healthClient()
	var last healthpb.HealthCheckResponse_ServingStatus
	var lastErr error
	for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		for _, svc := range []string{"", "escrowd.v1.SupportService"} {
			r, err := hc.Check(context.Background(), &healthpb.HealthCheckRequest{Service: svc})
			last, lastErr = r.GetStatus(), err
			if err != nil || last != want {
				break
			}
		}
		if lastErr == nil && last == want {
			return
		}
	}
	t.Fatalf("health is %v (%v), want %v", last, lastErr, want)
}

// TestHealthVaultUnreachable: with the Vault server stopped, health goes
// NOT_SERVING and requests fail UNAVAILABLE; with it back, SERVING again.
func TestHealthVaultUnreachable(t *testing.T) {
	v := vaulttest.StartT(t)
	s := newStackWith(t, v, stackOpts{checkInterval: healthEvery})
	ctx := ctxT(t)
	s.awaitHealth(t, healthpb.HealthCheckResponse_SERVING)
	if err := v.Stop(); err != nil {
		t.Fatal(err)
	}
	s.awaitHealth(t, healthpb.HealthCheckResponse_NOT_SERVING)
	if _, err := s.sync.ProvisionGroup(ctx, &escrowdv1.ProvisionGroupRequest{GroupId: "g-vault-down"}); status.Code(err) != codes.Unavailable {
		t.Fatalf("provision with Vault unreachable: %v, want Unavailable", err)
	}
	if err := v.Restart(); err != nil {
		t.Fatal(err)
	}
	s.awaitHealth(t, healthpb.HealthCheckResponse_SERVING)
	if _, err := s.sync.ProvisionGroup(ctx, &escrowdv1.ProvisionGroupRequest{GroupId: "g-vault-back"}); err != nil {
		t.Fatalf("provision with Vault back: %v", err)
	}
}

// tokenDir finds the SoftHSM directory that holds the token labelled
// label (SoftHSM names it by a UUID; token.object holds the label).
func tokenDir(t *testing.T, tok *softhsm.Token) string {
	t.Helper()
	root := filepath.Join(tok.Dir, "tokens")
	ents, err := os.ReadDir(root)
	if err != nil {
		t.Fatal(err)
	}
	var found []string
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(root, e.Name(), "token.object"))
		if err == nil && bytes.Contains(b, []byte(tok.Label)) {
			found = append(found, filepath.Join(root, e.Name()))
		}
	}
	if len(found) != 1 {
		t.Fatalf("%d token directories hold label %q", len(found), tok.Label)
	}
	return found[0]
}

// TestHealthHSMLoggedOut: when the token goes away under a running
// daemon (its SoftHSM directory moved off), the session pool's recovery
// cannot log in again; health goes NOT_SERVING and requests fail
// UNAVAILABLE instead of serving from a token that is not there. The
// token is one of this test's own, in the shared SoftHSM directory.
func TestHealthHSMLoggedOut(t *testing.T) {
	tok, err := softhsm.New(token.Dir, "e2e-logged-out")
	if err != nil {
		t.Fatal(err)
	}
	s := newStackWith(t, vaultSrv, stackOpts{token: tok, checkInterval: healthEvery})
	ctx := ctxT(t)
	if _, err := s.sync.ProvisionGroup(ctx, &escrowdv1.ProvisionGroupRequest{GroupId: "g-hsm"}); err != nil {
		t.Fatal(err)
	}
	s.awaitHealth(t, healthpb.HealthCheckResponse_SERVING)

	dir := tokenDir(t, tok)
	if err := os.Rename(dir, dir+".away"); err != nil {
		t.Fatal(err)
	}
	// SoftHSM finds tokens at C_Initialize only: this process cannot see
	// the token again, so the move stays undone and the stack is stopped
	// before the directory goes back (other tests' SoftHSM state is
	// untouched).
	t.Cleanup(func() { s.stop(); os.Rename(dir+".away", dir) })
	s.awaitHealth(t, healthpb.HealthCheckResponse_NOT_SERVING)
	_, err = s.sync.ProvisionGroup(ctx, &escrowdv1.ProvisionGroupRequest{GroupId: "g-hsm-gone"})
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("provision with the token gone: %v, want Unavailable", err)
	}
	t.Logf("with the token gone: %v", err)
}
