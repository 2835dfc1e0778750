package bench

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/vault/api"

	escrowdv1 "github.com/escrowd/escrowd/api/escrowd/v1"
	"github.com/escrowd/escrowd/escrow/bundle"
	"github.com/escrowd/escrowd/escrow/device"
	"github.com/escrowd/escrowd/hsm"
	"github.com/escrowd/escrowd/store"
	"github.com/escrowd/escrowd/store/bolt"
)

// Config is what one run measures; every field has an environment knob
// (see FromEnv) so that a smoke run takes a minute.
type Config struct {
	Groups      int           // BENCH_GROUPS: the large store (default 1,000,000)
	SmallGroups int           // BENCH_SMALL_GROUPS: the small store (default 1,000)
	Duration    time.Duration // BENCH_SECONDS: each measured point (default 5)
	Conc        []int         // BENCH_CONC: caller concurrencies (default 1,4,16,64)
	Sessions    []int         // BENCH_SESSIONS: raw-ceiling sessions (default 1,2,4)
	Batch       int           // BENCH_BATCH: items per BatchRewrap (default 32)
	RSA         bool          // BENCH_RSA: also the rsa-oaep-sha1 suite (default 1)
	KEK         bool          // BENCH_KEK: the KEK rotation job on the large store (default 1)
	// KEKTime bounds the KEK rotation job (BENCH_KEK_SECONDS, default 180;
	// 0: until done). SoftHSM re-wraps about a thousand groups a second,
	// so a million take longer than `make bench` may: past the bound the
	// job's rate so far gives the projected time, and the job is canceled.
	KEKTime time.Duration
	// OwnKeys gives every ecdh-p256 group of the small store an escrow key
	// of its own, provisioned in the HSM before the timed runs, as in a
	// deployment (BENCH_OWN_KEYS=1); by default the groups share the four
	// bases' keys, so that a re-wrap always finds its escrow key kept
	// (-hsm-hot-keys) and never pays its unwrap.
	OwnKeys bool
	Out     string // BENCH_OUT: the JSON file (default bench/results.json)
	Bin     string // BENCH_BIN: escrowd, escrowd-noaudit, escrowctl (default bin)
	Dir     string // BENCH_DIR: scratch directory (default .run/bench), removed after
	Commit  string // BENCH_COMMIT: the commit measured (default git rev-parse --short HEAD)
	Profile string // BENCH_PROFILE: a directory for CPU profiles of escrowd (default none)
	// HSMSessions is escrowd's -hsm-sessions (BENCH_HSM_SESSIONS); 0, the
	// default, takes the session count of the best raw re-wrap ceiling.
	HSMSessions int
	// Pairs and Point shape the interleaved ratios: Pairs pairs (A B A B
	// …, BENCH_PAIRS, default 7) of Point-long points (BENCH_POINT
	// seconds, default 1). PairConc is the callers of each escrowd point
	// (BENCH_PAIR_CONC, default 16; reveals take 4 ×).
	Pairs    int
	Point    time.Duration
	PairConc int
	// Quick (BENCH_QUICK=1, `make bench-quick`) measures the interleaved
	// ratios only: no concurrency sweeps, no KEK rotation.
	Quick bool
	// Only (BENCH_ONLY) narrows a run to one part: "audit" measures the
	// audit path alone (auditOnly). AuditFlags (BENCH_AUDIT_FLAGS, split
	// on spaces) are extra flags of the audited daemon in that mode.
	Only       string
	AuditFlags []string
	// DaemonFlags (BENCH_DAEMON_FLAGS, split on spaces) are extra flags
	// of every escrowd the run starts, after -hsm-sessions, e.g.
	// "-hsm-hot-keys 0": a pair's own flags (-hsm-hot-slots 16 for the
	// hot-slot burst) come after them and win.
	DaemonFlags []string
}

func envInt(name string, def int) (int, error) {
	v := os.Getenv(name)
	if v == "" {
		return def, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 {
		return 0, fmt.Errorf("bench: %s=%q is not a positive integer", name, v)
	}
	return n, nil
}

func envStr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

// FromEnv reads the BENCH_* knobs.
func FromEnv() (Config, error) {
	var c Config
	var err error
	if c.Groups, err = envInt("BENCH_GROUPS", 1_000_000); err != nil {
		return c, err
	}
	if c.SmallGroups, err = envInt("BENCH_SMALL_GROUPS", 1000); err != nil {
		return c, err
	}
	secs, err := strconv.ParseFloat(envStr("BENCH_SECONDS", "5"), 64)
	if err != nil || secs <= 0 {
		return c, fmt.Errorf("bench: BENCH_SECONDS=%q is not a positive number", os.Getenv("BENCH_SECONDS"))
	}
	c.Duration = time.Duration(secs * float64(time.Second))
	if c.Conc, err = ParseInts(envStr("BENCH_CONC", "1,4,16,64")); err != nil {
		return c, err
	}
	if c.Sessions, err = ParseInts(envStr("BENCH_SESSIONS", "1,2,4")); err != nil {
		return c, err
	}
	if c.Batch, err = envInt("BENCH_BATCH", 32); err != nil {
		return c, err
	}
	c.RSA = envStr("BENCH_RSA", "1") != "0"
	c.OwnKeys = envStr("BENCH_OWN_KEYS", "0") != "0"
	c.KEK = envStr("BENCH_KEK", "1") != "0"
	ks, err := strconv.ParseFloat(envStr("BENCH_KEK_SECONDS", "180"), 64)
	if err != nil || ks < 0 {
		return c, fmt.Errorf("bench: BENCH_KEK_SECONDS=%q is not a number of seconds", os.Getenv("BENCH_KEK_SECONDS"))
	}
	c.KEKTime = time.Duration(ks * float64(time.Second))
	c.Out = envStr("BENCH_OUT", "bench/results.json")
	c.Bin = envStr("BENCH_BIN", "bin")
	c.Dir = envStr("BENCH_DIR", ".run/bench")
	c.Commit = os.Getenv("BENCH_COMMIT")
	c.Profile = os.Getenv("BENCH_PROFILE")
	if c.Pairs, err = envInt("BENCH_PAIRS", 7); err != nil {
		return c, err
	}
	if c.Pairs < 5 {
		return c, fmt.Errorf("bench: BENCH_PAIRS=%d: a ratio needs at least 5 pairs", c.Pairs)
	}
	pt, err := strconv.ParseFloat(envStr("BENCH_POINT", "1"), 64)
	if err != nil || pt <= 0 {
		return c, fmt.Errorf("bench: BENCH_POINT=%q is not a positive number of seconds", os.Getenv("BENCH_POINT"))
	}
	c.Point = time.Duration(pt * float64(time.Second))
	if c.PairConc, err = envInt("BENCH_PAIR_CONC", 16); err != nil {
		return c, err
	}
	c.Quick = envStr("BENCH_QUICK", "0") != "0"
	if c.Quick {
		c.KEK = false
	}
	c.Only = os.Getenv("BENCH_ONLY")
	if c.Only != "" && c.Only != "audit" {
		return c, fmt.Errorf("bench: BENCH_ONLY=%q: the only part is \"audit\"", c.Only)
	}
	c.AuditFlags = strings.Fields(os.Getenv("BENCH_AUDIT_FLAGS"))
	c.DaemonFlags = strings.Fields(os.Getenv("BENCH_DAEMON_FLAGS"))
	if os.Getenv("BENCH_HSM_SESSIONS") != "" {
		if c.HSMSessions, err = envInt("BENCH_HSM_SESSIONS", 0); err != nil {
			return c, err
		}
	}
	return c, nil
}

// base is a group's keys, really provisioned by the token, that the
// store's groups are copies of, and the GDK the bench seals to them. src
// is an escrow slot of that GDK for the raw ceiling, which opens it
// without a group.
type base struct {
	suite  string
	pub    []byte
	escrow hsm.WrappedKey
	unlock hsm.WrappedKey
	gdk    []byte
	src    hsm.Source
	// slot is src with its format v2 context and binding, as the daemon
	// opens it.
	slot hsm.Source
}

const ecBases = 4

// groupID is the id of group i of a filled store; ids sort in index order.
func groupID(i int) string { return fmt.Sprintf("bench-g%07d", i) }

// isRSA says which groups of a filled store are rsa-oaep-sha1 ones: one
// in a hundred.
func isRSA(i int) bool { return i%100 == 50 }

// revealUsers is how many users have codes in a filled store, each with
// codesPerUser codes: enough that no run exhausts them.
const (
	revealUsers  = 20000
	codesPerUser = 20
)

// userGroup is the group of reveal user u, spread over the whole store so
// that reveals at a million groups touch all of it.
func userGroup(u, groups int) int { return int(int64(u) * int64(groups) / revealUsers) }

type runner struct {
	cfg    Config
	env    *env
	out    io.Writer
	rep    *Report
	ec     []base
	rsa    *base
	member escrowdv1.Recipient // ecdh-p256
	rsaMem escrowdv1.Recipient
	seq    atomic.Int64
	start  time.Time
	burst  []escrowdv1.Recipient // ecdh-p256 members of a join burst
	vault  *api.Client
	// transitRSA is Vault Transit's rsa-3072 rewrap path and a ciphertext.
	transitRSA struct{ path, ct string }
	// own is the escrow key of each ecdh-p256 group of the small store
	// that has one of its own (Config.OwnKeys), by group index.
	own map[int]ownKey
	// small is the small store and its pool, for the large store's pairs.
	smallStore *struct {
		path string
		pool *pool
	}
}

func (r *runner) logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "[%5.0fs] ", time.Since(r.start).Seconds())
	fmt.Fprintf(os.Stderr, format+"\n", args...)
}

func (r *runner) add(section, op string, conc int, res Result, note string) Row {
	row := Row{Section: section, Op: op, Conc: conc, Stats: res.Stats, CPU: res.CPU, VaultCPU: res.VaultCPU, Note: note}
	r.rep.Rows = append(r.rep.Rows, row)
	msg := ""
	if res.FirstErr != nil {
		msg = " first error: " + res.FirstErr.Error()
	}
	r.logf("%-22s %-22s c=%-3d %8.1f ops/s p50 %6.2f ms p99 %6.2f ms cpu %4.0f%% vault %4.0f%% err %d%s", section, op, conc,
		res.OpsPerSec, float64(res.P50.Microseconds())/1000, float64(res.P99.Microseconds())/1000, res.CPU, res.VaultCPU, res.Errors, msg)
	return row
}

func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

// Run is `make bench`: it prints the markdown report to out and writes
// the JSON report to cfg.Out.
func Run(ctx context.Context, cfg Config, out io.Writer) error {
	if err := checkBinaries(cfg.Bin); err != nil {
		return err
	}
	if cfg.Commit == "" {
		if b, err := exec.Command("git", "rev-parse", "--short", "HEAD").Output(); err == nil {
			cfg.Commit = strings.TrimSpace(string(b))
		}
	}
	_ = os.RemoveAll(cfg.Dir)
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return fmt.Errorf("bench: %w", err)
	}
	dir, err := filepath.Abs(cfg.Dir)
	if err != nil {
		return fmt.Errorf("bench: %w", err)
	}
	bin, err := filepath.Abs(cfg.Bin)
	if err != nil {
		return fmt.Errorf("bench: %w", err)
	}
	defer os.RemoveAll(dir)
	r := &runner{cfg: cfg, out: out, start: time.Now(), rep: &Report{
		Date:    time.Now().UTC().Format("2006-01-02 15:04 UTC"),
		Commit:  cfg.Commit,
		Machine: fmt.Sprintf("%d cores, %s/%s", runtime.NumCPU(), runtime.GOOS, runtime.GOARCH),
		Config: map[string]string{
			"BENCH_GROUPS": strconv.Itoa(cfg.Groups), "BENCH_SMALL_GROUPS": strconv.Itoa(cfg.SmallGroups),
			"BENCH_SECONDS": strconv.FormatFloat(cfg.Duration.Seconds(), 'f', -1, 64), "BENCH_BATCH": strconv.Itoa(cfg.Batch),
		},
	}}
	if len(cfg.DaemonFlags) > 0 {
		r.rep.Config["BENCH_DAEMON_FLAGS"] = strconv.Quote(strings.Join(cfg.DaemonFlags, " "))
	}
	load0 := loadAvg()
	r.logf("setting up: SoftHSM token, Vault dev server, PKI in %s", dir)
	r.env, err = newEnv(dir, bin)
	if err != nil {
		return err
	}
	defer r.env.close()
	vaultPID = r.env.vaultPID
	if err := r.bases(ctx); err != nil {
		return err
	}
	if r.cfg.Only == "audit" {
		if r.cfg.HSMSessions == 0 {
			r.cfg.HSMSessions = 2
		}
		if err := r.auditOnly(ctx); err != nil {
			return err
		}
		r.rep.Wall = time.Since(r.start).Round(time.Second).String()
		r.rep.Load = load0 + " at the start, " + loadAvg() + " at the end"
		r.cfg.Quick = true // the interleaved targets only, then the p99's
		r.targets()
		r.halfLoadTarget()
		r.rep.Markdown(out)
		return r.rep.WriteJSON(cfg.Out)
	}
	if err := r.callCounts(ctx); err != nil {
		return err
	}
	if !r.cfg.Quick {
		if err := r.ceiling(ctx); err != nil {
			return err
		}
	}
	if r.cfg.HSMSessions == 0 {
		r.cfg.HSMSessions = max(peak(r.rows(sectionRaw, "rewrap ecdh-p256")).Conc, 2)
	}
	r.rep.Config["BENCH_HSM_SESSIONS"] = strconv.Itoa(r.cfg.HSMSessions)
	if err := r.transit(ctx); err != nil {
		return err
	}
	if err := r.small(ctx); err != nil {
		return err
	}
	if err := r.large(ctx); err != nil {
		return err
	}
	r.rep.Wall = time.Since(r.start).Round(time.Second).String()
	r.rep.Load = load0 + " at the start, " + loadAvg() + " at the end"
	r.targets()
	r.rep.Markdown(out)
	if err := r.rep.WriteJSON(cfg.Out); err != nil {
		return err
	}
	fmt.Fprintf(out, "\nJSON: %s\n", cfg.Out)
	return nil
}

// bases provisions the keys the stores' groups are copies of, and a slot
// per key, in this process (before any daemon runs).
func (r *runner) bases(ctx context.Context) error {
	h, err := hsm.Open(r.env.tok.HSMConfig())
	if err != nil {
		return err
	}
	defer h.Close()
	mk := func(suite string) (base, error) {
		pub, priv, err := h.GenerateEscrowKey(ctx, hsm.Suite(suite))
		if err != nil {
			return base{}, err
		}
		u, err := h.GenerateUnlockKey(ctx)
		if err != nil {
			return base{}, err
		}
		gdk, err := device.NewGDK()
		if err != nil {
			return base{}, err
		}
		slot, err := device.SealEscrow(pub, device.To{Group: baseGroup, GDKVersion: 1, KeyVersion: 1}, suite, gdk)
		if err != nil {
			return base{}, err
		}
		s, err := bundle.ParseSlot(slot)
		if err != nil {
			return base{}, err
		}
		src := hsm.Source{EscrowPrivate: priv, EscrowPublicDER: pub, Suite: hsm.Suite(suite), Wrapped: s.Wrapped, EPK: s.EPK}
		full := src
		full.Context, full.Bind = s.Context(), s.Bind
		return base{suite: suite, pub: pub, escrow: priv, unlock: u, gdk: gdk, src: src, slot: full}, nil
	}
	for range ecBases {
		b, err := mk(bundle.SuiteECDHP256)
		if err != nil {
			return err
		}
		r.ec = append(r.ec, b)
	}
	b, err := mk(bundle.SuiteRSAOAEPSHA1)
	if err != nil {
		return err
	}
	r.rsa = &b
	ek, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	der, err := x509.MarshalPKIXPublicKey(&ek.PublicKey)
	if err != nil {
		return err
	}
	r.member = escrowdv1.Recipient{Kind: escrowdv1.Recipient_KIND_MEMBER, Id: "member-1", KeyVersion: 1, Suite: bundle.SuiteECDHP256, PublicKey: der}
	rk, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return err
	}
	if der, err = x509.MarshalPKIXPublicKey(&rk.PublicKey); err != nil {
		return err
	}
	r.rsaMem = escrowdv1.Recipient{Kind: escrowdv1.Recipient_KIND_MEMBER, Id: "member-2", KeyVersion: 1, Suite: bundle.SuiteRSAOAEPSHA1, PublicKey: der}
	r.burst, err = burstMembers()
	return err
}

const sectionRaw = "raw ceiling (PKCS#11)"

// vaultWrite is the row of one Vault KV write.
const vaultWrite = "KV write of one audit record"

// ceiling measures the raw PKCS#11 sequences, in this process, with no
// daemon running.
func (r *runner) ceiling(ctx context.Context) error {
	h, err := hsm.Open(r.env.tok.HSMConfig())
	if err != nil {
		return err
	}
	defer h.Close()
	ops := []struct {
		name string
		op   hsm.CeilingOp
		in   hsm.CeilingInput
	}{
		{"rewrap ecdh-p256", hsm.CeilingRewrapECDH, hsm.CeilingInput{Source: r.ec[0].src}},
		{"reveal (HMAC)", hsm.CeilingReveal, hsm.CeilingInput{Unlock: r.ec[0].unlock}},
		{"provision ecdh-p256", hsm.CeilingProvision, hsm.CeilingInput{}},
	}
	if r.cfg.RSA {
		ops = append(ops, struct {
			name string
			op   hsm.CeilingOp
			in   hsm.CeilingInput
		}{"rewrap rsa-oaep-sha1", hsm.CeilingRewrapRSA, hsm.CeilingInput{Source: r.rsa.src,
			Target: hsm.Target{PublicKeyDER: r.rsaMem.PublicKey, Suite: hsm.SuiteRSAOAEPSHA1}}})
	}
	for _, o := range ops {
		for _, n := range r.cfg.Sessions {
			if n > hsm.DefaultSessions {
				continue
			}
			res, err := h.Ceiling(ctx, o.op, o.in, n, r.cfg.Duration)
			if err != nil {
				return err
			}
			r.add(sectionRaw, o.name, n, Result{Stats: Summarize(res.Latencies, len(res.Latencies), 0, res.Elapsed), CPU: -1, VaultCPU: -1}, "sessions")
		}
	}
	return nil
}

const sectionVault = "Vault Transit"

// vaultClient makes the benchmark's own client of the Vault server.
func (r *runner) vaultClient() error {
	cfg := api.DefaultConfig()
	cfg.Address = r.env.vault.Addr
	cfg.MaxRetries = 0
	if t, ok := cfg.HttpClient.Transport.(*http.Transport); ok {
		t.MaxIdleConnsPerHost = 256
		t.MaxConnsPerHost = 0
	}
	c, err := api.NewClient(cfg)
	if err != nil {
		return fmt.Errorf("bench: vault client: %w", err)
	}
	c.SetToken(r.env.vault.Token)
	r.vault = c
	return nil
}

// transit measures Vault Transit's rewrap on the Vault server escrowd
// audits to (nothing else running): the nearest Vault operation to
// escrowd's re-wrap. Transit has no ECDH key type; aes256-gcm96 (a
// symmetric re-encryption) is its cheapest rewrap, rsa-3072 the RSA one.
func (r *runner) transit(ctx context.Context) error {
	if err := r.vaultClient(); err != nil {
		return err
	}
	c := r.vault
	keys := []struct{ name, typ, op string }{{"bench-aes", "aes256-gcm96", "rewrap aes256-gcm96"}}
	if r.cfg.RSA {
		keys = append(keys, struct{ name, typ, op string }{"bench-rsa", "rsa-3072", "rewrap rsa-3072"})
	}
	gdk := make([]byte, 32)
	if _, err := rand.Read(gdk); err != nil {
		return err
	}
	for _, k := range keys {
		if _, err := c.Logical().WriteWithContext(ctx, "transit/keys/"+k.name, map[string]any{"type": k.typ}); err != nil {
			return fmt.Errorf("bench: transit key %s: %w", k.typ, err)
		}
		s, err := c.Logical().WriteWithContext(ctx, "transit/encrypt/"+k.name, map[string]any{"plaintext": base64.StdEncoding.EncodeToString(gdk)})
		if err != nil || s == nil {
			return fmt.Errorf("bench: transit encrypt: %w", err)
		}
		ct, _ := s.Data["ciphertext"].(string)
		path := "transit/rewrap/" + k.name
		if k.typ == "rsa-3072" {
			r.transitRSA.path, r.transitRSA.ct = path, ct
		}
		if r.cfg.Quick {
			continue
		}
		for _, n := range r.cfg.Conc {
			res := RunClosed(ctx, n, r.cfg.Duration, 0, func(ctx context.Context, _ int) (int, error) {
				_, err := c.Logical().WriteWithContext(ctx, path, map[string]any{"ciphertext": ct})
				return 1, err
			})
			res.CPU = -1 // no escrowd runs
			r.add(sectionVault, k.op, n, res, "file audit device on")
		}
	}
	return nil
}

// fill makes a bbolt store of n groups, copies of the bases under their
// own ids, and reveal users with codes, in batched transactions.
func (r *runner) fill(ctx context.Context, path string, n int) error {
	t0 := time.Now()
	st, err := bolt.Open(path)
	if err != nil {
		return err
	}
	defer st.Close()
	created := time.Now().UTC().Truncate(time.Second)
	group := func(i int) store.Group {
		b := r.baseOf(i)
		return store.Group{ID: groupID(i), Created: created,
			Escrow: []store.EscrowKey{{Version: 1, Suite: b.suite, PublicKey: b.pub,
				Private: store.WrappedKey{KEKVersion: b.escrow.KEKVersion, Blob: b.escrow.Blob}, Created: created}},
			Unlock: []store.UnlockKey{{Version: 1, Key: store.WrappedKey{KEKVersion: b.unlock.KEKVersion, Blob: b.unlock.Blob}, Created: created}}}
	}
	const chunk = 20000
	gs := make([]store.Group, 0, chunk)
	for i := 0; i < n; i += chunk {
		gs = gs[:0]
		for j := i; j < min(i+chunk, n); j++ {
			gs = append(gs, group(j))
		}
		if err := st.Import(ctx, gs, nil); err != nil {
			return err
		}
	}
	cs := make([]store.Codes, 0, revealUsers)
	for u := range revealUsers {
		// Every epoch has its own random nonce, bound into its codes.
		nonce := make([]byte, store.NonceSize)
		if _, err := rand.Read(nonce); err != nil {
			return err
		}
		cs = append(cs, store.Codes{Group: groupID(userGroup(u, n)), User: "u" + strconv.Itoa(u), Epoch: 1, UnlockVersion: 1,
			Revealed: make([]bool, codesPerUser), Updated: created, Nonce: nonce})
	}
	if err := st.Import(ctx, nil, cs); err != nil {
		return err
	}
	fi, _ := os.Stat(path)
	size := int64(0)
	if fi != nil {
		size = fi.Size()
	}
	r.logf("filled %s: %d groups, %d users with codes, %s, in %s", filepath.Base(path), n, revealUsers, mib(uint64(size)), time.Since(t0).Round(time.Millisecond))
	r.rep.Facts = append(r.rep.Facts, fmt.Sprintf("Store of %s groups (bbolt, batched import of %d really provisioned key sets): %s on disk, filled in %s.",
		thousands(n), ecBases+1, mib(uint64(size)), time.Since(t0).Round(100*time.Millisecond)))
	return nil
}

func mib(b uint64) string { return fmt.Sprintf("%.0f MiB", float64(b)/(1<<20)) }

func thousands(n int) string {
	s := strconv.Itoa(n)
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	return s
}

// The gRPC operations. Each picks its group at random from a pool spread
// over the whole store (or the next reveal user), so that the store is
// read all over, not one hot record.

// slotPool is how many ecdh-p256 groups of a store get an escrow slot of
// their own (all of them in a smaller store), and rsaPool how many
// rsa-oaep-sha1 groups.
const (
	slotPool = 1 << 14
	rsaPool  = 1 << 10
)

// rsaGroups is how many groups of a store of n are rsa-oaep-sha1 ones
// (isRSA): group 100j+50 for every j.
func rsaGroups(n int) int { return (n + 49) / 100 }

// ecIndex is the index of the j-th ecdh-p256 group of a filled store: every
// hundred indexes hold 99 of them, all but the one isRSA names.
func ecIndex(j int) int {
	i := j/99*100 + j%99
	if j%99 >= 50 {
		i++
	}
	return i
}

// sealed is a group of a filled store and an escrow slot that names it.
type sealed struct {
	group string
	slot  []byte
}

// pool is the groups the operations on one store send requests for, each
// with its own escrow slot.
type pool struct {
	ec, rsa []sealed
}

// spread picks k of the indexes 0 to m−1 (all of them if k ≥ m), one at
// random in each of k equal strata, so the picks cover the whole range.
func spread(m, k int) []int {
	if k >= m {
		out := make([]int, m)
		for i := range out {
			out[i] = i
		}
		return out
	}
	out := make([]int, k)
	for j := range out {
		lo, hi := j*m/k, (j+1)*m/k
		out[j] = lo + mrand.IntN(hi-lo)
	}
	return out
}

// sealPool seals, before any timed run, an escrow slot for every group of
// the pool of a store of n groups, as a device would: a slot (format
// version 2) names its group and carries the commitment and binding of
// the group's GDK, so one slot no longer serves every copy of a base key.
// The timed operations only pick from the pool, so a request costs the
// daemon what it did when one slot was sent for every group, plus the
// checks of that slot's commitment and binding in the HSM.
func (r *runner) sealPool(n int) (*pool, error) {
	t0 := time.Now()
	var ecIdx, rsaIdx []int
	for _, j := range spread(n-rsaGroups(n), slotPool) {
		ecIdx = append(ecIdx, ecIndex(j))
	}
	for _, j := range spread(rsaGroups(n), rsaPool) {
		rsaIdx = append(rsaIdx, 100*j+50)
	}
	p := &pool{ec: make([]sealed, len(ecIdx))}
	if r.cfg.RSA {
		// rsaPool slots, several per group in a small store (OAEP is
		// randomised: each its own bytes), so that a random pick rarely
		// meets a slot a session keeps opened (docs/HSM.md, "Hot slots")
		// and the row measures the RSA opening Transit does every time.
		p.rsa = make([]sealed, max(len(rsaIdx), rsaPool))
	}
	type job struct {
		b   *base
		idx int
		out *sealed
	}
	jobs := make(chan job)
	errs := make(chan error, runtime.NumCPU())
	var wg sync.WaitGroup
	for range runtime.NumCPU() {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var first error
			for j := range jobs {
				if first != nil {
					continue
				}
				g := groupID(j.idx)
				slot, err := device.SealEscrow(j.b.pub, device.To{Group: g, GDKVersion: 1, KeyVersion: 1}, j.b.suite, j.b.gdk)
				if err != nil {
					first = fmt.Errorf("bench: seal an escrow slot for %s: %w", g, err)
					continue
				}
				*j.out = sealed{group: g, slot: slot}
			}
			errs <- first
		}()
	}
	for k, i := range ecIdx {
		b := r.baseOf(i)
		jobs <- job{b: &b, idx: i, out: &p.ec[k]}
	}
	for k := range p.rsa {
		jobs <- job{b: r.rsa, idx: rsaIdx[k%len(rsaIdx)], out: &p.rsa[k]}
	}
	close(jobs)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			return nil, err
		}
	}
	r.logf("sealed escrow slots for %d ecdh-p256 and %d rsa-oaep-sha1 groups of %d (%d rsa slots) in %s", len(p.ec), len(rsaIdx), n, len(p.rsa), time.Since(t0).Round(time.Millisecond))
	return p, nil
}

func (p *pool) ecPick() *sealed { return &p.ec[mrand.IntN(len(p.ec))] }

func (r *runner) rewrapECDH(d *daemon, p *pool) Op {
	return func(ctx context.Context, _ int) (int, error) {
		g := p.ecPick()
		_, err := d.sync.Rewrap(ctx, &escrowdv1.RewrapRequest{GroupId: g.group, EscrowSlot: g.slot, Recipient: &r.member})
		return 1, err
	}
}

func (r *runner) rewrapRSA(d *daemon, p *pool) Op {
	return func(ctx context.Context, _ int) (int, error) {
		g := &p.rsa[mrand.IntN(len(p.rsa))]
		_, err := d.sync.Rewrap(ctx, &escrowdv1.RewrapRequest{GroupId: g.group, EscrowSlot: g.slot, Recipient: &r.rsaMem})
		return 1, err
	}
}

func (r *runner) batch(d *daemon, p *pool) Op {
	return func(ctx context.Context, _ int) (int, error) {
		items := make([]*escrowdv1.BatchRewrapItem, r.cfg.Batch)
		for j := range items {
			g := p.ecPick()
			items[j] = &escrowdv1.BatchRewrapItem{Reference: strconv.Itoa(j), GroupId: g.group, EscrowSlot: g.slot,
				Target: &escrowdv1.BatchRewrapItem_Recipient{Recipient: &r.member}}
		}
		resp, err := d.sync.BatchRewrap(ctx, &escrowdv1.BatchRewrapRequest{Items: items})
		if err != nil {
			return 0, err
		}
		for _, it := range resp.Results {
			if it.Error != nil {
				return 0, fmt.Errorf("batch item: code %d: %s", it.Error.Code, it.Error.Message)
			}
		}
		return len(items), nil
	}
}

func (r *runner) reveal(d *daemon, n int) Op {
	return func(ctx context.Context, _ int) (int, error) {
		u := int(r.seq.Add(1)) % revealUsers
		resp, err := d.sup.RevealUnlockCode(ctx, &escrowdv1.RevealUnlockCodeRequest{GroupId: groupID(userGroup(u, n)), UserId: "u" + strconv.Itoa(u), Ticket: "SUP-1"})
		if resp != nil {
			resp.Code = "" // never kept, never printed
		}
		return 1, err
	}
}

func (r *runner) provision(d *daemon, tag string) Op {
	return func(ctx context.Context, _ int) (int, error) {
		id := fmt.Sprintf("bench-p%s-%d", tag, r.seq.Add(1))
		_, err := d.sync.ProvisionGroup(ctx, &escrowdv1.ProvisionGroupRequest{GroupId: id})
		return 1, err
	}
}

// sweep runs op at every concurrency and returns the rows.
func (r *runner) sweep(ctx context.Context, d *daemon, section, name string, op Op, note string) []Row {
	var rows []Row
	for _, n := range r.cfg.Conc {
		rows = append(rows, r.add(section, name, n, RunClosed(ctx, n, r.cfg.Duration, d.pid(), op), note))
	}
	return rows
}

func peak(rows []Row) Row {
	var best Row
	for _, x := range rows {
		if x.OpsPerSec > best.OpsPerSec {
			best = x
		}
	}
	return best
}

func (r *runner) rows(section, op string) []Row {
	var out []Row
	for _, x := range r.rep.Rows {
		if x.Section == section && x.Op == op {
			out = append(out, x)
		}
	}
	return out
}

// daemonFlags are the flags of every daemon of the run besides the
// stack's: a new slice each call, which callers may append to.
func (r *runner) daemonFlags() []string {
	return append([]string{"-hsm-sessions", strconv.Itoa(r.cfg.HSMSessions)}, r.cfg.DaemonFlags...)
}

func (r *runner) sectionSmall() string { return "escrowd, " + thousands(r.cfg.SmallGroups) + " groups" }
func (r *runner) sectionLarge() string { return "escrowd, " + thousands(r.cfg.Groups) + " groups" }

// small runs every operation on the small store, then reveals with audit
// off and with one Vault write per request.
func (r *runner) small(ctx context.Context) error {
	path := filepath.Join(r.env.dir, "small.db")
	if r.cfg.OwnKeys {
		if err := r.provisionOwn(ctx, r.cfg.SmallGroups); err != nil {
			return err
		}
		defer func() { r.own = nil }()
	}
	if err := r.fill(ctx, path, r.cfg.SmallGroups); err != nil {
		return err
	}
	n := r.cfg.SmallGroups
	sec := r.sectionSmall()
	p, err := r.sealPool(n)
	if err != nil {
		return err
	}
	r.smallStore = &struct {
		path string
		pool *pool
	}{path, p}
	if r.cfg.Quick {
		return r.smallPairs(ctx, path, p)
	}
	d, err := r.env.startDaemon("escrowd-bench", path, "escrowd-small.log", r.daemonFlags()...)
	if err != nil {
		return err
	}
	rw := r.sweep(ctx, d, sec, "rewrap ecdh-p256", r.rewrapECDH(d, p), "")
	if r.cfg.RSA && n > 50 {
		r.sweep(ctx, d, sec, "rewrap rsa-oaep-sha1", r.rewrapRSA(d, p), "")
	}
	r.sweep(ctx, d, sec, "batch rewrap ecdh-p256", r.batch(d, p), fmt.Sprintf("%d items per call; ops = items", r.cfg.Batch))
	r.sweep(ctx, d, sec, "reveal", r.reveal(d, n), "")
	r.sweep(ctx, d, sec, "provision ecdh-p256", r.provision(d, "s"), "")
	// p99 at half of the peak re-wrap load, open loop.
	pk := peak(rw)
	rate := pk.OpsPerSec / 2
	r.add(sec, "rewrap ecdh-p256 @ half peak", 0, RunOpen(ctx, rate, r.cfg.Duration, 256, d.pid(), r.rewrapECDH(d, p)),
		fmt.Sprintf("open loop, %.0f req/s", rate))
	// Right after the open-loop row.
	r.vaultWrite(ctx)
	r.rep.Facts = append(r.rep.Facts, fmt.Sprintf("escrowd memory with %s groups: %s.", thousands(n), d.memory()))
	if r.cfg.Profile != "" {
		r.profile(ctx, d, "rewrap", pk.Conc, r.rewrapECDH(d, p))
		r.profile(ctx, d, "reveal", peak(r.rows(sec, "reveal")).Conc, r.reveal(d, n))
	}
	d.stop()

	d, err = r.env.startDaemon("escrowd-noaudit", path, "escrowd-noaudit.log", r.daemonFlags()...)
	if err != nil {
		return err
	}
	off := r.sweep(ctx, d, sec+", audit off", "reveal", r.reveal(d, n), "escrowd_noaudit build")
	if r.cfg.Profile != "" {
		r.profile(ctx, d, "reveal-noaudit", peak(off).Conc, r.reveal(d, n))
	}
	d.stop()

	d, err = r.env.startDaemon("escrowd-bench", path, "escrowd-batch1.log", append(r.daemonFlags(), "-audit-max-batch", "1")...)
	if err != nil {
		return err
	}
	r.sweep(ctx, d, sec+", -audit-max-batch 1", "reveal", r.reveal(d, n), "one Vault write per request")
	d.stop()
	return r.smallPairs(ctx, path, p)
}

// large runs re-wrap and reveal on the large store, then a master KEK
// rotation over it.
func (r *runner) large(ctx context.Context) error {
	path := filepath.Join(r.env.dir, "large.db")
	if err := r.fill(ctx, path, r.cfg.Groups); err != nil {
		return err
	}
	n := r.cfg.Groups
	sec := r.sectionLarge()
	p, err := r.sealPool(n)
	if err != nil {
		return err
	}
	d, err := r.env.startDaemon("escrowd-bench", path, "escrowd-large.log", r.daemonFlags()...)
	if err != nil {
		return err
	}
	defer d.stop()
	if r.cfg.Quick {
		return r.largePairs(ctx, d, p)
	}
	r.sweep(ctx, d, sec, "rewrap ecdh-p256", r.rewrapECDH(d, p), "")
	r.sweep(ctx, d, sec, "reveal", r.reveal(d, n), "")
	if err := r.largePairs(ctx, d, p); err != nil {
		return err
	}
	r.rep.Facts = append(r.rep.Facts, fmt.Sprintf("escrowd memory with %s groups: %s.", thousands(n), d.memory()))
	if !r.cfg.KEK {
		return nil
	}
	// The SO ceremony, from the CLI, while the daemon runs.
	if _, err := r.env.ctl(ctx, "hsm", "init", "-module", r.env.tok.Module, "-token", r.env.tok.Label,
		"-so-pin-file", filepath.Join(r.env.tok.Dir, "so.pin"), "-pin-file", filepath.Join(r.env.tok.Dir, "user.pin"), "-kek-version", "2"); err != nil {
		return err
	}
	if err := r.kekCeiling(ctx); err != nil {
		return err
	}
	cpu, vcpu := startCPU(d.pid()), startCPU(vaultPID)
	t0 := time.Now()
	resp, err := d.sec.StartJob(ctx, &escrowdv1.StartJobRequest{Kind: "kek-rotation", Params: map[string]string{"to": "2"}})
	if err != nil {
		return fmt.Errorf("bench: start the KEK rotation: %w", err)
	}
	id := resp.Job.Id
	var job *escrowdv1.Job
	last := time.Now()
	bounded := false
	for {
		time.Sleep(250 * time.Millisecond)
		js, err := d.sec.ListJobs(ctx, &escrowdv1.ListJobsRequest{})
		if err != nil {
			return fmt.Errorf("bench: list jobs: %w", err)
		}
		for _, j := range js.Jobs {
			if j.Id == id {
				job = j
			}
		}
		if job == nil {
			return fmt.Errorf("bench: job %s not listed", id)
		}
		if job.State != "running" {
			break
		}
		if r.cfg.KEKTime > 0 && time.Since(t0) > r.cfg.KEKTime {
			bounded = true
			break
		}
		if time.Since(last) > 15*time.Second {
			r.logf("KEK rotation: pass %d, %d of %d groups", job.Pass, job.Done, job.Total)
			last = time.Now()
		}
	}
	el := time.Since(t0)
	pct, vpct := cpu.percent(), vcpu.percent()
	if bounded {
		if _, err := d.sec.CancelJob(ctx, &escrowdv1.CancelJobRequest{Id: id}); err != nil {
			return fmt.Errorf("bench: cancel the KEK rotation: %w", err)
		}
		processed := int64(job.Pass-1)*job.Total + job.Done
		rate := float64(processed) / el.Seconds()
		res := Result{Stats: Stats{Ops: int(processed), Elapsed: el, OpsPerSec: rate}, CPU: pct, VaultCPU: vpct}
		r.add(sec, "KEK rotation job", 2, res, fmt.Sprintf("groups/s over the first %s of pass 1, then canceled; job workers", el.Round(time.Second)))
		r.rep.Facts = append(r.rep.Facts, fmt.Sprintf("Master KEK rotation over %s groups: %s groups re-wrapped in %s (%.0f/s); the whole job would take about %s for the first pass, plus a checking pass that reads every group again without HSM work.",
			thousands(n), thousands(int(processed)), el.Round(time.Second), rate, (time.Duration(float64(n)/rate)*time.Second).Round(time.Second)))
		r.rep.Facts = append(r.rep.Facts, "escrowd memory after the KEK rotation: "+d.memory()+".")
		return nil
	}
	if job.State != "done" {
		return fmt.Errorf("bench: KEK rotation %s: %s: %s", id, job.State, job.Error)
	}
	res := Result{Stats: Stats{Ops: n, Elapsed: el, OpsPerSec: float64(n) / el.Seconds()}, CPU: pct, VaultCPU: vpct}
	r.add(sec, "KEK rotation job", 2, res, fmt.Sprintf("groups/s over %s incl. the checking pass; job workers", el.Round(100*time.Millisecond)))
	r.rep.Facts = append(r.rep.Facts, fmt.Sprintf("Master KEK rotation over %s groups: %s (%d passes), measured to the end.", thousands(n), el.Round(100*time.Millisecond), job.Pass))
	r.rep.Facts = append(r.rep.Facts, "escrowd memory after the KEK rotation: "+d.memory()+".")
	return nil
}

// kekCeiling measures the raw in-HSM re-wrap of one group's two keys from
// KEK v1 to v2, in this process.
func (r *runner) kekCeiling(ctx context.Context) error {
	h, err := hsm.Open(r.env.tok.HSMConfig())
	if err != nil {
		return err
	}
	defer h.Close()
	in := hsm.CeilingInput{Source: r.ec[0].src, Unlock: r.ec[0].unlock, ToKEK: 2}
	for _, n := range r.cfg.Sessions {
		if n > hsm.DefaultSessions {
			continue
		}
		res, err := h.Ceiling(ctx, hsm.CeilingKEKRewrap, in, n, r.cfg.Duration)
		if err != nil {
			return err
		}
		r.add(sectionRaw, "KEK re-wrap (per group)", n, Result{Stats: Summarize(res.Latencies, len(res.Latencies), 0, res.Elapsed), CPU: -1, VaultCPU: -1},
			"sessions; EC escrow key + unlock key")
	}
	return r.kekCallCount(ctx)
}

// targets computes the ratios and the targets: the targets from the
// interleaved ratios, the sweep's peak ratios beside them for reference.
func (r *runner) targets() {
	t := &r.rep.Targets
	it := func(name, pair string, want float64, atMost bool, value func(Interleaved) Spread, unit string) {
		x, ok := r.interleaved(pair)
		if !ok {
			return
		}
		v := value(x)
		*t = append(*t, NewTarget(name, v.Median, 1, want, atMost,
			fmt.Sprintf("median of %d pairs%s, min %.3g, max %.3g (%s)", v.N, unit, v.Min, v.Max, pair)))
	}
	ratio := func(x Interleaved) Spread { return x.Ratio }
	cpu := func(x Interleaved) Spread { return x.CPU }
	it("re-wrap, CPU-normalised, escrowd vs raw ≥ 0.9", pairRewrapRaw, 0.9, false, cpu, "")
	it("re-wrap throughput, interleaved, escrowd vs raw ≥ 0.75", pairRewrapRaw, 0.75, false, ratio, "")
	it("join-burst re-wrap vs random-group re-wrap ≥ 2 ×", pairBurst, 2, false, ratio, "")
	it("join burst as one BatchRewrap vs random groups ≥ 2 ×", pairBurstBatch, 2, false, ratio, "")
	it("audited reveals vs audit off ≥ 0.8", pairAudit, 0.8, false, ratio, "")
	it("Vault CPU per audited reveal ≤ 0.1 ms", pairAudit, 0.1, true, func(x Interleaved) Spread { return x.VaultCPU }, ", ms")
	it("rsa-oaep-sha1 re-wrap vs Vault Transit rsa-3072 rewrap ≥ 1.0", pairRSATransit, 1, false, ratio, "")
	it("re-wrap at "+thousands(r.cfg.Groups)+" vs "+thousands(r.cfg.SmallGroups)+" groups ≥ 0.95", pairLargeRewrap, 0.95, false, ratio, "")
	it("reveal at "+thousands(r.cfg.Groups)+" vs "+thousands(r.cfg.SmallGroups)+" groups ≥ 0.95", pairLargeReveal, 0.95, false, ratio, "")
	if len(r.rep.Calls) > 0 {
		var off []string
		for _, c := range r.rep.Calls {
			if want, ok := minimumCalls[c.Op]; !ok || want != c.Calls {
				off = append(off, fmt.Sprintf("%s: %d, documented %d", c.Op, c.Calls, want))
			}
		}
		detail := "every counted operation at the minimum of docs/HSM.md"
		if len(off) > 0 {
			detail = strings.Join(off, "; ")
		}
		*t = append(*t, NewTarget("PKCS#11 calls per operation at the documented minimum", float64(len(off)), 1, 0, true,
			detail+" (ratio: operations off the minimum)"))
	}
	if r.cfg.Quick {
		return
	}

	small, large := r.sectionSmall(), r.sectionLarge()
	best := func(section, op string) Row { return peak(r.rows(section, op)) }
	rawRW := best(sectionRaw, "rewrap ecdh-p256")
	escRW := best(small, "rewrap ecdh-p256")
	desc := func(a, b Row) string {
		return fmt.Sprintf("%s at %d / %s at %d", fmtRate(a.OpsPerSec), a.Conc, fmtRate(b.OpsPerSec), b.Conc)
	}
	peakRatio := func(name string, a, b Row) {
		r.rep.Ratios = append(r.rep.Ratios, NewTarget(name, a.OpsPerSec, b.OpsPerSec, 0, false, desc(a, b)))
	}
	peakRatio("escrowd / raw: rewrap ecdh-p256", escRW, rawRW)
	peakRatio("escrowd / raw: batch rewrap ecdh-p256", best(small, "batch rewrap ecdh-p256"), rawRW)
	peakRatio("escrowd / raw: reveal", best(small, "reveal"), best(sectionRaw, "reveal (HMAC)"))
	peakRatio("escrowd / raw: provision ecdh-p256", best(small, "provision ecdh-p256"), best(sectionRaw, "provision ecdh-p256"))
	vAES := best(sectionVault, "rewrap aes256-gcm96")
	peakRatio("escrowd rewrap ecdh-p256 / Vault Transit rewrap aes256-gcm96", escRW, vAES)
	peakRatio("escrowd batch rewrap / Vault Transit rewrap aes256-gcm96", best(small, "batch rewrap ecdh-p256"), vAES)
	if r.cfg.RSA {
		rsaRow := best(small, "rewrap rsa-oaep-sha1")
		peakRatio("escrowd / raw: rewrap rsa-oaep-sha1", rsaRow, best(sectionRaw, "rewrap rsa-oaep-sha1"))
		peakRatio("escrowd rewrap rsa-oaep-sha1 / Vault Transit rewrap rsa-3072", rsaRow, best(sectionVault, "rewrap rsa-3072"))
	}
	rev := best(small, "reveal")
	peakRatio("audited reveals / -audit-max-batch 1 (peaks)", rev, best(small+", -audit-max-batch 1", "reveal"))
	peakRatio("re-wrap "+thousands(r.cfg.Groups)+" / "+thousands(r.cfg.SmallGroups)+" groups (peaks)", best(large, "rewrap ecdh-p256"), escRW)
	r.halfLoadTarget()
	if r.cfg.KEK {
		job := best(large, "KEK rotation job")
		rawK := best(sectionRaw, "KEK re-wrap (per group)")
		*t = append(*t, NewTarget("KEK rotation ≥ 0.8 × raw key-wrap rate", job.OpsPerSec, rawK.OpsPerSec, 0.8, false,
			fmt.Sprintf("%s groups/s / %s groups/s raw at %d sessions (one run, not interleaved)", fmtRate(job.OpsPerSec), fmtRate(rawK.OpsPerSec), rawK.Conc)))
	}
	if pv := best(small, "provision ecdh-p256"); pv.OpsPerSec > 0 {
		r.rep.Facts = append(r.rep.Facts, fmt.Sprintf("Provisioning (ecdh-p256) peaks at %s groups/s (%d callers): 1,000,000 groups take %s at that rate.",
			fmtRate(pv.OpsPerSec), pv.Conc, (time.Duration(1e6/pv.OpsPerSec)*time.Second).Round(time.Second)))
	}
}

// profile loads d with op at conc callers while it takes a CPU profile of
// the daemon into cfg.Profile/name.pprof (`go tool pprof -top` reads it).
func (r *runner) profile(ctx context.Context, d *daemon, name string, conc int, op Op) {
	if err := os.MkdirAll(r.cfg.Profile, 0o755); err != nil {
		r.logf("profile %s: %v", name, err)
		return
	}
	secs := max(int(r.cfg.Duration.Seconds()), 2)
	done := make(chan error, 1)
	path := filepath.Join(r.cfg.Profile, name+".pprof")
	go func() {
		resp, err := http.Get(fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", d.pprof, secs))
		if err != nil {
			done <- err
			return
		}
		defer resp.Body.Close()
		f, err := os.Create(path)
		if err != nil {
			done <- err
			return
		}
		_, err = io.Copy(f, resp.Body)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		done <- err
	}()
	res := RunClosed(ctx, max(conc, 1), time.Duration(secs)*time.Second+500*time.Millisecond, d.pid(), op)
	if err := <-done; err != nil {
		r.logf("profile %s: %v", name, err)
		return
	}
	r.logf("profile %s at %d callers: %s (%s)", name, conc, path, perOp(pointOf(res)))
}

// perOp says what a profile's samples are spread over: the operations
// per second and the measured process's CPU per operation, so that a
// profile's percentages convert to milliseconds per operation.
func perOp(p Point) string {
	return fmt.Sprintf("%.0f ops/s, %.3f ms of CPU per operation", p.OpsPerSec, p.CPUPerOp*1000)
}

// profileRaw runs the raw sequence op on sessions sessions of h, in this
// process, while it takes a CPU profile of this process into
// cfg.Profile/name.pprof: the PKCS#11 calls alone, to set beside a
// daemon's profile of the same operation.
func (r *runner) profileRaw(ctx context.Context, h *hsm.HSM, name string, op hsm.CeilingOp, in hsm.CeilingInput, sessions int) {
	if err := os.MkdirAll(r.cfg.Profile, 0o755); err != nil {
		r.logf("profile %s: %v", name, err)
		return
	}
	path := filepath.Join(r.cfg.Profile, name+".pprof")
	f, err := os.Create(path)
	if err != nil {
		r.logf("profile %s: %v", name, err)
		return
	}
	defer f.Close()
	if err := pprof.StartCPUProfile(f); err != nil {
		r.logf("profile %s: %v", name, err)
		return
	}
	p, err := rawSide(h, op, in, sessions)(ctx, time.Duration(max(int(r.cfg.Duration.Seconds()), 2))*time.Second)
	pprof.StopCPUProfile()
	if err != nil {
		r.logf("profile %s: %v", name, err)
		return
	}
	r.logf("profile %s at %d sessions: %s (%s)", name, sessions, path, perOp(p))
}

// ownKey is a group's own escrow key (Config.OwnKeys).
type ownKey struct {
	pub    []byte
	escrow hsm.WrappedKey
}

// baseOf is the keys group i of a filled store has: its base's, with its
// own escrow key if it has one.
func (r *runner) baseOf(i int) base {
	if isRSA(i) {
		return *r.rsa
	}
	b := r.ec[i%len(r.ec)]
	if k, ok := r.own[i]; ok {
		b.pub, b.escrow = k.pub, k.escrow
	}
	return b
}

// provisionOwn provisions an ecdh-p256 escrow key in the HSM for every
// ecdh-p256 group of a store of n groups, untimed.
func (r *runner) provisionOwn(ctx context.Context, n int) error {
	t0 := time.Now()
	h, err := hsm.Open(r.env.tok.HSMConfig())
	if err != nil {
		return err
	}
	defer h.Close()
	idx := make(chan int)
	var mu sync.Mutex
	own := map[int]ownKey{}
	var first error
	var wg sync.WaitGroup
	for range runtime.NumCPU() {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range idx {
				pub, priv, err := h.GenerateEscrowKey(ctx, hsm.SuiteECDHP256)
				mu.Lock()
				if err != nil && first == nil {
					first = fmt.Errorf("bench: provision an escrow key for group %d: %w", i, err)
				}
				own[i] = ownKey{pub: pub, escrow: priv}
				mu.Unlock()
			}
		}()
	}
	for i := range n {
		mu.Lock()
		failed := first != nil
		mu.Unlock()
		if failed || ctx.Err() != nil {
			break
		}
		if !isRSA(i) {
			idx <- i
		}
	}
	close(idx)
	wg.Wait()
	if first != nil {
		return first
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	r.own = own
	r.logf("provisioned an escrow key of its own for each of %d ecdh-p256 groups in %s", len(own), time.Since(t0).Round(time.Millisecond))
	r.rep.Facts = append(r.rep.Facts, fmt.Sprintf("Each ecdh-p256 group of the %s-group store has an escrow key of its own (BENCH_OWN_KEYS=1).", thousands(n)))
	return nil
}
