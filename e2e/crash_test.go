package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"

	escrowdv1 "github.com/escrowd/escrowd/api/escrowd/v1"
	"github.com/escrowd/escrowd/escrow/bundle"
	"github.com/escrowd/escrowd/escrow/device"
	"github.com/escrowd/escrowd/hsm"
	"github.com/escrowd/escrowd/internal/pgtest"
	"github.com/escrowd/escrowd/softhsm"
	"github.com/escrowd/escrowd/store"
	"github.com/escrowd/escrowd/store/postgres"
)

const crashGroups = 10000

// baseKeys are really provisioned group keys; the crash test copies them
// under many group ids (the HSM work per group is the same).
type baseKey struct {
	pub    []byte
	escrow hsm.WrappedKey
	unlock hsm.WrappedKey
}

func crashGroupID(i int) string { return fmt.Sprintf("crash-%05d", i) }

// TestKEKRotationCrash: a master KEK rotation over 10,000 groups, run by
// two escrowd replicas on one PostgreSQL and one SoftHSM token; the replica
// holding the job is killed with SIGKILL at several points (in the first
// pass and in the checking pass), the other takes the job over when the
// lease expires, the killed one comes back. At the end every group's keys
// are under KEK v2, each exactly the in-HSM re-wrap of its original (none
// lost), every group record was rewritten exactly once (none doubled), the
// keys open and serve requests, and KEK v1 can then be destroyed.
func TestKEKRotationCrash(t *testing.T) {
	escrowd, escrowctl := buildBinaries(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	tok, err := softhsm.New(token.Dir, "escrowd-crash")
	if err != nil {
		t.Fatal(err)
	}
	dbURL := pgtest.New(t)
	st, err := postgres.Open(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()

	// Provision a few real groups' keys, and copy them to 10,000 ids.
	h, err := hsm.Open(tok.HSMConfig())
	if err != nil {
		t.Fatal(err)
	}
	bases := make([]baseKey, 3)
	for i := range bases {
		pub, priv, err := h.GenerateEscrowKey(ctx, hsm.SuiteRSAOAEPSHA1)
		if err != nil {
			t.Fatal(err)
		}
		u, err := h.GenerateUnlockKey(ctx)
		if err != nil {
			t.Fatal(err)
		}
		bases[i] = baseKey{pub: pub, escrow: priv, unlock: u}
	}
	h.Close()
	created := time.Now().UTC().Truncate(time.Second)
	fill := make(chan int)
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range fill {
				b := bases[i%len(bases)]
				g := store.Group{ID: crashGroupID(i), Created: created,
					Escrow: []store.EscrowKey{{Version: 1, Suite: bundle.SuiteRSAOAEPSHA1, PublicKey: b.pub,
						Private: store.WrappedKey{KEKVersion: b.escrow.KEKVersion, Blob: b.escrow.Blob}, Created: created}},
					Unlock: []store.UnlockKey{{Version: 1, Key: store.WrappedKey{KEKVersion: b.unlock.KEKVersion, Blob: b.unlock.Blob}, Created: created}}}
				if err := st.CreateGroup(ctx, g); err != nil {
					t.Error(err)
				}
			}
		}()
	}
	start := time.Now()
	for i := range crashGroups {
		fill <- i
	}
	close(fill)
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	t.Logf("stored %d groups in %s", crashGroups, time.Since(start).Round(time.Millisecond))

	// Two replicas, short leases, small batches (many checkpoints).
	flags := []string{"-job-lease", "1500ms", "-job-poll", "200ms", "-job-batch", "50", "-hsm-sessions", "4"}
	reps := []*replica{startReplica(t, escrowd, tok, dbURL, flags...), startReplica(t, escrowd, tok, dbURL, flags...)}

	// The SO ceremony: KEK v2, from the CLI, while the daemons run.
	out := mustCtl(t, escrowctl, reps[0].addr, "hsm", "init", "-module", tok.Module, "-token", tok.Label,
		"-so-pin-file", tok.Dir+"/so.pin", "-pin-file", tok.Dir+"/user.pin", "-kek-version", "2")
	if !strings.Contains(out, "version 2") {
		t.Fatalf("hsm init: %s", out)
	}
	out = mustCtl(t, escrowctl, reps[0].addr, "jobs", "start", "-kind", "kek-rotation", "-kek-version", "2")
	jobID := strings.Fields(strings.TrimPrefix(out, "job "))[0]
	t.Logf("%s", strings.TrimSpace(out))
	// The old KEK cannot go while keys need it.
	if out, err := ctlRun(t, escrowctl, reps[1].addr, "hsm", "destroy-kek", "-kek-version", "1"); err == nil || !strings.Contains(out, codes.FailedPrecondition.String()) {
		t.Fatalf("destroy-kek during the rotation: %v\n%s", err, out)
	}

	owner := func(j store.Job) *replica {
		for _, r := range reps {
			if strings.Contains(j.Owner, "-"+strconv.Itoa(r.pid())+"-") {
				return r
			}
		}
		return nil
	}
	// Kill points: in pass 1 at three depths, and in the checking pass.
	kills := []struct {
		pass int
		done int64
	}{{1, 700}, {1, 4000}, {1, 8200}, {2, 3000}}
	rotStart := time.Now()
	var restarted chan error
	waitRestart := func() {
		if restarted != nil {
			if err := <-restarted; err != nil {
				t.Fatal(err)
			}
			restarted = nil
		}
	}
	var j store.Job
	for _, k := range kills {
		for {
			j, err = st.Job(ctx, jobID)
			if err != nil {
				t.Fatal(err)
			}
			if j.State != store.JobRunning {
				t.Fatalf("job %s before kill point %+v: %+v", j.State, k, j)
			}
			if j.Pass > k.pass || (j.Pass == k.pass && j.Done >= k.done) {
				break
			}
			if ctx.Err() != nil {
				t.Fatalf("job stuck: %+v", j)
			}
			time.Sleep(20 * time.Millisecond)
		}
		waitRestart()
		r := owner(j)
		if r == nil {
			t.Fatalf("no replica owns the job: %q", j.Owner)
		}
		pid := r.pid()
		r.kill()
		checkCrashInvariant(t, ctx, st, bases)
		t.Logf("SIGKILL of pid %d at pass %d, %d/%d groups done", pid, j.Pass, j.Done, j.Total)
		// Restart in the background: the other replica takes the job over
		// when the lease expires and may finish a pass while this one starts,
		// and the next kill point must not be missed meanwhile.
		restarted = make(chan error, 1)
		go func() { restarted <- r.launch() }()
	}
	waitRestart()
	for {
		j, err = st.Job(ctx, jobID)
		if err != nil {
			t.Fatal(err)
		}
		if j.State != store.JobRunning {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("job did not finish: %+v", j)
		}
		time.Sleep(50 * time.Millisecond)
	}
	elapsed := time.Since(rotStart)
	if j.State != store.JobDone || j.Pass != 2 || j.Changed != 0 {
		t.Fatalf("job ended %+v", j)
	}
	t.Logf("rotation of %d groups done in %s with %d kills (%.0f groups/s including takeovers)", crashGroups, elapsed.Round(time.Millisecond), len(kills), crashGroups/elapsed.Seconds())

	// None lost, none doubled: every group is the re-wrap of its base under
	// v2 (AES-KWP is deterministic), and was rewritten exactly once.
	h, err = hsm.Open(tok.HSMConfig())
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	want := make([]baseKey, len(bases))
	for i, b := range bases {
		e, err := h.RewrapKEK(ctx, hsm.KeyEscrow, b.escrow, 2)
		if err != nil {
			t.Fatal(err)
		}
		u, err := h.RewrapKEK(ctx, hsm.KeyUnlock, b.unlock, 2)
		if err != nil {
			t.Fatal(err)
		}
		if err := h.CheckKey(ctx, hsm.KeyEscrow, e); err != nil {
			t.Fatal(err)
		}
		if err := h.CheckKey(ctx, hsm.KeyUnlock, u); err != nil {
			t.Fatal(err)
		}
		want[i] = baseKey{pub: b.pub, escrow: e, unlock: u}
	}
	n, seen := 0, map[string]bool{}
	after := ""
	for {
		page, err := st.ListGroups(ctx, after, 1000)
		if err != nil {
			t.Fatal(err)
		}
		if len(page) == 0 {
			break
		}
		for _, g := range page {
			var i int
			if _, err := fmt.Sscanf(g.ID, "crash-%05d", &i); err != nil || seen[g.ID] {
				t.Fatalf("unexpected group %q", g.ID)
			}
			seen[g.ID] = true
			w := want[i%len(want)]
			if g.Rev != 2 {
				t.Fatalf("group %s at revision %d: rewritten %d times, want once", g.ID, g.Rev, g.Rev-1)
			}
			if len(g.Escrow) != 1 || len(g.Unlock) != 1 || g.Escrow[0].Private.KEKVersion != 2 || g.Unlock[0].Key.KEKVersion != 2 ||
				!bytes.Equal(g.Escrow[0].Private.Blob, w.escrow.Blob) || !bytes.Equal(g.Unlock[0].Key.Blob, w.unlock.Blob) {
				t.Fatalf("group %s is not its keys re-wrapped under KEK v2", g.ID)
			}
			n++
		}
		after = page[len(page)-1].ID
	}
	if n != crashGroups {
		t.Fatalf("%d groups after the rotation, want %d", n, crashGroups)
	}

	// The keys serve requests through both replicas.
	member, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	memberPub, _ := x509.MarshalPKIXPublicKey(&member.PublicKey)
	for i := 0; i < crashGroups; i += crashGroups / 10 {
		gdk, _ := device.NewGDK()
		slot, err := device.SealEscrow(bases[i%len(bases)].pub, device.To{Group: crashGroupID(i), GDKVersion: 1, KeyVersion: 1}, bundle.SuiteRSAOAEPSHA1, gdk)
		if err != nil {
			t.Fatal(err)
		}
		r, err := reps[i%2].sync.Rewrap(ctx, &escrowdv1.RewrapRequest{GroupId: crashGroupID(i), EscrowSlot: slot,
			Recipient: &escrowdv1.Recipient{Kind: escrowdv1.Recipient_KIND_DEVICE, Id: "d", KeyVersion: 1, Suite: bundle.SuiteRSAOAEPSHA1, PublicKey: memberPub}})
		if err != nil {
			t.Fatalf("Rewrap for %s after the rotation: %v", crashGroupID(i), err)
		}
		if got, _, err := device.OpenPublic(r.GetSlot(), device.Want{Group: crashGroupID(i), ID: "d"}, member); err != nil || !bytes.Equal(got, gdk) {
			t.Fatalf("%s: the re-wrapped GDK does not open: %v", crashGroupID(i), err)
		}
	}
	out = mustCtl(t, escrowctl, reps[0].addr, "jobs")
	if !strings.Contains(out, jobID) || !strings.Contains(out, "done") || !strings.Contains(out, "[##############################]") {
		t.Fatalf("escrowctl jobs: %s", out)
	}
	t.Logf("escrowctl jobs: %s", strings.TrimSpace(out))

	// Now KEK v1 can go, and what it wrapped is dead for good.
	mustCtl(t, escrowctl, reps[1].addr, "hsm", "destroy-kek", "-kek-version", "1")
	if err := h.CheckKey(ctx, hsm.KeyEscrow, bases[0].escrow); err == nil {
		t.Fatal("a key wrapped under the destroyed KEK v1 still opens")
	}
	if vs, err := h.KEKVersions(ctx); err != nil || len(vs) != 1 || vs[0] != 2 {
		t.Fatalf("KEK versions after destroy: %v, %v", vs, err)
	}
	gdk, _ := device.NewGDK()
	slot, _ := device.SealEscrow(bases[1].pub, device.To{Group: crashGroupID(1), GDKVersion: 1, KeyVersion: 1}, bundle.SuiteRSAOAEPSHA1, gdk)
	if _, err := reps[0].sync.Rewrap(ctx, &escrowdv1.RewrapRequest{GroupId: crashGroupID(1), EscrowSlot: slot,
		Recipient: &escrowdv1.Recipient{Kind: escrowdv1.Recipient_KIND_DEVICE, Id: "d", KeyVersion: 1, Suite: bundle.SuiteRSAOAEPSHA1, PublicKey: memberPub}}); err != nil {
		t.Fatalf("Rewrap after destroying KEK v1: %v", err)
	}
}

// checkCrashInvariant: after a SIGKILL, every group still has exactly its
// one escrow and one unlock version, each under KEK v1 or v2.
func checkCrashInvariant(t *testing.T, ctx context.Context, st store.Store, bases []baseKey) {
	t.Helper()
	n := 0
	after := ""
	for {
		page, err := st.ListGroups(ctx, after, 2000)
		if err != nil {
			t.Fatal(err)
		}
		if len(page) == 0 {
			break
		}
		for _, g := range page {
			if len(g.Escrow) != 1 || len(g.Unlock) != 1 || len(g.Escrow[0].Private.Blob) == 0 || len(g.Unlock[0].Key.Blob) == 0 ||
				g.Escrow[0].Private.KEKVersion < 1 || g.Escrow[0].Private.KEKVersion > 2 || g.Rev > 2 {
				t.Fatalf("group %s after a crash: %+v", g.ID, g)
			}
			n++
		}
		after = page[len(page)-1].ID
	}
	if n != crashGroups {
		t.Fatalf("%d groups after a crash, want %d", n, crashGroups)
	}
}
