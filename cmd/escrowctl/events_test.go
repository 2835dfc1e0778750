package main

import (
	"testing"

	escrowdv1 "github.com/escrowd/escrowd/api/escrowd/v1"
)

func TestEventLine(t *testing.T) {
	const at = 1767350000 // 2026-01-02T10:33:20Z
	tests := []struct {
		e    *escrowdv1.Event
		want string
	}{
		{&escrowdv1.Event{Sequence: 7, TimeUnix: at, Kind: "code_revealed", GroupId: "family-42", UserId: "bob", Epoch: 1, Index: 2,
			UnlockKeyVersion: 1, Ticket: "SUP-1", Caller: "spiffe://x/alice", CallerName: "alice",
			Approver: "spiffe://x/bob", ApproverName: "bob", RequestId: "r-1"},
			"7  2026-01-02T10:33:20Z  code_revealed    group family-42  user bob  epoch 1 index 2 (unlock key v1)  ticket SUP-1  by alice (spiffe://x/alice)  approved by bob (spiffe://x/bob)  request r-1"},
		{&escrowdv1.Event{Sequence: 8, TimeUnix: at, Kind: "reveal_approved", GroupId: "vip", UserId: "u", Ticket: "INC-2",
			Requester: "spiffe://x/alice", RequesterName: "alice", RevealId: "r-0", Caller: "spiffe://x/bob", CallerName: "bob", RequestId: "r-2"},
			"8  2026-01-02T10:33:20Z  reveal_approved  group vip  user u  reveal r-0 of alice (spiffe://x/alice)  ticket INC-2  by bob (spiffe://x/bob)  request r-2"},
		{&escrowdv1.Event{Sequence: 9, TimeUnix: at, Kind: "epoch_issued", GroupId: "g", UserId: "u", Epoch: 2, Codes: 5, UnlockKeyVersion: 1, GdkVersion: 2,
			Caller: "spiffe://x/sync", CallerName: "spiffe://x/sync", RequestId: "r-3"},
			"9  2026-01-02T10:33:20Z  epoch_issued     group g  user u  epoch 2: 5 codes (unlock key v1)  for GDK v2  by spiffe://x/sync  request r-3"},
		{&escrowdv1.Event{Sequence: 10, TimeUnix: at, Kind: "gdk_rotated", GroupId: "g", OldGdkVersion: 1, GdkVersion: 2, Caller: "spiffe://x/sync", RequestId: "r-3"},
			"10  2026-01-02T10:33:20Z  gdk_rotated      group g  GDK v1 -> v2  by spiffe://x/sync  request r-3"},
		{&escrowdv1.Event{Sequence: 11, TimeUnix: at, Kind: "key_rotated", GroupId: "g", EscrowKeyVersion: 3, JobId: "job-1"},
			"11  2026-01-02T10:33:20Z  key_rotated      group g  escrow key v3  job job-1"},
	}
	for _, tt := range tests {
		if got := eventLine(tt.e); got != tt.want {
			t.Errorf("eventLine:\n got %q\nwant %q", got, tt.want)
		}
	}
}
