package bolt

import (
	"context"
	"encoding/json"
	"fmt"

	bbolt "go.etcd.io/bbolt"

	"github.com/escrowd/escrowd/store"
)

// Import stores new groups and users' code states in one transaction (one
// fsync), so that a store of a million groups can be made in seconds, for
// benchmarks and migrations; CreateGroup's one transaction per group takes
// an fsync each. A group id already taken fails the whole import with
// ErrExists; code states replace what is stored. Groups get Rev 1.
// Ascending ids append to bbolt's pages and keep the file compact.
func (s *Store) Import(ctx context.Context, groups []store.Group, codes []store.Codes) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return s.update(func(tx *bbolt.Tx) error {
		b := tx.Bucket(bucketGroups)
		b.FillPercent = 0.9
		for _, g := range groups {
			if b.Get([]byte(g.ID)) != nil {
				return fmt.Errorf("group %s: %w", g.ID, store.ErrExists)
			}
			g.Rev = 1
			v, err := json.Marshal(g)
			if err != nil {
				return err
			}
			if err := b.Put([]byte(g.ID), v); err != nil {
				return err
			}
		}
		for _, c := range codes {
			if b.Get([]byte(c.Group)) == nil {
				return fmt.Errorf("codes of group %s: %w", c.Group, store.ErrNotFound)
			}
			if err := putCodes(tx, c); err != nil {
				return err
			}
		}
		return nil
	})
}
