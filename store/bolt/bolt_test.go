package bolt

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	bbolt "go.etcd.io/bbolt"

	"github.com/escrowd/escrowd/store"
	"github.com/escrowd/escrowd/store/storetest"
)

func TestConformance(t *testing.T) {
	storetest.Run(t, storetest.Backend{
		Open: func(t *testing.T) (store.Store, func() store.Store) {
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
		},
		Clock: func(t *testing.T, s store.Store) func(time.Time) { return testClock(s.(*Store)) },
	})
}

// testClock makes s read its clock from the returned setter.
func testClock(s *Store) func(time.Time) {
	var now atomic.Int64
	s.now = func() time.Time { return time.Unix(0, now.Load()).UTC() }
	return func(t time.Time) { now.Store(t.UnixNano()) }
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

// TestRateLegacyWindow: a rate limit stored as a fixed window, as escrowd
// wrote them before GCRA, is converted at its key's first use: a current
// window's count is debt (3 per hour, 2 taken this hour: one more now,
// the next 20 minutes later), a window that is over is none.
func TestRateLegacyWindow(t *testing.T) {
	ctx := context.Background()
	s, err := Open(filepath.Join(t.TempDir(), "escrowd.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	now := time.Date(2026, 1, 2, 10, 30, 0, 0, time.UTC)
	hour := now.Truncate(time.Hour).UnixNano()
	err = s.db.Update(func(tx *bbolt.Tx) error {
		b := tx.Bucket(bucketRates)
		if err := b.Put([]byte("current"), fmt.Appendf(nil, `{"start":%d,"count":2}`, hour)); err != nil {
			return err
		}
		return b.Put([]byte("over"), fmt.Appendf(nil, `{"start":%d,"count":3}`, hour-int64(24*time.Hour)))
	})
	if err != nil {
		t.Fatal(err)
	}
	set := testClock(s)
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
}
