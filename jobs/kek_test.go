package jobs_test

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"github.com/escrowd/escrowd/escrow"
	"github.com/escrowd/escrowd/hsm"
	"github.com/escrowd/escrowd/jobs"
	"github.com/escrowd/escrowd/softhsm"
	"github.com/escrowd/escrowd/store/bolt"
)

// TestKEKFollowsTheOperator: a new KEK on the token changes nothing by
// itself; new keys switch to it when, and only when, a kek-rotation job
// to it starts — on every replica, the one running the job or not. (That
// a job to a refused KEK cannot start: hsm TestPlantedKEK refuses it
// wherever it is used.)
func TestKEKFollowsTheOperator(t *testing.T) {
	ctx := context.Background()
	ktok, err := softhsm.New(tok.Dir, "escrowd-jobs-kek")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := hsm.InitKEKVersion(ktok.Module, ktok.Label, ktok.SOPIN, ktok.UserPIN, ktok.KEKLabel, 2); err != nil {
		t.Fatal(err)
	}
	st, err := bolt.Open(filepath.Join(t.TempDir(), "escrowd.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	// Two replicas: two HSM values on the token, one store.
	var rs []*jobs.Runner
	var hs []*hsm.HSM
	for _, owner := range []string{"replica-a", "replica-b"} {
		h, err := hsm.Open(ktok.HSMConfig())
		if err != nil {
			t.Fatal(err)
		}
		defer h.Close()
		svc, err := escrow.New(h, st, escrow.Config{})
		if err != nil {
			t.Fatal(err)
		}
		hs, rs = append(hs, h), append(rs, jobs.New(st, svc, h, jobs.Config{Owner: owner}))
	}
	for i, r := range rs {
		if err := r.FollowKEK(ctx); err != nil {
			t.Fatal(err)
		}
		if hs[i].CurrentKEK() != 1 {
			t.Fatalf("replica %d wraps under KEK %d before any rotation, want 1", i, hs[i].CurrentKEK())
		}
	}
	if _, err := rs[0].Start(ctx, jobs.KindKEKRotation, map[string]string{"to": "3"}); !errors.Is(err, escrow.ErrPrecondition) || !strings.Contains(err.Error(), "not on the token") {
		t.Fatalf("a rotation to a KEK not on the token: %v", err)
	}
	if _, err := rs[0].Start(ctx, jobs.KindKEKRotation, map[string]string{"to": "2"}); err != nil {
		t.Fatal(err)
	}
	// Replica b follows without running the job.
	if err := rs[1].FollowKEK(ctx); err != nil {
		t.Fatal(err)
	}
	if hs[1].CurrentKEK() != 2 {
		t.Fatalf("replica b wraps under KEK %d after the rotation started, want 2", hs[1].CurrentKEK())
	}
	if k, err := hs[1].GenerateUnlockKey(ctx); err != nil || k.KEKVersion != 2 {
		t.Fatalf("a new key under %d, %v", k.KEKVersion, err)
	}
	// The v2 target cannot be destroyed; v1 can once the job is done.
	rs[0].RunOnce(ctx)
	if err := rs[0].DestroyKEK(ctx, 2); !errors.Is(err, escrow.ErrPrecondition) {
		t.Fatalf("destroying the KEK new keys go under: %v", err)
	}
	if err := rs[0].DestroyKEK(ctx, 1); err != nil {
		t.Fatal(err)
	}
}
