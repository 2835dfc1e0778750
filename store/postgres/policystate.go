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

// TakeRate implements store.Store. The rows of all the request's limits
// are locked in key order (so two requests never wait on each other in a
// cycle), checked, and counted together or not at all.
func (s *Store) TakeRate(ctx context.Context, now time.Time, limits []store.RateLimit) (int, error) {
	order := make([]int, len(limits))
	for i := range order {
		order[i] = i
	}
	slices.SortFunc(order, func(a, b int) int {
		switch {
		case limits[a].Key < limits[b].Key:
			return -1
		case limits[a].Key > limits[b].Key:
			return 1
		}
		return 0
	})
	full := -1
	err := s.tx(ctx, func(tx pgx.Tx) error {
		counts := make([]int, len(limits))
		for _, i := range order {
			l := limits[i]
			start := store.WindowStart(now, l.Window).UnixNano()
			if _, err := tx.Exec(ctx, "INSERT INTO rate_windows (key, window_start, count) VALUES ($1, $2, 0) ON CONFLICT (key) DO NOTHING", l.Key, start); err != nil {
				return err
			}
			var ws int64
			var n int
			if err := tx.QueryRow(ctx, "SELECT window_start, count FROM rate_windows WHERE key = $1 FOR UPDATE", l.Key).Scan(&ws, &n); err != nil {
				return err
			}
			if ws != start {
				n = 0
			}
			if n >= l.Max {
				full = i
				return fmt.Errorf("%s: %w", l.Key, store.ErrRateLimited)
			}
			counts[i] = n + 1
		}
		for i, l := range limits {
			start := store.WindowStart(now, l.Window).UnixNano()
			if _, err := tx.Exec(ctx, "UPDATE rate_windows SET window_start = $2, count = $3 WHERE key = $1", l.Key, start, counts[i]); err != nil {
				return err
			}
		}
		return nil
	})
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
