package client_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"time"

	escrowdv1 "github.com/escrowd/escrowd/api/escrowd/v1"
	"github.com/escrowd/escrowd/client"
)

// A sync backend dials escrowd with its certificate and reads a group's
// escrow key; the read is retried while the daemon is unavailable.
func ExampleDial() {
	ctx := context.Background()
	c, err := client.Dial(ctx, client.Config{
		Addr:     "escrowd.internal:7420",
		CertFile: "/etc/sync-backend/tls.crt",
		KeyFile:  "/etc/sync-backend/tls.key",
		CAFile:   "/etc/sync-backend/escrowd-ca.crt",
	})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	var id string
	k, err := c.GetEscrowKey(ctx, &escrowdv1.GetEscrowKeyRequest{GroupId: "family-1"}, client.RequestID(&id))
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("escrow key v%d (%s), request %s\n", k.GetEscrowKey().GetVersion(), k.GetEscrowKey().GetSuite(), id)
}

// A support tool tells its user which limit a reveal ran into and when to
// try again.
func ExampleError_RateLimit() {
	// What RevealUnlockCode returns when the policy's per-user limit has
	// no room (as the daemon sends it).
	var err error = &client.Error{
		Method: "RevealUnlockCode", Code: client.ResourceExhausted,
		Message: "rate limit reveals-per-user reached: 3 per 24h0m0s",
		Reason:  client.ReasonRateLimited,
		Metadata: map[string]string{
			"limit": "reveals-per-user", "max": "3", "window": "24h0m0s", "interval": "8h0m0s"},
		RetryAfter: 8 * time.Hour,
	}

	var e *client.Error
	if errors.Is(err, client.ErrRateLimited) && errors.As(err, &e) {
		if l, ok := e.RateLimit(); ok {
			fmt.Printf("limit %s: %d per %s; try again in %s\n", l.Name, l.Max, l.Window, e.RetryAfter)
		}
	}
	// Output: limit reveals-per-user: 3 per 24h0m0s; try again in 8h0m0s
}

// A batch succeeds as a call while single items fail: BatchErrors says
// which.
func ExampleBatchErrors() {
	resp := &escrowdv1.BatchRewrapResponse{Results: []*escrowdv1.BatchRewrapResult{
		{Reference: "device-7", Slot: []byte("{…}")},
		{Reference: "device-9", Error: &escrowdv1.ItemError{Code: int32(client.NotFound), Message: "group family-2 not found"}},
	}}
	for _, err := range client.BatchErrors(resp) {
		var e *client.BatchItemError
		if errors.As(err, &e) && errors.Is(err, client.ErrNotFound) {
			fmt.Printf("item %d (%s): %s\n", e.Index, e.Reference, e.Message)
		}
	}
	// Output: item 1 (device-9): group family-2 not found
}
