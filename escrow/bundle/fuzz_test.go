package bundle

import (
	"bytes"
	"errors"
	"reflect"
	"testing"
)

// The fuzz targets check that no input panics, that every refusal is a
// classified ErrMalformed, and that whatever parses marshals to a
// canonical text that parses back to the same value.

func FuzzParseSlot(f *testing.F) {
	for _, r := range slotRefusals(f) {
		if len(r.input) <= MaxSlotSize {
			f.Add([]byte(r.input))
		}
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := ParseSlot(b)
		if err != nil {
			if !errors.Is(err, ErrMalformed) || Class(err) == "" {
				t.Fatalf("unclassified error: %v", err)
			}
			return
		}
		out, err := s.Marshal()
		if err != nil {
			t.Fatalf("a parsed slot does not marshal: %v", err)
		}
		again, err := ParseSlot(out)
		if err != nil || !reflect.DeepEqual(again, s) {
			t.Fatalf("round trip: %v\n%+v\n%+v", err, s, again)
		}
		if out2, _ := again.Marshal(); !bytes.Equal(out, out2) {
			t.Fatal("Marshal is not canonical")
		}
	})
}

func FuzzParseBundle(f *testing.F) {
	for _, r := range bundleRefusals(f) {
		if len(r.input) <= 16<<10 {
			f.Add([]byte(r.input))
		}
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		bd, err := Parse(b)
		if err != nil {
			if !errors.Is(err, ErrMalformed) || Class(err) == "" {
				t.Fatalf("unclassified error: %v", err)
			}
			return
		}
		out, err := bd.Marshal()
		if err != nil {
			t.Fatalf("a parsed bundle does not marshal: %v", err)
		}
		again, err := Parse(out)
		if err != nil || !reflect.DeepEqual(again, bd) {
			t.Fatalf("round trip: %v", err)
		}
		if out2, _ := again.Marshal(); !bytes.Equal(out, out2) {
			t.Fatal("Marshal is not canonical")
		}
	})
}

func FuzzParseRecord(f *testing.F) {
	for _, r := range recordRefusals(f) {
		if len(r.input) <= 16<<10 {
			f.Add([]byte(r.input))
		}
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := ParseRecord(b)
		if err != nil {
			if !errors.Is(err, ErrMalformed) || Class(err) == "" {
				t.Fatalf("unclassified error: %v", err)
			}
			return
		}
		out, err := r.Marshal()
		if err != nil {
			t.Fatalf("a parsed record does not marshal: %v", err)
		}
		again, err := ParseRecord(out)
		if err != nil || !reflect.DeepEqual(again, r) {
			t.Fatalf("round trip: %v", err)
		}
		if out2, _ := again.Marshal(); !bytes.Equal(out, out2) {
			t.Fatal("Marshal is not canonical")
		}
	})
}
