package postgres

import (
	"context"
	"testing"

	"github.com/escrowd/escrowd/examples/syncbackend/store"
	"github.com/escrowd/escrowd/examples/syncbackend/store/storetest"
	"github.com/escrowd/escrowd/internal/pgtest"
)

// TestPostgres runs the suite on a real PostgreSQL server; one that does
// not answer fails the test (pgtest).
func TestPostgres(t *testing.T) {
	storetest.Run(t, func(t *testing.T) store.Store {
		s, err := Open(context.Background(), pgtest.New(t))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	})
}
