package postgres

import (
	"bytes"
	"context"
	"sync"
	"testing"

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
