// Package bolt is escrowd's embedded store, on bbolt: one file, no server,
// and every transaction fsynced before it returns, so `make run` needs
// nothing else and a crash loses no committed reveal. bbolt allows one
// writer at a time, which is what ClaimCode needs to never hand out a code
// twice; several replicas need the PostgreSQL store instead.
package bolt

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"time"

	bbolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"

	"github.com/escrowd/escrowd/store"
)

var (
	bucketGroups = []byte("groups")
	bucketCodes  = []byte("codes")
	bucketMeta   = []byte("meta")
	bucketRates  = []byte("rates")
	bucketApprov = []byte("approvals")
	bucketJobs   = []byte("jobs")
	keySchema    = []byte("schema")
)

const schemaVersion = "1"

// Store is the bbolt back end.
type Store struct {
	db  *bbolt.DB
	now func() time.Time
	c   *committer
}

var _ store.Store = (*Store)(nil)

// Open opens or creates the database file at path. A second process that
// opens the same file waits up to a second, then fails: the file is locked.
func Open(path string) (*Store, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("failed to create the store directory: %w", err)
	}
	db, err := bbolt.Open(path, 0o600, &bbolt.Options{Timeout: time.Second})
	if err != nil {
		return nil, fmt.Errorf("failed to open store %s: %w", path, err)
	}
	err = db.Update(func(tx *bbolt.Tx) error {
		for _, b := range [][]byte{bucketGroups, bucketCodes, bucketMeta, bucketRates, bucketApprov, bucketJobs, bucketEvents} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		meta := tx.Bucket(bucketMeta)
		switch v := meta.Get(keySchema); {
		case v == nil:
			return meta.Put(keySchema, []byte(schemaVersion))
		case string(v) != schemaVersion:
			return fmt.Errorf("store schema version %q, this build reads %q", v, schemaVersion)
		}
		return nil
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("failed to initialise store %s: %w", path, err)
	}
	s := &Store{db: db, now: time.Now}
	s.startCommitter()
	return s, nil
}

// Close closes the database file.
func (s *Store) Close() error {
	s.stopCommitter()
	return s.db.Close()
}

func codesKey(group, user string) []byte {
	// Ids are printable ASCII (bundle.ValidateID), so NUL separates them.
	return []byte(group + "\x00" + user)
}

// CreateGroup implements store.Store.
func (s *Store) CreateGroup(ctx context.Context, g store.Group) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	g.Rev = 1
	val, err := json.Marshal(g)
	if err != nil {
		return err
	}
	// Shared: provisioning at a few hundred groups per second would
	// otherwise wait for one fsync per group.
	return s.shared(func(tx *bbolt.Tx) error {
		b := tx.Bucket(bucketGroups)
		if b.Get([]byte(g.ID)) != nil {
			return fmt.Errorf("group %s: %w", g.ID, store.ErrExists)
		}
		return b.Put([]byte(g.ID), val)
	})
}

// Group implements store.Store.
func (s *Store) Group(ctx context.Context, id string) (store.Group, error) {
	var g store.Group
	if err := ctx.Err(); err != nil {
		return g, err
	}
	err := s.view(func(tx *bbolt.Tx) error {
		var err error
		g, err = getGroup(tx, id)
		return err
	})
	return g, err
}

// Codes implements store.Store.
func (s *Store) Codes(ctx context.Context, group, user string) (store.Codes, error) {
	var c store.Codes
	if err := ctx.Err(); err != nil {
		return c, err
	}
	err := s.view(func(tx *bbolt.Tx) error {
		var err error
		c, err = getCodes(tx, group, user)
		return err
	})
	return c, err
}

func getCodes(tx *bbolt.Tx, group, user string) (store.Codes, error) {
	var c store.Codes
	v := tx.Bucket(bucketCodes).Get(codesKey(group, user))
	if v == nil {
		return c, fmt.Errorf("group %s user %s: %w", group, user, store.ErrNoEpoch)
	}
	err := json.Unmarshal(v, &c)
	return c, err
}

func putCodes(tx *bbolt.Tx, c store.Codes) error {
	v, err := json.Marshal(c)
	if err != nil {
		return err
	}
	return tx.Bucket(bucketCodes).Put(codesKey(c.Group, c.User), v)
}

// StartEpoch implements store.Store.
func (s *Store) StartEpoch(ctx context.Context, group, user string, prevEpoch, unlockVersion uint32, n int, nonce []byte) (store.Codes, error) {
	var c store.Codes
	if err := ctx.Err(); err != nil {
		return c, err
	}
	if err := store.CheckNonce(nonce); err != nil {
		return c, err
	}
	err := s.update(func(tx *bbolt.Tx) error {
		if tx.Bucket(bucketGroups).Get([]byte(group)) == nil {
			return fmt.Errorf("group %s: %w", group, store.ErrNotFound)
		}
		var err error
		c, err = s.startEpoch(ctx, tx, group, store.EpochStart{User: user, PrevEpoch: prevEpoch, UnlockVersion: unlockVersion, Codes: n, Nonce: nonce}, 0)
		return err
	})
	return c, err
}

// startEpoch starts e's epoch of group in tx, with its event; gdkVersion is
// the GDK version of the rotation that issues it, if any.
func (s *Store) startEpoch(ctx context.Context, tx *bbolt.Tx, group string, e store.EpochStart, gdkVersion uint32) (store.Codes, error) {
	cur, err := getCodes(tx, group, e.User)
	switch {
	case errors.Is(err, store.ErrNoEpoch):
	case err != nil:
		return store.Codes{}, err
	}
	if cur.Epoch != e.PrevEpoch {
		return store.Codes{}, fmt.Errorf("user %s: epoch is %d, not %d: %w", e.User, cur.Epoch, e.PrevEpoch, store.ErrConflict)
	}
	c := store.Codes{
		Group: group, User: e.User, Epoch: e.PrevEpoch + 1, UnlockVersion: e.UnlockVersion,
		Nonce: bytes.Clone(e.Nonce), Revealed: make([]bool, e.Codes), Updated: s.now().UTC(),
	}
	if err := putCodes(tx, c); err != nil {
		return store.Codes{}, err
	}
	return c, putEvent(tx, store.EpochEvent(ctx, &c, gdkVersion, c.Updated))
}

// RecordGDKRotation implements store.Store.
func (s *Store) RecordGDKRotation(ctx context.Context, r store.GDKRotation) ([]store.Codes, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	for _, e := range r.Epochs {
		if err := store.CheckNonce(e.Nonce); err != nil {
			return nil, err
		}
	}
	var out []store.Codes
	err := s.update(func(tx *bbolt.Tx) error {
		out = nil
		if tx.Bucket(bucketGroups).Get([]byte(r.Group)) == nil {
			return fmt.Errorf("group %s: %w", r.Group, store.ErrNotFound)
		}
		if err := putEvent(tx, store.GDKEvent(ctx, &r, s.now())); err != nil {
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

// ClaimCode implements store.Store.
func (s *Store) ClaimCode(ctx context.Context, group, user string) (int, store.Codes, error) {
	var c store.Codes
	index := -1
	if err := ctx.Err(); err != nil {
		return index, c, err
	}
	err := s.shared(func(tx *bbolt.Tx) error {
		var err error
		index = -1
		c, err = getCodes(tx, group, user)
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
		c.Updated = s.now().UTC()
		if err := putCodes(tx, c); err != nil {
			return err
		}
		return putEvent(tx, store.RevealEvent(ctx, &c, index, c.Updated))
	})
	if err != nil {
		return -1, store.Codes{}, err
	}
	return index, c, nil
}

// rateState is a key's value in the rates bucket: its GCRA theoretical
// arrival time. A value written before GCRA holds a fixed window (start,
// count) and no tat; it is converted at its key's first use.
type rateState struct {
	TAT   int64 `json:"tat,omitempty"`
	Start int64 `json:"start,omitempty"`
	Count int   `json:"count,omitempty"`
}

// TakeRate implements store.Store, at the time of the store's clock: one
// process holds the file, so its clock is the only one.
func (s *Store) TakeRate(ctx context.Context, limits []store.RateLimit) (int, error) {
	if err := ctx.Err(); err != nil {
		return -1, err
	}
	if err := store.CheckRateLimits(limits); err != nil {
		return -1, err
	}
	full := -1
	err := s.shared(func(tx *bbolt.Tx) error {
		// Read the clock inside the transaction: a shared transaction
		// runs its calls one after another, and may run this one again.
		now := s.now().UnixNano()
		b := tx.Bucket(bucketRates)
		tats := make(map[string]int64, len(limits))
		for _, l := range limits {
			if _, seen := tats[l.Key]; seen {
				continue
			}
			tats[l.Key] = 0
			v := b.Get([]byte(l.Key))
			if v == nil {
				continue
			}
			var st rateState
			if err := json.Unmarshal(v, &st); err != nil {
				return fmt.Errorf("rate limit %q: %w", l.Key, err)
			}
			tats[l.Key] = st.TAT
			if st.TAT == 0 {
				tats[l.Key] = l.LegacyTAT(st.Start, st.Count, now)
			}
		}
		var write map[string]int64
		write, full = store.TakeAll(limits, tats, now)
		if full >= 0 && len(write) == 0 {
			// Refused, and nothing to store: roll back, no fsync.
			return fmt.Errorf("%s: %w", limits[full].Key, store.ErrRateLimited)
		}
		for k, tat := range write {
			v, err := json.Marshal(rateState{TAT: tat})
			if err != nil {
				return err
			}
			if err := b.Put([]byte(k), v); err != nil {
				return err
			}
		}
		return nil
	})
	if err == nil && full >= 0 {
		// Refused, with a clamped tat stored.
		err = fmt.Errorf("%s: %w", limits[full].Key, store.ErrRateLimited)
	}
	if err != nil && !errors.Is(err, store.ErrRateLimited) {
		full = -1
	}
	return full, err
}

// CreateApproval implements store.Store.
func (s *Store) CreateApproval(ctx context.Context, a store.Approval) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	v, err := json.Marshal(a)
	if err != nil {
		return err
	}
	return s.update(func(tx *bbolt.Tx) error {
		b := tx.Bucket(bucketApprov)
		if b.Get([]byte(a.ID)) != nil {
			return fmt.Errorf("approval %s: %w", a.ID, store.ErrExists)
		}
		return b.Put([]byte(a.ID), v)
	})
}

func getApproval(tx *bbolt.Tx, id string) (store.Approval, error) {
	var a store.Approval
	v := tx.Bucket(bucketApprov).Get([]byte(id))
	if v == nil {
		return a, fmt.Errorf("approval %s: %w", id, store.ErrNotFound)
	}
	err := json.Unmarshal(v, &a)
	return a, err
}

// Approval implements store.Store.
func (s *Store) Approval(ctx context.Context, id string) (store.Approval, error) {
	var a store.Approval
	if err := ctx.Err(); err != nil {
		return a, err
	}
	err := s.view(func(tx *bbolt.Tx) error {
		var err error
		a, err = getApproval(tx, id)
		return err
	})
	return a, err
}

// Approve implements store.Store.
func (s *Store) Approve(ctx context.Context, id, approver string, now time.Time) (store.Approval, error) {
	var a store.Approval
	if err := ctx.Err(); err != nil {
		return a, err
	}
	err := s.update(func(tx *bbolt.Tx) error {
		var err error
		if a, err = getApproval(tx, id); err != nil {
			return err
		}
		if err := store.CheckApproval(&a, approver, now); err != nil {
			return err
		}
		a.Approver, a.Approved = approver, now.UTC()
		v, err := json.Marshal(a)
		if err != nil {
			return err
		}
		if err := tx.Bucket(bucketApprov).Put([]byte(id), v); err != nil {
			return err
		}
		if e, ok := store.ApprovalEvent(ctx, &a, now); ok {
			return putEvent(tx, e)
		}
		return nil
	})
	return a, err
}

// PendingApprovals implements store.Store.
func (s *Store) PendingApprovals(ctx context.Context, now time.Time) ([]store.Approval, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	var out []store.Approval
	err := s.view(func(tx *bbolt.Tx) error {
		return tx.Bucket(bucketApprov).ForEach(func(_, v []byte) error {
			var a store.Approval
			if err := json.Unmarshal(v, &a); err != nil {
				return err
			}
			if a.Pending(now) {
				out = append(out, a)
			}
			return nil
		})
	})
	slices.SortFunc(out, func(a, b store.Approval) int { return a.Created.Compare(b.Created) })
	return out, err
}

// ConsumeCode implements store.Store.
func (s *Store) ConsumeCode(ctx context.Context, group, user string, epoch uint32, index int) (store.Codes, error) {
	var c store.Codes
	if err := ctx.Err(); err != nil {
		return c, err
	}
	err := s.update(func(tx *bbolt.Tx) error {
		var err error
		c, err = getCodes(tx, group, user)
		if err != nil {
			return err
		}
		if changed, err := c.Consume(epoch, index); err != nil || !changed {
			return err
		}
		c.Updated = s.now().UTC()
		return putCodes(tx, c)
	})
	if err != nil {
		return store.Codes{}, err
	}
	return c, nil
}

func (s *Store) update(fn func(*bbolt.Tx) error) error {
	err := s.db.Update(fn)
	if errors.Is(err, bolterrors.ErrDatabaseNotOpen) {
		return store.ErrClosed
	}
	return err
}

func (s *Store) view(fn func(*bbolt.Tx) error) error {
	err := s.db.View(fn)
	if errors.Is(err, bolterrors.ErrDatabaseNotOpen) {
		return store.ErrClosed
	}
	return err
}

func getGroup(tx *bbolt.Tx, id string) (store.Group, error) {
	var g store.Group
	v := tx.Bucket(bucketGroups).Get([]byte(id))
	if v == nil {
		return g, fmt.Errorf("group %s: %w", id, store.ErrNotFound)
	}
	err := json.Unmarshal(v, &g)
	return g, err
}

func putGroup(tx *bbolt.Tx, g store.Group) error {
	v, err := json.Marshal(g)
	if err != nil {
		return err
	}
	return tx.Bucket(bucketGroups).Put([]byte(g.ID), v)
}

// UpdateGroup implements store.Store.
func (s *Store) UpdateGroup(ctx context.Context, id string, fn func(*store.Group) error) (store.Group, error) {
	var g store.Group
	if err := ctx.Err(); err != nil {
		return g, err
	}
	err := s.update(func(tx *bbolt.Tx) error {
		var err error
		if g, err = getGroup(tx, id); err != nil {
			return err
		}
		rev := g.Rev
		escrow, unlock := store.LatestVersions(&g)
		if err := fn(&g); err != nil {
			return err
		}
		g.ID, g.Rev = id, rev+1
		if err := putGroup(tx, g); err != nil {
			return err
		}
		if e, ok := store.KeyEvent(ctx, &g, escrow, unlock, s.now()); ok {
			return putEvent(tx, e)
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
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	var out []store.Group
	err := s.view(func(tx *bbolt.Tx) error {
		c := tx.Bucket(bucketGroups).Cursor()
		k, v := c.Seek([]byte(after))
		if k != nil && string(k) == after {
			k, v = c.Next()
		}
		for ; k != nil && len(out) < limit; k, v = c.Next() {
			var g store.Group
			if err := json.Unmarshal(v, &g); err != nil {
				return err
			}
			out = append(out, g)
		}
		return nil
	})
	return out, err
}

// CountGroups implements store.Store.
func (s *Store) CountGroups(ctx context.Context) (int64, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	var n int64
	err := s.view(func(tx *bbolt.Tx) error {
		n = int64(tx.Bucket(bucketGroups).Stats().KeyN)
		return nil
	})
	return n, err
}

func getJob(tx *bbolt.Tx, id string) (store.Job, error) {
	var j store.Job
	v := tx.Bucket(bucketJobs).Get([]byte(id))
	if v == nil {
		return j, fmt.Errorf("job %s: %w", id, store.ErrNotFound)
	}
	err := json.Unmarshal(v, &j)
	return j, err
}

func putJob(tx *bbolt.Tx, j store.Job) error {
	v, err := json.Marshal(j)
	if err != nil {
		return err
	}
	return tx.Bucket(bucketJobs).Put([]byte(j.ID), v)
}

// CreateJob implements store.Store.
func (s *Store) CreateJob(ctx context.Context, j store.Job) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return s.update(func(tx *bbolt.Tx) error {
		if tx.Bucket(bucketJobs).Get([]byte(j.ID)) != nil {
			return fmt.Errorf("job %s: %w", j.ID, store.ErrExists)
		}
		return putJob(tx, j)
	})
}

// Job implements store.Store.
func (s *Store) Job(ctx context.Context, id string) (store.Job, error) {
	var j store.Job
	if err := ctx.Err(); err != nil {
		return j, err
	}
	err := s.view(func(tx *bbolt.Tx) error {
		var err error
		j, err = getJob(tx, id)
		return err
	})
	return j, err
}

// Jobs implements store.Store.
func (s *Store) Jobs(ctx context.Context) ([]store.Job, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	var out []store.Job
	err := s.view(func(tx *bbolt.Tx) error {
		return tx.Bucket(bucketJobs).ForEach(func(_, v []byte) error {
			var j store.Job
			if err := json.Unmarshal(v, &j); err != nil {
				return err
			}
			out = append(out, j)
			return nil
		})
	})
	sort.SliceStable(out, func(a, b int) bool { return out[a].Created.Before(out[b].Created) })
	return out, err
}

// UpdateJob implements store.Store.
func (s *Store) UpdateJob(ctx context.Context, id string, fn func(*store.Job) error) (store.Job, error) {
	var j store.Job
	if err := ctx.Err(); err != nil {
		return j, err
	}
	err := s.update(func(tx *bbolt.Tx) error {
		var err error
		if j, err = getJob(tx, id); err != nil {
			return err
		}
		if err := fn(&j); err != nil {
			return err
		}
		j.ID = id
		return putJob(tx, j)
	})
	if err != nil {
		return store.Job{}, err
	}
	return j, nil
}

// CommitBatch implements store.Store.
func (s *Store) CommitBatch(ctx context.Context, b store.Batch) (store.Job, error) {
	var j store.Job
	if err := ctx.Err(); err != nil {
		return j, err
	}
	err := s.update(func(tx *bbolt.Tx) error {
		var err error
		if j, err = getJob(tx, b.JobID); err != nil {
			return err
		}
		if j.Owner != b.Owner {
			return fmt.Errorf("job %s is held by %q: %w", b.JobID, j.Owner, store.ErrLeaseHeld)
		}
		for _, g := range b.Groups {
			cur, err := getGroup(tx, g.ID)
			if err != nil {
				return err
			}
			if cur.Rev != g.Rev {
				return fmt.Errorf("group %s is at revision %d, not %d: %w", g.ID, cur.Rev, g.Rev, store.ErrConflict)
			}
			g.Rev++
			if err := putGroup(tx, g); err != nil {
				return err
			}
			escrow, unlock := store.LatestVersions(&cur)
			if e, ok := store.KeyEvent(ctx, &g, escrow, unlock, s.now()); ok {
				if err := putEvent(tx, e); err != nil {
					return err
				}
			}
		}
		j.Cursor, j.Done, j.Changed, j.Updated = b.Cursor, b.Done, b.Changed, s.now().UTC()
		return putJob(tx, j)
	})
	if err != nil {
		return store.Job{}, err
	}
	return j, nil
}
