package bolt

import (
	"context"
	"encoding/json"
	"fmt"

	bbolt "go.etcd.io/bbolt"
)

// auditHeadKey is the meta key of trail's anchored head.
func auditHeadKey(trail string) []byte { return []byte("audit_head\x00" + trail) }

type auditHead struct {
	Seq  uint64 `json:"seq"`
	N    uint64 `json:"n"`
	Hash string `json:"hash"`
}

// AuditHead returns the anchored head of the audit trail named trail
// (audit.Anchor); seq 0 if none was saved.
func (s *Store) AuditHead(ctx context.Context, trail string) (seq, n uint64, hash string, err error) {
	if err := ctx.Err(); err != nil {
		return 0, 0, "", err
	}
	var h auditHead
	err = s.view(func(tx *bbolt.Tx) error {
		raw := tx.Bucket(bucketMeta).Get(auditHeadKey(trail))
		if raw == nil {
			return nil
		}
		if err := json.Unmarshal(raw, &h); err != nil {
			return fmt.Errorf("the anchored audit head is corrupt: %w", err)
		}
		return nil
	})
	return h.Seq, h.N, h.Hash, err
}

// AdvanceAuditHead saves the audit trail's head if seq is above the one
// saved: the anchor only moves forward.
func (s *Store) AdvanceAuditHead(ctx context.Context, trail string, seq, n uint64, hash string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return s.update(func(tx *bbolt.Tx) error {
		meta := tx.Bucket(bucketMeta)
		if raw := meta.Get(auditHeadKey(trail)); raw != nil {
			var cur auditHead
			if err := json.Unmarshal(raw, &cur); err == nil && cur.Seq >= seq {
				return nil
			}
		}
		raw, err := json.Marshal(auditHead{Seq: seq, N: n, Hash: hash})
		if err != nil {
			return err
		}
		return meta.Put(auditHeadKey(trail), raw)
	})
}
