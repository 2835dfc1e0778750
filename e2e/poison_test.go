package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	escrowdv1 "github.com/escrowd/escrowd/api/escrowd/v1"
	"github.com/escrowd/escrowd/audit"
	"github.com/escrowd/escrowd/escrow/device"
)

// notServingHeader is where the health Check of a NOT_SERVING escrowd
// says why (daemon.HeaderNotServing; spelt out so that this test builds
// against code without it).
const notServingHeader = "escrowd-not-serving"

// awaitHealthAt polls the health listener at addr, as a probe without a
// certificate does, until it answers want, for at most 20 s (escrowd
// checks every 5 s); it returns the answer's NOT_SERVING reasons.
func awaitHealthAt(t *testing.T, addr string, want healthpb.HealthCheckResponse_ServingStatus) []string {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	hc := healthpb.NewHealthClient(conn)
	var last healthpb.HealthCheckResponse_ServingStatus
	var lastErr error
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		var hdr metadata.MD
		r, err := hc.Check(context.Background(), &healthpb.HealthCheckRequest{}, grpc.Header(&hdr))
		last, lastErr = r.GetStatus(), err
		if err == nil && last == want {
			return hdr.Get(notServingHeader)
		}
	}
	t.Fatalf("health is %v (%v), want %v", last, lastErr, want)
	return nil
}

// trailEnd is the last position of the trail at prefix, read directly.
func trailEnd(t *testing.T, ctx context.Context, prefix string) uint64 {
	t.Helper()
	v, err := audit.NewVault(audit.VaultConfig{Address: vaultSrv.Addr, Token: vaultSrv.Token, Prefix: prefix})
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	var last uint64
	if err := v.Walk(ctx, func(seq uint64, _ *audit.Batch) error { last = seq; return nil }); err != nil {
		t.Fatal(err)
	}
	return last
}

// auditCtl runs an escrowctl audit subcommand on the trail at prefix,
// with the Vault token and the HSM PIN in the environment.
func auditCtl(t *testing.T, escrowctl, prefix string, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(escrowctl, append([]string{"audit", args[0], "-audit-prefix", prefix, "-vault-addr", vaultSrv.Addr}, args[1:]...)...)
	cmd.Env = append(os.Environ(), "VAULT_TOKEN="+vaultSrv.Token, "ESCROWD_HSM_PIN="+token.UserPIN)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// TestPoisonedPositionStopsService plants, at the next position of a
// running escrowd's trail, what escrowd did not write: garbage, and
// (separately) a batch chained correctly with escrowd's Vault token but
// without the chain key. escrowd stops writing: every request, reads and
// changes alike, fails UNAVAILABLE and changes nothing (no group made, no
// code claimed, nothing written to the trail after the plant); health on
// the probe listener goes NOT_SERVING naming the position and what is
// wrong; escrowd_audit_halted{reason="poisoned"} is 1. `escrowctl audit
// acknowledge` (with the HSM) is the way on: health is SERVING again, the
// first reveal gets the epoch's first code, and verify keeps naming the
// position, now with the acknowledgement's ticket. Before this, escrowd
// skipped the position by itself and went on serving.
func TestPoisonedPositionStopsService(t *testing.T) {
	escrowd, escrowctl := buildBinaries(t)
	tests := []struct {
		name  string
		what  string // in the health reason
		kind  string // verify's problem at the position
		plant func(t *testing.T, ctx context.Context, prefix string, seq uint64)
	}{
		{"garbage", "not a batch", "deleted", func(t *testing.T, ctx context.Context, prefix string, seq uint64) {
			vc, err := vaultSrv.Client()
			if err != nil {
				t.Fatal(err)
			}
			if _, err := vc.KVv2("secret").Put(ctx, fmt.Sprintf("%s/chain/%020d", prefix, seq), map[string]any{"garbage": "x"}); err != nil {
				t.Fatal(err)
			}
		}},
		{"forged", "MAC does not verify", "forged", func(t *testing.T, ctx context.Context, prefix string, seq uint64) {
			th, err := audit.NewVault(audit.VaultConfig{Address: vaultSrv.Addr, Token: vaultSrv.Token, Prefix: prefix})
			if err != nil {
				t.Fatal(err)
			}
			defer th.Close()
			if err := th.Commit(ctx, forgedRecord("forged-1")); err != nil {
				t.Fatal(err)
			}
			if end := trailEnd(t, ctx, prefix); end != seq {
				t.Fatalf("the forged batch went to position %d, want %d", end, seq)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := ctxT(t)
			maddr, haddr := freeAddr(t), freeAddr(t)
			r := startReplica(t, escrowd, token, filepath.Join(t.TempDir(), "escrowd.db"), "-metrics-listen", maddr, "-health-listen", haddr)
			prefix := trailOf(t)
			const group, user = "g-poison", "u"
			p, err := r.sync.ProvisionGroup(ctx, &escrowdv1.ProvisionGroupRequest{GroupId: group})
			if err != nil {
				t.Fatal(err)
			}
			k := p.GetEscrowKey()
			gdk, _ := device.NewGDK()
			slot, err := device.SealEscrow(k.GetPublicKey(), device.To{Group: group, GDKVersion: 1, KeyVersion: k.GetVersion()}, k.GetSuite(), gdk)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := r.sync.IssueUnlockCodes(ctx, &escrowdv1.IssueUnlockCodesRequest{GroupId: group, UserId: user, EscrowSlot: slot, Count: 3}); err != nil {
				t.Fatal(err)
			}
			awaitHealthAt(t, haddr, healthpb.HealthCheckResponse_SERVING)

			next := trailEnd(t, ctx, prefix) + 1
			tt.plant(t, ctx, prefix, next)

			reveal := func() (*escrowdv1.RevealUnlockCodeResponse, error) {
				return r.sup.RevealUnlockCode(ctx, &escrowdv1.RevealUnlockCodeRequest{GroupId: group, UserId: user, Ticket: "SUP-7"})
			}
			calls := []struct {
				name string
				call func() error
			}{
				{"RevealUnlockCode", func() error { _, err := reveal(); return err }},
				{"ProvisionGroup", func() error {
					_, err := r.sync.ProvisionGroup(ctx, &escrowdv1.ProvisionGroupRequest{GroupId: "g-poison-new"})
					return err
				}},
				{"RotateGroupKeys", func() error {
					_, err := r.sec.RotateGroupKeys(ctx, &escrowdv1.RotateGroupKeysRequest{GroupId: group, Escrow: true, Unlock: true})
					return err
				}},
				{"GetEscrowKey", func() error {
					_, err := r.sync.GetEscrowKey(ctx, &escrowdv1.GetEscrowKeyRequest{GroupId: group})
					return err
				}},
			}
			for round := range 2 {
				for _, c := range calls {
					if err := c.call(); status.Code(err) != codes.Unavailable {
						t.Fatalf("%s after the plant (round %d): %v, want Unavailable", c.name, round, err)
					}
				}
			}
			reasons := awaitHealthAt(t, haddr, healthpb.HealthCheckResponse_NOT_SERVING)
			want := fmt.Sprintf("vault: audit trail poisoned at position %d", next)
			if len(reasons) != 1 || !strings.HasPrefix(reasons[0], want) || !strings.Contains(reasons[0], tt.what) {
				t.Fatalf("health's reason %q, want %q… %s", reasons, want, tt.what)
			}
			t.Logf("health: NOT_SERVING, %s", reasons[0])
			m := scrapeMetrics(t, maddr)
			if m[`escrowd_audit_halted{reason="poisoned"}`] != 1 || m["escrowd_audit_poisoned_batches_total"] != 1 ||
				m[`escrowd_dependency_healthy{dependency="vault"}`] != 0 {
				t.Fatalf("metrics: halted %v, poisoned %v, vault healthy %v", m[`escrowd_audit_halted{reason="poisoned"}`],
					m["escrowd_audit_poisoned_batches_total"], m[`escrowd_dependency_healthy{dependency="vault"}`])
			}
			if end := trailEnd(t, ctx, prefix); end != next {
				t.Fatalf("the trail ends at %d after the plant at %d: escrowd wrote past it", end, next)
			}

			// Without the HSM there is no acknowledgement.
			if out, err := auditCtl(t, escrowctl, prefix, "acknowledge", "-seq", fmt.Sprint(next), "-ticket", "INC-7"); err == nil {
				t.Fatalf("acknowledge without -token: %s", out)
			}
			out, err := auditCtl(t, escrowctl, prefix, "acknowledge", "-seq", fmt.Sprint(next), "-ticket", "INC-7", "-token", token.Label)
			if err != nil {
				t.Fatalf("acknowledge: %v\n%s", err, out)
			}
			t.Logf("%s", out)
			if reasons := awaitHealthAt(t, haddr, healthpb.HealthCheckResponse_SERVING); len(reasons) != 0 {
				t.Fatalf("SERVING with reasons %q", reasons)
			}

			// Nothing was done while it was halted.
			if _, err := r.sec.GetGroup(ctx, &escrowdv1.GetGroupRequest{GroupId: "g-poison-new"}); status.Code(err) != codes.NotFound {
				t.Fatalf("the group provisioned while halted: %v, want NotFound", err)
			}
			g, err := r.sec.GetGroup(ctx, &escrowdv1.GetGroupRequest{GroupId: group})
			if err != nil {
				t.Fatal(err)
			}
			if len(g.GetEscrowKeys()) != 1 || len(g.GetUnlockKeys()) != 1 {
				t.Fatalf("%d escrow and %d unlock key versions: the rotation refused while halted took effect", len(g.GetEscrowKeys()), len(g.GetUnlockKeys()))
			}
			rv, err := reveal()
			if err != nil {
				t.Fatalf("reveal after the acknowledgement: %v", err)
			}
			if rv.GetIndex() != 0 {
				t.Fatalf("reveal after the acknowledgement gave code %d: a reveal refused while halted claimed a code", rv.GetIndex())
			}
			if m := scrapeMetrics(t, maddr); m[`escrowd_audit_halted{reason="poisoned"}`] != 0 {
				t.Fatalf("still halted on the metric after the acknowledgement")
			}

			out, err = auditCtl(t, escrowctl, prefix, "verify", "-token", token.Label)
			if err == nil || !strings.Contains(out, fmt.Sprintf("BREAK batch %d", next)) || !strings.Contains(out, ": "+tt.kind+": ") ||
				!strings.Contains(out, fmt.Sprintf("ACKNOWLEDGED batch %d: ticket INC-7", next)) || strings.Count(out, "BREAK ") != 1 {
				t.Fatalf("verify after the acknowledgement: %v\n%s", err, out)
			}
			t.Logf("%s", out)
			if end := trailEnd(t, ctx, prefix); end <= next {
				t.Fatalf("the trail ends at %d: escrowd did not go on past %d", end, next)
			}
		})
	}
}
