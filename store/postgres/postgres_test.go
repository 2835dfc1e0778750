package postgres

import (
	"bytes"
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/escrowd/escrowd/internal/pgtest"
	"github.com/escrowd/escrowd/store"
	"github.com/escrowd/escrowd/store/storetest"
)

func TestConformance(t *testing.T) {
	storetest.Run(t, storetest.Backend{
		Open: func(t *testing.T) (store.Store, func() store.Store) {
			url := pgtest.New(t)
			s, err := Open(context.Background(), url)
			if err != nil {
				t.Fatal(err)
			}
			cur := s
			t.Cleanup(func() { cur.Close() })
			return s, func() store.Store {
				if err := cur.Close(); err != nil {
					t.Fatal(err)
				}
				n, err := Open(context.Background(), url)
				if err != nil {
					t.Fatal(err)
				}
				cur = n
				return n
			}
		},
		Clock: func(t *testing.T, s store.Store) func(time.Time) { return testClock(t, s.(*Store)) },
		Replicas: func(t *testing.T, nows ...func() time.Time) ([]store.Store, func(time.Time)) {
			url := pgtest.New(t)
			var hs []store.Store
			var set func(time.Time)
			for _, now := range nows {
				s, err := Open(context.Background(), url)
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { s.Close() })
				s.now = now
				set = testClock(t, s)
				hs = append(hs, s)
			}
			return hs, set
		},
	})
}

// testClock points the rate limits of s at a clock in its database, a
// one-row table, and returns the setter of that clock. Every handle on
// the database that testClock was called for reads the same clock, as
// every replica reads the database's.
func testClock(t *testing.T, s *Store) func(time.Time) {
	ctx := context.Background()
	if _, err := s.pool.Exec(ctx, "CREATE TABLE IF NOT EXISTS escrowd_test_clock (one boolean PRIMARY KEY DEFAULT true, t timestamptz NOT NULL)"); err != nil {
		t.Fatal(err)
	}
	s.clockQuery = "SELECT t FROM escrowd_test_clock"
	return func(at time.Time) {
		t.Helper()
		if _, err := s.pool.Exec(ctx, "INSERT INTO escrowd_test_clock (t) VALUES ($1) ON CONFLICT (one) DO UPDATE SET t = excluded.t", at); err != nil {
			t.Fatal(err)
		}
	}
}

// TestMigrateConcurrently: replicas starting together on an empty database
// migrate it once (the advisory lock), and all of them open.
func TestMigrateConcurrently(t *testing.T) {
	url := pgtest.New(t)
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s, err := Open(context.Background(), url)
			if err != nil {
				errs <- err
				return
			}
			s.Close()
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("concurrent Open: %v", err)
	}
	s, err := Open(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	v, err := s.SchemaVersion(context.Background())
	ms, _ := loadMigrations()
	if err != nil || v != len(ms) {
		t.Fatalf("schema version %d, %v; want %d", v, err, len(ms))
	}
	var n int
	if err := s.pool.QueryRow(context.Background(), "SELECT count(*) FROM schema_migrations").Scan(&n); err != nil || n != len(ms) {
		t.Fatalf("%d migration rows, %v; want %d (each applied once)", n, err, len(ms))
	}
}

// TestNewerSchemaRefused: a database migrated by a newer build is refused.
func TestNewerSchemaRefused(t *testing.T) {
	url := pgtest.New(t)
	s, err := Open(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.pool.Exec(context.Background(), "INSERT INTO schema_migrations (version, name) VALUES (999, 'future')"); err != nil {
		t.Fatal(err)
	}
	s.Close()
	if _, err := Open(context.Background(), url); err == nil {
		t.Fatal("Open accepted a schema newer than this build")
	}
}

// TestMigrateEpochNonce: a database at schema version 3 holding an epoch
// migrates to version 4 with the epoch kept and no nonce (escrow refuses
// to reveal its codes until a new epoch is issued), and the next epoch
// stores its nonce.
func TestMigrateEpochNonce(t *testing.T) {
	ctx := context.Background()
	url, pool := databaseAt(t, 3)
	if _, err := pool.Exec(ctx, `INSERT INTO groups (id, rev, doc) VALUES ('g', 1, '{"id":"g","rev":1}')`); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `INSERT INTO codes (group_id, user_id, epoch, unlock_version, revealed, updated)
		VALUES ('g', 'u', 3, 1, '{true,false}', now())`); err != nil {
		t.Fatal(err)
	}
	s, err := Open(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if v, err := s.SchemaVersion(ctx); err != nil || v < 4 {
		t.Fatalf("schema version %d, %v", v, err)
	}
	c, err := s.Codes(ctx, "g", "u")
	if err != nil || c.Epoch != 3 || len(c.Nonce) != 0 || c.Remaining() != 1 {
		t.Fatalf("migrated epoch %+v, %v; want epoch 3, no nonce, one code left", c, err)
	}
	n := bytes.Repeat([]byte{7}, store.NonceSize)
	if c, err = s.StartEpoch(ctx, "g", "u", 3, 1, 2, n); err != nil || !bytes.Equal(c.Nonce, n) {
		t.Fatalf("next epoch %+v, %v", c, err)
	}
	if c, err = s.Codes(ctx, "g", "u"); err != nil || c.Epoch != 4 || !bytes.Equal(c.Nonce, n) {
		t.Fatalf("next epoch read back %+v, %v", c, err)
	}
}

// TestRateLimitsUseTheDatabaseClock: with the database's own clock (the
// store as it runs), two replicas whose clocks are an hour ahead and an
// hour behind share one limit as one, and the state they store is
// anchored at the database's time, not at either replica's.
func TestRateLimitsUseTheDatabaseClock(t *testing.T) {
	ctx := context.Background()
	url := pgtest.New(t)
	open := func(skew time.Duration) *Store {
		s, err := Open(ctx, url)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		s.now = func() time.Time { return time.Now().Add(skew) }
		return s
	}
	ahead, behind := open(time.Hour), open(-time.Hour)
	dbNow := func() int64 {
		var at time.Time
		if err := ahead.pool.QueryRow(ctx, "SELECT clock_timestamp()").Scan(&at); err != nil {
			t.Fatal(err)
		}
		return at.UnixNano()
	}
	l := []store.RateLimit{{Key: "k", Max: 2, Window: time.Hour}}
	before := dbNow()
	if _, err := ahead.TakeRate(ctx, l); err != nil {
		t.Fatal(err)
	}
	if _, err := behind.TakeRate(ctx, l); err != nil {
		t.Fatalf("the replica behind, after one take by the replica ahead: %v (it must not see a full window)", err)
	}
	after := dbNow()
	for _, s := range []*Store{ahead, behind} {
		if i, err := s.TakeRate(ctx, l); !errors.Is(err, store.ErrRateLimited) || i != 0 {
			t.Fatalf("a third take: %d, %v; want 0, ErrRateLimited (a skewed replica reset the limit)", i, err)
		}
	}
	var tat int64
	if err := ahead.pool.QueryRow(ctx, "SELECT tat FROM rate_limits WHERE key = 'k'").Scan(&tat); err != nil {
		t.Fatal(err)
	}
	// Two takes from idle: tat = the first take's time + 2 × 30 min.
	if lo, hi := before+int64(time.Hour), after+int64(time.Hour); tat < lo || tat > hi {
		t.Fatalf("stored tat %s, want it between %s and %s (the database's time + 1h)",
			time.Unix(0, tat).UTC(), time.Unix(0, lo).UTC(), time.Unix(0, hi).UTC())
	}
}

// TestMigrateRateWindows: a database at schema version 4 holding fixed
// windows migrates to version 5 with each window converted at its key's
// first use: a current window's count is debt (3 per hour, 2 taken this
// hour: one more now, the next 20 minutes later), a window that is over
// is none, and a converted row keeps only its tat.
func TestMigrateRateWindows(t *testing.T) {
	ctx := context.Background()
	url, pool := databaseAt(t, 4)
	now := time.Date(2026, 1, 2, 10, 30, 0, 0, time.UTC)
	hour := now.Truncate(time.Hour).UnixNano()
	if _, err := pool.Exec(ctx, "INSERT INTO rate_windows (key, window_start, count) VALUES ('current', $1, 2), ('over', $2, 3)",
		hour, hour-int64(24*time.Hour)); err != nil {
		t.Fatal(err)
	}
	s, err := Open(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if v, err := s.SchemaVersion(ctx); err != nil || v < 5 {
		t.Fatalf("schema version %d, %v", v, err)
	}
	set := testClock(t, s)
	set(now)
	take := func(key string, n int) {
		t.Helper()
		l := []store.RateLimit{{Key: key, Max: 3, Window: time.Hour}}
		for i := range n {
			if _, err := s.TakeRate(ctx, l); err != nil {
				t.Fatalf("%s: take %d of %d: %v", key, i+1, n, err)
			}
		}
		if _, err := s.TakeRate(ctx, l); !errors.Is(err, store.ErrRateLimited) {
			t.Fatalf("%s: take %d: %v, want ErrRateLimited", key, n+1, err)
		}
	}
	take("current", 1)
	take("over", 3)
	set(now.Add(20 * time.Minute))
	take("current", 1)
	var n int
	if err := s.pool.QueryRow(ctx, "SELECT count(*) FROM rate_limits WHERE tat IS NULL OR window_start IS NOT NULL OR count IS NOT NULL").Scan(&n); err != nil || n != 0 {
		t.Fatalf("%d rows not converted, %v", n, err)
	}
}

// TestEventLateCommit: PostgreSQL commits transactions in any order. A
// writer whose transaction inserted its event first (a lower id) but
// commits after a reader has moved its cursor past a later event is
// numbered after that event and read, not skipped: events are numbered in
// the order readers can see them, not in the order they were inserted.
func TestEventLateCommit(t *testing.T) {
	ctx := context.Background()
	s, err := Open(ctx, pgtest.New(t))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.CreateGroup(ctx, store.Group{ID: "g"}); err != nil {
		t.Fatal(err)
	}
	// A writer's transaction, held open after it wrote its event, as a
	// slow StartEpoch would be.
	slow, err := s.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer slow.Rollback(ctx) //nolint:errcheck
	if err := insertEvent(ctx, slow, store.Event{Time: time.Now(), Kind: store.EventEpochIssued, Group: "g", User: "slow"}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.StartEpoch(ctx, "g", "fast", 0, 1, 1, bytes.Repeat([]byte{1}, store.NonceSize)); err != nil {
		t.Fatal(err)
	}
	var slowID, fastID int64
	if err := s.pool.QueryRow(ctx, "SELECT id FROM events WHERE doc->>'user' = 'fast'").Scan(&fastID); err != nil {
		t.Fatal(err)
	}
	if err := slow.QueryRow(ctx, "SELECT id FROM events WHERE doc->>'user' = 'slow'").Scan(&slowID); err != nil || slowID >= fastID {
		t.Fatalf("ids: slow %d, fast %d, %v: the test needs the slow writer to insert first", slowID, fastID, err)
	}
	p, err := s.Events(ctx, 0, 10)
	if err != nil || len(p.Events) != 1 || p.Events[0].User != "fast" || p.Events[0].Seq != 1 || p.Last != 1 {
		t.Fatalf("before the slow commit: %+v, %v; want fast's event alone, numbered 1", p, err)
	}
	if err := slow.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	p, err = s.Events(ctx, 1, 10)
	if err != nil || len(p.Events) != 1 || p.Events[0].User != "slow" || p.Events[0].Seq != 2 || p.Last != 2 {
		t.Fatalf("after the slow commit, from cursor 1: %+v, %v; want slow's event, numbered 2", p, err)
	}
}

// TestEventWritersDoNotWait: a reader numbering events holds the counter's
// lock; a writer's transaction does not wait for it.
func TestEventWritersDoNotWait(t *testing.T) {
	ctx := context.Background()
	s, err := Open(ctx, pgtest.New(t))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.CreateGroup(ctx, store.Group{ID: "g"}); err != nil {
		t.Fatal(err)
	}
	reader, err := s.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer reader.Rollback(ctx) //nolint:errcheck
	if _, err := number(ctx, reader); err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	if _, err := s.StartEpoch(wctx, "g", "u", 0, 1, 1, bytes.Repeat([]byte{1}, store.NonceSize)); err != nil {
		t.Fatalf("StartEpoch while a reader numbers events: %v", err)
	}
	if _, _, err := s.ClaimCode(wctx, "g", "u"); err != nil {
		t.Fatalf("ClaimCode while a reader numbers events: %v", err)
	}
	if err := reader.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if p, err := s.Events(ctx, 0, 10); err != nil || len(p.Events) != 2 {
		t.Fatalf("events after the reader: %+v, %v", p, err)
	}
}

// TestMigrateEvents: a database at schema version 5 holding an epoch
// migrates to version 6, and the next reveal writes the first event.
func TestMigrateEvents(t *testing.T) {
	ctx := context.Background()
	url, pool := databaseAt(t, 5)
	if _, err := pool.Exec(ctx, `INSERT INTO groups (id, rev, doc) VALUES ('g', 1, '{"id":"g","rev":1}')`); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `INSERT INTO codes (group_id, user_id, epoch, unlock_version, nonce, revealed, updated)
		VALUES ('g', 'u', 2, 1, $1, '{true,false}', now())`, bytes.Repeat([]byte{1}, store.NonceSize)); err != nil {
		t.Fatal(err)
	}
	s, err := Open(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if v, err := s.SchemaVersion(ctx); err != nil || v < 6 {
		t.Fatalf("schema version %d, %v", v, err)
	}
	if p, err := s.Events(ctx, 0, 10); err != nil || len(p.Events) != 0 || p.Last != 0 {
		t.Fatalf("events right after the migration: %+v, %v", p, err)
	}
	if i, _, err := s.ClaimCode(ctx, "g", "u"); err != nil || i != 1 {
		t.Fatalf("ClaimCode: %d, %v", i, err)
	}
	p, err := s.Events(ctx, 0, 10)
	if err != nil || len(p.Events) != 1 || p.Events[0].Seq != 1 || p.Events[0].Kind != store.EventCodeRevealed || p.Events[0].Epoch != 2 || p.Events[0].Index != 1 {
		t.Fatalf("events after a reveal: %+v, %v", p, err)
	}
}

// databaseAt is a throw-away database migrated by hand to schema version
// n, the way an escrowd of that version left it, for the upgrade tests.
func databaseAt(t *testing.T, n int) (string, *pgxpool.Pool) {
	t.Helper()
	ctx := context.Background()
	url := pgtest.New(t)
	pool, err := pgxpool.New(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	ms, err := loadMigrations()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `CREATE TABLE schema_migrations (
		version integer PRIMARY KEY, name text NOT NULL, applied timestamptz NOT NULL DEFAULT now())`); err != nil {
		t.Fatal(err)
	}
	for _, m := range ms[:n] {
		if _, err := pool.Exec(ctx, m.sql); err != nil {
			t.Fatalf("%s: %v", m.name, err)
		}
		if _, err := pool.Exec(ctx, "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", m.version, m.name); err != nil {
			t.Fatal(err)
		}
	}
	return url, pool
}
