package audit

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"path"
	"time"

	vault "github.com/hashicorp/vault/api"
)

// Keyer makes and uses the chain key: a secret that stays in the HSM, so
// that whoever can write the trail's Vault entries (a Vault
// administrator, or escrowd's own token taken from a replica) cannot make
// a batch that verifies. The key is stored in Vault only in the form
// NewChainKey returns (wrapped under the HSM's master key), which is of no
// use without the HSM.
type Keyer interface {
	// NewChainKey makes a new chain key and returns it as stored.
	NewChainKey(ctx context.Context) ([]byte, error)
	// ChainMAC computes HMAC-SHA256(key, msg) with a key NewChainKey made.
	ChainMAC(ctx context.Context, key, msg []byte) ([]byte, error)
}

// macLabel separates the chain key's messages from anything else an HMAC
// key of the HSM is used for.
const macLabel = "escrowd audit batch v2\x00"

// macInput is what a batch's MAC covers: its position and the hash of its
// last record, which covers every record before it.
func macInput(seq uint64, head string) []byte {
	b := append([]byte(macLabel), binary.BigEndian.AppendUint64(nil, seq)...)
	h, _ := hex.DecodeString(head)
	return append(b, h...)
}

// KeyID names a stored chain key: the first 8 bytes of its SHA-256, in
// hex. A batch names the key its MAC is under.
func KeyID(stored []byte) string {
	s := sha256.Sum256(stored)
	return hex.EncodeToString(s[:8])
}

// chainKey is one chain key of a trail, as stored, with its Keyer.
type chainKey struct {
	keyer   Keyer
	stored  []byte
	id      string
	created time.Time
}

// mac is the MAC of batch seq whose last record hash is head.
func (k *chainKey) mac(ctx context.Context, seq uint64, head string) (string, error) {
	m, err := k.keyer.ChainMAC(ctx, k.stored, macInput(seq, head))
	if err != nil {
		return "", fmt.Errorf("chain key %s: %w", k.id, err)
	}
	return hex.EncodeToString(m), nil
}

// errForged: a batch whose MAC is missing or does not verify. The errors
// check returns match it (errors.Is) and say why in their own words.
var errForged = errors.New("forged batch")

type forgedError string

func (e forgedError) Error() string      { return string(e) }
func (forgedError) Is(target error) bool { return target == errForged }

func forged(format string, args ...any) error { return forgedError(fmt.Sprintf(format, args...)) }

// keyRing is a trail's chain keys, by id. A trail has more than one when
// a key could no longer be used (the master KEK version it was wrapped
// under was destroyed): the writer then makes a new one, and each batch
// names the key it is under.
type keyRing struct {
	v       *Vault
	byID    map[string]*chainKey
	current *chainKey
	// newest is the creation time of the newest key a checked batch was
	// under: a later batch under an older key that can no longer be used
	// was written after that key was replaced, so not by escrowd.
	newest time.Time
}

func (v *Vault) newKeyRing() *keyRing { return &keyRing{v: v, byID: map[string]*chainKey{}} }

// keysPath is where the trail's chain keys are kept, each as NewChainKey
// stored it (wrapped), at keysPath/ID.
func (v *Vault) keysPath() string { return path.Join(v.cfg.Prefix, "keys") }

// load reads every chain key of the trail; current is the newest.
func (r *keyRing) load(ctx context.Context) error {
	v := r.v
	sec, err := v.client.Logical().ListWithContext(ctx, path.Join(v.cfg.Mount, "metadata", v.keysPath()))
	if err != nil {
		return fmt.Errorf("audit: failed to list the chain keys: %v", firstLine(err))
	}
	if sec == nil {
		return nil
	}
	keys, _ := sec.Data["keys"].([]any)
	for _, k := range keys {
		if _, err := r.get(ctx, fmt.Sprint(k)); err != nil && !errors.Is(err, errForged) {
			return err
		}
	}
	return nil
}

// get returns chain key id, reading it if need be. A key that is missing
// or not a key makes the batches naming it forged.
func (r *keyRing) get(ctx context.Context, id string) (*chainKey, error) {
	if k, ok := r.byID[id]; ok {
		return k, nil
	}
	v := r.v
	s, err := v.kv.Get(ctx, path.Join(v.keysPath(), id))
	if errors.Is(err, vault.ErrSecretNotFound) || (err == nil && s.Data == nil) {
		return nil, forged("the trail has no chain key %s", id)
	}
	if err != nil {
		return nil, fmt.Errorf("audit: failed to read chain key %s: %v", id, firstLine(err))
	}
	h, _ := s.Data["key"].(string)
	c, _ := s.Data["created"].(string)
	stored, err := hex.DecodeString(h)
	created, terr := time.Parse(time.RFC3339Nano, c)
	if err != nil || len(stored) == 0 || terr != nil || KeyID(stored) != id {
		return nil, forged("%s does not hold chain key %s", path.Join(v.keysPath(), id), id)
	}
	k := &chainKey{keyer: v.cfg.Keyer, stored: stored, id: id, created: created}
	r.byID[id] = k
	if r.current == nil || k.created.After(r.current.created) {
		r.current = k
	}
	return k, nil
}

// rotate makes a new chain key in the HSM, stores it (check-and-set 0)
// and makes it current.
func (r *keyRing) rotate(ctx context.Context) (*chainKey, error) {
	v := r.v
	stored, err := v.cfg.Keyer.NewChainKey(ctx)
	if err != nil {
		return nil, fmt.Errorf("audit: failed to make a chain key: %w", err)
	}
	k := &chainKey{keyer: v.cfg.Keyer, stored: stored, id: KeyID(stored), created: time.Now().UTC()}
	_, err = v.kv.Put(ctx, path.Join(v.keysPath(), k.id), map[string]any{
		"key": hex.EncodeToString(stored), "created": k.created.Format(time.RFC3339Nano)}, vault.WithCheckAndSet(0))
	if err != nil {
		return nil, fmt.Errorf("audit: failed to store the chain key: %v", firstLine(err))
	}
	r.byID[k.id], r.current = k, k
	return k, nil
}

// signHead returns the id of the current key and the MAC of the batch at
// position seq whose last record hash is head, making the trail's first
// key, or a new one when the current key can no longer be used.
func (r *keyRing) signHead(ctx context.Context, seq uint64, head string) (string, string, error) {
	if r.current == nil {
		if err := r.load(ctx); err != nil {
			return "", "", err
		}
	}
	if r.current != nil {
		mac, err := r.current.mac(ctx, seq, head)
		if err == nil {
			return r.current.id, mac, nil
		}
		// Its KEK may be gone. Another replica may have made a new key
		// already: use it if it works.
		old := r.current
		if err := r.load(ctx); err != nil {
			return "", "", err
		}
		if r.current != old {
			if mac, err := r.current.mac(ctx, seq, head); err == nil {
				return r.current.id, mac, nil
			}
		}
		// If the HSM itself is failing, so will the new key, and the
		// write fails closed.
	}
	k, err := r.rotate(ctx)
	if err != nil {
		return "", "", err
	}
	mac, err := k.mac(ctx, seq, head)
	if err != nil {
		return "", "", err
	}
	return k.id, mac, nil
}

// check verifies b's MAC under the key it names.
func (r *keyRing) check(ctx context.Context, b *Batch) error {
	if b.MAC == "" {
		return forged("batch %d has no MAC: it was written without the chain key", b.Seq)
	}
	if len(b.Records) == 0 {
		return forged("batch %d holds no records", b.Seq)
	}
	k, err := r.get(ctx, b.Key)
	if err != nil {
		return err
	}
	want, err := k.mac(ctx, b.Seq, b.Records[len(b.Records)-1].Hash)
	if err != nil {
		if r.newest.After(k.created) {
			return forged("batch %d is under chain key %s, which the HSM can no longer use and a newer key had replaced before it: written after the replacement, so not by escrowd", b.Seq, k.id)
		}
		return err
	}
	if !hmac.Equal([]byte(want), []byte(b.MAC)) {
		return forged("batch %d's MAC does not verify under chain key %s: it was written without the key", b.Seq, k.id)
	}
	if k.created.After(r.newest) {
		r.newest = k.created
	}
	return nil
}

// checkpointLabel separates a checkpoint's MAC from a batch's.
const checkpointLabel = "escrowd audit checkpoint v1\x00"

func checkpointInput(h Head) []byte {
	b := append([]byte(checkpointLabel), binary.BigEndian.AppendUint64(nil, h.N)...)
	b = binary.BigEndian.AppendUint64(b, uint64(h.At))
	d, _ := hex.DecodeString(h.Hash)
	return append(b, d...)
}

// SignHead returns h taken at at, with its MAC under the trail's chain key:
// a checkpoint whose head and time only the HSM's holder could have
// vouched for.
func (v *Vault) SignHead(ctx context.Context, h Head, at time.Time) (Head, error) {
	if v.cfg.Keyer == nil {
		return Head{}, errors.New("audit: signing a checkpoint needs the HSM")
	}
	r := v.newKeyRing()
	if err := r.load(ctx); err != nil {
		return Head{}, err
	}
	k := r.current
	if k == nil {
		return Head{}, errors.New("audit: the trail has no chain key")
	}
	h.At = at.Unix()
	m, err := k.keyer.ChainMAC(ctx, k.stored, checkpointInput(h))
	if err != nil {
		return Head{}, fmt.Errorf("audit: the chain key: %w", err)
	}
	h.MAC = hex.EncodeToString(m)
	return h, nil
}

// CheckHead verifies a signed checkpoint's MAC.
func (v *Vault) CheckHead(ctx context.Context, h Head) error {
	if v.cfg.Keyer == nil {
		return errors.New("audit: checking a checkpoint's MAC needs the HSM")
	}
	r := v.newKeyRing()
	if err := r.load(ctx); err != nil {
		return err
	}
	for _, k := range r.byID {
		m, err := k.keyer.ChainMAC(ctx, k.stored, checkpointInput(h))
		if err == nil && hmac.Equal([]byte(hex.EncodeToString(m)), []byte(h.MAC)) {
			return nil
		}
	}
	return fmt.Errorf("audit: checkpoint %d:%s: its MAC does not verify under any chain key of the trail: it was not made with the HSM", h.N, h.Hash)
}
