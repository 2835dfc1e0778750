package backend

import (
	"context"
	"crypto/ecdh"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/escrowd/escrowd/escrow/bundle"
	"github.com/escrowd/escrowd/escrow/device"
	"github.com/escrowd/escrowd/escrow/unlockcode"
	"github.com/escrowd/escrowd/examples/syncbackend/store"
)

// slotEscrowd is a fake escrowd that makes real slots with the reference
// device, holding each group's escrow private keys in memory: for unit
// tests of the cycle job's bookkeeping (batches, partial failures,
// re-seals). The real daemon runs in e2e/syncbackend_test.go.
type slotEscrowd struct {
	fakeEscrowd
	mu     sync.Mutex
	keys   map[string][]*ecdh.PrivateKey // by group, version 1 first
	epochs map[string]uint32
	// failDevice makes every re-wrap to this device id fail.
	failDevice string
	calls      map[string]int
}

func newSlotEscrowd() *slotEscrowd {
	return &slotEscrowd{keys: map[string][]*ecdh.PrivateKey{}, epochs: map[string]uint32{}, calls: map[string]int{}}
}

func (f *slotEscrowd) ProvisionGroup(_ context.Context, group string) (EscrowKey, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	k, _ := ecdh.P256().GenerateKey(rand.Reader)
	f.keys[group] = append(f.keys[group], k)
	der, _ := x509.MarshalPKIXPublicKey(k.PublicKey())
	return EscrowKey{Version: 1, Suite: bundle.SuiteECDHP256, PublicKey: der}, nil
}

// rotate adds an escrow key version, as RotateGroupKeys would.
func (f *slotEscrowd) rotate(group string) uint32 {
	f.mu.Lock()
	defer f.mu.Unlock()
	k, _ := ecdh.P256().GenerateKey(rand.Reader)
	f.keys[group] = append(f.keys[group], k)
	return uint32(len(f.keys[group]))
}

func (f *slotEscrowd) open(group string, slot []byte) ([]byte, *bundle.Slot, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	s, err := bundle.ParseSlot(slot)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %w", ErrEscrowdRefused, err)
	}
	ks := f.keys[group]
	if s.KeyVersion < 1 || int(s.KeyVersion) > len(ks) {
		return nil, nil, ErrEscrowdRefused
	}
	gdk, s, err := device.OpenPublic(slot, device.Want{Group: group}, ks[s.KeyVersion-1])
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %w", ErrEscrowdRefused, err)
	}
	return gdk, s, nil
}

func (f *slotEscrowd) rewrap(group string, slot []byte, to *Recipient) ([]byte, error) {
	gdk, s, err := f.open(group, slot)
	if err != nil {
		return nil, err
	}
	if to == nil {
		f.mu.Lock()
		n := len(f.keys[group])
		der, _ := x509.MarshalPKIXPublicKey(f.keys[group][n-1].PublicKey())
		f.mu.Unlock()
		return device.SealEscrow(der, device.To{Group: group, GDKVersion: s.GDKVersion, KeyVersion: uint32(n)}, bundle.SuiteECDHP256, gdk)
	}
	if to.ID == f.failDevice {
		return nil, fmt.Errorf("%w: injected failure", ErrEscrowdUnavailable)
	}
	kind := bundle.KindMember
	if to.Kind == Device {
		kind = bundle.KindDevice
	}
	return device.SealPublic(kind, device.To{Group: group, GDKVersion: s.GDKVersion, KeyVersion: to.KeyVersion, ID: to.ID}, to.Suite, to.PublicKey, gdk)
}

func (f *slotEscrowd) count(op string) {
	f.mu.Lock()
	f.calls[op]++
	f.mu.Unlock()
}

func (f *slotEscrowd) Rewrap(_ context.Context, group string, slot []byte, to Recipient) ([]byte, error) {
	f.count("Rewrap")
	return f.rewrap(group, slot, &to)
}

func (f *slotEscrowd) RewrapToEscrow(_ context.Context, group string, slot []byte) ([]byte, uint32, error) {
	f.count("RewrapToEscrow")
	out, err := f.rewrap(group, slot, nil)
	return out, uint32(len(f.keys[group])), err
}

func (f *slotEscrowd) BatchRewrap(_ context.Context, items []BatchItem) ([]BatchResult, error) {
	f.count("BatchRewrap")
	if len(items) > MaxBatch {
		return nil, ErrEscrowdRefused
	}
	out := make([]BatchResult, len(items))
	for i, it := range items {
		slot, err := f.rewrap(it.Group, it.EscrowSlot, it.To)
		out[i] = BatchResult{Ref: it.Ref, Slot: slot, Err: err}
	}
	return out, nil
}

func (f *slotEscrowd) IssueUnlockCodes(_ context.Context, group, user string, slot []byte) (UnlockEpoch, error) {
	f.count("IssueUnlockCodes")
	gdk, s, err := f.open(group, slot)
	if err != nil {
		return UnlockEpoch{}, err
	}
	f.mu.Lock()
	f.epochs[group+"/"+user]++
	e := f.epochs[group+"/"+user]
	f.mu.Unlock()
	out := UnlockEpoch{User: user, Epoch: e}
	for i := range 2 {
		m := make([]byte, 16)
		_, _ = rand.Read(m)
		c, err := unlockcode.FromMaterial(uint32(i), m)
		if err != nil {
			return out, err
		}
		raw, err := device.SealUnlock(gdk, device.To{Group: group, GDKVersion: s.GDKVersion, KeyVersion: 1, ID: user}, e, c, bundle.MinUnlockIterations)
		if err != nil {
			return out, err
		}
		out.Slots = append(out.Slots, raw)
	}
	return out, nil
}

// newGroup creates account ann with devices, a group, and its first bundle
// (an escrow slot only), straight through the operations.
func newCycleTest(t *testing.T, devices int) (*Server, *slotEscrowd, string) {
	return newCycleTestBatch(t, devices, 0)
}

func newCycleTestBatch(t *testing.T, devices, batch int) (*Server, *slotEscrowd, string) {
	t.Helper()
	st, err := store.OpenBolt(filepath.Join(t.TempDir(), "sync.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	esc := newSlotEscrowd()
	srv, err := New(Config{Store: st, Escrowd: esc, Log: slog.New(slog.NewTextHandler(io.Discard, nil)), BatchSize: batch})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	pub := func() []byte {
		k, _ := ecdh.P256().GenerateKey(rand.Reader)
		der, _ := x509.MarshalPKIXPublicKey(k.PublicKey())
		return der
	}
	if err := st.CreateAccount(ctx, store.Account{ID: "ann", MemberKey: pub(), MemberKeyVersion: 1}, store.Device{ID: "d0", Account: "ann", SignKey: pub(), WrapKey: pub(), WrapKeyVersion: 1}); err != nil {
		t.Fatal(err)
	}
	for i := 1; i < devices; i++ {
		if err := st.AddDevice(ctx, store.Device{ID: fmt.Sprint("d", i), Account: "ann", SignKey: pub(), WrapKey: pub(), WrapKeyVersion: 1}); err != nil {
			t.Fatal(err)
		}
	}
	dev, _ := st.Device(ctx, "d0")
	g, err := srv.createGroup(ctx, dev, "g")
	if err != nil {
		t.Fatal(err)
	}
	gdk, _ := device.NewGDK()
	es, err := device.SealEscrow(g.EscrowKey, device.To{Group: "g", GDKVersion: 1, KeyVersion: 1}, bundle.SuiteECDHP256, gdk)
	if err != nil {
		t.Fatal(err)
	}
	s, _ := bundle.ParseSlot(es)
	raw, _ := (&bundle.Bundle{Group: "g", Slots: []bundle.Slot{*s}}).Marshal()
	// Escrowd is down while the bundle is uploaded: everything is left
	// to the cycle job.
	esc.failDevice = "*"
	esc.mu.Lock()
	keys := esc.keys
	esc.keys = map[string][]*ecdh.PrivateKey{}
	esc.mu.Unlock()
	if _, err := srv.putBundle(ctx, dev, "g", putBundle{Version: 1, Bundle: raw}); err != nil {
		t.Fatal(err)
	}
	esc.mu.Lock()
	esc.keys = keys
	esc.mu.Unlock()
	esc.failDevice = ""
	return srv, esc, "g"
}

func TestCycle(t *testing.T) {
	srv, esc, group := newCycleTestBatch(t, 150, 100)
	ctx := context.Background()
	esc.failDevice = "d7"
	// 150 device slots and a member slot: two batches of at most 100;
	// d7 fails.
	rep, err := srv.Cycle(ctx)
	if err != nil || rep.Rewraps != 150 || rep.Failed != 1 || rep.Epochs != 1 || rep.Resealed != 0 {
		t.Fatalf("first cycle: %+v, %v", rep, err)
	}
	if esc.calls["BatchRewrap"] != 2 {
		t.Fatalf("%d BatchRewrap calls, want 2", esc.calls["BatchRewrap"])
	}
	// The failed item is tried again next time, alone.
	esc.failDevice = ""
	rep, err = srv.Cycle(ctx)
	if err != nil || rep.Rewraps != 1 || rep.Failed != 0 || rep.Epochs != 0 {
		t.Fatalf("second cycle: %+v, %v", rep, err)
	}
	g, _ := srv.st.Group(ctx, group)
	b, _ := bundle.Parse(g.Bundle)
	if len(b.Slots) != 1+1+150+2 {
		t.Fatalf("%d slots, want escrow + member + 150 devices + 2 unlock", len(b.Slots))
	}
	// A new escrow key version, announced by the feed: one re-seal,
	// through RewrapToEscrow, replacing the old escrow slot.
	v := esc.rotate(group)
	if _, err := srv.mutate(ctx, group, func(g *store.Group) error { g.EscrowKeyVersion = v; return nil }); err != nil {
		t.Fatal(err)
	}
	rep, err = srv.Cycle(ctx)
	if err != nil || rep.Resealed != 1 || esc.calls["RewrapToEscrow"] != 1 {
		t.Fatalf("re-seal cycle: %+v, %v, %v", rep, err, esc.calls)
	}
	g, _ = srv.st.Group(ctx, group)
	b, _ = bundle.Parse(g.Bundle)
	es, _, err := escrowSlot(b, 1)
	if err != nil || es.KeyVersion != 2 {
		t.Fatalf("escrow slot after the re-seal: %+v, %v", es, err)
	}
	n := 0
	for _, s := range b.Slots {
		if s.Kind == bundle.KindEscrow {
			n++
		}
	}
	if n != 1 {
		t.Fatalf("%d escrow slots, want the newest only", n)
	}
	if rep, err := srv.Cycle(ctx); err != nil || rep != (CycleReport{Groups: 1}) {
		t.Fatalf("idle cycle: %+v, %v", rep, err)
	}
	if got := counterValue(t, srv, "syncbackend_cycle_runs_total", "partial"); got != 1 {
		t.Fatalf("partial runs: %v", got)
	}
}

func counterValue(t *testing.T, srv *Server, name, label string) float64 {
	mfs, err := srv.Gatherer().Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			for _, m := range mf.GetMetric() {
				if label == "" {
					return m.GetCounter().GetValue()
				}
				for _, l := range m.GetLabel() {
					if l.GetValue() == label {
						return m.GetCounter().GetValue()
					}
				}
			}
		}
	}
	return 0
}

// TestConcurrentWrites: device writes racing with the backend's own
// changes never lose either: each loser gets a conflict and retries.
func TestConcurrentWrites(t *testing.T) {
	srv, _, group := newCycleTest(t, 1)
	ctx := context.Background()
	if _, err := srv.Cycle(ctx); err != nil {
		t.Fatal(err)
	}
	dev, _ := srv.st.Device(ctx, "d0")
	before, _ := srv.st.Group(ctx, group)
	var wg sync.WaitGroup
	for i := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				g, _ := srv.st.Group(ctx, group)
				b, _ := bundle.Parse(g.Bundle)
				// Re-upload as is: a no-op change that bumps the version.
				raw, _ := b.Marshal()
				_, err := srv.putBundle(ctx, dev, group, putBundle{Version: uint32(g.Version), Bundle: raw})
				if errors.Is(err, store.ErrConflict) {
					time.Sleep(time.Millisecond)
					continue
				}
				if err != nil {
					t.Error(i, err)
				}
				return
			}
		}()
	}
	wg.Wait()
	g, _ := srv.st.Group(ctx, group)
	if g.Version != before.Version+4 {
		t.Fatalf("group version %d after 4 writes from %d", g.Version, before.Version)
	}
}

// lossyFeed is a feed whose events were pruned before they were read.
type lossyFeed struct {
	*slotEscrowd
	missed uint64
}

func (f *lossyFeed) ListEvents(_ context.Context, after uint64, _ int) (EventPage, error) {
	if after >= 10 {
		return EventPage{Next: after, Last: 10}, nil
	}
	return EventPage{Next: 10, Missed: f.missed, Last: 10}, nil
}

// TestMissedEvents: when escrowd pruned events the backend never read, a
// key rotation may have gone unseen, so the next cycle re-seals every
// group's escrow slot to the newest key.
func TestMissedEvents(t *testing.T) {
	srv, esc, group := newCycleTest(t, 1)
	ctx := context.Background()
	if _, err := srv.Cycle(ctx); err != nil {
		t.Fatal(err)
	}
	esc.rotate(group) // the key_rotated event is among the lost ones
	srv.esc = &lossyFeed{slotEscrowd: esc, missed: 3}
	if _, err := srv.PollEvents(ctx); err != nil {
		t.Fatal(err)
	}
	rep, err := srv.Cycle(ctx)
	if err != nil || rep.Resealed != 1 {
		t.Fatalf("cycle after lost events: %+v, %v", rep, err)
	}
	g, _ := srv.st.Group(ctx, group)
	b, _ := bundle.Parse(g.Bundle)
	if es, _, err := escrowSlot(b, 1); err != nil || es.KeyVersion != 2 || g.EscrowKeyVersion != 2 || g.Reseal {
		t.Fatalf("after the re-seal: slot %+v, group at %d, reseal %v, %v", es, g.EscrowKeyVersion, g.Reseal, err)
	}
	if rep, err := srv.Cycle(ctx); err != nil || rep.Resealed != 0 {
		t.Fatalf("the next cycle: %+v, %v", rep, err)
	}
	if got := counterValue(t, srv, "syncbackend_events_missed_total", ""); got != 3 {
		t.Fatalf("missed events metric %v", got)
	}
}

// markEscrowd answers MarkUnlockCodeConsumed with err.
type markEscrowd struct {
	*slotEscrowd
	err error
}

func (m *markEscrowd) MarkUnlockCodeConsumed(context.Context, string, string, uint32, uint32) error {
	return m.err
}

// TestCodeConsumed: what a consumed-code report does, by what escrowd
// answers when the code is marked.
func TestCodeConsumed(t *testing.T) {
	srv, esc, group := newCycleTest(t, 1)
	ctx := context.Background()
	if _, err := srv.Cycle(ctx); err != nil { // ann's first epoch
		t.Fatal(err)
	}
	dev, _ := srv.st.Device(ctx, "d0")
	epoch := func() uint32 {
		g, _ := srv.st.Group(ctx, group)
		return g.Epochs["ann"]
	}
	for _, tc := range []struct {
		name      string
		mark      error
		report    consumed
		want      error
		epochNext uint32
	}{
		{"escrowd down: nothing recorded, try again", ErrEscrowdUnavailable, consumed{1, 0}, ErrEscrowdUnavailable, 1},
		{"an epoch never issued", nil, consumed{2, 0}, ErrBadRequest, 1},
		{"marked: a new epoch", nil, consumed{1, 0}, nil, 2},
		{"a code of an older epoch: recorded, no new epoch", nil, consumed{1, 1}, nil, 2},
		{"escrowd refuses (never revealed): a new epoch anyway", ErrEscrowdRefused, consumed{2, 1}, nil, 3},
	} {
		srv.esc = &markEscrowd{slotEscrowd: esc, err: tc.mark}
		before, _ := srv.st.Group(ctx, group)
		_, err := srv.codeConsumed(ctx, dev, group, tc.report)
		if !errors.Is(err, tc.want) || tc.want == nil && err != nil {
			t.Fatalf("%s: %v, want %v", tc.name, err, tc.want)
		}
		if got := epoch(); got != tc.epochNext {
			t.Fatalf("%s: epoch %d, want %d", tc.name, got, tc.epochNext)
		}
		after, _ := srv.st.Group(ctx, group)
		recorded := len(after.Reports) - len(before.Reports)
		if wantRec := map[bool]int{true: 1, false: 0}[err == nil]; recorded != wantRec {
			t.Fatalf("%s: %d reports recorded, want %d", tc.name, recorded, wantRec)
		}
		b, _ := bundle.Parse(after.Bundle)
		for _, s := range b.Slots {
			if s.Kind == bundle.KindUnlock && s.Unlock.Epoch != tc.epochNext {
				t.Fatalf("%s: an unlock slot of epoch %d next to epoch %d", tc.name, s.Unlock.Epoch, tc.epochNext)
			}
		}
		if len(after.NeedEpoch) != 0 {
			t.Fatalf("%s: users still waiting for an epoch: %v", tc.name, after.NeedEpoch)
		}
	}
}
