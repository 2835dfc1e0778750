package e2e

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/x509"
	"fmt"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	escrowdv1 "github.com/escrowd/escrowd/api/escrowd/v1"
	"github.com/escrowd/escrowd/escrow/bundle"
	"github.com/escrowd/escrowd/format"
)

// TestEscrowSlotGDKLength: an rsa-oaep escrow slot whose plaintext is not
// exactly a 32-byte GDK (empty, 25 or 31 bytes: lengths that an AES-KWP
// length check alone lets through as "25 to 32") is refused with
// InvalidArgument by every RPC that takes an escrow slot, before anything
// is wrapped, issued or rotated.
func TestEscrowSlotGDKLength(t *testing.T) {
	s := newStack(t, vaultSrv)
	ctx := ctxT(t)
	const group = "gdk-length"
	_, _, key := s.provisionSuite(ctx, group, bundle.SuiteRSAOAEPSHA1)
	pk, err := x509.ParsePKIXPublicKey(key.GetPublicKey())
	if err != nil {
		t.Fatal(err)
	}
	k := newKeys(t)
	for _, n := range []int{0, 25, 31} {
		pt := make([]byte, n)
		rand.Read(pt)
		ct, err := rsa.EncryptOAEP(sha1.New(), rand.Reader, pk.(*rsa.PublicKey), pt, nil)
		if err != nil {
			t.Fatal(err)
		}
		// A well-formed version 2 slot of the group's GDK 1: its
		// commitment and binding are those of the plaintext padded to 32
		// bytes, which the daemon must never get as far as checking.
		sl := bundle.Slot{Kind: bundle.KindEscrow, Suite: bundle.SuiteRSAOAEPSHA1, Group: group, GDKVersion: 1, KeyVersion: key.GetVersion(), Wrapped: ct}
		padded := make([]byte, 32)
		copy(padded, pt)
		sl.Commit = format.Commitment(group, 1, padded)
		if sl.Bind, err = format.Bind(padded, sl.Context()); err != nil {
			t.Fatal(err)
		}
		slot, err := sl.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		member := k.recipient(escrowdv1.Recipient_KIND_MEMBER, "m1", bundle.SuiteRSAOAEPSHA1)
		calls := escrowCalls(s, ctx, group, slot, 1, member)
		for name, call := range calls {
			t.Run(fmt.Sprintf("%s/%d bytes", name, n), func(t *testing.T) {
				err := call()
				// Refused for its length, before the binding is looked at.
				if status.Code(err) != codes.InvalidArgument || !strings.Contains(status.Convert(err).Message(), "does not hold a 32-byte GDK") {
					t.Fatalf("%s with a %d-byte GDK: %v, want InvalidArgument saying it does not hold a 32-byte GDK", name, n, err)
				}
				t.Log(err)
			})
		}
	}
	// Nothing was issued or rotated: neither user (IssueUnlockCodes' and
	// RotateGroupKey's) has an unlock epoch. Support lists codes; the sync
	// backend may not.
	for _, user := range []string{"bob", "carol"} {
		l, err := s.support.ListUnlockCodes(ctx, &escrowdv1.ListUnlockCodesRequest{GroupId: group, UserId: user})
		if status.Code(err) != codes.FailedPrecondition || l.GetEpoch() != 0 {
			t.Fatalf("%s has an epoch issued from a bad slot: %v, %v; want FailedPrecondition (no codes issued)", user, l, err)
		}
	}
}
