package audit

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"
)

// softKeyer computes the chain MACs in software, the stored key being the
// key itself. It exercises the writer's logic; e2e runs the same paths
// with the key in SoftHSM (audit/hsmkey).
type softKeyer struct{}

func (softKeyer) NewChainKey(context.Context) ([]byte, error) {
	k := make([]byte, 32)
	_, err := rand.Read(k)
	return k, err
}

func (softKeyer) ChainMAC(_ context.Context, key, msg []byte) ([]byte, error) {
	m := hmac.New(sha256.New, key)
	m.Write(msg)
	return m.Sum(nil), nil
}

// haltRecorder counts poisoned positions and remembers the halts.
type haltRecorder struct {
	nopObserver
	mu       sync.Mutex
	poisoned int
	halts    []string
}

func (h *haltRecorder) ObservePoisonedBatch() { h.mu.Lock(); h.poisoned++; h.mu.Unlock() }
func (h *haltRecorder) ObserveAuditHalted(r string) {
	h.mu.Lock()
	h.halts = append(h.halts, r)
	h.mu.Unlock()
}

func (h *haltRecorder) state() (int, []string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.poisoned, append([]string(nil), h.halts...)
}

func keyedSink(t *testing.T, prefix string, obs Observer) *Vault {
	t.Helper()
	v, err := NewVault(VaultConfig{Address: vaultSrv.Addr, Token: vaultSrv.Token, Prefix: prefix, Timeout: 3 * time.Second,
		Keyer: softKeyer{}, Observer: obs})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { v.Close() })
	return v
}

// TestPoisonedPositionHalts: a position holding what escrowd did not
// write — garbage, or a batch written with the Vault token but without
// the chain key — stops the writer, whether it meets it while writing
// (another writer's position) or at start (the last position); health
// names the position and the metric counts it once. An acknowledgement
// without the key, or for other content, changes nothing; the operator's
// acknowledgement lets it go on past the position, which verify still
// names.
func TestPoisonedPositionHalts(t *testing.T) {
	tests := []struct {
		name string
		what string // in the health reason
		kind string // verify's problem kind at the position
		// plant takes position seq.
		plant func(t *testing.T, v *Vault, seq uint64)
	}{
		{"garbage", "not a batch", "deleted", func(t *testing.T, v *Vault, seq uint64) {
			if _, err := v.kv.Put(context.Background(), v.batchPath(seq), map[string]any{"garbage": "x"}); err != nil {
				t.Fatal(err)
			}
		}},
		{"forged", "MAC does not verify", "forged", func(t *testing.T, v *Vault, seq uint64) {
			// A writer with the token and without the key chains a record
			// correctly after the trail's head.
			thief, err := NewVault(VaultConfig{Address: vaultSrv.Addr, Token: vaultSrv.Token, Prefix: v.cfg.Prefix})
			if err != nil {
				t.Fatal(err)
			}
			defer thief.Close()
			if err := thief.Commit(context.Background(), rec(900)); err != nil {
				t.Fatal(err)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.Background()
			prefix := prefixFor(t)
			obs := &haltRecorder{}
			v := keyedSink(t, prefix, obs)
			commitAll(t, v, 0, 3)
			next := v.seq + 1
			tt.plant(t, v, next)

			// The running writer meets it at its next write.
			if err := v.Commit(ctx, rec(3)); !errors.Is(err, ErrPoisoned) || !errors.Is(err, ErrUnavailable) {
				t.Fatalf("commit after the plant: %v, want ErrPoisoned", err)
			}
			herr := v.Healthy(ctx)
			var he *HaltError
			if !errors.As(herr, &he) || !strings.Contains(he.HealthReason(), fmt.Sprintf("position %d", next)) ||
				!strings.Contains(he.HealthReason(), tt.what) || !strings.Contains(he.HealthReason(), "escrowctl audit acknowledge") {
				t.Fatalf("health after the plant: %v", herr)
			}
			// A second write fails too, and the position is counted once.
			if err := v.Commit(ctx, rec(4)); !errors.Is(err, ErrPoisoned) {
				t.Fatalf("second commit: %v", err)
			}
			if n, halts := obs.state(); n != 1 || len(halts) == 0 || halts[len(halts)-1] != "poisoned" || v.Poisoned() != next {
				t.Fatalf("counted %d, halts %q, Poisoned %d; want 1, poisoned, %d", n, halts, v.Poisoned(), next)
			}
			// A new writer (a restart) refuses at start.
			w := keyedSink(t, prefix, nil)
			if err := w.Commit(ctx, rec(5)); !errors.Is(err, ErrPoisoned) {
				t.Fatalf("commit of a new writer: %v, want ErrPoisoned", err)
			}

			// Acknowledgements the writer must not take: one made without
			// the key, one for other content.
			if _, err := v.kv.Put(ctx, v.ackPath(next), map[string]any{"seq": fmt.Sprint(next), "digest": strings.Repeat("0", 64),
				"ticket": "X", "at": time.Now().UTC().Format(time.RFC3339), "key": "0011223344556677", "mac": strings.Repeat("0", 64)}); err != nil {
				t.Fatal(err)
			}
			if err := v.Commit(ctx, rec(6)); !errors.Is(err, ErrPoisoned) || !strings.Contains(err.Error(), "does not verify or is for other content") {
				t.Fatalf("commit with a bogus acknowledgement: %v", err)
			}
			if _, err := v.Acknowledge(ctx, next-1, "INC-1"); err == nil || !strings.Contains(err.Error(), "nothing to acknowledge") {
				t.Fatalf("acknowledging a good batch: %v", err)
			}
			if _, err := v.Acknowledge(ctx, next+5, "INC-1"); err == nil || !strings.Contains(err.Error(), "holds nothing") {
				t.Fatalf("acknowledging an empty position: %v", err)
			}
			if _, err := v.Acknowledge(ctx, next, ""); err == nil {
				t.Fatal("an acknowledgement without a ticket was taken")
			}
			unkeyed := newSink(t, vaultSrv, prefix)
			if _, err := unkeyed.Acknowledge(ctx, next, "INC-1"); err == nil {
				t.Fatal("an acknowledgement without the key was made")
			}

			// The operator's acknowledgement.
			a, err := w.Acknowledge(ctx, next, "INC-1")
			if err != nil {
				t.Fatal(err)
			}
			if got, err := v.Acknowledged(ctx, next); err != nil || got == nil || got.Ticket != "INC-1" || got.Digest != a.Digest {
				t.Fatalf("Acknowledged: %+v, %v", got, err)
			}
			// Healthy before any write: a halted daemon gets no request
			// to write until health says it serves.
			if err := v.Healthy(ctx); err != nil {
				t.Fatalf("health after the acknowledgement: %v", err)
			}
			commitAll(t, v, 7, 10)
			commitAll(t, w, 10, 12)
			if err := v.Healthy(ctx); err != nil {
				t.Fatalf("health after the writes: %v", err)
			}
			if n, halts := obs.state(); n != 1 || halts[len(halts)-1] != "" {
				t.Fatalf("after the acknowledgement: counted %d, halts %q", n, halts)
			}
			r, err := v.VerifyAll(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if len(r.Problems) != 1 || r.Problems[0].Batch != next || r.Problems[0].Kind != tt.kind || r.Records != 3+5 {
				t.Fatalf("verify after the acknowledgement: %v, %d records", r.Problems, r.Records)
			}

			// An acknowledgement is for one position: a second plant halts
			// again.
			tt.plant(t, v, v.seq+1)
			if err := v.Commit(ctx, rec(12)); !errors.Is(err, ErrPoisoned) {
				t.Fatalf("a second plant: %v, want ErrPoisoned", err)
			}
		})
	}
}

// TestAcknowledgementBoundToContent: an acknowledgement holds for the
// exact entry acknowledged; the same position rewritten afterwards halts
// the writer again.
func TestAcknowledgementBoundToContent(t *testing.T) {
	ctx := context.Background()
	v := keyedSink(t, prefixFor(t), nil)
	commitAll(t, v, 0, 2)
	next := v.seq + 1
	if _, err := v.kv.Put(ctx, v.batchPath(next), map[string]any{"garbage": "x"}); err != nil {
		t.Fatal(err)
	}
	if _, err := v.Acknowledge(ctx, next, "INC-2"); err != nil {
		t.Fatal(err)
	}
	if _, err := v.kv.Put(ctx, v.batchPath(next), map[string]any{"garbage": "other"}); err != nil {
		t.Fatal(err)
	}
	w := keyedSink(t, v.cfg.Prefix, nil)
	if err := w.Commit(ctx, rec(2)); !errors.Is(err, ErrPoisoned) {
		t.Fatalf("commit after the entry changed: %v, want ErrPoisoned", err)
	}
	if a, err := w.Acknowledged(ctx, next); err != nil || a != nil {
		t.Fatalf("Acknowledged after the entry changed: %+v, %v", a, err)
	}
}

// TestParseAck: what parseAck takes and refuses, as Vault returns it.
func TestParseAck(t *testing.T) {
	good := func() map[string]any {
		return map[string]any{"seq": "17", "digest": strings.Repeat("ab", 32), "ticket": "INC-1", "at": "2026-12-01T20:00:00Z",
			"key": "0011223344556677", "mac": strings.Repeat("cd", 32), "what": "not a batch"}
	}
	tests := []struct {
		name string
		edit func(m map[string]any)
		ok   bool
	}{
		{"good", func(map[string]any) {}, true},
		{"no what", func(m map[string]any) { delete(m, "what") }, true},
		{"seq zero", func(m map[string]any) { m["seq"] = "0" }, false},
		{"seq negative", func(m map[string]any) { m["seq"] = "-1" }, false},
		{"seq a number", func(m map[string]any) { m["seq"] = 17 }, false},
		{"seq with a tail", func(m map[string]any) { m["seq"] = "17 18" }, false},
		{"no time", func(m map[string]any) { delete(m, "at") }, false},
		{"bad time", func(m map[string]any) { m["at"] = "yesterday" }, false},
		{"short digest", func(m map[string]any) { m["digest"] = "abcd" }, false},
		{"digest not hex", func(m map[string]any) { m["digest"] = strings.Repeat("zz", 32) }, false},
		{"no ticket", func(m map[string]any) { m["ticket"] = "" }, false},
		{"long ticket", func(m map[string]any) { m["ticket"] = strings.Repeat("x", maxTicket+1) }, false},
		{"no key", func(m map[string]any) { delete(m, "key") }, false},
		{"no MAC", func(m map[string]any) { m["mac"] = "" }, false},
		{"MAC not a string", func(m map[string]any) { m["mac"] = []any{"x"} }, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := good()
			tt.edit(m)
			a, err := parseAck(m)
			if (err == nil) != tt.ok {
				t.Fatalf("parseAck: %+v, %v; want ok %v", a, err, tt.ok)
			}
			if tt.ok && (a.Seq != 17 || a.Ticket != "INC-1" || a.At.Unix() != 1796155200) {
				t.Fatalf("parsed %+v", a)
			}
		})
	}
}

// FuzzParseAck: no data from Vault makes parseAck panic, and what it
// takes is well formed.
func FuzzParseAck(f *testing.F) {
	f.Add([]byte(`{"seq":"17","digest":"` + strings.Repeat("ab", 32) + `","ticket":"INC-1","at":"2026-12-01T20:00:00Z","key":"k","mac":"m"}`))
	f.Add([]byte(`{"seq":17}`))
	f.Add([]byte(`{}`))
	f.Fuzz(func(t *testing.T, raw []byte) {
		m, err := toMap(raw)
		if err != nil {
			return
		}
		a, err := parseAck(m)
		if err == nil && (a.Seq == 0 || len(a.Digest) != 64 || a.Ticket == "" || a.MAC == "") {
			t.Fatalf("took a malformed acknowledgement: %+v", a)
		}
	})
}
