package postgres

import (
	"context"
	"fmt"
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
		switch {
		case c.Epoch != epoch:
			return fmt.Errorf("epoch is %d, not %d: %w", c.Epoch, epoch, store.ErrConflict)
		case index < 0 || index >= len(c.Revealed):
			return fmt.Errorf("epoch %d has %d codes, no index %d: %w", epoch, len(c.Revealed), index, store.ErrNotFound)
		case !c.Revealed[index]:
			return fmt.Errorf("epoch %d index %d: %w", epoch, index, store.ErrNotRevealed)
		case c.IsConsumed(index):
			return nil
		}
		if c.Consumed == nil {
			c.Consumed = make([]bool, len(c.Revealed))
		}
		c.Consumed[index] = true
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
