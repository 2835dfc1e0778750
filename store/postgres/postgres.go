// Package postgres is escrowd's PostgreSQL store, for several daemon
// replicas serving one fleet. Every method is one transaction; updates of a
// group, a user's codes or a job lock that row (SELECT … FOR UPDATE), so no
// two replicas ever claim the same unlock code or commit over each other.
//
// The schema is created and migrated at Open from the SQL files embedded
// under migrations/, under a PostgreSQL advisory lock so that replicas
// starting together migrate once.
package postgres

import (
	"bytes"
	"context"
	"crypto/tls"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/escrowd/escrowd/store"
)

//go:embed migrations/*.sql
var migrations embed.FS

// migrationLock is the advisory lock key held while migrating ("escrowd").
const migrationLock = 0x657363726f7764

// Store is the PostgreSQL back end.
type Store struct {
	pool *pgxpool.Pool
	// now is this replica's clock, for the times it records (an epoch's
	// Updated, a job's Updated). Rate limits never read it: see clockQuery.
	now func() time.Time
	// clockQuery reads the database's clock, which TakeRate uses so that
	// every replica counts on the same one. Tests point it at a clock of
	// their own in their throw-away database.
	clockQuery string
	closed     atomic.Bool
}

// databaseClock is the default clockQuery: the database's current time,
// read after the rate-limit rows are locked (not the transaction's start,
// now(), which may be earlier than a write it waited for).
const databaseClock = "SELECT clock_timestamp()"

var _ store.Store = (*Store)(nil)

// ErrInsecureTransport: the store URL would reach a database away from
// this machine without verifying its certificate and name.
var ErrInsecureTransport = errors.New("postgres: a database away from loopback or a Unix socket must be reached with sslmode=verify-full")

// Open connects to the database at url (a postgres:// URL or a libpq
// key=value string) and brings its schema up to date.
func Open(ctx context.Context, url string) (*Store, error) {
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		// The URL may hold a password: do not echo it.
		return nil, errors.New("postgres: cannot parse the store URL")
	}
	if err := checkTransport(cfg.ConnConfig.Config); err != nil {
		return nil, err
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("postgres: failed to connect: %w", err)
	}
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("postgres: failed to connect to %s:%d: %w", cfg.ConnConfig.Host, cfg.ConnConfig.Port, err)
	}
	if err := migrate(ctx, pool); err != nil {
		pool.Close()
		return nil, err
	}
	return &Store{pool: pool, now: time.Now, clockQuery: databaseClock}, nil
}

type migration struct {
	version int
	name    string
	sql     string
}

func loadMigrations() ([]migration, error) {
	names, err := fs.Glob(migrations, "migrations/*.sql")
	if err != nil {
		return nil, err
	}
	var out []migration
	for _, n := range names {
		base := strings.TrimPrefix(n, "migrations/")
		v, err := strconv.Atoi(strings.SplitN(base, "_", 2)[0])
		if err != nil || v <= 0 {
			return nil, fmt.Errorf("postgres: migration %s: name must start with a version number", base)
		}
		b, err := migrations.ReadFile(n)
		if err != nil {
			return nil, err
		}
		out = append(out, migration{version: v, name: base, sql: string(b)})
	}
	sort.Slice(out, func(a, b int) bool { return out[a].version < out[b].version })
	for i := range out {
		if out[i].version != i+1 {
			return nil, fmt.Errorf("postgres: migrations are not numbered 1, 2, 3…: %s", out[i].name)
		}
	}
	return out, nil
}

// migrate applies the embedded migrations not yet applied, each in its own
// transaction, holding an advisory lock so concurrent starts migrate once.
func migrate(ctx context.Context, pool *pgxpool.Pool) error {
	ms, err := loadMigrations()
	if err != nil {
		return err
	}
	conn, err := pool.Acquire(ctx)
	if err != nil {
		return fmt.Errorf("postgres: migrate: %w", err)
	}
	defer conn.Release()
	if _, err := conn.Exec(ctx, "SELECT pg_advisory_lock($1)", int64(migrationLock)); err != nil {
		return fmt.Errorf("postgres: migrate: advisory lock: %w", err)
	}
	defer func() {
		_, _ = conn.Exec(context.WithoutCancel(ctx), "SELECT pg_advisory_unlock($1)", int64(migrationLock))
	}()
	if _, err := conn.Exec(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (
		version integer PRIMARY KEY, name text NOT NULL, applied timestamptz NOT NULL DEFAULT now())`); err != nil {
		return fmt.Errorf("postgres: migrate: %w", err)
	}
	var have int
	if err := conn.QueryRow(ctx, "SELECT coalesce(max(version), 0) FROM schema_migrations").Scan(&have); err != nil {
		return fmt.Errorf("postgres: migrate: %w", err)
	}
	if have > len(ms) {
		return fmt.Errorf("postgres: the database's schema is version %d, this build knows %d: upgrade escrowd", have, len(ms))
	}
	for _, m := range ms[have:] {
		err := pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, m.sql); err != nil {
				return err
			}
			_, err := tx.Exec(ctx, "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", m.version, m.name)
			return err
		})
		if err != nil {
			return fmt.Errorf("postgres: migration %s: %w", m.name, err)
		}
	}
	return nil
}

// SchemaVersion returns the version of the database's schema.
func (s *Store) SchemaVersion(ctx context.Context) (int, error) {
	var v int
	err := s.pool.QueryRow(ctx, "SELECT coalesce(max(version), 0) FROM schema_migrations").Scan(&v)
	return v, s.err(err)
}

// Close closes the connection pool.
func (s *Store) Close() error {
	if s.closed.CompareAndSwap(false, true) {
		s.pool.Close()
	}
	return nil
}

func (s *Store) check(ctx context.Context) error {
	if s.closed.Load() {
		return store.ErrClosed
	}
	return ctx.Err()
}

func (s *Store) err(err error) error {
	if err != nil && s.closed.Load() {
		return store.ErrClosed
	}
	return err
}

// tx runs fn in a transaction.
func (s *Store) tx(ctx context.Context, fn func(pgx.Tx) error) error {
	if err := s.check(ctx); err != nil {
		return err
	}
	return s.err(pgx.BeginFunc(ctx, s.pool, fn))
}

func isUniqueViolation(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && pe.Code == "23505"
}

// CreateGroup implements store.Store.
func (s *Store) CreateGroup(ctx context.Context, g store.Group) error {
	if err := s.check(ctx); err != nil {
		return err
	}
	g.Rev = 1
	doc, err := json.Marshal(g)
	if err != nil {
		return err
	}
	tag, err := s.pool.Exec(ctx, "INSERT INTO groups (id, rev, doc) VALUES ($1, 1, $2) ON CONFLICT (id) DO NOTHING", g.ID, doc)
	if err != nil {
		return s.err(err)
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("group %s: %w", g.ID, store.ErrExists)
	}
	return nil
}

type querier interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

func getGroup(ctx context.Context, q querier, id, suffix string) (store.Group, error) {
	var (
		g   store.Group
		doc []byte
		rev int64
	)
	err := q.QueryRow(ctx, "SELECT rev, doc FROM groups WHERE id = $1"+suffix, id).Scan(&rev, &doc)
	if errors.Is(err, pgx.ErrNoRows) {
		return g, fmt.Errorf("group %s: %w", id, store.ErrNotFound)
	}
	if err != nil {
		return g, err
	}
	if err := json.Unmarshal(doc, &g); err != nil {
		return g, fmt.Errorf("group %s: %w", id, err)
	}
	g.ID, g.Rev = id, uint64(rev)
	return g, nil
}

func putGroup(ctx context.Context, tx pgx.Tx, g store.Group) error {
	doc, err := json.Marshal(g)
	if err != nil {
		return err
	}
	_, err = tx.Exec(ctx, "UPDATE groups SET rev = $2, doc = $3 WHERE id = $1", g.ID, int64(g.Rev), doc)
	return err
}

// Group implements store.Store.
func (s *Store) Group(ctx context.Context, id string) (store.Group, error) {
	if err := s.check(ctx); err != nil {
		return store.Group{}, err
	}
	g, err := getGroup(ctx, s.pool, id, "")
	return g, s.err(err)
}

// UpdateGroup implements store.Store.
func (s *Store) UpdateGroup(ctx context.Context, id string, fn func(*store.Group) error) (store.Group, error) {
	var g store.Group
	err := s.tx(ctx, func(tx pgx.Tx) error {
		var err error
		if g, err = getGroup(ctx, tx, id, " FOR UPDATE"); err != nil {
			return err
		}
		rev := g.Rev
		escrow, unlock := store.LatestVersions(&g)
		if err := fn(&g); err != nil {
			return err
		}
		g.ID, g.Rev = id, rev+1
		if err := putGroup(ctx, tx, g); err != nil {
			return err
		}
		if e, ok := store.KeyEvent(ctx, &g, escrow, unlock, s.now().Truncate(time.Microsecond)); ok {
			return insertEvent(ctx, tx, e)
		}
		return nil
	})
	if err != nil {
		return store.Group{}, err
	}
	return g, nil
}

// ListGroups implements store.Store.
func (s *Store) ListGroups(ctx context.Context, after string, limit int) ([]store.Group, error) {
	if err := s.check(ctx); err != nil {
		return nil, err
	}
	rows, err := s.pool.Query(ctx, "SELECT id, rev, doc FROM groups WHERE id > $1 ORDER BY id LIMIT $2", after, limit)
	if err != nil {
		return nil, s.err(err)
	}
	defer rows.Close()
	var out []store.Group
	for rows.Next() {
		var (
			id  string
			rev int64
			doc []byte
			g   store.Group
		)
		if err := rows.Scan(&id, &rev, &doc); err != nil {
			return nil, err
		}
		if err := json.Unmarshal(doc, &g); err != nil {
			return nil, fmt.Errorf("group %s: %w", id, err)
		}
		g.ID, g.Rev = id, uint64(rev)
		out = append(out, g)
	}
	return out, s.err(rows.Err())
}

// CountGroups implements store.Store.
func (s *Store) CountGroups(ctx context.Context) (int64, error) {
	if err := s.check(ctx); err != nil {
		return 0, err
	}
	var n int64
	err := s.pool.QueryRow(ctx, "SELECT count(*) FROM groups").Scan(&n)
	return n, s.err(err)
}

func getCodes(ctx context.Context, q querier, group, user, suffix string) (store.Codes, error) {
	c := store.Codes{Group: group, User: user}
	var epoch, uv int64
	err := q.QueryRow(ctx, "SELECT epoch, unlock_version, nonce, revealed, consumed, updated FROM codes WHERE group_id = $1 AND user_id = $2"+suffix,
		group, user).Scan(&epoch, &uv, &c.Nonce, &c.Revealed, &c.Consumed, &c.Updated)
	if errors.Is(err, pgx.ErrNoRows) {
		return c, fmt.Errorf("group %s user %s: %w", group, user, store.ErrNoEpoch)
	}
	c.Epoch, c.UnlockVersion, c.Updated = uint32(epoch), uint32(uv), c.Updated.UTC()
	return c, err
}

// Codes implements store.Store.
func (s *Store) Codes(ctx context.Context, group, user string) (store.Codes, error) {
	if err := s.check(ctx); err != nil {
		return store.Codes{}, err
	}
	c, err := getCodes(ctx, s.pool, group, user, "")
	return c, s.err(err)
}

// StartEpoch implements store.Store.
func (s *Store) StartEpoch(ctx context.Context, group, user string, prevEpoch, unlockVersion uint32, n int, nonce []byte) (store.Codes, error) {
	var c store.Codes
	if err := store.CheckNonce(nonce); err != nil {
		return c, err
	}
	err := s.tx(ctx, func(tx pgx.Tx) error {
		if err := groupExists(ctx, tx, group); err != nil {
			return err
		}
		var err error
		c, err = s.startEpoch(ctx, tx, group, store.EpochStart{User: user, PrevEpoch: prevEpoch, UnlockVersion: unlockVersion, Codes: n, Nonce: nonce}, 0)
		return err
	})
	if err != nil {
		return store.Codes{}, err
	}
	return c, nil
}

func groupExists(ctx context.Context, tx pgx.Tx, group string) error {
	var one int
	err := tx.QueryRow(ctx, "SELECT 1 FROM groups WHERE id = $1", group).Scan(&one)
	if errors.Is(err, pgx.ErrNoRows) {
		return fmt.Errorf("group %s: %w", group, store.ErrNotFound)
	}
	return err
}

// startEpoch starts e's epoch of group in tx, with its event; gdkVersion is
// the GDK version of the rotation that issues it, if any.
func (s *Store) startEpoch(ctx context.Context, tx pgx.Tx, group string, e store.EpochStart, gdkVersion uint32) (store.Codes, error) {
	cur, err := getCodes(ctx, tx, group, e.User, " FOR UPDATE")
	exists := err == nil
	if err != nil && !errors.Is(err, store.ErrNoEpoch) {
		return store.Codes{}, err
	}
	if cur.Epoch != e.PrevEpoch {
		return store.Codes{}, fmt.Errorf("user %s: epoch is %d, not %d: %w", e.User, cur.Epoch, e.PrevEpoch, store.ErrConflict)
	}
	c := store.Codes{Group: group, User: e.User, Epoch: e.PrevEpoch + 1, UnlockVersion: e.UnlockVersion, Nonce: bytes.Clone(e.Nonce),
		Revealed: make([]bool, e.Codes), Updated: s.now().UTC().Truncate(time.Microsecond)}
	if exists {
		_, err = tx.Exec(ctx, `UPDATE codes SET epoch = $3, unlock_version = $4, nonce = $5, revealed = $6, consumed = NULL, updated = $7
			WHERE group_id = $1 AND user_id = $2`, group, e.User, int64(c.Epoch), int64(c.UnlockVersion), c.Nonce, c.Revealed, c.Updated)
	} else {
		_, err = tx.Exec(ctx, `INSERT INTO codes (group_id, user_id, epoch, unlock_version, nonce, revealed, updated)
			VALUES ($1, $2, $3, $4, $5, $6, $7)`, group, e.User, int64(c.Epoch), int64(c.UnlockVersion), c.Nonce, c.Revealed, c.Updated)
		if isUniqueViolation(err) {
			return store.Codes{}, fmt.Errorf("user %s: epoch started concurrently: %w", e.User, store.ErrConflict)
		}
	}
	if err != nil {
		return store.Codes{}, err
	}
	return c, insertEvent(ctx, tx, store.EpochEvent(ctx, &c, gdkVersion, c.Updated))
}

// RecordGDKRotation implements store.Store.
func (s *Store) RecordGDKRotation(ctx context.Context, r store.GDKRotation) ([]store.Codes, error) {
	for _, e := range r.Epochs {
		if err := store.CheckNonce(e.Nonce); err != nil {
			return nil, err
		}
	}
	var out []store.Codes
	err := s.tx(ctx, func(tx pgx.Tx) error {
		out = nil
		if err := groupExists(ctx, tx, r.Group); err != nil {
			return err
		}
		if err := insertEvent(ctx, tx, store.GDKEvent(ctx, &r, s.now().Truncate(time.Microsecond))); err != nil {
			return err
		}
		for _, e := range r.Epochs {
			c, err := s.startEpoch(ctx, tx, r.Group, e, r.GDKVersion)
			if err != nil {
				return err
			}
			out = append(out, c)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// ClaimCode implements store.Store. The row is locked for the transaction,
// so concurrent claims, from this process or another replica, queue on it
// and each sees the claims before it.
func (s *Store) ClaimCode(ctx context.Context, group, user string) (int, store.Codes, error) {
	var c store.Codes
	index := -1
	err := s.tx(ctx, func(tx pgx.Tx) error {
		var err error
		c, err = getCodes(ctx, tx, group, user, " FOR UPDATE")
		if err != nil {
			return err
		}
		for i, r := range c.Revealed {
			if !r {
				index = i
				break
			}
		}
		if index < 0 {
			return fmt.Errorf("group %s user %s epoch %d: %w", group, user, c.Epoch, store.ErrExhausted)
		}
		c.Revealed[index] = true
		c.Updated = s.now().UTC().Truncate(time.Microsecond)
		if _, err := tx.Exec(ctx, "UPDATE codes SET revealed = $3, updated = $4 WHERE group_id = $1 AND user_id = $2",
			group, user, c.Revealed, c.Updated); err != nil {
			return err
		}
		return insertEvent(ctx, tx, store.RevealEvent(ctx, &c, index, c.Updated))
	})
	if err != nil {
		return -1, store.Codes{}, err
	}
	return index, c, nil
}

func getJob(ctx context.Context, q querier, id, suffix string) (store.Job, error) {
	var (
		j   store.Job
		doc []byte
	)
	err := q.QueryRow(ctx, "SELECT doc FROM jobs WHERE id = $1"+suffix, id).Scan(&doc)
	if errors.Is(err, pgx.ErrNoRows) {
		return j, fmt.Errorf("job %s: %w", id, store.ErrNotFound)
	}
	if err != nil {
		return j, err
	}
	err = json.Unmarshal(doc, &j)
	j.ID = id
	return j, err
}

func putJob(ctx context.Context, tx pgx.Tx, j store.Job) error {
	doc, err := json.Marshal(j)
	if err != nil {
		return err
	}
	_, err = tx.Exec(ctx, "UPDATE jobs SET doc = $2 WHERE id = $1", j.ID, doc)
	return err
}

// CreateJob implements store.Store.
func (s *Store) CreateJob(ctx context.Context, j store.Job) error {
	if err := s.check(ctx); err != nil {
		return err
	}
	doc, err := json.Marshal(j)
	if err != nil {
		return err
	}
	tag, err := s.pool.Exec(ctx, "INSERT INTO jobs (id, created, doc) VALUES ($1, $2, $3) ON CONFLICT (id) DO NOTHING", j.ID, j.Created, doc)
	if err != nil {
		return s.err(err)
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("job %s: %w", j.ID, store.ErrExists)
	}
	return nil
}

// Job implements store.Store.
func (s *Store) Job(ctx context.Context, id string) (store.Job, error) {
	if err := s.check(ctx); err != nil {
		return store.Job{}, err
	}
	j, err := getJob(ctx, s.pool, id, "")
	return j, s.err(err)
}

// Jobs implements store.Store.
func (s *Store) Jobs(ctx context.Context) ([]store.Job, error) {
	if err := s.check(ctx); err != nil {
		return nil, err
	}
	rows, err := s.pool.Query(ctx, "SELECT doc FROM jobs ORDER BY created, id")
	if err != nil {
		return nil, s.err(err)
	}
	defer rows.Close()
	var out []store.Job
	for rows.Next() {
		var (
			doc []byte
			j   store.Job
		)
		if err := rows.Scan(&doc); err != nil {
			return nil, err
		}
		if err := json.Unmarshal(doc, &j); err != nil {
			return nil, err
		}
		out = append(out, j)
	}
	return out, s.err(rows.Err())
}

// UpdateJob implements store.Store.
func (s *Store) UpdateJob(ctx context.Context, id string, fn func(*store.Job) error) (store.Job, error) {
	var j store.Job
	err := s.tx(ctx, func(tx pgx.Tx) error {
		var err error
		if j, err = getJob(ctx, tx, id, " FOR UPDATE"); err != nil {
			return err
		}
		if err := fn(&j); err != nil {
			return err
		}
		j.ID = id
		return putJob(ctx, tx, j)
	})
	if err != nil {
		return store.Job{}, err
	}
	return j, nil
}

// CommitBatch implements store.Store. The job row is locked first, so a
// replica taking the job over waits for a batch in flight and the batch
// after sees the new owner.
func (s *Store) CommitBatch(ctx context.Context, b store.Batch) (store.Job, error) {
	var j store.Job
	err := s.tx(ctx, func(tx pgx.Tx) error {
		var err error
		if j, err = getJob(ctx, tx, b.JobID, " FOR UPDATE"); err != nil {
			return err
		}
		if j.Owner != b.Owner {
			return fmt.Errorf("job %s is held by %q: %w", b.JobID, j.Owner, store.ErrLeaseHeld)
		}
		for _, g := range b.Groups {
			doc, err := json.Marshal(g)
			if err != nil {
				return err
			}
			// The stored record's newest versions, for the key_rotated
			// event, come back from the update itself (one round trip).
			var escrow, unlock int64
			err = tx.QueryRow(ctx, `WITH old AS (SELECT doc FROM groups WHERE id = $1 AND rev = $2 FOR UPDATE)
				UPDATE groups g SET rev = g.rev + 1, doc = $3 FROM old WHERE g.id = $1
				RETURNING coalesce((old.doc->'escrow'->-1->>'version')::bigint, 0), coalesce((old.doc->'unlock'->-1->>'version')::bigint, 0)`,
				g.ID, int64(g.Rev), doc).Scan(&escrow, &unlock)
			if errors.Is(err, pgx.ErrNoRows) {
				return fmt.Errorf("group %s changed since revision %d: %w", g.ID, g.Rev, store.ErrConflict)
			}
			if err != nil {
				return err
			}
			if e, ok := store.KeyEvent(ctx, &g, uint32(escrow), uint32(unlock), s.now().Truncate(time.Microsecond)); ok {
				if err := insertEvent(ctx, tx, e); err != nil {
					return err
				}
			}
		}
		j.Cursor, j.Done, j.Changed, j.Updated = b.Cursor, b.Done, b.Changed, s.now().UTC()
		return putJob(ctx, tx, j)
	})
	if err != nil {
		return store.Job{}, err
	}
	return j, nil
}

// checkTransport refuses a connection configuration that could reach a
// remote database in clear or to an unverified server: the store holds
// every wrapped group key and the code state, and a man in the middle could
// roll codes back to unrevealed. Loopback and Unix sockets are local to the
// machine; anything else needs sslmode=verify-full, which is the only mode
// in which pgx checks both the chain and the server's name, and which has
// no plain-text fallback (sslmode=prefer and allow fall back in clear).
func checkTransport(cfg pgconn.Config) error {
	type hop struct {
		host string
		tls  *tls.Config
	}
	hops := []hop{{cfg.Host, cfg.TLSConfig}}
	for _, f := range cfg.Fallbacks {
		hops = append(hops, hop{f.Host, f.TLSConfig})
	}
	for _, h := range hops {
		if localHost(h.host) {
			continue
		}
		if h.tls == nil || h.tls.InsecureSkipVerify || h.tls.ServerName == "" {
			return fmt.Errorf("%w (host %q)", ErrInsecureTransport, h.host)
		}
	}
	return nil
}

// localHost reports whether host is a Unix socket directory or a loopback
// address.
func localHost(host string) bool {
	if strings.HasPrefix(host, "/") || host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
