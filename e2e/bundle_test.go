package e2e

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdh"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	escrowdv1 "github.com/escrowd/escrowd/api/escrowd/v1"
	"github.com/escrowd/escrowd/daemon"
	"github.com/escrowd/escrowd/escrow/bundle"
	"github.com/escrowd/escrowd/escrow/device"
	"github.com/escrowd/escrowd/format"
)

// provisionSuite provisions a group with suite ("" for the daemon's
// default) and seals a fresh GDK to its escrow key as a device would.
func (s *stack) provisionSuite(ctx context.Context, group, suite string) (gdk, escrowSlot []byte, key *escrowdv1.EscrowKey) {
	s.t.Helper()
	r, err := s.sync.ProvisionGroup(ctx, &escrowdv1.ProvisionGroupRequest{GroupId: group, Suite: suite})
	if err != nil {
		s.t.Fatalf("ProvisionGroup(%s): %v", suite, err)
	}
	key = r.GetEscrowKey()
	gdk, err = device.NewGDK()
	if err != nil {
		s.t.Fatal(err)
	}
	escrowSlot, err = device.SealEscrow(key.GetPublicKey(), device.To{Group: group, GDKVersion: 1, KeyVersion: key.GetVersion()}, key.GetSuite(), gdk)
	if err != nil {
		s.t.Fatal(err)
	}
	return gdk, escrowSlot, key
}

// keys is a recipient's key pair in each public-key suite.
type keys struct {
	rsa    *rsa.PrivateKey
	rsaPub []byte
	ec     *ecdh.PrivateKey
	ecPub  []byte
}

func newKeys(t *testing.T) keys {
	t.Helper()
	r, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	e, err := ecdh.P256().GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	rp, _ := x509.MarshalPKIXPublicKey(&r.PublicKey)
	ep, _ := x509.MarshalPKIXPublicKey(e.PublicKey())
	return keys{rsa: r, rsaPub: rp, ec: e, ecPub: ep}
}

func (k keys) recipient(kind escrowdv1.Recipient_Kind, id, suite string) *escrowdv1.Recipient {
	pub := k.rsaPub
	if suite == bundle.SuiteECDHP256 {
		pub = k.ecPub
	}
	return &escrowdv1.Recipient{Kind: kind, Id: id, KeyVersion: 1, Suite: suite, PublicKey: pub}
}

// open opens a member or device slot as recipient want.ID of group
// want.Group would: the slot must name them and hold GDK gdkVersion, and
// its commitment and binding must verify.
func (k keys) open(t *testing.T, slot []byte, want device.Want, gdkVersion uint32) []byte {
	t.Helper()
	gdk, _ := k.openSlot(t, slot, want, gdkVersion)
	return gdk
}

func (k keys) openSlot(t *testing.T, slot []byte, want device.Want, gdkVersion uint32) ([]byte, *bundle.Slot) {
	t.Helper()
	s, err := bundle.ParseSlot(slot)
	if err != nil {
		t.Fatal(err)
	}
	var priv crypto.PrivateKey = k.rsa
	if s.Suite == bundle.SuiteECDHP256 {
		priv = k.ec
	}
	gdk, sl, err := device.OpenPublic(slot, want, priv)
	if err != nil {
		t.Fatalf("open %s %s slot as %+v: %v", s.Kind, s.Suite, want, err)
	}
	if sl.GDKVersion != gdkVersion {
		t.Fatalf("%s %s slot holds GDK version %d, want %d", s.Kind, s.Suite, sl.GDKVersion, gdkVersion)
	}
	return gdk, sl
}

// TestSuites: for each escrow key suite, a GDK sealed by a device is
// re-wrapped by the running daemon to members and devices in each
// public-key suite and to the newest escrow key version, and opens.
func TestSuites(t *testing.T) {
	s := newStack(t, vaultSrv)
	ctx := ctxT(t)
	k := newKeys(t)
	for _, escrowSuite := range []string{"", bundle.SuiteRSAOAEPSHA1} {
		group := "suites-" + strings.ReplaceAll(escrowSuite+"default", "-", "")
		t.Run(group, func(t *testing.T) {
			start := time.Now()
			gdk, escrowSlot, key := s.provisionSuite(ctx, group, escrowSuite)
			t.Logf("provisioned a %s group over gRPC in %v", key.GetSuite(), time.Since(start))
			if escrowSuite == "" && key.GetSuite() != bundle.SuiteECDHP256 {
				t.Fatalf("default suite %s, want ecdh-p256", key.GetSuite())
			}
			for _, tc := range []struct {
				kind  escrowdv1.Recipient_Kind
				suite string
			}{
				{escrowdv1.Recipient_KIND_MEMBER, bundle.SuiteRSAOAEPSHA1},
				{escrowdv1.Recipient_KIND_MEMBER, bundle.SuiteECDHP256},
				{escrowdv1.Recipient_KIND_DEVICE, bundle.SuiteRSAOAEPSHA1},
				{escrowdv1.Recipient_KIND_DEVICE, bundle.SuiteECDHP256},
			} {
				rw, err := s.sync.Rewrap(ctx, &escrowdv1.RewrapRequest{GroupId: group, EscrowSlot: escrowSlot, Recipient: k.recipient(tc.kind, "r1", tc.suite)})
				if err != nil {
					t.Fatalf("Rewrap to %v %s: %v", tc.kind, tc.suite, err)
				}
				if got := k.open(t, rw.GetSlot(), device.Want{Group: group, ID: "r1"}, 1); !bytes.Equal(got, gdk) {
					t.Fatalf("%v %s slot holds another key", tc.kind, tc.suite)
				}
			}
			// SoftHSM has no RSA-OAEP with SHA-256: a clear refusal.
			_, err := s.sync.Rewrap(ctx, &escrowdv1.RewrapRequest{GroupId: group, EscrowSlot: escrowSlot,
				Recipient: k.recipient(escrowdv1.Recipient_KIND_MEMBER, "r1", bundle.SuiteRSAOAEPSHA256)})
			if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "not supported") {
				t.Fatalf("rsa-oaep-sha256 on SoftHSM: %v, want FailedPrecondition", err)
			}
			// A key of the wrong type for the suite.
			bad := k.recipient(escrowdv1.Recipient_KIND_MEMBER, "r1", bundle.SuiteECDHP256)
			bad.PublicKey = k.rsaPub
			if _, err := s.sync.Rewrap(ctx, &escrowdv1.RewrapRequest{GroupId: group, EscrowSlot: escrowSlot, Recipient: bad}); status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "P-256") {
				t.Fatalf("RSA key for ecdh-p256: %v", err)
			}
			// Re-wrap to the newest escrow version (0 = newest, or named).
			for _, v := range []uint32{0, 1} {
				re, err := s.sync.RewrapToEscrow(ctx, &escrowdv1.RewrapToEscrowRequest{GroupId: group, EscrowSlot: escrowSlot, EscrowKeyVersion: v})
				if err != nil || re.GetEscrowKeyVersion() != 1 {
					t.Fatalf("RewrapToEscrow(%d): %v, %v", v, re, err)
				}
				if bytes.Equal(re.GetSlot(), escrowSlot) {
					t.Fatal("the new escrow slot is the old one byte for byte")
				}
				if es, err := bundle.ParseSlot(re.GetSlot()); err != nil || es.Kind != bundle.KindEscrow || es.Group != group || es.GDKVersion != 1 ||
					!bytes.Equal(es.Commit, format.Commitment(group, 1, gdk)) {
					t.Fatalf("the new escrow slot %+v, %v: want an escrow slot of GDK 1 of %s with its commitment", es, err, group)
				}
				// The new escrow slot is usable: re-wrap it to a member.
				rw, err := s.sync.Rewrap(ctx, &escrowdv1.RewrapRequest{GroupId: group, EscrowSlot: re.GetSlot(),
					Recipient: k.recipient(escrowdv1.Recipient_KIND_MEMBER, "r2", bundle.SuiteECDHP256)})
				if err != nil || !bytes.Equal(k.open(t, rw.GetSlot(), device.Want{Group: group, ID: "r2"}, 1), gdk) {
					t.Fatalf("the new escrow slot: %v", err)
				}
			}
			_, err = s.sync.RewrapToEscrow(ctx, &escrowdv1.RewrapToEscrowRequest{GroupId: group, EscrowSlot: escrowSlot, EscrowKeyVersion: 2})
			if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "not the newest") {
				t.Fatalf("RewrapToEscrow to version 2: %v", err)
			}
		})
	}
}

// TestBatchRewrap: every item gets its own result; failures stay with
// their item; the bound refuses a batch whole; one audit record lists
// every item's outcome and no slot.
func TestBatchRewrap(t *testing.T) {
	s := newStack(t, vaultSrv)
	ctx := ctxT(t)
	k := newKeys(t)
	gdkA, slotA, _ := s.provisionSuite(ctx, "batch-a", "")
	gdkB, slotB, _ := s.provisionSuite(ctx, "batch-b", bundle.SuiteRSAOAEPSHA1)
	tampered, _ := bundle.ParseSlot(slotA)
	tampered.Wrapped[0] ^= 1
	tamperedSlot, _ := tampered.Marshal()
	member := func(suite string) *escrowdv1.BatchRewrapItem_Recipient {
		return &escrowdv1.BatchRewrapItem_Recipient{Recipient: k.recipient(escrowdv1.Recipient_KIND_MEMBER, "m1", suite)}
	}
	items := []*escrowdv1.BatchRewrapItem{
		{Reference: "ok-a-ecdh", GroupId: "batch-a", EscrowSlot: slotA, Target: member(bundle.SuiteECDHP256)},
		{Reference: "ok-b-rsa", GroupId: "batch-b", EscrowSlot: slotB, Target: member(bundle.SuiteRSAOAEPSHA1)},
		{Reference: "no-group", GroupId: "batch-none", EscrowSlot: slotA, Target: member(bundle.SuiteECDHP256)},
		{Reference: "tampered", GroupId: "batch-a", EscrowSlot: tamperedSlot, Target: member(bundle.SuiteECDHP256)},
		{Reference: "slot-of-b-for-a", GroupId: "batch-a", EscrowSlot: slotB, Target: member(bundle.SuiteECDHP256)},
		{Reference: "no-target", GroupId: "batch-a", EscrowSlot: slotA},
		{Reference: "ok-escrow", GroupId: "batch-b", EscrowSlot: slotB, Target: &escrowdv1.BatchRewrapItem_Escrow{Escrow: &escrowdv1.EscrowTarget{}}},
		{Reference: "old-escrow", GroupId: "batch-b", EscrowSlot: slotB, Target: &escrowdv1.BatchRewrapItem_Escrow{Escrow: &escrowdv1.EscrowTarget{KeyVersion: 9}}},
		{Reference: "sha256", GroupId: "batch-b", EscrowSlot: slotB, Target: member(bundle.SuiteRSAOAEPSHA256)},
	}
	want := []struct {
		code codes.Code
		say  string
		gdk  []byte
	}{
		{codes.OK, "", gdkA},
		{codes.OK, "", gdkB},
		{codes.NotFound, "batch-none", nil},
		{codes.InvalidArgument, "does not open", nil},
		{codes.InvalidArgument, "another group", nil},
		{codes.InvalidArgument, "target", nil},
		{codes.OK, "", gdkB},
		{codes.InvalidArgument, "not the newest", nil},
		{codes.FailedPrecondition, "not supported", nil},
	}
	var hdr metadata.MD
	resp, err := s.sync.BatchRewrap(ctx, &escrowdv1.BatchRewrapRequest{Items: items}, grpc.Header(&hdr))
	if err != nil {
		t.Fatalf("BatchRewrap: %v", err)
	}
	if len(resp.GetResults()) != len(items) {
		t.Fatalf("%d results for %d items", len(resp.GetResults()), len(items))
	}
	for i, r := range resp.GetResults() {
		w := want[i]
		if r.GetReference() != items[i].GetReference() {
			t.Errorf("result %d has reference %q, want %q", i, r.GetReference(), items[i].GetReference())
		}
		if w.code == codes.OK {
			if r.GetError() != nil {
				t.Errorf("%s: error %v", r.GetReference(), r.GetError())
				continue
			}
			var got []byte
			group := items[i].GetGroupId()
			if sl, _ := bundle.ParseSlot(r.GetSlot()); sl != nil && sl.Kind == bundle.KindEscrow {
				if sl.Group != group || sl.GDKVersion != 1 {
					t.Fatalf("%s: escrow slot of %s GDK %d", r.GetReference(), sl.Group, sl.GDKVersion)
				}
				rw, err := s.sync.Rewrap(ctx, &escrowdv1.RewrapRequest{GroupId: group, EscrowSlot: r.GetSlot(), Recipient: k.recipient(escrowdv1.Recipient_KIND_DEVICE, "d", bundle.SuiteECDHP256)})
				if err != nil {
					t.Fatal(err)
				}
				got = k.open(t, rw.GetSlot(), device.Want{Group: group, ID: "d"}, 1)
			} else {
				got = k.open(t, r.GetSlot(), device.Want{Group: group, ID: "m1"}, 1)
			}
			if !bytes.Equal(got, w.gdk) {
				t.Errorf("%s: slot holds another key", r.GetReference())
			}
			continue
		}
		if r.GetSlot() != nil || codes.Code(r.GetError().GetCode()) != w.code || !strings.Contains(r.GetError().GetMessage(), w.say) {
			t.Errorf("%s: slot %d bytes, error %v; want %v saying %q", r.GetReference(), len(r.GetSlot()), r.GetError(), w.code, w.say)
		}
	}
	// The audit record lists each item's outcome and holds no slot.
	rec, err := s.find(ctx, hdr.Get(daemon.HeaderRequestID)[0])
	if err != nil {
		t.Fatal(err)
	}
	flat := strings.Join(rec.Detail, "\n")
	for i, w := range want {
		line := fmt.Sprintf("item:%d ref:%s ", i, items[i].GetReference())
		if !strings.Contains(flat, line) || !strings.Contains(flat, line+"group:") {
			t.Errorf("record lacks %q:\n%s", line, flat)
		}
		_ = w
	}
	if !strings.Contains(flat, "code:NotFound") || !strings.Contains(flat, "failed:6") {
		t.Errorf("record details:\n%s", flat)
	}
	for _, r := range resp.GetResults() {
		if r.GetSlot() != nil && strings.Contains(fmt.Sprintf("%+v", rec), string(r.GetSlot())) {
			t.Error("the audit record holds a slot")
		}
	}

	// Over the bound: refused whole.
	big := make([]*escrowdv1.BatchRewrapItem, 257)
	for i := range big {
		big[i] = items[0]
	}
	_, err = s.sync.BatchRewrap(ctx, &escrowdv1.BatchRewrapRequest{Items: big})
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "more than 256") {
		t.Fatalf("257 items: %v, want InvalidArgument", err)
	}

	// Throughput at the bound, both escrow suites.
	for _, tc := range []struct {
		name, group string
		slot        []byte
	}{{"ecdh-p256 escrow, ecdh-p256 members", "batch-a", slotA}, {"rsa-oaep-sha1 escrow, rsa-oaep-sha1 members", "batch-b", slotB}} {
		suite := bundle.SuiteECDHP256
		if tc.group == "batch-b" {
			suite = bundle.SuiteRSAOAEPSHA1
		}
		full := make([]*escrowdv1.BatchRewrapItem, 256)
		for i := range full {
			full[i] = &escrowdv1.BatchRewrapItem{Reference: fmt.Sprint(i), GroupId: tc.group, EscrowSlot: tc.slot, Target: member(suite)}
		}
		start := time.Now()
		resp, err := s.sync.BatchRewrap(ctx, &escrowdv1.BatchRewrapRequest{Items: full})
		if err != nil {
			t.Fatal(err)
		}
		d := time.Since(start)
		for _, r := range resp.GetResults() {
			if r.GetError() != nil {
				t.Fatalf("item %s: %v", r.GetReference(), r.GetError())
			}
		}
		t.Logf("BatchRewrap of 256 items (%s): %v, %.0f items/s", tc.name, d.Round(time.Millisecond), 256/d.Seconds())
	}
}

// TestConsumeCodes: a revealed code reported used shows as consumed; an
// unrevealed one and one of a dead epoch are refused.
func TestConsumeCodes(t *testing.T) {
	s := newStack(t, vaultSrv)
	ctx := ctxT(t)
	_, slot, _ := s.provisionSuite(ctx, "consume", "")
	is, err := s.sync.IssueUnlockCodes(ctx, &escrowdv1.IssueUnlockCodesRequest{GroupId: "consume", UserId: "u", EscrowSlot: slot, Count: 3})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.support.RevealUnlockCode(ctx, &escrowdv1.RevealUnlockCodeRequest{GroupId: "consume", UserId: "u", Ticket: "SUP-1"}); err != nil {
		t.Fatal(err)
	}
	mark := func(epoch, index uint32) (*escrowdv1.MarkUnlockCodeConsumedResponse, error) {
		return s.sync.MarkUnlockCodeConsumed(ctx, &escrowdv1.MarkUnlockCodeConsumedRequest{GroupId: "consume", UserId: "u", Epoch: epoch, Index: index})
	}
	if _, err := mark(is.GetEpoch(), 1); status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "never revealed") {
		t.Fatalf("consume unrevealed: %v", err)
	}
	for range 2 {
		r, err := mark(is.GetEpoch(), 0)
		if err != nil || r.GetCodes()[0].GetState() != escrowdv1.UnlockCodeState_STATE_CONSUMED {
			t.Fatalf("consume: %v, %v", r, err)
		}
	}
	ls, err := s.support.ListUnlockCodes(ctx, &escrowdv1.ListUnlockCodesRequest{GroupId: "consume", UserId: "u"})
	if err != nil {
		t.Fatal(err)
	}
	states := []escrowdv1.UnlockCodeState_State{escrowdv1.UnlockCodeState_STATE_CONSUMED, escrowdv1.UnlockCodeState_STATE_UNREVEALED, escrowdv1.UnlockCodeState_STATE_UNREVEALED}
	for i, c := range ls.GetCodes() {
		if c.GetState() != states[i] {
			t.Fatalf("code %d is %v, want %v", i, c.GetState(), states[i])
		}
	}
	if _, err := mark(is.GetEpoch(), 7); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("index 7: %v", err)
	}
	if _, err := s.sync.IssueUnlockCodes(ctx, &escrowdv1.IssueUnlockCodesRequest{GroupId: "consume", UserId: "u", EscrowSlot: slot, Count: 3}); err != nil {
		t.Fatal(err)
	}
	if _, err := mark(is.GetEpoch(), 0); status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "not the current epoch") {
		t.Fatalf("consume in a dead epoch: %v", err)
	}
}

// TestRotateGroupKey: a member leaves; the daemon makes GDK 2 in the HSM,
// wraps it to the remaining member and device, the escrow key and a new
// unlock epoch, and chains GDK 1 under it; the departed member's key gets
// nothing; the token holds no more objects than before.
func TestRotateGroupKey(t *testing.T) {
	s := newStack(t, vaultSrv)
	ctx := ctxT(t)
	for _, suite := range []string{"", bundle.SuiteRSAOAEPSHA1} {
		group := "rotate-" + strings.ReplaceAll(suite+"default", "-", "")
		t.Run(group, func(t *testing.T) {
			before, err := s.sec.ListHSMObjects(ctx, &escrowdv1.ListHSMObjectsRequest{})
			if err != nil {
				t.Fatal(err)
			}
			gdk1, slot1, _ := s.provisionSuite(ctx, group, suite)
			stay := newKeys(t)
			rec1, err := device.SealRecord(gdk1, group, "note-1", 1, []byte("written before the rotation"))
			if err != nil {
				t.Fatal(err)
			}
			if _, err := s.sync.IssueUnlockCodes(ctx, &escrowdv1.IssueUnlockCodesRequest{GroupId: group, UserId: "bob", EscrowSlot: slot1, Count: 2}); err != nil {
				t.Fatal(err)
			}
			r, err := s.sync.RotateGroupKey(ctx, &escrowdv1.RotateGroupKeyRequest{
				GroupId: group, EscrowSlot: slot1, OldGdkVersion: 1,
				Recipients: []*escrowdv1.Recipient{
					stay.recipient(escrowdv1.Recipient_KIND_MEMBER, "alice", bundle.SuiteRSAOAEPSHA1),
					stay.recipient(escrowdv1.Recipient_KIND_DEVICE, "alice-phone", bundle.SuiteECDHP256),
				},
				UnlockUserIds: []string{"bob"}, CodesPerUser: 2,
			})
			if err != nil {
				t.Fatalf("RotateGroupKey: %v", err)
			}
			if r.GetGdkVersion() != 2 || len(r.GetRecipientSlots()) != 2 || len(r.GetUnlock()) != 1 || r.GetUnlock()[0].GetEpoch() != 2 {
				t.Fatalf("rotation response: gdk %d, %d slots, unlock %v", r.GetGdkVersion(), len(r.GetRecipientSlots()), r.GetUnlock())
			}
			alice, phone := device.Want{Group: group, ID: "alice"}, device.Want{Group: group, ID: "alice-phone"}
			gdk2 := stay.open(t, r.GetRecipientSlots()[0], alice, 2)
			if bytes.Equal(gdk2, gdk1) {
				t.Fatal("the rotation kept the old GDK")
			}
			if !bytes.Equal(stay.open(t, r.GetRecipientSlots()[1], phone, 2), gdk2) {
				t.Fatal("the device got another key")
			}
			// Every slot of GDK 2 names the group and version 2 and carries
			// GDK 2's one commitment, the one the response hands the sync
			// backend for devices to pin.
			commit2 := format.Commitment(group, 2, gdk2)
			if !bytes.Equal(r.GetGdkCommitment(), commit2) {
				t.Fatalf("gdk_commitment %x, want GDK 2's %x", r.GetGdkCommitment(), commit2)
			}
			newSlots := map[string][]byte{"escrow": r.GetEscrowSlot(), "member": r.GetRecipientSlots()[0], "device": r.GetRecipientSlots()[1]}
			for i, u := range r.GetUnlock()[0].GetSlots() {
				newSlots[fmt.Sprintf("unlock %d", i)] = u
			}
			for name, raw := range newSlots {
				ns, err := bundle.ParseSlot(raw)
				if err != nil || ns.Group != group || ns.GDKVersion != 2 || !bytes.Equal(ns.Commit, commit2) {
					t.Fatalf("%s slot of the rotation %+v, %v: want GDK 2 of %s with commitment %x", name, ns, err, group, commit2)
				}
			}
			// The chain slot holds GDK 1 under GDK 2, bound to the group.
			old, cs, err := device.OpenChain(r.GetChainSlot(), group, gdk2)
			if err != nil || !bytes.Equal(old, gdk1) {
				t.Fatalf("chain: %v", err)
			}
			if cs.GDKVersion != 1 || cs.KeyVersion != 2 || !bytes.Equal(cs.Commit, format.Commitment(group, 1, gdk1)) {
				t.Fatalf("chain slot %+v: want GDK 1 under GDK 2 with GDK 1's commitment", cs)
			}
			if _, _, err := device.OpenChain(r.GetChainSlot(), "another-group", gdk2); !errors.Is(err, device.ErrBinding) {
				t.Fatalf("chain opened for another group: %v, want ErrBinding", err)
			}
			if _, pt, err := device.OpenRecord(rec1, old); err != nil || string(pt) != "written before the rotation" {
				t.Fatalf("old record through the chain: %v", err)
			}
			// A device that holds GDK 1 (pinned when it made it) adopts GDK 2
			// through the chain, and no other key for version 2.
			kr := device.NewKeyring(group)
			s1, err := bundle.ParseSlot(slot1)
			if err != nil {
				t.Fatal(err)
			}
			if err := kr.Pin(1, s1.Commit); err != nil {
				t.Fatal(err)
			}
			if err := kr.Add(s1, gdk1); err != nil {
				t.Fatalf("keyring: GDK 1: %v", err)
			}
			_, ms := stay.openSlot(t, r.GetRecipientSlots()[0], alice, 2)
			other, _ := device.NewGDK()
			if err := kr.AdoptNewer(ms, other, r.GetChainSlot()); err == nil {
				t.Fatal("keyring adopted a GDK 2 the chain does not lead from")
			}
			if err := kr.AdoptNewer(ms, gdk2, r.GetChainSlot()); err != nil {
				t.Fatalf("keyring: adopt GDK 2 through the chain: %v", err)
			}
			if g, ok := kr.GDK(2); !ok || !bytes.Equal(g, gdk2) {
				t.Fatal("keyring does not hold GDK 2")
			}
			// The new escrow slot holds GDK 2.
			rw, err := s.sync.Rewrap(ctx, &escrowdv1.RewrapRequest{GroupId: group, EscrowSlot: r.GetEscrowSlot(), Recipient: stay.recipient(escrowdv1.Recipient_KIND_MEMBER, "alice", bundle.SuiteECDHP256)})
			if err != nil || !bytes.Equal(stay.open(t, rw.GetSlot(), alice, 2), gdk2) {
				t.Fatalf("new escrow slot: %v", err)
			}
			// The old escrow slot no longer rotates as GDK 2, nor the new one
			// as GDK 1.
			for _, bad := range []struct {
				slot []byte
				old  uint32
			}{{slot1, 2}, {r.GetEscrowSlot(), 1}} {
				_, err := s.sync.RotateGroupKey(ctx, &escrowdv1.RotateGroupKeyRequest{GroupId: group, EscrowSlot: bad.slot, OldGdkVersion: bad.old,
					Recipients: []*escrowdv1.Recipient{stay.recipient(escrowdv1.Recipient_KIND_MEMBER, "alice", bundle.SuiteECDHP256)}})
				wantCode(t, err, codes.InvalidArgument, fmt.Sprintf("old_gdk_version is %d", bad.old))
			}
			// Bob's new epoch opens GDK 2.
			rv, err := s.support.RevealUnlockCode(ctx, &escrowdv1.RevealUnlockCodeRequest{GroupId: group, UserId: "bob", Ticket: "SUP-2"})
			if err != nil || rv.GetEpoch() != 2 {
				t.Fatalf("reveal after rotation: %v, %v", rv, err)
			}
			got, us, err := device.OpenUnlock(r.GetUnlock()[0].GetSlots(), device.Want{Group: group, ID: "bob"}, strings.ToLower(rv.GetCode()))
			if err != nil || !bytes.Equal(got, gdk2) || us.Unlock.Index != rv.GetIndex() || us.Unlock.Epoch != 2 {
				t.Fatalf("unlock slot after rotation: %v", err)
			}
			// Rotating on from the new escrow slot: GDK 2 to 3, chained to 2.
			r3, err := s.sync.RotateGroupKey(ctx, &escrowdv1.RotateGroupKeyRequest{GroupId: group, EscrowSlot: r.GetEscrowSlot(), OldGdkVersion: 2,
				Recipients: []*escrowdv1.Recipient{stay.recipient(escrowdv1.Recipient_KIND_MEMBER, "alice", bundle.SuiteECDHP256)}})
			if err != nil {
				t.Fatalf("RotateGroupKey 2 to 3: %v", err)
			}
			gdk3 := stay.open(t, r3.GetRecipientSlots()[0], alice, 3)
			if r3.GetGdkVersion() != 3 || !bytes.Equal(r3.GetGdkCommitment(), format.Commitment(group, 3, gdk3)) {
				t.Fatalf("rotation 2 to 3: GDK %d, commitment %x; want 3 and GDK 3's", r3.GetGdkVersion(), r3.GetGdkCommitment())
			}
			for name, raw := range map[string][]byte{"escrow": r3.GetEscrowSlot(), "member": r3.GetRecipientSlots()[0]} {
				if ns, err := bundle.ParseSlot(raw); err != nil || !bytes.Equal(ns.Commit, r3.GetGdkCommitment()) || ns.GDKVersion != 3 {
					t.Fatalf("%s slot of rotation 2 to 3: %+v, %v: want the response's commitment", name, ns, err)
				}
			}
			if old, cs, err := device.OpenChain(r3.GetChainSlot(), group, gdk3); err != nil || !bytes.Equal(old, gdk2) || !bytes.Equal(cs.Commit, r.GetGdkCommitment()) {
				t.Fatalf("chain of rotation 2 to 3: %v", err)
			}
			if _, err := kr.AdoptOlder(r3.GetChainSlot()); err == nil {
				t.Fatal("keyring opened the chain of GDK 3 without holding GDK 3")
			}
			// A device enrolled after the rotations pins GDK 3's commitment
			// from the response and reaches GDK 2 and GDK 1 down the chain.
			late := device.NewKeyring(group)
			if err := late.Pin(3, r3.GetGdkCommitment()); err != nil {
				t.Fatal(err)
			}
			if _, ms3 := stay.openSlot(t, r3.GetRecipientSlots()[0], alice, 3); late.Add(ms3, gdk3) != nil {
				t.Fatal("keyring: GDK 3 with its pinned commitment refused")
			}
			for _, c := range []struct {
				chain []byte
				want  []byte
			}{{r3.GetChainSlot(), gdk2}, {r.GetChainSlot(), gdk1}} {
				if got, err := late.AdoptOlder(c.chain); err != nil || !bytes.Equal(got, c.want) {
					t.Fatalf("keyring: down the chain: %v", err)
				}
			}
			after, err := s.sec.ListHSMObjects(ctx, &escrowdv1.ListHSMObjectsRequest{})
			if err != nil || leftOver(t, after.GetObjects()) != leftOver(t, before.GetObjects()) {
				t.Fatalf("%d objects before, %d after (hot escrow keys aside), %v", leftOver(t, before.GetObjects()), leftOver(t, after.GetObjects()), err)
			}
		})
	}
	// Bad requests.
	_, slot, _ := s.provisionSuite(ctx, "rotate-bad", "")
	k := newKeys(t)
	member := []*escrowdv1.Recipient{k.recipient(escrowdv1.Recipient_KIND_MEMBER, "a", bundle.SuiteECDHP256)}
	for name, req := range map[string]*escrowdv1.RotateGroupKeyRequest{
		"no version":      {GroupId: "rotate-bad", EscrowSlot: slot, Recipients: member},
		"twice a user":    {GroupId: "rotate-bad", EscrowSlot: slot, OldGdkVersion: 1, UnlockUserIds: []string{"u", "u"}},
		"bad key":         {GroupId: "rotate-bad", EscrowSlot: slot, OldGdkVersion: 1, Recipients: []*escrowdv1.Recipient{{Kind: escrowdv1.Recipient_KIND_MEMBER, Id: "a", KeyVersion: 1, Suite: bundle.SuiteECDHP256, PublicKey: []byte{1}}}},
		"another version": {GroupId: "rotate-bad", EscrowSlot: slot, OldGdkVersion: 2, Recipients: member},
	} {
		if _, err := s.sync.RotateGroupKey(ctx, req); status.Code(err) != codes.InvalidArgument {
			t.Errorf("%s: %v, want InvalidArgument", name, err)
		}
	}
}

// leftOver counts the token's objects other than hot escrow keys: escrowd
// keeps the escrow keys it unwrapped, for a while, as session objects
// (docs/HSM.md, "Hot escrow keys"); every other object an operation makes
// (a GDK, a derived key) must be gone when it returns. (Hot slots keep a
// GDK and its binding key too, but a GDK rotation drops them all: after
// one, none is left.) A kept key must be
// sensitive and extractable only under a trusted key.
func leftOver(t *testing.T, objs []*escrowdv1.HSMObject) int {
	t.Helper()
	n := 0
	for _, o := range objs {
		if o.GetClass() == "private-key" && !o.GetToken() {
			if !o.GetSensitive() || !o.GetWrapWithTrusted() {
				t.Errorf("a kept escrow key is not sensitive, or extractable under any key: %+v", o)
			}
			continue
		}
		n++
	}
	return n
}
