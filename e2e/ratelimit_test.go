package e2e

import (
	"context"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	escrowdv1 "github.com/escrowd/escrowd/api/escrowd/v1"
	"github.com/escrowd/escrowd/internal/pgtest"
	"github.com/escrowd/escrowd/store/postgres"
)

// TestRateLimitKeysFromValidIDs: an authenticated technician's reveal
// with a group or user id of 1 MiB, or an id that is not one, is refused
// INVALID_ARGUMENT, on bbolt and on PostgreSQL. It used to reach the
// store as a rate-limit key built from the raw id and fail UNAVAILABLE
// ("rate limits: key too large"). Refused, it counts against no limit: a
// technician allowed one reveal an hour still has it.
func TestRateLimitKeysFromValidIDs(t *testing.T) {
	pol := policyVariant(t, "per: caller, limit: 500, window: 1h", "per: caller, limit: 1, window: 1h")
	for _, backend := range []string{"bbolt", "postgres"} {
		t.Run(backend, func(t *testing.T) {
			ctx := ctxT(t)
			o := stackOpts{policy: pol}
			if backend == "postgres" {
				st, err := postgres.Open(context.Background(), pgtest.New(t))
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { st.Close() })
				o.store = st
			}
			s := newStackWith(t, vaultSrv, o)
			issue(t, s, ctx, "rl-ids", "u", 3)
			huge := strings.Repeat("g", 1<<20)
			reveal := func(group, user string) error {
				_, err := s.support.RevealUnlockCode(ctx, &escrowdv1.RevealUnlockCodeRequest{GroupId: group, UserId: user, Ticket: "SUP-9"})
				return err
			}
			for _, tt := range []struct{ name, group, user, field string }{
				{"a group id of 1 MiB", huge, "u", "group_id"},
				{"a user id of 1 MiB", "rl-ids", huge, "user_id"},
				{"a user id of 129 bytes", "rl-ids", strings.Repeat("u", 129), "user_id"},
				{"a group id with a space", "rl ids", "u", "group_id"},
				{"no user id", "rl-ids", "", "user_id"},
			} {
				err := reveal(tt.group, tt.user)
				if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), tt.field) {
					t.Fatalf("%s: %.300v; want INVALID_ARGUMENT naming %s", tt.name, err, tt.field)
				}
			}
			if err := reveal("rl-ids", "u"); err != nil {
				t.Fatalf("a well-formed reveal after the malformed ones: %v (they counted against the limit)", err)
			}
			if err := reveal("rl-ids", "u"); status.Code(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), "reveals-per-technician") {
				t.Fatalf("a second reveal in the hour: %v, want RESOURCE_EXHAUSTED naming reveals-per-technician", err)
			}
		})
	}
}
