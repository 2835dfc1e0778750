package store_test

import (
	"path/filepath"
	"testing"

	"github.com/escrowd/escrowd/examples/syncbackend/store"
	"github.com/escrowd/escrowd/examples/syncbackend/store/storetest"
)

func TestBolt(t *testing.T) {
	storetest.Run(t, func(t *testing.T) store.Store {
		s, err := store.OpenBolt(filepath.Join(t.TempDir(), "sync.db"))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	})
}
