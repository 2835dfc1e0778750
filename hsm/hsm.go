// Package hsm keeps escrowd's group keys inside a PKCS#11 token.
//
// It is the only package of escrowd that talks PKCS#11 (through
// github.com/miekg/pkcs11); no PKCS#11 type appears in its API.
//
// The token holds one master key-encryption key (KEK) per version: an
// AES-256 token object, trusted and never extractable. Group keys (escrow
// RSA key pairs, unlock HMAC keys) are generated as session objects, leave
// the token only wrapped under the KEK (AES-KWP) and are unwrapped into
// short-lived session objects to be used. See docs/HSM.md.
package hsm

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/miekg/pkcs11"
)

// CurrentKEKVersion is the master KEK version `escrowctl hsm init` makes
// first. An open HSM wraps new keys under the newest KEK version it found
// on the token (or the one UseKEK chose): see HSM.CurrentKEK.
const CurrentKEKVersion uint32 = 1

// HSM is an open token: a bounded pool of logged-in sessions and the
// handle of the master KEK. It is safe for concurrent use.
type HSM struct {
	cfg Config
	mod *module

	sem chan struct{} // one token per checked-out session

	mu       sync.Mutex
	anchor   pkcs11.SessionHandle // holds the login; never used for operations
	slot     uint
	keks     map[uint32]kekSet // KEK handles by version; replaced, never mutated
	current  uint32            // KEK version new keys are wrapped under
	idle     []pkcs11.SessionHandle
	closed   bool
	inflight int
	done     bool // resources released

	// Recovery (see recover). disconnected: the anchor and the idle
	// sessions are gone (closed, or dead with the module's previous
	// initialisation) and the pool must connect again before use.
	// reiniting: the module is being re-initialised; drained wakes it
	// when the last checked-out session comes back.
	disconnected bool
	reiniting    bool
	drained      *sync.Cond
	lastReinit   time.Time

	closeOnce sync.Once
	closeErr  error

	unsupported sync.Map // Suite -> error, suites found unsupported

	calls CallObserver // cfg.Observer, when it counts calls too

	// Hot escrow keys (hot.go): the caches of idle sessions, by session;
	// a checked-out session carries its own. hotEpoch counts
	// invalidations: a cache filled before the last one is flushed before
	// use.
	hot       map[pkcs11.SessionHandle]*hotKeys
	hotEpoch  atomic.Uint64
	slotEpoch atomic.Uint64 // counts GDK rotations: hot slots flushed
	stopSweep chan struct{}
}

// Open loads the module, finds the token, logs the user in and finds the
// master KEK versions (once; the handles are kept, never looked up per
// operation). Only a KEK fit to be one is used (see KEKState): an object
// carrying a KEK label that is not trusted, is modifiable or has another
// unwrap template is ignored, and reported by KEKStates. New keys go under
// the oldest usable version until UseKEK says otherwise: switching KEKs is
// the operator's act (a kek-rotation job), never a side effect of an
// object appearing on the token. Open fails if no version is usable, or if
// a version is a public KEK and Config.AllowPublicKEK is not set.
func Open(cfg Config) (*HSM, error) {
	cfg = cfg.withDefaults()
	if cfg.TokenLabel == "" {
		return nil, fmt.Errorf("hsm: open: %w: no token label configured", ErrInvalidInput)
	}
	mod, err := acquireModule(cfg.Module)
	if err != nil {
		return nil, err
	}
	h := &HSM{cfg: cfg, mod: mod, sem: make(chan struct{}, cfg.Sessions)}
	h.calls, _ = cfg.Observer.(CallObserver)
	s, slot, keks, err := h.connect()
	if err != nil {
		mod.forgetUnusedLogin(cfg.TokenLabel)
		mod.release()
		return nil, err
	}
	mod.holdLogin(cfg.TokenLabel)
	h.anchor, h.slot, h.keks, h.current = s, slot, keks, oldest(keks)
	h.hot = map[pkcs11.SessionHandle]*hotKeys{}
	if h.cachesOn() {
		h.stopSweep = make(chan struct{})
		go h.sweeper(h.stopSweep)
	}
	return h, nil
}

// connect finds the token, opens the anchor session, logs in and finds
// every KEK version. The anchor session stays open for the life of the pool: in PKCS#11
// closing the last session of a token logs the user out and (SoftHSM)
// invalidates every object handle, the KEK's included, so the pool closing
// a broken session must never be closing the last one.
func (h *HSM) connect() (pkcs11.SessionHandle, uint, map[uint32]kekSet, error) {
	slot, err := h.mod.findToken(h.cfg.TokenLabel)
	if err != nil {
		return 0, 0, nil, err
	}
	s, err := h.mod.ctx.OpenSession(slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
	if err != nil {
		return 0, 0, nil, wrapErr("open session", err)
	}
	if err := h.mod.loginUser(s, h.cfg.TokenLabel, h.cfg.PIN); err != nil {
		_ = h.mod.ctx.CloseSession(s)
		return 0, 0, nil, err
	}
	keks, _, err := openKEKs(h.mod.ctx, s, h.cfg.KEKLabel, h.cfg.AllowPublicKEK)
	if err != nil {
		_ = h.mod.ctx.CloseSession(s)
		return 0, 0, nil, err
	}
	return s, slot, keks, nil
}

// oldest is the lowest version of keks: the KEK Open wraps new keys under
// until the operator chooses another (UseKEK).
func oldest(keks map[uint32]kekSet) uint32 {
	v := ^uint32(0)
	for k := range keks {
		v = min(v, k)
	}
	return v
}

func findObjects(ctx *pkcs11.Ctx, s pkcs11.SessionHandle, tmpl []*pkcs11.Attribute) ([]pkcs11.ObjectHandle, error) {
	if err := ctx.FindObjectsInit(s, tmpl); err != nil {
		return nil, wrapErr("find objects", err)
	}
	var all []pkcs11.ObjectHandle
	for {
		hs, _, err := ctx.FindObjects(s, 256)
		if err != nil {
			_ = ctx.FindObjectsFinal(s)
			return nil, wrapErr("find objects", err)
		}
		if len(hs) == 0 {
			break
		}
		all = append(all, hs...)
	}
	if err := ctx.FindObjectsFinal(s); err != nil {
		return nil, wrapErr("find objects", err)
	}
	return all, nil
}

// Close closes the pool's sessions and releases the module. Operations in
// flight finish; later ones fail with ErrClosed. Close is idempotent.
func (h *HSM) Close() error {
	h.closeOnce.Do(func() {
		h.mu.Lock()
		h.closed = true
		if h.stopSweep != nil {
			close(h.stopSweep)
		}
		// Closing a session destroys its objects, hot keys included.
		for _, s := range h.idle {
			_ = h.mod.ctx.CloseSession(s)
		}
		h.idle = nil
		clear(h.hot)
		h.hotEpoch.Add(1)
		if !h.disconnected {
			_ = h.mod.ctx.CloseSession(h.anchor)
		}
		h.finishLocked()
		h.mu.Unlock()
	})
	return h.closeErr
}

// finishLocked releases the module once closed and idle.
func (h *HSM) finishLocked() {
	if !h.closed || h.inflight > 0 || h.done {
		return
	}
	h.done = true
	h.mod.dropLogin(h.cfg.TokenLabel)
	h.mod.release()
}

// session is a checked-out session, with the KEK handles as they were when
// it was checked out.
type session struct {
	h          pkcs11.SessionHandle
	kekVersion uint32            // the current KEK version
	keks       map[uint32]kekSet // read only
	p          p11               // the module, counting this checkout's calls
	hot        *hotKeys          // this session's hot escrow keys; nil: off
}

// kek is the current KEK of kind's class.
func (s session) kek(kind KeyKind) (pkcs11.ObjectHandle, error) {
	c, err := classOf(kind)
	if err != nil {
		return 0, err
	}
	set, ok := s.keks[s.kekVersion]
	if !ok {
		return 0, fmt.Errorf("hsm: %w: master KEK version %d", ErrKEKNotFound, s.kekVersion)
	}
	return set.h[c], nil
}

// acquire checks a session out of the pool, waiting at most WaitTimeout.
func (h *HSM) acquire(ctx context.Context) (session, error) {
	return h.acquireFor(ctx, hotHint{})
}

// acquireFor is acquire preferring, among idle sessions, one that keeps
// the hint's opened slot, else one that keeps its escrow key: re-wraps of
// one slot or group in a row then find it whichever session the last one
// ran on.
func (h *HSM) acquireFor(ctx context.Context, hint hotHint) (session, error) {
	if err := ctx.Err(); err != nil {
		return session{}, fmt.Errorf("hsm: %w: %w", ErrUnavailable, err)
	}
	h.mu.Lock()
	closed := h.closed
	h.mu.Unlock()
	if closed {
		return session{}, fmt.Errorf("hsm: %w", ErrClosed)
	}
	select {
	case h.sem <- struct{}{}:
	default:
		// Only a caller that has to wait is observed: the fast path stays
		// free of clock reads.
		start := time.Now()
		t := time.NewTimer(h.cfg.WaitTimeout)
		defer t.Stop()
		select {
		case h.sem <- struct{}{}:
			h.cfg.Observer.ObserveSessionWait(time.Since(start), true)
		case <-t.C:
			h.cfg.Observer.ObserveSessionWait(time.Since(start), false)
			return session{}, fmt.Errorf("hsm: %w: no session free after %s (pool size %d)", ErrUnavailable, h.cfg.WaitTimeout, h.cfg.Sessions)
		case <-ctx.Done():
			h.cfg.Observer.ObserveSessionWait(time.Since(start), false)
			return session{}, fmt.Errorf("hsm: %w: waiting for a session: %w", ErrUnavailable, ctx.Err())
		}
	}
	h.mu.Lock()
	if h.closed || h.reiniting || h.disconnected {
		var err error
		switch {
		case h.closed:
			err = fmt.Errorf("hsm: %w", ErrClosed)
		case h.reiniting:
			err = errReiniting
		default:
			err = errDisconnected
		}
		h.mu.Unlock()
		<-h.sem
		return session{}, err
	}
	h.inflight++
	keks, cur := h.keks, h.current
	if n := len(h.idle); n > 0 {
		if i := h.preferredLocked(hint); i >= 0 {
			h.idle[i], h.idle[n-1] = h.idle[n-1], h.idle[i]
		}
		s := h.idle[n-1]
		h.idle = h.idle[:n-1]
		hot := h.hot[s]
		delete(h.hot, s)
		if hot == nil && h.cachesOn() {
			hot = h.newHotKeys()
		}
		h.mu.Unlock()
		return session{h: s, kekVersion: cur, keks: keks, p: h.counted(), hot: hot}, nil
	}
	slot := h.slot
	h.mu.Unlock()
	// Sessions opened after the login share it (login is per token).
	s, err := h.mod.ctx.OpenSession(slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
	if err != nil {
		h.mu.Lock()
		h.inflight--
		h.finishLocked()
		h.mu.Unlock()
		<-h.sem
		return session{}, wrapErr("open session", err)
	}
	var hot *hotKeys
	if h.cachesOn() {
		hot = h.newHotKeys()
	}
	return session{h: s, kekVersion: cur, keks: keks, p: h.counted(), hot: hot}, nil
}

// counted is the module with a fresh call counter.
func (h *HSM) counted() p11 { return p11{ctx: h.mod.ctx, n: new(int)} }

// release returns s to the pool, or closes it if broken (never return a
// broken session to the pool) or if the pool is closed or full.
func (h *HSM) release(s session, broken bool) {
	h.mu.Lock()
	h.inflight--
	if broken || h.closed || h.disconnected || len(h.idle) >= h.cfg.Sessions {
		// Its objects, hot keys included, die with it.
		_ = h.mod.ctx.CloseSession(s.h)
	} else {
		if s.hot != nil {
			s.hot.sync(h, s.p, s.h)
			h.hot[s.h] = s.hot
		}
		h.idle = append(h.idle, s.h)
	}
	if h.inflight == 0 && h.drained != nil {
		h.drained.Broadcast()
	}
	h.finishLocked()
	h.mu.Unlock()
	<-h.sem
}

// recover rebuilds the pool after the token lost our sessions, login or
// KEK handle: drop every idle session, find the token again (its slot may
// have changed), open a session, log in, find the KEKs again. When the
// token cannot be found, the module is re-initialised (at most once per
// reinitInterval, and only if this HSM value is its only user) and the
// token looked for once more: a module such as SoftHSM finds a token that
// went away and came back only then. Its error wraps ErrUnavailable.
func (h *HSM) recover() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return fmt.Errorf("hsm: %w", ErrClosed)
	}
	if h.reiniting {
		return errReiniting
	}
	err := h.reconnectLocked()
	if err != nil && tokenMissing(err) && h.reinitLocked() {
		err = h.reconnectLocked()
	}
	if err != nil {
		return fmt.Errorf("hsm: recover: %w: %w", ErrUnavailable, err)
	}
	return nil
}

// reinitInterval bounds how often recovery re-initialises the module while
// the token stays away.
const reinitInterval = time.Second

// reconnectLocked closes the pool's idle sessions and anchor (unless they
// are gone already) and connects again.
func (h *HSM) reconnectLocked() error {
	if !h.disconnected {
		for _, s := range h.idle {
			_ = h.mod.ctx.CloseSession(s)
		}
		_ = h.mod.ctx.CloseSession(h.anchor)
	}
	h.idle = nil
	clear(h.hot)
	h.hotEpoch.Add(1) // sessions in use: their hot keys are flushed on return
	h.disconnected = true
	s, slot, keks, err := h.connect()
	if err != nil {
		return err
	}
	h.anchor, h.slot, h.keks, h.disconnected = s, slot, keks, false
	if _, ok := keks[h.current]; !ok {
		// Never switch KEKs behind the operator's back.
		return fmt.Errorf("hsm: recover: %w: master KEK version %d, the one new keys go under, is no longer usable on the token", ErrKEKNotFound, h.current)
	}
	return nil
}

// reinitLocked re-initialises the module once every checked-out session
// has come back (waiting at most WaitTimeout; new checkouts fail
// meanwhile). It reports whether it did: then every handle of the pool is
// gone.
func (h *HSM) reinitLocked() bool {
	if time.Since(h.lastReinit) < reinitInterval {
		return false
	}
	h.lastReinit = time.Now()
	if h.drained == nil {
		h.drained = sync.NewCond(&h.mu)
	}
	h.reiniting = true
	defer func() { h.reiniting = false }()
	deadline := time.Now().Add(h.cfg.WaitTimeout)
	t := time.AfterFunc(h.cfg.WaitTimeout, func() {
		h.mu.Lock()
		h.drained.Broadcast()
		h.mu.Unlock()
	})
	defer t.Stop()
	for h.inflight > 0 && !h.closed && time.Now().Before(deadline) {
		h.drained.Wait()
	}
	if h.inflight > 0 || h.closed || !h.mod.reinit() {
		return false
	}
	h.idle, h.disconnected = nil, true
	clear(h.hot)
	h.hotEpoch.Add(1)
	return true
}

// tokenMissing reports whether connecting failed because the module does
// not see the token (or is not initialised).
func tokenMissing(err error) bool {
	if errors.Is(err, ErrTokenNotFound) {
		return true
	}
	code, ok := ckrCode(err)
	if !ok {
		return false
	}
	switch code {
	case pkcs11.CKR_CRYPTOKI_NOT_INITIALIZED, pkcs11.CKR_TOKEN_NOT_PRESENT, pkcs11.CKR_DEVICE_REMOVED,
		pkcs11.CKR_SLOT_ID_INVALID, pkcs11.CKR_TOKEN_NOT_RECOGNIZED:
		return true
	}
	return false
}

// errDisconnected: the pool lost its sessions and has not connected again;
// recoverable. errReiniting: the module is being re-initialised.
var (
	errDisconnected = fmt.Errorf("%w: not connected to the token", ErrUnavailable)
	errReiniting    = fmt.Errorf("hsm: %w: the module is being re-initialised", ErrUnavailable)
)

// do runs fn on a pooled session. If fn (or getting a session) fails in a
// way that means the session, login or KEK handle is gone, the pool is
// rebuilt and fn retried once. op names the operation to the Observer.
func (h *HSM) do(ctx context.Context, op string, fn func(s session) error) (err error) {
	return h.doFor(ctx, op, hotHint{}, fn)
}

// doFor is do on a session that keeps the hint's slot or escrow key, if
// one is idle.
func (h *HSM) doFor(ctx context.Context, op string, hint hotHint, fn func(s session) error) (err error) {
	start := time.Now()
	calls := 0
	defer func() {
		h.cfg.Observer.ObserveHSMOp(op, time.Since(start), err)
		if h.calls != nil {
			h.calls.ObserveHSMCalls(op, calls, err)
		}
	}()
	for attempt := 0; ; attempt++ {
		s, err := h.acquireFor(ctx, hint)
		if err == nil {
			err = fn(s)
			calls += *s.p.n
			// A session whose operation failed in the module is closed, not
			// pooled: besides lost sessions, this drops any half-made object
			// a failed call left (SoftHSM leaks the new object when an
			// unwrap fails on its template).
			_, failed := ckrCode(err)
			h.release(s, failed)
		}
		if err == nil || !recoverable(err) {
			return err
		}
		// The session, login or a handle is gone: the HSM is unavailable
		// unless recovery brings it back.
		if attempt > 0 {
			return fmt.Errorf("hsm: %w after recovery: %w", ErrUnavailable, err)
		}
		if rerr := h.recover(); rerr != nil {
			return fmt.Errorf("%w (%w)", err, rerr)
		}
	}
}

// Healthy is a cheap liveness check: a pooled session reports a logged-in
// user state, and the current master KEK's handle still names an object.
// The second half matters: a token that went away (SoftHSM: its directory
// removed) leaves the session looking logged in while every operation
// fails. A lost session, login or handle is recovered once, as for any
// operation; when recovery fails the HSM is unhealthy.
func (h *HSM) Healthy(ctx context.Context) error {
	return h.do(ctx, OpHealthy, func(s session) error {
		info, err := s.p.GetSessionInfo(s.h)
		if err != nil {
			return wrapErr("session info", err)
		}
		if info.State != pkcs11.CKS_RW_USER_FUNCTIONS && info.State != pkcs11.CKS_RO_USER_FUNCTIONS {
			return errNotLoggedIn
		}
		kek, err := s.kek(KeyUnlock)
		if err != nil {
			return err
		}
		if _, err := s.p.GetAttributeValue(s.h, kek, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_CLASS, nil)}); err != nil {
			return wrapErr("read master KEK", err)
		}
		return nil
	})
}

func attrBool(a *pkcs11.Attribute) bool { return len(a.Value) == 1 && a.Value[0] != 0 }

// attrUint decodes a CK_ULONG attribute (native byte order).
func attrUint(a *pkcs11.Attribute) uint {
	switch len(a.Value) {
	case 8:
		return uint(binary.NativeEndian.Uint64(a.Value))
	case 4:
		return uint(binary.NativeEndian.Uint32(a.Value))
	}
	return ^uint(0)
}
