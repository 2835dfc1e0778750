package postgres

import (
	"context"
	"sync"
	"testing"

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
