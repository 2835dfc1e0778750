package backend

import (
	"errors"
	"fmt"
	"strconv"

	"github.com/escrowd/escrowd/escrow/bundle"
	"github.com/escrowd/escrowd/examples/syncbackend/auth"
	"github.com/escrowd/escrowd/format/strictjson"
)

// Request bodies are JSON in escrowd's strict profile (format/strictjson):
// printable ASCII, no null, no duplicate or unknown key, unsigned 32-bit
// integers, byte strings in canonical padded base64. Bundles and records
// travel as base64 of their own JSON, so that the bytes a device signed
// are the bytes stored.

// ErrBadRequest is a body or parameter the backend cannot take.
var ErrBadRequest = errors.New("bad request")

// MaxBody is the largest request body: a record of 4 MiB, in base64.
const MaxBody = 6 << 20

func bad(field string, err error) error {
	if c := strictjson.Class(err); c != "" {
		return fmt.Errorf("%w: %s: %s: %w", ErrBadRequest, field, c, err)
	}
	return fmt.Errorf("%w: %s: %w", ErrBadRequest, field, err)
}

func object(b []byte, keys ...string) (*strictjson.Object, error) {
	v, err := strictjson.Parse(b)
	if err != nil {
		return nil, bad("body", err)
	}
	o, err := v.Object(keys...)
	if err != nil {
		return nil, bad("body", err)
	}
	return o, nil
}

func id(o *strictjson.Object, key string) (string, error) {
	s, err := o.String(key, 1, bundle.MaxIDLength)
	if err != nil {
		return "", bad(key, err)
	}
	if err := bundle.ValidateID(s); err != nil {
		return "", bad(key, err)
	}
	return s, nil
}

func p256(o *strictjson.Object, key string) ([]byte, error) {
	b, err := o.Bytes(key, 1, 256)
	if err != nil {
		return nil, bad(key, err)
	}
	if _, err := auth.ParsePublicKey(b); err != nil {
		return nil, bad(key, err)
	}
	return b, nil
}

// newDevice is a device's id and public keys.
type newDevice struct {
	ID      string
	SignKey []byte
	WrapKey []byte
}

func deviceFields(o *strictjson.Object) (newDevice, error) {
	var d newDevice
	var err error
	if d.ID, err = id(o, "device"); err != nil {
		return d, err
	}
	if d.SignKey, err = p256(o, "sign_key"); err != nil {
		return d, err
	}
	if d.WrapKey, err = p256(o, "wrap_key"); err != nil {
		return d, err
	}
	return d, nil
}

// createAccount: {"account", "member_key", "device", "sign_key", "wrap_key"}.
type createAccount struct {
	Account   string
	MemberKey []byte
	Device    newDevice
}

func decodeCreateAccount(b []byte) (createAccount, error) {
	var r createAccount
	o, err := object(b, "account", "member_key", "device", "sign_key", "wrap_key")
	if err != nil {
		return r, err
	}
	if r.Account, err = id(o, "account"); err != nil {
		return r, err
	}
	if r.MemberKey, err = p256(o, "member_key"); err != nil {
		return r, err
	}
	r.Device, err = deviceFields(o)
	return r, err
}

// enrolDevice: {"account", "device", "sign_key", "wrap_key", "approver",
// "approval"}: a new device of an account, approved by one of its devices.
type enrolDevice struct {
	Account  string
	Device   newDevice
	Approver string
	Approval []byte
}

func decodeEnrolDevice(b []byte) (enrolDevice, error) {
	var r enrolDevice
	o, err := object(b, "account", "device", "sign_key", "wrap_key", "approver", "approval")
	if err != nil {
		return r, err
	}
	if r.Account, err = id(o, "account"); err != nil {
		return r, err
	}
	if r.Device, err = deviceFields(o); err != nil {
		return r, err
	}
	if r.Approver, err = id(o, "approver"); err != nil {
		return r, err
	}
	if r.Approval, err = o.Bytes("approval", 64, 64); err != nil {
		return r, bad("approval", err)
	}
	return r, nil
}

// decodeCreateGroup: {"group"}.
func decodeCreateGroup(b []byte) (string, error) {
	o, err := object(b, "group")
	if err != nil {
		return "", err
	}
	return id(o, "group")
}

// putBundle: {"version", "bundle"}: the group version the device read, and
// the bundle it wants stored.
type putBundle struct {
	Version uint32
	Bundle  []byte
}

func decodePutBundle(b []byte) (putBundle, error) {
	var r putBundle
	o, err := object(b, "version", "bundle")
	if err != nil {
		return r, err
	}
	if r.Version, err = o.Uint32("version", 1, 1<<32-1); err != nil {
		return r, bad("version", err)
	}
	if r.Bundle, err = o.Bytes("bundle", 1, bundle.MaxBundleSize); err != nil {
		return r, bad("bundle", err)
	}
	return r, nil
}

// putRecord: {"version", "record"}: the record version the device read (0
// for a new record) and the record.
type putRecord struct {
	Version uint32
	Record  []byte
}

func decodePutRecord(b []byte) (putRecord, error) {
	var r putRecord
	o, err := object(b, "version", "record")
	if err != nil {
		return r, err
	}
	if r.Version, err = o.Uint32("version", 0, 1<<32-1); err != nil {
		return r, bad("version", err)
	}
	if r.Record, err = o.Bytes("record", 1, MaxBody); err != nil {
		return r, bad("record", err)
	}
	return r, nil
}

// consumed: {"epoch", "index"}: the unlock code a device used.
type consumed struct {
	Epoch, Index uint32
}

func decodeConsumed(b []byte) (consumed, error) {
	var r consumed
	o, err := object(b, "epoch", "index")
	if err != nil {
		return r, err
	}
	if r.Epoch, err = o.Uint32("epoch", 1, bundle.MaxVersion); err != nil {
		return r, bad("epoch", err)
	}
	if r.Index, err = o.Uint32("index", 0, 31); err != nil {
		return r, bad("index", err)
	}
	return r, nil
}

// parseAfter reads a cursor query parameter: absent is 0.
func parseAfter(s string) (uint64, error) {
	if s == "" {
		return 0, nil
	}
	n, err := strconv.ParseUint(s, 10, 63)
	if err != nil || strconv.FormatUint(n, 10) != s {
		return 0, fmt.Errorf("%w: after must be an integer in decimal", ErrBadRequest)
	}
	return n, nil
}

// parseID reads an id from a path or query.
func parseID(what, s string) (string, error) {
	if err := bundle.ValidateID(s); err != nil {
		return "", fmt.Errorf("%w: %s: %w", ErrBadRequest, what, err)
	}
	return s, nil
}
