package e2e

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	escrowdv1 "github.com/escrowd/escrowd/api/escrowd/v1"
	"github.com/escrowd/escrowd/escrow/bundle"
	"github.com/escrowd/escrowd/escrow/device"
	"github.com/escrowd/escrowd/format"
)

// escrowCalls are the RPCs that take an escrow slot, each sending slot for
// group (RotateGroupKey naming oldGDK as the old GDK version). Each returns
// the call's error; BatchRewrap's is its one item's, as a status.
func escrowCalls(s *stack, ctx context.Context, group string, slot []byte, oldGDK uint32, member *escrowdv1.Recipient) map[string]func() error {
	return map[string]func() error{
		"Rewrap": func() error {
			_, err := s.sync.Rewrap(ctx, &escrowdv1.RewrapRequest{GroupId: group, EscrowSlot: slot, Recipient: member})
			return err
		},
		"RewrapToEscrow": func() error {
			_, err := s.sync.RewrapToEscrow(ctx, &escrowdv1.RewrapToEscrowRequest{GroupId: group, EscrowSlot: slot})
			return err
		},
		"IssueUnlockCodes": func() error {
			_, err := s.sync.IssueUnlockCodes(ctx, &escrowdv1.IssueUnlockCodesRequest{GroupId: group, UserId: "bob", EscrowSlot: slot, Count: 1})
			return err
		},
		"RotateGroupKey": func() error {
			_, err := s.sync.RotateGroupKey(ctx, &escrowdv1.RotateGroupKeyRequest{GroupId: group, EscrowSlot: slot, OldGdkVersion: oldGDK,
				Recipients: []*escrowdv1.Recipient{member}, UnlockUserIds: []string{"carol"}, CodesPerUser: 1})
			return err
		},
		"BatchRewrap": func() error {
			r, err := s.sync.BatchRewrap(ctx, &escrowdv1.BatchRewrapRequest{Items: []*escrowdv1.BatchRewrapItem{
				{Reference: "item", GroupId: group, EscrowSlot: slot, Target: &escrowdv1.BatchRewrapItem_Recipient{Recipient: member}},
			}})
			if err != nil {
				return fmt.Errorf("the batch failed whole: %w", err)
			}
			res := r.GetResults()[0]
			if res.GetError() == nil {
				return nil
			}
			return status.Error(codes.Code(res.GetError().GetCode()), res.GetError().GetMessage())
		},
	}
}

// mutate returns slot decoded, changed by f and encoded again: a well-formed
// version 2 slot, with every field f did not touch as the sealer wrote it.
func mutate(t *testing.T, slot []byte, f func(*bundle.Slot)) []byte {
	t.Helper()
	s, err := bundle.ParseSlot(slot)
	if err != nil {
		t.Fatal(err)
	}
	f(s)
	b, err := s.Marshal()
	if err != nil {
		t.Fatalf("re-encode the altered slot: %v", err)
	}
	return b
}

// Distinctive parts of the refusals' messages, one per check.
const (
	saysOtherGroup = "slot of another group"
	saysCommitment = "not the one its commitment names"
	saysBinding    = "binding does not verify"
	saysKind       = "escrow_slot is a member slot"
)

// TestEscrowSlotBinding: for an ecdh-p256 group (the default suite) and an
// rsa-oaep-sha1 group, an escrow slot that was moved to another group,
// relabelled to another GDK version or to another kind, that holds a
// substituted GDK, or whose commitment or binding was altered, is refused
// with InvalidArgument by every RPC that takes an escrow slot (BatchRewrap
// in its item's result), and the message says which check refused it.
// Nothing is wrapped, issued or rotated from such a slot, and the group's
// real slot keeps working.
func TestEscrowSlotBinding(t *testing.T) {
	s := newStack(t, vaultSrv)
	ctx := ctxT(t)
	k := newKeys(t)
	member := k.recipient(escrowdv1.Recipient_KIND_MEMBER, "m1", bundle.SuiteECDHP256)
	for _, suite := range []string{"", bundle.SuiteRSAOAEPSHA1} {
		tag := strings.ReplaceAll(suite+"default", "-", "")
		t.Run(tag, func(t *testing.T) {
			groupA, groupB, twinA := "bind-a-"+tag, "bind-b-"+tag, "bind-twin-"+tag
			gdkA, slotA, keyA := s.provisionSuite(ctx, groupA, suite)
			_, slotB, _ := s.provisionSuite(ctx, groupB, suite)
			// twinA holds group A's very keys under another id, as a store
			// filled from copies does: a slot of A then opens under twinA's
			// escrow key, and only its commitment and binding tell that it
			// is not twinA's.
			g, err := s.store.Group(ctx, groupA)
			if err != nil {
				t.Fatal(err)
			}
			g.ID, g.Rev = twinA, 0
			if err := s.store.CreateGroup(ctx, g); err != nil {
				t.Fatal(err)
			}
			// A slot the test seals to A's escrow key holding another GDK:
			// self-consistent, then given the commitment of A's real GDK.
			other, err := device.NewGDK()
			if err != nil {
				t.Fatal(err)
			}
			forged, err := device.SealEscrow(keyA.GetPublicKey(), device.To{Group: groupA, GDKVersion: 1, KeyVersion: keyA.GetVersion()}, keyA.GetSuite(), other)
			if err != nil {
				t.Fatal(err)
			}
			realCommit := format.Commitment(groupA, 1, gdkA)

			cases := []struct {
				name  string
				group string // the request's group
				slot  []byte
				say   string
			}{
				{"moved: group field rewritten to B, sent for A", groupA,
					mutate(t, slotA, func(sl *bundle.Slot) { sl.Group = groupB }), saysOtherGroup},
				{"moved: A's slot sent for B", groupB, slotA, saysOtherGroup},
				{"moved: B's slot sent for A", groupA, slotB, saysOtherGroup},
				{"moved: A's slot sent for a group with A's keys", twinA, slotA, saysOtherGroup},
				{"moved: A's slot relabelled to a group with A's keys", twinA,
					mutate(t, slotA, func(sl *bundle.Slot) { sl.Group = twinA }), saysCommitment},
				{"relabelled: gdk_version 2", groupA,
					mutate(t, slotA, func(sl *bundle.Slot) { sl.GDKVersion = 2 }), saysCommitment},
				// With the commitment recomputed for the new label (as only
				// a holder of the GDK could), the binding still refuses it.
				{"moved: A's slot relabelled to a group with A's keys, commitment recomputed", twinA,
					mutate(t, slotA, func(sl *bundle.Slot) { sl.Group, sl.Commit = twinA, format.Commitment(twinA, 1, gdkA) }), saysBinding},
				{"relabelled: gdk_version 2, commitment recomputed", groupA,
					mutate(t, slotA, func(sl *bundle.Slot) { sl.GDKVersion, sl.Commit = 2, format.Commitment(groupA, 2, gdkA) }), saysBinding},
				{"relabelled: kind member", groupA,
					mutate(t, slotA, func(sl *bundle.Slot) { sl.Kind, sl.ID = bundle.KindMember, "m1" }), saysKind},
				{"substituted GDK with the real GDK's commitment", groupA,
					mutate(t, forged, func(sl *bundle.Slot) { sl.Commit = realCommit }), saysCommitment},
				{"tampered commitment", groupA,
					mutate(t, slotA, func(sl *bundle.Slot) { sl.Commit[7] ^= 0x10 }), saysCommitment},
				{"tampered binding", groupA,
					mutate(t, slotA, func(sl *bundle.Slot) { sl.Bind[31] ^= 0x01 }), saysBinding},
			}
			for _, tc := range cases {
				sl, err := bundle.ParseSlot(tc.slot)
				if err != nil {
					t.Fatal(err)
				}
				for name, call := range escrowCalls(s, ctx, tc.group, tc.slot, sl.GDKVersion, member) {
					t.Run(tc.name+"/"+name, func(t *testing.T) {
						err := call()
						if status.Code(err) != codes.InvalidArgument || !strings.Contains(status.Convert(err).Message(), tc.say) {
							t.Fatalf("%s: %v; want InvalidArgument saying %q", name, err, tc.say)
						}
					})
				}
			}

			// RotateGroupKey checks old_gdk_version against the slot's
			// gdk_version before anything is made.
			_, err = s.sync.RotateGroupKey(ctx, &escrowdv1.RotateGroupKeyRequest{GroupId: groupA, EscrowSlot: slotA, OldGdkVersion: 2,
				Recipients: []*escrowdv1.Recipient{member}})
			wantCode(t, err, codes.InvalidArgument, "old_gdk_version is 2", "holds GDK version 1")

			// Nothing was issued or rotated from a refused slot.
			for _, grp := range []string{groupA, groupB, twinA} {
				for _, user := range []string{"bob", "carol"} {
					l, err := s.support.ListUnlockCodes(ctx, &escrowdv1.ListUnlockCodesRequest{GroupId: grp, UserId: user})
					if status.Code(err) != codes.FailedPrecondition {
						t.Fatalf("%s/%s has unlock codes from a refused slot: %v, %v", grp, user, l, err)
					}
				}
			}
			// The real slots still work, and A's gives A's GDK, bound to A.
			rw, err := s.sync.Rewrap(ctx, &escrowdv1.RewrapRequest{GroupId: groupA, EscrowSlot: slotA, Recipient: member})
			if err != nil || !bytes.Equal(k.open(t, rw.GetSlot(), device.Want{Group: groupA, ID: "m1"}, 1), gdkA) {
				t.Fatalf("A's own slot after the refusals: %v", err)
			}
			if _, err := s.sync.Rewrap(ctx, &escrowdv1.RewrapRequest{GroupId: groupB, EscrowSlot: slotB, Recipient: member}); err != nil {
				t.Fatalf("B's own slot: %v", err)
			}
			// The twin's own slot (its id, its GDK) opens under the shared key.
			gdkT, _ := device.NewGDK()
			slotT, err := device.SealEscrow(keyA.GetPublicKey(), device.To{Group: twinA, GDKVersion: 1, KeyVersion: 1}, keyA.GetSuite(), gdkT)
			if err != nil {
				t.Fatal(err)
			}
			rw, err = s.sync.Rewrap(ctx, &escrowdv1.RewrapRequest{GroupId: twinA, EscrowSlot: slotT, Recipient: member})
			if err != nil || !bytes.Equal(k.open(t, rw.GetSlot(), device.Want{Group: twinA, ID: "m1"}, 1), gdkT) {
				t.Fatalf("the twin's own slot: %v", err)
			}
		})
	}
}
