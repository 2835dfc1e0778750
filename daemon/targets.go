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

// batched reports whether req is a batch whose items the policy decides
// one by one (policy.Request.Batch): BatchRewrap.
func batched(req any) bool {
	_, ok := req.(*escrowdv1.BatchRewrapRequest)
	return ok
}

// BatchItemTarget returns the re-wrap target kind of one BatchRewrap item,
// as the policy is asked about it: member, device or escrow; "" for an
// item without a valid target, which the handler refuses as malformed.
func BatchItemTarget(it *escrowdv1.BatchRewrapItem) string { return batchItemTarget(it) }

func batchItemTarget(it *escrowdv1.BatchRewrapItem) string {
	switch {
	case it.GetEscrow() != nil:
		return "escrow"
	case it.GetRecipient().GetKind() == escrowdv1.Recipient_KIND_MEMBER:
		return "member"
	case it.GetRecipient().GetKind() == escrowdv1.Recipient_KIND_DEVICE:
		return "device"
	}
	return ""
}
