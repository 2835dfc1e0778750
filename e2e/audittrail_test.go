package e2e

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	escrowdv1 "github.com/escrowd/escrowd/api/escrowd/v1"
	"github.com/escrowd/escrowd/audit"
	"github.com/escrowd/escrowd/store/bolt"
)

// requests makes n sequential requests of one record each (a read of a
// group that does not exist), so that each is, as a rule, a batch of its
// own.
func (s *stack) requests(ctx context.Context, n int) {
	s.t.Helper()
	for range n {
		if _, err := s.sync.GetEscrowKey(ctx, &escrowdv1.GetEscrowKeyRequest{GroupId: "none"}); status.Code(err) != codes.NotFound {
			s.t.Fatalf("request: %v", err)
		}
	}
}

// find is the last record of request id in the trail: its outcome, or its
// only record. A reveal's or re-wrap's outcome is written after its
// result left (docs/AUDIT.md, "When the outcome is written"), so find
// waits for it while the trail holds only the intent.
func (s *stack) find(ctx context.Context, id string) (*audit.Chained, error) {
	deadline := time.Now().Add(10 * time.Second)
	for {
		r, err := s.audit.Find(ctx, id)
		if err == nil && r.Phase != audit.PhaseIntent || time.Now().After(deadline) {
			return r, err
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// verifySettled verifies the whole trail once the outcomes queued by the
// requests before have been written: a reveal's or re-wrap's intent is
// open until its outcome's write, which follows its result.
func (s *stack) verifySettled(ctx context.Context) (*audit.Report, error) {
	deadline := time.Now().Add(10 * time.Second)
	for {
		r, err := s.audit.VerifyAll(ctx)
		if err != nil || len(r.Open) == 0 || time.Now().After(deadline) {
			return r, err
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// lastBatch is the position of the last batch of the trail.
func (s *stack) lastBatch(ctx context.Context) uint64 {
	s.t.Helper()
	var last uint64
	if err := s.audit.Walk(ctx, func(seq uint64, _ *audit.Batch) error { last = seq; return nil }); err != nil {
		s.t.Fatal(err)
	}
	return last
}

func (s *stack) batchPath(seq uint64) string { return fmt.Sprintf("%s/chain/%020d", s.prefix, seq) }

// thief is a writer with escrowd's Vault token and without the HSM: it
// chains its records correctly but cannot MAC them.
func thief(t *testing.T, s *stack) *audit.Vault {
	t.Helper()
	v, err := audit.NewVault(audit.VaultConfig{Address: vaultSrv.Addr, Token: vaultSrv.Token, Prefix: s.prefix})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { v.Close() })
	return v
}

func forgedRecord(id string) *audit.Record {
	return &audit.Record{ID: id, Time: time.Now().UTC(), Caller: "spiffe://escrowd.test/support/alice",
		Operation: "/escrowd.v1.SupportService/RevealUnlockCode", Group: "g", User: "u", Ticket: "SUP-1",
		Outcome: audit.OutcomeOK, Code: "OK"}
}

func kinds(ps []audit.Problem) []string {
	var out []string
	for _, p := range ps {
		out = append(out, fmt.Sprintf("%d:%s", p.Batch, p.Kind))
	}
	return out
}

// TestTruncationRefused deletes the last batches in Vault and restarts
// escrowd on the same store: it refuses to append below the anchored
// head, health says why, and verify with the anchored head names the
// truncation. Restarted with accept-truncation, it goes on after the
// anchored head without reusing a position.
func TestTruncationRefused(t *testing.T) {
	storePath := filepath.Join(t.TempDir(), "escrowd.db")
	s := newStackWith(t, vaultSrv, stackOpts{storePath: storePath})
	ctx := ctxT(t)
	s.requests(ctx, 6)
	s.stop()
	st, err := bolt.Open(storePath)
	if err != nil {
		t.Fatal(err)
	}
	seq, n, hash, err := st.AuditHead(ctx, "secret/"+s.prefix)
	st.Close()
	if err != nil || seq != s.lastBatch(ctx) {
		t.Fatalf("anchored head at batch %d (%v), the trail ends at %d", seq, err, s.lastBatch(ctx))
	}
	head := audit.Head{N: n, Hash: hash}
	vc, err := vaultSrv.Client()
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range []uint64{seq, seq - 1} {
		if err := vc.KVv2("secret").DeleteMetadata(ctx, s.batchPath(b)); err != nil {
			t.Fatal(err)
		}
	}

	s2 := newStackWith(t, vaultSrv, stackOpts{storePath: storePath})
	_, err = s2.sync.GetEscrowKey(ctx, &escrowdv1.GetEscrowKeyRequest{GroupId: "none"})
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("a request after the truncation: %v, want Unavailable", err)
	}
	if err := s2.audit.Healthy(ctx); !errors.Is(err, audit.ErrTruncated) {
		t.Fatalf("health after the truncation: %v", err)
	}
	r, err := s2.audit.VerifyAll(ctx, head)
	if err != nil {
		t.Fatal(err)
	}
	if got := kinds(r.Problems); len(got) != 1 || !strings.HasSuffix(got[0], ":truncated") {
		t.Fatalf("verify with the anchored head: %v", r.Problems)
	}
	t.Logf("%v; %s", err, &r.Problems[0])
	s2.stop()

	s3 := newStackWith(t, vaultSrv, stackOpts{storePath: storePath, acceptTruncation: true})
	s3.requests(ctx, 1)
	if last := s3.lastBatch(ctx); last != seq+1 {
		t.Fatalf("after accepting the truncation the trail goes on at batch %d, want %d: a position was reused", last, seq+1)
	}
	r, err = s3.audit.VerifyAll(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got := kinds(r.Problems); len(got) != 1 || got[0] != fmt.Sprintf("%d:deleted", seq+1) {
		t.Fatalf("verify after accepting: %v, want the two batches named deleted", r.Problems)
	}
}

// TestAuditVerifyEveryBreakAndCheckpoint: `escrowctl audit verify` names
// three separate breaks, not only the first; a checkpoint taken before
// the trail is rewritten from a point makes `verify -expect-head` fail
// where plain verify cannot tell; with the HSM, verify names the
// rewritten batches forged.
func TestAuditVerifyEveryBreakAndCheckpoint(t *testing.T) {
	escrowctl := filepath.Join(t.TempDir(), "escrowctl")
	if out, err := exec.Command("go", "build", "-o", escrowctl, "../cmd/escrowctl").CombinedOutput(); err != nil {
		t.Fatalf("go build escrowctl: %v\n%s", err, out)
	}
	s := newStack(t, vaultSrv)
	ctx := ctxT(t)
	s.requests(ctx, 12)
	run := func(args ...string) (string, error) {
		cmd := exec.Command(escrowctl, append([]string{"audit", args[0], "-audit-prefix", s.prefix, "-vault-addr", vaultSrv.Addr}, args[1:]...)...)
		cmd.Env = append(os.Environ(), "VAULT_TOKEN="+vaultSrv.Token, "ESCROWD_HSM_PIN="+token.UserPIN)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	cp, err := run("checkpoint")
	if err != nil {
		t.Fatalf("checkpoint: %v\n%s", err, cp)
	}
	checkpoint := strings.SplitN(cp, "\n", 2)[0]
	if _, err := audit.ParseHead(checkpoint); err != nil {
		t.Fatalf("checkpoint printed %q: %v", cp, err)
	}
	cp, err = run("checkpoint", "-token", token.Label)
	if err != nil {
		t.Fatalf("signed checkpoint: %v\n%s", err, cp)
	}
	signed := strings.SplitN(cp, "\n", 2)[0]
	if h, err := audit.ParseHead(signed); err != nil || h.MAC == "" || !strings.HasPrefix(signed, checkpoint+":") {
		t.Fatalf("signed checkpoint %q (unsigned %q): %v", signed, checkpoint, err)
	}
	last := s.lastBatch(ctx)
	vc, err := vaultSrv.Client()
	if err != nil {
		t.Fatal(err)
	}
	kv := vc.KVv2("secret")
	// Three breaks: a record changed, a batch deleted, another record changed.
	change := func(seq uint64) {
		sec, err := kv.Get(ctx, s.batchPath(seq))
		if err != nil {
			t.Fatal(err)
		}
		sec.Data["records"] = strings.Replace(sec.Data["records"].(string), `"code":"NotFound"`, `"code":"OK"`, 1)
		if _, err := kv.Put(ctx, s.batchPath(seq), sec.Data); err != nil {
			t.Fatal(err)
		}
	}
	change(2)
	if err := kv.DeleteMetadata(ctx, s.batchPath(5)); err != nil {
		t.Fatal(err)
	}
	change(8)
	out, err := run("verify")
	if err == nil || strings.Count(out, "BREAK ") != 3 {
		t.Fatalf("verify of a trail with three breaks: %v\n%s", err, out)
	}
	t.Logf("%s", out)
	// Rewrite the end of the trail: delete the last two batches and chain
	// other records after the rest, as a thief with the token could.
	for _, b := range []uint64{last, last - 1} {
		if err := kv.DeleteMetadata(ctx, s.batchPath(b)); err != nil {
			t.Fatal(err)
		}
	}
	th := thief(t, s)
	for i := range 3 {
		if err := th.Commit(ctx, forgedRecord(fmt.Sprintf("rewritten-%d", i))); err != nil {
			t.Fatal(err)
		}
	}
	out, _ = run("verify")
	if strings.Count(out, "BREAK ") != 3 {
		t.Fatalf("without the checkpoint or the HSM the rewrite cannot be seen; verify said:\n%s", out)
	}
	out, err = run("verify", "-expect-head", checkpoint)
	if err == nil || strings.Count(out, "BREAK ") != 4 || !strings.Contains(out, "the trail was rewritten up to it") {
		t.Fatalf("verify -expect-head after the rewrite: %v\n%s", err, out)
	}
	// With the HSM the rewritten batches are forged, so not the chain's:
	// the chain ends before the checkpoint.
	out, err = run("verify", "-token", token.Label, "-expect-head", signed)
	if err == nil || !strings.Contains(out, "forged") || !strings.Contains(out, "every MAC checked") ||
		!strings.Contains(out, "its MAC verifies") || !strings.Contains(out, ": truncated: ") {
		t.Fatalf("verify with the HSM after the rewrite: %v\n%s", err, out)
	}
	t.Logf("%s", out)
	// A checkpoint whose head was changed does not verify under the key.
	h, _ := audit.ParseHead(signed)
	h.N--
	if out, err := run("verify", "-token", token.Label, "-expect-head", h.String()); err == nil || !strings.Contains(out, "its MAC does not verify") {
		t.Fatalf("verify with a forged checkpoint: %v\n%s", err, out)
	}
}

// TestTruncationRestoredServesAgain: escrowd halted at a truncation goes
// back to serving once the deleted batches are restored in Vault, found
// by its health check alone: health is what brings requests back, so it
// cannot wait for one.
func TestTruncationRestoredServesAgain(t *testing.T) {
	storePath := filepath.Join(t.TempDir(), "escrowd.db")
	s := newStackWith(t, vaultSrv, stackOpts{storePath: storePath})
	ctx := ctxT(t)
	s.requests(ctx, 6)
	s.stop()
	last := s.lastBatch(ctx)
	vc, err := vaultSrv.Client()
	if err != nil {
		t.Fatal(err)
	}
	kv := vc.KVv2("secret")
	saved := map[uint64]map[string]any{}
	for _, b := range []uint64{last, last - 1} {
		sec, err := kv.Get(ctx, s.batchPath(b))
		if err != nil {
			t.Fatal(err)
		}
		saved[b] = sec.Data
		if err := kv.DeleteMetadata(ctx, s.batchPath(b)); err != nil {
			t.Fatal(err)
		}
	}
	s2 := newStackWith(t, vaultSrv, stackOpts{storePath: storePath})
	if _, err := s2.sync.GetEscrowKey(ctx, &escrowdv1.GetEscrowKeyRequest{GroupId: "none"}); status.Code(err) != codes.Unavailable {
		t.Fatalf("a request after the truncation: %v, want Unavailable", err)
	}
	if err := s2.audit.Healthy(ctx); !errors.Is(err, audit.ErrTruncated) {
		t.Fatalf("health after the truncation: %v", err)
	}
	// Restored from a backup, as they were.
	for _, b := range []uint64{last - 1, last} {
		if _, err := kv.Put(ctx, s.batchPath(b), saved[b]); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(15 * time.Second)
	for err := s2.audit.Healthy(ctx); err != nil; err = s2.audit.Healthy(ctx) {
		if time.Now().After(deadline) {
			t.Fatalf("health with the batches restored and no request made: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if got := s2.lastBatch(ctx); got != last {
		t.Fatalf("the trail ends at batch %d before any request, want %d: health wrote", got, last)
	}
	s2.requests(ctx, 1)
	if got := s2.lastBatch(ctx); got != last+1 {
		t.Fatalf("after the restore the trail goes on at batch %d, want %d", got, last+1)
	}
	r, err := s2.audit.VerifyAll(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Problems) != 0 {
		t.Fatalf("verify after the restore: %v", r.Problems)
	}
}
