package hsm

import (
	"container/list"
	"crypto/sha256"
	"encoding/binary"
	"hash"
	"time"

	"github.com/miekg/pkcs11"
)

// Hot escrow keys. Unwrapping a group's escrow private key under the KEK
// is the most expensive step of a re-wrap (the PKCS#8 decoding of the key
// inside the token), and the sync backend re-wraps one group to several
// recipients in a row when a device joins or a GDK rotates. Each pooled
// session may therefore keep the escrow keys it unwrapped as session
// objects, at most Config.HotKeys of them, each for at most
// Config.HotKeyTTL after it was unwrapped, least recently used first out.
// The key stays a sensitive, non-extractable session object of this
// process inside the token: Go holds its handle, never its value. Every
// cached object is destroyed when the group's keys rotate or a version is
// destroyed (DropHotKeys), when the KEK in use changes, when the pool
// reconnects after a lost login or token, when its session closes, and
// when the HSM is closed. docs/HSM.md ("Hot escrow keys") gives the
// trade-off.

// hotKey names a wrapped escrow key: the same wrapped bytes under the same
// KEK version always unwrap to the same key.
type hotKey struct {
	kind KeyKind
	kek  uint32
	blob [32]byte // SHA-256 of the wrapped key
}

func hotKeyOf(kind KeyKind, w WrappedKey) hotKey {
	return hotKey{kind: kind, kek: w.KEKVersion, blob: sha256.Sum256(w.Blob)}
}

type hotEntry struct {
	key  hotKey
	o    pkcs11.ObjectHandle
	made time.Time
}

// hotHint is what an operation would like its session to keep: its
// escrow key, its opened slot (nil: nothing, or that cache is off).
type hotHint struct {
	key  *hotKey
	slot *hotSlot
}

// hotKeys is one pooled session's caches: escrow keys and opened slots.
// Only the goroutine holding the session uses it, or the pool with h.mu
// held while the session is idle.
type hotKeys struct {
	epoch     uint64 // h.hotEpoch when filled; older: flushed before use
	slotEpoch uint64 // h.slotEpoch when filled; older: slots flushed before use
	lru       *list.List
	m         map[hotKey]*list.Element
	slots     *list.List // of *slotEntry
	sm        map[hotSlot]*list.Element
}

func (h *HSM) newHotKeys() *hotKeys {
	return &hotKeys{epoch: h.hotEpoch.Load(), slotEpoch: h.slotEpoch.Load(), lru: list.New(), m: map[hotKey]*list.Element{},
		slots: list.New(), sm: map[hotSlot]*list.Element{}}
}

// hotOn reports whether escrow keys are kept.
func (h *HSM) hotOn() bool { return h.cfg.HotKeys > 0 }

// slotsOn reports whether opened slots are kept.
func (h *HSM) slotsOn() bool { return h.cfg.HotSlots > 0 }

// cachesOn reports whether sessions carry a cache at all.
func (h *HSM) cachesOn() bool { return h.hotOn() || h.slotsOn() }

// flush destroys every object of c on session sh (which the caller holds,
// or which is idle and h.mu held); it counts on p when p.n is set.
func (c *hotKeys) flush(p p11, sh pkcs11.SessionHandle) {
	for e := c.lru.Front(); e != nil; e = e.Next() {
		_ = p.DestroyObject(sh, e.Value.(*hotEntry).o)
	}
	c.lru.Init()
	clear(c.m)
	c.flushSlots(p, sh)
}

// flushSlots destroys every opened slot of c.
func (c *hotKeys) flushSlots(p p11, sh pkcs11.SessionHandle) {
	for e := c.slots.Front(); e != nil; e = e.Next() {
		e.Value.(*slotEntry).destroy(p, sh)
	}
	c.slots.Init()
	clear(c.sm)
}

// sync flushes what an invalidation since c was last used made stale:
// everything after DropHotKeys, a KEK change, a reconnection; the opened
// slots after a GDK rotation.
func (c *hotKeys) sync(h *HSM, p p11, sh pkcs11.SessionHandle) {
	if e := h.hotEpoch.Load(); c.epoch != e {
		c.flush(p, sh)
		c.epoch = e
	}
	if e := h.slotEpoch.Load(); c.slotEpoch != e {
		c.flushSlots(p, sh)
		c.slotEpoch = e
	}
}

// expire destroys the objects of c older than ttl.
func (c *hotKeys) expire(p p11, sh pkcs11.SessionHandle, now time.Time, ttl time.Duration) {
	for e := c.lru.Back(); e != nil; {
		prev := e.Prev()
		if en := e.Value.(*hotEntry); now.Sub(en.made) >= ttl {
			_ = p.DestroyObject(sh, en.o)
			delete(c.m, en.key)
			c.lru.Remove(e)
		}
		e = prev
	}
	for e := c.slots.Back(); e != nil; {
		prev := e.Prev()
		if en := e.Value.(*slotEntry); now.Sub(en.made) >= ttl {
			en.destroy(p, sh)
			delete(c.sm, en.key)
			c.slots.Remove(e)
		}
		e = prev
	}
}

// escrowKey returns the escrow private key of w as an object on s: a hot
// one, or one unwrapped now. release is to be called when the caller is
// done with it: it destroys an object the cache does not keep.
func (h *HSM) escrowKey(s session, kind KeyKind, w WrappedKey, op string) (o pkcs11.ObjectHandle, release func(), err error) {
	c := s.hot
	if c == nil || !h.hotOn() {
		o, err := h.unwrapUnderKEK(s, w, kind, op)
		if err != nil {
			return 0, nil, err
		}
		return o, func() { h.destroy(s, o) }, nil
	}
	now := time.Now()
	c.sync(h, s.p, s.h)
	k := hotKeyOf(kind, w)
	if el, ok := c.m[k]; ok {
		en := el.Value.(*hotEntry)
		if now.Sub(en.made) < h.cfg.HotKeyTTL {
			c.lru.MoveToFront(el)
			return en.o, func() {}, nil
		}
		h.destroy(s, en.o)
		delete(c.m, k)
		c.lru.Remove(el)
	}
	o, err = h.unwrapUnderKEK(s, w, kind, op)
	if err != nil {
		return 0, nil, err
	}
	for c.lru.Len() >= h.cfg.HotKeys {
		old := c.lru.Back()
		en := old.Value.(*hotEntry)
		h.destroy(s, en.o)
		delete(c.m, en.key)
		c.lru.Remove(old)
	}
	c.m[k] = c.lru.PushFront(&hotEntry{key: k, o: o, made: now})
	return o, func() {}, nil
}

// DropHotKeys destroys every hot escrow key and every opened slot: the
// ones of idle sessions now, the ones of sessions in use when their
// operation ends. Call it when a group's escrow key is rotated or a key
// version destroyed, so that no unwrapped copy of a retired key, nor a GDK
// opened with one, outlives the act by more than the operations already
// running.
func (h *HSM) DropHotKeys() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.dropHotLocked()
}

// dropHotLocked invalidates every cache and flushes the idle sessions'.
func (h *HSM) dropHotLocked() {
	e := h.hotEpoch.Add(1)
	if h.disconnected {
		return
	}
	p := p11{ctx: h.mod.ctx, n: new(int)}
	for _, sh := range h.idle {
		if c := h.hot[sh]; c != nil {
			c.flush(p, sh)
			c.epoch = e
		}
	}
}

// dropHotSlots destroys every opened slot (idle sessions now, the others
// when their operation ends), keeping the escrow keys: a GDK rotation
// retires the GDK the group's slots hold.
func (h *HSM) dropHotSlots() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.slotEpoch.Add(1)
	if h.disconnected || h.closed {
		return
	}
	p := p11{ctx: h.mod.ctx, n: new(int)}
	for _, sh := range h.idle {
		if c := h.hot[sh]; c != nil {
			c.sync(h, p, sh)
		}
	}
}

// sweepHot destroys the expired hot keys of idle sessions: a key's
// lifetime is bounded by the TTL even when no operation comes.
func (h *HSM) sweepHot() {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed || h.disconnected || h.reiniting {
		return
	}
	p := p11{ctx: h.mod.ctx, n: new(int)}
	now := time.Now()
	e := h.hotEpoch.Load()
	for _, sh := range h.idle {
		c := h.hot[sh]
		if c == nil {
			continue
		}
		if c.epoch != e {
			c.flush(p, sh)
			c.epoch = e
			continue
		}
		c.sync(h, p, sh)
		c.expire(p, sh, now, h.cfg.HotKeyTTL)
	}
}

// sweeper runs sweepHot every half TTL until stop is closed.
func (h *HSM) sweeper(stop <-chan struct{}) {
	t := time.NewTicker(max(h.cfg.HotKeyTTL/2, 10*time.Millisecond))
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
			h.sweepHot()
		}
	}
}

// Hot slots. Every re-wrap of an escrow slot opens it: on ecdh-p256 two
// ECDH and KDF derivations in the token, the GDK's unwrap, its binding key
// and the checks of the slot's commitment and binding (16 of a re-wrap's
// 21 PKCS#11 calls, and most of its CPU on SoftHSM). A join burst sends
// the same slot for each new recipient. So a session may keep, after the
// checks passed, the GDK it opened and its binding key as session
// objects, at most Config.HotSlots of them, each for at most
// Config.HotKeyTTL after it was opened: a later re-wrap of the very same
// slot bytes, with the very same escrow key, seals to its targets at once.
// The opening and its checks are deterministic functions of those bytes:
// what they accepted once they accept again, and any other slot (another
// group, version, kind, recipient, tampered byte, or escrow key) has
// another digest and is opened and checked in full. The objects are the
// ones a re-wrap makes anyway (gdkTemplate: sensitive, extractable only by
// wrapping, which sealing to a target needs; the binding key sensitive and
// not extractable): Go holds their handles and the slot's public
// commitment, never a key. They are dropped with the hot escrow keys (every
// invalidation above) and on a GDK rotation. docs/HSM.md ("Hot slots")
// gives the trade-off.

// hotSlot is the SHA-256 of everything opening a slot reads: the suite,
// the escrow key (its KEK version and wrapped bytes, its public key), the
// wrapped GDK, the ephemeral key, and the slot's context and binding.
type hotSlot [32]byte

func hotSlotOf(src Source) hotSlot {
	d := sha256.New()
	d.Write([]byte("escrowd hot slot v1\x00"))
	lp(d, []byte(src.Suite))
	var v [4]byte
	binary.BigEndian.PutUint32(v[:], src.EscrowPrivate.KEKVersion)
	d.Write(v[:])
	lp(d, src.EscrowPrivate.Blob)
	lp(d, src.EscrowPublicDER)
	lp(d, src.Wrapped)
	lp(d, src.EPK)
	if src.Context != nil {
		d.Write([]byte{1})
		lp(d, src.Context.Message())
		lp(d, src.Bind)
	} else {
		d.Write([]byte{0})
	}
	var k hotSlot
	d.Sum(k[:0])
	return k
}

// lp writes b to d prefixed by its length: no two field lists hash alike.
func lp(d hash.Hash, b []byte) {
	var n [8]byte
	binary.BigEndian.PutUint64(n[:], uint64(len(b)))
	d.Write(n[:])
	d.Write(b)
}

// slotEntry is an opened, verified slot: its GDK, the GDK's binding key,
// and the commitment checked (nil for a slot without context).
type slotEntry struct {
	key     hotSlot
	gdk, kb pkcs11.ObjectHandle
	commit  []byte
	made    time.Time
}

func (en *slotEntry) destroy(p p11, sh pkcs11.SessionHandle) {
	_ = p.DestroyObject(sh, en.kb)
	_ = p.DestroyObject(sh, en.gdk)
}

// openedSlot returns the opened slot k on s, if s keeps it and it is
// younger than the TTL.
func (h *HSM) openedSlot(s session, k *hotSlot) *slotEntry {
	c := s.hot
	if k == nil || c == nil || !h.slotsOn() {
		return nil
	}
	c.sync(h, s.p, s.h)
	el, ok := c.sm[*k]
	if !ok {
		return nil
	}
	en := el.Value.(*slotEntry)
	if time.Since(en.made) < h.cfg.HotKeyTTL {
		c.slots.MoveToFront(el)
		return en
	}
	en.destroy(s.p, s.h)
	delete(c.sm, *k)
	c.slots.Remove(el)
	return nil
}

// keepSlot keeps the opened and verified slot k on s and reports whether
// it did: if not, the caller destroys gdk and kb.
func (h *HSM) keepSlot(s session, k *hotSlot, gdk, kb pkcs11.ObjectHandle, commit []byte) bool {
	c := s.hot
	if k == nil || c == nil || !h.slotsOn() {
		return false
	}
	c.sync(h, s.p, s.h)
	if el, ok := c.sm[*k]; ok { // cannot happen: looked up first
		el.Value.(*slotEntry).destroy(s.p, s.h)
		c.slots.Remove(el)
		delete(c.sm, *k)
	}
	for c.slots.Len() >= h.cfg.HotSlots {
		old := c.slots.Back()
		en := old.Value.(*slotEntry)
		en.destroy(s.p, s.h)
		delete(c.sm, en.key)
		c.slots.Remove(old)
	}
	c.sm[*k] = c.slots.PushFront(&slotEntry{key: *k, gdk: gdk, kb: kb, commit: commit, made: time.Now()})
	return true
}

// preferredLocked is the index in h.idle of the session to hand out for
// hint: the last one keeping its slot, else the last one keeping its
// escrow key, else -1 (the last idle one).
func (h *HSM) preferredLocked(hint hotHint) int {
	if hint.slot == nil && hint.key == nil {
		return -1
	}
	key := -1
	for i := len(h.idle) - 1; i >= 0; i-- {
		c := h.hot[h.idle[i]]
		if c == nil {
			continue
		}
		if hint.slot != nil && c.sm[*hint.slot] != nil {
			return i
		}
		if key < 0 && hint.key != nil && c.m[*hint.key] != nil {
			key = i
		}
	}
	return key
}
