package bolt

import (
	"path/filepath"
	"testing"

	"github.com/escrowd/escrowd/store"
	"github.com/escrowd/escrowd/store/storetest"
)

func TestConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) (store.Store, func() store.Store) {
		path := filepath.Join(t.TempDir(), "escrowd.db")
		s, err := Open(path)
		if err != nil {
			t.Fatal(err)
		}
		cur := s
		t.Cleanup(func() { cur.Close() })
		return s, func() store.Store {
			if err := cur.Close(); err != nil {
				t.Fatal(err)
			}
			n, err := Open(path)
			if err != nil {
				t.Fatal(err)
			}
			cur = n
			return n
		}
	})
}

func TestLockedFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "escrowd.db")
	s, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := Open(path); err == nil {
		t.Fatal("a second Open of a locked store succeeded")
	}
}
