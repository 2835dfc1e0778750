package e2e

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	escrowdv1 "github.com/escrowd/escrowd/api/escrowd/v1"
	"github.com/escrowd/escrowd/escrow/device"
)

// TestKillBetweenRevealIntentAndOutcome puts a reveal between its two
// records without timing luck: a proxy in front of Vault stops the write
// of the reveal's outcome record, so the reveal has committed its intent,
// claimed its code and derived it.
//
// First Vault fails that write and the process lives:
// escrowd_audit_open_intents_total counts the open intent. By default the
// code has already left (its outcome was queued); with
// -audit-outcome-before-release the caller gets UNAVAILABLE saying the
// request may have taken effect, and no code. Then Vault stalls on it and
// escrowd is killed with SIGKILL. After a restart, `escrowctl audit
// verify` lists both intents as open ("happened or not unknown"), with
// their request ids; the store holds both codes as revealed; and no code
// is ever returned twice: the next reveal of the user gets the third code,
// which opens the third slot and no other, and the one after that gets
// none.
func TestKillBetweenRevealIntentAndOutcome(t *testing.T) {
	escrowd, escrowctl := buildBinaries(t)
	t.Run("outcome queued", func(t *testing.T) { killBetweenRevealRecords(t, escrowd, escrowctl, false) })
	t.Run("outcome before release", func(t *testing.T) { killBetweenRevealRecords(t, escrowd, escrowctl, true) })
}

func killBetweenRevealRecords(t *testing.T, escrowd, escrowctl string, before bool) {
	proxy := newVaultProxy(t)
	maddr := freeAddr(t)
	args := []string{"-vault-addr", proxy.URL, "-metrics-listen", maddr, "-policy", unlimitedReveals(t)}
	if before {
		args = append(args, "-audit-outcome-before-release")
	}
	r := startReplica(t, escrowd, token, filepath.Join(t.TempDir(), "escrowd.db"), args...)
	prefix := trailOf(t)
	ctx := ctxT(t)
	const group, user = "g-kill", "u"
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
	is, err := r.sync.IssueUnlockCodes(ctx, &escrowdv1.IssueUnlockCodesRequest{GroupId: group, UserId: user, EscrowSlot: slot, Count: 3})
	if err != nil {
		t.Fatal(err)
	}
	reveal := func(ticket string) (*escrowdv1.RevealUnlockCodeResponse, error) {
		return r.sup.RevealUnlockCode(ctx, &escrowdv1.RevealUnlockCodeRequest{GroupId: group, UserId: user, Ticket: ticket})
	}
	// requestOf is the request id of the outcome record the proxy stopped.
	requestOf := func(records string) string {
		var recs []struct{ ID, Operation, Phase string }
		if err := json.Unmarshal([]byte(records), &recs); err != nil {
			t.Fatal(err)
		}
		for _, r := range recs {
			if r.Phase == "outcome" && strings.HasSuffix(r.Operation, "/RevealUnlockCode") {
				return r.ID
			}
		}
		t.Fatalf("no reveal outcome in %s", records)
		return ""
	}

	want := device.Want{Group: group, ID: user}
	// released checks the reveal's result: by default the code left, the
	// one of slot i; before release, nothing left.
	released := func(rv *escrowdv1.RevealUnlockCodeResponse, err error, i uint32) {
		t.Helper()
		if before {
			if status.Code(err) != codes.Unavailable || rv.GetCode() != "" || !strings.Contains(err.Error(), "may have taken effect") {
				t.Fatalf("reveal whose outcome Vault stopped: %v (code %q), want Unavailable, may have taken effect", err, rv.GetCode())
			}
			return
		}
		if err != nil {
			t.Fatalf("reveal whose outcome was queued: %v, want its code", err)
		}
		if got, us, err := device.OpenUnlock(is.GetSlots(), want, rv.GetCode()); err != nil || us.Unlock.Index != i || rv.GetIndex() != i || !bytes.Equal(got, gdk) {
			t.Fatalf("the code released (index %d) opens %v: %v; want slot %d", rv.GetIndex(), us, err, i)
		}
	}

	// Vault fails the outcome's write; the process lives.
	proxy.stop(outcomeOf("RevealUnlockCode"), false)
	rv, err := reveal("SUP-101")
	released(rv, err, 0)
	failedID := requestOf(proxy.awaitStopped(t))
	proxy.stop(nil, false)
	// A queued outcome's failure is counted when the writer hears of it.
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		m := scrapeMetrics(t, maddr)
		if m["escrowd_audit_open_intents_total"] == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("escrowd_audit_open_intents_total = %v, want 1", m["escrowd_audit_open_intents_total"])
		}
	}

	// Vault stalls on the outcome's write, and escrowd is killed.
	proxy.stop(outcomeOf("RevealUnlockCode"), true)
	type result struct {
		rv  *escrowdv1.RevealUnlockCodeResponse
		err error
	}
	done := make(chan result, 1)
	go func() {
		rv, err := reveal("SUP-102")
		done <- result{rv, err}
	}()
	killedID := requestOf(proxy.awaitStopped(t))
	if !before {
		// The code left before its outcome's write began.
		res := <-done
		released(res.rv, res.err, 1)
	}
	r.kill()
	if before {
		if res := <-done; status.Code(res.err) != codes.Unavailable {
			t.Fatalf("the reveal killed between its records: %v (code index %d), want Unavailable", res.err, res.rv.GetIndex())
		}
	}
	proxy.stop(nil, false)
	r.start()

	out, err := auditCtl(t, escrowctl, prefix, "verify", "-token", token.Label)
	if err != nil {
		t.Fatalf("verify after the kill: %v\n%s", err, out)
	}
	for _, c := range []struct{ id, ticket string }{{failedID, "SUP-101"}, {killedID, "SUP-102"}} {
		want := fmt.Sprintf("request %s, /escrowd.v1.SupportService/RevealUnlockCode", c.id)
		found := false
		for _, line := range strings.Split(out, "\n") {
			if strings.HasPrefix(line, "OPEN ") && strings.Contains(line, want) && strings.Contains(line, fmt.Sprintf("ticket %q", c.ticket)) &&
				strings.Contains(line, "happened or not unknown") {
				found = true
			}
		}
		if !found {
			t.Fatalf("verify does not list the open intent of request %s:\n%s", c.id, out)
		}
	}
	if !strings.Contains(out, "audit trail intact") || !strings.Contains(out, "2 intents without outcome") {
		t.Fatalf("verify after the kill:\n%s", out)
	}
	t.Logf("%s", out)

	// The store: the two codes are revealed, the third is not.
	states := func() []escrowdv1.UnlockCodeState_State {
		c, err := r.sup.ListUnlockCodes(ctx, &escrowdv1.ListUnlockCodesRequest{GroupId: group, UserId: user})
		if err != nil {
			t.Fatal(err)
		}
		out := make([]escrowdv1.UnlockCodeState_State, 3)
		for _, s := range c.GetCodes() {
			out[s.GetIndex()] = s.GetState()
		}
		return out
	}
	revealed := escrowdv1.UnlockCodeState_STATE_REVEALED
	if s := states(); s[0] != revealed || s[1] != revealed || s[2] == revealed {
		t.Fatalf("code states after the kill: %v, want codes 0 and 1 revealed, 2 not", s)
	}
	// Never the same code twice: the next reveal gets the third code, which
	// opens slot 2 and neither slot the two open intents claimed.
	rv, err = reveal("SUP-103")
	if err != nil {
		t.Fatalf("reveal after the restart: %v", err)
	}
	if got, us, err := device.OpenUnlock(is.GetSlots(), want, rv.GetCode()); err != nil || us.Unlock.Index != 2 || rv.GetIndex() != 2 || !bytes.Equal(got, gdk) {
		t.Fatalf("the code revealed after the restart (index %d) opens %v: %v; want slot 2", rv.GetIndex(), us, err)
	}
	if _, _, err := device.OpenUnlock(is.GetSlots()[:2], want, rv.GetCode()); !errors.Is(err, device.ErrWrongCode) {
		t.Fatalf("the code revealed after the restart on slots 0 and 1: %v, want ErrWrongCode", err)
	}
	if rv, err := reveal("SUP-103"); err == nil {
		t.Fatalf("a fourth reveal of three codes returned code %d", rv.GetIndex())
	} else {
		t.Logf("fourth reveal: %v", err)
	}
}
