// Package e2e runs escrowd whole: a real SoftHSM token, a real Vault
// server (tools/vaultdev), the bbolt store and the gRPC API over loopback.
// A missing SoftHSM or Vault binary fails these tests; it never skips them.
package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	escrowdv1 "github.com/escrowd/escrowd/api/escrowd/v1"
	"github.com/escrowd/escrowd/audit"
	"github.com/escrowd/escrowd/audit/hsmkey"
	"github.com/escrowd/escrowd/daemon"
	"github.com/escrowd/escrowd/escrow"
	"github.com/escrowd/escrowd/escrow/bundle"
	"github.com/escrowd/escrowd/escrow/device"
	"github.com/escrowd/escrowd/escrow/unlockcode"
	"github.com/escrowd/escrowd/format"
	"github.com/escrowd/escrowd/hsm"
	"github.com/escrowd/escrowd/internal/devpki"
	"github.com/escrowd/escrowd/internal/tracing"
	"github.com/escrowd/escrowd/internal/vaulttest"
	"github.com/escrowd/escrowd/jobs"
	"github.com/escrowd/escrowd/policy"
	"github.com/escrowd/escrowd/softhsm"
	"github.com/escrowd/escrowd/store"
	"github.com/escrowd/escrowd/store/bolt"
)

var (
	vaultSrv *vaulttest.Server
	token    *softhsm.Token
	pki      *testPKI
)

// testPKI holds the test CA and a certificate per identity, in memory and
// as files (for the binaries).
type testPKI struct {
	dir   string
	ca    *devpki.CA
	certs map[string]tls.Certificate
}

// The identities of testdata/policy.yaml, and some the policy must refuse.
var identities = map[string]string{
	"sync-backend": "spiffe://escrowd.test/sync-backend",
	"alice":        "spiffe://escrowd.test/support/alice",
	"bob":          "spiffe://escrowd.test/support/bob",
	"carol":        "spiffe://escrowd.test/security/carol",
	"mallory":      "spiffe://escrowd.test/support/mallory", // valid chain, not in the policy
}

func newPKI(dir string) (*testPKI, error) {
	ca, err := devpki.NewCA("e2e CA")
	if err != nil {
		return nil, err
	}
	p := &testPKI{dir: dir, ca: ca, certs: map[string]tls.Certificate{}}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, "ca.crt"), ca.PEM, 0o644); err != nil {
		return nil, err
	}
	add := func(name string, pair *devpki.Pair, err error) error {
		if err != nil {
			return err
		}
		c, err := pair.TLS()
		if err != nil {
			return err
		}
		p.certs[name] = c
		return pair.Write(dir, name)
	}
	srv, err := ca.Server()
	if err := add("server", srv, err); err != nil {
		return nil, err
	}
	for name, id := range identities {
		pair, err := ca.Client(id, time.Time{}, time.Time{})
		if err := add(name, pair, err); err != nil {
			return nil, err
		}
	}
	// alice's name on an expired certificate, and on one from another CA.
	pair, err := ca.Client(identities["alice"], time.Now().Add(-48*time.Hour), time.Now().Add(-24*time.Hour))
	if err := add("expired", pair, err); err != nil {
		return nil, err
	}
	other, err := devpki.NewCA("another CA")
	if err != nil {
		return nil, err
	}
	pair, err = other.Client(identities["alice"], time.Time{}, time.Time{})
	if err := add("foreign", pair, err); err != nil {
		return nil, err
	}
	return p, nil
}

func loadPolicy(t testing.TB, path string) *policy.Policy {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	p, err := policy.Parse(path, b, daemon.Operations())
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	dir, err := os.MkdirTemp("", "escrowd-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	token, err = softhsm.New(filepath.Join(dir, "softhsm"), "escrowd-e2e")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e: SoftHSM:", err)
		return 1
	}
	if pki, err = newPKI(filepath.Join(dir, "pki")); err != nil {
		fmt.Fprintln(os.Stderr, "e2e: PKI:", err)
		return 1
	}
	return vaulttest.RunMain(m, &vaultSrv)
}

// stack is one escrowd over the shared token and a Vault server.
type stack struct {
	t        testing.TB
	hsm      *hsm.HSM
	store    store.Store
	ownStore bool
	audit    *audit.Vault
	srv      *daemon.Server
	prefix   string
	addr     string
	// healthAddr is the plain health listener (no TLS, no certificate).
	healthAddr string
	// stopJobs stops the job runner, if any.
	stopJobs func()
	sync     escrowdv1.SyncServiceClient
	support  escrowdv1.SupportServiceClient
	sec      escrowdv1.SecurityServiceClient
}

type stackOpts struct {
	// store, if set, is used and left open; else a bbolt store is opened
	// at storePath (a temporary file if empty) and closed by stop.
	store     store.Store
	storePath string
	prefix    string
	policy    string
	// token, if set, is used instead of the shared one.
	token *softhsm.Token
	// checkInterval, if set, is how often health checks the HSM and Vault.
	checkInterval time.Duration
	// listen, if set, is the address to serve on (else a free port).
	listen string
	// jobs runs a job runner, as escrowd does, for the jobs RPCs.
	jobs bool
	// tracer, if set, traces the daemon and its store, HSM and audit
	// calls, as escrowd does with -otlp-endpoint.
	tracer trace.TracerProvider
	// acceptTruncation: the audit writer goes on after the anchored head
	// when the trail in Vault ends below it.
	acceptTruncation bool
}

func newStack(t *testing.T, v *vaulttest.Server) *stack { return newStackWith(t, v, stackOpts{}) }

func newStackWith(t testing.TB, v *vaulttest.Server, o stackOpts) *stack {
	t.Helper()
	if o.prefix == "" {
		o.prefix = "escrowd-test/" + strings.ReplaceAll(t.Name(), "/", "-")
	}
	if o.policy == "" {
		o.policy = "testdata/policy.yaml"
	}
	tok := token
	if o.token != nil {
		tok = o.token
	}
	// Hot escrow keys on, as escrowd's -hsm-hot-keys default has them, and
	// hot slots on too (-hsm-hot-slots is 0 by default), so that every flow
	// also runs with opened slots kept in the token; hsm's TestHotSlots*
	// cover them off and on.
	hcfg := tok.HSMConfig()
	hcfg.HotKeys = 64
	hcfg.HotSlots = 16
	h, err := hsm.Open(hcfg)
	if err != nil {
		t.Fatal(err)
	}
	st := o.store
	if st == nil {
		if o.storePath == "" {
			o.storePath = filepath.Join(t.TempDir(), "escrowd.db")
		}
		b, err := bolt.Open(o.storePath)
		if err != nil {
			t.Fatal(err)
		}
		st = b
	}
	// As escrowd runs it: the chain keyed in the HSM, its head anchored
	// in the store.
	anchor, _ := st.(audit.Anchor)
	aud, err := audit.NewVault(audit.VaultConfig{Address: v.Addr, Token: v.Token, Prefix: o.prefix, Timeout: 3 * time.Second,
		Keyer: hsmkey.Keyer{HSM: h}, Anchor: anchor, AcceptTruncation: o.acceptTruncation})
	if err != nil {
		t.Fatal(err)
	}
	var (
		escHSM   escrow.HSM     = h
		escStore store.Store    = st
		auditor  daemon.Auditor = aud
	)
	if o.tracer != nil {
		escHSM, escStore, auditor = tracing.HSM(h, o.tracer), tracing.Store(st, o.tracer), tracing.Audit(aud, o.tracer)
	}
	svc, err := escrow.New(escHSM, escStore, escrow.Config{})
	if err != nil {
		t.Fatal(err)
	}
	var runner daemon.Jobs
	stopJobs := func() {}
	if o.jobs {
		r := jobs.New(st, svc, h, jobs.Config{Poll: 100 * time.Millisecond})
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { defer close(done); r.Run(ctx) }()
		runner, stopJobs = r, func() { cancel(); <-done }
	}
	srv, err := daemon.New(daemon.Config{
		Escrow: svc, Auditor: auditor, Objects: h, Versions: svc, Jobs: runner, State: escStore, Events: st, Policy: loadPolicy(t, o.policy),
		TracerProvider: o.tracer,
		TLS:            &tls.Config{Certificates: []tls.Certificate{pki.certs["server"]}}, ClientCAs: pki.ca.Pool(),
		Checks:        map[string]daemon.Checker{"hsm": h, "vault": aud},
		CheckInterval: o.checkInterval,
	})
	if err != nil {
		t.Fatal(err)
	}
	if o.listen == "" {
		o.listen = "127.0.0.1:0"
	}
	lis, err := net.Listen("tcp", o.listen)
	if err != nil {
		t.Fatal(err)
	}
	hlis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(lis)
	go srv.ServeHealth(hlis)
	s := &stack{t: t, hsm: h, store: st, ownStore: o.store == nil, audit: aud, srv: srv, prefix: o.prefix,
		addr: lis.Addr().String(), healthAddr: hlis.Addr().String(), stopJobs: stopJobs}
	t.Cleanup(s.stop)
	s.sync = escrowdv1.NewSyncServiceClient(s.dial("sync-backend"))
	s.support = escrowdv1.NewSupportServiceClient(s.dial("alice"))
	s.sec = escrowdv1.NewSecurityServiceClient(s.dial("carol"))
	return s
}

// stop shuts the daemon down as SIGTERM would; idempotent.
func (s *stack) stop() {
	if s.srv == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if s.stopJobs != nil {
		s.stopJobs()
	}
	s.srv.Shutdown(ctx)
	s.audit.Close()
	s.hsm.Close()
	if s.ownStore {
		s.store.Close()
	}
	s.srv = nil
}

// dial connects as the named identity of the test PKI ("" for none).
func (s *stack) dial(name string) *grpc.ClientConn {
	s.t.Helper()
	cfg := &tls.Config{RootCAs: pki.ca.Pool(), MinVersion: tls.VersionTLS13}
	if name != "" {
		c, ok := pki.certs[name]
		if !ok {
			s.t.Fatalf("no certificate %q", name)
		}
		cfg.Certificates = []tls.Certificate{c}
	}
	conn, err := grpc.NewClient(s.addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	if err != nil {
		s.t.Fatal(err)
	}
	s.t.Cleanup(func() { conn.Close() })
	return conn
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// provisionAndSeal provisions a group and, as a device would, seals a
// fresh GDK to its escrow key.
func (s *stack) provisionAndSeal(ctx context.Context, group string, ids *[]string) (gdk, escrowSlot []byte) {
	s.t.Helper()
	var hdr metadata.MD
	r, err := s.sync.ProvisionGroup(ctx, &escrowdv1.ProvisionGroupRequest{GroupId: group, Suite: bundle.SuiteRSAOAEPSHA1}, grpc.Header(&hdr))
	if err != nil {
		s.t.Fatalf("ProvisionGroup: %v", err)
	}
	*ids = append(*ids, hdr.Get(daemon.HeaderRequestID)...)
	k := r.GetEscrowKey()
	if k.GetVersion() != 1 || k.GetSuite() != bundle.SuiteRSAOAEPSHA1 {
		s.t.Fatalf("escrow key %v", k)
	}
	pk, err := x509.ParsePKIXPublicKey(k.GetPublicKey())
	if err != nil {
		s.t.Fatal(err)
	}
	if rk, ok := pk.(*rsa.PublicKey); !ok || rk.N.BitLen() != 3072 {
		s.t.Fatalf("escrow public key is %T, want RSA-3072", pk)
	}
	gdk, err = device.NewGDK()
	if err != nil {
		s.t.Fatal(err)
	}
	escrowSlot, err = device.SealEscrow(k.GetPublicKey(), device.To{Group: group, GDKVersion: 1, KeyVersion: k.GetVersion()}, k.GetSuite(), gdk)
	if err != nil {
		s.t.Fatal(err)
	}
	return gdk, escrowSlot
}

// TestEndToEnd: provision → a device seals a GDK to the escrow key →
// re-wrap to a member key → the member opens it → issue unlock codes →
// reveal a code → the code opens its unlock slot → Vault holds a record of
// every call, and none holds a secret.
func TestEndToEnd(t *testing.T) {
	s := newStack(t, vaultSrv)
	ctx := ctxT(t)
	var ids []string
	call := func() (grpc.CallOption, func()) {
		var hdr metadata.MD
		return grpc.Header(&hdr), func() { ids = append(ids, hdr.Get(daemon.HeaderRequestID)...) }
	}

	gdk, escrowSlot := s.provisionAndSeal(ctx, "family-42", &ids)

	// Re-wrap to a member.
	member, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	memberPub, _ := x509.MarshalPKIXPublicKey(&member.PublicKey)
	opt, done := call()
	rw, err := s.sync.Rewrap(ctx, &escrowdv1.RewrapRequest{
		GroupId: "family-42", EscrowSlot: escrowSlot,
		Recipient: &escrowdv1.Recipient{Kind: escrowdv1.Recipient_KIND_MEMBER, Id: "alice", KeyVersion: 1,
			Suite: bundle.SuiteRSAOAEPSHA1, PublicKey: memberPub},
	}, opt)
	done()
	if err != nil {
		t.Fatalf("Rewrap: %v", err)
	}
	slot, err := bundle.ParseSlot(rw.GetSlot())
	if err != nil || slot.Kind != bundle.KindMember || slot.ID != "alice" || slot.Group != "family-42" || slot.GDKVersion != 1 {
		t.Fatalf("member slot %+v, %v", slot, err)
	}
	got, ms, err := device.OpenPublic(rw.GetSlot(), device.Want{Group: "family-42", ID: "alice"}, member)
	if err != nil || string(got) != string(gdk) {
		t.Fatalf("member opened %x, %v; want the device's GDK", got, err)
	}
	if !bytes.Equal(ms.Commit, format.Commitment("family-42", 1, gdk)) {
		t.Fatal("the member slot does not carry the commitment of GDK 1")
	}
	// The member's slot is bound to its group and recipient: a device
	// opening another group, or another recipient, refuses it.
	for _, w := range []device.Want{{Group: "family-43", ID: "alice"}, {Group: "family-42", ID: "bob"}} {
		if _, _, err := device.OpenPublic(rw.GetSlot(), w, member); !errors.Is(err, device.ErrBinding) {
			t.Fatalf("member slot opened as %+v: %v, want ErrBinding", w, err)
		}
	}

	// Issue unlock codes, reveal one, open its slot with it.
	opt, done = call()
	is, err := s.sync.IssueUnlockCodes(ctx, &escrowdv1.IssueUnlockCodesRequest{GroupId: "family-42", UserId: "bob", EscrowSlot: escrowSlot}, opt)
	done()
	if err != nil {
		t.Fatalf("IssueUnlockCodes: %v", err)
	}
	if is.GetEpoch() != 1 || len(is.GetSlots()) != 5 {
		t.Fatalf("epoch %d with %d slots, want 1 with 5", is.GetEpoch(), len(is.GetSlots()))
	}
	var revealed []string
	for i := range 2 {
		opt, done = call()
		rv, err := s.support.RevealUnlockCode(ctx, &escrowdv1.RevealUnlockCodeRequest{GroupId: "family-42", UserId: "bob", Ticket: "SUP-1001"}, opt)
		done()
		if err != nil {
			t.Fatalf("RevealUnlockCode: %v", err)
		}
		if rv.GetIndex() != uint32(i) || rv.GetEpoch() != 1 || rv.GetRemaining() != uint32(4-i) {
			t.Fatalf("reveal %d: %v", i, rv)
		}
		// Typed as a person would: lower case, dashes kept.
		typed := strings.ToLower(rv.GetCode())
		bob := device.Want{Group: "family-42", ID: "bob"}
		// Among all of bob's slots, the code picks its own by its index.
		opened, us, err := device.OpenUnlock(is.GetSlots(), bob, typed)
		if err != nil || string(opened) != string(gdk) || us.Unlock.Index != uint32(i) || us.Unlock.Epoch != 1 {
			t.Fatalf("code %d opened %x (slot %+v), %v", i, opened, us, err)
		}
		// The code opens no other slot.
		if _, _, err := device.OpenUnlock([][]byte{is.GetSlots()[(i+1)%5]}, bob, typed); !errors.Is(err, device.ErrWrongCode) {
			t.Fatalf("code %d on slot %d: %v, want ErrWrongCode", i, (i+1)%5, err)
		}
		// Bob's slots are not another user's.
		if _, _, err := device.OpenUnlock(is.GetSlots(), device.Want{Group: "family-42", ID: "alice"}, typed); !errors.Is(err, device.ErrBinding) {
			t.Fatalf("bob's unlock slots opened for alice: %v, want ErrBinding", err)
		}
		revealed = append(revealed, rv.GetCode())
	}
	if revealed[0] == revealed[1] {
		t.Fatal("two reveals gave the same code")
	}
	// A mistyped character is caught by the check symbol.
	bad := []byte(revealed[0])
	bad[0] = map[bool]byte{true: 'X', false: 'Y'}[bad[0] != 'X']
	if _, _, err := device.OpenUnlock(is.GetSlots(), device.Want{Group: "family-42", ID: "bob"}, string(bad)); !errors.Is(err, unlockcode.ErrCheck) {
		t.Fatalf("mistyped code: %v, want ErrCheck", err)
	}

	opt, done = call()
	ls, err := s.support.ListUnlockCodes(ctx, &escrowdv1.ListUnlockCodesRequest{GroupId: "family-42", UserId: "bob"}, opt)
	done()
	if err != nil || len(ls.GetCodes()) != 5 || ls.GetCodes()[1].GetState() != escrowdv1.UnlockCodeState_STATE_REVEALED ||
		ls.GetCodes()[2].GetState() != escrowdv1.UnlockCodeState_STATE_UNREVEALED {
		t.Fatalf("ListUnlockCodes: %v, %v", ls, err)
	}

	// A failed call is audited too.
	opt, done = call()
	_, err = s.sync.Rewrap(ctx, &escrowdv1.RewrapRequest{GroupId: "no-such-group", EscrowSlot: escrowSlot,
		Recipient: &escrowdv1.Recipient{Kind: escrowdv1.Recipient_KIND_MEMBER, Id: "alice", KeyVersion: 1, Suite: bundle.SuiteRSAOAEPSHA1, PublicKey: memberPub}}, opt)
	done()
	if status.Code(err) != codes.NotFound {
		t.Fatalf("Rewrap of an unknown group: %v, want NotFound", err)
	}

	// Every call has its record in Vault, and Vault's file audit device
	// logged each write.
	if len(ids) != 7 {
		t.Fatalf("%d request ids, want 7", len(ids))
	}
	// One record per call, and an intent before it for each call that
	// changed state (provision, issue, reveal) and each re-wrap (its first
	// record, written alongside the HSM work), every intent closed.
	r, err := s.verifySettled(ctx)
	if err != nil || len(r.Problems) != 0 || len(r.Open) != 0 || r.Records != len(ids)+6 {
		t.Fatalf("audit trail: %d records (want %d), problems %v, open intents %v, %v", r.Records, len(ids)+6, r.Problems, r.Open, err)
	}
	entries, err := vaultSrv.AuditEntries()
	if err != nil {
		t.Fatal(err)
	}
	written := map[string]bool{}
	for _, e := range entries {
		req, _ := e["request"].(map[string]any)
		if op := req["operation"]; e["type"] == "response" && (op == "create" || op == "update") {
			written[fmt.Sprint(req["path"])] = true
		}
	}
	secrets := append([]string{string(escrowSlot), string(rw.GetSlot())}, revealed...)
	for _, c := range revealed {
		secrets = append(secrets, strings.ReplaceAll(c, "-", ""))
	}
	for _, id := range ids {
		rec, err := s.find(ctx, id)
		if err != nil {
			t.Fatalf("record %s: %v", id, err)
		}
		if rec.ID != id || rec.Operation == "" || rec.Code == "" {
			t.Fatalf("record %+v", rec)
		}
		if rec.Caller == "" || strings.HasPrefix(rec.Caller, "anonymous") {
			t.Fatalf("record %s has caller %q", id, rec.Caller)
		}
		if p := s.audit.BatchPath(batchOf(t, s.audit, id)); !written[p] {
			t.Errorf("Vault's audit log has no write to %s", p)
		}
		flat := fmt.Sprintf("%+v", rec)
		for _, sec := range secrets {
			if strings.Contains(flat, sec) {
				t.Errorf("record %s holds a secret", id)
			}
		}
	}
	reveal, _ := s.find(ctx, ids[3])
	if reveal.Operation != "/escrowd.v1.SupportService/RevealUnlockCode" || reveal.Ticket != "SUP-1001" || reveal.Caller != identities["alice"] ||
		reveal.User != "bob" || reveal.Outcome != audit.OutcomeOK || strings.Join(reveal.KeyVersions, ",") != "unlock:1" {
		t.Fatalf("reveal record %+v", reveal)
	}
	failed, _ := s.find(ctx, ids[6])
	if failed.Outcome != audit.OutcomeError || failed.Code != "NotFound" {
		t.Fatalf("failed call's record %+v", failed)
	}
}

// TestVaultDownFailsClosed: with Vault stopped a reveal fails Unavailable,
// returns no code and burns none: its intent could not be recorded, so it
// claimed nothing.
func TestVaultDownFailsClosed(t *testing.T) {
	v := vaulttest.StartT(t)
	s := newStack(t, v)
	ctx := ctxT(t)
	var ids []string
	_, escrowSlot := s.provisionAndSeal(ctx, "g-failclosed", &ids)
	is, err := s.sync.IssueUnlockCodes(ctx, &escrowdv1.IssueUnlockCodesRequest{GroupId: "g-failclosed", UserId: "u", EscrowSlot: escrowSlot, Count: 3})
	if err != nil {
		t.Fatal(err)
	}
	if err := v.Stop(); err != nil {
		t.Fatal(err)
	}
	rv, err := s.support.RevealUnlockCode(ctx, &escrowdv1.RevealUnlockCodeRequest{GroupId: "g-failclosed", UserId: "u", Ticket: "SUP-9"})
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("reveal with Vault down: %v, want Unavailable", err)
	}
	if rv.GetCode() != "" {
		t.Fatal("a code came back with Vault down")
	}
	if !strings.Contains(status.Convert(err).Message(), "audit") {
		t.Fatalf("message does not say why: %v", err)
	}

	if err := v.Restart(); err != nil {
		t.Fatal(err)
	}
	rv, err = s.support.RevealUnlockCode(ctx, &escrowdv1.RevealUnlockCodeRequest{GroupId: "g-failclosed", UserId: "u", Ticket: "SUP-9"})
	if err != nil {
		t.Fatal(err)
	}
	if rv.GetIndex() != 0 {
		t.Fatalf("reveal after Vault returned gave index %d, want 0: the reveal refused while Vault was down burnt a code", rv.GetIndex())
	}
	// The code opens slot 0 and no other.
	want := device.Want{Group: "g-failclosed", ID: "u"}
	if _, _, err := device.OpenUnlock(is.GetSlots()[1:], want, rv.GetCode()); !errors.Is(err, device.ErrWrongCode) {
		t.Fatalf("code 0 on slots 1 and 2: %v", err)
	}
	if _, us, err := device.OpenUnlock(is.GetSlots(), want, rv.GetCode()); err != nil || us.Unlock.Index != 0 {
		t.Fatalf("code 0 on its own slot: %v", err)
	}
}

// TestTokenObjectsDoNotGrow provisions 50 groups and lists the token's
// objects: their number does not change, and every key object is
// sensitive and non-extractable.
func TestTokenObjectsDoNotGrow(t *testing.T) {
	s := newStack(t, vaultSrv)
	ctx := ctxT(t)
	before, err := s.sec.ListHSMObjects(ctx, &escrowdv1.ListHSMObjectsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	const groups = 50
	var wg sync.WaitGroup
	errs := make(chan error, groups)
	sem := make(chan struct{}, 2)
	for i := range groups {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			_, err := s.sync.ProvisionGroup(ctx, &escrowdv1.ProvisionGroupRequest{GroupId: fmt.Sprintf("fleet-%03d", i)})
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatalf("ProvisionGroup: %v", err)
		}
	}
	after, err := s.sec.ListHSMObjects(ctx, &escrowdv1.ListHSMObjectsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if len(after.GetObjects()) != len(before.GetObjects()) {
		t.Fatalf("%d objects before %d groups, %d after", len(before.GetObjects()), groups, len(after.GetObjects()))
	}
	keys := 0
	for _, o := range after.GetObjects() {
		if o.GetClass() != "private-key" && o.GetClass() != "secret-key" {
			continue
		}
		keys++
		if !o.GetSensitive() || o.GetExtractable() {
			t.Errorf("key object %q: sensitive=%v extractable=%v", o.GetLabel(), o.GetSensitive(), o.GetExtractable())
		}
	}
	if keys == 0 {
		t.Fatal("no key object listed: the master KEK should be there")
	}
	t.Logf("%d objects on the token after %d groups (%d key objects)", len(after.GetObjects()), groups, keys)
}

// TestBadRequests: malformed input gets InvalidArgument with a message
// naming the field, and changes nothing.
func TestBadRequests(t *testing.T) {
	s := newStack(t, vaultSrv)
	ctx := ctxT(t)
	var ids []string
	_, escrowSlot := s.provisionAndSeal(ctx, "g-bad", &ids)
	member, _ := rsa.GenerateKey(rand.Reader, 2048)
	memberPub, _ := x509.MarshalPKIXPublicKey(&member.PublicKey)
	small, _ := rsa.GenerateKey(rand.Reader, 1024)
	smallPub, _ := x509.MarshalPKIXPublicKey(&small.PublicKey)
	okRecipient := &escrowdv1.Recipient{Kind: escrowdv1.Recipient_KIND_MEMBER, Id: "m", KeyVersion: 1, Suite: bundle.SuiteRSAOAEPSHA1, PublicKey: memberPub}
	ts, err := bundle.ParseSlot(escrowSlot)
	if err != nil {
		t.Fatal(err)
	}
	ts.Wrapped[len(ts.Wrapped)/2] ^= 0x40
	tampered, err := ts.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	otherVersion := []byte(strings.Replace(string(escrowSlot), `"key_version":1`, `"key_version":7`, 1))

	tests := []struct {
		name string
		req  *escrowdv1.RewrapRequest
		code codes.Code
		want string
	}{
		{"empty group", &escrowdv1.RewrapRequest{EscrowSlot: escrowSlot, Recipient: okRecipient}, codes.InvalidArgument, "group_id"},
		{"no recipient", &escrowdv1.RewrapRequest{GroupId: "g-bad", EscrowSlot: escrowSlot}, codes.InvalidArgument, "recipient"},
		{"garbage slot", &escrowdv1.RewrapRequest{GroupId: "g-bad", EscrowSlot: []byte("{"), Recipient: okRecipient}, codes.InvalidArgument, "escrow_slot"},
		{"tampered slot", &escrowdv1.RewrapRequest{GroupId: "g-bad", EscrowSlot: tampered, Recipient: okRecipient}, codes.InvalidArgument, "does not open"},
		{"unknown key version", &escrowdv1.RewrapRequest{GroupId: "g-bad", EscrowSlot: otherVersion, Recipient: okRecipient}, codes.InvalidArgument, "version 7"},
		{"small recipient key", &escrowdv1.RewrapRequest{GroupId: "g-bad", EscrowSlot: escrowSlot,
			Recipient: &escrowdv1.Recipient{Kind: escrowdv1.Recipient_KIND_DEVICE, Id: "d", KeyVersion: 1, Suite: bundle.SuiteRSAOAEPSHA1, PublicKey: smallPub}}, codes.InvalidArgument, "RSA-1024"},
		{"garbage recipient key", &escrowdv1.RewrapRequest{GroupId: "g-bad", EscrowSlot: escrowSlot,
			Recipient: &escrowdv1.Recipient{Kind: escrowdv1.Recipient_KIND_DEVICE, Id: "d", KeyVersion: 1, Suite: bundle.SuiteRSAOAEPSHA1, PublicKey: []byte{1, 2}}}, codes.InvalidArgument, "public_key"},
		{"unknown group", &escrowdv1.RewrapRequest{GroupId: "g-none", EscrowSlot: escrowSlot, Recipient: okRecipient}, codes.NotFound, "g-none"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := s.sync.Rewrap(ctx, tt.req)
			if status.Code(err) != tt.code || !strings.Contains(status.Convert(err).Message(), tt.want) {
				t.Fatalf("Rewrap: %v; want %v saying %q", err, tt.code, tt.want)
			}
		})
	}

	// Provisioning twice is refused and keeps the first keys.
	k1, _ := s.sync.GetEscrowKey(ctx, &escrowdv1.GetEscrowKeyRequest{GroupId: "g-bad"})
	if _, err := s.sync.ProvisionGroup(ctx, &escrowdv1.ProvisionGroupRequest{GroupId: "g-bad"}); status.Code(err) != codes.AlreadyExists {
		t.Fatalf("second provision: %v", err)
	}
	k2, _ := s.sync.GetEscrowKey(ctx, &escrowdv1.GetEscrowKeyRequest{GroupId: "g-bad"})
	if string(k1.GetEscrowKey().GetPublicKey()) != string(k2.GetEscrowKey().GetPublicKey()) {
		t.Fatal("a refused provision replaced the escrow key")
	}
	// Reveals before any issue, and past the last code.
	if _, err := s.support.RevealUnlockCode(ctx, &escrowdv1.RevealUnlockCodeRequest{GroupId: "g-bad", UserId: "u", Ticket: "SUP-5"}); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("reveal before issue: %v", err)
	}
	if _, err := s.sync.IssueUnlockCodes(ctx, &escrowdv1.IssueUnlockCodesRequest{GroupId: "g-bad", UserId: "u", EscrowSlot: escrowSlot, Count: 1}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.support.RevealUnlockCode(ctx, &escrowdv1.RevealUnlockCodeRequest{GroupId: "g-bad", UserId: "u", Ticket: "SUP-5"}); err != nil {
		t.Fatal(err)
	}
	_, err = s.support.RevealUnlockCode(ctx, &escrowdv1.RevealUnlockCodeRequest{GroupId: "g-bad", UserId: "u", Ticket: "SUP-5"})
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "revealed") {
		t.Fatalf("reveal past the last code: %v", err)
	}
	if _, err := s.sync.IssueUnlockCodes(ctx, &escrowdv1.IssueUnlockCodesRequest{GroupId: "g-bad", UserId: "u", EscrowSlot: escrowSlot, Count: 500}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("500 codes: %v", err)
	}
}

// batchOf returns the position of the batch that holds record id.
func batchOf(t *testing.T, v *audit.Vault, id string) uint64 {
	t.Helper()
	var seq uint64
	err := v.Walk(context.Background(), func(s uint64, b *audit.Batch) error {
		for _, r := range b.Records {
			if r.ID == id {
				seq = s
			}
		}
		return nil
	})
	if err != nil || seq == 0 {
		t.Fatalf("record %s is in no batch: %v", id, err)
	}
	return seq
}
