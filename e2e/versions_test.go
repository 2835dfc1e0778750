package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	escrowdv1 "github.com/escrowd/escrowd/api/escrowd/v1"
	"github.com/escrowd/escrowd/escrow/bundle"
	"github.com/escrowd/escrowd/escrow/device"
	"github.com/escrowd/escrowd/hsm"
	"github.com/escrowd/escrowd/internal/pgtest"
	"github.com/escrowd/escrowd/store"
	"github.com/escrowd/escrowd/store/bolt"
	"github.com/escrowd/escrowd/store/postgres"
)

func wantCode(t *testing.T, err error, code codes.Code, contains ...string) {
	t.Helper()
	st, _ := status.FromError(err)
	if st.Code() != code {
		t.Fatalf("got %v, want %v", err, code)
	}
	for _, c := range contains {
		if !strings.Contains(st.Message(), c) {
			t.Fatalf("message %q does not say %q", st.Message(), c)
		}
	}
}

// TestVersionLifecycle, on both stores: rotate → slots sealed to the old
// version still re-wrap (to members, to unlock codes, to the newest
// version); raising the minimum decryption version refuses them with
// FAILED_PRECONDITION naming the versions; a retired unlock version refuses
// reveals without burning a code; a destroyed version has no wrapped key
// left in the store and is refused by every path, for good.
func TestVersionLifecycle(t *testing.T) {
	for _, backend := range []string{"bolt", "postgres"} {
		t.Run(backend, func(t *testing.T) {
			var st store.Store
			if backend == "bolt" {
				b, err := bolt.Open(filepath.Join(t.TempDir(), "escrowd.db"))
				if err != nil {
					t.Fatal(err)
				}
				st = b
			} else {
				p, err := postgres.Open(context.Background(), pgtest.New(t))
				if err != nil {
					t.Fatal(err)
				}
				st = p
			}
			t.Cleanup(func() { st.Close() })
			testVersionLifecycle(t, newStackWith(t, vaultSrv, stackOpts{store: st}))
		})
	}
}

func testVersionLifecycle(t *testing.T, s *stack) {
	ctx := ctxT(t)
	const group = "family-versions"
	var ids []string
	gdk, slot1 := s.provisionAndSeal(ctx, group, &ids)
	member, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	memberPub, _ := x509.MarshalPKIXPublicKey(&member.PublicKey)
	rewrap := func(slot []byte) ([]byte, error) {
		r, err := s.sync.Rewrap(ctx, &escrowdv1.RewrapRequest{GroupId: group, EscrowSlot: slot,
			Recipient: &escrowdv1.Recipient{Kind: escrowdv1.Recipient_KIND_MEMBER, Id: "alice", KeyVersion: 1,
				Suite: bundle.SuiteRSAOAEPSHA1, PublicKey: memberPub}})
		if err != nil {
			return nil, err
		}
		gdk, _, err := device.OpenPublic(r.GetSlot(), device.Want{Group: group, ID: "alice"}, member)
		return gdk, err
	}
	// Codes of epoch 1 derive from unlock key v1.
	if _, err := s.sync.IssueUnlockCodes(ctx, &escrowdv1.IssueUnlockCodesRequest{GroupId: group, UserId: "u", EscrowSlot: slot1, Count: 3}); err != nil {
		t.Fatal(err)
	}

	rot, err := s.sec.RotateGroupKeys(ctx, &escrowdv1.RotateGroupKeysRequest{GroupId: group, Escrow: true, Unlock: true})
	if err != nil {
		t.Fatal(err)
	}
	if g := rot.GetGroup(); len(g.GetEscrowKeys()) != 2 || len(g.GetUnlockKeys()) != 2 || g.GetEscrowKeys()[1].GetVersion() != 2 {
		t.Fatalf("after rotation: %v", g)
	}
	k, err := s.sync.GetEscrowKey(ctx, &escrowdv1.GetEscrowKeyRequest{GroupId: group})
	if err != nil || k.GetEscrowKey().GetVersion() != 2 {
		t.Fatalf("newest escrow key %v, %v; want version 2", k, err)
	}
	// The old version still re-wraps.
	if got, err := rewrap(slot1); err != nil || !bytes.Equal(got, gdk) {
		t.Fatalf("re-wrap of a v1 slot after rotation: %v", err)
	}
	if rv, err := s.support.RevealUnlockCode(ctx, &escrowdv1.RevealUnlockCodeRequest{GroupId: group, UserId: "u", Ticket: "SUP-1"}); err != nil || rv.GetIndex() != 0 {
		t.Fatalf("reveal of an epoch under unlock v1 after rotation: %v", err)
	}
	// The sync backend moves the bundle to v2.
	nr, err := s.sync.RewrapToEscrow(ctx, &escrowdv1.RewrapToEscrowRequest{GroupId: group, EscrowSlot: slot1})
	if err != nil {
		t.Fatal(err)
	}
	slot2 := nr.GetSlot()
	if ps, err := bundle.ParseSlot(slot2); err != nil || ps.KeyVersion != 2 || ps.Kind != bundle.KindEscrow {
		t.Fatalf("re-sealed slot %+v, %v", ps, err)
	}
	if got, err := rewrap(slot2); err != nil || !bytes.Equal(got, gdk) {
		t.Fatalf("re-wrap of the v2 slot: %v", err)
	}

	// Retire v1 of both keys.
	if _, err := s.sec.SetMinDecryptionVersion(ctx, &escrowdv1.SetMinDecryptionVersionRequest{GroupId: group, MinEscrowVersion: 3}); err == nil {
		t.Fatal("a minimum above the newest version was accepted")
	}
	mv, err := s.sec.SetMinDecryptionVersion(ctx, &escrowdv1.SetMinDecryptionVersionRequest{GroupId: group, MinEscrowVersion: 2, MinUnlockVersion: 2})
	if err != nil || mv.GetGroup().GetMinEscrowVersion() != 2 || mv.GetGroup().GetMinUnlockVersion() != 2 {
		t.Fatalf("SetMinDecryptionVersion: %v, %v", mv, err)
	}
	_, err = rewrap(slot1)
	wantCode(t, err, codes.FailedPrecondition, "escrow key version 1", "minimum decryption version 2")
	t.Logf("retired: %v", err)
	_, err = s.sync.RewrapToEscrow(ctx, &escrowdv1.RewrapToEscrowRequest{GroupId: group, EscrowSlot: slot1})
	wantCode(t, err, codes.FailedPrecondition, "version 1")
	_, err = s.sync.IssueUnlockCodes(ctx, &escrowdv1.IssueUnlockCodesRequest{GroupId: group, UserId: "v", EscrowSlot: slot1})
	wantCode(t, err, codes.FailedPrecondition, "version 1")
	_, err = s.support.RevealUnlockCode(ctx, &escrowdv1.RevealUnlockCodeRequest{GroupId: group, UserId: "u", Ticket: "SUP-2"})
	wantCode(t, err, codes.FailedPrecondition, "unlock key version 1", "minimum decryption version 2")
	if l, err := s.support.ListUnlockCodes(ctx, &escrowdv1.ListUnlockCodesRequest{GroupId: group, UserId: "u"}); err != nil ||
		l.GetCodes()[1].GetState() != escrowdv1.UnlockCodeState_STATE_UNREVEALED {
		t.Fatalf("a refused reveal burnt a code: %v, %v", l, err)
	}
	if got, err := rewrap(slot2); err != nil || !bytes.Equal(got, gdk) {
		t.Fatalf("re-wrap of the v2 slot after retiring v1: %v", err)
	}
	// New epochs use unlock v2.
	if _, err := s.sync.IssueUnlockCodes(ctx, &escrowdv1.IssueUnlockCodesRequest{GroupId: group, UserId: "u", EscrowSlot: slot2, Count: 2}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.support.RevealUnlockCode(ctx, &escrowdv1.RevealUnlockCodeRequest{GroupId: group, UserId: "u", Ticket: "SUP-3"}); err != nil {
		t.Fatalf("reveal under unlock v2: %v", err)
	}

	// Destroy: refused for a live version, then v1 is shredded.
	_, err = s.sec.DestroyKeyVersion(ctx, &escrowdv1.DestroyKeyVersionRequest{GroupId: group, Kind: "escrow", Version: 2})
	wantCode(t, err, codes.FailedPrecondition, "not retired")
	for _, kind := range []string{"escrow", "unlock"} {
		d, err := s.sec.DestroyKeyVersion(ctx, &escrowdv1.DestroyKeyVersionRequest{GroupId: group, Kind: kind, Version: 1})
		if err != nil {
			t.Fatalf("destroy %s v1: %v", kind, err)
		}
		keys := d.GetGroup().GetEscrowKeys()
		if kind == "unlock" {
			keys = d.GetGroup().GetUnlockKeys()
		}
		if keys[0].GetDestroyedUnix() == 0 || keys[1].GetDestroyedUnix() != 0 {
			t.Fatalf("after destroying %s v1: %v", kind, keys)
		}
	}
	g, err := s.store.Group(ctx, group)
	if err != nil {
		t.Fatal(err)
	}
	if len(g.Escrow[0].Private.Blob) != 0 || len(g.Unlock[0].Key.Blob) != 0 || g.Escrow[0].Destroyed.IsZero() {
		t.Fatalf("the store still holds the destroyed versions' wrapped keys: %+v", g)
	}
	if len(g.Escrow[1].Private.Blob) == 0 || len(g.Unlock[1].Key.Blob) == 0 {
		t.Fatal("destroying v1 touched v2")
	}
	if err := s.hsm.CheckKey(ctx, hsm.KeyEscrow, storeToHSM(g.Escrow[1].Private)); err != nil {
		t.Fatalf("v2 escrow key no longer opens: %v", err)
	}
	// Every path is refused, and the minimum cannot go back.
	_, err = rewrap(slot1)
	wantCode(t, err, codes.FailedPrecondition, "destroyed")
	_, err = s.sync.RewrapToEscrow(ctx, &escrowdv1.RewrapToEscrowRequest{GroupId: group, EscrowSlot: slot1})
	wantCode(t, err, codes.FailedPrecondition, "destroyed")
	_, err = s.sync.IssueUnlockCodes(ctx, &escrowdv1.IssueUnlockCodesRequest{GroupId: group, UserId: "w", EscrowSlot: slot1})
	wantCode(t, err, codes.FailedPrecondition, "destroyed")
	_, err = s.sec.SetMinDecryptionVersion(ctx, &escrowdv1.SetMinDecryptionVersionRequest{GroupId: group, MinEscrowVersion: 1})
	wantCode(t, err, codes.FailedPrecondition, "destroyed")
	if _, err := s.sec.DestroyKeyVersion(ctx, &escrowdv1.DestroyKeyVersionRequest{GroupId: group, Kind: "escrow", Version: 1}); err != nil {
		t.Fatalf("destroying again is a no-op: %v", err)
	}
	if got, err := rewrap(slot2); err != nil || !bytes.Equal(got, gdk) {
		t.Fatalf("re-wrap of the v2 slot after destroying v1: %v", err)
	}
}

func storeToHSM(w store.WrappedKey) hsm.WrappedKey {
	return hsm.WrappedKey{KEKVersion: w.KEKVersion, Blob: w.Blob}
}
