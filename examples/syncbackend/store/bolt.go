package store

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	bbolt "go.etcd.io/bbolt"
)

var (
	bAccounts = []byte("accounts")
	bDevices  = []byte("devices")
	bNonces   = []byte("nonces")
	bGroups   = []byte("groups")
	bMembers  = []byte("members") // account 0x00 group → ""
	bRecords  = []byte("records") // group 0x00 id → Record
	bNotes    = []byte("notifications")
	bMeta     = []byte("meta")
	kCursor   = []byte("cursor")
)

// Bolt is the embedded back end: one bbolt file, every transaction synced
// before it returns. bbolt takes one writer at a time, which makes every
// compare-and-set trivially atomic; several backend replicas need the
// PostgreSQL back end instead.
type Bolt struct {
	db *bbolt.DB
}

var _ Store = (*Bolt)(nil)

// OpenBolt opens or creates the database file at path.
func OpenBolt(path string) (*Bolt, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("failed to create the store directory: %w", err)
	}
	db, err := bbolt.Open(path, 0o600, &bbolt.Options{Timeout: time.Second})
	if err != nil {
		return nil, fmt.Errorf("failed to open store %s: %w", path, err)
	}
	err = db.Update(func(tx *bbolt.Tx) error {
		for _, b := range [][]byte{bAccounts, bDevices, bNonces, bGroups, bMembers, bRecords, bNotes, bMeta} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("failed to initialise store %s: %w", path, err)
	}
	return &Bolt{db: db}, nil
}

func (s *Bolt) Close() error { return s.db.Close() }

func get[T any](tx *bbolt.Tx, bucket, key []byte) (T, error) {
	var v T
	b := tx.Bucket(bucket).Get(key)
	if b == nil {
		return v, ErrNotFound
	}
	if err := json.Unmarshal(b, &v); err != nil {
		return v, fmt.Errorf("stored %s %q: %w", bucket, key, err)
	}
	return v, nil
}

func put(tx *bbolt.Tx, bucket, key []byte, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return tx.Bucket(bucket).Put(key, b)
}

func pair(a, b string) []byte { return []byte(a + "\x00" + b) }

func (s *Bolt) CreateAccount(_ context.Context, a Account, d Device) error {
	return s.db.Update(func(tx *bbolt.Tx) error {
		if tx.Bucket(bAccounts).Get([]byte(a.ID)) != nil {
			return fmt.Errorf("account %q: %w", a.ID, ErrExists)
		}
		if tx.Bucket(bDevices).Get([]byte(d.ID)) != nil {
			return fmt.Errorf("device %q: %w", d.ID, ErrExists)
		}
		if err := put(tx, bAccounts, []byte(a.ID), a); err != nil {
			return err
		}
		return put(tx, bDevices, []byte(d.ID), d)
	})
}

func (s *Bolt) Account(_ context.Context, id string) (a Account, err error) {
	err = s.db.View(func(tx *bbolt.Tx) error {
		a, err = get[Account](tx, bAccounts, []byte(id))
		return err
	})
	return a, err
}

func (s *Bolt) AddDevice(_ context.Context, d Device) error {
	return s.db.Update(func(tx *bbolt.Tx) error {
		if tx.Bucket(bAccounts).Get([]byte(d.Account)) == nil {
			return fmt.Errorf("account %q: %w", d.Account, ErrNotFound)
		}
		if tx.Bucket(bDevices).Get([]byte(d.ID)) != nil {
			return fmt.Errorf("device %q: %w", d.ID, ErrExists)
		}
		return put(tx, bDevices, []byte(d.ID), d)
	})
}

func (s *Bolt) Device(_ context.Context, id string) (d Device, err error) {
	err = s.db.View(func(tx *bbolt.Tx) error {
		d, err = get[Device](tx, bDevices, []byte(id))
		return err
	})
	return d, err
}

// Devices scans every device: an index by account is the first thing to
// add for a large fleet.
func (s *Bolt) Devices(_ context.Context, account string) (ds []Device, err error) {
	err = s.db.View(func(tx *bbolt.Tx) error {
		return tx.Bucket(bDevices).ForEach(func(k, v []byte) error {
			var d Device
			if err := json.Unmarshal(v, &d); err != nil {
				return fmt.Errorf("stored device %q: %w", k, err)
			}
			if d.Account == account {
				ds = append(ds, d)
			}
			return nil
		})
	})
	return ds, err
}

func (s *Bolt) UseNonce(_ context.Context, device, nonce string, expires, now time.Time) error {
	return s.db.Update(func(tx *bbolt.Tx) error {
		b := tx.Bucket(bNonces)
		k := pair(device, nonce)
		if v := b.Get(k); v != nil && int64(binary.BigEndian.Uint64(v)) >= now.UnixNano() {
			return ErrReplay
		}
		// Forget expired nonces as we go: the bucket stays as small as
		// the replay window.
		c := b.Cursor()
		var old [][]byte
		for ck, v := c.First(); ck != nil; ck, v = c.Next() {
			if int64(binary.BigEndian.Uint64(v)) < now.UnixNano() {
				old = append(old, bytes.Clone(ck))
			}
		}
		for _, ok := range old {
			if err := b.Delete(ok); err != nil {
				return err
			}
		}
		return b.Put(k, binary.BigEndian.AppendUint64(nil, uint64(expires.UnixNano())))
	})
}

func (s *Bolt) CreateGroup(_ context.Context, g Group) error {
	return s.db.Update(func(tx *bbolt.Tx) error {
		if tx.Bucket(bGroups).Get([]byte(g.ID)) != nil {
			return fmt.Errorf("group %q: %w", g.ID, ErrExists)
		}
		g.Version = 1
		if err := put(tx, bGroups, []byte(g.ID), g); err != nil {
			return err
		}
		return index(tx, nil, &g)
	})
}

// index replaces the member index entries of old (nil for none) with g's.
func index(tx *bbolt.Tx, old, g *Group) error {
	b := tx.Bucket(bMembers)
	if old != nil {
		for _, m := range old.Members() {
			if err := b.Delete(pair(m, old.ID)); err != nil {
				return err
			}
		}
	}
	for _, m := range g.Members() {
		if err := b.Put(pair(m, g.ID), nil); err != nil {
			return err
		}
	}
	return nil
}

func (s *Bolt) Group(_ context.Context, id string) (g Group, err error) {
	err = s.db.View(func(tx *bbolt.Tx) error {
		g, err = get[Group](tx, bGroups, []byte(id))
		return err
	})
	return g, err
}

func (s *Bolt) UpdateGroup(_ context.Context, g Group) (uint64, error) {
	err := s.db.Update(func(tx *bbolt.Tx) error {
		old, err := get[Group](tx, bGroups, []byte(g.ID))
		if err != nil {
			return err
		}
		if old.Version != g.Version {
			return &ConflictError{Current: old.Version}
		}
		g.Version++
		if err := put(tx, bGroups, []byte(g.ID), g); err != nil {
			return err
		}
		return index(tx, &old, &g)
	})
	if err != nil {
		return 0, err
	}
	return g.Version, nil
}

func (s *Bolt) Groups(_ context.Context, after string, limit int) (ids []string, err error) {
	err = s.db.View(func(tx *bbolt.Tx) error {
		c := tx.Bucket(bGroups).Cursor()
		k, _ := c.Seek([]byte(after))
		if k != nil && string(k) == after {
			k, _ = c.Next()
		}
		for ; k != nil && len(ids) < limit; k, _ = c.Next() {
			ids = append(ids, string(k))
		}
		return nil
	})
	return ids, err
}

func (s *Bolt) GroupsOf(_ context.Context, account string) (ids []string, err error) {
	err = s.db.View(func(tx *bbolt.Tx) error {
		c := tx.Bucket(bMembers).Cursor()
		prefix := pair(account, "")
		for k, _ := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Next() {
			ids = append(ids, string(k[len(prefix):]))
		}
		return nil
	})
	return ids, err
}

func (s *Bolt) PutRecord(_ context.Context, r Record) (uint64, error) {
	err := s.db.Update(func(tx *bbolt.Tx) error {
		old, err := get[Record](tx, bRecords, pair(r.Group, r.ID))
		switch {
		case errors.Is(err, ErrNotFound):
		case err != nil:
			return err
		}
		if old.Version != r.Version {
			return &ConflictError{Current: old.Version}
		}
		r.Version++
		return put(tx, bRecords, pair(r.Group, r.ID), r)
	})
	if err != nil {
		return 0, err
	}
	return r.Version, nil
}

func (s *Bolt) Record(_ context.Context, group, id string) (r Record, err error) {
	err = s.db.View(func(tx *bbolt.Tx) error {
		r, err = get[Record](tx, bRecords, pair(group, id))
		return err
	})
	return r, err
}

func (s *Bolt) Records(_ context.Context, group, after string, limit int) (rs []Record, err error) {
	err = s.db.View(func(tx *bbolt.Tx) error {
		c := tx.Bucket(bRecords).Cursor()
		prefix := pair(group, "")
		k, v := c.Seek(pair(group, after))
		if after != "" && k != nil && bytes.Equal(k, pair(group, after)) {
			k, v = c.Next()
		}
		for ; k != nil && bytes.HasPrefix(k, prefix) && len(rs) < limit; k, v = c.Next() {
			var r Record
			if err := json.Unmarshal(v, &r); err != nil {
				return fmt.Errorf("stored record %q: %w", k, err)
			}
			rs = append(rs, r)
		}
		return nil
	})
	return rs, err
}

func noteKey(account string, seq uint64) []byte {
	return binary.BigEndian.AppendUint64(pair(account, ""), seq)
}

func (s *Bolt) AddNotifications(_ context.Context, ns []Notification, cursor uint64) error {
	return s.db.Update(func(tx *bbolt.Tx) error {
		b := tx.Bucket(bNotes)
		for _, n := range ns {
			if b.Get(noteKey(n.Account, n.Sequence)) != nil {
				continue
			}
			if err := put(tx, bNotes, noteKey(n.Account, n.Sequence), n); err != nil {
				return err
			}
		}
		return tx.Bucket(bMeta).Put(kCursor, binary.BigEndian.AppendUint64(nil, cursor))
	})
}

func (s *Bolt) Cursor(_ context.Context) (c uint64, err error) {
	err = s.db.View(func(tx *bbolt.Tx) error {
		if v := tx.Bucket(bMeta).Get(kCursor); v != nil {
			c = binary.BigEndian.Uint64(v)
		}
		return nil
	})
	return c, err
}

func (s *Bolt) Notifications(_ context.Context, account string, after uint64, limit int) (ns []Notification, err error) {
	err = s.db.View(func(tx *bbolt.Tx) error {
		c := tx.Bucket(bNotes).Cursor()
		prefix := pair(account, "")
		for k, v := c.Seek(noteKey(account, after+1)); k != nil && bytes.HasPrefix(k, prefix) && len(ns) < limit; k, v = c.Next() {
			var n Notification
			if err := json.Unmarshal(v, &n); err != nil {
				return fmt.Errorf("stored notification %q: %w", k, err)
			}
			ns = append(ns, n)
		}
		return nil
	})
	return ns, err
}
