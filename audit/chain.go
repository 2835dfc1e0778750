package audit

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
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
}

// encodeBatch is b as written to Vault.
func encodeBatch(b *Batch) ([]byte, error) {
	recs, err := json.Marshal(b.Records)
	if err != nil {
		return nil, err
	}
	return json.Marshal(document{Seq: b.Seq, Records: string(recs)})
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
	b := Batch{Seq: d.Seq}
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
	p, err := hex.DecodeString(prev)
	if err != nil || len(p) != sha256.Size {
		return "", fmt.Errorf("prev hash %q is not 32 bytes of hex", prev)
	}
	body, err := json.Marshal(r)
	if err != nil {
		return "", err
	}
	h := sha256.New()
	h.Write(p)
	h.Write(binary.BigEndian.AppendUint64(nil, n))
	h.Write(body)
	return hex.EncodeToString(h.Sum(nil)), nil
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

// Problem is the first thing Verify found wrong.
type Problem struct {
	// Batch and Index locate the record in the trail (Index -1: the batch
	// as a whole).
	Batch  uint64
	Index  int
	Record string // the record's id, when there is one
	Kind   string // "changed", "deleted", "reordered", "inserted", "unreadable"
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

// Verifier walks a trail batch by batch.
type Verifier struct {
	nextSeq uint64
	n       uint64
	prev    string
	records int
	// Problem is set at the first break; later input is ignored.
	Problem *Problem
}

// NewVerifier starts at the beginning of a trail.
func NewVerifier() *Verifier { return &Verifier{nextSeq: 1, prev: Genesis} }

// Head returns the number of records verified and the last hash.
func (v *Verifier) Head() (int, string) { return v.records, v.prev }

// Add checks the batch stored at position seq. It returns false once a
// problem is found.
func (v *Verifier) Add(seq uint64, b *Batch) bool {
	if v.Problem != nil {
		return false
	}
	fail := func(i int, rec, kind, format string, args ...any) bool {
		v.Problem = &Problem{Batch: seq, Index: i, Record: rec, Kind: kind, Detail: fmt.Sprintf(format, args...)}
		return false
	}
	switch {
	case seq > v.nextSeq:
		return fail(-1, "", "deleted", "batches %d to %d are missing", v.nextSeq, seq-1)
	case seq < v.nextSeq:
		return fail(-1, "", "reordered", "batch %d appears after batch %d", seq, v.nextSeq-1)
	case b.Seq != seq:
		return fail(-1, "", "reordered", "the batch stored at %d says it is batch %d", seq, b.Seq)
	}
	v.nextSeq++
	if len(b.Records) == 0 {
		return fail(-1, "", "deleted", "the batch holds no records")
	}
	for i := range b.Records {
		c := &b.Records[i]
		want := v.n + 1
		if c.N > want {
			for j := i + 1; j < len(b.Records); j++ {
				if b.Records[j].N == want {
					return fail(i, c.ID, "reordered", "record %d stands before record %d", c.N, want)
				}
			}
			if c.N-1 == want {
				return fail(i, c.ID, "deleted", "record %d is missing before record %d", want, c.N)
			}
			return fail(i, c.ID, "deleted", "records %d to %d are missing before record %d", want, c.N-1, c.N)
		}
		if c.N < want {
			return fail(i, c.ID, "inserted", "a second record numbered %d", c.N)
		}
		h, err := hashRecord(c.Prev, c.N, &c.Record)
		if err != nil || h != c.Hash {
			if i+1 < len(b.Records) && b.Records[i+1].N == c.N {
				return fail(i, c.ID, "inserted", "a record numbered %d that is not part of the chain", c.N)
			}
			return fail(i, c.ID, "changed", "record %d's content does not match its hash", c.N)
		}
		if c.Prev != v.prev {
			return fail(i, c.ID, "inserted", "record %d does not follow record %d: it was inserted or the chain rewritten before it", c.N, v.n)
		}
		v.n, v.prev = c.N, c.Hash
		v.records++
	}
	return true
}
