package bolt

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"math"
	"time"

	bbolt "go.etcd.io/bbolt"

	"github.com/escrowd/escrowd/store"
)

// The event outbox: bucket "events", keyed by the event's Seq as 8
// big-endian bytes, so keys sort in Seq order. Seq comes from the bucket's
// own sequence (NextSequence) inside the writing transaction: bbolt runs
// one write transaction at a time and a rolled-back one gives its number
// back, so the numbers are dense and every reader sees events committed
// in Seq order.

var bucketEvents = []byte("events")

func eventKey(seq uint64) []byte {
	var k [8]byte
	binary.BigEndian.PutUint64(k[:], seq)
	return k[:]
}

// putEvent numbers e and stores it in tx.
func putEvent(tx *bbolt.Tx, e store.Event) error {
	b := tx.Bucket(bucketEvents)
	seq, err := b.NextSequence()
	if err != nil {
		return err
	}
	e.Seq = seq
	v, err := json.Marshal(e)
	if err != nil {
		return err
	}
	return b.Put(eventKey(seq), v)
}

// Events implements store.Store.
func (s *Store) Events(ctx context.Context, after uint64, limit int) (store.EventPage, error) {
	var p store.EventPage
	if err := ctx.Err(); err != nil {
		return p, err
	}
	limit = min(max(limit, 1), store.MaxEventPage)
	err := s.view(func(tx *bbolt.Tx) error {
		b := tx.Bucket(bucketEvents)
		p.Last = b.Sequence()
		if after == math.MaxUint64 {
			return nil
		}
		c := b.Cursor()
		for k, v := c.Seek(eventKey(after + 1)); k != nil && len(p.Events) < limit; k, v = c.Next() {
			var e store.Event
			if err := json.Unmarshal(v, &e); err != nil {
				return err
			}
			p.Events = append(p.Events, e)
		}
		return nil
	})
	return p, err
}

// pruneChunk bounds the events one pruning transaction deletes.
const pruneChunk = 10000

// PruneEvents implements store.Store.
func (s *Store) PruneEvents(ctx context.Context, before time.Time, maxEvents int) (int, error) {
	total := 0
	for {
		if err := ctx.Err(); err != nil {
			return total, err
		}
		n := 0
		err := s.update(func(tx *bbolt.Tx) error {
			b := tx.Bucket(bucketEvents)
			var cut uint64 // events with Seq <= cut go, whatever their age
			if last := b.Sequence(); maxEvents > 0 && last > uint64(maxEvents) {
				cut = last - uint64(maxEvents)
			}
			var keys [][]byte
			c := b.Cursor()
			for k, v := c.First(); k != nil && len(keys) < pruneChunk; k, v = c.Next() {
				if binary.BigEndian.Uint64(k) > cut {
					var e store.Event
					if err := json.Unmarshal(v, &e); err != nil {
						return err
					}
					if !e.Time.Before(before) {
						break
					}
				}
				keys = append(keys, append([]byte(nil), k...))
			}
			for _, k := range keys {
				if err := b.Delete(k); err != nil {
					return err
				}
			}
			n = len(keys)
			return nil
		})
		total += n
		if err != nil || n < pruneChunk {
			return total, err
		}
	}
}
