package audit

import (
	"context"
	"errors"
	"fmt"
	"path"
	"sync"
	"time"

	vault "github.com/hashicorp/vault/api"
)

// Anchor keeps the trail's last committed head (batch position, record
// number, hash) where a Vault administrator cannot rewind it alone:
// escrowd's own store. The writer refuses to continue below it, so
// deleting the last batches in Vault cannot be hidden by a restart.
//
// Heads are kept by trail (the KV mount and prefix, "secret/escrowd/audit"),
// so that one store can anchor several trails, and a new trail (a new
// prefix) starts with no anchor.
type Anchor interface {
	// AuditHead returns the highest head saved for trail; seq 0 if none.
	AuditHead(ctx context.Context, trail string) (seq, n uint64, hash string, err error)
	// AdvanceAuditHead saves trail's head if seq is above the saved one's.
	AdvanceAuditHead(ctx context.Context, trail string, seq, n uint64, hash string) error
}

// ErrTruncated: the trail in Vault ends before, or differs at, the head
// the store anchors. The writer stops; docs/OPERATIONS.md gives the
// recovery.
var ErrTruncated = errors.New("audit trail truncated or rewritten below its anchored head")

// anchorHead is a head for the anchor.
type anchorHead struct {
	seq, n uint64
	hash   string
}

// anchorer saves heads in the background: the writer hands it the latest
// and goes on; it saves the newest one it has, at most once every
// anchorEvery. A write therefore never waits for the store, and the store
// takes one write per anchorEvery rather than one per batch; the anchor
// trails the trail by at most anchorEvery and one store round trip.
const anchorEvery = 100 * time.Millisecond

// anchorer is that background saver.
type anchorer struct {
	a      Anchor
	trail  string
	mu     sync.Mutex
	latest anchorHead
	saved  uint64
	wake   chan struct{}
	done   chan struct{}
}

func newAnchorer(a Anchor, trail string, stop <-chan struct{}, timeout func() (context.Context, context.CancelFunc)) *anchorer {
	an := &anchorer{a: a, trail: trail, wake: make(chan struct{}, 1), done: make(chan struct{})}
	go func() {
		defer close(an.done)
		for {
			select {
			case <-an.wake:
			case <-stop:
				an.save(timeout) // the last head written
				return
			}
			an.save(timeout)
			select {
			case <-time.After(anchorEvery):
			case <-stop:
				an.save(timeout)
				return
			}
		}
	}()
	return an
}

func (an *anchorer) advance(h anchorHead) {
	an.mu.Lock()
	if h.seq > an.latest.seq {
		an.latest = h
	}
	an.mu.Unlock()
	select {
	case an.wake <- struct{}{}:
	default:
	}
}

func (an *anchorer) save(timeout func() (context.Context, context.CancelFunc)) {
	an.mu.Lock()
	h := an.latest
	an.mu.Unlock()
	if h.seq <= an.saved {
		return
	}
	ctx, cancel := timeout()
	defer cancel()
	if err := an.a.AdvanceAuditHead(ctx, an.trail, h.seq, h.n, h.hash); err == nil {
		an.saved = h.seq
	}
	// On failure the next write retries with a newer head.
}

// readAnchor reads the trail's anchored head.
func (v *Vault) readAnchor(ctx context.Context) (anchorHead, error) {
	seq, n, hash, err := v.cfg.Anchor.AuditHead(ctx, v.trail())
	if err != nil {
		return anchorHead{}, fmt.Errorf("%w: failed to read the anchored audit head from the store: %v", ErrUnavailable, err)
	}
	return anchorHead{seq: seq, n: n, hash: hash}, nil
}

// trail names the trail for the anchor: its mount and prefix.
func (v *Vault) trail() string { return path.Join(v.cfg.Mount, v.cfg.Prefix) }

// checkAnchor compares the head the writer found in Vault with the
// anchored one. Below it, or at it with another hash, the trail was
// truncated or rewritten: unless AcceptTruncation, it refuses; with it,
// the writer goes on after the anchored head, at the next position, so no
// position is reused and the chain follows the anchored hash.
//
// The anchor is read (readAnchor) before Vault is probed: anchors are saved
// only after their batch is in Vault, so one read first is never ahead of
// the Vault head found after it, however many replicas write meanwhile.
func (v *Vault) checkAnchor(ctx context.Context, a anchorHead) error {
	seq, n, hash := a.seq, a.n, a.hash
	if seq == 0 {
		return nil
	}
	var problem string
	if v.seq < seq {
		problem = fmt.Sprintf("Vault's trail ends at batch %d, but batch %d (record %d, hash %s) was committed: the last batches were deleted", v.seq, seq, n, hash)
	} else {
		b, err := v.readBatch(ctx, seq)
		switch {
		case errors.Is(err, vault.ErrSecretNotFound) || errors.Is(err, errBadBatch):
			problem = fmt.Sprintf("batch %d (record %d, hash %s) was committed and cannot be read now", seq, n, hash)
		case err != nil:
			return fmt.Errorf("%w: failed to read audit batch %d: %v", ErrUnavailable, seq, firstLine(err))
		case len(b.Records) == 0 || b.Records[len(b.Records)-1].Hash != hash || b.Records[len(b.Records)-1].N != n:
			problem = fmt.Sprintf("batch %d no longer ends at record %d with hash %s: it was rewritten", seq, n, hash)
		}
	}
	if problem == "" {
		return nil
	}
	if !v.cfg.AcceptTruncation {
		err := fmt.Errorf("%w: %w: %s; check with `escrowctl audit verify -expect-head %d:%s`, then restore the batches or restart with -audit-accept-truncation (docs/OPERATIONS.md)", ErrUnavailable, ErrTruncated, problem, n, hash)
		return err
	}
	if v.seq < seq {
		v.seq, v.n, v.prev = seq, n, hash
	}
	return nil
}
