package e2e

import (
	"bytes"
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	escrowdv1 "github.com/escrowd/escrowd/api/escrowd/v1"
	"github.com/escrowd/escrowd/escrow/bundle"
	"github.com/escrowd/escrowd/escrow/unlockcode"
	"github.com/escrowd/escrowd/format"
	"github.com/escrowd/escrowd/hsm"
	"github.com/escrowd/escrowd/internal/pgtest"
	"github.com/escrowd/escrowd/store"
	"github.com/escrowd/escrowd/store/postgres"
)

// TestTwoReplicasReveal: two escrowd processes on one PostgreSQL and one
// SoftHSM token, real gRPC; 1,100 concurrent reveals, alternating replicas,
// for 50 users holding 20 codes each. Exactly 1,000 succeed, every one a
// distinct code and the right one for its (user, index); exactly 100 find
// the epoch exhausted; no index is handed out twice.
func TestTwoReplicasReveal(t *testing.T) {
	escrowd, _ := buildBinaries(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	dbURL := pgtest.New(t)
	st, err := postgres.Open(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	h, err := hsm.Open(token.HSMConfig())
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	pub, priv, err := h.GenerateEscrowKey(ctx, hsm.SuiteRSAOAEPSHA1)
	if err != nil {
		t.Fatal(err)
	}
	uk, err := h.GenerateUnlockKey(ctx)
	if err != nil {
		t.Fatal(err)
	}
	const (
		group   = "race-group"
		users   = 50
		perUser = 20
		extra   = 2 // reveals per user beyond the codes
	)
	now := time.Now().UTC()
	if err := st.CreateGroup(ctx, store.Group{ID: group, Created: now,
		Escrow: []store.EscrowKey{{Version: 1, Suite: bundle.SuiteRSAOAEPSHA1, PublicKey: pub, Private: store.WrappedKey{KEKVersion: priv.KEKVersion, Blob: priv.Blob}, Created: now}},
		Unlock: []store.UnlockKey{{Version: 1, Key: store.WrappedKey{KEKVersion: uk.KEKVersion, Blob: uk.Blob}, Created: now}}}); err != nil {
		t.Fatal(err)
	}
	user := func(i int) string { return fmt.Sprintf("user-%02d", i) }
	nonce := func(i int) []byte { return bytes.Repeat([]byte{byte(i)}, format.CodeNonceSize) }
	for i := range users {
		if _, err := st.StartEpoch(ctx, group, user(i), 0, 1, perUser, nonce(i)); err != nil {
			t.Fatal(err)
		}
	}
	pol := []string{"-policy", "testdata/replicas-policy.yaml"}
	reps := []*replica{startReplica(t, escrowd, token, dbURL, pol...), startReplica(t, escrowd, token, dbURL, pol...)}

	type result struct {
		user    int
		replica int
		code    string
		index   uint32
		err     error
	}
	results := make(chan result, users*(perUser+extra))
	var wg sync.WaitGroup
	startGate := make(chan struct{})
	for n := range users * (perUser + extra) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-startGate
			// Each user's requests alternate between the replicas.
			u, ri := n%users, (n/users)%2
			r, err := reps[ri].sup.RevealUnlockCode(ctx, &escrowdv1.RevealUnlockCodeRequest{GroupId: group, UserId: user(u), Ticket: fmt.Sprintf("SUP-%d", n)})
			res := result{user: u, replica: ri, err: err}
			if err == nil {
				res.code, res.index = r.GetCode(), r.GetIndex()
			}
			results <- res
		}()
	}
	began := time.Now()
	close(startGate)
	wg.Wait()
	close(results)
	took := time.Since(began)

	codesSeen := map[string]bool{}
	indexes := map[[2]int]int{}
	ok, exhausted, limited, perReplica := 0, 0, 0, [2]int{}
	for r := range results {
		switch {
		case r.err == nil:
			ok++
			perReplica[r.replica]++
			if codesSeen[r.code] {
				t.Fatalf("code revealed twice (user %d index %d)", r.user, r.index)
			}
			codesSeen[r.code] = true
			indexes[[2]int{r.user, int(r.index)}]++
			// The code is the one derived for (group, user, epoch 1, index,
			// the epoch's nonce).
			mac, err := h.HMAC(ctx, uk, format.CodeMessage(group, user(r.user), 1, r.index, nonce(r.user)))
			if err != nil {
				t.Fatal(err)
			}
			want, err := unlockcode.FromMaterial(r.index, mac)
			if err != nil {
				t.Fatal(err)
			}
			if want.String() != r.code {
				t.Fatalf("user %d index %d: revealed a code that is not its own", r.user, r.index)
			}
		case status.Code(r.err) == codes.FailedPrecondition:
			exhausted++
		case status.Code(r.err) == codes.ResourceExhausted:
			limited++
		default:
			t.Fatalf("reveal: %v", r.err)
		}
	}
	t.Logf("%d reveals in %s over two replicas: %d codes (%d and %d per replica), %d exhausted, %d rate-limited",
		users*(perUser+extra), took.Round(time.Millisecond), ok, perReplica[0], perReplica[1], exhausted, limited)
	// The policy allows 21 reveals per user across both replicas: 20
	// codes, then one finds the epoch exhausted, then one is refused.
	if ok != users*perUser || exhausted != users || limited != users*(extra-1) || len(codesSeen) != users*perUser {
		t.Fatalf("%d revealed (%d distinct), %d exhausted, %d rate-limited; want %d, %d and %d",
			ok, len(codesSeen), exhausted, limited, users*perUser, users, users*(extra-1))
	}
	for u := range users {
		for i := range perUser {
			if n := indexes[[2]int{u, i}]; n != 1 {
				t.Fatalf("user %d index %d revealed %d times", u, i, n)
			}
		}
		c, err := st.Codes(ctx, group, user(u))
		if err != nil || c.Remaining() != 0 {
			t.Fatalf("user %d: %d codes left in the store, %v", u, c.Remaining(), err)
		}
	}
	if perReplica[0] == 0 || perReplica[1] == 0 {
		t.Fatalf("one replica served nothing: %v", perReplica)
	}
}
