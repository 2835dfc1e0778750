// Package postgres is the sync backend's PostgreSQL store, for several
// backend replicas sharing one database. Compare-and-set is a conditional
// UPDATE on the version column, so two replicas never both win.
package postgres

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/escrowd/escrowd/examples/syncbackend/store"
)

// schema is created at Open, under an advisory lock so that replicas
// starting together create it once. A real deployment would version it
// (see escrowd's store/postgres migrations).
const schema = `
CREATE TABLE IF NOT EXISTS accounts (id text PRIMARY KEY, doc jsonb NOT NULL);
CREATE TABLE IF NOT EXISTS devices (id text PRIMARY KEY, account text NOT NULL REFERENCES accounts(id), doc jsonb NOT NULL);
CREATE INDEX IF NOT EXISTS devices_account ON devices (account);
CREATE TABLE IF NOT EXISTS nonces (device text NOT NULL, nonce text NOT NULL, expires timestamptz NOT NULL, PRIMARY KEY (device, nonce));
CREATE TABLE IF NOT EXISTS groups (id text PRIMARY KEY, version bigint NOT NULL, doc jsonb NOT NULL);
CREATE TABLE IF NOT EXISTS members (account text NOT NULL, group_id text NOT NULL REFERENCES groups(id), PRIMARY KEY (account, group_id));
CREATE TABLE IF NOT EXISTS records (group_id text NOT NULL REFERENCES groups(id), id text NOT NULL, version bigint NOT NULL,
  data bytea NOT NULL, updated timestamptz NOT NULL, PRIMARY KEY (group_id, id));
CREATE TABLE IF NOT EXISTS notifications (account text NOT NULL, sequence bigint NOT NULL, doc jsonb NOT NULL, PRIMARY KEY (account, sequence));
CREATE TABLE IF NOT EXISTS feed_cursor (one boolean PRIMARY KEY DEFAULT true CHECK (one), cursor bigint NOT NULL);
`

const schemaLock = 0x73796e636264 // "syncbd"

// Store is the PostgreSQL back end.
type Store struct {
	pool *pgxpool.Pool
}

var _ store.Store = (*Store)(nil)

// Open connects to the database at url and creates the schema if needed.
func Open(ctx context.Context, url string) (*Store, error) {
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		// The URL may hold a password: do not echo it.
		return nil, errors.New("postgres: cannot parse the store URL")
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("postgres: failed to connect: %w", err)
	}
	err = pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, int64(schemaLock)); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, schema)
		return err
	})
	if err != nil {
		pool.Close()
		return nil, fmt.Errorf("postgres: failed to create the schema on %s:%d: %w", cfg.ConnConfig.Host, cfg.ConnConfig.Port, err)
	}
	return &Store{pool: pool}, nil
}

func (s *Store) Close() error {
	s.pool.Close()
	return nil
}

func isUnique(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && pe.Code == "23505"
}

func scanDoc[T any](row pgx.Row, what string) (T, error) {
	var v T
	var b []byte
	if err := row.Scan(&b); err != nil {
		if errors.Is(err, pgx.ErrNoRows) {
			return v, fmt.Errorf("%s: %w", what, store.ErrNotFound)
		}
		return v, err
	}
	if err := json.Unmarshal(b, &v); err != nil {
		return v, fmt.Errorf("stored %s: %w", what, err)
	}
	return v, nil
}

func (s *Store) CreateAccount(ctx context.Context, a store.Account, d store.Device) error {
	return pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `INSERT INTO accounts (id, doc) VALUES ($1, $2)`, a.ID, a); err != nil {
			if isUnique(err) {
				return fmt.Errorf("account %q: %w", a.ID, store.ErrExists)
			}
			return err
		}
		if _, err := tx.Exec(ctx, `INSERT INTO devices (id, account, doc) VALUES ($1, $2, $3)`, d.ID, a.ID, d); err != nil {
			if isUnique(err) {
				return fmt.Errorf("device %q: %w", d.ID, store.ErrExists)
			}
			return err
		}
		return nil
	})
}

func (s *Store) Account(ctx context.Context, id string) (store.Account, error) {
	return scanDoc[store.Account](s.pool.QueryRow(ctx, `SELECT doc FROM accounts WHERE id = $1`, id), "account "+id)
}

func (s *Store) AddDevice(ctx context.Context, d store.Device) error {
	tag, err := s.pool.Exec(ctx, `INSERT INTO devices (id, account, doc) SELECT $1, $2, $3 WHERE EXISTS (SELECT 1 FROM accounts WHERE id = $2)`, d.ID, d.Account, d)
	switch {
	case isUnique(err):
		return fmt.Errorf("device %q: %w", d.ID, store.ErrExists)
	case err != nil:
		return err
	case tag.RowsAffected() == 0:
		return fmt.Errorf("account %q: %w", d.Account, store.ErrNotFound)
	}
	return nil
}

func (s *Store) Device(ctx context.Context, id string) (store.Device, error) {
	return scanDoc[store.Device](s.pool.QueryRow(ctx, `SELECT doc FROM devices WHERE id = $1`, id), "device "+id)
}

func (s *Store) Devices(ctx context.Context, account string) ([]store.Device, error) {
	rows, err := s.pool.Query(ctx, `SELECT doc FROM devices WHERE account = $1 ORDER BY id`, account)
	if err != nil {
		return nil, err
	}
	return collect[store.Device](rows, "device")
}

func collect[T any](rows pgx.Rows, what string) ([]T, error) {
	defer rows.Close()
	var out []T
	for rows.Next() {
		v, err := scanDoc[T](rows, what)
		if err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, rows.Err()
}

func (s *Store) UseNonce(ctx context.Context, device, nonce string, expires, now time.Time) error {
	return pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `DELETE FROM nonces WHERE expires < $1`, now); err != nil {
			return err
		}
		tag, err := tx.Exec(ctx, `INSERT INTO nonces (device, nonce, expires) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING`, device, nonce, expires)
		if err != nil {
			return err
		}
		if tag.RowsAffected() == 0 {
			return store.ErrReplay
		}
		return nil
	})
}

func (s *Store) CreateGroup(ctx context.Context, g store.Group) error {
	g.Version = 1
	return pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `INSERT INTO groups (id, version, doc) VALUES ($1, 1, $2)`, g.ID, g); err != nil {
			if isUnique(err) {
				return fmt.Errorf("group %q: %w", g.ID, store.ErrExists)
			}
			return err
		}
		return index(ctx, tx, &g)
	})
}

func index(ctx context.Context, tx pgx.Tx, g *store.Group) error {
	if _, err := tx.Exec(ctx, `DELETE FROM members WHERE group_id = $1`, g.ID); err != nil {
		return err
	}
	for _, m := range g.Members() {
		if _, err := tx.Exec(ctx, `INSERT INTO members (account, group_id) VALUES ($1, $2) ON CONFLICT DO NOTHING`, m, g.ID); err != nil {
			return err
		}
	}
	return nil
}

func (s *Store) Group(ctx context.Context, id string) (store.Group, error) {
	return scanDoc[store.Group](s.pool.QueryRow(ctx, `SELECT doc FROM groups WHERE id = $1`, id), "group "+id)
}

func (s *Store) UpdateGroup(ctx context.Context, g store.Group) (uint64, error) {
	expect := g.Version
	g.Version++
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `UPDATE groups SET version = $2, doc = $3 WHERE id = $1 AND version = $4`, g.ID, int64(g.Version), g, int64(expect))
		if err != nil {
			return err
		}
		if tag.RowsAffected() == 0 {
			var cur int64
			if err := tx.QueryRow(ctx, `SELECT version FROM groups WHERE id = $1`, g.ID).Scan(&cur); err != nil {
				if errors.Is(err, pgx.ErrNoRows) {
					return fmt.Errorf("group %q: %w", g.ID, store.ErrNotFound)
				}
				return err
			}
			return &store.ConflictError{Current: uint64(cur)}
		}
		return index(ctx, tx, &g)
	})
	if err != nil {
		return 0, err
	}
	return g.Version, nil
}

func (s *Store) Groups(ctx context.Context, after string, limit int) ([]string, error) {
	return strings(s.pool.Query(ctx, `SELECT id FROM groups WHERE id COLLATE "C" > $1 ORDER BY id COLLATE "C" LIMIT $2`, after, limit))
}

func (s *Store) GroupsOf(ctx context.Context, account string) ([]string, error) {
	return strings(s.pool.Query(ctx, `SELECT group_id FROM members WHERE account = $1 ORDER BY group_id COLLATE "C"`, account))
}

func strings(rows pgx.Rows, err error) ([]string, error) {
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, pgx.RowTo[string])
}

func (s *Store) PutRecord(ctx context.Context, r store.Record) (uint64, error) {
	expect := r.Version
	r.Version++
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		var tag pgconn.CommandTag
		var err error
		if expect == 0 {
			tag, err = tx.Exec(ctx, `INSERT INTO records (group_id, id, version, data, updated) VALUES ($1, $2, 1, $3, $4) ON CONFLICT DO NOTHING`,
				r.Group, r.ID, r.Data, r.Updated)
		} else {
			tag, err = tx.Exec(ctx, `UPDATE records SET version = $3, data = $4, updated = $5 WHERE group_id = $1 AND id = $2 AND version = $6`,
				r.Group, r.ID, int64(r.Version), r.Data, r.Updated, int64(expect))
		}
		if err != nil {
			return err
		}
		if tag.RowsAffected() == 0 {
			var cur int64
			err := tx.QueryRow(ctx, `SELECT version FROM records WHERE group_id = $1 AND id = $2`, r.Group, r.ID).Scan(&cur)
			if err != nil && !errors.Is(err, pgx.ErrNoRows) {
				return err
			}
			return &store.ConflictError{Current: uint64(cur)}
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	return r.Version, nil
}

func scanRecord(row pgx.Row) (store.Record, error) {
	var r store.Record
	var v int64
	err := row.Scan(&r.Group, &r.ID, &v, &r.Data, &r.Updated)
	r.Version = uint64(v)
	return r, err
}

func (s *Store) Record(ctx context.Context, group, id string) (store.Record, error) {
	r, err := scanRecord(s.pool.QueryRow(ctx, `SELECT group_id, id, version, data, updated FROM records WHERE group_id = $1 AND id = $2`, group, id))
	if errors.Is(err, pgx.ErrNoRows) {
		return r, fmt.Errorf("record %q: %w", id, store.ErrNotFound)
	}
	return r, err
}

func (s *Store) Records(ctx context.Context, group, after string, limit int) ([]store.Record, error) {
	rows, err := s.pool.Query(ctx, `SELECT group_id, id, version, data, updated FROM records WHERE group_id = $1 AND id COLLATE "C" > $2 ORDER BY id COLLATE "C" LIMIT $3`, group, after, limit)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(row pgx.CollectableRow) (store.Record, error) { return scanRecord(row) })
}

func (s *Store) AddNotifications(ctx context.Context, ns []store.Notification, cursor uint64) error {
	return pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		for _, n := range ns {
			if _, err := tx.Exec(ctx, `INSERT INTO notifications (account, sequence, doc) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING`,
				n.Account, int64(n.Sequence), n); err != nil {
				return err
			}
		}
		_, err := tx.Exec(ctx, `INSERT INTO feed_cursor (one, cursor) VALUES (true, $1) ON CONFLICT (one) DO UPDATE SET cursor = $1`, int64(cursor))
		return err
	})
}

func (s *Store) Cursor(ctx context.Context) (uint64, error) {
	var c int64
	err := s.pool.QueryRow(ctx, `SELECT cursor FROM feed_cursor`).Scan(&c)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, nil
	}
	return uint64(c), err
}

func (s *Store) Notifications(ctx context.Context, account string, after uint64, limit int) ([]store.Notification, error) {
	rows, err := s.pool.Query(ctx, `SELECT doc FROM notifications WHERE account = $1 AND sequence > $2 ORDER BY sequence LIMIT $3`, account, int64(after), limit)
	if err != nil {
		return nil, err
	}
	return collect[store.Notification](rows, "notification")
}
