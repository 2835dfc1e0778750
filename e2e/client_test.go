package e2e

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"

	escrowdv1 "github.com/escrowd/escrowd/api/escrowd/v1"
	"github.com/escrowd/escrowd/client"
	"github.com/escrowd/escrowd/internal/vaulttest"
)

// dialClient connects the client package to s as the named identity.
func dialClient(t testing.TB, addr, who string, cfg client.Config) *client.Client {
	t.Helper()
	cfg.Addr = addr
	cfg.CertFile, cfg.KeyFile, cfg.CAFile = filepath.Join(pki.dir, who+".crt"), filepath.Join(pki.dir, who+".key"), filepath.Join(pki.dir, "ca.crt")
	c, err := client.Dial(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// TestClientRetriesWhileVaultIsDown: with Vault unreachable escrowd fails
// closed (UNAVAILABLE). The client retries an idempotent call until Vault
// is back, and sends a reveal exactly once: the daemon burnt one code for
// it, not one per try.
func TestClientRetriesWhileVaultIsDown(t *testing.T) {
	v := vaulttest.StartT(t)
	s := newStack(t, v)
	ctx := ctxT(t)
	issue(t, s, ctx, "client-vault", "u", 5)
	cfg := client.Config{BaseDelay: 200 * time.Millisecond, MaxDelay: time.Second, MaxAttempts: 30, RetryDeadline: time.Minute}
	carol := dialClient(t, s.addr, "carol", cfg)
	alice := dialClient(t, s.addr, "alice", cfg)
	if _, err := carol.GetGroup(ctx, &escrowdv1.GetGroupRequest{GroupId: "client-vault"}); err != nil {
		t.Fatal(err)
	}

	if err := v.Stop(); err != nil {
		t.Fatal(err)
	}
	var tries int
	_, err := alice.RevealUnlockCode(ctx, &escrowdv1.RevealUnlockCodeRequest{GroupId: "client-vault", UserId: "u", Ticket: "SUP-1"}, client.Attempts(&tries))
	if !errors.Is(err, client.ErrUnavailable) || tries != 1 {
		t.Fatalf("reveal with Vault down: %v after %d tries; want UNAVAILABLE after one", err, tries)
	}
	t.Logf("reveal with Vault down: %v", err)

	restarted := make(chan error, 1)
	go func() {
		time.Sleep(2 * time.Second)
		restarted <- v.Restart()
	}()
	start := time.Now()
	g, err := carol.GetGroup(ctx, &escrowdv1.GetGroupRequest{GroupId: "client-vault"}, client.Attempts(&tries))
	if err != nil || g.GetGroupId() != "client-vault" {
		t.Fatalf("GetGroup across the outage: %v", err)
	}
	if err := <-restarted; err != nil {
		t.Fatal(err)
	}
	if tries < 2 {
		t.Fatalf("GetGroup succeeded at once (%d tries): Vault was not down", tries)
	}
	t.Logf("GetGroup succeeded after %d tries in %s", tries, time.Since(start).Round(time.Millisecond))

	// One code is burnt by the failed reveal (marked before the audit
	// commit failed), not more: the reveal was not repeated.
	codes, err := alice.ListUnlockCodes(ctx, &escrowdv1.ListUnlockCodesRequest{GroupId: "client-vault", UserId: "u"})
	if err != nil {
		t.Fatal(err)
	}
	revealed := 0
	for _, c := range codes.GetCodes() {
		if c.GetState() != escrowdv1.UnlockCodeState_STATE_UNREVEALED {
			revealed++
		}
	}
	if revealed > 1 {
		t.Fatalf("%d codes revealed after one reveal call", revealed)
	}
}

// TestClientRetriesAcrossARestart: a daemon that drains and comes back on
// the same address (a rolling restart) is UNAVAILABLE in between; an
// idempotent call rides it out, a non-idempotent one fails at once.
func TestClientRetriesAcrossARestart(t *testing.T) {
	storePath := filepath.Join(t.TempDir(), "escrowd.db")
	s := newStackWith(t, vaultSrv, stackOpts{storePath: storePath})
	ctx := ctxT(t)
	issue(t, s, ctx, "client-restart", "u", 2)
	cfg := client.Config{BaseDelay: 100 * time.Millisecond, MaxDelay: 500 * time.Millisecond, MaxAttempts: 50, RetryDeadline: time.Minute}
	carol := dialClient(t, s.addr, "carol", cfg)
	sync := dialClient(t, s.addr, "sync-backend", cfg)
	s.stop()

	var tries int
	_, err := sync.ProvisionGroup(ctx, &escrowdv1.ProvisionGroupRequest{GroupId: "client-restart-2"}, client.Attempts(&tries))
	if !errors.Is(err, client.ErrUnavailable) || tries != 1 {
		t.Fatalf("provision while down: %v after %d tries; want UNAVAILABLE after one", err, tries)
	}
	var g *escrowdv1.GetGroupResponse
	done := make(chan struct{})
	go func() {
		defer close(done)
		g, err = carol.GetGroup(ctx, &escrowdv1.GetGroupRequest{GroupId: "client-restart"}, client.Attempts(&tries))
	}()
	time.Sleep(time.Second)
	newStackWith(t, vaultSrv, stackOpts{storePath: storePath, listen: s.addr})
	<-done
	if err != nil || tries < 2 || g.GetGroupId() != "client-restart" {
		t.Fatalf("GetGroup across the restart: %v after %d tries", err, tries)
	}
	t.Logf("GetGroup answered after %d tries", tries)
	if _, err := carol.GetGroup(ctx, &escrowdv1.GetGroupRequest{GroupId: "client-restart-2"}); !errors.Is(err, client.ErrNotFound) {
		t.Fatalf("the refused provision happened: %v", err)
	}
}
