package bundle

import (
	"bytes"
	"reflect"
	"strings"
	"testing"
)

func recordFixture() *Record {
	return &Record{Group: "family-42", ID: "note-1", GDKVersion: 2, IV: fill(IVSize, 5), CT: fill(40, 6)}
}

func marshalRecord(t testing.TB, r *Record) string {
	t.Helper()
	b, err := r.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func recordRefusals(t testing.TB) []refusal {
	ok := marshalRecord(t, recordFixture())
	e := func(path, raw string) string { return edit(t, ok, path, raw) }
	return []refusal{
		{"ok", ok, ""},
		{"ct of 16 bytes (empty plaintext)", e("ct", qb(TagSize, 1)), ""},
		{"ct of 64 KiB", e("ct", qb(64<<10, 1)), ""},
		{"gdk_version 2^31-1", e("gdk_version", "2147483647"), ""},
		{"size: 4 MiB + 1", ok + strings.Repeat(" ", MaxRecordSize+1-len(ok)), "size"},
		{"syntax: trailing data", ok + "x", "syntax"},
		{"syntax: non-ASCII id", strings.Replace(ok, `"note-1"`, "\"n\u00f6te\"", 1), "syntax"},
		{"duplicate-key: iv", strings.Replace(ok, `"v":2`, `"v":2,"iv":"AAAA"`, 1), "duplicate-key"},
		{"unknown-key: aad", e("aad", qb(4, 1)), "unknown-key"},
		{"unknown-key: a slot key", e("kind", `"escrow"`), "unknown-key"},
		{"missing-key: v", e("v", ""), "missing-key"},
		{"missing-key: group", e("group", ""), "missing-key"},
		{"missing-key: id", e("id", ""), "missing-key"},
		{"missing-key: gdk_version", e("gdk_version", ""), "missing-key"},
		{"missing-key: iv", e("iv", ""), "missing-key"},
		{"missing-key: ct", e("ct", ""), "missing-key"},
		{"type: iv is an integer", e("iv", "12"), "type"},
		{"type: gdk_version is a string", e("gdk_version", `"2"`), "type"},
		{"range: gdk_version 0", e("gdk_version", "0"), "range"},
		{"range: gdk_version 2^31", e("gdk_version", "2147483648"), "range"},
		{"range: iv of 11 bytes", e("iv", qb(11, 1)), "range"},
		{"range: iv of 13 bytes", e("iv", qb(13, 1)), "range"},
		{"range: iv of 16 bytes", e("iv", qb(16, 1)), "range"},
		{"range: ct of 15 bytes", e("ct", qb(TagSize-1, 1)), "range"},
		{"range: id of 129 bytes", e("id", q(strings.Repeat("i", 129))), "range"},
		{"base64: ct", e("ct", `"AAA"`), "base64"},
		{"version: 1", e("v", "1"), "version"},
		{"version: 3", e("v", "3"), "version"},
		{"id: id with a space", e("id", `"note 1"`), "id"},
		{"id: group with a space", e("group", `"family 42"`), "id"},
	}
}

func TestParseRecordRefusals(t *testing.T) {
	check(t, "ParseRecord", func(b []byte) error { _, err := ParseRecord(b); return err }, recordRefusals(t))
}

func TestRecordRoundTrip(t *testing.T) {
	r := recordFixture()
	text := marshalRecord(t, r)
	want := `{"v":2,"group":"family-42","id":"note-1","gdk_version":2,"iv":` + qb(12, 5) + `,"ct":` + qb(40, 6) + `}`
	if text != want {
		t.Fatalf("canonical record:\n got %s\nwant %s", text, want)
	}
	back, err := ParseRecord([]byte(text))
	if err != nil || !reflect.DeepEqual(back, r) {
		t.Fatalf("ParseRecord(Marshal(r)) = %+v, %v", back, err)
	}
	spaced := strings.NewReplacer(",", " ,\n", ":", ": ").Replace(text)
	back, err = ParseRecord([]byte(spaced))
	if err != nil || marshalRecord(t, back) != text {
		t.Fatalf("a spaced writing: %v", err)
	}
	bad := recordFixture()
	bad.IV = nil
	if err := bad.Validate(); Class(err) != "range" {
		t.Fatalf("Validate of a record without an IV: %v", err)
	}
}

func TestRecordAAD(t *testing.T) {
	got := RecordAAD("g1", "r-7", 3)
	want := "escrowd v2 record\x00\x00\x02g1\x00\x03r-7\x00\x00\x00\x03"
	if string(got) != want {
		t.Fatalf("RecordAAD = %q, want %q", got, want)
	}
	if bytes.Equal(RecordAAD("g1", "r-7", 3), RecordAAD("g1", "r-7", 4)) {
		t.Fatal("the version is not in the AAD")
	}
}
