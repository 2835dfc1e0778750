package audit

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/escrowd/escrowd/internal/vaulttest"
)

// batchRecorder is an Observer that keeps what it was told.
type batchRecorder struct {
	mu                       sync.Mutex
	batches, records, failed int
	healthOK, healthFailed   int
	maxBatch                 int
	negative                 bool
}

func (b *batchRecorder) ObserveAuditBatch(records int, took time.Duration, err error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.batches++
	b.records += records
	b.maxBatch = max(b.maxBatch, records)
	b.negative = b.negative || took <= 0
	if err != nil {
		b.failed++
	}
}

func (b *batchRecorder) ObserveVaultHealth(err error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if err != nil {
		b.healthFailed++
	} else {
		b.healthOK++
	}
}

// TestObserver: against a real Vault, the observer hears every batch
// written with its size, every failed write, and every health check.
func TestObserver(t *testing.T) {
	srv := vaulttest.StartT(t)
	obs := &batchRecorder{}
	v, err := NewVault(VaultConfig{Address: srv.Addr, Token: srv.Token, Prefix: prefixFor(t), Timeout: 2 * time.Second, MaxBatch: 8, Observer: obs})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { v.Close() })
	ctx := context.Background()
	if err := v.Healthy(ctx); err != nil {
		t.Fatal(err)
	}
	commitAll(t, v, 0, 50)
	obs.mu.Lock()
	if obs.records != 50 || obs.failed != 0 || obs.maxBatch > 8 || obs.batches < 7 || obs.negative || obs.healthOK != 1 {
		t.Errorf("after 50 commits in batches of at most 8: %+v", obs)
	}
	obs.mu.Unlock()

	if err := srv.Stop(); err != nil {
		t.Fatal(err)
	}
	if err := v.Commit(ctx, rec(50)); err == nil {
		t.Fatal("commit with Vault stopped succeeded")
	}
	if err := v.Healthy(ctx); err == nil {
		t.Fatal("Vault stopped is healthy")
	}
	obs.mu.Lock()
	defer obs.mu.Unlock()
	if obs.failed != 1 || obs.records != 51 || obs.healthFailed != 1 {
		t.Errorf("after a failed commit and check: %+v", obs)
	}
}
