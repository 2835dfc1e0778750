package audit

import (
	"bytes"
	"cmp"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
)

// Chained is a record in the trail: its position n (1, 2, 3, … across the
// whole trail), the hash of the record before it, and its own hash
//
//	hash = SHA-256(prev || uint64be(n) || JSON(record))
//
// so that changing, deleting, moving or inserting a record breaks the
// chain at that record.
type Chained struct {
	Record
	N    uint64 `json:"n"`
	Prev string `json:"prev"`
	Hash string `json:"hash"`
}

// Batch is one Vault write: the records of one group commit.
type Batch struct {
	Seq     uint64    `json:"seq"`
	Records []Chained `json:"records"`
	// Key and MAC: the id of the chain key (KeyID) and the batch's
	// HMAC-SHA256 under it, in hex (keyed.go). Empty in a trail written
	// without a chain key.
	Key string `json:"key,omitempty"`
	MAC string `json:"mac,omitempty"`
}

// errBadBatch: a chain position holds something that is not a batch.
var errBadBatch = errors.New("not an audit batch")

// maxBatchBytes bounds what ParseBatch reads: a batch of the largest group
// commit is well under it, and a verifier must not be made to hold more.
const maxBatchBytes = 64 << 20

// document is a batch as stored in Vault: the records are one JSON string,
// not a JSON structure. Vault's KV engine parses, and its audit devices
// HMAC, every value of a request one by one; a structure costs Vault about
// five times the CPU per record that one string does (0.21 against 0.04 ms
// per record at 100 records a write, measured on the Vault dev server), and
// on a shared host that CPU is taken from escrowd.
type document struct {
	Seq     uint64 `json:"seq"`
	Records string `json:"records"`
	Key     string `json:"key,omitempty"`
	MAC     string `json:"mac,omitempty"`
}

// encodeBatch is b as written to Vault.
func encodeBatch(b *Batch) ([]byte, error) {
	recs, err := json.Marshal(b.Records)
	if err != nil {
		return nil, err
	}
	return json.Marshal(document{Seq: b.Seq, Records: string(recs), Key: b.Key, MAC: b.MAC})
}

// strict decodes raw into v refusing unknown fields and trailing data.
func strict(raw []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if _, err := dec.Token(); err != io.EOF {
		return errors.New("data after the value")
	}
	return nil
}

// ParseBatch decodes a batch as read back from Vault (a document: see
// document). The trail is outside input to the verifier (whoever can write
// Vault can write anything there), so it is decoded strictly: unknown
// fields, trailing data, a batch position of 0 and hashes that are not 32
// bytes of hex are refused as "not an audit batch" rather than left for
// the chain check to misread. Every error wraps errBadBatch.
func ParseBatch(raw []byte) (*Batch, error) {
	if len(raw) > maxBatchBytes {
		return nil, fmt.Errorf("%w: %d bytes, more than %d", errBadBatch, len(raw), maxBatchBytes)
	}
	var d document
	if err := strict(raw, &d); err != nil {
		return nil, fmt.Errorf("%w: %v", errBadBatch, err)
	}
	if d.Seq == 0 {
		return nil, fmt.Errorf("%w: no batch position", errBadBatch)
	}
	if d.MAC != "" || d.Key != "" {
		if m, err := hex.DecodeString(d.MAC); err != nil || len(m) != sha256.Size {
			return nil, fmt.Errorf("%w: the MAC is not 32 bytes of hex", errBadBatch)
		}
		if k, err := hex.DecodeString(d.Key); err != nil || len(k) != 8 {
			return nil, fmt.Errorf("%w: the key id is not 8 bytes of hex", errBadBatch)
		}
	}
	b := Batch{Seq: d.Seq, Key: d.Key, MAC: d.MAC}
	if err := strict([]byte(d.Records), &b.Records); err != nil {
		return nil, fmt.Errorf("%w: records: %v", errBadBatch, err)
	}
	for i, c := range b.Records {
		for _, h := range []string{c.Prev, c.Hash} {
			if d, err := hex.DecodeString(h); err != nil || len(d) != sha256.Size {
				return nil, fmt.Errorf("%w: entry %d: a hash is not 32 bytes of hex", errBadBatch, i)
			}
		}
	}
	return &b, nil
}

// Genesis is the prev of the first record.
var Genesis = hex.EncodeToString(make([]byte, sha256.Size))

// hashRecord computes a record's chain hash.
func hashRecord(prev string, n uint64, r *Record) (string, error) {
	body, err := json.Marshal(r)
	if err != nil {
		return "", err
	}
	return hashJSON(prev, n, body)
}

// hashJSON computes the chain hash of a record given as its JSON
// (json.Marshal of the Record).
func hashJSON(prev string, n uint64, body []byte) (string, error) {
	p, err := hex.DecodeString(prev)
	if err != nil || len(p) != sha256.Size {
		return "", fmt.Errorf("prev hash %q is not 32 bytes of hex", prev)
	}
	h := sha256.New()
	h.Write(p)
	h.Write(binary.BigEndian.AppendUint64(nil, n))
	h.Write(body)
	return hex.EncodeToString(h.Sum(nil)), nil
}

// linkJSON is link for records given as their JSON (json.Marshal of each
// Record, made once when the record was committed): it returns the JSON
// array of the chained records, byte for byte what json.Marshal of link's
// []Chained gives (TestLinkJSON), without encoding any record again.
// The writer's CPU per record is mostly JSON; this keeps it to one
// encoding of each record and one escaping of the batch.
func linkJSON(bodies [][]byte, n uint64, prev string) ([]byte, uint64, string, error) {
	size := 2
	for _, b := range bodies {
		size += len(b) + chainFieldBytes
	}
	out := make([]byte, 0, size)
	out = append(out, '[')
	for i, b := range bodies {
		if len(b) < 2 || b[0] != '{' || b[len(b)-1] != '}' {
			return nil, 0, "", fmt.Errorf("record %d is not a JSON object", i)
		}
		n++
		h, err := hashJSON(prev, n, b)
		if err != nil {
			return nil, 0, "", err
		}
		if i > 0 {
			out = append(out, ',')
		}
		// Chained embeds Record, so its fields come first, then n, prev
		// and hash; a Record's JSON is never "{}" (id, time, caller,
		// operation, outcome and code are always there).
		out = append(out, b[:len(b)-1]...)
		out = append(out, `,"n":`...)
		out = strconv.AppendUint(out, n, 10)
		out = append(out, `,"prev":"`...)
		out = append(out, prev...)
		out = append(out, `","hash":"`...)
		out = append(out, h...)
		out = append(out, `"}`...)
		prev = h
	}
	out = append(out, ']')
	return out, n, prev, nil
}

// encodeDocument is a batch as written to Vault (what encodeBatch gives)
// from the JSON array of its chained records.
func encodeDocument(seq uint64, records []byte, key, mac string) ([]byte, error) {
	return json.Marshal(document{Seq: seq, Records: string(records), Key: key, MAC: mac})
}

// link chains recs after (n, prev) and returns the new head.
func link(recs []*Record, n uint64, prev string) ([]Chained, uint64, string, error) {
	out := make([]Chained, len(recs))
	for i, r := range recs {
		n++
		h, err := hashRecord(prev, n, r)
		if err != nil {
			return nil, 0, "", err
		}
		out[i] = Chained{Record: *r, N: n, Prev: prev, Hash: h}
		prev = h
	}
	return out, n, prev, nil
}

// Problem is one break Verify found in the trail.
type Problem struct {
	// Batch and Index locate the record in the trail (Index -1: the batch
	// as a whole).
	Batch  uint64
	Index  int
	Record string // the record's id, when there is one
	Kind   string // "changed", "deleted", "reordered", "inserted", "truncated", "forged"
	Detail string
}

func (p *Problem) String() string {
	where := fmt.Sprintf("batch %d", p.Batch)
	if p.Index >= 0 {
		where += fmt.Sprintf(" entry %d", p.Index)
	}
	if p.Record != "" {
		where += " (record " + p.Record + ")"
	}
	return fmt.Sprintf("%s: %s: %s", where, p.Kind, p.Detail)
}

// OpenIntent is the intent record of a state-changing request with no
// record of the same id after it: the request may or may not have taken
// effect (the daemon died, or Vault failed, between its intent and its
// outcome), or is still running.
type OpenIntent struct {
	Batch uint64
	N     uint64
	Record
}

func (o *OpenIntent) String() string {
	return fmt.Sprintf("record %d (batch %d): request %s, %s by %s, group %q user %q ticket %q, at %s: intent without outcome, happened or not unknown",
		o.N, o.Batch, o.ID, o.Operation, o.Caller, o.Group, o.User, o.Ticket, o.Time.Format("2006-01-02T15:04:05Z07:00"))
}

// Verifier walks a trail batch by batch. It reports every break and goes
// on past it: after a break it takes the next record whose own hash is
// right as the chain's new base, so one tampering is one problem and the
// records after it are still checked.
type Verifier struct {
	nextSeq uint64
	n       uint64
	prev    string
	records int
	// resync: the last batch or record was missing or unreadable; the
	// next record that hashes right starts the chain again.
	resync bool
	// moved are record numbers a reorder report already named.
	moved map[uint64]bool
	open  map[string]*OpenIntent
	// Problems lists every break, in trail order; Problem is the first.
	Problems []Problem
	Problem  *Problem
	// CheckMAC, if set, verifies a batch's MAC (an error wrapping
	// errForged when it is missing or wrong). Batches without a MAC are
	// taken as written before the trail was keyed only until the first
	// keyed batch; Unkeyed counts them.
	CheckMAC func(*Batch) error
	keyed    bool
	Unkeyed  int
	// Unverified counts the batches whose MAC could not be computed (the
	// HSM cannot use the key they name); UnverifiedWhy is the first
	// reason.
	Unverified    int
	UnverifiedWhy string
	expect        []expected
}

// NewVerifier starts at the beginning of a trail.
func NewVerifier() *Verifier {
	return &Verifier{nextSeq: 1, prev: Genesis, moved: map[uint64]bool{}, open: map[string]*OpenIntent{}}
}

// Head returns the number of records verified and the last hash.
func (v *Verifier) Head() (int, string) { return v.records, v.prev }

// Last returns the number and hash of the last record the chain reached.
func (v *Verifier) Last() (uint64, string) { return v.n, v.prev }

// OpenIntents lists the intents seen so far with no record of the same id
// after them, in trail order.
func (v *Verifier) OpenIntents() []OpenIntent {
	out := make([]OpenIntent, 0, len(v.open))
	for _, o := range v.open {
		out = append(out, *o)
	}
	slices.SortFunc(out, func(a, b OpenIntent) int { return cmp.Compare(a.N, b.N) })
	return out
}

func (v *Verifier) fail(seq uint64, i int, rec, kind, format string, args ...any) {
	v.Problems = append(v.Problems, Problem{Batch: seq, Index: i, Record: rec, Kind: kind, Detail: fmt.Sprintf(format, args...)})
	v.Problem = &v.Problems[0]
}

// Unreadable notes that the batch listed at seq cannot be read: deleted,
// soft-deleted, or not a batch.
func (v *Verifier) Unreadable(seq uint64, why string) {
	v.fail(seq, -1, "", "deleted", "the batch cannot be read (%s)", why)
	v.nextSeq = max(v.nextSeq, seq+1)
	v.resync = true
}

// Add checks the batch stored at position seq. It returns false if it
// found a problem in it; later batches are still checked.
func (v *Verifier) Add(seq uint64, b *Batch) bool {
	before := len(v.Problems)
	switch {
	case seq == v.nextSeq+1:
		v.fail(seq, -1, "", "deleted", "batch %d is missing", v.nextSeq)
		v.resync = true
	case seq > v.nextSeq:
		v.fail(seq, -1, "", "deleted", "batches %d to %d are missing", v.nextSeq, seq-1)
		v.resync = true
	case seq < v.nextSeq:
		v.fail(seq, -1, "", "reordered", "batch %d appears after batch %d", seq, v.nextSeq-1)
		v.resync = true
	}
	if b.Seq != seq {
		v.fail(seq, -1, "", "reordered", "the batch stored at %d says it is batch %d", seq, b.Seq)
		v.resync = true
	}
	v.nextSeq = max(v.nextSeq, seq+1)
	if len(b.Records) == 0 {
		v.fail(seq, -1, "", "deleted", "the batch holds no records")
		v.resync = true
		return false
	}
	if v.CheckMAC != nil {
		if b.MAC == "" && !v.keyed {
			v.Unkeyed++
		} else if err := v.CheckMAC(b); errors.Is(err, errForged) {
			v.fail(seq, -1, "", "forged", "%v", err)
			// Its records are not the trail's; the next batch that
			// verifies starts the chain again.
			v.resync = true
			return false
		} else if err != nil {
			// The HSM cannot use the key the batch names (its KEK was
			// destroyed, or the HSM fails): the hashes are still checked.
			v.keyed = true
			v.Unverified++
			if v.UnverifiedWhy == "" {
				v.UnverifiedWhy = err.Error()
			}
		} else {
			v.keyed = true
		}
	}
	for i := range b.Records {
		v.record(seq, b, i)
	}
	return len(v.Problems) == before
}

func (v *Verifier) record(seq uint64, b *Batch, i int) {
	c := &b.Records[i]
	h, err := hashRecord(c.Prev, c.N, &c.Record)
	self := err == nil && h == c.Hash
	want := v.n + 1
	advance := func() {
		v.n, v.prev = c.N, c.Hash
		v.records++
		for j := range v.expect {
			if e := &v.expect[j]; e.N == c.N {
				e.seen, e.found = true, c.Hash
			}
		}
		if c.Phase == PhaseIntent {
			v.open[c.ID] = &OpenIntent{Batch: seq, N: c.N, Record: c.Record}
		} else {
			delete(v.open, c.ID)
		}
	}
	switch {
	case c.N < want && v.moved[c.N]:
		// Already named by the reorder that moved it.
		delete(v.moved, c.N)
	case v.resync:
		if !self {
			v.fail(seq, i, c.ID, "changed", "record %d's content does not match its hash", c.N)
			return
		}
		v.resync = false
		advance()
	case c.N > want:
		for j := i + 1; j < len(b.Records); j++ {
			if b.Records[j].N == want {
				v.fail(seq, i, c.ID, "reordered", "record %d stands before record %d", c.N, want)
				v.moved[want] = true
				advance()
				return
			}
		}
		if c.N-1 == want {
			v.fail(seq, i, c.ID, "deleted", "record %d is missing before record %d", want, c.N)
		} else {
			v.fail(seq, i, c.ID, "deleted", "records %d to %d are missing before record %d", want, c.N-1, c.N)
		}
		if self {
			advance()
		} else {
			v.resync = true
		}
	case c.N < want:
		v.fail(seq, i, c.ID, "inserted", "a second record numbered %d", c.N)
	case !self:
		if i+1 < len(b.Records) && b.Records[i+1].N == c.N {
			v.fail(seq, i, c.ID, "inserted", "a record numbered %d that is not part of the chain", c.N)
			return
		}
		v.fail(seq, i, c.ID, "changed", "record %d's content does not match its hash", c.N)
		// Its stored hash is still the one the next record follows.
		advance()
	case c.Prev != v.prev:
		v.fail(seq, i, c.ID, "inserted", "record %d does not follow record %d: it was inserted or the chain rewritten before it", c.N, v.n)
		advance()
	default:
		advance()
	}
}

// Head is a point of the chain: a record's number and hash. An operator
// keeps one outside Vault (escrowctl audit checkpoint) to prove later that
// the trail still holds it.
type Head struct {
	N    uint64
	Hash string
	// At and MAC, when MAC is set: when the checkpoint was taken (Unix
	// seconds) and its MAC under the chain key (Vault.SignHead).
	At  int64
	MAC string
}

// String is N:HASH, or N:HASH:AT:MAC for a signed checkpoint.
func (h Head) String() string {
	if h.MAC != "" {
		return fmt.Sprintf("%d:%s:%d:%s", h.N, h.Hash, h.At, h.MAC)
	}
	return fmt.Sprintf("%d:%s", h.N, h.Hash)
}

// ParseHead reads a head as Head.String writes it.
func ParseHead(s string) (Head, error) {
	f := strings.Split(s, ":")
	if len(f) != 2 && len(f) != 4 {
		return Head{}, fmt.Errorf("head %q: want N:HASH or N:HASH:AT:MAC", s)
	}
	num, err := strconv.ParseUint(f[0], 10, 64)
	if err != nil || num == 0 {
		return Head{}, fmt.Errorf("head %q: N is not a record number", s)
	}
	if d, err := hex.DecodeString(f[1]); err != nil || len(d) != sha256.Size {
		return Head{}, fmt.Errorf("head %q: HASH is not 32 bytes of hex", s)
	}
	h := Head{N: num, Hash: strings.ToLower(f[1])}
	if len(f) == 4 {
		if h.At, err = strconv.ParseInt(f[2], 10, 64); err != nil || h.At <= 0 {
			return Head{}, fmt.Errorf("head %q: AT is not a time in Unix seconds", s)
		}
		if d, err := hex.DecodeString(f[3]); err != nil || len(d) != sha256.Size {
			return Head{}, fmt.Errorf("head %q: MAC is not 32 bytes of hex", s)
		}
		h.MAC = strings.ToLower(f[3])
	}
	return h, nil
}

// Expect makes Finish check that the chain reaches h: that the record
// numbered h.N is on the chain with hash h.Hash.
func (v *Verifier) Expect(h Head) { v.expect = append(v.expect, expected{Head: h}) }

type expected struct {
	Head
	seen  bool
	found string // the hash the record numbered N had on the chain
}

// Finish reports what only the end of the trail shows: an expected head
// the chain did not reach (truncated) or reached with another hash
// (rewritten before it).
func (v *Verifier) Finish() {
	for _, e := range v.expect {
		switch {
		case !e.seen && v.n < e.N:
			v.fail(v.nextSeq-1, -1, "", "truncated", "the trail ends at record %d, batch %d; the expected head %d:%s is not in it: records %d to %d were deleted", v.n, v.nextSeq-1, e.N, e.Hash, v.n+1, e.N)
		case !e.seen:
			v.fail(0, -1, "", "deleted", "the expected head %d:%s is not on the chain: record %d is missing", e.N, e.Hash, e.N)
		case e.found != e.Hash:
			v.fail(0, -1, "", "changed", "record %d has hash %s, the expected head says %s: the trail was rewritten up to it", e.N, e.found, e.Hash)
		}
	}
}
