package e2e

import (
	"context"
	"crypto/tls"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"

	escrowdv1 "github.com/escrowd/escrowd/api/escrowd/v1"
	"github.com/escrowd/escrowd/audit"
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

// TestBatchItemTargetsMatchSlots: each item of a batch is decided with the
// target kind of the slot it returns.
func TestBatchItemTargetsMatchSlots(t *testing.T) {
	s := newStack(t, vaultSrv)
	ctx := ctxT(t)
	k := newKeys(t)
	_, slot, _ := s.provisionSuite(ctx, "batch-targets", "")
	items := []*escrowdv1.BatchRewrapItem{
		{Reference: "member", GroupId: "batch-targets", EscrowSlot: slot, Target: &escrowdv1.BatchRewrapItem_Recipient{Recipient: k.recipient(escrowdv1.Recipient_KIND_MEMBER, "m", bundle.SuiteECDHP256)}},
		{Reference: "device", GroupId: "batch-targets", EscrowSlot: slot, Target: &escrowdv1.BatchRewrapItem_Recipient{Recipient: k.recipient(escrowdv1.Recipient_KIND_DEVICE, "d", bundle.SuiteRSAOAEPSHA1)}},
		{Reference: "escrow", GroupId: "batch-targets", EscrowSlot: slot, Target: &escrowdv1.BatchRewrapItem_Escrow{Escrow: &escrowdv1.EscrowTarget{}}},
	}
	req := &escrowdv1.BatchRewrapRequest{Items: items}
	if got := daemon.Targets(req); got != nil {
		t.Fatalf("the call asks the policy about %v: a batch's targets are its items'", got)
	}
	resp, err := s.sync.BatchRewrap(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range resp.GetResults() {
		if r.GetError() != nil {
			t.Fatalf("%s: %v", r.GetReference(), r.GetError())
		}
		if got, want := slotKinds(r), []string{daemon.BatchItemTarget(items[i])}; !slices.Equal(got, want) {
			t.Errorf("item %s returns slots of kinds %v, but the policy is asked about %v", r.GetReference(), got, want)
		}
	}
}

// TestBatchRewrapPerItemPolicy: each item of a batch is decided, counted
// and limited under its own group and target: a per-group limit counts
// items, not calls, and holds across batches; an item of a kind the role
// lacks, or of a group under dual control, is refused alone and at once;
// a refused item counts against no limit; a per-caller limit counts every
// item. The batch's audit record says which items the rules refused and
// why.
func TestBatchRewrapPerItemPolicy(t *testing.T) {
	const (
		allKinds   = "rewrap_targets: [member, device, unlock, escrow]"
		dualOps    = "operations: [RevealUnlockCode]\n  groups:"
		limits     = "rate_limits:\n"
		perGroup   = limits + "  - {name: rewraps-per-group, operations: [BatchRewrap], per: group, limit: 2, window: 24h}\n"
		perCaller  = limits + "  - {name: rewraps-per-caller, operations: [BatchRewrap], per: caller, limit: 3, window: 24h}\n"
		groupLimit = "rate_limit:rewraps-per-group"
	)
	k := newKeys(t)
	type item struct {
		ref, group, target string // target: member, device or escrow
		code               codes.Code
		say                string
		denied             string // the item's audit line ends in denied:<this>
	}
	tests := []struct {
		name   string
		policy []string // replacements in testdata/policy.yaml
		groups []string
		// batches run one after the other on the same daemon.
		batches [][]item
	}{
		{"a per-group limit counts items and holds across batches", []string{limits, perGroup},
			[]string{"bg-a", "bg-b"}, [][]item{{
				{"a1", "bg-a", "escrow", codes.OK, "", ""},
				{"a2", "bg-a", "member", codes.OK, "", ""},
				{"a3", "bg-a", "escrow", codes.ResourceExhausted, "rewraps-per-group", groupLimit},
				{"b1", "bg-b", "member", codes.OK, "", ""},
			}, {
				{"a4", "bg-a", "device", codes.ResourceExhausted, "rewraps-per-group", groupLimit},
				{"b2", "bg-b", "device", codes.OK, "", ""},
				{"b3", "bg-b", "device", codes.ResourceExhausted, "rewraps-per-group", groupLimit},
			}}},
		{"an item of a kind the role lacks is refused alone and counts nothing", []string{allKinds, "rewrap_targets: [member, unlock, escrow]", limits, perGroup},
			[]string{"bg-a"}, [][]item{{
				{"a-device", "bg-a", "device", codes.PermissionDenied, "target kinds device", "role"},
				{"a1", "bg-a", "member", codes.OK, "", ""},
				{"a-device-2", "bg-a", "device", codes.PermissionDenied, "target kinds device", "role"},
				{"a2", "bg-a", "escrow", codes.OK, "", ""},
			}}},
		{"an item of a group under dual control is refused alone, at once", []string{dualOps, "operations: [RevealUnlockCode, BatchRewrap]\n  groups:"},
			[]string{"bg-a", "vip-c", "vip-eu/d"}, [][]item{{
				{"a1", "bg-a", "member", codes.OK, "", ""},
				{"c1", "vip-c", "member", codes.PermissionDenied, "dual control", "dual_control"},
				{"d1", "vip-eu/d", "escrow", codes.PermissionDenied, "dual control", "dual_control"},
				{"a2", "bg-a", "escrow", codes.OK, "", ""},
			}}},
		{"a per-caller limit counts every item", []string{limits, perCaller},
			[]string{"cl-1", "cl-2"}, [][]item{{
				{"1", "cl-1", "escrow", codes.OK, "", ""},
				{"2", "cl-2", "member", codes.OK, "", ""},
				{"3", "cl-1", "device", codes.OK, "", ""},
				{"4", "cl-2", "escrow", codes.ResourceExhausted, "rewraps-per-caller", "rate_limit:rewraps-per-caller"},
			}, {
				{"5", "cl-1", "member", codes.ResourceExhausted, "rewraps-per-caller", "rate_limit:rewraps-per-caller"},
			}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newStackWith(t, vaultSrv, stackOpts{policy: policyVariant(t, tt.policy...)})
			ctx := ctxT(t)
			slots := map[string][]byte{}
			for _, g := range tt.groups {
				_, slots[g], _ = s.provisionSuite(ctx, g, "")
			}
			for n, batch := range tt.batches {
				var items []*escrowdv1.BatchRewrapItem
				for _, it := range batch {
					bi := &escrowdv1.BatchRewrapItem{Reference: it.ref, GroupId: it.group, EscrowSlot: slots[it.group]}
					switch it.target {
					case "escrow":
						bi.Target = &escrowdv1.BatchRewrapItem_Escrow{Escrow: &escrowdv1.EscrowTarget{}}
					case "member":
						bi.Target = &escrowdv1.BatchRewrapItem_Recipient{Recipient: k.recipient(escrowdv1.Recipient_KIND_MEMBER, "m", bundle.SuiteECDHP256)}
					case "device":
						bi.Target = &escrowdv1.BatchRewrapItem_Recipient{Recipient: k.recipient(escrowdv1.Recipient_KIND_DEVICE, "d", bundle.SuiteECDHP256)}
					}
					items = append(items, bi)
				}
				var hdr metadata.MD
				start := time.Now()
				resp, err := s.sync.BatchRewrap(ctx, &escrowdv1.BatchRewrapRequest{Items: items}, grpc.Header(&hdr))
				if err != nil {
					t.Fatalf("batch %d: %v", n, err)
				}
				if took := time.Since(start); took > 2*time.Second {
					t.Fatalf("batch %d took %v: an item under dual control must be refused at once, not wait", n, took)
				}
				rec, err := s.find(ctx, hdr.Get(daemon.HeaderRequestID)[0])
				if err != nil {
					t.Fatal(err)
				}
				failed, denied := 0, 0
				for i, it := range batch {
					r := resp.GetResults()[i]
					if got := codes.Code(r.GetError().GetCode()); got != it.code || !strings.Contains(r.GetError().GetMessage(), it.say) {
						t.Errorf("batch %d item %s: %v %q, want %v saying %q", n, it.ref, got, r.GetError().GetMessage(), it.code, it.say)
					}
					if (r.GetSlot() != nil) != (it.code == codes.OK) {
						t.Errorf("batch %d item %s: slot of %d bytes", n, it.ref, len(r.GetSlot()))
					}
					line := rec.Detail[i]
					ok := strings.HasPrefix(line, fmt.Sprintf("item:%d ref:%s group:%s ", i, it.ref, it.group)) &&
						strings.Contains(line, " code:"+it.code.String())
					if it.denied == "" {
						ok = ok && !strings.Contains(line, "denied:")
					} else {
						ok = ok && strings.HasSuffix(line, " denied:"+it.denied)
						denied++
					}
					if !ok {
						t.Errorf("batch %d: audit line %q: want item %d, code %v, denied %q", n, line, i, it.code, it.denied)
					}
					if it.code != codes.OK {
						failed++
					}
				}
				want := fmt.Sprintf("items:%d\nfailed:%d\ndenied:%d", len(batch), failed, denied)
				if flat := strings.Join(rec.Detail, "\n"); !strings.HasSuffix(flat, want) || rec.Outcome != audit.OutcomeOK {
					t.Errorf("batch %d: record %s with details:\n%s\nwant them to end in\n%s", n, rec.Outcome, flat, want)
				}
			}
		})
	}
}

// revealResult is the outcome of a RevealUnlockCode call.
type revealResult struct {
	resp *escrowdv1.RevealUnlockCodeResponse
	err  error
}

// pendingReveal starts alice's reveal of a code of user in group, which
// must be under dual control, and returns the pending request as bob
// lists it and the channel the call's outcome arrives on.
func pendingReveal(t *testing.T, s *stack, ctx context.Context, group, user, ticket string) (*escrowdv1.PendingReveal, chan revealResult) {
	t.Helper()
	done := make(chan revealResult, 1)
	go func() {
		r, err := s.support.RevealUnlockCode(ctx, &escrowdv1.RevealUnlockCodeRequest{GroupId: group, UserId: user, Ticket: ticket})
		done <- revealResult{r, err}
	}()
	bob := escrowdv1.NewSupportServiceClient(s.dial("bob"))
	for deadline := time.Now().Add(2 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		l, err := bob.ListPendingReveals(ctx, &escrowdv1.ListPendingRevealsRequest{})
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range l.GetReveals() {
			if p.GetGroupId() == group && p.GetUserId() == user && p.GetTicket() == ticket {
				return p, done
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("the reveal never appeared as pending")
		}
	}
}

// approval is the approval of p, stating what p is.
func approval(p *escrowdv1.PendingReveal) *escrowdv1.ApproveRevealRequest {
	return &escrowdv1.ApproveRevealRequest{Id: p.GetId(), GroupId: p.GetGroupId(), UserId: p.GetUserId(), Ticket: p.GetTicket()}
}

// dialCert connects to s with cert.
func dialCert(t *testing.T, s *stack, cert tls.Certificate) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(s.addr, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{
		RootCAs: pki.ca.Pool(), MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{cert}})))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// TestDualControlPersons: dual control compares persons, as the policy
// names them, not certificates. alice holds a second certificate, listed
// as its own identity: under her name (in any case, with any spaces
// around it) it cannot approve her reveal; under another name the policy
// says it is another person, and it can. A reveal whose requester has
// left the policy cannot be approved at all.
func TestDualControlPersons(t *testing.T) {
	const laptopID = "spiffe://escrowd.test/support/alice-laptop"
	pair, err := pki.ca.Client(laptopID, time.Time{}, time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	laptopCert, err := pair.TLS()
	if err != nil {
		t.Fatal(err)
	}
	const bobLine = `  - {id: "spiffe://escrowd.test/support/bob", name: bob, roles: [support]}` + "\n"
	tests := []struct {
		name, laptopName string
		own              bool // the policy makes the laptop alice's
	}{
		{"the same name", "alice", true},
		{"the same name in another case", "Alice", true},
		{"the same name with spaces", "' alice '", true},
		{"another name", "alice-laptop", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pol := policyVariant(t, bobLine, bobLine+`  - {id: "`+laptopID+`", name: `+tt.laptopName+`, roles: [support]}`+"\n")
			s := newStackWith(t, vaultSrv, stackOpts{policy: pol})
			ctx := ctxT(t)
			issue(t, s, ctx, "vip-persons", "u", 3)
			p, done := pendingReveal(t, s, ctx, "vip-persons", "u", "INC-1")
			laptop := escrowdv1.NewSupportServiceClient(dialCert(t, s, laptopCert))
			_, err := laptop.ApproveReveal(ctx, approval(p))
			if !tt.own {
				if err != nil {
					t.Fatalf("approval by another person: %v", err)
				}
				if r := <-done; r.err != nil || r.resp.GetApprovedBy() != "alice-laptop" {
					t.Fatalf("reveal: %v %v", r.resp, r.err)
				}
				return
			}
			if status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "own") {
				t.Fatalf("alice's approval of her own reveal from her second certificate: %v, want PermissionDenied", err)
			}
			select {
			case r := <-done:
				t.Fatalf("the reveal finished: %v %v", r.resp, r.err)
			default:
			}
			bob := escrowdv1.NewSupportServiceClient(s.dial("bob"))
			if _, err := bob.ApproveReveal(ctx, approval(p)); err != nil {
				t.Fatalf("bob's approval: %v", err)
			}
			if r := <-done; r.err != nil || r.resp.GetApprovedBy() != "bob" {
				t.Fatalf("reveal: %v %v", r.resp, r.err)
			}
		})
	}
	t.Run("the requester left the policy", func(t *testing.T) {
		s := newStack(t, vaultSrv)
		ctx := ctxT(t)
		issue(t, s, ctx, "vip-left", "u", 3)
		p, done := pendingReveal(t, s, ctx, "vip-left", "u", "INC-2")
		// alice is taken out of the policy while her reveal waits.
		s.srv.SetPolicy(loadPolicy(t, policyVariant(t, `  - {id: "spiffe://escrowd.test/support/alice", name: alice, roles: [support]}`+"\n", "")))
		bob := escrowdv1.NewSupportServiceClient(s.dial("bob"))
		if _, err := bob.ApproveReveal(ctx, approval(p)); status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "no longer in the policy") {
			t.Fatalf("approval of a reveal whose requester left: %v, want FailedPrecondition", err)
		}
		if r := <-done; status.Code(r.err) != codes.PermissionDenied {
			t.Fatalf("the reveal: %v %v, want it refused unapproved", r.resp, r.err)
		}
	})
}

// TestApprovalStatesWhatItApproves: an approval names the group, user and
// ticket of the reveal it approves; one that states anything else is
// refused, and its record names the request's group, user and ticket and
// what the approval stated; an approval that states nothing is malformed.
func TestApprovalStatesWhatItApproves(t *testing.T) {
	s := newStack(t, vaultSrv)
	ctx := ctxT(t)
	issue(t, s, ctx, "vip-states", "u", 3)
	p, done := pendingReveal(t, s, ctx, "vip-states", "u", "INC-3")
	bob := escrowdv1.NewSupportServiceClient(s.dial("bob"))
	tests := []struct {
		name                string
		group, user, ticket string
		code                codes.Code
	}{
		{"another group", "vip-other", "u", "INC-3", codes.FailedPrecondition},
		{"another user", "vip-states", "v", "INC-3", codes.FailedPrecondition},
		{"another ticket", "vip-states", "u", "INC-4", codes.FailedPrecondition},
		{"the group in another case", "VIP-states", "u", "INC-3", codes.FailedPrecondition},
		{"no user, no ticket", "vip-states", "", "", codes.FailedPrecondition},
		{"nothing stated", "", "", "", codes.InvalidArgument},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var hdr metadata.MD
			_, err := bob.ApproveReveal(ctx, &escrowdv1.ApproveRevealRequest{Id: p.GetId(), GroupId: tt.group, UserId: tt.user, Ticket: tt.ticket}, grpc.Header(&hdr))
			if status.Code(err) != tt.code {
				t.Fatalf("approval stating group %q user %q ticket %q: %v, want %v", tt.group, tt.user, tt.ticket, err, tt.code)
			}
			if tt.code != codes.FailedPrecondition {
				return
			}
			if !strings.Contains(err.Error(), "is for group vip-states, user u, ticket INC-3") {
				t.Fatalf("the refusal does not say what the request is: %v", err)
			}
			rec, err := s.find(ctx, hdr.Get(daemon.HeaderRequestID)[0])
			if err != nil {
				t.Fatal(err)
			}
			if rec.Group != "vip-states" || rec.User != "u" || rec.Ticket != "INC-3" || rec.Outcome != audit.OutcomeError ||
				!slices.Contains(rec.Detail, "approves:"+p.GetId()) || !slices.ContainsFunc(rec.Detail, func(d string) bool { return strings.HasPrefix(d, "states:group:") }) {
				t.Fatalf("record %+v", rec)
			}
		})
	}
	select {
	case r := <-done:
		t.Fatalf("a refused approval let the reveal through: %v %v", r.resp, r.err)
	default:
	}
	if _, err := bob.ApproveReveal(ctx, approval(p)); err != nil {
		t.Fatalf("the approval that states the request: %v", err)
	}
	if r := <-done; r.err != nil || r.resp.GetApprovedBy() != "bob" {
		t.Fatalf("reveal: %v %v", r.resp, r.err)
	}
}

// TestCLIApproveStatesTheReveal: escrowctl codes approve sends the group,
// user and ticket it is given, and needs all three.
func TestCLIApproveStatesTheReveal(t *testing.T) {
	_, escrowctl := buildBinaries(t)
	s := newStack(t, vaultSrv)
	ctx := ctxT(t)
	issue(t, s, ctx, "vip-cli", "u", 3)
	p, done := pendingReveal(t, s, ctx, "vip-cli", "u", "SUP-9")
	approve := func(args ...string) (string, error) {
		cmd := exec.Command(escrowctl, append([]string{"codes", "approve", "-as", "bob", "-id", p.GetId()}, args...)...)
		cmd.Env = append(os.Environ(), "ESCROWD_ADDR="+s.addr, "ESCROWCTL_PKI="+pki.dir)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	for _, tt := range []struct {
		args []string
		say  string
	}{
		{nil, "-group is required"},
		{[]string{"-group", "vip-cli", "-ticket", "SUP-9"}, "-user is required"},
		{[]string{"-group", "vip-cli", "-user", "u"}, "-ticket is required"},
		{[]string{"-group", "vip-cli", "-user", "u", "-ticket", "SUP-8"}, "FailedPrecondition: reveal " + p.GetId() + " is for group vip-cli, user u, ticket SUP-9"},
	} {
		if out, err := approve(tt.args...); err == nil || !strings.Contains(out, tt.say) {
			t.Fatalf("codes approve %v: %v\n%s\nwant it refused saying %q", tt.args, err, out, tt.say)
		}
	}
	out, err := approve("-group", "vip-cli", "-user", "u", "-ticket", "SUP-9")
	if err != nil || !strings.Contains(out, "approved: "+identities["alice"]) {
		t.Fatalf("codes approve: %v\n%s", err, out)
	}
	if r := <-done; r.err != nil || r.resp.GetApprovedBy() != "bob" {
		t.Fatalf("reveal: %v %v", r.resp, r.err)
	}
}

// TestDualControlRefusesAtOnce: a reveal under dual control that could
// never succeed — its group does not exist, its user has no codes or none
// left, its group id is malformed — is refused at once with what is
// wrong, not after the approval timeout with "no approval came"; and it
// is never put to an approver.
func TestDualControlRefusesAtOnce(t *testing.T) {
	s := newStack(t, vaultSrv)
	ctx := ctxT(t)
	issue(t, s, ctx, "vip-once", "u", 1)
	// u's only code, revealed with bob's approval.
	p, done := pendingReveal(t, s, ctx, "vip-once", "u", "SUP-1")
	bob := escrowdv1.NewSupportServiceClient(s.dial("bob"))
	if _, err := bob.ApproveReveal(ctx, approval(p)); err != nil {
		t.Fatal(err)
	}
	if r := <-done; r.err != nil {
		t.Fatal(r.err)
	}
	tests := []struct {
		name, group, user string
		code              codes.Code
		say               string
	}{
		{"a group that does not exist", "vip-nosuch", "u", codes.NotFound, "vip-nosuch"},
		{"a group id with a space", "vip- x", "u", codes.InvalidArgument, "group_id"},
		{"a user without codes", "vip-once", "nobody", codes.FailedPrecondition, "nobody"},
		{"a user whose codes are all revealed", "vip-once", "u", codes.FailedPrecondition, "user u"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var hdr metadata.MD
			start := time.Now()
			_, err := s.support.RevealUnlockCode(ctx, &escrowdv1.RevealUnlockCodeRequest{GroupId: tt.group, UserId: tt.user, Ticket: "SUP-2"}, grpc.Header(&hdr))
			took := time.Since(start)
			if status.Code(err) != tt.code || !strings.Contains(err.Error(), tt.say) {
				t.Fatalf("reveal: %v, want %v saying %q", err, tt.code, tt.say)
			}
			if took > time.Second {
				t.Fatalf("refused after %v: want it at once, not after the 3 s approval timeout", took.Round(time.Millisecond))
			}
			rec, err := s.find(ctx, hdr.Get(daemon.HeaderRequestID)[0])
			if err != nil || rec.Code != tt.code.String() || rec.Outcome != audit.OutcomeError {
				t.Fatalf("record %+v, %v", rec, err)
			}
			l, err := bob.ListPendingReveals(ctx, &escrowdv1.ListPendingRevealsRequest{})
			if err != nil || len(l.GetReveals()) != 0 {
				t.Fatalf("pending reveals %v, %v: the request was put to an approver", l.GetReveals(), err)
			}
		})
	}
}
