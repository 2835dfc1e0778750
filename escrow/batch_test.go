package escrow

import (
	"bytes"
	"context"
	"crypto/ecdh"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"path/filepath"
	"sync"
	"testing"

	"github.com/escrowd/escrowd/escrow/bundle"
	"github.com/escrowd/escrowd/escrow/device"
	"github.com/escrowd/escrowd/hsm"
	"github.com/escrowd/escrowd/store/bolt"
)

// sealingHSM records the targets of every RewrapSlot call and seals
// placeholders: what BatchRewrap hands the HSM is under test, not the HSM.
type sealingHSM struct {
	droppingHSM
	mu    sync.Mutex
	calls [][]string // the recipient ids of each call
}

func (f *sealingHSM) RewrapSlot(_ context.Context, src hsm.Source, ts []hsm.Target) ([]hsm.Sealed, error) {
	eph, err := ecdh.P256().GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	var ids []string
	out := make([]hsm.Sealed, len(ts))
	for i, t := range ts {
		ids = append(ids, t.Context.ID)
		out[i] = hsm.Sealed{Wrapped: bytes.Repeat([]byte{1}, 40), EPK: eph.PublicKey().Bytes(),
			Commit: bytes.Repeat([]byte{2}, 32), Bind: bytes.Repeat([]byte{3}, 32)}
	}
	f.mu.Lock()
	f.calls = append(f.calls, ids)
	f.mu.Unlock()
	return out, nil
}

// TestBatchRewrapOneCallPerSlot: a batch's re-wraps of one escrow slot to
// several recipients reach the HSM as one RewrapSlot call (the slot is
// opened once), other items each as their own; results keep item order;
// and when the shared call fails, each item is done on its own, so one
// bad recipient fails only its item.
func TestBatchRewrapOneCallPerSlot(t *testing.T) {
	ctx := context.Background()
	st, err := bolt.Open(filepath.Join(t.TempDir(), "s.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	h := &sealingHSM{}
	s, err := New(h, st, Config{})
	if err != nil {
		t.Fatal(err)
	}
	pub, err := s.Provision(ctx, "g", "")
	if err != nil {
		t.Fatal(err)
	}
	seal := func() []byte {
		gdk := make([]byte, 32)
		rand.Read(gdk)
		b, err := device.SealEscrow(pub.PublicKey, device.To{Group: "g", GDKVersion: 1, KeyVersion: 1}, pub.Suite, gdk)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	slotA, slotB := seal(), seal()
	member := func(id string) *Recipient {
		k, _ := ecdh.P256().GenerateKey(rand.Reader)
		der, _ := x509.MarshalPKIXPublicKey(k.PublicKey())
		return &Recipient{Kind: bundle.KindMember, ID: id, KeyVersion: 1, Suite: bundle.SuiteECDHP256, PublicKey: der}
	}
	items := []BatchItem{
		{Ref: "0", Group: "g", EscrowSlot: slotA, Recipient: member("m1")},
		{Ref: "1", Group: "g", EscrowSlot: slotA, Recipient: member("m2")},
		{Ref: "2", Group: "g", EscrowSlot: slotB, Recipient: member("m3")},
		{Ref: "3", Group: "g", EscrowSlot: slotA}, // to the group's escrow key
		{Ref: "4", Group: "g", EscrowSlot: slotA, Recipient: member("m4")},
	}
	res, err := s.BatchRewrap(ctx, items)
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range res {
		if r.Ref != items[i].Ref || r.Err != nil || len(r.Slot) == 0 || r.Used.EscrowVersion != 1 {
			t.Errorf("result %d: ref %q, err %v, %d bytes, used %+v", i, r.Ref, r.Err, len(r.Slot), r.Used)
		}
	}
	if sl, err := bundle.ParseSlot(res[4].Slot); err != nil || sl.ID != "m4" {
		t.Errorf("item 4's slot: %+v, %v; want m4's", sl, err)
	}
	got := map[string]bool{}
	for _, c := range h.calls {
		got[string(bytes.Join(toBytes(c), []byte(",")))] = true
	}
	for _, want := range []string{"m1,m2,m4", "m3", ""} {
		if !got[want] {
			t.Errorf("RewrapSlot calls %q, want one with recipients %q", h.calls, want)
		}
	}
	if len(h.calls) != 3 {
		t.Errorf("%d RewrapSlot calls %q, want 3", len(h.calls), h.calls)
	}

	// One bad recipient in a run: the shared call fails, every item is
	// done on its own.
	h.calls = nil
	bad := member("m6")
	bad.KeyVersion = 0
	res, err = s.BatchRewrap(ctx, []BatchItem{
		{Ref: "a", Group: "g", EscrowSlot: slotA, Recipient: member("m5")},
		{Ref: "b", Group: "g", EscrowSlot: slotA, Recipient: bad},
	})
	if err != nil {
		t.Fatal(err)
	}
	if res[0].Err != nil || len(res[0].Slot) == 0 {
		t.Errorf("the good item: %v", res[0].Err)
	}
	if !errors.Is(res[1].Err, ErrInvalid) {
		t.Errorf("the bad item: %v, want ErrInvalid", res[1].Err)
	}
	if len(h.calls) != 1 || len(h.calls[0]) != 1 || h.calls[0][0] != "m5" {
		t.Errorf("RewrapSlot calls %q, want only m5's", h.calls)
	}
}

func toBytes(ss []string) [][]byte {
	out := make([][]byte, len(ss))
	for i, s := range ss {
		out[i] = []byte(s)
	}
	return out
}
