package bundle

import (
	"errors"
	"reflect"
	"strings"
	"testing"
)

var iv12 = b64(12, 5)

func TestParseRecord(t *testing.T) {
	ct := b64(20, 6)
	tests := []struct {
		name, json, want string
	}{
		{"ok", `{"v":1,"group":"g","id":"r1","gdk_version":2,"iv":"` + iv12 + `","ct":"` + ct + `"}`, ""},
		{"short iv", `{"v":1,"group":"g","id":"r1","gdk_version":2,"iv":"` + b64(16, 5) + `","ct":"` + ct + `"}`, "iv is 16 bytes"},
		{"no tag", `{"v":1,"group":"g","id":"r1","gdk_version":2,"iv":"` + iv12 + `","ct":"` + b64(15, 1) + `"}`, "shorter than the GCM tag"},
		{"version 0", `{"v":1,"group":"g","id":"r1","gdk_version":0,"iv":"` + iv12 + `","ct":"` + ct + `"}`, "gdk_version"},
		{"no id", `{"v":1,"group":"g","gdk_version":1,"iv":"` + iv12 + `","ct":"` + ct + `"}`, "record id"},
		{"unknown field", `{"v":1,"group":"g","id":"r1","gdk_version":1,"iv":"` + iv12 + `","ct":"` + ct + `","aad":""}`, "unknown field"},
		{"v2", `{"v":2,"group":"g","id":"r1","gdk_version":1,"iv":"` + iv12 + `","ct":"` + ct + `"}`, "record version 2"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := ParseRecord([]byte(tt.json))
			if tt.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("ParseRecord = %v, %v; want ErrMalformed saying %q", r, err, tt.want)
			}
		})
	}
}

func TestRecordAAD(t *testing.T) {
	got := RecordAAD("g1", "r-7", 3)
	want := "escrowd record v1\x00\x00\x02g1\x00\x03r-7\x00\x00\x00\x03"
	if string(got) != want {
		t.Fatalf("RecordAAD = %q, want %q", got, want)
	}
}

// FuzzParseRecord: whatever parses marshals and parses back the same.
func FuzzParseRecord(f *testing.F) {
	f.Add([]byte(`{"v":1,"group":"g","id":"r1","gdk_version":2,"iv":"` + iv12 + `","ct":"` + b64(20, 6) + `"}`))
	f.Add([]byte(`{}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := ParseRecord(b)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("error %v does not wrap ErrMalformed", err)
			}
			return
		}
		m, err := r.Marshal()
		if err != nil {
			t.Fatalf("Marshal of a parsed record: %v", err)
		}
		again, err := ParseRecord(m)
		if err != nil || !reflect.DeepEqual(again, r) {
			t.Fatalf("round trip: %v, %v", again, err)
		}
	})
}
