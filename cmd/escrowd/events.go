package main

import (
	"context"
	"time"

	"go.uber.org/zap"

	"github.com/escrowd/escrowd/store"
)

// pruneEvery is how often escrowd prunes the event feed.
const pruneEvery = time.Hour

// pruneEvents keeps the event feed within its retention: at start and then
// every interval, it deletes the events older than retention and the
// oldest beyond maxEvents, until ctx ends. Every replica runs it; the
// store makes their prunings one at a time.
func pruneEvents(ctx context.Context, st store.Store, interval, retention time.Duration, maxEvents int, now func() time.Time, log *zap.Logger) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		n, err := st.PruneEvents(ctx, now().Add(-retention), maxEvents)
		switch {
		case err != nil && ctx.Err() == nil:
			log.Warn("event feed: pruning failed; it is retried", zap.Error(err))
		case n > 0:
			log.Info("event feed: pruned", zap.Int("events", n), zap.Duration("retention", retention), zap.Int("max", maxEvents))
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
