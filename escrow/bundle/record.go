package bundle

import (
	"github.com/escrowd/escrowd/format"
	"github.com/escrowd/escrowd/format/strictjson"
)

// Record is one piece of group data encrypted with AES-256-GCM under the
// record key of a GDK, DK(GDK, format.LabelRecord) (docs/FORMAT.md,
// "Encrypted records").
type Record struct {
	Group string
	ID    string
	// GDKVersion is the version of the GDK whose record key encrypted the
	// record: 1 for the group's first, one more after each rotation.
	GDKVersion uint32
	// IV is a fresh 12-byte nonce; CT the ciphertext with its 16-byte tag.
	IV []byte
	CT []byte
}

// Record limits.
const (
	IVSize        = 12
	TagSize       = 16
	MaxRecordSize = 4 << 20
)

// RecordAAD is the additional data of a record (format.RecordAAD).
func RecordAAD(group, id string, gdkVersion uint32) []byte {
	return format.RecordAAD(group, id, gdkVersion)
}

// Validate checks r by encoding and decoding it.
func (r *Record) Validate() error {
	_, err := r.Marshal()
	return err
}

// Marshal encodes r in canonical form and checks it with ParseRecord.
func (r *Record) Marshal() ([]byte, error) {
	b, err := strictjson.Encode(strictjson.Value{Kind: strictjson.KindObject, Obj: []strictjson.Member{
		{Key: "v", Val: num(Version)},
		{Key: "group", Val: str(r.Group)},
		{Key: "id", Val: str(r.ID)},
		{Key: "gdk_version", Val: num(r.GDKVersion)},
		{Key: "iv", Val: bin(r.IV)},
		{Key: "ct", Val: bin(r.CT)},
	}})
	if err != nil {
		return nil, wrapJSON(err)
	}
	if _, err := ParseRecord(b); err != nil {
		return nil, err
	}
	return b, nil
}

// ParseRecord decodes a record.
func ParseRecord(b []byte) (*Record, error) {
	if len(b) > MaxRecordSize {
		return nil, fail(ErrSize, "record is %d bytes, more than %d", len(b), MaxRecordSize)
	}
	v, err := strictjson.Parse(b)
	if err != nil {
		return nil, wrapJSON(err)
	}
	if _, _, err := header(v, false); err != nil {
		return nil, err
	}
	o, err := v.Object("v", "group", "id", "gdk_version", "iv", "ct")
	if err != nil {
		return nil, wrapJSON(err)
	}
	r := &Record{}
	if r.Group, err = o.String("group", 1, MaxIDLength); err != nil {
		return nil, wrapJSON(err)
	}
	if err := ValidateID(r.Group); err != nil {
		return nil, fail(ErrID, "group: %v", err)
	}
	if r.ID, err = o.String("id", 1, MaxIDLength); err != nil {
		return nil, wrapJSON(err)
	}
	if err := ValidateID(r.ID); err != nil {
		return nil, fail(ErrID, "id: %v", err)
	}
	if r.GDKVersion, err = o.Uint32("gdk_version", 1, MaxVersion); err != nil {
		return nil, wrapJSON(err)
	}
	if r.IV, err = o.Bytes("iv", IVSize, IVSize); err != nil {
		return nil, wrapJSON(err)
	}
	if r.CT, err = o.Bytes("ct", TagSize, MaxRecordSize); err != nil {
		return nil, wrapJSON(err)
	}
	return r, nil
}
