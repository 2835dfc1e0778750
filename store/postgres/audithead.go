package postgres

import (
	"context"
	"errors"

	"github.com/jackc/pgx/v5"
)

// AuditHead returns the anchored head of the audit trail named trail
// (audit.Anchor); seq 0 if none was saved.
func (s *Store) AuditHead(ctx context.Context, trail string) (seq, n uint64, hash string, err error) {
	var sq, nn int64
	err = s.pool.QueryRow(ctx, "SELECT seq, n, hash FROM audit_head WHERE trail = $1", trail).Scan(&sq, &nn, &hash)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, 0, "", nil
	}
	if err != nil {
		return 0, 0, "", err
	}
	return uint64(sq), uint64(nn), hash, nil
}

// AdvanceAuditHead saves the audit trail's head if seq is above the one
// saved: the anchor only moves forward, whichever replica saves last.
func (s *Store) AdvanceAuditHead(ctx context.Context, trail string, seq, n uint64, hash string) error {
	_, err := s.pool.Exec(ctx, `INSERT INTO audit_head (trail, seq, n, hash) VALUES ($1, $2, $3, $4)
		ON CONFLICT (trail) DO UPDATE SET seq = EXCLUDED.seq, n = EXCLUDED.n, hash = EXCLUDED.hash
		WHERE audit_head.seq < EXCLUDED.seq`, trail, int64(seq), int64(n), hash)
	return err
}
