package e2e

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"

	escrowdv1 "github.com/escrowd/escrowd/api/escrowd/v1"
	"github.com/escrowd/escrowd/daemon"
	"github.com/escrowd/escrowd/escrow/bundle"
)

// policyVariant writes testdata/policy.yaml with each old string replaced
// by the new one after it, and returns its path.
func policyVariant(t *testing.T, oldNew ...string) string {
	t.Helper()
	b, err := os.ReadFile("testdata/policy.yaml")
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	for i := 0; i+1 < len(oldNew); i += 2 {
		if !strings.Contains(s, oldNew[i]) {
			t.Fatalf("testdata/policy.yaml lacks %q", oldNew[i])
		}
		s = strings.Replace(s, oldNew[i], oldNew[i+1], 1)
	}
	p := filepath.Join(t.TempDir(), "policy.yaml")
	if err := os.WriteFile(p, []byte(s), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// slotKinds returns the kind of every key slot anywhere in m (bytes
// fields that parse as slots), chain slots left out: a chain wraps an old
// GDK under the new one, so it reaches no one the new GDK's slots do not.
func slotKinds(m proto.Message) []string {
	seen := map[string]bool{}
	var walk func(protoreflect.Message)
	try := func(b []byte) {
		if s, err := bundle.ParseSlot(b); err == nil && s.Kind != bundle.KindChain {
			seen[string(s.Kind)] = true
		}
	}
	walk = func(m protoreflect.Message) {
		m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
			switch {
			case fd.IsList() && fd.Kind() == protoreflect.BytesKind:
				for i := range v.List().Len() {
					try(v.List().Get(i).Bytes())
				}
			case fd.IsList() && fd.Kind() == protoreflect.MessageKind:
				for i := range v.List().Len() {
					walk(v.List().Get(i).Message())
				}
			case fd.Kind() == protoreflect.BytesKind:
				try(v.Bytes())
			case fd.Kind() == protoreflect.MessageKind && !fd.IsMap():
				walk(v.Message())
			}
			return true
		})
	}
	walk(m.ProtoReflect())
	var kinds []string
	for k := range seen {
		kinds = append(kinds, k)
	}
	slices.Sort(kinds)
	return kinds
}

func sorted(s []string) []string {
	s = slices.Clone(s)
	slices.Sort(s)
	return s
}

// mentionsSlots reports whether message d, or one it holds, has a field
// whose name speaks of slots.
func mentionsSlots(d protoreflect.MessageDescriptor, seen map[protoreflect.FullName]bool) bool {
	if seen[d.FullName()] {
		return false
	}
	seen[d.FullName()] = true
	for i := range d.Fields().Len() {
		f := d.Fields().Get(i)
		if strings.Contains(string(f.Name()), "slot") {
			return true
		}
		if f.Message() != nil && mentionsSlots(f.Message(), seen) {
			return true
		}
	}
	return false
}

// TestTargetsMatchSlots: for every RPC that returns key slots, the target
// kinds the daemon asks the policy about are exactly the kinds of the
// slots it returns (a chain slot adds none: see slotKinds). A role
// limited by rewrap_targets therefore cannot get a GDK wrapped to a kind
// of key the policy was not asked about.
func TestTargetsMatchSlots(t *testing.T) {
	s := newStack(t, vaultSrv)
	ctx := ctxT(t)
	k := newKeys(t)
	member := k.recipient(escrowdv1.Recipient_KIND_MEMBER, "m1", bundle.SuiteRSAOAEPSHA1)
	dev := k.recipient(escrowdv1.Recipient_KIND_DEVICE, "d1", bundle.SuiteECDHP256)
	_, slot, _ := s.provisionSuite(ctx, "targets", bundle.SuiteRSAOAEPSHA1)

	type call struct {
		name, what string
		req        proto.Message
		do         func() (proto.Message, error)
	}
	rotate := func(r *escrowdv1.RotateGroupKeyRequest) func() (proto.Message, error) {
		r.GroupId, r.EscrowSlot, r.OldGdkVersion = "targets", slot, 1
		return func() (proto.Message, error) { return s.sync.RotateGroupKey(ctx, r) }
	}
	var (
		rwMember  = &escrowdv1.RewrapRequest{GroupId: "targets", EscrowSlot: slot, Recipient: member}
		rwDevice  = &escrowdv1.RewrapRequest{GroupId: "targets", EscrowSlot: slot, Recipient: dev}
		issue     = &escrowdv1.IssueUnlockCodesRequest{GroupId: "targets", UserId: "u", EscrowSlot: slot, Count: 2}
		toEscrow  = &escrowdv1.RewrapToEscrowRequest{GroupId: "targets", EscrowSlot: slot}
		rotAll    = &escrowdv1.RotateGroupKeyRequest{Recipients: []*escrowdv1.Recipient{member, dev}, UnlockUserIds: []string{"u2"}, CodesPerUser: 2}
		rotNone   = &escrowdv1.RotateGroupKeyRequest{}
		rotMember = &escrowdv1.RotateGroupKeyRequest{Recipients: []*escrowdv1.Recipient{member}}
		rotDevice = &escrowdv1.RotateGroupKeyRequest{Recipients: []*escrowdv1.Recipient{dev, dev}}
		rotUnlock = &escrowdv1.RotateGroupKeyRequest{UnlockUserIds: []string{"u3"}, CodesPerUser: 1}
	)
	calls := []call{
		{"Rewrap", "to a member", rwMember, func() (proto.Message, error) { return s.sync.Rewrap(ctx, rwMember) }},
		{"Rewrap", "to a device", rwDevice, func() (proto.Message, error) { return s.sync.Rewrap(ctx, rwDevice) }},
		{"IssueUnlockCodes", "2 codes", issue, func() (proto.Message, error) { return s.sync.IssueUnlockCodes(ctx, issue) }},
		{"RewrapToEscrow", "newest version", toEscrow, func() (proto.Message, error) { return s.sync.RewrapToEscrow(ctx, toEscrow) }},
		// Each rotation starts from GDK 1's escrow slot: the daemon keeps
		// no GDK, so each is a rotation of its own.
		{"RotateGroupKey", "a member, a device, unlock codes", rotAll, rotate(rotAll)},
		{"RotateGroupKey", "no recipients", rotNone, rotate(rotNone)},
		{"RotateGroupKey", "a member", rotMember, rotate(rotMember)},
		{"RotateGroupKey", "a device twice", rotDevice, rotate(rotDevice)},
		{"RotateGroupKey", "unlock codes only", rotUnlock, rotate(rotUnlock)},
	}
	// Every RPC whose response speaks of slots has a case here, or is
	// BatchRewrap, decided item by item (TestBatchItemTargetsMatchSlots).
	covered := map[string]bool{"BatchRewrap": true}
	for _, c := range calls {
		covered[c.name] = true
	}
	for _, sd := range []grpc.ServiceDesc{escrowdv1.SyncService_ServiceDesc, escrowdv1.SupportService_ServiceDesc, escrowdv1.SecurityService_ServiceDesc} {
		for _, m := range sd.Methods {
			d, err := protoregistry.GlobalFiles.FindDescriptorByName(protoreflect.FullName(sd.ServiceName))
			if err != nil {
				t.Fatal(err)
			}
			out := d.(protoreflect.ServiceDescriptor).Methods().ByName(protoreflect.Name(m.MethodName)).Output()
			if mentionsSlots(out, map[protoreflect.FullName]bool{}) && !covered[m.MethodName] {
				t.Errorf("%s returns slots but has no case here", m.MethodName)
			}
		}
	}
	for _, c := range calls {
		want := sorted(daemon.Targets(c.req))
		resp, err := c.do()
		if err != nil {
			t.Fatalf("%s (%s): %v", c.name, c.what, err)
		}
		if got := slotKinds(resp); !slices.Equal(got, want) {
			t.Errorf("%s (%s): returns slots of kinds %v, but the policy is asked about %v", c.name, c.what, got, want)
		}
	}
}

// TestRotateGroupKeyTargets: RotateGroupKey is allowed only if the role's
// rewrap_targets hold every kind it wraps the new GDK to (and, through
// the chain, the old one): escrow always, member and device for its
// recipients, unlock when it issues codes. Denials name the kinds.
func TestRotateGroupKeyTargets(t *testing.T) {
	const all = "rewrap_targets: [member, device, unlock, escrow]"
	k := newKeys(t)
	member := k.recipient(escrowdv1.Recipient_KIND_MEMBER, "m1", bundle.SuiteRSAOAEPSHA1)
	dev := k.recipient(escrowdv1.Recipient_KIND_DEVICE, "d1", bundle.SuiteECDHP256)
	tests := []struct {
		name    string
		targets string
		rot     *escrowdv1.RotateGroupKeyRequest
		denied  string // the kinds a denial names; "" for allowed
	}{
		{"escrow only, no recipients", "[escrow]", &escrowdv1.RotateGroupKeyRequest{}, ""},
		{"escrow only, a member", "[escrow]", &escrowdv1.RotateGroupKeyRequest{Recipients: []*escrowdv1.Recipient{member}}, "member, escrow"},
		{"escrow only, a device", "[escrow]", &escrowdv1.RotateGroupKeyRequest{Recipients: []*escrowdv1.Recipient{dev}}, "device, escrow"},
		{"escrow only, unlock codes", "[escrow]", &escrowdv1.RotateGroupKeyRequest{UnlockUserIds: []string{"u"}, CodesPerUser: 1}, "unlock, escrow"},
		{"escrow and member, a member", "[escrow, member]", &escrowdv1.RotateGroupKeyRequest{Recipients: []*escrowdv1.Recipient{member}}, ""},
		{"escrow and member, a member and a device", "[escrow, member]", &escrowdv1.RotateGroupKeyRequest{Recipients: []*escrowdv1.Recipient{member, dev}}, "member, device, escrow"},
		{"member, device, unlock: no escrow", "[member, device, unlock]", &escrowdv1.RotateGroupKeyRequest{Recipients: []*escrowdv1.Recipient{member}}, "member, escrow"},
		{"all, everything", "[member, device, unlock, escrow]", &escrowdv1.RotateGroupKeyRequest{Recipients: []*escrowdv1.Recipient{member, dev}, UnlockUserIds: []string{"u"}, CodesPerUser: 1}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newStackWith(t, vaultSrv, stackOpts{policy: policyVariant(t, all, "rewrap_targets: "+tt.targets)})
			ctx := ctxT(t)
			_, slot, _ := s.provisionSuite(ctx, "rot-targets", "")
			tt.rot.GroupId, tt.rot.EscrowSlot, tt.rot.OldGdkVersion = "rot-targets", slot, 1
			r, err := s.sync.RotateGroupKey(ctx, tt.rot)
			if tt.denied == "" {
				if err != nil {
					t.Fatalf("RotateGroupKey: %v, want it allowed", err)
				}
				if r.GetGdkVersion() != 2 {
					t.Fatalf("GDK version %d", r.GetGdkVersion())
				}
				return
			}
			if status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "target kinds "+tt.denied) {
				t.Fatalf("RotateGroupKey: %v, want PermissionDenied naming target kinds %s", err, tt.denied)
			}
		})
	}
}
