package daemon

import (
	"slices"
	"testing"

	escrowdv1 "github.com/escrowd/escrowd/api/escrowd/v1"
)

// TestTargets: the target kinds the policy is asked about for each RPC
// that wraps a GDK (e2e's TestTargetsMatchSlots checks them against the
// slots each one returns on the real stack).
func TestTargets(t *testing.T) {
	member := &escrowdv1.Recipient{Kind: escrowdv1.Recipient_KIND_MEMBER}
	device := &escrowdv1.Recipient{Kind: escrowdv1.Recipient_KIND_DEVICE}
	bad := &escrowdv1.Recipient{}
	tests := []struct {
		name string
		req  any
		want []string
	}{
		{"rewrap to a member", &escrowdv1.RewrapRequest{Recipient: member}, []string{"member"}},
		{"rewrap to a device", &escrowdv1.RewrapRequest{Recipient: device}, []string{"device"}},
		{"rewrap without a kind", &escrowdv1.RewrapRequest{Recipient: bad}, nil},
		{"issue codes", &escrowdv1.IssueUnlockCodesRequest{}, []string{"unlock"}},
		{"rewrap to escrow", &escrowdv1.RewrapToEscrowRequest{}, []string{"escrow"}},
		{"rotate, no recipients", &escrowdv1.RotateGroupKeyRequest{}, []string{"escrow"}},
		{"rotate to a member", &escrowdv1.RotateGroupKeyRequest{Recipients: []*escrowdv1.Recipient{member}}, []string{"member", "escrow"}},
		{"rotate to a device", &escrowdv1.RotateGroupKeyRequest{Recipients: []*escrowdv1.Recipient{device, device}}, []string{"device", "escrow"}},
		{"rotate with unlock codes", &escrowdv1.RotateGroupKeyRequest{UnlockUserIds: []string{"u"}}, []string{"unlock", "escrow"}},
		{"rotate to everyone", &escrowdv1.RotateGroupKeyRequest{Recipients: []*escrowdv1.Recipient{device, member}, UnlockUserIds: []string{"u", "v"}}, []string{"member", "device", "unlock", "escrow"}},
		{"rotate, a recipient without a kind", &escrowdv1.RotateGroupKeyRequest{Recipients: []*escrowdv1.Recipient{bad}}, []string{"escrow"}},
		{"provision wraps nothing", &escrowdv1.ProvisionGroupRequest{}, nil},
		{"reveal wraps nothing", &escrowdv1.RevealUnlockCodeRequest{}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Targets(tt.req); !slices.Equal(got, tt.want) {
				t.Fatalf("Targets = %v, want %v", got, tt.want)
			}
		})
	}
}
