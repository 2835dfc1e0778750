package audit

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	vault "github.com/hashicorp/vault/api"

	"github.com/escrowd/escrowd/internal/vaulttest"
)

var vaultSrv *vaulttest.Server

func TestMain(m *testing.M) {
	os.Exit(vaulttest.RunMain(m, &vaultSrv))
}

func newSink(t *testing.T, srv *vaulttest.Server, prefix string) *Vault {
	t.Helper()
	v, err := NewVault(VaultConfig{Address: srv.Addr, Token: srv.Token, Prefix: prefix, Timeout: 3 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { v.Close() })
	return v
}

func prefixFor(t *testing.T) string {
	return "test/" + strings.NewReplacer("/", "-", " ", "-").Replace(t.Name())
}

func rec(i int) *Record {
	return &Record{ID: fmt.Sprintf("req-%04d", i), Time: time.Unix(1700000000+int64(i), 0).UTC(),
		Caller: "spiffe://escrowd.dev/support/alice", Operation: "/escrowd.v1.SupportService/RevealUnlockCode",
		Group: "g", User: "u", Ticket: "SUP-1", KeyVersions: []string{"unlock:1"}, Outcome: OutcomeOK, Code: "OK"}
}

func commitAll(t *testing.T, v *Vault, from, to int) {
	t.Helper()
	var wg sync.WaitGroup
	errs := make(chan error, to-from)
	for i := from; i < to; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- v.Commit(context.Background(), rec(i))
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatalf("Commit: %v", err)
		}
	}
}

func verifyOK(t *testing.T, v *Vault, want int) {
	t.Helper()
	p, n, _, err := v.Verify(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if p != nil {
		t.Fatalf("Verify found %s", p)
	}
	if n != want {
		t.Fatalf("Verify counted %d records, want %d", n, want)
	}
}

// TestGroupCommit: concurrent commits share Vault writes and form one chain.
func TestGroupCommit(t *testing.T) {
	v := newSink(t, vaultSrv, prefixFor(t))
	commitAll(t, v, 0, 300)
	batches, records, wait := v.Stats()
	t.Logf("300 concurrent commits: %d Vault writes, mean wait %v", batches, wait)
	if records != 300 || batches >= 300 {
		t.Fatalf("%d records in %d writes: no group commit", records, batches)
	}
	verifyOK(t, v, 300)
	got, err := v.Find(context.Background(), "req-0123")
	if err != nil || got.Ticket != "SUP-1" || got.N == 0 {
		t.Fatalf("Find: %+v, %v", got, err)
	}
}

// TestReplicasShareOneChain: two writers on one trail (two daemon
// replicas) and a third started afterwards (a restart) keep one chain.
func TestReplicasShareOneChain(t *testing.T) {
	prefix := prefixFor(t)
	a, b := newSink(t, vaultSrv, prefix), newSink(t, vaultSrv, prefix)
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); commitAll(t, a, 0, 150) }()
	go func() { defer wg.Done(); commitAll(t, b, 150, 300) }()
	wg.Wait()
	c := newSink(t, vaultSrv, prefix)
	commitAll(t, c, 300, 310)
	verifyOK(t, c, 310)
}

func TestVaultDown(t *testing.T) {
	srv := vaulttest.StartT(t)
	v := newSink(t, srv, "escrowd/audit")
	commitAll(t, v, 0, 5)
	if err := srv.Stop(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := v.Commit(ctx, rec(5)); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Commit with Vault down: %v, want ErrUnavailable", err)
	}
	if err := srv.Restart(); err != nil {
		t.Fatal(err)
	}
	commitAll(t, v, 6, 10)
	verifyOK(t, v, 9)
}

// tamper rewrites batch seq of the trail directly in Vault.
func tamper(t *testing.T, v *Vault, seq uint64, fn func(b *Batch)) {
	t.Helper()
	ctx := context.Background()
	b, err := v.readBatch(ctx, seq)
	if err != nil {
		t.Fatal(err)
	}
	fn(b)
	data, err := batchData(b)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := v.kv.Put(ctx, v.batchPath(seq), data); err != nil {
		t.Fatal(err)
	}
}

// TestVerifyFindsTampering: change, delete, reorder, insert — each named.
func TestVerifyFindsTampering(t *testing.T) {
	tests := []struct {
		name   string
		change func(t *testing.T, v *Vault)
		kind   string
		record string
	}{
		{"change a field", func(t *testing.T, v *Vault) {
			tamper(t, v, 2, func(b *Batch) { b.Records[1].Ticket = "SUP-999" })
		}, "changed", "req-0006"},
		{"change the outcome", func(t *testing.T, v *Vault) {
			tamper(t, v, 3, func(b *Batch) { b.Records[0].Outcome = OutcomeDenied })
		}, "changed", "req-0010"},
		{"delete a record", func(t *testing.T, v *Vault) {
			tamper(t, v, 2, func(b *Batch) { b.Records = append(b.Records[:1], b.Records[2:]...) })
		}, "deleted", "req-0007"},
		{"reorder two records", func(t *testing.T, v *Vault) {
			tamper(t, v, 2, func(b *Batch) { b.Records[1], b.Records[2] = b.Records[2], b.Records[1] })
		}, "reordered", "req-0007"},
		{"insert a record", func(t *testing.T, v *Vault) {
			tamper(t, v, 2, func(b *Batch) {
				forged := b.Records[1]
				forged.ID, forged.Ticket = "req-forged", "SUP-0"
				b.Records = append(b.Records[:2], append([]Chained{forged}, b.Records[2:]...)...)
			})
		}, "inserted", "req-forged"},
		{"delete a batch", func(t *testing.T, v *Vault) {
			if err := v.kv.DeleteMetadata(context.Background(), v.batchPath(2)); err != nil {
				t.Fatal(err)
			}
		}, "deleted", ""},
		{"soft-delete a batch", func(t *testing.T, v *Vault) {
			if err := v.kv.Delete(context.Background(), v.batchPath(3)); err != nil {
				t.Fatal(err)
			}
		}, "deleted", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v := newSink(t, vaultSrv, prefixFor(t))
			for i := range 20 {
				if err := v.Commit(context.Background(), rec(i)); err != nil {
					t.Fatal(err)
				}
			}
			// Regroup into four batches of five so positions are known.
			regroup(t, v, 20, 5)
			verifyOK(t, v, 20)
			tt.change(t, v)
			p, _, _, err := v.Verify(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			if p == nil {
				t.Fatal("Verify found nothing")
			}
			if p.Kind != tt.kind || p.Record != tt.record {
				t.Fatalf("Verify found %s; want kind %q at record %q", p, tt.kind, tt.record)
			}
			t.Logf("%s", p)
		})
	}
}

// regroup rewrites a trail of single-record batches as batches of size k,
// written by the sink's own code path (link), so positions are fixed.
func regroup(t *testing.T, v *Vault, n, k int) {
	t.Helper()
	ctx := context.Background()
	var all []*Record
	err := v.Walk(ctx, func(_ uint64, b *Batch) error {
		for i := range b.Records {
			r := b.Records[i].Record
			all = append(all, &r)
		}
		return nil
	})
	if err != nil || len(all) != n {
		t.Fatalf("walk: %d records, %v", len(all), err)
	}
	list, err := v.client.Logical().ListWithContext(ctx, "secret/metadata/"+v.cfg.Prefix+"/chain")
	if err != nil {
		t.Fatal(err)
	}
	for _, key := range list.Data["keys"].([]any) {
		if err := v.kv.DeleteMetadata(ctx, v.cfg.Prefix+"/chain/"+key.(string)); err != nil {
			t.Fatal(err)
		}
	}
	num, prev := uint64(0), Genesis
	for s := 0; s*k < n; s++ {
		chained, nn, head, err := link(all[s*k:(s+1)*k], num, prev)
		if err != nil {
			t.Fatal(err)
		}
		num, prev = nn, head
		data, _ := batchData(&Batch{Seq: uint64(s + 1), Records: chained})
		if _, err := v.kv.Put(ctx, v.batchPath(uint64(s+1)), data, vault.WithCheckAndSet(0)); err != nil {
			t.Fatal(err)
		}
	}
}

// TestVerifier covers the chain logic without Vault.
func TestVerifier(t *testing.T) {
	recs := make([]*Record, 6)
	for i := range recs {
		recs[i] = rec(i)
	}
	c, _, _, err := link(recs, 0, Genesis)
	if err != nil {
		t.Fatal(err)
	}
	ok := func() []Batch { return []Batch{{Seq: 1, Records: clone(c[:3])}, {Seq: 2, Records: clone(c[3:])}} }
	tests := []struct {
		name   string
		mutate func(bs []Batch) ([]uint64, []Batch)
		kind   string
	}{
		{"intact", func(bs []Batch) ([]uint64, []Batch) { return []uint64{1, 2}, bs }, ""},
		{"batches swapped", func(bs []Batch) ([]uint64, []Batch) { return []uint64{1, 2}, []Batch{bs[1], bs[0]} }, "reordered"},
		{"batch missing", func(bs []Batch) ([]uint64, []Batch) { return []uint64{2}, bs[1:] }, "deleted"},
		{"empty batch", func(bs []Batch) ([]uint64, []Batch) { bs[1].Records = nil; return []uint64{1, 2}, bs }, "deleted"},
		{"time changed", func(bs []Batch) ([]uint64, []Batch) {
			bs[0].Records[2].Time = bs[0].Records[2].Time.Add(time.Second)
			return []uint64{1, 2}, bs
		}, "changed"},
		{"chain rewritten from a point", func(bs []Batch) ([]uint64, []Batch) {
			r := bs[1].Records[0].Record
			r.Ticket = "SUP-666"
			forged, _, _, _ := link([]*Record{&r}, 3, strings.Repeat("ab", 32))
			bs[1].Records[0] = forged[0]
			return []uint64{1, 2}, bs
		}, "inserted"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			seqs, bs := tt.mutate(ok())
			ver := NewVerifier()
			for i := range bs {
				ver.Add(seqs[i], &bs[i])
			}
			if tt.kind == "" {
				if ver.Problem != nil {
					t.Fatalf("found %s", ver.Problem)
				}
				if n, _ := ver.Head(); n != 6 {
					t.Fatalf("verified %d records", n)
				}
				return
			}
			if ver.Problem == nil || ver.Problem.Kind != tt.kind {
				t.Fatalf("found %v, want %s", ver.Problem, tt.kind)
			}
		})
	}
}

// TestVerifierReportsEveryBreak: three separate breaks in one trail are
// three problems, each named where it is, and the records between them
// are still checked.
func TestVerifierReportsEveryBreak(t *testing.T) {
	recs := make([]*Record, 12)
	for i := range recs {
		recs[i] = rec(i)
	}
	c, _, _, err := link(recs, 0, Genesis)
	if err != nil {
		t.Fatal(err)
	}
	bs := []Batch{{Seq: 1, Records: clone(c[:3])}, {Seq: 2, Records: clone(c[3:6])}, {Seq: 3, Records: clone(c[6:9])}, {Seq: 4, Records: clone(c[9:])}}
	bs[0].Records[1].Ticket = "SUP-666"                                     // record 2 changed
	bs[1].Records[0], bs[1].Records[1] = bs[1].Records[1], bs[1].Records[0] // records 4 and 5 swapped
	// Batch 3 (records 7 to 9) deleted.
	ver := NewVerifier()
	for _, i := range []int{0, 1, 3} {
		ver.Add(bs[i].Seq, &bs[i])
	}
	var got []string
	for _, p := range ver.Problems {
		got = append(got, fmt.Sprintf("%d/%d %s", p.Batch, p.Index, p.Kind))
	}
	want := []string{"1/1 changed", "2/0 reordered", "4/-1 deleted"}
	if !slices.Equal(got, want) {
		t.Fatalf("problems %q, want %q", got, want)
	}
	if n, _ := ver.Last(); n != 12 {
		t.Fatalf("the chain reached record %d, want 12", n)
	}
	// A record changed after the last break is still found.
	bs[3].Records[2].Caller = "someone else"
	ver = NewVerifier()
	for _, i := range []int{0, 1, 3} {
		ver.Add(bs[i].Seq, &bs[i])
	}
	if len(ver.Problems) != 4 || ver.Problems[3].Kind != "changed" || ver.Problems[3].Record != bs[3].Records[2].ID {
		t.Fatalf("problems %v", ver.Problems)
	}
}

// TestOpenIntents: an intent with no record of its id after it is listed;
// one followed by its outcome is not.
func TestOpenIntents(t *testing.T) {
	in := func(id string) *Record {
		return &Record{ID: id, Operation: "RevealUnlockCode", Phase: PhaseIntent, User: "u"}
	}
	out := func(id string) *Record {
		return &Record{ID: id, Operation: "RevealUnlockCode", Phase: PhaseOutcome, Outcome: OutcomeOK, Code: "OK"}
	}
	c, _, _, err := link([]*Record{in("a"), in("b"), out("a"), in("c"), out("c"), in("d")}, 0, Genesis)
	if err != nil {
		t.Fatal(err)
	}
	ver := NewVerifier()
	ver.Add(1, &Batch{Seq: 1, Records: c})
	var open []string
	for _, o := range ver.OpenIntents() {
		open = append(open, o.ID)
	}
	if !slices.Equal(open, []string{"b", "d"}) || len(ver.Problems) != 0 {
		t.Fatalf("open intents %q, problems %v", open, ver.Problems)
	}
}

func clone(c []Chained) []Chained { return append([]Chained(nil), c...) }

// TestKVv1MountRefused: on a KV version 1 mount a write at the batch's
// path succeeds without check-and-set, so replicas could overwrite each
// other's batches; the writer must fail closed instead.
func TestKVv1MountRefused(t *testing.T) {
	c, err := vault.NewClient(&vault.Config{Address: vaultSrv.Addr})
	if err != nil {
		t.Fatal(err)
	}
	c.SetToken(vaultSrv.Token)
	if err := c.Sys().Mount("kv1-refused", &vault.MountInput{Type: "kv", Options: map[string]string{"version": "1"}}); err != nil {
		t.Fatal(err)
	}
	v, err := NewVault(VaultConfig{Address: vaultSrv.Addr, Token: vaultSrv.Token, Mount: "kv1-refused", Prefix: prefixFor(t), Timeout: 3 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	err = v.Commit(context.Background(), rec(1))
	if !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "KV version 2") {
		t.Fatalf("Commit on a KV v1 mount: %v; want ErrUnavailable naming the mount's kind", err)
	}
}

// TestIdleReplicaJumpsToTheHead: a writer idle while another wrote
// hundreds of batches finds the head in a few reads when it loses the
// race for its next position, instead of reading each batch written
// meanwhile (which outlasts a commit's timeout).
func TestIdleReplicaJumpsToTheHead(t *testing.T) {
	prefix := prefixFor(t)
	target, err := url.Parse(vaultSrv.Addr)
	if err != nil {
		t.Fatal(err)
	}
	var reads atomic.Int64
	rp := httputil.NewSingleHostReverseProxy(target)
	proxy := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/chain/") {
			reads.Add(1)
		}
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(proxy.Close)
	idle, err := NewVault(VaultConfig{Address: proxy.URL, Token: vaultSrv.Token, Prefix: prefix, Timeout: 3 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { idle.Close() })
	busy := newSink(t, vaultSrv, prefix)
	if err := idle.Commit(context.Background(), rec(0)); err != nil {
		t.Fatal(err)
	}
	const others = 300
	for i := 1; i <= others; i++ { // one batch each
		if err := busy.Commit(context.Background(), rec(i)); err != nil {
			t.Fatal(err)
		}
	}
	reads.Store(0)
	if err := idle.Commit(context.Background(), rec(others+1)); err != nil {
		t.Fatal(err)
	}
	// 2 × log2(300) probes and the batch chained after; one by one it was 300.
	if n := reads.Load(); n > 24 {
		t.Errorf("the idle writer read %d batches to find the head after %d others", n, others)
	}
	verifyOK(t, busy, others+2)
}
