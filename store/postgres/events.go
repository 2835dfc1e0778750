package postgres

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/escrowd/escrowd/store"
)

// The event outbox (migrations/0006_events.sql).
//
// PostgreSQL transactions commit in any order: had writers taken their
// seq from a sequence, a transaction holding seq 7 could commit after one
// holding seq 8, and a reader that had already moved its cursor to 8 would
// never see 7. So writers insert their events unnumbered (seq NULL, in the
// same transaction as the change they report), and readers number them:
// Events and PruneEvents first lock the one row of event_counter, then give
// every event they can see that has no seq the next numbers, in insertion
// order, and only then read or delete. An event that commits later is
// numbered by a later reader, after every number already handed out. The
// row lock makes numbering one at a time across replicas; writers never
// wait for it, and events are never held back by a timer.

// insertEvent adds e, unnumbered, to tx.
func insertEvent(ctx context.Context, tx pgx.Tx, e store.Event) error {
	e.Seq = 0
	doc, err := json.Marshal(e)
	if err != nil {
		return err
	}
	_, err = tx.Exec(ctx, "INSERT INTO events (created, doc) VALUES ($1, $2)", e.Time, doc)
	return err
}

// numberBatch bounds the events one call numbers; the rest wait for the
// next call, which numbers them after these.
const numberBatch = 10000

// number locks event_counter for the rest of tx, numbers the visible
// unnumbered events in insertion order, and returns the last number given.
// tx must be READ COMMITTED, so that the numbering statement, run once the
// lock is held, sees every event the previous holder numbered.
func number(ctx context.Context, tx pgx.Tx) (uint64, error) {
	var last int64
	if err := tx.QueryRow(ctx, "SELECT last FROM event_counter FOR UPDATE").Scan(&last); err != nil {
		return 0, fmt.Errorf("events: %w", err)
	}
	tag, err := tx.Exec(ctx, `WITH todo AS (
			SELECT id, row_number() OVER (ORDER BY id) AS n FROM events WHERE seq IS NULL ORDER BY id LIMIT $2)
		UPDATE events e SET seq = $1 + todo.n FROM todo WHERE e.id = todo.id`, last, numberBatch)
	if err != nil {
		return 0, fmt.Errorf("events: numbering: %w", err)
	}
	if n := tag.RowsAffected(); n > 0 {
		last += n
		if _, err := tx.Exec(ctx, "UPDATE event_counter SET last = $1", last); err != nil {
			return 0, fmt.Errorf("events: %w", err)
		}
	}
	return uint64(last), nil
}

// numbered runs fn in a READ COMMITTED transaction after number.
func (s *Store) numbered(ctx context.Context, fn func(tx pgx.Tx, last uint64) error) error {
	if err := s.check(ctx); err != nil {
		return err
	}
	return s.err(pgx.BeginTxFunc(ctx, s.pool, pgx.TxOptions{IsoLevel: pgx.ReadCommitted}, func(tx pgx.Tx) error {
		last, err := number(ctx, tx)
		if err != nil {
			return err
		}
		return fn(tx, last)
	}))
}

// Events implements store.Store.
func (s *Store) Events(ctx context.Context, after uint64, limit int) (store.EventPage, error) {
	var p store.EventPage
	limit = min(max(limit, 1), store.MaxEventPage)
	err := s.numbered(ctx, func(tx pgx.Tx, last uint64) error {
		p.Last = last
		if after >= last {
			return nil
		}
		rows, err := tx.Query(ctx, "SELECT seq, doc FROM events WHERE seq > $1 ORDER BY seq LIMIT $2", int64(after), limit)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var (
				seq int64
				doc []byte
				e   store.Event
			)
			if err := rows.Scan(&seq, &doc); err != nil {
				return err
			}
			if err := json.Unmarshal(doc, &e); err != nil {
				return fmt.Errorf("event %d: %w", seq, err)
			}
			e.Seq = uint64(seq)
			p.Events = append(p.Events, e)
		}
		return rows.Err()
	})
	if err != nil {
		return store.EventPage{}, err
	}
	return p, nil
}

// PruneEvents implements store.Store: the numbered events before the
// first one written at or after before, and those beyond the newest
// maxEvents, go.
func (s *Store) PruneEvents(ctx context.Context, before time.Time, maxEvents int) (int, error) {
	var n int64
	err := s.numbered(ctx, func(tx pgx.Tx, last uint64) error {
		var cut int64
		if maxEvents > 0 && last > uint64(maxEvents) {
			cut = int64(last - uint64(maxEvents))
		}
		var young *int64
		if err := tx.QueryRow(ctx, "SELECT min(seq) FROM events WHERE seq IS NOT NULL AND created >= $1", before).Scan(&young); err != nil {
			return err
		}
		old := int64(last)
		if young != nil {
			old = *young - 1
		}
		cut = max(cut, old)
		tag, err := tx.Exec(ctx, "DELETE FROM events WHERE seq <= $1", cut)
		n = tag.RowsAffected()
		return err
	})
	return int(n), err
}
