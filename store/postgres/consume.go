package postgres

import (
	"context"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/escrowd/escrowd/store"
)

// ConsumeCode implements store.Store.
func (s *Store) ConsumeCode(ctx context.Context, group, user string, epoch uint32, index int) (store.Codes, error) {
	var c store.Codes
	err := s.tx(ctx, func(tx pgx.Tx) error {
		var err error
		c, err = getCodes(ctx, tx, group, user, " FOR UPDATE")
		if err != nil {
			return err
		}
		if changed, err := c.Consume(epoch, index); err != nil || !changed {
			return err
		}
		c.Updated = s.now().UTC().Truncate(time.Microsecond)
		_, err = tx.Exec(ctx, "UPDATE codes SET consumed = $3, updated = $4 WHERE group_id = $1 AND user_id = $2",
			group, user, c.Consumed, c.Updated)
		return err
	})
	if err != nil {
		return store.Codes{}, err
	}
	return c, nil
}
