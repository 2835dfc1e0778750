package hsm

import (
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"

	"github.com/miekg/pkcs11"
)

// A PKCS#11 module may be C_Initialize'd once per process. The registry
// keeps one initialised *pkcs11.Ctx per module path, shared by every HSM
// value and setup helper, and finalises it when its last user releases it.
var registry = struct {
	sync.Mutex
	mods map[string]*module
}{mods: make(map[string]*module)}

type module struct {
	key  string // registry key: resolved path
	ctx  *pkcs11.Ctx
	refs int  // guarded by registry
	owns bool // we called C_Initialize (so we call C_Finalize)

	mu     sync.Mutex
	logins map[string]*tokenLogin // by token label
}

// tokenLogin records the user login of one token by this process. Login is
// per application and per token in PKCS#11: a second C_Login answers
// CKR_USER_ALREADY_LOGGED_IN without checking the PIN, so a later Open with
// a different PIN is checked against the digest of the PIN that logged in.
type tokenLogin struct {
	refs      int
	pinDigest [32]byte
}

func moduleKey(path string) (string, error) {
	if path == "" {
		return "", fmt.Errorf("hsm: load module: %w: no module path configured", ErrModule)
	}
	if _, err := os.Stat(path); err != nil {
		return "", fmt.Errorf("hsm: load module %q: %w: %v", path, ErrModule, errors.Unwrap(err))
	}
	key, err := filepath.Abs(path)
	if err != nil {
		return "", fmt.Errorf("hsm: load module %q: %w: %v", path, ErrModule, err)
	}
	if r, err := filepath.EvalSymlinks(key); err == nil {
		key = r
	}
	return key, nil
}

// acquireModule loads and initialises the module at path, or takes another
// reference to it if this process has it already.
func acquireModule(path string) (*module, error) {
	key, err := moduleKey(path)
	if err != nil {
		return nil, err
	}
	registry.Lock()
	defer registry.Unlock()
	if m, ok := registry.mods[key]; ok {
		m.refs++
		return m, nil
	}
	ctx := pkcs11.New(key)
	if ctx == nil {
		return nil, fmt.Errorf("hsm: load module %q: %w: not a loadable PKCS#11 library", path, ErrModule)
	}
	owns := true
	if err := ctx.Initialize(); err != nil {
		if code, _ := ckrCode(err); code != pkcs11.CKR_CRYPTOKI_ALREADY_INITIALIZED {
			ctx.Destroy()
			return nil, &ckrError{op: "initialise module " + path, code: code, sentinel: ErrModule}
		}
		owns = false // someone else in this process initialised it
	}
	m := &module{key: key, ctx: ctx, refs: 1, owns: owns, logins: make(map[string]*tokenLogin)}
	registry.mods[key] = m
	return m, nil
}

// release drops a reference; the last one finalises the module.
func (m *module) release() {
	registry.Lock()
	defer registry.Unlock()
	m.refs--
	if m.refs > 0 {
		return
	}
	delete(registry.mods, m.key)
	if m.owns {
		_ = m.ctx.Finalize()
	}
	m.ctx.Destroy()
}

// findToken returns the slot of the initialised token labelled label.
func (m *module) findToken(label string) (uint, error) {
	slots, err := m.ctx.GetSlotList(true)
	if err != nil {
		return 0, wrapErr("list slots", err)
	}
	for _, s := range slots {
		ti, err := m.ctx.GetTokenInfo(s)
		if err != nil {
			continue
		}
		if ti.Flags&pkcs11.CKF_TOKEN_INITIALIZED != 0 && ti.Label == label {
			return s, nil
		}
	}
	return 0, fmt.Errorf("hsm: %w: no initialised token labelled %q", ErrTokenNotFound, label)
}

// loginUser logs the user in through session s, or checks pin against the
// login this process already holds on the token.
func (m *module) loginUser(s pkcs11.SessionHandle, label, pin string) error {
	digest := sha256.Sum256([]byte(pin))
	err := m.ctx.Login(s, pkcs11.CKU_USER, pin)
	m.mu.Lock()
	defer m.mu.Unlock()
	tl := m.logins[label]
	switch code, _ := ckrCode(err); {
	case err == nil:
		if tl == nil {
			tl = &tokenLogin{}
			m.logins[label] = tl
		}
		tl.pinDigest = digest
		return nil
	case code == pkcs11.CKR_USER_ALREADY_LOGGED_IN:
		if tl != nil && subtle.ConstantTimeCompare(tl.pinDigest[:], digest[:]) != 1 {
			return &ckrError{op: "login (token already logged in by this process with another PIN)", code: code, sentinel: ErrPINIncorrect}
		}
		return nil
	default:
		return wrapErr("login", err)
	}
}

// holdLogin and dropLogin count the HSM values using a token's login.
func (m *module) holdLogin(label string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if tl := m.logins[label]; tl != nil {
		tl.refs++
	}
}

func (m *module) dropLogin(label string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if tl := m.logins[label]; tl != nil {
		tl.refs--
		if tl.refs <= 0 {
			delete(m.logins, label)
		}
	}
}

// forgetUnusedLogin drops the login record of a token no HSM value holds
// (after a failed Open).
func (m *module) forgetUnusedLogin(label string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if tl := m.logins[label]; tl != nil && tl.refs <= 0 {
		delete(m.logins, label)
	}
}

// reinit finalises the module and initialises it again, so that it looks
// for tokens anew: SoftHSM, for one, reads its token directory only at
// C_Initialize, so a token that went away and came back is found only
// then. Every session and object handle of the module dies with it, so it
// refuses (false) unless the caller's HSM value is the module's only user
// in this process, and unless this package initialised the module. The
// caller must hold no session. After a true return the module may still
// be uninitialised (C_Initialize failed): the caller's next recovery
// tries again.
func (m *module) reinit() bool {
	registry.Lock()
	defer registry.Unlock()
	if m.refs != 1 || !m.owns {
		return false
	}
	_ = m.ctx.Finalize()
	_ = m.ctx.Initialize()
	return true
}
