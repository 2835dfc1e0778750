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
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/escrowd/escrowd/escrow/bundle"
	"github.com/escrowd/escrowd/escrow/unlockcode"
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
	// ErrNoCodes: no unlock codes were issued for the user.
	ErrNoCodes = errors.New("no unlock codes issued for this user")
	// ErrExhausted: every code of the user's epoch has been revealed; the
	// sync backend must issue a new epoch.
	ErrExhausted = errors.New("every unlock code of this epoch has been revealed")
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
	Rewrap(ctx context.Context, private hsm.WrappedKey, suite hsm.Suite, ciphertext []byte, targets []hsm.Target) ([][]byte, error)
}

// Config tunes the service; zero values take the defaults.
type Config struct {
	// DefaultSuite is the escrow key suite of new groups.
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
		cfg.DefaultSuite = bundle.SuiteRSAOAEPSHA1
	}
	if !rsaSuite(cfg.DefaultSuite) {
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

func rsaSuite(s string) bool {
	return s == bundle.SuiteRSAOAEPSHA1 || s == bundle.SuiteRSAOAEPSHA256
}

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
	if !rsaSuite(suite) {
		return EscrowPublic{}, fmt.Errorf("%w: suite %q is not one of %s, %s", ErrInvalid, suite, bundle.SuiteRSAOAEPSHA1, bundle.SuiteRSAOAEPSHA256)
	}
	// Key generation takes about a second; refuse early when the group
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
	PublicKey  []byte // PKIX DER, RSA 2048 to 4096 bits
}

// Used reports the key versions an operation used, for the audit record.
type Used struct {
	EscrowVersion uint32
	UnlockVersion uint32
}

// Rewrap opens escrowSlot in the HSM and wraps its GDK to r.
func (s *Service) Rewrap(ctx context.Context, group string, escrowSlot []byte, r Recipient) ([]byte, Used, error) {
	if err := checkRecipient(r); err != nil {
		return nil, Used{}, err
	}
	_, slot, key, err := s.escrowSlot(ctx, group, escrowSlot)
	if err != nil {
		return nil, Used{}, err
	}
	used := Used{EscrowVersion: key.Version}
	out, err := s.hsm.Rewrap(ctx, hsmKey(key.Private), hsm.Suite(key.Suite), slot.Wrapped,
		[]hsm.Target{{PublicKeyDER: r.PublicKey, Suite: hsm.Suite(r.Suite)}})
	if err != nil {
		return nil, used, hsmErr(err)
	}
	ms := bundle.Slot{V: bundle.Version, Kind: r.Kind, KeyVersion: r.KeyVersion, Suite: r.Suite, ID: r.ID, Wrapped: out[0]}
	b, err := ms.Marshal()
	if err != nil {
		return nil, used, fmt.Errorf("escrow: failed to encode the %s slot: %w", r.Kind, err)
	}
	return b, used, nil
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
	g, slot, escrowKey, err := s.escrowSlot(ctx, group, escrowSlot)
	if err != nil {
		return Issued{}, err
	}
	unlockKey, ok := g.LatestUnlock()
	if !ok {
		return Issued{}, fmt.Errorf("%w: group %s has no unlock key", ErrNotFound, group)
	}
	used := Used{EscrowVersion: escrowKey.Version, UnlockVersion: unlockKey.Version}
	prev := uint32(0)
	switch cur, err := s.store.Codes(ctx, group, user); {
	case err == nil:
		prev = cur.Epoch
	case !errors.Is(err, store.ErrNoEpoch):
		return Issued{}, storeErr(err)
	}
	epoch := prev + 1

	targets := make([]hsm.Target, n)
	salts := make([][]byte, n)
	defer func() {
		for _, t := range targets {
			clear(t.AESKey)
		}
	}()
	for i := range n {
		code, err := s.deriveCode(ctx, group, user, epoch, uint32(i), unlockKey)
		if err != nil {
			return Issued{}, err
		}
		salts[i] = make([]byte, bundle.SaltSize)
		if _, err := rand.Read(salts[i]); err != nil {
			return Issued{}, fmt.Errorf("escrow: crypto/rand failed: %w", err)
		}
		key, err := code.DeriveKey(salts[i], s.cfg.UnlockIterations)
		code.Clear()
		if err != nil {
			return Issued{}, fmt.Errorf("escrow: failed to derive an unlock slot key: %w", err)
		}
		targets[i] = hsm.Target{AESKey: key}
	}
	wrapped, err := s.hsm.Rewrap(ctx, hsmKey(escrowKey.Private), hsm.Suite(escrowKey.Suite), slot.Wrapped, targets)
	if err != nil {
		return Issued{}, hsmErr(err)
	}
	out := Issued{Epoch: epoch, Used: used, Slots: make([][]byte, n)}
	for i := range n {
		us := bundle.Slot{
			V: bundle.Version, Kind: bundle.KindUnlock, KeyVersion: unlockKey.Version,
			Suite: bundle.SuitePBKDF2AESKW, ID: user,
			KDF:     &bundle.KDF{Salt: salts[i], Iterations: uint32(s.cfg.UnlockIterations)},
			Unlock:  &bundle.Unlock{Epoch: epoch, Index: uint32(i)},
			Wrapped: wrapped[i],
		}
		if out.Slots[i], err = us.Marshal(); err != nil {
			return Issued{}, fmt.Errorf("escrow: failed to encode an unlock slot: %w", err)
		}
	}
	// Only now does the new epoch exist: the old codes die with this write.
	if _, err := s.store.StartEpoch(ctx, group, user, prev, unlockKey.Version, n); err != nil {
		if errors.Is(err, store.ErrConflict) {
			return Issued{}, fmt.Errorf("%w: codes for %s were issued concurrently", ErrConflict, user)
		}
		return Issued{}, storeErr(err)
	}
	return out, nil
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
// it. If anything fails after the mark, that code is burnt: it is never
// returned, and never returned twice.
func (s *Service) RevealCode(ctx context.Context, group, user string) (Revealed, error) {
	if err := checkID("user_id", user); err != nil {
		return Revealed{}, err
	}
	g, err := s.group(ctx, group)
	if err != nil {
		return Revealed{}, err
	}
	// Refuse before claiming when the epoch's unlock key may not be used:
	// a refused reveal must not burn a code.
	if cur, err := s.store.Codes(ctx, group, user); err == nil {
		if uk, ok := g.UnlockVersion(cur.UnlockVersion); ok {
			if err := usableUnlock(&g, uk); err != nil {
				return Revealed{}, err
			}
		}
	}
	i, c, err := s.store.ClaimCode(ctx, group, user)
	switch {
	case errors.Is(err, store.ErrNoEpoch):
		return Revealed{}, fmt.Errorf("%w: user %s", ErrNoCodes, user)
	case errors.Is(err, store.ErrExhausted):
		return Revealed{}, fmt.Errorf("%w: user %s", ErrExhausted, user)
	case err != nil:
		return Revealed{}, storeErr(err)
	}
	uk, ok := g.UnlockVersion(c.UnlockVersion)
	if !ok {
		return Revealed{}, fmt.Errorf("%w: unlock key version %d", ErrKeyVersion, c.UnlockVersion)
	}
	if err := usableUnlock(&g, uk); err != nil {
		return Revealed{}, err
	}
	code, err := s.deriveCode(ctx, group, user, c.Epoch, uint32(i), uk)
	if err != nil {
		return Revealed{}, err
	}
	return Revealed{Code: code, Epoch: c.Epoch, Index: uint32(i), Remaining: c.Remaining(), Used: Used{UnlockVersion: uk.Version}}, nil
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

// deriveCode computes code index of (group, user, epoch) in the HSM.
func (s *Service) deriveCode(ctx context.Context, group, user string, epoch, index uint32, uk store.UnlockKey) (unlockcode.Code, error) {
	mac, err := s.hsm.HMAC(ctx, hsmKey(uk.Key), CodeMessage(group, user, epoch, index))
	if err != nil {
		return unlockcode.Code{}, hsmErr(err)
	}
	defer clear(mac)
	return unlockcode.FromMaterial(mac)
}

// CodeMessage is the HMAC input that binds a code to its group, user, epoch
// and index; docs/FORMAT.md specifies it.
func CodeMessage(group, user string, epoch, index uint32) []byte {
	const label = "escrowd unlock code v1"
	b := make([]byte, 0, len(label)+1+2+len(group)+2+len(user)+8)
	b = append(b, label...)
	b = append(b, 0)
	b = binary.BigEndian.AppendUint16(b, uint16(len(group)))
	b = append(b, group...)
	b = binary.BigEndian.AppendUint16(b, uint16(len(user)))
	b = append(b, user...)
	b = binary.BigEndian.AppendUint32(b, epoch)
	b = binary.BigEndian.AppendUint32(b, index)
	return b
}

// escrowSlot reads the group and parses the caller's escrow slot, checking
// it names one of the group's escrow key versions with its suite.
func (s *Service) escrowSlot(ctx context.Context, group string, raw []byte) (store.Group, *bundle.Slot, store.EscrowKey, error) {
	g, err := s.group(ctx, group)
	if err != nil {
		return g, nil, store.EscrowKey{}, err
	}
	slot, err := bundle.ParseSlot(raw)
	if err != nil {
		return g, nil, store.EscrowKey{}, fmt.Errorf("%w: escrow_slot: %w", ErrInvalid, err)
	}
	if slot.Kind != bundle.KindEscrow {
		return g, nil, store.EscrowKey{}, fmt.Errorf("%w: escrow_slot is a %s slot", ErrInvalid, slot.Kind)
	}
	key, ok := g.EscrowVersion(slot.KeyVersion)
	if !ok {
		return g, nil, store.EscrowKey{}, fmt.Errorf("%w: group %s has no escrow key version %d", ErrKeyVersion, group, slot.KeyVersion)
	}
	if key.Suite != slot.Suite {
		return g, nil, store.EscrowKey{}, fmt.Errorf("%w: escrow_slot suite %s, but escrow key version %d is %s", ErrInvalid, slot.Suite, key.Version, key.Suite)
	}
	if err := usableEscrow(&g, key); err != nil {
		return g, nil, store.EscrowKey{}, err
	}
	return g, slot, key, nil
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
	if !rsaSuite(r.Suite) {
		return fmt.Errorf("%w: recipient.suite %q is not one of %s, %s", ErrInvalid, r.Suite, bundle.SuiteRSAOAEPSHA1, bundle.SuiteRSAOAEPSHA256)
	}
	return CheckPublicKey(r.PublicKey)
}

// CheckPublicKey accepts a PKIX DER RSA public key of 2048 to 4096 bits.
func CheckPublicKey(der []byte) error {
	if len(der) == 0 || len(der) > 2048 {
		return fmt.Errorf("%w: recipient.public_key is %d bytes", ErrInvalid, len(der))
	}
	pk, err := x509.ParsePKIXPublicKey(der)
	if err != nil {
		return fmt.Errorf("%w: recipient.public_key is not a PKIX DER public key", ErrInvalid)
	}
	rk, ok := pk.(*rsa.PublicKey)
	if !ok {
		return fmt.Errorf("%w: recipient.public_key is a %T, want RSA", ErrInvalid, pk)
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
