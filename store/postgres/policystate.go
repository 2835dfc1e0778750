package postgres

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/escrowd/escrowd/store"
)

// TakeRate implements store.Store, at the database's time: every
// replica reads the one clock, so a replica whose own clock is off can
// neither reset nor run ahead a limit that others count. In one
// transaction the rows of all the request's limits are created if absent
// and locked in key order (so two requests never wait on each other in a
// cycle), the database's clock is read once the locks are held, and every
// limit is checked and counted together or not at all.
func (s *Store) TakeRate(ctx context.Context, limits []store.RateLimit) (int, error) {
	if err := store.CheckRateLimits(limits); err != nil {
		return -1, err
	}
	keys := make([]string, 0, len(limits))
	for _, l := range limits {
		if !slices.Contains(keys, l.Key) {
			keys = append(keys, l.Key)
		}
	}
	slices.Sort(keys)
	full := -1
	err := s.tx(ctx, func(tx pgx.Tx) error {
		full = -1
		if _, err := tx.Exec(ctx, `INSERT INTO rate_limits (key) SELECT k FROM unnest($1::text[]) AS k ORDER BY k COLLATE "C" ON CONFLICT (key) DO NOTHING`, keys); err != nil {
			return err
		}
		type state struct {
			tat, start *int64
			count      *int32
		}
		rows, err := tx.Query(ctx, "SELECT key, tat, window_start, count FROM rate_limits WHERE key = ANY($1) ORDER BY key FOR UPDATE", keys)
		if err != nil {
			return err
		}
		stored := map[string]state{}
		for rows.Next() {
			var (
				k  string
				st state
			)
			if err := rows.Scan(&k, &st.tat, &st.start, &st.count); err != nil {
				rows.Close()
				return err
			}
			stored[k] = st
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		var t time.Time
		if err := tx.QueryRow(ctx, s.clockQuery).Scan(&t); err != nil {
			return fmt.Errorf("reading the database's clock: %w", err)
		}
		now := t.UnixNano()
		tats := make(map[string]int64, len(keys))
		for _, l := range limits {
			if _, seen := tats[l.Key]; seen {
				continue
			}
			switch st := stored[l.Key]; {
			case st.tat != nil:
				tats[l.Key] = *st.tat
			case st.start != nil && st.count != nil:
				tats[l.Key] = l.LegacyTAT(*st.start, int(*st.count), now)
			default:
				tats[l.Key] = 0
			}
		}
		var write map[string]int64
		write, full = store.TakeAll(limits, tats, now)
		if full >= 0 && len(write) == 0 {
			// Refused, and nothing to store: roll back.
			return fmt.Errorf("%s: %w", limits[full].Key, store.ErrRateLimited)
		}
		ks := make([]string, 0, len(write))
		vs := make([]int64, 0, len(write))
		for _, k := range keys {
			if v, ok := write[k]; ok {
				ks, vs = append(ks, k), append(vs, v)
			}
		}
		_, err = tx.Exec(ctx, `UPDATE rate_limits AS r SET tat = v.tat, window_start = NULL, count = NULL
			FROM unnest($1::text[], $2::bigint[]) AS v(key, tat) WHERE r.key = v.key`, ks, vs)
		return err
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
	if err := s.check(ctx); err != nil {
		return err
	}
	doc, err := json.Marshal(a)
	if err != nil {
		return err
	}
	tag, err := s.pool.Exec(ctx, "INSERT INTO approvals (id, created, doc) VALUES ($1, $2, $3) ON CONFLICT (id) DO NOTHING", a.ID, a.Created, doc)
	if err != nil {
		return s.err(err)
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("approval %s: %w", a.ID, store.ErrExists)
	}
	return nil
}

func getApproval(ctx context.Context, q querier, id, suffix string) (store.Approval, error) {
	var (
		a   store.Approval
		doc []byte
	)
	err := q.QueryRow(ctx, "SELECT doc FROM approvals WHERE id = $1"+suffix, id).Scan(&doc)
	if errors.Is(err, pgx.ErrNoRows) {
		return a, fmt.Errorf("approval %s: %w", id, store.ErrNotFound)
	}
	if err != nil {
		return a, err
	}
	err = json.Unmarshal(doc, &a)
	return a, err
}

// Approval implements store.Store.
func (s *Store) Approval(ctx context.Context, id string) (store.Approval, error) {
	if err := s.check(ctx); err != nil {
		return store.Approval{}, err
	}
	a, err := getApproval(ctx, s.pool, id, "")
	return a, s.err(err)
}

// Approve implements store.Store.
func (s *Store) Approve(ctx context.Context, id, approver string, now time.Time) (store.Approval, error) {
	var a store.Approval
	err := s.tx(ctx, func(tx pgx.Tx) error {
		var err error
		if a, err = getApproval(ctx, tx, id, " FOR UPDATE"); err != nil {
			return err
		}
		if err := store.CheckApproval(&a, approver, now); err != nil {
			return err
		}
		a.Approver, a.Approved = approver, now.UTC()
		doc, err := json.Marshal(a)
		if err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, "UPDATE approvals SET doc = $2 WHERE id = $1", id, doc); err != nil {
			return err
		}
		if e, ok := store.ApprovalEvent(ctx, &a, now.Truncate(time.Microsecond)); ok {
			return insertEvent(ctx, tx, e)
		}
		return nil
	})
	return a, err
}

// PendingApprovals implements store.Store.
func (s *Store) PendingApprovals(ctx context.Context, now time.Time) ([]store.Approval, error) {
	if err := s.check(ctx); err != nil {
		return nil, err
	}
	rows, err := s.pool.Query(ctx, "SELECT doc FROM approvals WHERE doc->>'approver' IS NULL ORDER BY created, id")
	if err != nil {
		return nil, s.err(err)
	}
	defer rows.Close()
	var out []store.Approval
	for rows.Next() {
		var doc []byte
		if err := rows.Scan(&doc); err != nil {
			return nil, err
		}
		var a store.Approval
		if err := json.Unmarshal(doc, &a); err != nil {
			return nil, err
		}
		if a.Pending(now) {
			out = append(out, a)
		}
	}
	return out, s.err(rows.Err())
}
