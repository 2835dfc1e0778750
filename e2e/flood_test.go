package e2e

import (
	"context"
	crand "crypto/rand"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	escrowdv1 "github.com/escrowd/escrowd/api/escrowd/v1"
	"github.com/escrowd/escrowd/audit"
	"github.com/escrowd/escrowd/daemon"
	"github.com/escrowd/escrowd/escrow/bundle"
	"github.com/escrowd/escrowd/hsm"
	"github.com/escrowd/escrowd/internal/pgtest"
	"github.com/escrowd/escrowd/store"
	"github.com/escrowd/escrowd/store/postgres"
	"github.com/jackc/pgx/v5"
)

// These tests run escrowd as operators do (the binary, PostgreSQL or
// bbolt, the SoftHSM token, Vault) under the loads of the security
// review: an anonymous flood beside legitimate traffic, bad input, and
// enough requests to show whether every one is logged. They use only
// escrowd's long-standing flags, so that they run against older builds
// too.

// quantile of sorted durations.
func quantile(d []time.Duration, q float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	return d[min(len(d)-1, int(q*float64(len(d))))]
}

// trails are the audit-prefixes trailOf gave out, by test.
var trails sync.Map

// trailOf is an audit-prefix of the test's own, for startReplica: one per
// run of the test (go test -count runs it again on the same Vault).
func trailOf(t *testing.T) string {
	p, _ := trails.LoadOrStore(t, fmt.Sprintf("escrowd-test/%s-%d", strings.ReplaceAll(t.Name(), "/", "-"), time.Now().UnixNano()))
	return p.(string)
}

// auditRecords reads the records of the trail at prefix by id.
func auditRecords(t *testing.T, ctx context.Context, prefix string) map[string]audit.Chained {
	t.Helper()
	v, err := audit.NewVault(audit.VaultConfig{Address: vaultSrv.Addr, Token: vaultSrv.Token, Prefix: prefix})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	by := map[string]audit.Chained{}
	err = v.Walk(ctx, func(_ uint64, b *audit.Batch) error {
		if b != nil {
			for _, r := range b.Records {
				by[r.ID] = r
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return by
}

// floodStack is escrowd on PostgreSQL with one group whose users each
// hold perUser unrevealed codes: enough for the legitimate reveals of a
// flood measurement.
type floodStack struct {
	r       *replica
	group   string
	users   int
	perUser int
}

func (f *floodStack) user(i int) string { return fmt.Sprintf("flood-user-%03d", i%f.users) }

func newFloodStack(t *testing.T, ctx context.Context, reveals int) *floodStack {
	t.Helper()
	escrowd, _ := buildBinaries(t)
	f := &floodStack{group: "flood-group", perUser: 20}
	f.users = reveals/f.perUser + 10
	dbURL := pgtest.New(t)
	// This database's commits do not wait for its WAL to reach the disk:
	// the disk is shared with other jobs, and one slow fsync holds every
	// reveal in flight (they share the technician's rate-limit row), which
	// would make the p99s a measure of the disk rather than of the flood.
	pg, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	var name string
	if err := pg.QueryRow(ctx, "SELECT current_database()").Scan(&name); err != nil {
		t.Fatal(err)
	}
	if _, err := pg.Exec(ctx, "ALTER DATABASE "+pgx.Identifier{name}.Sanitize()+" SET synchronous_commit = off"); err != nil {
		t.Fatal(err)
	}
	pg.Close(ctx)
	st, err := postgres.Open(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	h, err := hsm.Open(token.HSMConfig())
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	pub, priv, err := h.GenerateEscrowKey(ctx, hsm.SuiteRSAOAEPSHA1)
	if err != nil {
		t.Fatal(err)
	}
	uk, err := h.GenerateUnlockKey(ctx)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now().UTC()
	if err := st.CreateGroup(ctx, store.Group{ID: f.group, Created: now,
		Escrow: []store.EscrowKey{{Version: 1, Suite: bundle.SuiteRSAOAEPSHA1, PublicKey: pub, Private: store.WrappedKey{KEKVersion: priv.KEKVersion, Blob: priv.Blob}, Created: now}},
		Unlock: []store.UnlockKey{{Version: 1, Key: store.WrappedKey{KEKVersion: uk.KEKVersion, Blob: uk.Blob}, Created: now}}}); err != nil {
		t.Fatal(err)
	}
	for i := range f.users {
		nonce := make([]byte, store.NonceSize)
		crand.Read(nonce)
		if _, err := st.StartEpoch(ctx, f.group, f.user(i), 0, 1, f.perUser, nonce); err != nil {
			t.Fatal(err)
		}
	}
	// The replica policy allows 21 reveals per user, more than anyone
	// holds, and 100,000 per technician.
	f.r = startReplica(t, escrowd, token, dbURL, "-policy", "testdata/replicas-policy.yaml", "-audit-prefix", trailOf(t))
	// Warm the technician's connection.
	if _, err := f.r.sup.ListUnlockCodes(ctx, &escrowdv1.ListUnlockCodesRequest{GroupId: f.group, UserId: f.user(0)}); err != nil {
		t.Fatal(err)
	}
	return f
}

// The measurement: rounds of a quiet window then a flood window, the
// legitimate load steady through both.
const (
	floodRounds = 8
	floodWindow = 3 * time.Second
	floodSettle = 300 * time.Millisecond // samples started this soon after a switch are left out
	floodRate   = 50                     // legitimate reveals a second
)

// floodResult is what the legitimate caller saw in each kind of window.
type floodResult struct {
	quiet, flood []time.Duration // sorted
	// rounds holds each round's samples: [round][0] quiet, [1] flood.
	rounds   [floodRounds][2][]time.Duration
	errs     []error
	logBytes [2]int // escrowd's log growth in quiet and in flood windows
}

// ratios are the rounds' p99 in the flood window over p99 in the quiet
// window just before it, sorted.
func (r floodResult) ratios() []float64 {
	var out []float64
	for _, w := range r.rounds {
		q, f := slices.Sorted(slices.Values(w[0])), slices.Sorted(slices.Values(w[1]))
		out = append(out, float64(quantile(f, 0.99))/float64(max(quantile(q, 0.99), 1)))
	}
	slices.Sort(out)
	return out
}

func (r floodResult) report(t *testing.T) {
	t.Helper()
	qp99, fp99 := quantile(r.quiet, 0.99), quantile(r.flood, 0.99)
	rs := r.ratios()
	median := (rs[len(rs)/2-1] + rs[len(rs)/2]) / 2
	t.Logf("legitimate reveals: quiet n=%d p50=%s p99=%s; flood n=%d p50=%s p99=%s; pooled p99 ratio %.2f; errors %d",
		len(r.quiet), quantile(r.quiet, 0.5), qp99, len(r.flood), quantile(r.flood, 0.5), fp99, float64(fp99)/float64(max(qp99, 1)), len(r.errs))
	t.Logf("p99 ratio (flood window / quiet window) by round, sorted: %.2f; median %.2f", rs, median)
}

// measure runs the windows while a support technician reveals codes at
// floodRate (open loop, so that a slow server does not lower the offered
// load), each reveal tagged with the window it started in. attack runs
// the whole time and must flood only while flooding is true and return
// when stop closes.
func (f *floodStack) measure(t *testing.T, ctx context.Context, attack func(flooding *atomic.Bool, stop <-chan struct{})) floodResult {
	var flooding atomic.Bool
	var switched atomic.Int64 // unix nanos of the last switch
	var round atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		attack(&flooding, stop)
	}()
	type sample struct {
		round int
		flood bool
		took  time.Duration
		err   error
	}
	samples := make(chan sample, floodRounds*2*int(floodWindow/time.Second)*floodRate*2)
	var issued atomic.Int64
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(time.Second / floodRate)
		defer tick.Stop()
		// A backlog this deep is 10 s of reveals: a server that far
		// behind has failed them.
		inflight := make(chan struct{}, 10*floodRate)
		var rw sync.WaitGroup
		defer rw.Wait()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			start := time.Now()
			if start.Sub(time.Unix(0, switched.Load())) < floodSettle {
				continue
			}
			n := int(issued.Add(1)) - 1
			if n >= f.users*f.perUser {
				continue
			}
			fl, rd := flooding.Load(), int(round.Load())
			select {
			case inflight <- struct{}{}:
			default:
				samples <- sample{round: rd, flood: fl, err: fmt.Errorf("more than %d reveals in flight", cap(inflight))}
				continue
			}
			rw.Add(1)
			go func() {
				defer rw.Done()
				defer func() { <-inflight }()
				// Each user's codes are revealed in turn, every user once
				// before any twice.
				_, err := f.r.sup.RevealUnlockCode(ctx, &escrowdv1.RevealUnlockCodeRequest{GroupId: f.group, UserId: f.user(n), Ticket: fmt.Sprintf("SUP-%d", n)})
				samples <- sample{round: rd, flood: fl, took: time.Since(start), err: err}
			}()
		}
	}()
	var res floodResult
	for rd := range floodRounds {
		for i, fl := range []bool{false, true} {
			before := len(f.r.logs())
			round.Store(int64(rd))
			flooding.Store(fl)
			switched.Store(time.Now().UnixNano())
			time.Sleep(floodWindow)
			res.logBytes[i] += len(f.r.logs()) - before
		}
	}
	flooding.Store(false)
	close(stop)
	wg.Wait()
	close(samples)
	for s := range samples {
		switch {
		case s.err != nil:
			res.errs = append(res.errs, s.err)
		case s.flood:
			res.flood = append(res.flood, s.took)
			res.rounds[s.round][1] = append(res.rounds[s.round][1], s.took)
		default:
			res.quiet = append(res.quiet, s.took)
			res.rounds[s.round][0] = append(res.rounds[s.round][0], s.took)
		}
	}
	slices.Sort(res.quiet)
	slices.Sort(res.flood)
	return res
}

// check asserts what every flood must leave the legitimate caller: no
// error at all, and a p99 in the flood windows within 2 × the p99 in the
// quiet windows. The windows are interleaved round by round, and the 2 ×
// bound holds for the median of the rounds' ratios: one stall of the
// shared machine in one window (seen: a 148 ms p99 in one flood window
// while the rounds' median was 1.15) moves the pooled p99 but not the
// median, which still catches the failure the review measured (37 × in
// every round). The pooled p99 is logged beside it: a single stall of
// 0.9 s in one window of eight was seen to push it to 7.5 × with the
// rounds' median at 1.35.
func (r floodResult) check(t *testing.T) {
	t.Helper()
	r.report(t)
	if len(r.errs) > 0 {
		t.Errorf("%d legitimate reveals failed under the flood; the first: %v", len(r.errs), r.errs[0])
	}
	if len(r.quiet) < 800 || len(r.flood) < 800 {
		t.Fatalf("too few samples: %d quiet, %d flood", len(r.quiet), len(r.flood))
	}
	rs := r.ratios()
	if median := (rs[len(rs)/2-1] + rs[len(rs)/2]) / 2; median > 2 {
		t.Errorf("legitimate p99 under the flood is %.2f × the p99 without it (median of the rounds), more than 2 ×", median)
	}

}

// trailStats reports the size of the trail at prefix (records, and bytes
// of their JSON) and how long verifying it takes, as the review measured
// Vault's growth and `escrowctl audit verify`.
func trailStats(t *testing.T, ctx context.Context, prefix string) (records, bytes int, verify time.Duration) {
	t.Helper()
	v, err := audit.NewVault(audit.VaultConfig{Address: vaultSrv.Addr, Token: vaultSrv.Token, Prefix: prefix, Timeout: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	err = v.Walk(ctx, func(_ uint64, b *audit.Batch) error {
		if b != nil {
			raw, err := json.Marshal(b.Records)
			if err != nil {
				return err
			}
			records, bytes = records+len(b.Records), bytes+len(raw)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	p, _, _, err := v.Verify(ctx)
	if err != nil || p != nil {
		t.Fatalf("verify: %v %v", p, err)
	}
	return records, bytes, time.Since(t0)
}

// TestAnonymousFlood: callers without a client certificate send reveals
// whose group and user ids are 4 MB or 1 MiB, each on a connection of its
// own, as fast as they can, in windows interleaved with windows without
// them, while a support technician reveals codes at a steady rate.
// Measured side by side in the one run: the technician's requests all
// succeed, and their p99 in the flood windows is within 2 × their p99 in
// the quiet ones; no anonymous request reaches the audit trail, and the
// log holds none of their ids.
//
// (The security review measured 10 of 1,260 legitimate requests failing
// UNAVAILABLE with 4 MB ids: one group commit grew past Vault's 32 MiB
// request limit. With 1 MiB ids every anonymous call was refused, but
// wrote a 1 MiB record, and the legitimate p99 went from 5 to 313 ms.)
func TestAnonymousFlood(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	f := newFloodStack(t, ctx, floodRounds*2*int(floodWindow/time.Second)*floodRate)
	var attempts, reached atomic.Int64
	big4, big1 := strings.Repeat("a", 4_000_000), strings.Repeat("b", 1<<20)
	res := f.measure(t, ctx, func(flooding *atomic.Bool, stop <-chan struct{}) {
		var wg sync.WaitGroup
		defer wg.Wait()
		for w := range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for n := 0; ; n++ {
					select {
					case <-stop:
						return
					default:
					}
					if !flooding.Load() {
						time.Sleep(5 * time.Millisecond)
						continue
					}
					// A fresh connection without a certificate for every
					// call: each one is a handshake for escrowd.
					creds := credentials.NewTLS(&tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS13}) //nolint:gosec // an attacker checks nothing
					conn, err := grpc.NewClient(f.r.addr, grpc.WithTransportCredentials(creds))
					if err != nil {
						t.Error(err)
						return
					}
					id := big4
					if (w+n)%2 == 1 {
						id = big1
					}
					cctx, ccancel := context.WithTimeout(ctx, 2*time.Second)
					var hdr metadata.MD
					_, err = escrowdv1.NewSupportServiceClient(conn).RevealUnlockCode(cctx,
						&escrowdv1.RevealUnlockCodeRequest{GroupId: id, UserId: id, Ticket: "SUP-1"},
						grpc.MaxCallSendMsgSize(8<<20), grpc.Header(&hdr))
					ccancel()
					conn.Close()
					attempts.Add(1)
					if len(hdr.Get(daemon.HeaderRequestID)) > 0 || status.Code(err) == codes.Unauthenticated {
						reached.Add(1) // the call got past the handshake
					}
				}
			}()
		}
	})
	t.Logf("anonymous calls: %d made, %d got past the TLS handshake; escrowd's log grew %d bytes in quiet windows, %d in flood windows",
		attempts.Load(), reached.Load(), res.logBytes[0], res.logBytes[1])
	recs, size, took := trailStats(t, ctx, trailOf(t))
	t.Logf("the trail: %d records, %d bytes of JSON; verifying it took %s", recs, size, took)
	res.check(t)
	if attempts.Load() < 100 {
		t.Fatalf("the flood made only %d calls", attempts.Load())
	}
	if n := reached.Load(); n > 0 {
		t.Errorf("%d anonymous calls got past the TLS handshake", n)
	}
	for id, rec := range auditRecords(t, ctx, trailOf(t)) {
		if strings.HasPrefix(rec.Caller, "anonymous") || len(rec.Group) > bundle.MaxIDLength || len(rec.User) > bundle.MaxIDLength {
			t.Fatalf("record %s: an anonymous call reached the trail (caller %.40s, group of %d bytes)", id, rec.Caller, len(rec.Group))
		}
	}
	if strings.Contains(f.r.logs(), strings.Repeat("a", 1000)) || strings.Contains(f.r.logs(), strings.Repeat("b", 1000)) {
		t.Fatal("the anonymous callers' ids reached escrowd's log")
	}
}

// TestRefusedFlood: a caller with a valid certificate that the policy
// does not list floods reveals (16 at a time, on two connections, as fast
// as it is answered; one in eight with a 1 MiB group id). Every one is
// refused and recorded, in the audit trail's refusal lane or counted in a
// summary record; the support technician's reveals beside it all succeed,
// their p99 in the flood windows within 2 × the quiet windows'.
func TestRefusedFlood(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	f := newFloodStack(t, ctx, floodRounds*2*int(floodWindow/time.Second)*floodRate)
	conns := []escrowdv1.SupportServiceClient{
		escrowdv1.NewSupportServiceClient(f.r.dial("mallory")), escrowdv1.NewSupportServiceClient(f.r.dial("mallory")),
	}
	var refused, other atomic.Int64
	big := strings.Repeat("m", 1<<20)
	res := f.measure(t, ctx, func(flooding *atomic.Bool, stop <-chan struct{}) {
		var wg sync.WaitGroup
		defer wg.Wait()
		for w := range 16 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for n := 0; ; n++ {
					select {
					case <-stop:
						return
					default:
					}
					if !flooding.Load() {
						time.Sleep(5 * time.Millisecond)
						continue
					}
					req := &escrowdv1.RevealUnlockCodeRequest{GroupId: f.group, UserId: f.user(n), Ticket: "SUP-1"}
					if w == 0 && n%2 == 0 {
						req.GroupId = big
					}
					_, err := conns[w%2].RevealUnlockCode(ctx, req)
					switch status.Code(err) {
					case codes.PermissionDenied, codes.InvalidArgument:
						refused.Add(1)
					default:
						other.Add(1)
					}
				}
			}()
		}
	})
	t.Logf("refused calls: %d refused, %d otherwise; escrowd's log grew %d bytes in quiet windows, %d in flood windows",
		refused.Load(), other.Load(), res.logBytes[0], res.logBytes[1])
	res.check(t)
	if refused.Load() < 1000 || other.Load() > 0 {
		t.Fatalf("the flood: %d refused, %d otherwise", refused.Load(), other.Load())
	}
	var individual, counted int
	for _, rec := range auditRecords(t, ctx, trailOf(t)) {
		switch {
		case rec.Caller == identities["mallory"]:
			individual++
			if len(rec.Group) > bundle.MaxIDLength {
				t.Fatalf("record %s holds a group of %d bytes", rec.ID, len(rec.Group))
			}
		case rec.Operation == audit.SummaryOperation:
			for _, d := range rec.Detail {
				var n int
				if _, err := fmt.Sscanf(d, "count:%d caller:"+identities["mallory"], &n); err == nil {
					counted += n
				}
			}
		}
	}
	t.Logf("the trail holds %d of mallory's refusals one by one and counts %d in summaries", individual, counted)
	if individual+counted != int(refused.Load()) {
		t.Fatalf("%d refusals, but the trail holds %d and counts %d", refused.Load(), individual, counted)
	}
}

// TestEveryRequestLogged: under load, every request has its line in
// escrowd's log: 3,200 requests, 3,200 lines naming their request ids.
// (zap's default sampling kept the first 100 lines a second of one
// message and one in a hundred after: the review counted 2,141 of 3,200
// reveals logged.)
func TestEveryRequestLogged(t *testing.T) {
	escrowd, _ := buildBinaries(t)
	ctx := ctxT(t)
	r := startReplica(t, escrowd, token, t.TempDir()+"/escrowd.db", "-log-level", "info", "-audit-prefix", trailOf(t))
	if _, err := r.sync.ProvisionGroup(ctx, &escrowdv1.ProvisionGroupRequest{GroupId: "logged-group"}); err != nil {
		t.Fatal(err)
	}
	const n, workers = 3200, 8
	ids := make(chan string, n)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < n; i += workers {
				var hdr metadata.MD
				if _, err := r.sync.GetEscrowKey(ctx, &escrowdv1.GetEscrowKeyRequest{GroupId: "logged-group"}, grpc.Header(&hdr)); err != nil {
					t.Error(err)
					return
				}
				ids <- hdr.Get(daemon.HeaderRequestID)[0]
			}
		}()
	}
	wg.Wait()
	close(ids)
	// The log is written as the requests end; give the last a moment.
	time.Sleep(200 * time.Millisecond)
	logs := r.logs()
	missing := 0
	for id := range ids {
		if !strings.Contains(logs, `"request_id":"`+id+`"`) {
			missing++
		}
	}
	if missing > 0 {
		t.Fatalf("%d of %d requests have no line in escrowd's log", missing, n)
	}
}

// fuzzBytes returns b with a few random changes: bytes flipped, a cut, or
// bytes inserted, as a fuzzer would send.
func fuzzBytes(rng *rand.Rand, b []byte) []byte {
	b = slices.Clone(b)
	switch rng.IntN(3) {
	case 0:
		for range 1 + rng.IntN(3) {
			if len(b) > 0 {
				b[rng.IntN(len(b))] ^= byte(1 + rng.IntN(255))
			}
		}
	case 1:
		if len(b) > 1 {
			b = b[:rng.IntN(len(b))]
		}
	default:
		at := rng.IntN(len(b) + 1)
		ins := make([]byte, 1+rng.IntN(4))
		for i := range ins {
			ins[i] = byte(rng.IntN(256))
		}
		b = append(b[:at], append(ins, b[at:]...)...)
	}
	return b
}

// rawCodec sends its []byte as the request, whatever it holds, and reads
// nothing of the response.
type rawCodec struct{}

func (rawCodec) Marshal(v any) ([]byte, error)   { return v.([]byte), nil }
func (rawCodec) Unmarshal(_ []byte, _ any) error { return nil }
func (rawCodec) Name() string                    { return "proto" }

// TestBadInputUnderLoad: authenticated callers send fuzzed protobuf and
// 1 MiB ids beside legitimate requests. A 1 MiB id gets INVALID_ARGUMENT
// (it used to be UNAVAILABLE, "rate limits: key too large"); a message
// that does not decode gets INVALID_ARGUMENT (it used to be INTERNAL from
// grpc-go with no trace); every request, whatever its fate, has a request
// id, an audit record (in bounded form) and a log line; nothing is
// INTERNAL; the legitimate requests all succeed.
func TestBadInputUnderLoad(t *testing.T) {
	escrowd, _ := buildBinaries(t)
	ctx := ctxT(t)
	r := startReplica(t, escrowd, token, t.TempDir()+"/escrowd.db", "-log-level", "info", "-audit-prefix", trailOf(t))
	if _, err := r.sync.ProvisionGroup(ctx, &escrowdv1.ProvisionGroupRequest{GroupId: "fuzz-group"}); err != nil {
		t.Fatal(err)
	}
	syncConn, supConn := r.dial("sync-backend"), r.dial("alice")
	valid := []struct {
		conn   *grpc.ClientConn
		method string
		msg    proto.Message
	}{
		{syncConn, "/escrowd.v1.SyncService/GetEscrowKey", &escrowdv1.GetEscrowKeyRequest{GroupId: "fuzz-group"}},
		{syncConn, "/escrowd.v1.SyncService/Rewrap", &escrowdv1.RewrapRequest{GroupId: "fuzz-group", EscrowSlot: []byte(`{"v":2}`),
			Recipient: &escrowdv1.Recipient{Kind: escrowdv1.Recipient_KIND_MEMBER, Id: "m", KeyVersion: 1, Suite: bundle.SuiteRSAOAEPSHA1, PublicKey: []byte{1, 2, 3}}}},
		{syncConn, "/escrowd.v1.SyncService/MarkUnlockCodeConsumed", &escrowdv1.MarkUnlockCodeConsumedRequest{GroupId: "fuzz-group", UserId: "u", Epoch: 1}},
		{supConn, "/escrowd.v1.SupportService/ListUnlockCodes", &escrowdv1.ListUnlockCodesRequest{GroupId: "fuzz-group", UserId: "u"}},
		{supConn, "/escrowd.v1.SupportService/RevealUnlockCode", &escrowdv1.RevealUnlockCodeRequest{GroupId: "fuzz-group", UserId: "u", Ticket: "SUP-12"}},
	}
	big := strings.Repeat("z", 1<<20)
	type result struct {
		what string
		id   string
		code codes.Code
	}
	const fuzzed, oversized, legit, workers = 1500, 100, 400, 8
	results := make(chan result, fuzzed+oversized+legit)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), 7))
			for i := w; i < fuzzed+oversized+legit; i += workers {
				var hdr metadata.MD
				var err error
				what := "legitimate"
				switch {
				case i < fuzzed:
					what = "fuzzed"
					v := valid[rng.IntN(len(valid))]
					raw, merr := proto.Marshal(v.msg)
					if merr != nil {
						t.Error(merr)
						return
					}
					err = v.conn.Invoke(ctx, v.method, fuzzBytes(rng, raw), new([]byte), grpc.ForceCodec(rawCodec{}), grpc.Header(&hdr))
				case i < fuzzed+oversized:
					what = "oversized id"
					req := &escrowdv1.RevealUnlockCodeRequest{GroupId: big, UserId: "u", Ticket: "SUP-1"}
					if i%2 == 1 {
						req = &escrowdv1.RevealUnlockCodeRequest{GroupId: "fuzz-group", UserId: big, Ticket: "SUP-1"}
					}
					_, err = r.sup.RevealUnlockCode(ctx, req, grpc.Header(&hdr))
				default:
					_, err = r.sync.GetEscrowKey(ctx, &escrowdv1.GetEscrowKeyRequest{GroupId: "fuzz-group"}, grpc.Header(&hdr))
				}
				id := ""
				if ids := hdr.Get(daemon.HeaderRequestID); len(ids) == 1 {
					id = ids[0]
				}
				results <- result{what, id, status.Code(err)}
			}
		}()
	}
	wg.Wait()
	close(results)
	time.Sleep(200 * time.Millisecond) // the last log lines
	trail := auditRecords(t, ctx, trailOf(t))
	logs := r.logs()
	byCode := map[string]int{}
	var noID, unrecorded, unlogged, wrong int
	for res := range results {
		byCode[res.what+" "+res.code.String()]++
		switch {
		case res.what == "legitimate" && res.code != codes.OK,
			res.what == "oversized id" && res.code != codes.InvalidArgument,
			res.code == codes.Internal, res.code == codes.Unknown:
			wrong++
		}
		if res.id == "" {
			noID++
			continue
		}
		rec, ok := trail[res.id]
		if !ok {
			unrecorded++
		} else if len(rec.Group) > bundle.MaxIDLength || len(rec.User) > bundle.MaxIDLength || len(rec.Reason) > 1024 {
			t.Errorf("record %s is not bounded: group %d, user %d, reason %d bytes", res.id, len(rec.Group), len(rec.User), len(rec.Reason))
		}
		if !strings.Contains(logs, `"request_id":"`+res.id+`"`) {
			unlogged++
		}
	}
	t.Logf("outcomes: %v", byCode)
	if wrong > 0 || noID > 0 || unrecorded > 0 || unlogged > 0 {
		t.Fatalf("%d wrong codes (Internal, or a legitimate call failing, or an oversized id not InvalidArgument); of %d requests %d have no request id, %d no audit record, %d no log line",
			wrong, fuzzed+oversized+legit, noID, unrecorded, unlogged)
	}
	if byCode["fuzzed InvalidArgument"] < fuzzed/4 {
		t.Fatalf("only %d fuzzed requests were refused as malformed: the fuzzing is too gentle", byCode["fuzzed InvalidArgument"])
	}
}
