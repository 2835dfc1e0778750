package escrow

import (
	"context"
	"crypto/ecdh"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"path/filepath"
	"testing"

	"github.com/escrowd/escrowd/escrow/bundle"
	"github.com/escrowd/escrowd/format"
	"github.com/escrowd/escrowd/hsm"
	"github.com/escrowd/escrowd/store/bolt"
)

// stubHSM stands in for the HSM so that the request checks in front of it
// can be fuzzed quickly; what the HSM does with valid input is tested
// against SoftHSM in hsm/ and e2e/.
type stubHSM struct{ pub []byte }

func (h stubHSM) GenerateEscrowKey(context.Context, hsm.Suite) ([]byte, hsm.WrappedKey, error) {
	return h.pub, hsm.WrappedKey{KEKVersion: 1, Blob: make([]byte, 40)}, nil
}
func (stubHSM) GenerateUnlockKey(context.Context) (hsm.WrappedKey, error) {
	return hsm.WrappedKey{KEKVersion: 1, Blob: make([]byte, 40)}, nil
}
func (stubHSM) HMAC(context.Context, hsm.WrappedKey, []byte) ([]byte, error) {
	return make([]byte, 32), nil
}
func (stubHSM) RewrapSlot(_ context.Context, _ hsm.Source, ts []hsm.Target) ([]hsm.Sealed, error) {
	return stubSealed(ts), nil
}
func (stubHSM) Rotate(_ context.Context, _ hsm.Source, _ *format.SlotContext, ts []hsm.Target) (hsm.Sealed, []hsm.Sealed, error) {
	return hsm.Sealed{Wrapped: make([]byte, 40), Commit: make([]byte, 32), Bind: make([]byte, 32)}, stubSealed(ts), nil
}

// stubSealed gives each target output of the shape its suite has.
func stubSealed(ts []hsm.Target) []hsm.Sealed {
	out := make([]hsm.Sealed, len(ts))
	for i, t := range ts {
		out[i] = hsm.Sealed{Wrapped: make([]byte, 40), Commit: make([]byte, 32), Bind: make([]byte, 32)}
		switch {
		case t.Suite == hsm.SuiteECDHP256:
			k, _ := ecdh.P256().GenerateKey(rand.Reader)
			out[i].EPK = k.PublicKey().Bytes()
		case len(t.PublicKeyDER) > 0:
			out[i].Wrapped = make([]byte, 256)
		}
	}
	return out
}

// sentinels are the errors the daemon maps to status codes; a request
// error that wraps none of them would reach a caller as INTERNAL.
var sentinels = []error{ErrInvalid, ErrNotFound, ErrExists, ErrKeyVersion, ErrSlot, ErrNoCodes,
	ErrExhausted, ErrStale, ErrNotRevealed, ErrConflict, ErrUnsupported, ErrUnavailable,
	ErrRetired, ErrDestroyed, ErrPrecondition, ErrBinding}

func checkErr(t *testing.T, op string, err error) {
	t.Helper()
	if err == nil {
		return
	}
	for _, s := range sentinels {
		if errors.Is(err, s) {
			return
		}
	}
	t.Fatalf("%s: error %v wraps no sentinel", op, err)
}

func requestService(t testing.TB) (*Service, []byte) {
	k, err := ecdh.P256().GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, _ := x509.MarshalPKIXPublicKey(k.PublicKey())
	st, err := bolt.Open(filepath.Join(t.TempDir(), "escrowd.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	s, err := New(stubHSM{pub: der}, st, Config{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Provision(context.Background(), "g", ""); err != nil {
		t.Fatal(err)
	}
	return s, der
}

// FuzzRequests: the fields of every sync request are outside bytes. Each
// operation answers with a result or an error wrapping one of the
// sentinels, and never panics.
func FuzzRequests(f *testing.F) {
	f.Add("g", []byte(`{"v":1,"kind":"escrow","key_version":1,"suite":"ecdh-p256","epk":"","wrapped":""}`), uint8(0), "alice", uint32(1), "ecdh-p256", []byte{0x30}, uint32(1), uint32(0))
	f.Add("g", []byte(`{"v":2,"kind":"escrow","suite":"ecdh-p256","group":"g","gdk_version":1,"key_version":1,"epk":"BGsX0fLhLEJH+Lzm5WOkQPJ3A32BLeszoPShOUXYmMKWT+NC4v4af5uO5+tKfA+eFivOM1drMV7Oy7ZAaDe/UfU=","commit":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=","wrapped":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA==","bind":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="}`), uint8(0), "alice", uint32(1), "ecdh-p256", []byte{0x30}, uint32(1), uint32(0))
	f.Add("", []byte("{"), uint8(1), "", uint32(0), "", []byte{}, uint32(0), uint32(9))
	f.Add("g\x00", []byte(`{"v":1}`), uint8(2), "d 1", uint32(7), "rsa-oaep-sha1", []byte{}, uint32(2), uint32(4))
	f.Fuzz(func(t *testing.T, group string, slot []byte, kind uint8, id string, version uint32, suite string, pub []byte, epoch, index uint32) {
		s, der := requestService(t)
		ctx := context.Background()
		if len(pub) == 1 {
			pub = der // now and then a real key, to reach past the key checks
		}
		kinds := []bundle.Kind{bundle.KindMember, bundle.KindDevice, bundle.KindEscrow, bundle.KindUnlock, ""}
		r := Recipient{Kind: kinds[int(kind)%len(kinds)], ID: id, KeyVersion: version, Suite: suite, PublicKey: pub}
		_, _, err := s.Rewrap(ctx, group, slot, r)
		checkErr(t, "Rewrap", err)
		_, _, err = s.RewrapToEscrow(ctx, group, slot, version)
		checkErr(t, "RewrapToEscrow", err)
		_, err = s.IssueCodes(ctx, group, id, slot, int(index%32))
		checkErr(t, "IssueCodes", err)
		_, err = s.ConsumeCode(ctx, group, id, epoch, index)
		checkErr(t, "ConsumeCode", err)
		res, err := s.BatchRewrap(ctx, []BatchItem{{Ref: id, Group: group, EscrowSlot: slot, Recipient: &r}, {Group: group, EscrowSlot: slot, EscrowVersion: version}})
		checkErr(t, "BatchRewrap", err)
		for _, x := range res {
			checkErr(t, "BatchRewrap item", x.Err)
		}
		_, err = s.Rotate(ctx, group, Rotation{EscrowSlot: slot, OldGDKVersion: epoch, Recipients: []Recipient{r}, UnlockUsers: []string{id}, CodesPerUser: int(index % 32)})
		checkErr(t, "Rotate", err)
	})
}
