package audit

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"path"
	"strconv"
	"time"

	vault "github.com/hashicorp/vault/api"
)

// Poisoned positions. A position of the trail may hold what escrowd did
// not write: something that is not a batch, or, in a keyed trail, a batch
// whose MAC does not verify. The writer does not chain after it, and it
// does not skip it on its own either: skipping would let whoever can write
// under the trail's Vault path insert entries that every later reader has
// to tell apart from escrowd's, with nobody made to look. It stops
// instead (ErrPoisoned): every write fails, so every request that needs a
// record fails UNAVAILABLE before it acts, and health says why
// (HealthReason). It goes on only once an operator has acknowledged the
// position (Acknowledge): a record kept in Vault beside the trail, bound
// to the position and to the exact bytes found there, with a MAC under
// the chain key, so that only a holder of the HSM can make one. The entry
// stays where it is; the writer then chains past it, after the last good
// batch, and verify goes on naming it.
//
// The trade: anyone who can write under the trail's path can stop
// service until an operator acts, in exchange for no silent continuation
// (docs/SECURITY.md).

// ErrPoisoned: a position of the trail holds something the writer will
// not chain after, and no operator has acknowledged it. The writer stops;
// docs/OPERATIONS.md gives the recovery.
var ErrPoisoned = errors.New("audit trail poisoned: a position holds what escrowd did not write")

// HaltError is why the writer refuses to write: a poisoned position or a
// truncation. Its HealthReason names what is wrong and where, and carries
// nothing secret, so that the unauthenticated health listener can say it.
type HaltError struct {
	err    error
	reason string
}

func (e *HaltError) Error() string { return e.err.Error() }
func (e *HaltError) Unwrap() error { return e.err }

// HealthReason is the one-line reason health reports.
func (e *HaltError) HealthReason() string { return e.reason }

// HaltObserver, if the Observer implements it, learns when the writer
// stops writing (reason "poisoned" or "truncated") and when it goes on
// (reason "").
type HaltObserver interface {
	ObserveAuditHalted(reason string)
}

// halt stops every write with err until findHead succeeds again.
func (v *Vault) halt(err *HaltError, reason string) {
	var e error = err
	v.halted.Store(&e)
	if o, ok := v.cfg.Observer.(HaltObserver); ok {
		o.ObserveAuditHalted(reason)
	}
}

// resume clears a halt.
func (v *Vault) resume() {
	if v.halted.Swap(nil) != nil {
		if o, ok := v.cfg.Observer.(HaltObserver); ok {
			o.ObserveAuditHalted("")
		}
	}
}

// poison handles position seq, found holding what the writer will not
// chain after (why says what). If an operator acknowledged exactly what
// is there, it returns nil and the caller skips the position; else it
// halts the writer and returns the error every write now fails with.
func (v *Vault) poison(ctx context.Context, seq uint64, why error) error {
	v.poisoned(seq)
	digest, err := v.entryDigest(ctx, seq)
	if err != nil {
		return err
	}
	// An acknowledgement that cannot be read (Vault failing, or a token
	// without read on it) leaves the writer halted, saying so.
	ack, ackErr := v.acknowledgement(ctx, seq)
	if v.keys == nil && v.cfg.Keyer != nil {
		v.keys = v.newKeyRing()
	}
	if ackErr == nil && ack != nil && v.ackValid(ctx, v.keys, ack, seq, digest) == nil {
		return nil
	}
	what := "something that is not a batch"
	if errors.Is(why, errForged) {
		what = "a batch whose MAC does not verify under the chain key"
	}
	reason := fmt.Sprintf("audit trail poisoned at position %d (%s): it holds %s; escrowd did not write it. "+
		"Writes stop until an operator acknowledges it: escrowctl audit acknowledge -seq %d -ticket TICKET (docs/OPERATIONS.md)",
		seq, v.BatchPath(seq), what, seq)
	switch {
	case ackErr != nil:
		reason += "; its acknowledgement, if any, cannot be read: " + firstLine(ackErr)
	case ack != nil:
		reason += "; the acknowledgement found for it does not verify or is for other content"
	}
	herr := &HaltError{err: fmt.Errorf("%w: %w: %s (%v)", ErrUnavailable, ErrPoisoned, reason, firstLine(why)), reason: reason}
	v.halt(herr, "poisoned")
	return herr
}

// entryDigest is the SHA-256 of what position seq holds, as Vault returns
// it (its data, as JSON with sorted keys): what an acknowledgement is
// bound to.
func (v *Vault) entryDigest(ctx context.Context, seq uint64) (string, error) {
	s, err := v.kv.Get(ctx, v.batchPath(seq))
	if err != nil {
		return "", fmt.Errorf("%w: failed to read audit position %d: %v", ErrUnavailable, seq, firstLine(err))
	}
	raw, err := json.Marshal(s.Data)
	if err != nil {
		return "", fmt.Errorf("%w: audit position %d: %v", ErrUnavailable, seq, err)
	}
	d := sha256.Sum256(raw)
	return hex.EncodeToString(d[:]), nil
}

// Acknowledgement is an operator's record that a poisoned position was
// looked at: kept at Prefix/acknowledged/SEQ, bound to the digest of the
// entry, with a MAC under the chain key.
type Acknowledgement struct {
	Seq    uint64
	Digest string // SHA-256 of the entry's data (entryDigest)
	Ticket string
	At     time.Time
	Key    string // the chain key id of the MAC
	MAC    string
	// What says what the position held when it was acknowledged.
	What string
}

// ackLabel separates an acknowledgement's MAC from a batch's and a
// checkpoint's.
const ackLabel = "escrowd audit poisoned-position acknowledgement v1\x00"

func ackInput(a *Acknowledgement) []byte {
	b := append([]byte(ackLabel), binary.BigEndian.AppendUint64(nil, a.Seq)...)
	b = binary.BigEndian.AppendUint64(b, uint64(a.At.Unix()))
	d, _ := hex.DecodeString(a.Digest)
	b = append(b, d...)
	return append(b, a.Ticket...)
}

func (v *Vault) ackPath(seq uint64) string {
	return path.Join(v.cfg.Prefix, "acknowledged", fmt.Sprintf("%020d", seq))
}

// maxTicket bounds an acknowledgement's ticket.
const maxTicket = 256

// Acknowledge records that the operator has looked at poisoned position
// seq (ticket names the incident): from then on writers skip it, chaining
// after the last good batch, as long as the entry holds exactly what it
// held now. It needs the chain key (the HSM), so that whoever planted the
// entry cannot acknowledge it; it refuses a position that is empty or
// holds a good batch. The entry itself is left as it is.
func (v *Vault) Acknowledge(ctx context.Context, seq uint64, ticket string) (*Acknowledgement, error) {
	if v.cfg.Keyer == nil {
		return nil, errors.New("audit: acknowledging a poisoned position needs the HSM (the chain key)")
	}
	if seq == 0 {
		return nil, errors.New("audit: positions start at 1")
	}
	if ticket == "" || len(ticket) > maxTicket {
		return nil, fmt.Errorf("audit: an acknowledgement needs a ticket of 1 to %d bytes", maxTicket)
	}
	keys := v.newKeyRing()
	if err := keys.load(ctx); err != nil {
		return nil, err
	}
	if keys.current == nil {
		return nil, errors.New("audit: the trail has no chain key")
	}
	what := ""
	b, err := v.readBatch(ctx, seq)
	switch {
	case errors.Is(err, vault.ErrSecretNotFound):
		return nil, fmt.Errorf("audit: position %d holds nothing: nothing to acknowledge", seq)
	case errors.Is(err, errBadBatch):
		what = "not a batch: " + firstLine(err)
	case err != nil:
		return nil, fmt.Errorf("audit: failed to read position %d: %v", seq, firstLine(err))
	default:
		cerr := keys.check(ctx, b)
		if !errors.Is(cerr, errForged) {
			if cerr != nil {
				return nil, fmt.Errorf("audit: position %d: its MAC cannot be checked (%v); a batch not known forged is not acknowledged", seq, cerr)
			}
			return nil, fmt.Errorf("audit: position %d holds a batch of the chain whose MAC verifies: nothing to acknowledge", seq)
		}
		what = "forged: " + cerr.Error()
	}
	digest, err := v.entryDigest(ctx, seq)
	if err != nil {
		return nil, err
	}
	a := &Acknowledgement{Seq: seq, Digest: digest, Ticket: ticket, At: time.Now().UTC().Truncate(time.Second), Key: keys.current.id, What: what}
	m, err := keys.current.keyer.ChainMAC(ctx, keys.current.stored, ackInput(a))
	if err != nil {
		return nil, fmt.Errorf("audit: the chain key: %w", err)
	}
	a.MAC = hex.EncodeToString(m)
	_, err = v.kv.Put(ctx, v.ackPath(seq), map[string]any{
		"seq": fmt.Sprint(seq), "digest": a.Digest, "ticket": a.Ticket, "at": a.At.Format(time.RFC3339),
		"key": a.Key, "mac": a.MAC, "what": a.What})
	if err != nil {
		return nil, fmt.Errorf("audit: failed to store the acknowledgement: %v", firstLine(err))
	}
	return a, nil
}

// acknowledgement reads the acknowledgement of position seq; nil if there
// is none, or what is there is not one (then the position stays halted).
func (v *Vault) acknowledgement(ctx context.Context, seq uint64) (*Acknowledgement, error) {
	s, err := v.kv.Get(ctx, v.ackPath(seq))
	if errors.Is(err, vault.ErrSecretNotFound) || (err == nil && s.Data == nil) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("%w: failed to read the acknowledgement of audit position %d: %v", ErrUnavailable, seq, firstLine(err))
	}
	a, err := parseAck(s.Data)
	if err != nil {
		// Not an acknowledgement: one that cannot verify.
		return &Acknowledgement{}, nil
	}
	return a, nil
}

// parseAck reads an acknowledgement as Vault returns its data: every
// field a string, the position decimal, the time RFC 3339, the digest 32
// bytes of hex, the ticket 1 to maxTicket bytes. It says nothing of the
// MAC (ackValid does).
func parseAck(data map[string]any) (*Acknowledgement, error) {
	str := func(k string) string { x, _ := data[k].(string); return x }
	a := &Acknowledgement{Digest: str("digest"), Ticket: str("ticket"), Key: str("key"), MAC: str("mac"), What: str("what")}
	seq, err := strconv.ParseUint(str("seq"), 10, 64)
	if err != nil || seq == 0 {
		return nil, errors.New("acknowledgement: no position")
	}
	a.Seq = seq
	if a.At, err = time.Parse(time.RFC3339, str("at")); err != nil {
		return nil, errors.New("acknowledgement: no time")
	}
	if d, err := hex.DecodeString(a.Digest); err != nil || len(d) != sha256.Size {
		return nil, errors.New("acknowledgement: the digest is not 32 bytes of hex")
	}
	if a.Ticket == "" || len(a.Ticket) > maxTicket {
		return nil, errors.New("acknowledgement: no ticket")
	}
	if a.Key == "" || a.MAC == "" {
		return nil, errors.New("acknowledgement: no MAC")
	}
	return a, nil
}

// ackValid checks a's MAC under the chain key it names, its position and
// its digest against what the position holds now.
// keys is the caller's: the writer's own ring, or a new one.
func (v *Vault) ackValid(ctx context.Context, keys *keyRing, a *Acknowledgement, seq uint64, digest string) error {
	if a.Seq != seq || a.Digest != digest {
		return fmt.Errorf("the acknowledgement of position %d is for other content", seq)
	}
	if keys == nil {
		return errors.New("an unkeyed writer cannot check an acknowledgement")
	}
	k, err := keys.get(ctx, a.Key)
	if err != nil {
		return err
	}
	m, err := k.keyer.ChainMAC(ctx, k.stored, ackInput(a))
	if err != nil {
		return err
	}
	if !hmac.Equal([]byte(hex.EncodeToString(m)), []byte(a.MAC)) {
		return fmt.Errorf("the acknowledgement of position %d does not verify under chain key %s", seq, a.Key)
	}
	return nil
}

// Acknowledged returns the acknowledgement of position seq whose MAC
// verifies and which is for what the position holds now; nil if none.
func (v *Vault) Acknowledged(ctx context.Context, seq uint64) (*Acknowledgement, error) {
	a, err := v.acknowledgement(ctx, seq)
	if err != nil || a == nil {
		return nil, err
	}
	digest, err := v.entryDigest(ctx, seq)
	if err != nil {
		return nil, err
	}
	if v.cfg.Keyer == nil {
		return nil, errors.New("audit: checking an acknowledgement needs the HSM (the chain key)")
	}
	if v.ackValid(ctx, v.newKeyRing(), a, seq, digest) != nil {
		return nil, nil
	}
	return a, nil
}

// haltAcknowledged reports whether halt is a poisoned position that an
// operator has acknowledged since (read-only: the writer's own state is
// not touched).
func (v *Vault) haltAcknowledged(ctx context.Context, halt error) bool {
	if !errors.Is(halt, ErrPoisoned) || v.cfg.Keyer == nil {
		return false
	}
	a, err := v.Acknowledged(ctx, v.poisonedAt.Load())
	return err == nil && a != nil
}
