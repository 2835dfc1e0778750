package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	escrowdv1 "github.com/escrowd/escrowd/api/escrowd/v1"
	"github.com/escrowd/escrowd/audit"
	"github.com/escrowd/escrowd/daemon"
	"github.com/escrowd/escrowd/internal/vaulttest"
)

// unlimitedReveals is the e2e policy without the per-user reveal limit,
// so that one user's codes can all be revealed.
func unlimitedReveals(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile("testdata/policy.yaml")
	if err != nil {
		t.Fatal(err)
	}
	y := strings.Replace(string(b), "per: user, limit: 3,", "per: user, limit: 1000,", 1)
	if y == string(b) {
		t.Fatal("the per-user reveal limit is not where this test expects it")
	}
	p := filepath.Join(t.TempDir(), "policy.yaml")
	if err := os.WriteFile(p, []byte(y), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestRevealOutageBurnsNothing kills Vault under a load of reveals and
// restarts it. Every code returned has its intent record, and its outcome
// record or, when the write of its queued outcome failed, an open intent
// in verify; every code the store marks revealed has at least its intent
// record, so no code is burnt or returned without a record. Before write-ahead, each reveal attempted while
// Vault was down burnt a code and left no record of it.
func TestRevealOutageBurnsNothing(t *testing.T) {
	v := vaulttest.StartT(t)
	s := newStackWith(t, v, stackOpts{policy: unlimitedReveals(t)})
	ctx := ctxT(t)
	const users, codesEach = 6, 20
	var ids []string
	_, slot := s.provisionAndSeal(ctx, "outage", &ids)
	for u := range users {
		if _, err := s.sync.IssueUnlockCodes(ctx, &escrowdv1.IssueUnlockCodesRequest{GroupId: "outage",
			UserId: fmt.Sprintf("u%d", u), EscrowSlot: slot, Count: codesEach}); err != nil {
			t.Fatal(err)
		}
	}
	var (
		mu       sync.Mutex
		returned = map[string]string{} // request id → user
		failed   = map[string]int{}    // user → reveals refused UNAVAILABLE
		stopped  = make(chan struct{})
		wg       sync.WaitGroup
	)
	for u := range users {
		user := fmt.Sprintf("u%d", u)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for fails := 0; fails < 5; {
				var hdr metadata.MD
				_, err := s.support.RevealUnlockCode(ctx, &escrowdv1.RevealUnlockCodeRequest{GroupId: "outage", UserId: user, Ticket: "SUP-1"}, grpc.Header(&hdr))
				mu.Lock()
				switch {
				case err == nil:
					returned[hdr.Get(daemon.HeaderRequestID)[0]] = user
				case status.Code(err) == codes.Unavailable:
					failed[user]++
					select {
					case <-stopped:
						fails++
					default:
					}
				default:
					t.Errorf("%s: %v", user, err)
					fails = 5
				}
				mu.Unlock()
			}
		}()
	}
	time.Sleep(150 * time.Millisecond)
	if err := v.Stop(); err != nil {
		t.Fatal(err)
	}
	close(stopped)
	wg.Wait()
	if err := v.Restart(); err != nil {
		t.Fatal(err)
	}
	if len(returned) == 0 {
		t.Fatal("no reveal succeeded before the outage")
	}
	// The trail: outcome records of returned codes, and each user's
	// reveal intents.
	outcome := map[string]*audit.Chained{}
	intentOf := map[string]*audit.Chained{}
	intents := map[string]int{}
	err := s.audit.Walk(ctx, func(_ uint64, b *audit.Batch) error {
		for i := range b.Records {
			r := &b.Records[i]
			if r.Operation != "/escrowd.v1.SupportService/RevealUnlockCode" {
				continue
			}
			if r.Phase == audit.PhaseIntent {
				intents[r.User]++
				intentOf[r.ID] = r
			} else {
				outcome[r.ID] = r
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	r, err := s.audit.VerifyAll(ctx)
	if err != nil {
		t.Fatal(err)
	}
	open := map[string]bool{}
	for _, o := range r.Open {
		open[o.ID] = true
	}
	perUser := map[string]int{}
	unsettled := 0
	for id, user := range returned {
		if in := intentOf[id]; in == nil || in.User != user {
			t.Fatalf("code returned by request %s has no intent record: %+v", id, in)
		}
		switch out := outcome[id]; {
		case out != nil && out.Code == "OK" && out.User == user:
		case out == nil && open[id]:
			unsettled++ // its queued outcome's write failed with Vault
		default:
			t.Fatalf("code returned by request %s: outcome %+v, open %v", id, out, open[id])
		}
		perUser[user]++
	}
	burnt, refused := 0, 0
	for u := range users {
		user := fmt.Sprintf("u%d", u)
		c, err := s.support.ListUnlockCodes(ctx, &escrowdv1.ListUnlockCodesRequest{GroupId: "outage", UserId: user})
		if err != nil {
			t.Fatal(err)
		}
		revealed := 0
		for _, st := range c.GetCodes() {
			if st.GetState() == escrowdv1.UnlockCodeState_STATE_REVEALED {
				revealed++
			}
		}
		// A code revealed and not returned was claimed after its intent was
		// committed: the outcome failed. It must have its intent.
		b := revealed - perUser[user]
		if b < 0 || b > intents[user]-perUser[user] {
			t.Errorf("user %s: %d codes revealed, %d returned, %d reveal intents on record: %d burnt without a record",
				user, revealed, perUser[user], intents[user], b-max(0, intents[user]-perUser[user]))
		}
		burnt += b
		refused += failed[user]
	}
	// Each burnt code is an intent left open, and verify lists it (an
	// intent that reached Vault just as it died, and so claimed nothing,
	// is open too), as it lists each code returned whose outcome was lost.
	if len(r.Problems) != 0 || len(r.Open) < burnt+unsettled {
		t.Fatalf("verify: problems %v, %d open intents for %d burnt codes and %d returned without outcome", r.Problems, len(r.Open), burnt, unsettled)
	}
	t.Logf("%d codes returned, all recorded (%d of them with an open intent); %d reveals refused UNAVAILABLE; %d codes burnt, each with its intent; %d open intents in verify",
		len(returned), unsettled, refused, burnt, len(r.Open))
}
