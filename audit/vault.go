package audit

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	vault "github.com/hashicorp/vault/api"
)

// VaultConfig says where records go.
type VaultConfig struct {
	Address string
	// Token authenticates the daemon; read from a file or the environment.
	Token string
	// Mount is a KV version 2 mount; Prefix the folder under it.
	Mount  string
	Prefix string
	// Timeout bounds one Vault write; a commit that cannot finish within
	// it fails closed.
	Timeout time.Duration
	// MaxBatch bounds the records of one write (default 512).
	MaxBatch int
	// Linger is how long a batch waits for more records once it has one
	// (default 0: a batch takes what queued while the last write ran).
	Linger time.Duration
	// QueuedLinger is how long records queued by Enqueue alone wait for
	// a record someone waits on, to go out in its write (default
	// DefaultQueuedLinger; negative: not at all).
	QueuedLinger time.Duration
	// MaxBatchBytes bounds one Vault write (default 4 MiB; Vault refuses
	// requests over its max_request_size, 32 MiB by default): a batch is
	// cut before the record that would take it past the bound.
	MaxBatchBytes int
	// MaxRecordBytes bounds one record's JSON (default 256 KiB; escrowd's
	// largest, a BatchRewrap of 256 items whose ids all have the longest
	// length, is under 120 KiB): a larger record is refused by itself and
	// never joins a batch.
	MaxRecordBytes int
	// RefusalQueue bounds the refusals waiting for a write (default
	// 4 × MaxBatch); RefusalShare bounds the refusals one write carries
	// (default MaxBatch / 8, at least 1). See CommitRefusal.
	RefusalQueue int
	RefusalShare int
	// Observer, if set, learns batch sizes, write times and Vault errors
	// (metrics).
	Observer Observer
	// Keyer, if set, keys the chain: every batch written carries a MAC
	// under the chain key (keyed.go), a batch another writer left at a
	// position is chained after only if its MAC verifies, and Verify
	// checks every MAC. The chain key is made on the first write and kept,
	// wrapped, at Prefix/key.
	Keyer Keyer
	// Anchor, if set, keeps the last committed head outside Vault
	// (anchor.go): at start and after every Vault error the writer
	// refuses to continue below it (ErrTruncated), unless
	// AcceptTruncation, when it goes on after it.
	Anchor           Anchor
	AcceptTruncation bool
}

func (c VaultConfig) withDefaults() VaultConfig {
	if c.Mount == "" {
		c.Mount = "secret"
	}
	if c.Prefix == "" {
		c.Prefix = "escrowd/audit"
	}
	if c.Timeout <= 0 {
		c.Timeout = 5 * time.Second
	}
	if c.MaxBatch <= 0 {
		c.MaxBatch = 512
	}
	if c.MaxRecordBytes <= 0 {
		c.MaxRecordBytes = 256 << 10
	}
	if c.MaxBatchBytes <= 0 {
		c.MaxBatchBytes = 4 << 20
	}
	if c.RefusalQueue <= 0 {
		c.RefusalQueue = 4 * c.MaxBatch
	}
	if c.QueuedLinger == 0 {
		c.QueuedLinger = DefaultQueuedLinger
	}
	if c.RefusalShare <= 0 {
		c.RefusalShare = max(1, c.MaxBatch/8)
	}
	if c.Observer == nil {
		c.Observer = nopObserver{}
	}
	return c
}

// Vault commits records to a KV v2 mount as a hash chain of batches.
//
// Concurrent Commit calls share writes: one goroutine writes, and every
// record that queued while a write was in flight goes into the next one
// (group commit), up to MaxBatch records and MaxBatchBytes. Refusals
// (CommitRefusal) have a lane of their own that yields to results. Batch number s is written at Prefix/chain/s with
// check-and-set 0, so a position can be taken once: when several replicas
// share a trail, the one that loses a race reads the winner's batch,
// chains after it and tries the next position. The trail is therefore one
// chain across replicas and restarts, found again at start by probing.
type Vault struct {
	cfg    VaultConfig
	client *vault.Client
	kv     *vault.KVv2

	queue    chan *pending
	refusals chan *pending
	// kick wakes the writer when a refusal was counted, not queued.
	kick chan struct{}
	// recheck asks an idle writer halted at a truncation to look at the
	// trail again (Healthy).
	recheck chan struct{}
	summary refusalSummary
	stop    chan struct{}
	wg      sync.WaitGroup
	once    sync.Once

	anchor *anchorer
	// halted is the error that stops every write until the trail is
	// repaired (a truncation) or a poisoned position acknowledged (a
	// *HaltError); Healthy reports it.
	halted atomic.Pointer[error]

	// Owned by the writer goroutine.
	keys  *keyRing // nil: the chain is not keyed
	known bool
	seq   uint64 // last batch written or seen
	n     uint64 // last record number
	prev  string // last record hash

	batches, records atomic.Uint64
	waitNanos        atomic.Int64
	poisonedAt       atomic.Uint64
}

type pending struct {
	rec *Record
	// body is rec's JSON, made once at Commit: what its chain hash covers
	// and what its batch carries.
	body []byte
	at   time.Time
	size int // an upper bound of what the record adds to a write
	done chan error
	// queued: the record came by Enqueue, and nobody waits on done;
	// failed, if set, hears of a write that failed.
	queued bool
	failed func(error)
}

// settle tells the record's committer how its write went.
func (p *pending) settle(err error) {
	p.done <- err
	if err != nil && p.failed != nil {
		p.failed(err)
	}
}

var _ Sink = (*Vault)(nil)

// NewVault makes a client and starts the writer; it does not contact
// Vault until the first commit.
func NewVault(cfg VaultConfig) (*Vault, error) {
	cfg = cfg.withDefaults()
	if cfg.Address == "" {
		return nil, errors.New("audit: no Vault address")
	}
	if cfg.Token == "" {
		return nil, errors.New("audit: no Vault token")
	}
	vc := vault.DefaultConfig()
	vc.Address = cfg.Address
	vc.Timeout = cfg.Timeout
	// The commit deadline is ours; retries inside it would hide outages.
	vc.MaxRetries = 0
	c, err := vault.NewClient(vc)
	if err != nil {
		return nil, fmt.Errorf("audit: failed to make a Vault client: %w", err)
	}
	c.SetToken(cfg.Token)
	v := &Vault{cfg: cfg, client: c, kv: c.KVv2(cfg.Mount),
		queue: make(chan *pending, 4*cfg.MaxBatch), refusals: make(chan *pending, cfg.RefusalQueue),
		kick: make(chan struct{}, 1), recheck: make(chan struct{}, 1), stop: make(chan struct{})}
	if cfg.Anchor != nil {
		v.anchor = newAnchorer(cfg.Anchor, v.trail(), v.stop, func() (context.Context, context.CancelFunc) {
			return context.WithTimeout(context.Background(), cfg.Timeout)
		})
	}
	v.wg.Add(1)
	go v.writer()
	return v, nil
}

// Close stops the writer; commits still queued fail.
func (v *Vault) Close() error {
	v.once.Do(func() { close(v.stop) })
	v.wg.Wait()
	if v.anchor != nil {
		<-v.anchor.done
	}
	return nil
}

// Commit adds r to the trail and returns once Vault holds it. Any failure
// wraps ErrUnavailable, and the caller must not release the result r
// describes. A record over MaxRecordBytes fails at once, alone.
func (v *Vault) Commit(ctx context.Context, r *Record) error {
	p, err := v.pending(r)
	if err != nil {
		return err
	}
	select {
	case v.queue <- p:
	case <-v.stop:
		return fmt.Errorf("%w: the audit writer is closed", ErrUnavailable)
	case <-ctx.Done():
		return fmt.Errorf("%w: audit queue full: %v", ErrUnavailable, ctx.Err())
	}
	return v.await(ctx, p)
}

// Enqueue adds r to the trail without waiting for its write: it returns
// once the writer holds r, which goes out with the next write, as a
// committed record would. It is for the outcome of a request whose intent
// is committed, when the result may leave before the outcome is written
// (docs/AUDIT.md, "When the outcome is written"). If that write fails, or
// the writer is closed before a last try succeeds, failed is called with
// the error, on the writer's goroutine: the intent stays open. An error
// from Enqueue itself (a record too large, the writer closed, ctx done
// while the queue is full) means r is not held.
func (v *Vault) Enqueue(ctx context.Context, r *Record, failed func(error)) error {
	p, err := v.pending(r)
	if err != nil {
		return err
	}
	p.queued, p.failed = true, failed
	select {
	case <-v.stop:
		return fmt.Errorf("%w: the audit writer is closed", ErrUnavailable)
	default:
	}
	select {
	case v.queue <- p:
		return nil
	case <-v.stop:
		return fmt.Errorf("%w: the audit writer is closed", ErrUnavailable)
	case <-ctx.Done():
		return fmt.Errorf("%w: audit queue full: %v", ErrUnavailable, ctx.Err())
	}
}

// CommitRefusal adds the record of a refused request: one that ran no
// operation and releases nothing. Refusals queue in a lane of their own
// (at most RefusalQueue) and each write takes at most RefusalShare of
// them, after the results that are waiting; a write of refusals alone
// comes at most every refusalPace. So a
// flood of refusals neither fails nor noticeably delays the commit of a
// result.
//
// It returns once Vault holds r. When the lane is full it returns nil at
// once: r is not written but counted, by caller, operation and code, into
// a summary record (operation SummaryOperation) that the next write
// carries. Any other failure wraps ErrUnavailable.
func (v *Vault) CommitRefusal(ctx context.Context, r *Record) error {
	p, err := v.pending(r)
	if err != nil {
		return err
	}
	select {
	case <-v.stop:
		return fmt.Errorf("%w: the audit writer is closed", ErrUnavailable)
	default:
	}
	select {
	case v.refusals <- p:
	default:
		v.summary.add(r, p.at)
		if o, ok := v.cfg.Observer.(RefusalObserver); ok {
			o.ObserveRefusalSummarised()
		}
		select {
		case v.kick <- struct{}{}:
		default:
		}
		return nil
	}
	return v.await(ctx, p)
}

// pending sizes r for a write, refusing it if it is too large.
func (v *Vault) pending(r *Record) (*pending, error) {
	body, err := json.Marshal(r)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	if len(body) > v.cfg.MaxRecordBytes {
		return nil, fmt.Errorf("%w: a record of %d bytes, more than %d", ErrUnavailable, len(body), v.cfg.MaxRecordBytes)
	}
	return &pending{rec: r, body: body, at: time.Now(), size: recordCost(len(body)), done: make(chan error, 1)}, nil
}

// recordCost bounds what a record of n bytes of JSON adds to a write: its
// chain fields, then the records are one JSON string (every quote and
// backslash escaped again, at most doubling it).
func recordCost(n int) int { return 2*(n+chainFieldBytes) + 2 }

const chainFieldBytes = 200

func (v *Vault) await(ctx context.Context, p *pending) error {
	select {
	case err := <-p.done:
		return err
	case <-ctx.Done():
		// The record may still be written; what it describes is withheld.
		return fmt.Errorf("%w: the audit write did not finish in time", ErrUnavailable)
	}
}

// Stats reports the batches and records written, and the mean time a
// record waited from Commit to the end of its write.
func (v *Vault) Stats() (batches, records uint64, meanWait time.Duration) {
	b, r := v.batches.Load(), v.records.Load()
	if r > 0 {
		meanWait = time.Duration(v.waitNanos.Load() / int64(r))
	}
	return b, r, meanWait
}

// refusalPace is how long results must leave the writer idle before it
// writes refusals alone, so that a result arriving meanwhile seldom
// finds a write of refusals in its way: at most 10 such writes a second,
// each a few milliseconds, leave the writer to results at least 95% of
// the time. (At 20 ms, a refused flood beside 50 reveals a second kept
// the writer a fifth of the time on refusals, and the reveals' p99 rose
// up to 2 ×.) Refusals do not wait for a write when results come: they
// ride along.
const refusalPace = 100 * time.Millisecond

// DefaultQueuedLinger: a queued outcome, written alone, would hold the
// writer when the next request's intent comes, and that request would
// wait for two writes, not one: a caller making one request after
// another (a support tool, a sync backend's loop) would gain nothing from
// queueing. Held back a little, it goes out in that intent's write. 10 ms
// outlasts a client's turn-around between requests on one host; the trail
// lags a result by at most that much more.
const DefaultQueuedLinger = 10 * time.Millisecond

func (v *Vault) writer() {
	defer v.wg.Done()
	b := &batcher{v: v}
	lastRefusals := time.Time{} // the last write of refusals alone
	for {
		if !b.waiting() {
			select {
			case p := <-v.queue:
				b.results = append(b.results, p)
			case p := <-v.refusals:
				b.refusals = append(b.refusals, p)
			case <-v.kick:
			case <-v.recheck:
				v.recheckTruncation()
				continue
			case <-v.stop:
				v.drain(b)
				return
			}
		}
		if len(b.results) == 0 && len(v.queue) == 0 {
			// Refusals alone: wait out the pace, taking any result that
			// comes meanwhile at once.
			if d := refusalPace - time.Since(lastRefusals); d > 0 {
				t := time.NewTimer(d)
				select {
				case p := <-v.queue:
					b.results = append(b.results, p)
				case <-t.C:
				case <-v.stop:
					t.Stop()
					v.drain(b)
					return
				}
				t.Stop()
			}
		}
		if b.onlyQueued() && len(v.queue) == 0 && v.cfg.QueuedLinger > 0 {
			// Wait, for a while, for a record someone waits on.
			t := time.NewTimer(v.cfg.QueuedLinger)
		wait:
			for {
				select {
				case p := <-v.queue:
					b.results = append(b.results, p)
					if !p.queued {
						break wait
					}
				case <-t.C:
					break wait
				case <-v.stop:
					t.Stop()
					v.drain(b)
					return
				}
			}
			t.Stop()
		}
		wrote, _ := v.writeNext(b)
		if wrote && !b.lastHadResults {
			lastRefusals = time.Now()
		}
	}
}

// writeNext cuts the next batch and writes it, telling each record's
// committer how it went. It reports whether there was anything to write,
// and the write's error.
func (v *Vault) writeNext(b *batcher) (bool, error) {
	batch, summary, counts := b.next()
	if len(batch) == 0 && summary == nil {
		return false, nil
	}
	recs := make([][]byte, 0, len(batch)+1)
	for _, p := range batch {
		recs = append(recs, p.body)
	}
	var err error
	if summary != nil {
		var body []byte
		if body, err = json.Marshal(summary); err == nil {
			recs = append(recs, body)
		}
	}
	start := time.Now()
	if err == nil {
		err = v.write(recs)
	} else {
		err = fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	now := time.Now()
	v.cfg.Observer.ObserveAuditBatch(len(recs), now.Sub(start), err)
	if err != nil && counts != nil {
		v.summary.restore(counts)
	}
	// Counted before the committers hear, so that Stats read after a
	// Commit returns includes its write.
	if err == nil {
		v.batches.Add(1)
		v.records.Add(uint64(len(batch)))
	}
	for _, p := range batch {
		if err == nil {
			v.waitNanos.Add(int64(now.Sub(p.at)))
		}
		p.settle(err)
	}
	return true, err
}

// batcher builds the writes: results first (with Linger), up to MaxBatch
// and MaxBatchBytes, then up to RefusalShare refusals, then the summary
// of refusals that found the lane full. What does not fit waits for the
// next write, in order.
type batcher struct {
	v                 *Vault
	results, refusals []*pending // taken from the queues, not yet written
	lastHadResults    bool
}

// onlyQueued reports whether the records held are all queued ones
// (Enqueue), which nobody waits on.
func (b *batcher) onlyQueued() bool {
	if len(b.results) == 0 || len(b.refusals) > 0 {
		return false
	}
	for _, p := range b.results {
		if !p.queued {
			return false
		}
	}
	return true
}

// waiting reports whether records are held for the next write.
func (b *batcher) waiting() bool { return len(b.results) > 0 || len(b.refusals) > 0 }

func (b *batcher) next() ([]*pending, *Record, *refusalSummary) {
	v := b.v
	var batch []*pending
	bytes := 0
	fits := func(p *pending) bool { return len(batch) == 0 || bytes+p.size <= v.cfg.MaxBatchBytes }
	// Results: those held, then the queue, lingering if configured.
	var linger <-chan time.Time
	if v.cfg.Linger > 0 && (len(b.results) > 0 || len(v.queue) > 0) {
		t := time.NewTimer(v.cfg.Linger)
		defer t.Stop()
		linger = t.C
	}
	full := false
	nres := 0
	for !full && nres < v.cfg.MaxBatch {
		var p *pending
		if len(b.results) > 0 {
			p, b.results = b.results[0], b.results[1:]
		} else if linger != nil {
			select {
			case p = <-v.queue:
			case <-linger:
				linger = nil
				continue
			}
		} else {
			select {
			case p = <-v.queue:
			default:
			}
		}
		if p == nil {
			break
		}
		if !fits(p) {
			b.results = append([]*pending{p}, b.results...)
			full = true
			break
		}
		batch = append(batch, p)
		bytes += p.size
		nres++
	}
	b.lastHadResults = nres > 0
	// Refusals: those held, then the lane, up to the share.
	for nref := 0; !full && nref < v.cfg.RefusalShare; nref++ {
		var p *pending
		if len(b.refusals) > 0 {
			p, b.refusals = b.refusals[0], b.refusals[1:]
		} else {
			select {
			case p = <-v.refusals:
			default:
			}
		}
		if p == nil {
			break
		}
		if !fits(p) {
			b.refusals = append([]*pending{p}, b.refusals...)
			full = true
			break
		}
		batch = append(batch, p)
		bytes += p.size
	}
	if full && len(batch) > 0 {
		return batch, nil, nil
	}
	r, counts := v.summary.take()
	return batch, r, counts
}

// drain writes what is still queued, results then refusals, in as many
// writes as it takes, until one fails; every record left then fails.
// Records queued by Enqueue were accepted, and their results may have
// left: a close must not drop them.
func (v *Vault) drain(b *batcher) {
	for {
		wrote, err := v.writeNext(b)
		if !wrote || err != nil {
			break
		}
	}
	closed := fmt.Errorf("%w: the audit writer is closed", ErrUnavailable)
	for _, p := range append(b.results, b.refusals...) {
		p.settle(closed)
	}
	for {
		select {
		case p := <-v.queue:
			p.settle(closed)
		case p := <-v.refusals:
			p.settle(closed)
		default:
			return
		}
	}
}

// recheckTruncation finds the head again if the writer is halted at a
// truncation, and goes on if the trail now reaches the anchored head (its
// deleted batches were restored). It never writes.
func (v *Vault) recheckTruncation() {
	h := v.halted.Load()
	if h == nil || !errors.Is(*h, ErrTruncated) {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), v.cfg.Timeout)
	defer cancel()
	if err := v.findHead(ctx); err == nil {
		v.resume()
	}
}

// write commits one batch of records, given as their JSON, at the next
// position, chaining after whatever another writer put there first.
func (v *Vault) write(recs [][]byte) error {
	ctx, cancel := context.WithTimeout(context.Background(), v.cfg.Timeout)
	defer cancel()
	if v.cfg.Keyer != nil && v.keys == nil {
		v.keys = v.newKeyRing()
	}
	if !v.known {
		if err := v.findHead(ctx); err != nil {
			if errors.Is(err, ErrTruncated) {
				v.halt(&HaltError{err: err, reason: strings.TrimPrefix(err.Error(), ErrUnavailable.Error()+": ")}, "truncated")
			}
			return err
		}
		v.resume()
	}
	for {
		seq := v.seq + 1
		chained, n, head, err := linkJSON(recs, v.n, v.prev)
		if err != nil {
			return fmt.Errorf("%w: %v", ErrUnavailable, err)
		}
		var key, mac string
		if v.keys != nil {
			if key, mac, err = v.keys.signHead(ctx, seq, head); err != nil {
				return fmt.Errorf("%w: %v", ErrUnavailable, err)
			}
		}
		doc, err := encodeDocument(seq, chained, key, mac)
		if err != nil {
			return fmt.Errorf("%w: %v", ErrUnavailable, err)
		}
		err = v.put(ctx, seq, doc)
		if err == nil {
			v.seq, v.n, v.prev = seq, n, head
			if v.anchor != nil {
				v.anchor.advance(anchorHead{seq: seq, n: n, hash: head})
			}
			return nil
		}
		if !isCASConflict(err) {
			// The write may have landed before the error: find the head
			// again before the next one.
			v.known = false
			return fmt.Errorf("%w: failed to write audit batch %d to Vault: %v", ErrUnavailable, seq, firstLine(err))
		}
		// Another writer holds this position: chain after the last batch.
		// The position lost is checked as the next one always was (what is
		// not a batch, or a forged one, halts the writer); a writer idle
		// while the others wrote many then jumps to the head rather than
		// reading each of their batches in turn, which would outlast its
		// records' timeout. Verify checks the batches in between.
		err = v.adopt(ctx, seq)
		if err == nil {
			var last uint64
			if last, err = v.lastFrom(ctx, seq); err == nil && last > seq {
				err = v.adoptLast(ctx, last)
			}
		}
		if err != nil {
			v.known = false
			return err
		}
	}
}

// put writes document doc at position seq with check-and-set 0: the
// request body is built around doc as it is, where KVv2.Put would take
// a map, so the batch is encoded once (decoding it into a map to have it
// encoded again cost the writer as much CPU as making it).
func (v *Vault) put(ctx context.Context, seq uint64, doc []byte) error {
	body := make([]byte, 0, len(doc)+32)
	body = append(body, `{"data":`...)
	body = append(body, doc...)
	body = append(body, `,"options":{"cas":0}}`...)
	sec, err := v.client.Logical().WriteBytesWithContext(ctx, path.Join(v.cfg.Mount, "data", v.batchPath(seq)), body)
	if err != nil {
		return err
	}
	if sec == nil {
		// KV v2 answers a write with the version it made. No answer is a
		// mount of another kind (KV v1 takes the same path as a plain key
		// and ignores check-and-set, so replicas could overwrite each
		// other's batches): refuse to go on.
		return errors.New("no version of the batch was made: is the audit mount KV version 2?")
	}
	return nil
}

// findHead locates the last batch: exponential probing, then bisection.
func (v *Vault) findHead(ctx context.Context) error {
	var anchor anchorHead
	if v.cfg.Anchor != nil {
		var err error
		if anchor, err = v.readAnchor(ctx); err != nil {
			return err
		}
	}
	v.seq, v.n, v.prev = 0, 0, Genesis
	ok, err := v.exists(ctx, 1)
	if err != nil {
		return err
	}
	if ok {
		last, err := v.lastFrom(ctx, 1)
		if err != nil {
			return err
		}
		if err := v.adoptLast(ctx, last); err != nil {
			return err
		}
	}
	if v.cfg.Anchor != nil {
		if err := v.checkAnchor(ctx, anchor); err != nil {
			return err
		}
	}
	v.known = true
	return nil
}

// lastFrom returns the last position taken from position from on, which
// is taken: exponential probing, then bisection, O(log n) reads where n
// is how many batches others wrote after from.
func (v *Vault) lastFrom(ctx context.Context, from uint64) (uint64, error) {
	lo, step := from, uint64(1)
	for {
		ok, err := v.exists(ctx, lo+step)
		if err != nil {
			return 0, err
		}
		if !ok {
			break
		}
		lo, step = lo+step, step*2
	}
	for hi := lo + step; hi-lo > 1; {
		mid := lo + (hi-lo)/2
		ok, err := v.exists(ctx, mid)
		if err != nil {
			return 0, err
		}
		if ok {
			lo = mid
		} else {
			hi = mid
		}
	}
	return lo, nil
}

// maxWalkBack bounds how far back findHead looks for a batch to chain
// after when the last ones are deleted, unreadable or forged.
const maxWalkBack = 64

// adoptLast moves the head to position last, chaining after the last
// batch at or before it that is readable and, if the chain is keyed,
// verifies. Positions are never reused: the next write goes after last.
// A position holding what is not a batch, or a forged one, stops the
// writer (poison) unless an operator acknowledged it; deleted positions
// are walked past (the anchor catches a deleted tail).
func (v *Vault) adoptLast(ctx context.Context, last uint64) error {
	for s := last; s >= 1 && last-s < maxWalkBack; s-- {
		b, err := v.readBatch(ctx, s)
		switch {
		case errors.Is(err, vault.ErrSecretNotFound):
			continue
		case errors.Is(err, errBadBatch):
			if err := v.poison(ctx, s, err); err != nil {
				return err
			}
			continue // acknowledged
		case err != nil:
			return fmt.Errorf("%w: failed to read audit batch %d: %v", ErrUnavailable, s, firstLine(err))
		}
		if v.keys != nil {
			// A batch whose MAC the HSM cannot compute (its key's KEK was
			// destroyed) is not known forged: chain after it.
			if cerr := v.keys.check(ctx, b); errors.Is(cerr, errForged) {
				if err := v.poison(ctx, s, cerr); err != nil {
					return err
				}
				continue // acknowledged
			}
		}
		if len(b.Records) == 0 {
			continue
		}
		v.seq = last
		l := b.Records[len(b.Records)-1]
		v.n, v.prev = l.N, l.Hash
		return nil
	}
	if last > maxWalkBack {
		return fmt.Errorf("%w: none of audit batches %d to %d can be chained after (deleted, unreadable or forged): see OPERATIONS.md, \"The audit trail\"", ErrUnavailable, last-maxWalkBack+1, last)
	}
	// Nothing to chain after: the trail starts again from the genesis,
	// after the positions taken.
	v.seq, v.n, v.prev = last, 0, Genesis
	return nil
}

// poisoned notes a position that holds something this writer will not
// chain after: not a batch, or, in a keyed trail, a batch without a valid
// MAC. It is never overwritten; Verify names it. Each position is counted
// once, however often the halted writer finds it again.
func (v *Vault) poisoned(seq uint64) {
	if v.poisonedAt.Swap(seq) == seq {
		return
	}
	if o, ok := v.cfg.Observer.(PoisonObserver); ok {
		o.ObservePoisonedBatch()
	}
}

// Poisoned returns the last position the writer found holding an
// unreadable or forged batch (and halted at, or skipped once it was
// acknowledged), 0 if none.
func (v *Vault) Poisoned() uint64 { return v.poisonedAt.Load() }

func (v *Vault) exists(ctx context.Context, seq uint64) (bool, error) {
	_, err := v.kv.Get(ctx, v.batchPath(seq))
	if errors.Is(err, vault.ErrSecretNotFound) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("%w: failed to read the audit trail: %v", ErrUnavailable, firstLine(err))
	}
	return true, nil
}

// adopt moves the head to batch seq, written by another writer. A
// position holding what is not a batch, or a batch whose MAC does not
// verify, stops the writer (poison): every write fails until an operator
// acknowledges the position, after which it is skipped and the next write
// chains after the last good batch, at the next position.
func (v *Vault) adopt(ctx context.Context, seq uint64) error {
	b, err := v.readBatch(ctx, seq)
	if err != nil {
		if errors.Is(err, vault.ErrSecretNotFound) {
			// A deleted batch: the trail is broken there and Verify will
			// say so; keep writing after it.
			v.seq = seq
			return nil
		}
		if errors.Is(err, errBadBatch) {
			if err := v.poison(ctx, seq, err); err != nil {
				return err
			}
			v.seq = seq
			return nil
		}
		return fmt.Errorf("%w: failed to read audit batch %d: %v", ErrUnavailable, seq, firstLine(err))
	}
	if v.keys != nil {
		// A batch whose MAC the HSM cannot compute (its key's KEK was
		// destroyed) is not known forged: chain after it.
		if cerr := v.keys.check(ctx, b); errors.Is(cerr, errForged) {
			if err := v.poison(ctx, seq, cerr); err != nil {
				return err
			}
			v.seq = seq
			return nil
		}
	}
	v.seq = seq
	if len(b.Records) > 0 {
		last := b.Records[len(b.Records)-1]
		v.n, v.prev = last.N, last.Hash
	}
	return nil
}

func (v *Vault) batchPath(seq uint64) string {
	return path.Join(v.cfg.Prefix, "chain", fmt.Sprintf("%020d", seq))
}

// BatchPath is where batch seq is stored, as Vault's audit log names it.
func (v *Vault) BatchPath(seq uint64) string {
	return path.Join(v.cfg.Mount, "data", v.batchPath(seq))
}

func (v *Vault) readBatch(ctx context.Context, seq uint64) (*Batch, error) {
	s, err := v.kv.Get(ctx, v.batchPath(seq))
	if err != nil {
		return nil, err
	}
	if s.Data == nil {
		// Soft-deleted: the metadata remains, the data is gone.
		return nil, vault.ErrSecretNotFound
	}
	raw, err := json.Marshal(s.Data)
	if err != nil {
		return nil, err
	}
	b, err := ParseBatch(raw)
	if err != nil {
		return nil, fmt.Errorf("batch %d: %w", seq, err)
	}
	return b, nil
}

// Walk calls fn for every batch position in the trail, in order. A batch
// that is listed but cannot be read is passed as nil.
func (v *Vault) Walk(ctx context.Context, fn func(seq uint64, b *Batch) error) error {
	sec, err := v.client.Logical().ListWithContext(ctx, path.Join(v.cfg.Mount, "metadata", v.cfg.Prefix, "chain"))
	if err != nil {
		return fmt.Errorf("audit: failed to list the trail: %w", err)
	}
	var seqs []uint64
	if sec != nil {
		keys, _ := sec.Data["keys"].([]any)
		for _, k := range keys {
			s, err := strconv.ParseUint(fmt.Sprint(k), 10, 64)
			if err != nil {
				return fmt.Errorf("audit: unexpected key %q in the trail", k)
			}
			seqs = append(seqs, s)
		}
	}
	slices.Sort(seqs)
	for _, s := range seqs {
		b, err := v.readBatch(ctx, s)
		switch {
		case errors.Is(err, vault.ErrSecretNotFound), errors.Is(err, errBadBatch):
			b = nil
		case err != nil:
			return fmt.Errorf("audit: failed to read batch %d: %w", s, err)
		}
		if err := fn(s, b); err != nil {
			return err
		}
	}
	return nil
}

// Report is what VerifyAll found.
type Report struct {
	// Records is the number of records checked; N and Head the number and
	// hash of the last record the chain reached.
	Records  int
	N        uint64
	Head     string
	Problems []Problem
	Open     []OpenIntent
	// Keyed: the MACs were checked (the verifier has the HSM); Unkeyed
	// counts the batches written before the trail was keyed.
	Keyed   bool
	Unkeyed int
	// Unverified counts the batches whose MAC the HSM could not compute:
	// the key they name is wrapped under a destroyed KEK version, or the
	// HSM failed (UnverifiedWhy says which).
	Unverified    int
	UnverifiedWhy string
}

// VerifyAll walks the whole trail and reports every break, going on past
// each, and every intent without an outcome. Each expected head (a
// checkpoint the operator kept) must be on the chain, or the trail was
// truncated or rewritten.
func (v *Vault) VerifyAll(ctx context.Context, expect ...Head) (*Report, error) {
	ver := NewVerifier()
	for _, h := range expect {
		ver.Expect(h)
	}
	if v.cfg.Keyer != nil {
		keys := v.newKeyRing()
		if err := keys.load(ctx); err != nil {
			return nil, err
		}
		ver.CheckMAC = func(b *Batch) error { return keys.check(ctx, b) }
	}
	err := v.Walk(ctx, func(seq uint64, b *Batch) error {
		if b == nil {
			ver.Unreadable(seq, "deleted or not a batch")
			return nil
		}
		ver.Add(seq, b)
		return nil
	})
	if err != nil {
		return nil, err
	}
	ver.Finish()
	r := &Report{Problems: ver.Problems, Open: ver.OpenIntents(), Keyed: ver.CheckMAC != nil, Unkeyed: ver.Unkeyed,
		Unverified: ver.Unverified, UnverifiedWhy: ver.UnverifiedWhy}
	r.Records, r.Head = ver.Head()
	r.N, _ = ver.Last()
	return r, nil
}

// Verify walks the whole trail and reports the first problem, if any, with
// the number of records verified and the head hash. VerifyAll reports
// them all.
func (v *Vault) Verify(ctx context.Context) (*Problem, int, string, error) {
	r, err := v.VerifyAll(ctx)
	if err != nil {
		return nil, 0, "", err
	}
	var p *Problem
	if len(r.Problems) > 0 {
		p = &r.Problems[0]
	}
	return p, r.Records, r.Head, nil
}

// Find returns the last record with the given id, walking the trail: a
// request's outcome when it has an intent before it.
func (v *Vault) Find(ctx context.Context, id string) (*Chained, error) {
	var found *Chained
	err := v.Walk(ctx, func(_ uint64, b *Batch) error {
		if b == nil {
			return nil
		}
		for i := range b.Records {
			if b.Records[i].ID == id {
				found = &b.Records[i]
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if found == nil {
		return nil, fmt.Errorf("audit: record %s not found", id)
	}
	return found, nil
}

// Healthy reports whether Vault is unsealed and answering, and the
// writer not halted. A writer halted at a poisoned position is healthy
// again as soon as an operator has acknowledged it: the next write goes
// on past it, and health must say so first, or no request would come to
// make that write. For the same reason a writer halted at a truncation
// is asked to look at the trail again, without a write: once the
// deleted batches are back, a later check finds it going on.
func (v *Vault) Healthy(ctx context.Context) (err error) {
	defer func() { v.cfg.Observer.ObserveVaultHealth(err) }()
	if h := v.halted.Load(); h != nil && !v.haltAcknowledged(ctx, *h) {
		if errors.Is(*h, ErrTruncated) {
			select {
			case v.recheck <- struct{}{}:
			default:
			}
		}
		return *h
	}
	h, err := v.client.Sys().HealthWithContext(ctx)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrUnavailable, firstLine(err))
	}
	if h.Sealed || !h.Initialized {
		return fmt.Errorf("%w: Vault is sealed or not initialised", ErrUnavailable)
	}
	return nil
}

func isCASConflict(err error) bool {
	return strings.Contains(err.Error(), "check-and-set")
}

// batchData is b as the data of a KV write.
func batchData(b *Batch) (map[string]any, error) {
	raw, err := encodeBatch(b)
	if err != nil {
		return nil, err
	}
	return toMap(raw)
}

func toMap(b []byte) (map[string]any, error) {
	// Numbers stay json.Number: through float64, 1000000 would come back
	// as 1e+06 and no longer decode as an integer.
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var m map[string]any
	err := dec.Decode(&m)
	return m, err
}

// firstLine keeps an error's first line: Vault's client errors quote the
// response body, which holds nothing secret of ours but does not belong in
// a log line either.
func firstLine(err error) string {
	s := err.Error()
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i]
	}
	return s
}
