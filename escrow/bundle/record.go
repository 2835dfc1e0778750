package bundle

import (
	"encoding/binary"
	"fmt"
)

// Record is one piece of group data encrypted under a GDK with AES-256-GCM
// (docs/FORMAT.md, "Encrypted records").
type Record struct {
	V     int    `json:"v"`
	Group string `json:"group"`
	ID    string `json:"id"`
	// GDKVersion is the version of the GDK that encrypted the record:
	// 1 for the group's first, one more after each rotation.
	GDKVersion uint32 `json:"gdk_version"`
	// IV is a fresh 12-byte nonce; CT the ciphertext with its 16-byte tag.
	IV []byte `json:"iv"`
	CT []byte `json:"ct"`
}

// Record limits.
const (
	IVSize        = 12
	TagSize       = 16
	MaxRecordSize = 4 << 20
)

// RecordAAD is the additional data of a record: it binds the ciphertext to
// its group, record id and GDK version, so a record cannot be moved to
// another group or id, or replayed under another version.
//
//	"escrowd record v1" || 0x00 || u16be(len(group)) || group ||
//	u16be(len(id)) || id || u32be(gdk_version)
func RecordAAD(group, id string, gdkVersion uint32) []byte {
	const label = "escrowd record v1"
	b := make([]byte, 0, len(label)+1+2+len(group)+2+len(id)+4)
	b = append(b, label...)
	b = append(b, 0)
	b = binary.BigEndian.AppendUint16(b, uint16(len(group)))
	b = append(b, group...)
	b = binary.BigEndian.AppendUint16(b, uint16(len(id)))
	b = append(b, id...)
	return binary.BigEndian.AppendUint32(b, gdkVersion)
}

// Validate checks a record's fields.
func (r *Record) Validate() error {
	if r.V != Version {
		return fmt.Errorf("%w: record version %d, want %d", ErrMalformed, r.V, Version)
	}
	if err := ValidateID(r.Group); err != nil {
		return fmt.Errorf("%w: record group: %w", ErrMalformed, err)
	}
	if err := ValidateID(r.ID); err != nil {
		return fmt.Errorf("%w: record id: %w", ErrMalformed, err)
	}
	if r.GDKVersion == 0 {
		return fmt.Errorf("%w: record gdk_version must be at least 1", ErrMalformed)
	}
	if len(r.IV) != IVSize {
		return fmt.Errorf("%w: record iv is %d bytes, want %d", ErrMalformed, len(r.IV), IVSize)
	}
	if len(r.CT) < TagSize {
		return fmt.Errorf("%w: record ct is %d bytes, shorter than the GCM tag", ErrMalformed, len(r.CT))
	}
	return nil
}

// Marshal validates r and encodes it.
func (r *Record) Marshal() ([]byte, error) {
	if err := r.Validate(); err != nil {
		return nil, err
	}
	return jsonMarshal(r)
}

// ParseRecord decodes and validates a record.
func ParseRecord(b []byte) (*Record, error) {
	if len(b) > MaxRecordSize {
		return nil, fmt.Errorf("%w: record is %d bytes, more than %d", ErrMalformed, len(b), MaxRecordSize)
	}
	var r Record
	if err := decodeStrict(b, &r); err != nil {
		return nil, err
	}
	if err := r.Validate(); err != nil {
		return nil, err
	}
	return &r, nil
}
