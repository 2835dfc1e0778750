package hsm_test

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/escrowd/escrowd/hsm"
)

// opRecorder is an hsm.Observer that keeps what it was told.
type opRecorder struct {
	mu     sync.Mutex
	ops    []string // "op ok" or "op error"
	waits  []string // "got" or "gave up"
	waited []time.Duration
	took   []time.Duration
}

func (r *opRecorder) ObserveHSMOp(op string, took time.Duration, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	res := "ok"
	if err != nil {
		res = "error"
	}
	r.ops = append(r.ops, op+" "+res)
	r.took = append(r.took, took)
}

func (r *opRecorder) ObserveSessionWait(waited time.Duration, got bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	res := "gave up"
	if got {
		res = "got"
	}
	r.waits = append(r.waits, res)
	r.waited = append(r.waited, waited)
}

func (r *opRecorder) reset() (ops, waits []string, waited []time.Duration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	ops, waits, waited = r.ops, r.waits, r.waited
	r.ops, r.waits, r.waited, r.took = nil, nil, nil, nil
	return ops, waits, waited
}

// TestObserver: on real SoftHSM every operation is reported under its
// name with its result, and a caller is reported as waiting only when the
// pool had no session free: whether it got one, and after how long.
func TestObserver(t *testing.T) {
	tok := newToken(t)
	obs := &opRecorder{}
	h := openToken(t, tok, func(c *hsm.Config) { c.Sessions = 1; c.WaitTimeout = 500 * time.Millisecond; c.Observer = obs })
	ctx := context.Background()

	k, err := h.GenerateUnlockKey(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := h.HMAC(ctx, k, []byte("m")); err != nil {
		t.Fatal(err)
	}
	if _, err := h.HMAC(ctx, hsm.WrappedKey{KEKVersion: 1, Blob: make([]byte, 40)}, []byte("m")); err == nil {
		t.Fatal("HMAC under a garbage key succeeded")
	}
	if err := h.Healthy(ctx); err != nil {
		t.Fatal(err)
	}
	ops, waits, _ := obs.reset()
	if want := []string{"generate_unlock_key ok", "hmac ok", "hmac error", "healthy ok"}; !slices.Equal(ops, want) {
		t.Errorf("operations observed %q, want %q", ops, want)
	}
	if len(waits) != 0 {
		t.Errorf("waits observed with a free pool: %q", waits)
	}
	for _, op := range ops {
		if name := strings.Fields(op)[0]; !slices.Contains(hsm.Ops(), name) {
			t.Errorf("operation %q is not in hsm.Ops()", name)
		}
	}

	// The only session held: a caller waits out WaitTimeout and gives up.
	release, err := h.HoldSessionForTest(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := h.HMAC(ctx, k, []byte("m")); !errors.Is(err, hsm.ErrUnavailable) {
		t.Fatalf("HMAC with the pool exhausted: %v", err)
	}
	// Released while a caller waits: it gets the session. (The release
	// comes 30ms into a wait of 500ms: on a loaded machine a wait of
	// 100ms timed out before the releasing goroutine ran.)
	go func() { time.Sleep(30 * time.Millisecond); release() }()
	if _, err := h.HMAC(ctx, k, []byte("m")); err != nil {
		t.Fatal(err)
	}
	ops, waits, waited := obs.reset()
	if want := []string{"hmac error", "hmac ok"}; !slices.Equal(ops, want) {
		t.Errorf("operations observed %q, want %q", ops, want)
	}
	if want := []string{"gave up", "got"}; !slices.Equal(waits, want) {
		t.Fatalf("waits observed %q, want %q", waits, want)
	}
	if waited[0] < 500*time.Millisecond || waited[0] > 5*time.Second {
		t.Errorf("gave up after %s, want the 500ms WaitTimeout", waited[0])
	}
	if waited[1] <= 0 || waited[1] > 5*time.Second {
		t.Errorf("got a session after %s", waited[1])
	}
}
