package strictjson

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"reflect"
	"testing"
)

// The vector file is shared with @escrowd/device (clients/web/test/vectors.ts), which
// must give every case the same outcome.
const vectorFile = "testdata/vectors.json"

type vector struct {
	Name      string  `json:"name"`
	Op        string  `json:"op"`
	Input     *string `json:"input"`
	InputHex  *string `json:"input_hex"`
	OK        bool    `json:"ok"`
	Class     string  `json:"class"`
	Canonical *string `json:"canonical"`
	Hex       *string `json:"hex"`
	Schema    *schema `json:"schema"`
	Want      any     `json:"want"`
}

// schema is an object's fields as a format decoder would read them, so
// that one generic runner in each language exercises the Object layer.
type schema struct {
	Allowed []string `json:"allowed"`
	Fields  []field  `json:"fields"`
}

type field struct {
	Key      string   `json:"key"`
	Type     string   `json:"type"` // string, uint32, bytes, object, array
	Min      int64    `json:"min"`
	Max      int64    `json:"max"`
	Optional bool     `json:"optional"`
	Allowed  []string `json:"allowed"` // object
	Fields   []field  `json:"fields"`  // object
	Items    *schema  `json:"items"`   // array of objects; without it the result is the length
}

var classes = map[string]bool{"syntax": true, "duplicate-key": true, "unknown-key": true,
	"missing-key": true, "type": true, "range": true, "base64": true}

func loadVectors(t testing.TB) []vector {
	t.Helper()
	b, err := os.ReadFile(vectorFile)
	if err != nil {
		t.Fatal(err)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	var vs []vector
	if err := dec.Decode(&vs); err != nil {
		t.Fatal(err)
	}
	return vs
}

func (v *vector) input(t testing.TB) []byte {
	switch {
	case v.Input != nil && v.InputHex == nil:
		return []byte(*v.Input)
	case v.InputHex != nil && v.Input == nil:
		b, err := hex.DecodeString(*v.InputHex)
		if err != nil {
			t.Fatalf("%s: input_hex: %v", v.Name, err)
		}
		return b
	}
	t.Fatalf("%s: want exactly one of input and input_hex", v.Name)
	return nil
}

func TestVectors(t *testing.T) {
	vs := loadVectors(t)
	if len(vs) < 60 {
		t.Fatalf("%d vectors, want at least 60", len(vs))
	}
	names := map[string]bool{}
	for _, v := range vs {
		if names[v.Name] {
			t.Errorf("duplicate vector name %q", v.Name)
		}
		names[v.Name] = true
		if v.OK == (v.Class != "") || !v.OK && !classes[v.Class] {
			t.Errorf("%s: bad ok/class %v/%q", v.Name, v.OK, v.Class)
			continue
		}
		t.Run(v.Name, func(t *testing.T) { runVector(t, v) })
	}
	t.Logf("%d vectors", len(vs))
}

func runVector(t *testing.T, v vector) {
	in := v.input(t)
	var err error
	switch v.Op {
	case "parse":
		var val Value
		val, err = Parse(in)
		if err == nil && v.OK {
			enc, err := Encode(val)
			if err != nil {
				t.Fatalf("Encode: %v", err)
			}
			if v.Canonical == nil || string(enc) != *v.Canonical {
				t.Errorf("Encode = %q, want %q", enc, deref(v.Canonical))
			}
			if !json.Valid(in) {
				t.Errorf("encoding/json does not think this is JSON")
			}
			again, err := Parse(enc)
			if err != nil || !equal(val, again) {
				t.Errorf("Parse(Encode(v)) = %v, %v", again, err)
			}
		}
	case "base64":
		var b []byte
		b, err = DecodeBase64(string(in))
		if err == nil && v.OK {
			if v.Hex == nil || hex.EncodeToString(b) != *v.Hex {
				t.Errorf("decoded %x, want %s", b, deref(v.Hex))
			}
			if EncodeBase64(b) != string(in) {
				t.Errorf("EncodeBase64 = %q, want the input back", EncodeBase64(b))
			}
		}
	case "fields":
		if v.Schema == nil {
			t.Fatal("fields vector without a schema")
		}
		var got map[string]any
		got, err = readFields(in, *v.Schema)
		if err == nil && v.OK && !reflect.DeepEqual(got, v.Want) {
			t.Errorf("read %#v, want %#v", got, v.Want)
		}
	default:
		t.Fatalf("unknown op %q", v.Op)
	}
	switch {
	case v.OK && err != nil:
		t.Errorf("error %v, want success", err)
	case !v.OK && err == nil:
		t.Errorf("success, want %s", v.Class)
	case !v.OK && (Class(err) != v.Class || !errors.Is(err, ErrMalformed)):
		t.Errorf("error %v (class %q), want class %q", err, Class(err), v.Class)
	}
}

func deref(s *string) string {
	if s == nil {
		return "<absent>"
	}
	return *s
}

// readFields reads in as a decoder following s would, returning what it
// read in the vector file's "want" shape: integers as float64 (as
// encoding/json decodes them), bytes as hex, arrays without items as
// their length.
func readFields(in []byte, s schema) (map[string]any, error) {
	v, err := Parse(in)
	if err != nil {
		return nil, err
	}
	o, err := v.Object(s.Allowed...)
	if err != nil {
		return nil, err
	}
	return readObject(o, s.Fields)
}

func readObject(o *Object, fs []field) (map[string]any, error) {
	res := map[string]any{}
	for _, f := range fs {
		if f.Optional && !o.Has(f.Key) {
			continue
		}
		switch f.Type {
		case "string":
			s, err := o.String(f.Key, int(f.Min), int(f.Max))
			if err != nil {
				return nil, err
			}
			res[f.Key] = s
		case "uint32":
			n, err := o.Uint32(f.Key, uint32(f.Min), uint32(f.Max))
			if err != nil {
				return nil, err
			}
			res[f.Key] = float64(n)
		case "bytes":
			b, err := o.Bytes(f.Key, int(f.Min), int(f.Max))
			if err != nil {
				return nil, err
			}
			res[f.Key] = hex.EncodeToString(b)
		case "object":
			c, err := o.Child(f.Key, f.Allowed...)
			if err != nil {
				return nil, err
			}
			sub, err := readObject(c, f.Fields)
			if err != nil {
				return nil, err
			}
			res[f.Key] = sub
		case "array":
			arr, err := o.Array(f.Key, int(f.Min), int(f.Max))
			if err != nil {
				return nil, err
			}
			if f.Items == nil {
				res[f.Key] = float64(len(arr))
				continue
			}
			list := []any{}
			for _, e := range arr {
				eo, err := e.Object(f.Items.Allowed...)
				if err != nil {
					return nil, err
				}
				m, err := readObject(eo, f.Items.Fields)
				if err != nil {
					return nil, err
				}
				list = append(list, m)
			}
			res[f.Key] = list
		default:
			return nil, fmt.Errorf("schema: unknown type %q", f.Type)
		}
	}
	return res, nil
}

// equal compares values, treating nil and empty slices alike.
func equal(a, b Value) bool {
	if a.Kind != b.Kind || a.Str != b.Str || a.Int != b.Int || len(a.Arr) != len(b.Arr) || len(a.Obj) != len(b.Obj) {
		return false
	}
	for i := range a.Arr {
		if !equal(a.Arr[i], b.Arr[i]) {
			return false
		}
	}
	for i := range a.Obj {
		if a.Obj[i].Key != b.Obj[i].Key || !equal(a.Obj[i].Val, b.Obj[i].Val) {
			return false
		}
	}
	return true
}
