package daemon

import (
	escrowdv1 "github.com/escrowd/escrowd/api/escrowd/v1"
)

// What the policy is asked about a request's re-wrap targets must be what
// the request produces: a role limited by rewrap_targets may not get a
// GDK wrapped to a kind of key the policy was never asked about. Each
// RPC's targets are listed from the same request fields the handler wraps
// to (TestTargetsMatchSlots in e2e checks them against the slots each RPC
// returns).

// Targets returns the re-wrap target kinds the policy is asked about for
// req, at the level of the whole call: member, device, unlock or escrow.
// A BatchRewrapRequest reports none here: each item is decided on its own
// with BatchItemTarget.
func Targets(req any) []string { return targets(req) }

// rotateTargets lists what RotateGroupKey wraps the new GDK to: the
// group's escrow key, every recipient's kind, and unlock slots when it
// starts unlock-code epochs. The chain slot wraps the old GDK under the
// new one, so it reaches exactly the new GDK's recipients: no kind of its
// own.
func rotateTargets(r *escrowdv1.RotateGroupKeyRequest) []string {
	var member, device bool
	for _, rc := range r.GetRecipients() {
		switch rc.GetKind() {
		case escrowdv1.Recipient_KIND_MEMBER:
			member = true
		case escrowdv1.Recipient_KIND_DEVICE:
			device = true
		}
		// Any other kind: the handler refuses the request as malformed.
	}
	var kinds []string
	if member {
		kinds = append(kinds, "member")
	}
	if device {
		kinds = append(kinds, "device")
	}
	if len(r.GetUnlockUserIds()) > 0 {
		kinds = append(kinds, "unlock")
	}
	return append(kinds, "escrow")
}
