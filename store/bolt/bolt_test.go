package bolt

import (
	"context"
	"errors"
	"path/filepath"
	"sync"
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

// TestImport: imported groups and code states read back as stored ones;
// a taken id fails the whole import.
func TestImport(t *testing.T) {
	ctx := context.Background()
	s, err := Open(filepath.Join(t.TempDir(), "escrowd.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	gs := []store.Group{{ID: "g1"}, {ID: "g2"}}
	cs := []store.Codes{{Group: "g2", User: "u", Epoch: 1, UnlockVersion: 1, Revealed: make([]bool, 3)}}
	if err := s.Import(ctx, gs, cs); err != nil {
		t.Fatal(err)
	}
	if n, err := s.CountGroups(ctx); err != nil || n != 2 {
		t.Fatalf("CountGroups %d, %v", n, err)
	}
	if g, err := s.Group(ctx, "g2"); err != nil || g.Rev != 1 {
		t.Fatalf("Group g2: %+v, %v", g, err)
	}
	if i, _, err := s.ClaimCode(ctx, "g2", "u"); err != nil || i != 0 {
		t.Fatalf("ClaimCode: %d, %v", i, err)
	}
	if err := s.Import(ctx, []store.Group{{ID: "g3"}, {ID: "g1"}}, nil); !errors.Is(err, store.ErrExists) {
		t.Fatalf("import of a taken id: %v, want ErrExists", err)
	}
	if _, err := s.Group(ctx, "g3"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("g3 after a failed import: %v", err)
	}
	if err := s.Import(ctx, nil, []store.Codes{{Group: "nope", User: "u"}}); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("codes of an unknown group: %v", err)
	}
}

// TestSharedCommit: concurrent claims share transactions, a failing call
// (an exhausted epoch) leaves the others' claims intact, no index is
// handed out twice, and calls after Close fail with ErrClosed.
func TestSharedCommit(t *testing.T) {
	ctx := context.Background()
	s, err := Open(filepath.Join(t.TempDir(), "escrowd.db"))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Import(ctx, []store.Group{{ID: "g"}}, []store.Codes{{Group: "g", User: "u", Epoch: 1, UnlockVersion: 1, Revealed: make([]bool, 20)}}); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	seen := map[int]bool{}
	exhausted := 0
	var wg sync.WaitGroup
	for range 50 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			i, _, err := s.ClaimCode(ctx, "g", "u")
			mu.Lock()
			defer mu.Unlock()
			switch {
			case errors.Is(err, store.ErrExhausted):
				exhausted++
			case err != nil:
				t.Error(err)
			case seen[i]:
				t.Errorf("index %d claimed twice", i)
			default:
				seen[i] = true
			}
		}()
	}
	wg.Wait()
	if len(seen) != 20 || exhausted != 30 {
		t.Fatalf("%d claimed, %d exhausted; want 20 and 30", len(seen), exhausted)
	}
	if c, err := s.Codes(ctx, "g", "u"); err != nil || c.Remaining() != 0 {
		t.Fatalf("after the claims: %+v, %v", c, err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.ClaimCode(ctx, "g", "u"); !errors.Is(err, store.ErrClosed) {
		t.Fatalf("ClaimCode after Close: %v, want ErrClosed", err)
	}
}
