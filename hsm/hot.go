package hsm

import (
	"container/list"
	"crypto/sha256"
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

// hotKeys is one pooled session's cache. Only the goroutine holding the
// session uses it, or the pool with h.mu held while the session is idle.
type hotKeys struct {
	epoch uint64 // h.hotEpoch when filled; older: flushed before use
	lru   *list.List
	m     map[hotKey]*list.Element
}

func newHotKeys(epoch uint64) *hotKeys {
	return &hotKeys{epoch: epoch, lru: list.New(), m: map[hotKey]*list.Element{}}
}

// hotOn reports whether escrow keys are kept.
func (h *HSM) hotOn() bool { return h.cfg.HotKeys > 0 }

// flush destroys every object of c on session sh (which the caller holds,
// or which is idle and h.mu held); it counts on p when p.n is set.
func (c *hotKeys) flush(p p11, sh pkcs11.SessionHandle) {
	for e := c.lru.Front(); e != nil; e = e.Next() {
		_ = p.DestroyObject(sh, e.Value.(*hotEntry).o)
	}
	c.lru.Init()
	clear(c.m)
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
}

// escrowKey returns the escrow private key of w as an object on s: a hot
// one, or one unwrapped now. release is to be called when the caller is
// done with it: it destroys an object the cache does not keep.
func (h *HSM) escrowKey(s session, kind KeyKind, w WrappedKey, op string) (o pkcs11.ObjectHandle, release func(), err error) {
	c := s.hot
	if c == nil {
		o, err := h.unwrapUnderKEK(s, w, kind, op)
		if err != nil {
			return 0, nil, err
		}
		return o, func() { h.destroy(s, o) }, nil
	}
	now := time.Now()
	if e := h.hotEpoch.Load(); c.epoch != e {
		c.flush(s.p, s.h)
		c.epoch = e
	}
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

// DropHotKeys destroys every hot escrow key: the ones of idle sessions
// now, the ones of sessions in use when their operation ends. Call it
// when a group's escrow key is rotated or a key version destroyed, so that
// no unwrapped copy of a retired key outlives the act by more than the
// operations already running.
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
