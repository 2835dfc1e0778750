package audit

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// testRecords are the two records of batch 1 of a fresh trail.
func testRecords(t testing.TB) []Chained {
	t.Helper()
	recs := []*Record{
		{ID: "r1", Time: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC), Caller: "spiffe://example.org/sync", Operation: "Rewrap", Outcome: "allowed", Code: "OK"},
		{ID: "r2", Time: time.Date(2026, 1, 2, 3, 4, 6, 0, time.UTC), Caller: "spiffe://example.org/support/ann", Operation: "RevealUnlockCode", Outcome: "denied", Code: "PermissionDenied"},
	}
	chained, _, _, err := link(recs, 0, Genesis)
	if err != nil {
		t.Fatal(err)
	}
	return chained
}

// validBatch is batch 1 as stored in Vault.
func validBatch(t testing.TB) []byte {
	t.Helper()
	b, err := encodeBatch(&Batch{Seq: 1, Records: testRecords(t)})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// keyed adds a key id and MAC, as JSON values, to a document.
func keyed(d, key, mac string) string {
	return strings.TrimSuffix(d, "}") + `,"key":` + key + `,"mac":` + mac + `}`
}

// doc is a Vault document with the given seq and records text.
func doc(seq, records string) string {
	r, _ := json.Marshal(records)
	return `{"seq":` + seq + `,"records":` + string(r) + `}`
}

func TestParseBatch(t *testing.T) {
	good := validBatch(t)
	// testdata/batch-1.json pins the document and the chain's hash
	// definition: a change to either breaks every trail already in Vault.
	pinned, err := os.ReadFile(filepath.Join("testdata", "batch-1.json"))
	if err != nil {
		t.Fatal(err)
	}
	if string(pinned) != string(good) {
		t.Fatalf("the chain of the same records changed:\n got %s\nwant %s", good, pinned)
	}
	recs, _ := json.Marshal(testRecords(t))
	tests := []struct {
		name string
		raw  string
		want string // substring of the error; "" means it parses
	}{
		{"valid", string(good), ""},
		{"empty", ``, "EOF"},
		{"not json", `{`, "unexpected EOF"},
		{"array", `[]`, "cannot unmarshal"},
		{"no seq", `{"records":"[]"}`, "no batch position"},
		{"unknown field", `{"seq":1,"records":"[]","extra":1}`, "unknown field"},
		{"trailing data", string(good) + `{}`, "data after the value"},
		{"seq as string", `{"seq":"1","records":"[]"}`, "cannot unmarshal"},
		{"records as a structure", `{"seq":1,"records":[]}`, "cannot unmarshal"},
		{"records not json", doc("1", "[{"), "records: unexpected EOF"},
		{"records with trailing data", doc("1", string(recs)+"[]"), "records: data after the value"},
		{"unknown field in a record", doc("1", strings.Replace(string(recs), `"id":"r2"`, `"id":"r2","secret":"x"`, 1)), "records: json: unknown field"},
		{"short hash", doc("1", strings.Replace(string(recs), `"hash":"`, `"hash":"ab`, 1)), "not 32 bytes of hex"},
		{"hash not hex", doc("1", strings.Replace(string(recs), `"prev":"0`, `"prev":"z`, 1)), "not 32 bytes of hex"},
		{"keyed", keyed(doc("1", string(recs)), `"0011223344556677"`, `"`+strings.Repeat("ab", 32)+`"`), ""},
		{"MAC without key", keyed(doc("1", string(recs)), `""`, `"`+strings.Repeat("ab", 32)+`"`), "key id is not 8 bytes"},
		{"key without MAC", keyed(doc("1", string(recs)), `"0011223344556677"`, `""`), "MAC is not 32 bytes"},
		{"short MAC", keyed(doc("1", string(recs)), `"0011223344556677"`, `"abab"`), "MAC is not 32 bytes"},
		{"MAC not hex", keyed(doc("1", string(recs)), `"0011223344556677"`, `"`+strings.Repeat("zz", 32)+`"`), "MAC is not 32 bytes"},
		{"MAC a number", keyed(doc("1", string(recs)), `"0011223344556677"`, `7`), "cannot unmarshal"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b, err := ParseBatch([]byte(tc.raw))
			if tc.want == "" {
				if err != nil {
					t.Fatalf("ParseBatch: %v", err)
				}
				if b.Seq != 1 || len(b.Records) != 2 || b.Records[1].ID != "r2" {
					t.Fatalf("parsed %+v", b)
				}
				v := NewVerifier()
				if !v.Add(b.Seq, b) {
					t.Fatalf("a valid batch fails verification: %v", v.Problem)
				}
				return
			}
			if err == nil || !errors.Is(err, errBadBatch) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("ParseBatch: %v, want errBadBatch containing %q", err, tc.want)
			}
		})
	}
}

func TestParseHead(t *testing.T) {
	hash, mac := strings.Repeat("ab", 32), strings.Repeat("cd", 32)
	tests := []struct {
		in   string
		want string // "" means it parses and prints back the same
	}{
		{"12:" + hash, ""},
		{"12:" + hash + ":1767225600:" + mac, ""},
		{"", "want N:HASH"},
		{"12", "want N:HASH"},
		{"12:" + hash + ":1767225600", "want N:HASH"},
		{"0:" + hash, "not a record number"},
		{"-1:" + hash, "not a record number"},
		{"x:" + hash, "not a record number"},
		{"12:abcd", "HASH is not 32 bytes"},
		{"12:" + strings.Repeat("zz", 32), "HASH is not 32 bytes"},
		{"12:" + hash + ":0:" + mac, "AT is not a time"},
		{"12:" + hash + ":soon:" + mac, "AT is not a time"},
		{"12:" + hash + ":1767225600:abcd", "MAC is not 32 bytes"},
	}
	for _, tt := range tests {
		h, err := ParseHead(tt.in)
		if tt.want == "" {
			if err != nil || h.String() != tt.in {
				t.Errorf("ParseHead(%q) = %v, %v", tt.in, h, err)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("ParseHead(%q): %v, want an error saying %q", tt.in, err, tt.want)
		}
	}
}

// FuzzParseHead: whatever an operator pastes, ParseHead answers without
// panicking, and a head it accepts prints back as it parses.
func FuzzParseHead(f *testing.F) {
	f.Add("12:" + strings.Repeat("ab", 32))
	f.Add("12:" + strings.Repeat("ab", 32) + ":1767225600:" + strings.Repeat("cd", 32))
	f.Fuzz(func(t *testing.T, s string) {
		h, err := ParseHead(s)
		if err != nil {
			return
		}
		again, err := ParseHead(h.String())
		if err != nil || again != h {
			t.Fatalf("round trip of %q: %v, %v", s, again, err)
		}
	})
}

// FuzzParseBatch: whatever Vault hands back, the decoder and the verifier
// return an answer and never panic, and a batch that parses says the same
// thing after a round trip.
func FuzzParseBatch(f *testing.F) {
	f.Add(validBatch(f))
	f.Add([]byte(doc("1", "[]")))
	f.Add([]byte(doc("2", `[{"n":1,"prev":"","hash":""}]`)))
	f.Add([]byte(keyed(doc("1", "[]"), `"0011223344556677"`, `"`+strings.Repeat("ab", 32)+`"`)))
	f.Fuzz(func(t *testing.T, raw []byte) {
		b, err := ParseBatch(raw)
		if err != nil {
			if !errors.Is(err, errBadBatch) {
				t.Fatalf("error %v does not wrap errBadBatch", err)
			}
			return
		}
		NewVerifier().Add(b.Seq, b)
		again, err := encodeBatch(b)
		if err != nil {
			t.Fatal(err)
		}
		b2, err := ParseBatch(again)
		if err != nil {
			t.Fatalf("a parsed batch does not parse again: %v", err)
		}
		if b2.Seq != b.Seq || len(b2.Records) != len(b.Records) {
			t.Fatalf("round trip changed the batch")
		}
	})
}

// TestLinkJSON pins the writer's encoding to the one the verifier
// decodes: linkJSON, from each record's JSON, gives byte for byte the
// records json.Marshal makes of link's chain, and encodeDocument the
// document encodeBatch makes.
func TestLinkJSON(t *testing.T) {
	at := time.Date(2026, 1, 2, 3, 4, 5, 123456789, time.UTC)
	tests := []struct {
		name string
		recs []*Record
		n    uint64
		prev string
	}{
		{"one record from the genesis", []*Record{{ID: "a", Time: at, Caller: "c", Operation: "Rewrap", Outcome: OutcomeOK, Code: "OK"}}, 0, Genesis},
		{"every field", []*Record{{ID: "b", Time: at, Caller: "spiffe://x/support/ann", Operation: "RevealUnlockCode", Phase: PhaseOutcome,
			Group: "g", User: "u", Ticket: "INC-1", KeyVersions: []string{"unlock:1"}, Detail: []string{"index:3", "epoch:2"},
			Outcome: OutcomeOK, Code: "OK", Reason: "r"}}, 41, strings.Repeat("ab", 32)},
		{"characters JSON escapes", []*Record{
			{ID: "c", Time: at, Caller: `<a href="x">&\`, Operation: "o\u2028p\x01", Outcome: OutcomeDenied, Code: "PermissionDenied", Reason: "é\"\n"},
			{ID: "d", Time: at, Caller: "c", Operation: "o", Phase: PhaseIntent, Outcome: "", Code: ""},
		}, 7, strings.Repeat("0f", 32)},
		{"a batch of many", func() []*Record {
			var rs []*Record
			for i := range 50 {
				rs = append(rs, &Record{ID: strings.Repeat("x", i), Time: at.Add(time.Duration(i)), Caller: "c", Operation: "o", Outcome: OutcomeError, Code: "Internal"})
			}
			return rs
		}(), 1 << 40, Genesis},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			chained, n, head, err := link(tt.recs, tt.n, tt.prev)
			if err != nil {
				t.Fatal(err)
			}
			want, err := json.Marshal(chained)
			if err != nil {
				t.Fatal(err)
			}
			var bodies [][]byte
			for _, r := range tt.recs {
				b, err := json.Marshal(r)
				if err != nil {
					t.Fatal(err)
				}
				bodies = append(bodies, b)
			}
			got, gn, ghead, err := linkJSON(bodies, tt.n, tt.prev)
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != string(want) || gn != n || ghead != head {
				t.Fatalf("linkJSON differs from link:\n got %s (%d %s)\nwant %s (%d %s)", got, gn, ghead, want, n, head)
			}
			key, mac := strings.Repeat("cd", 8), strings.Repeat("ef", 32)
			doc, err := encodeDocument(9, got, key, mac)
			if err != nil {
				t.Fatal(err)
			}
			wantDoc, err := encodeBatch(&Batch{Seq: 9, Records: chained, Key: key, MAC: mac})
			if err != nil {
				t.Fatal(err)
			}
			if string(doc) != string(wantDoc) {
				t.Fatalf("encodeDocument differs from encodeBatch:\n got %s\nwant %s", doc, wantDoc)
			}
			b, err := ParseBatch(doc)
			if err != nil || len(b.Records) != len(tt.recs) || b.Records[len(b.Records)-1].Hash != head {
				t.Fatalf("ParseBatch of the document: %v", err)
			}
		})
	}
	bad := []struct {
		name   string
		bodies [][]byte
		prev   string
	}{
		{"not an object", [][]byte{[]byte(`[1]`)}, Genesis},
		{"empty", [][]byte{nil}, Genesis},
		{"prev not hex", [][]byte{[]byte(`{"id":"a"}`)}, "zz"},
		{"prev short", [][]byte{[]byte(`{"id":"a"}`)}, "abcd"},
	}
	for _, tt := range bad {
		t.Run(tt.name, func(t *testing.T) {
			if _, _, _, err := linkJSON(tt.bodies, 0, tt.prev); err == nil {
				t.Fatal("linkJSON accepted it")
			}
		})
	}
}

// BenchmarkBatchEncode is the writer's CPU per batch of 32 reveal-sized
// records: "map" is how it was built (each record encoded to hash it,
// the chain encoded, decoded into a map, and the map encoded again by
// the Vault client), "raw" how it is (linkJSON from each record's JSON
// made at Commit, then the request body around the document).
func BenchmarkBatchEncode(b *testing.B) {
	at := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	var recs []*Record
	var bodies [][]byte
	for i := range 32 {
		r := &Record{ID: NewID(at), Time: at, Caller: "spiffe://example.org/support/ann", Operation: "/escrowd.v1.SupportService/RevealUnlockCode",
			Phase: PhaseOutcome, Group: "bench-g0000123", User: "bench-u" + strings.Repeat("0", i%5), Ticket: "INC-000123",
			KeyVersions: []string{"unlock:1"}, Detail: []string{"index:3"}, Outcome: OutcomeOK, Code: "OK"}
		recs = append(recs, r)
		body, _ := json.Marshal(r)
		bodies = append(bodies, body)
	}
	b.Run("map", func(b *testing.B) {
		for b.Loop() {
			for _, r := range recs { // the size check at Commit
				if _, err := json.Marshal(r); err != nil {
					b.Fatal(err)
				}
			}
			chained, _, _, err := link(recs, 0, Genesis)
			if err != nil {
				b.Fatal(err)
			}
			data, err := batchData(&Batch{Seq: 1, Records: chained})
			if err != nil {
				b.Fatal(err)
			}
			if _, err := json.Marshal(map[string]any{"data": data, "options": map[string]any{"cas": 0}}); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("raw", func(b *testing.B) {
		for b.Loop() {
			for _, r := range recs { // the record's JSON, made at Commit
				if _, err := json.Marshal(r); err != nil {
					b.Fatal(err)
				}
			}
			chained, _, _, err := linkJSON(bodies, 0, Genesis)
			if err != nil {
				b.Fatal(err)
			}
			doc, err := encodeDocument(1, chained, "", "")
			if err != nil {
				b.Fatal(err)
			}
			body := append([]byte(`{"data":`), doc...)
			_ = append(body, `,"options":{"cas":0}}`...)
		}
	})
}
