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
	"github.com/escrowd/escrowd/escrow/device"
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

// TestHSMTokenLoss: the token goes away under a running daemon (its SoftHSM
// directory moved out of the token directory): health goes NOT_SERVING and
// every request that needs the HSM fails UNAVAILABLE; a reveal refused so
// claims no code. The directory comes back: the daemon re-initialises the
// module, finds the token, logs in and finds the KEK by itself, health is
// SERVING again without a restart, the next reveal gives the first code of
// the epoch, and it opens its slot. The token is one of this test's own,
// in the shared SoftHSM directory.
func TestHSMTokenLoss(t *testing.T) {
	tok, err := softhsm.New(token.Dir, "e2e-token-loss")
	if err != nil {
		t.Fatal(err)
	}
	s := newStackWith(t, vaultSrv, stackOpts{token: tok, checkInterval: healthEvery})
	ctx := ctxT(t)
	const group, user = "g-hsm", "bob"
	p, err := s.sync.ProvisionGroup(ctx, &escrowdv1.ProvisionGroupRequest{GroupId: group})
	if err != nil {
		t.Fatal(err)
	}
	k := p.GetEscrowKey()
	gdk, err := device.NewGDK()
	if err != nil {
		t.Fatal(err)
	}
	escrowSlot, err := device.SealEscrow(k.GetPublicKey(), device.To{Group: group, GDKVersion: 1, KeyVersion: k.GetVersion()}, k.GetSuite(), gdk)
	if err != nil {
		t.Fatal(err)
	}
	is, err := s.sync.IssueUnlockCodes(ctx, &escrowdv1.IssueUnlockCodesRequest{GroupId: group, UserId: user, EscrowSlot: escrowSlot, Count: 3})
	if err != nil {
		t.Fatal(err)
	}
	s.awaitHealth(t, healthpb.HealthCheckResponse_SERVING)

	// Away means out of the token directory: a re-initialised SoftHSM
	// finds a token in any folder under it.
	dir := tokenDir(t, tok)
	away := filepath.Join(tok.Dir, "away-"+tok.Label)
	if err := os.Rename(dir, away); err != nil {
		t.Fatal(err)
	}
	back := false
	t.Cleanup(func() {
		if !back {
			s.stop()
			os.Rename(away, dir)
		}
	})
	s.awaitHealth(t, healthpb.HealthCheckResponse_NOT_SERVING)
	reveal := func() (*escrowdv1.RevealUnlockCodeResponse, error) {
		return s.support.RevealUnlockCode(ctx, &escrowdv1.RevealUnlockCodeRequest{GroupId: group, UserId: user, Ticket: "SUP-13"})
	}
	for i := range 2 {
		if _, err := reveal(); status.Code(err) != codes.Unavailable {
			t.Fatalf("reveal %d with the token gone: %v, want Unavailable", i, err)
		}
	}
	if _, err := s.sync.RewrapToEscrow(ctx, &escrowdv1.RewrapToEscrowRequest{GroupId: group, EscrowSlot: escrowSlot}); status.Code(err) != codes.Unavailable {
		t.Fatalf("RewrapToEscrow with the token gone: %v, want Unavailable", err)
	}
	if _, err := s.sync.IssueUnlockCodes(ctx, &escrowdv1.IssueUnlockCodesRequest{GroupId: group, UserId: "carol", EscrowSlot: escrowSlot}); status.Code(err) != codes.Unavailable {
		t.Fatalf("IssueUnlockCodes with the token gone: %v, want Unavailable", err)
	}
	if _, err := s.sync.ProvisionGroup(ctx, &escrowdv1.ProvisionGroupRequest{GroupId: "g-hsm-gone"}); status.Code(err) != codes.Unavailable {
		t.Fatalf("provision with the token gone: %v, want Unavailable", err)
	} else {
		t.Logf("with the token gone: %v", err)
	}
	// Reads fail too: the audit trail's chain key is in the HSM, so no
	// record can be written (docs/AUDIT.md, "The chain key"). That no
	// refused reveal burnt a code shows below: the first reveal with the
	// token back gets the epoch's first code.
	if _, err := s.support.ListUnlockCodes(ctx, &escrowdv1.ListUnlockCodesRequest{GroupId: group, UserId: user}); status.Code(err) != codes.Unavailable {
		t.Fatalf("ListUnlockCodes with the token gone: %v, want Unavailable", err)
	}

	// The token comes back: no restart.
	if err := os.Rename(away, dir); err != nil {
		t.Fatal(err)
	}
	back = true
	s.awaitHealth(t, healthpb.HealthCheckResponse_SERVING)
	rv, err := reveal()
	if err != nil {
		t.Fatalf("reveal with the token back: %v", err)
	}
	if rv.GetIndex() != 0 || rv.GetRemaining() != 2 {
		t.Fatalf("reveal with the token back: index %d, %d left; want the epoch's first code, 2 left", rv.GetIndex(), rv.GetRemaining())
	}
	if got, _, err := device.OpenUnlock(is.GetSlots(), device.Want{Group: group, ID: user}, rv.GetCode()); err != nil || !bytes.Equal(got, gdk) {
		t.Fatalf("the code revealed after recovery does not open its slot: %v", err)
	}
	if _, err := s.sync.RewrapToEscrow(ctx, &escrowdv1.RewrapToEscrowRequest{GroupId: group, EscrowSlot: escrowSlot}); err != nil {
		t.Fatalf("RewrapToEscrow with the token back: %v", err)
	}
}
