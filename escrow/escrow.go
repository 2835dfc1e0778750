// Package escrow performs escrowd's operations on a group's keys: provision
// them, re-wrap a group data key (GDK) from the group's escrow slot to a
// member or device, issue unlock-code slots and reveal codes.
//
// Every key operation happens in the HSM; this package decides which keys
// and which versions, checks what callers send, and keeps the store's
// state consistent. It does not audit or authorise: the daemon does both
// around every call, so that denied requests are audited too.
package escrow

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"errors"
	"fmt"
	"time"

	"github.com/escrowd/escrowd/escrow/bundle"
	"github.com/escrowd/escrowd/escrow/unlockcode"
	"github.com/escrowd/escrowd/format"
	"github.com/escrowd/escrowd/hsm"
	"github.com/escrowd/escrowd/store"
)

// Sentinel errors; the daemon maps each to a gRPC status code.
var (
	// ErrInvalid: the request is malformed; the message says which field.
	ErrInvalid = errors.New("invalid request")
	// ErrNotFound: the group does not exist.
	ErrNotFound = errors.New("group not found")
	// ErrExists: the group is provisioned already.
	ErrExists = errors.New("group already provisioned")
	// ErrKeyVersion: the slot names a key version the group does not have.
	ErrKeyVersion = errors.New("unknown key version")
	// ErrSlot: the escrow slot does not open under the group's escrow key.
	ErrSlot = errors.New("escrow slot does not open with the group's escrow key")
	// ErrBinding: the escrow slot opens, but it is not the slot made for
	// this group and GDK version: its GDK does not match its commitment or
	// its binding does not verify (moved, relabelled, altered, or holding a
	// substituted key).
	ErrBinding = errors.New("escrow slot is not bound to this group and GDK version")
	// ErrNoCodes: no unlock codes were issued for the user.
	ErrNoCodes = errors.New("no unlock codes issued for this user")
	// ErrExhausted: every code of the user's epoch has been revealed; the
	// sync backend must issue a new epoch.
	ErrExhausted = errors.New("every unlock code of this epoch has been revealed")
	// ErrStale: the request names an epoch that is no longer current.
	ErrStale = errors.New("stale epoch")
	// ErrNotRevealed: a code reported used was never revealed: it leaked or
	// was guessed.
	ErrNotRevealed = errors.New("unlock code reported used but never revealed")
	// ErrConflict: a concurrent request changed the state; retry.
	ErrConflict = errors.New("concurrent update, retry")
	// ErrUnsupported: the HSM cannot do what the suite needs (SoftHSM and
	// rsa-oaep-sha256).
	ErrUnsupported = errors.New("not supported by this HSM")
	// ErrUnavailable: the HSM or the store cannot serve now.
	ErrUnavailable = errors.New("key service unavailable")
	// ErrRetired: the key version is below the group's minimum decryption
	// version; the message names the versions.
	ErrRetired = errors.New("key version retired")
	// ErrDestroyed: the key version was crypto-shredded and can never be
	// opened again.
	ErrDestroyed = errors.New("key version destroyed")
	// ErrPrecondition: the state does not allow the operation (destroying
	// a version still in use, a KEK still needed); the message says why.
	ErrPrecondition = errors.New("operation not allowed in this state")
)

// HSM is what escrow needs of the hsm package.
type HSM interface {
	GenerateEscrowKey(ctx context.Context, suite hsm.Suite) (publicKeyDER []byte, private hsm.WrappedKey, err error)
	GenerateUnlockKey(ctx context.Context) (hsm.WrappedKey, error)
	HMAC(ctx context.Context, key hsm.WrappedKey, msg []byte) ([]byte, error)
	RewrapSlot(ctx context.Context, src hsm.Source, targets []hsm.Target) ([]hsm.Sealed, error)
	Rotate(ctx context.Context, src hsm.Source, chain *format.SlotContext, targets []hsm.Target) (hsm.Sealed, []hsm.Sealed, error)
}

// Config tunes the service; zero values take the defaults.
type Config struct {
	// DefaultSuite is the escrow key suite of new groups: ecdh-p256 unless
	// set (a P-256 pair costs milliseconds in SoftHSM, RSA-3072 about a
	// second; see docs/FORMAT.md).
	DefaultSuite string
	// CodesPerEpoch defaults to 5.
	CodesPerEpoch int
	// UnlockIterations is the PBKDF2 count of unlock slots; at least
	// bundle.MinUnlockIterations.
	UnlockIterations int
}

const (
	defaultCodes = 5
	maxCodes     = 20
)

// Service is safe for concurrent use.
type Service struct {
	hsm   HSM
	store store.Store
	cfg   Config
	now   func() time.Time
}

// New returns a service over an opened HSM and store.
func New(h HSM, s store.Store, cfg Config) (*Service, error) {
	if cfg.DefaultSuite == "" {
		cfg.DefaultSuite = DefaultSuite
	}
	if !bundle.PublicKeySuite(cfg.DefaultSuite) {
		return nil, fmt.Errorf("escrow: unknown default suite %q", cfg.DefaultSuite)
	}
	if cfg.CodesPerEpoch == 0 {
		cfg.CodesPerEpoch = defaultCodes
	}
	if cfg.CodesPerEpoch < 1 || cfg.CodesPerEpoch > maxCodes {
		return nil, fmt.Errorf("escrow: codes per epoch %d outside 1 to %d", cfg.CodesPerEpoch, maxCodes)
	}
	if cfg.UnlockIterations == 0 {
		cfg.UnlockIterations = bundle.MinUnlockIterations
	}
	if cfg.UnlockIterations < bundle.MinUnlockIterations || cfg.UnlockIterations > bundle.MaxIterations {
		return nil, fmt.Errorf("escrow: unlock iterations %d outside %d to %d", cfg.UnlockIterations, bundle.MinUnlockIterations, bundle.MaxIterations)
	}
	return &Service{hsm: h, store: s, cfg: cfg, now: time.Now}, nil
}

// DefaultSuite is the escrow key suite of new groups when Config leaves it
// empty.
const DefaultSuite = bundle.SuiteECDHP256

var suiteList = bundle.SuiteECDHP256 + ", " + bundle.SuiteRSAOAEPSHA1 + ", " + bundle.SuiteRSAOAEPSHA256

// EscrowPublic is a group's escrow public key, as devices need it.
type EscrowPublic struct {
	Group     string
	Version   uint32
	Suite     string
	PublicKey []byte // PKIX DER
}

// Provision generates a group's keys in the HSM and stores them wrapped.
func (s *Service) Provision(ctx context.Context, group, suite string) (EscrowPublic, error) {
	if err := checkID("group_id", group); err != nil {
		return EscrowPublic{}, err
	}
	if suite == "" {
		suite = s.cfg.DefaultSuite
	}
	if !bundle.PublicKeySuite(suite) {
		return EscrowPublic{}, fmt.Errorf("%w: suite %q is not one of %s", ErrInvalid, suite, suiteList)
	}
	// RSA key generation takes about a second; refuse early when the group
	// exists. CreateGroup checks again inside its transaction.
	if _, err := s.store.Group(ctx, group); err == nil {
		return EscrowPublic{}, fmt.Errorf("%w: %s", ErrExists, group)
	} else if !errors.Is(err, store.ErrNotFound) {
		return EscrowPublic{}, storeErr(err)
	}
	pub, priv, err := s.hsm.GenerateEscrowKey(ctx, hsm.Suite(suite))
	if err != nil {
		return EscrowPublic{}, hsmErr(err)
	}
	unlock, err := s.hsm.GenerateUnlockKey(ctx)
	if err != nil {
		return EscrowPublic{}, hsmErr(err)
	}
	now := s.now().UTC()
	g := store.Group{
		ID: group, Created: now,
		Escrow: []store.EscrowKey{{Version: 1, Suite: suite, PublicKey: pub, Private: storeKey(priv), Created: now}},
		Unlock: []store.UnlockKey{{Version: 1, Key: storeKey(unlock), Created: now}},
	}
	if err := s.store.CreateGroup(ctx, g); err != nil {
		if errors.Is(err, store.ErrExists) {
			return EscrowPublic{}, fmt.Errorf("%w: %s", ErrExists, group)
		}
		return EscrowPublic{}, storeErr(err)
	}
	return EscrowPublic{Group: group, Version: 1, Suite: suite, PublicKey: pub}, nil
}

// EscrowKey returns the group's newest escrow public key.
func (s *Service) EscrowKey(ctx context.Context, group string) (EscrowPublic, error) {
	g, err := s.group(ctx, group)
	if err != nil {
		return EscrowPublic{}, err
	}
	k, ok := g.LatestEscrow()
	if !ok {
		return EscrowPublic{}, fmt.Errorf("%w: group %s has no escrow key", ErrNotFound, group)
	}
	return EscrowPublic{Group: group, Version: k.Version, Suite: k.Suite, PublicKey: k.PublicKey}, nil
}

// Group returns the group's stored record (wrapped keys included).
func (s *Service) Group(ctx context.Context, group string) (store.Group, error) {
	return s.group(ctx, group)
}

// Recipient is a member or device public key.
type Recipient struct {
	Kind       bundle.Kind // KindMember or KindDevice
	ID         string
	KeyVersion uint32
	Suite      string
	PublicKey  []byte // PKIX DER: RSA 2048 to 4096 bits, or P-256 for ecdh-p256
}

// Used reports the key versions an operation used, for the audit record.
type Used struct {
	EscrowVersion uint32
	UnlockVersion uint32
	// TargetEscrowVersion is the escrow key version a slot was wrapped to.
	TargetEscrowVersion uint32
}

// Rewrap opens escrowSlot in the HSM and wraps its GDK to r.
func (s *Service) Rewrap(ctx context.Context, group string, escrowSlot []byte, r Recipient) ([]byte, Used, error) {
	if err := checkRecipient(r); err != nil {
		return nil, Used{}, err
	}
	_, src, key, err := s.escrowSlot(ctx, group, escrowSlot)
	if err != nil {
		return nil, Used{}, err
	}
	used := Used{EscrowVersion: key.Version}
	t := r.target(group, src.Context.GDKVersion)
	out, err := s.hsm.RewrapSlot(ctx, src, []hsm.Target{t})
	if err != nil {
		return nil, used, hsmErr(err)
	}
	b, err := encodeSealed(t.Context, out[0])
	return b, used, err
}

// RewrapMany is Rewrap to several recipients: escrowSlot is opened in
// the HSM once and its GDK wrapped to each, in order. Any failure fails
// the whole call.
func (s *Service) RewrapMany(ctx context.Context, group string, escrowSlot []byte, rs []Recipient) ([][]byte, Used, error) {
	if len(rs) == 0 {
		return nil, Used{}, fmt.Errorf("%w: no recipients", ErrInvalid)
	}
	for _, r := range rs {
		if err := checkRecipient(r); err != nil {
			return nil, Used{}, err
		}
	}
	_, src, key, err := s.escrowSlot(ctx, group, escrowSlot)
	if err != nil {
		return nil, Used{}, err
	}
	used := Used{EscrowVersion: key.Version}
	ts := make([]hsm.Target, len(rs))
	for i, r := range rs {
		ts[i] = r.target(group, src.Context.GDKVersion)
	}
	out, err := s.hsm.RewrapSlot(ctx, src, ts)
	if err != nil {
		return nil, used, hsmErr(err)
	}
	slots := make([][]byte, len(out))
	for i := range out {
		if slots[i], err = encodeSealed(ts[i].Context, out[i]); err != nil {
			return nil, used, err
		}
	}
	return slots, used, nil
}

// target is r as an HSM target whose output slot holds GDK gdkVersion of
// group: the HSM computes the slot's commitment and binding.
func (r Recipient) target(group string, gdkVersion uint32) hsm.Target {
	return hsm.Target{PublicKeyDER: r.PublicKey, Suite: hsm.Suite(r.Suite), Context: &format.SlotContext{
		Kind: string(r.Kind), Suite: r.Suite, Group: group, GDKVersion: gdkVersion, KeyVersion: r.KeyVersion, ID: r.ID}}
}

// encodeSealed encodes the slot of context c around what the HSM sealed.
func encodeSealed(c *format.SlotContext, out hsm.Sealed) ([]byte, error) {
	sl := bundle.Slot{Kind: bundle.Kind(c.Kind), Suite: c.Suite, Group: c.Group, GDKVersion: c.GDKVersion, KeyVersion: c.KeyVersion,
		ID: c.ID, EPK: out.EPK, Check: c.Check, Commit: out.Commit, Wrapped: out.Wrapped, Bind: out.Bind}
	if c.Salt != nil {
		sl.KDF = &bundle.KDF{Salt: c.Salt, Iterations: c.Iterations}
	}
	if c.Kind == string(bundle.KindUnlock) {
		sl.Unlock = &bundle.Unlock{Epoch: c.Epoch, Index: c.Index}
	}
	b, err := sl.Marshal()
	if err != nil {
		return nil, fmt.Errorf("escrow: failed to encode the %s slot: %w", c.Kind, err)
	}
	return b, nil
}

// RewrapToEscrow opens escrowSlot and wraps its GDK to the group's newest
// escrow key version, giving the group's new escrow slot. version names
// the version the caller expects (0: the newest); any other version than
// the newest is refused with ErrKeyVersion, so a caller working from a
// stale key list learns it.
func (s *Service) RewrapToEscrow(ctx context.Context, group string, escrowSlot []byte, version uint32) ([]byte, Used, error) {
	g, src, key, err := s.escrowSlot(ctx, group, escrowSlot)
	if err != nil {
		return nil, Used{}, err
	}
	newest, _ := g.LatestEscrow()
	if version != 0 && version != newest.Version {
		return nil, Used{EscrowVersion: key.Version}, fmt.Errorf("%w: escrow key version %d is not the newest of group %s (%d)", ErrKeyVersion, version, group, newest.Version)
	}
	used := Used{EscrowVersion: key.Version, TargetEscrowVersion: newest.Version}
	t := escrowRecipient(newest).target(group, src.Context.GDKVersion)
	out, err := s.hsm.RewrapSlot(ctx, src, []hsm.Target{t})
	if err != nil {
		return nil, used, hsmErr(err)
	}
	b, err := encodeSealed(t.Context, out[0])
	return b, used, err
}

func escrowRecipient(k store.EscrowKey) Recipient {
	return Recipient{Kind: bundle.KindEscrow, KeyVersion: k.Version, Suite: k.Suite, PublicKey: k.PublicKey}
}

// Issued is a new unlock-code epoch.
type Issued struct {
	Epoch uint32
	Slots [][]byte
	Used  Used
}

// IssueCodes starts a new epoch of unlock codes for user: each code's slot
// holds the GDK from escrowSlot wrapped under a key derived from the code.
// The codes themselves are not returned; support reveals them one by one.
func (s *Service) IssueCodes(ctx context.Context, group, user string, escrowSlot []byte, n int) (Issued, error) {
	if err := checkID("user_id", user); err != nil {
		return Issued{}, err
	}
	if n == 0 {
		n = s.cfg.CodesPerEpoch
	}
	if n < 1 || n > maxCodes {
		return Issued{}, fmt.Errorf("%w: count %d outside 1 to %d", ErrInvalid, n, maxCodes)
	}
	g, src, escrowKey, err := s.escrowSlot(ctx, group, escrowSlot)
	if err != nil {
		return Issued{}, err
	}
	unlockKey, ok := g.LatestUnlock()
	if !ok {
		return Issued{}, fmt.Errorf("%w: group %s has no unlock key", ErrNotFound, group)
	}
	used := Used{EscrowVersion: escrowKey.Version, UnlockVersion: unlockKey.Version}
	prev, err := s.currentEpoch(ctx, group, user)
	if err != nil {
		return Issued{}, err
	}
	pending, err := s.prepareCodes(ctx, group, user, src.Context.GDKVersion, prev+1, n, unlockKey)
	if err != nil {
		return Issued{}, err
	}
	defer pending.clear()
	out, err := s.hsm.RewrapSlot(ctx, src, pending.targets)
	if err != nil {
		return Issued{}, hsmErr(err)
	}
	slots, err := pending.slots(out)
	if err != nil {
		return Issued{}, err
	}
	if err := s.startEpoch(ctx, pending); err != nil {
		return Issued{}, err
	}
	return Issued{Epoch: pending.epoch, Used: used, Slots: slots}, nil
}

func (s *Service) currentEpoch(ctx context.Context, group, user string) (uint32, error) {
	switch cur, err := s.store.Codes(ctx, group, user); {
	case err == nil:
		return cur.Epoch, nil
	case !errors.Is(err, store.ErrNoEpoch):
		return 0, storeErr(err)
	}
	return 0, nil
}

// pendingCodes is a new epoch whose slots are being made: one AES-KW
// target per code, derived from the code in daemon memory and cleared.
type pendingCodes struct {
	group, user   string
	epoch         uint32
	nonce         []byte // the epoch's, bound into every code of it
	unlockVersion uint32
	iterations    int
	targets       []hsm.Target
	salts         [][]byte
}

func (p *pendingCodes) clear() {
	for _, t := range p.targets {
		clear(t.AESKey)
	}
}

// prepareCodes draws the epoch's nonce, derives the n codes of epoch in the
// HSM and their slot keys; the slots will hold GDK gdkVersion.
func (s *Service) prepareCodes(ctx context.Context, group, user string, gdkVersion, epoch uint32, n int, unlockKey store.UnlockKey) (*pendingCodes, error) {
	p := &pendingCodes{group: group, user: user, epoch: epoch, unlockVersion: unlockKey.Version, iterations: s.cfg.UnlockIterations,
		nonce: make([]byte, format.CodeNonceSize), targets: make([]hsm.Target, n), salts: make([][]byte, n)}
	if _, err := rand.Read(p.nonce); err != nil {
		return nil, fmt.Errorf("escrow: crypto/rand failed: %w", err)
	}
	for i := range n {
		code, err := s.deriveCode(ctx, group, user, epoch, uint32(i), p.nonce, unlockKey)
		if err != nil {
			p.clear()
			return nil, err
		}
		p.salts[i] = make([]byte, bundle.SaltSize)
		if _, err := rand.Read(p.salts[i]); err != nil {
			p.clear()
			return nil, fmt.Errorf("escrow: crypto/rand failed: %w", err)
		}
		secret := code.Secret()
		key, err := format.PasswordKey(secret, p.salts[i], s.cfg.UnlockIterations)
		clear(secret)
		code.Clear()
		if err != nil {
			p.clear()
			return nil, fmt.Errorf("escrow: failed to derive an unlock slot key: %w", err)
		}
		p.targets[i] = hsm.Target{AESKey: key, Context: &format.SlotContext{
			Kind: string(bundle.KindUnlock), Suite: bundle.SuitePBKDF2AESKW, Group: group, GDKVersion: gdkVersion,
			KeyVersion: unlockKey.Version, ID: user, Salt: p.salts[i], Iterations: uint32(s.cfg.UnlockIterations),
			Epoch: epoch, Index: uint32(i), Check: format.CheckValue(key)}}
	}
	return p, nil
}

// slots encodes the unlock slots around what the HSM wrapped.
func (p *pendingCodes) slots(wrapped []hsm.Sealed) ([][]byte, error) {
	out := make([][]byte, len(wrapped))
	for i, w := range wrapped {
		var err error
		if out[i], err = encodeSealed(p.targets[i].Context, w); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// start is p as the store starts it.
func (p *pendingCodes) start() store.EpochStart {
	return store.EpochStart{User: p.user, PrevEpoch: p.epoch - 1, UnlockVersion: p.unlockVersion, Codes: len(p.targets), Nonce: p.nonce}
}

// startEpoch records the new epoch: only now does it exist, and the old
// codes die with this write.
func (s *Service) startEpoch(ctx context.Context, p *pendingCodes) error {
	if _, err := s.store.StartEpoch(ctx, p.group, p.user, p.epoch-1, p.unlockVersion, len(p.targets), p.nonce); err != nil {
		if errors.Is(err, store.ErrConflict) {
			return fmt.Errorf("%w: codes for %s were issued concurrently", ErrConflict, p.user)
		}
		return storeErr(err)
	}
	return nil
}

// Revealed is a code handed to support. Clear it once sent.
type Revealed struct {
	Code      unlockcode.Code
	Epoch     uint32
	Index     uint32
	Remaining int
	Used      Used
}

// RevealCode marks the user's next code revealed in the store and returns
// it. The code is derived in the HSM before it is claimed, so an HSM that
// cannot serve refuses the reveal (ErrUnavailable) and burns nothing; the
// claim waits for the gate in ctx (WithGate), so a reveal whose intent
// cannot be audited burns nothing either. If
// anything fails after the mark, that code is burnt: it is never returned,
// and never returned twice.
func (s *Service) RevealCode(ctx context.Context, group, user string) (Revealed, error) {
	if err := checkID("user_id", user); err != nil {
		return Revealed{}, err
	}
	g, err := s.group(ctx, group)
	if err != nil {
		return Revealed{}, err
	}
	cur, err := s.store.Codes(ctx, group, user)
	switch {
	case errors.Is(err, store.ErrNoEpoch):
		return Revealed{}, fmt.Errorf("%w: user %s", ErrNoCodes, user)
	case err != nil:
		return Revealed{}, storeErr(err)
	}
	// Refuse before claiming whatever would fail after the claim: a
	// refused reveal must not burn a code.
	next := nextUnrevealed(&cur)
	if next < 0 {
		return Revealed{}, fmt.Errorf("%w: user %s", ErrExhausted, user)
	}
	uk, err := s.epochKey(&g, &cur)
	if err != nil {
		return Revealed{}, err
	}
	code, err := s.deriveCode(ctx, group, user, cur.Epoch, uint32(next), cur.Nonce, uk)
	if err != nil {
		return Revealed{}, err
	}
	// The claim is the reveal's change of state: it waits for the gate
	// (the intent's audit record), which ran alongside the derivation.
	if err := PassGate(ctx); err != nil {
		code.Clear()
		return Revealed{}, err
	}
	i, c, err := s.store.ClaimCode(ctx, group, user)
	switch {
	case errors.Is(err, store.ErrNoEpoch):
		err = fmt.Errorf("%w: user %s", ErrNoCodes, user)
	case errors.Is(err, store.ErrExhausted):
		err = fmt.Errorf("%w: user %s", ErrExhausted, user)
	case err != nil:
		err = storeErr(err)
	}
	if err != nil {
		code.Clear()
		return Revealed{}, err
	}
	if i != next || c.Epoch != cur.Epoch || c.UnlockVersion != cur.UnlockVersion || !bytes.Equal(c.Nonce, cur.Nonce) {
		// A concurrent reveal took the code, or a new epoch started, between
		// the read and the claim: derive the code that was claimed.
		code.Clear()
		if uk, err = s.epochKey(&g, &c); err != nil {
			return Revealed{}, err
		}
		if code, err = s.deriveCode(ctx, group, user, c.Epoch, uint32(i), c.Nonce, uk); err != nil {
			return Revealed{}, err
		}
	}
	return Revealed{Code: code, Epoch: c.Epoch, Index: uint32(i), Remaining: c.Remaining(), Used: Used{UnlockVersion: uk.Version}}, nil
}

// nextUnrevealed is the index ClaimCode will claim next, or -1.
func nextUnrevealed(c *store.Codes) int {
	for i, r := range c.Revealed {
		if !r {
			return i
		}
	}
	return -1
}

// epochKey returns the unlock key version the codes of epoch c derive
// from, if it may be used and the epoch has a nonce.
func (s *Service) epochKey(g *store.Group, c *store.Codes) (store.UnlockKey, error) {
	if len(c.Nonce) != format.CodeNonceSize {
		return store.UnlockKey{}, fmt.Errorf("%w: epoch %d of user %s was issued before epochs had a nonce: issue the user a new epoch", ErrPrecondition, c.Epoch, c.User)
	}
	uk, ok := g.UnlockVersion(c.UnlockVersion)
	if !ok {
		return store.UnlockKey{}, fmt.Errorf("%w: unlock key version %d", ErrKeyVersion, c.UnlockVersion)
	}
	if err := usableUnlock(g, uk); err != nil {
		return store.UnlockKey{}, err
	}
	return uk, nil
}

// Codes returns the user's code state (never the codes).
func (s *Service) Codes(ctx context.Context, group, user string) (store.Codes, error) {
	if err := checkID("user_id", user); err != nil {
		return store.Codes{}, err
	}
	if _, err := s.group(ctx, group); err != nil {
		return store.Codes{}, err
	}
	c, err := s.store.Codes(ctx, group, user)
	if errors.Is(err, store.ErrNoEpoch) {
		return c, fmt.Errorf("%w: user %s", ErrNoCodes, user)
	}
	if err != nil {
		return c, storeErr(err)
	}
	return c, nil
}

// deriveCode computes code index of (group, user, epoch) in the HSM; nonce
// is the epoch's.
func (s *Service) deriveCode(ctx context.Context, group, user string, epoch, index uint32, nonce []byte, uk store.UnlockKey) (unlockcode.Code, error) {
	mac, err := s.hsm.HMAC(ctx, hsmKey(uk.Key), format.CodeMessage(group, user, epoch, index, nonce))
	if err != nil {
		return unlockcode.Code{}, hsmErr(err)
	}
	defer clear(mac)
	return unlockcode.FromMaterial(index, mac)
}

// escrowSlot reads the group and parses the caller's escrow slot, checking
// it names one of the group's escrow key versions with its suite. It
// returns what the HSM needs to open it.
func (s *Service) escrowSlot(ctx context.Context, group string, raw []byte) (store.Group, hsm.Source, store.EscrowKey, error) {
	g, err := s.group(ctx, group)
	if err != nil {
		return g, hsm.Source{}, store.EscrowKey{}, err
	}
	slot, err := bundle.ParseSlot(raw)
	if err != nil {
		return g, hsm.Source{}, store.EscrowKey{}, fmt.Errorf("%w: escrow_slot: %w", ErrInvalid, err)
	}
	if slot.Kind != bundle.KindEscrow {
		return g, hsm.Source{}, store.EscrowKey{}, fmt.Errorf("%w: escrow_slot is a %s slot", ErrInvalid, slot.Kind)
	}
	if slot.Group != group {
		return g, hsm.Source{}, store.EscrowKey{}, fmt.Errorf("%w: escrow_slot is a slot of another group than %s", ErrBinding, group)
	}
	key, ok := g.EscrowVersion(slot.KeyVersion)
	if !ok {
		return g, hsm.Source{}, store.EscrowKey{}, fmt.Errorf("%w: group %s has no escrow key version %d", ErrKeyVersion, group, slot.KeyVersion)
	}
	if key.Suite != slot.Suite {
		return g, hsm.Source{}, store.EscrowKey{}, fmt.Errorf("%w: escrow_slot suite %s, but escrow key version %d is %s", ErrInvalid, slot.Suite, key.Version, key.Suite)
	}
	if err := usableEscrow(&g, key); err != nil {
		return g, hsm.Source{}, store.EscrowKey{}, err
	}
	src := hsm.Source{EscrowPrivate: hsmKey(key.Private), EscrowPublicDER: key.PublicKey, Suite: hsm.Suite(key.Suite),
		Wrapped: slot.Wrapped, EPK: slot.EPK, Context: slot.Context(), Bind: slot.Bind}
	return g, src, key, nil
}

func (s *Service) group(ctx context.Context, id string) (store.Group, error) {
	if err := checkID("group_id", id); err != nil {
		return store.Group{}, err
	}
	g, err := s.store.Group(ctx, id)
	if errors.Is(err, store.ErrNotFound) {
		return g, fmt.Errorf("%w: %s", ErrNotFound, id)
	}
	if err != nil {
		return g, storeErr(err)
	}
	return g, nil
}

func checkID(field, id string) error {
	if err := bundle.ValidateID(id); err != nil {
		return fmt.Errorf("%w: %s: %v", ErrInvalid, field, err)
	}
	return nil
}

func checkRecipient(r Recipient) error {
	if r.Kind != bundle.KindMember && r.Kind != bundle.KindDevice {
		return fmt.Errorf("%w: recipient kind %q, want member or device", ErrInvalid, r.Kind)
	}
	if err := checkID("recipient.id", r.ID); err != nil {
		return err
	}
	if r.KeyVersion == 0 {
		return fmt.Errorf("%w: recipient.key_version must be at least 1", ErrInvalid)
	}
	if !bundle.PublicKeySuite(r.Suite) {
		return fmt.Errorf("%w: recipient.suite %q is not one of %s", ErrInvalid, r.Suite, suiteList)
	}
	return CheckPublicKey(r.Suite, r.PublicKey)
}

// CheckPublicKey accepts a PKIX DER public key fit for suite: RSA of 2048
// to 4096 bits for the rsa-oaep suites, a P-256 point for ecdh-p256.
func CheckPublicKey(suite string, der []byte) error {
	if len(der) == 0 || len(der) > 2048 {
		return fmt.Errorf("%w: recipient.public_key is %d bytes", ErrInvalid, len(der))
	}
	pk, err := x509.ParsePKIXPublicKey(der)
	if err != nil {
		return fmt.Errorf("%w: recipient.public_key is not a PKIX DER public key", ErrInvalid)
	}
	if suite == bundle.SuiteECDHP256 {
		ek, ok := pk.(*ecdsa.PublicKey)
		if !ok || ek.Curve != elliptic.P256() {
			return fmt.Errorf("%w: recipient.public_key is a %T, want EC P-256 for %s", ErrInvalid, pk, suite)
		}
		return nil
	}
	rk, ok := pk.(*rsa.PublicKey)
	if !ok {
		return fmt.Errorf("%w: recipient.public_key is a %T, want RSA for %s", ErrInvalid, pk, suite)
	}
	if bits := rk.N.BitLen(); bits < 2048 || bits > 4096 {
		return fmt.Errorf("%w: recipient.public_key is RSA-%d, want 2048 to 4096 bits", ErrInvalid, bits)
	}
	return nil
}

func storeKey(k hsm.WrappedKey) store.WrappedKey {
	return store.WrappedKey{KEKVersion: k.KEKVersion, Blob: k.Blob}
}

func hsmKey(k store.WrappedKey) hsm.WrappedKey {
	return hsm.WrappedKey{KEKVersion: k.KEKVersion, Blob: k.Blob}
}

func hsmErr(err error) error {
	switch {
	case errors.Is(err, hsm.ErrBadCiphertext):
		return fmt.Errorf("%w: %w", ErrSlot, err)
	case errors.Is(err, hsm.ErrBinding):
		return fmt.Errorf("%w: %w", ErrBinding, err)
	case errors.Is(err, hsm.ErrUnavailable), errors.Is(err, hsm.ErrClosed):
		return fmt.Errorf("%w: HSM: %w", ErrUnavailable, err)
	case errors.Is(err, hsm.ErrUnsupported):
		return fmt.Errorf("%w: %w", ErrUnsupported, err)
	case errors.Is(err, hsm.ErrInvalidInput):
		return fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	return fmt.Errorf("escrow: HSM: %w", err)
}

func storeErr(err error) error {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	return fmt.Errorf("%w: store: %w", ErrUnavailable, err)
}
