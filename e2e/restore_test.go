package e2e

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	escrowdv1 "github.com/escrowd/escrowd/api/escrowd/v1"
	"github.com/escrowd/escrowd/escrow/device"
	"github.com/escrowd/escrowd/internal/pgtest"
	"github.com/escrowd/escrowd/store/postgres"
)

// TestRestoreDoesNotReviveCodes: the store is backed up, codes of a later
// epoch are revealed, the backup is restored and a new epoch issued, as
// docs/OPERATIONS.md prescribes. The new epoch has the number of the one
// revealed from (the store forgot it), but another nonce: the code read
// out before the restore opens none of its slots, and its own code at the
// same index is another. Real SoftHSM and Vault; the embedded store backed
// up by copying its file, PostgreSQL by pg_dump and pg_restore.
func TestRestoreDoesNotReviveCodes(t *testing.T) {
	t.Run("bbolt", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "escrowd.db")
		backup := path + ".backup"
		restoreScenario(t,
			func() *stack { return newStackWith(t, vaultSrv, stackOpts{storePath: path}) },
			func(s *stack) { s.stop() },
			func() { copyFile(t, path, backup) },
			func() { copyFile(t, backup, path) })
	})
	t.Run("postgres", func(t *testing.T) {
		url := pgtest.New(t)
		dump := filepath.Join(t.TempDir(), "escrowd.dump")
		restoreScenario(t,
			func() *stack {
				st, err := postgres.Open(context.Background(), url)
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { st.Close() })
				return newStackWith(t, vaultSrv, stackOpts{store: st})
			},
			func(s *stack) { s.stop(); s.store.Close() },
			func() { runCmd(t, "pg_dump", "--format=custom", "--file="+dump, "--dbname="+url) },
			func() {
				runCmd(t, "pg_restore", "--clean", "--if-exists", "--single-transaction", "--dbname="+url, dump)
			})
	})
}

// restoreScenario runs the restore of TestRestoreDoesNotReviveCodes with
// the back end's start, stop, backup and restore steps.
func restoreScenario(t *testing.T, start func() *stack, stop func(*stack), backup, restore func()) {
	ctx := ctxT(t)
	const group, user = "g-restore", "bob"
	bob := device.Want{Group: group, ID: user}

	s := start()
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
	issue := func(s *stack, wantEpoch uint32) [][]byte {
		t.Helper()
		is, err := s.sync.IssueUnlockCodes(ctx, &escrowdv1.IssueUnlockCodesRequest{GroupId: group, UserId: user, EscrowSlot: escrowSlot, Count: 2})
		if err != nil {
			t.Fatalf("IssueUnlockCodes: %v", err)
		}
		if is.GetEpoch() != wantEpoch {
			t.Fatalf("issued epoch %d, want %d", is.GetEpoch(), wantEpoch)
		}
		return is.GetSlots()
	}
	reveal := func(s *stack, wantEpoch uint32) string {
		t.Helper()
		rv, err := s.support.RevealUnlockCode(ctx, &escrowdv1.RevealUnlockCodeRequest{GroupId: group, UserId: user, Ticket: "SUP-7"})
		if err != nil {
			t.Fatalf("RevealUnlockCode: %v", err)
		}
		if rv.GetEpoch() != wantEpoch || rv.GetIndex() != 0 {
			t.Fatalf("revealed epoch %d index %d, want epoch %d index 0", rv.GetEpoch(), rv.GetIndex(), wantEpoch)
		}
		return rv.GetCode()
	}
	issue(s, 1)
	stop(s)
	backup()

	// After the backup: epoch 2, and its first code read out to support.
	s = start()
	before := issue(s, 2)
	old := reveal(s, 2)
	if got, _, err := device.OpenUnlock(before, bob, old); err != nil || string(got) != string(gdk) {
		t.Fatalf("the revealed code does not open its own epoch's slot: %v", err)
	}
	stop(s)

	// Restore the backup, then issue a new epoch as OPERATIONS.md says.
	restore()
	s = start()
	c, err := s.support.ListUnlockCodes(ctx, &escrowdv1.ListUnlockCodesRequest{GroupId: group, UserId: user})
	if err != nil || c.GetEpoch() != 1 {
		t.Fatalf("restored store: epoch %d, %v; want the backup's epoch 1", c.GetEpoch(), err)
	}
	after := issue(s, 2) // the same number as the epoch revealed from
	if _, _, err := device.OpenUnlock(after, bob, old); !errors.Is(err, device.ErrWrongCode) {
		t.Fatalf("the code revealed before the restore, on the new epoch 2's slots: %v, want ErrWrongCode", err)
	}
	fresh := reveal(s, 2)
	if fresh == old {
		t.Fatal("the new epoch 2 reveals the code revealed before the restore")
	}
	if got, _, err := device.OpenUnlock(after, bob, fresh); err != nil || string(got) != string(gdk) {
		t.Fatalf("the new epoch's code does not open its slot: %v", err)
	}
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

func runCmd(t *testing.T, name string, args ...string) {
	t.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", name, err, out)
	}
}

// TestEpochWithoutNonceRefused: an epoch stored before epochs had a nonce
// (PostgreSQL schema 3; the column is NULL after the migration) is not
// revealed from: FailedPrecondition, and no code is claimed. A new epoch
// serves again.
func TestEpochWithoutNonceRefused(t *testing.T) {
	ctx := ctxT(t)
	url := pgtest.New(t)
	st, err := postgres.Open(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	s := newStackWith(t, vaultSrv, stackOpts{store: st})
	const group, user = "g-legacy", "bob"
	p, err := s.sync.ProvisionGroup(ctx, &escrowdv1.ProvisionGroupRequest{GroupId: group})
	if err != nil {
		t.Fatal(err)
	}
	k := p.GetEscrowKey()
	gdk, _ := device.NewGDK()
	escrowSlot, err := device.SealEscrow(k.GetPublicKey(), device.To{Group: group, GDKVersion: 1, KeyVersion: k.GetVersion()}, k.GetSuite(), gdk)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.sync.IssueUnlockCodes(ctx, &escrowdv1.IssueUnlockCodesRequest{GroupId: group, UserId: user, EscrowSlot: escrowSlot, Count: 2}); err != nil {
		t.Fatal(err)
	}
	runCmd(t, "psql", "--quiet", "--dbname="+url, "--command=UPDATE codes SET nonce = NULL")
	_, err = s.support.RevealUnlockCode(ctx, &escrowdv1.RevealUnlockCodeRequest{GroupId: group, UserId: user, Ticket: "SUP-8"})
	if status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("reveal from an epoch without a nonce: %v, want FailedPrecondition", err)
	}
	ls, err := s.support.ListUnlockCodes(ctx, &escrowdv1.ListUnlockCodesRequest{GroupId: group, UserId: user})
	if err != nil || ls.GetCodes()[0].GetState() != escrowdv1.UnlockCodeState_STATE_UNREVEALED {
		t.Fatalf("after the refused reveal: %v, %v; want code 0 unrevealed", ls, err)
	}
	if _, err := s.sync.IssueUnlockCodes(ctx, &escrowdv1.IssueUnlockCodesRequest{GroupId: group, UserId: user, EscrowSlot: escrowSlot, Count: 2}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.support.RevealUnlockCode(ctx, &escrowdv1.RevealUnlockCodeRequest{GroupId: group, UserId: user, Ticket: "SUP-8"}); err != nil {
		t.Fatalf("reveal from the new epoch: %v", err)
	}
}
