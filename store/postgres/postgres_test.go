package postgres

import (
	"bytes"
	"context"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/escrowd/escrowd/internal/pgtest"
	"github.com/escrowd/escrowd/store"
	"github.com/escrowd/escrowd/store/storetest"
)

func TestConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) (store.Store, func() store.Store) {
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
	})
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
	url := pgtest.New(t)
	pool, err := pgxpool.New(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	ms, err := loadMigrations()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `CREATE TABLE schema_migrations (
		version integer PRIMARY KEY, name text NOT NULL, applied timestamptz NOT NULL DEFAULT now())`); err != nil {
		t.Fatal(err)
	}
	for _, m := range ms[:3] {
		if _, err := pool.Exec(ctx, m.sql); err != nil {
			t.Fatalf("%s: %v", m.name, err)
		}
		if _, err := pool.Exec(ctx, "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", m.version, m.name); err != nil {
			t.Fatal(err)
		}
	}
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

// TestMigrateEvents: a database at schema version 4 holding an epoch
// migrates to version 5, and the next reveal writes the first event.
func TestMigrateEvents(t *testing.T) {
	ctx := context.Background()
	url := pgtest.New(t)
	pool, err := pgxpool.New(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	ms, err := loadMigrations()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `CREATE TABLE schema_migrations (
		version integer PRIMARY KEY, name text NOT NULL, applied timestamptz NOT NULL DEFAULT now())`); err != nil {
		t.Fatal(err)
	}
	for _, m := range ms[:4] {
		if _, err := pool.Exec(ctx, m.sql); err != nil {
			t.Fatalf("%s: %v", m.name, err)
		}
		if _, err := pool.Exec(ctx, "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", m.version, m.name); err != nil {
			t.Fatal(err)
		}
	}
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
	if v, err := s.SchemaVersion(ctx); err != nil || v < 5 {
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
