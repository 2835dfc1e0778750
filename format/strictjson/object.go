package strictjson

import "strconv"

// Object reads the fields of one object into a format's struct. The
// allow-list is checked once, up front, so that an unknown key is refused
// even if the decoder never asks for it; then each accessor checks the
// type and bounds of one field.
//
// Every accessor is for a required field; an optional field is read with
// Has and then the accessor. Required values are never empty: min bounds
// below 1 are raised to 1 for strings, byte strings and arrays. "Absent"
// is the only way for a field to say "nothing", so a decoder does not have
// to choose between an absent field, "" and [].
type Object struct {
	path string // for messages: "$", "$.kdf", ...
	ms   []Member
}

// Object returns a reader for v, which must be an object whose keys are
// all in allowed (compared byte for byte: "Kind" is not "kind").
func (v Value) Object(allowed ...string) (*Object, error) {
	return v.object("$", allowed)
}

func (v Value) object(path string, allowed []string) (*Object, error) {
	if v.Kind != KindObject {
		return nil, fail(ErrType, path+" is "+article(v.Kind)+", want an object")
	}
	for _, m := range v.Obj {
		ok := false
		for _, a := range allowed {
			if m.Key == a {
				ok = true
				break
			}
		}
		if !ok {
			return nil, fail(ErrUnknownKey, path+" has unknown key "+quoteKey(m.Key))
		}
	}
	return &Object{path: path, ms: v.Obj}, nil
}

// Has reports whether the object has key.
func (o *Object) Has(key string) bool {
	_, ok := o.get(key)
	return ok
}

func (o *Object) get(key string) (Value, bool) {
	for _, m := range o.ms {
		if m.Key == key {
			return m.Val, true
		}
	}
	return Value{}, false
}

// field returns the value of a required key of the wanted kind.
func (o *Object) field(key string, want Kind) (Value, error) {
	v, ok := o.get(key)
	if !ok {
		return Value{}, fail(ErrMissingKey, o.name(key)+" is missing")
	}
	if v.Kind != want {
		return Value{}, fail(ErrType, o.name(key)+" is "+article(v.Kind)+", want "+article(want))
	}
	return v, nil
}

// String returns the string at key, whose length in bytes must be within
// [min, max].
func (o *Object) String(key string, min, max int) (string, error) {
	v, err := o.field(key, KindString)
	if err != nil {
		return "", err
	}
	if err := o.length(key, "length", len(v.Str), min, max); err != nil {
		return "", err
	}
	return v.Str, nil
}

// Uint32 returns the integer at key, which must be within [min, max].
func (o *Object) Uint32(key string, min, max uint32) (uint32, error) {
	v, err := o.field(key, KindInt)
	if err != nil {
		return 0, err
	}
	if v.Int < min || v.Int > max {
		return 0, fail(ErrRange, o.name(key)+" is "+strconv.FormatUint(uint64(v.Int), 10)+
			", want "+strconv.FormatUint(uint64(min), 10)+".."+strconv.FormatUint(uint64(max), 10))
	}
	return v.Int, nil
}

// Bytes returns the bytes whose canonical base64 (DecodeBase64) is the
// string at key; the decoded length must be within [minLen, maxLen]. An
// empty string is "range", like every empty required value, not "base64".
func (o *Object) Bytes(key string, minLen, maxLen int) ([]byte, error) {
	v, err := o.field(key, KindString)
	if err != nil {
		return nil, err
	}
	if v.Str == "" {
		return nil, fail(ErrRange, o.name(key)+" is empty")
	}
	b, err := DecodeBase64(v.Str)
	if err != nil {
		return nil, fail(ErrBase64, o.name(key)+": "+err.(*failure).msg)
	}
	if err := o.length(key, "decoded length", len(b), minLen, maxLen); err != nil {
		return nil, err
	}
	return b, nil
}

// Child returns a reader for the object at key, whose keys must all be in
// allowed.
func (o *Object) Child(key string, allowed ...string) (*Object, error) {
	v, err := o.field(key, KindObject)
	if err != nil {
		return nil, err
	}
	return v.object(o.name(key), allowed)
}

// Array returns the elements of the array at key, whose length must be
// within [min, max]. An element that is an object is read with its own
// Object call.
func (o *Object) Array(key string, min, max int) ([]Value, error) {
	v, err := o.field(key, KindArray)
	if err != nil {
		return nil, err
	}
	if err := o.length(key, "length", len(v.Arr), min, max); err != nil {
		return nil, err
	}
	return v.Arr, nil
}

func (o *Object) length(key, what string, n, min, max int) error {
	if min < 1 {
		min = 1
	}
	if n < min || n > max {
		if n == 0 {
			return fail(ErrRange, o.name(key)+" is empty")
		}
		return fail(ErrRange, o.name(key)+" has "+what+" "+strconv.Itoa(n)+
			", want "+strconv.Itoa(min)+".."+strconv.Itoa(max))
	}
	return nil
}

// name is the path of a field for messages. Keys here are the caller's
// (asked for, or checked against the allow-list), so they are shown as is.
func (o *Object) name(key string) string {
	return o.path + "." + key
}

func article(k Kind) string {
	switch k {
	case KindObject, KindArray, KindInt:
		return "an " + k.String()
	case KindString:
		return "a string"
	}
	return "an invalid value"
}
