package hsm

import (
	"context"
	"fmt"
	"maps"

	"github.com/miekg/pkcs11"
)

// Master KEK versions. The token holds, per version, one KEK object per
// key class (KEKLabel+"-<class>-vN", see keyClass); a WrappedKey names the
// version it needs, its kind the class. Rotation:
// the SO makes version N+1 (InitKEKVersion), the daemon wraps new keys
// under it (UseKEK) and re-wraps every stored key from the old version to
// the new one inside the token (RewrapKEK); once no stored key names the
// old version, DestroyKEK removes it.

// KeyKind says which kind of group key a wrapped key holds.
type KeyKind int

const (
	// KeyEscrow is an escrow private key (RSA, PKCS#8 inside AES-KWP).
	KeyEscrow KeyKind = iota + 1
	// KeyUnlock is an unlock key (32-byte generic secret).
	KeyUnlock
	// KeyEscrowEC is an ecdh-p256 escrow private key (P-256, PKCS#8 inside
	// AES-KWP). It is its own kind because an unwrap template must name the
	// key type: unwrapping an EC key with an RSA template fails.
	KeyEscrowEC
)

func (k KeyKind) String() string {
	switch k {
	case KeyEscrow:
		return "escrow key"
	case KeyUnlock:
		return "unlock key"
	case KeyEscrowEC:
		return "EC escrow key"
	}
	return fmt.Sprintf("KeyKind(%d)", int(k))
}

// kekFor returns KEK version v, looking it up on the token (once) if this
// HSM value has not seen it yet: another process may have made it after
// Open.
func (h *HSM) kekFor(s session, v uint32) (kekSet, error) {
	if k, ok := s.keks[v]; ok {
		return k, nil
	}
	h.mu.Lock()
	k, ok := h.keks[v]
	h.mu.Unlock()
	if ok {
		return k, nil
	}
	k, _, err := lookupKEKSet(h.mod.ctx, s.h, h.cfg.KEKLabel, v, h.cfg.AllowPublicKEK)
	if err != nil {
		return kekSet{}, fmt.Errorf("hsm: KEK version %d: %w", v, err)
	}
	h.mu.Lock()
	next := maps.Clone(h.keks)
	next[v] = k
	h.keks = next
	h.mu.Unlock()
	return k, nil
}

// CurrentKEK is the KEK version new keys are wrapped under.
func (h *HSM) CurrentKEK() uint32 {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.current
}

// KEKVersions lists the usable KEK versions on the token now, ascending.
func (h *HSM) KEKVersions(ctx context.Context) ([]uint32, error) {
	states, err := h.KEKStates(ctx)
	if err != nil {
		return nil, err
	}
	var out []uint32
	for _, st := range states {
		if st.Usable {
			out = append(out, st.Version)
		}
	}
	return out, nil
}

// KEKStates describes every KEK version on the token now, usable or not,
// ascending: what the daemon logs at start and an operator acts on.
func (h *HSM) KEKStates(ctx context.Context) ([]KEKState, error) {
	var out []KEKState
	err := h.do(ctx, OpKEKVersions, func(s session) error {
		var err error
		_, out, err = scanKEKs(h.mod.ctx, s.h, h.cfg.KEKLabel, h.cfg.AllowPublicKEK)
		return err
	})
	return out, err
}

// UseKEK makes KEK version v, which must be on the token and usable, the
// one new keys are wrapped under.
func (h *HSM) UseKEK(ctx context.Context, v uint32) error {
	err := h.do(ctx, OpUseKEK, func(s session) error {
		_, err := h.kekFor(s, v)
		return err
	})
	if err != nil {
		return err
	}
	h.mu.Lock()
	h.current = v
	h.dropHotLocked()
	h.mu.Unlock()
	return nil
}

// RewrapKEK re-wraps a stored group key from the KEK version it names to
// KEK version to, inside the token: the key is unwrapped under its class's
// KEK into a session object (extractable only under trusted keys: the
// class template), wrapped under the class's KEK of version to and
// destroyed. A key already under to is returned as is.
func (h *HSM) RewrapKEK(ctx context.Context, kind KeyKind, w WrappedKey, to uint32) (WrappedKey, error) {
	c, err := classOf(kind)
	if err != nil {
		return WrappedKey{}, fmt.Errorf("hsm: rewrap under KEK: %w", err)
	}
	if err := checkWrapped(w, kind.String()); err != nil {
		return WrappedKey{}, err
	}
	if w.KEKVersion == to {
		return w, nil
	}
	var out WrappedKey
	err = h.do(ctx, OpRewrapKEK, func(s session) error {
		dst, err := h.kekFor(s, to)
		if err != nil {
			return err
		}
		o, err := h.unwrapUnderKEK(s, w, kind, "unwrap "+kind.String()+" for KEK rotation")
		if err != nil {
			return err
		}
		defer h.destroy(s, o)
		blob, err := s.p.WrapKey(s.h, kwp, dst.h[c], o)
		if err != nil {
			return wrapErr(fmt.Sprintf("wrap %s under KEK version %d", kind, to), err)
		}
		out = WrappedKey{KEKVersion: to, Blob: blob}
		return nil
	})
	if err != nil {
		return WrappedKey{}, err
	}
	return out, nil
}

// CheckKey unwraps a stored group key as the daemon does to use it, and
// destroys it: nil means the key opens.
func (h *HSM) CheckKey(ctx context.Context, kind KeyKind, w WrappedKey) error {
	if err := checkWrapped(w, kind.String()); err != nil {
		return err
	}
	return h.do(ctx, OpCheckKey, func(s session) error {
		var (
			o   pkcs11.ObjectHandle
			err error
		)
		switch kind {
		case KeyEscrow:
			o, err = h.unwrapEscrowPrivate(s, w)
		case KeyEscrowEC:
			o, err = h.unwrapEscrowEC(s, w)
		case KeyUnlock:
			o, err = h.unwrapUnlock(s, w)
		default:
			return fmt.Errorf("hsm: check key: %w: %v", ErrInvalidInput, kind)
		}
		if err != nil {
			return err
		}
		h.destroy(s, o)
		return nil
	})
}

// DestroyKEK destroys KEK version v (every class's KEK) on the token. Every key wrapped under
// it becomes unopenable, for good: call it only once no stored key names
// v. The current version cannot be destroyed.
func (h *HSM) DestroyKEK(ctx context.Context, v uint32) error {
	if v == h.CurrentKEK() {
		return fmt.Errorf("hsm: destroy KEK: %w: version %d is the current KEK", ErrInvalidInput, v)
	}
	err := h.do(ctx, OpDestroyKEK, func(s session) error {
		set, _, err := lookupKEKSet(h.mod.ctx, s.h, h.cfg.KEKLabel, v, h.cfg.AllowPublicKEK)
		if err != nil {
			return fmt.Errorf("hsm: KEK version %d: %w", v, err)
		}
		for c := range numClasses {
			if c > 0 && set.legacy {
				break
			}
			if err := s.p.DestroyObject(s.h, set.h[c]); err != nil {
				return wrapErr(fmt.Sprintf("destroy KEK version %d", v), err)
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	h.mu.Lock()
	next := maps.Clone(h.keks)
	delete(next, v)
	h.keks = next
	h.dropHotLocked()
	h.mu.Unlock()
	return nil
}
