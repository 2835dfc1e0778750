package e2e

import (
	"bytes"
	"context"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"

	escrowdv1 "github.com/escrowd/escrowd/api/escrowd/v1"
	"github.com/escrowd/escrowd/escrow/bundle"
	"github.com/escrowd/escrowd/escrow/device"
	"github.com/escrowd/escrowd/examples/syncbackend/auth"
	"github.com/escrowd/escrowd/examples/syncbackend/backend"
	"github.com/escrowd/escrowd/examples/syncbackend/escrowdclient"
	"github.com/escrowd/escrowd/examples/syncbackend/store"
	"github.com/escrowd/escrowd/examples/syncbackend/store/postgres"
	"github.com/escrowd/escrowd/internal/pgtest"
)

// syncDevice is a device of the reference sync backend, driven in Go with
// the reference device (escrow/device): its signing key, its wrapping
// key, and its account's member key.
type syncDevice struct {
	t       *testing.T
	base    string
	id      string
	account string
	sign    *ecdsa.PrivateKey
	wrap    *ecdh.PrivateKey
	member  *ecdh.PrivateKey
}

func newSyncDevice(t *testing.T, base, account, id string, member *ecdh.PrivateKey) *syncDevice {
	t.Helper()
	sign, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	wrap, err := ecdh.P256().GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	if member == nil {
		if member, err = ecdh.P256().GenerateKey(rand.Reader); err != nil {
			t.Fatal(err)
		}
	}
	return &syncDevice{t: t, base: base, id: id, account: account, sign: sign, wrap: wrap, member: member}
}

func pkix(t *testing.T, k any) []byte {
	t.Helper()
	b, err := x509.MarshalPKIXPublicKey(k)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// call sends a signed request; body is marshalled unless it is []byte.
func (d *syncDevice) call(method, path string, body any, out any) int {
	d.t.Helper()
	var b []byte
	switch v := body.(type) {
	case nil:
	case []byte:
		b = v
	default:
		var err error
		if b, err = json.Marshal(v); err != nil {
			d.t.Fatal(err)
		}
	}
	req, err := http.NewRequest(method, d.base+path, bytes.NewReader(b))
	if err != nil {
		d.t.Fatal(err)
	}
	if err := auth.Sign(req, b, d.id, d.sign, time.Now()); err != nil {
		d.t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		d.t.Fatal(err)
	}
	defer resp.Body.Close()
	rb, _ := io.ReadAll(resp.Body)
	if out != nil {
		if err := json.Unmarshal(rb, out); err != nil {
			d.t.Fatalf("%s %s: %d %s: %v", method, path, resp.StatusCode, rb, err)
		}
	}
	return resp.StatusCode
}

// must is call, failing the test unless the status is want.
func (d *syncDevice) must(want int, method, path string, body, out any) {
	d.t.Helper()
	var raw json.RawMessage
	if got := d.call(method, path, body, &raw); got != want {
		d.t.Fatalf("%s %s as %s: %d %s, want %d", method, path, d.id, got, raw, want)
	}
	if out != nil {
		if err := json.Unmarshal(raw, out); err != nil {
			d.t.Fatal(err)
		}
	}
}

func (d *syncDevice) createAccount() {
	d.t.Helper()
	d.must(http.StatusCreated, "POST", "/v1/accounts", map[string]any{
		"account": d.account, "member_key": pkix(d.t, d.member.PublicKey()), "device": d.id,
		"sign_key": pkix(d.t, &d.sign.PublicKey), "wrap_key": pkix(d.t, d.wrap.PublicKey()),
	}, nil)
}

// enrol enrols d as another device of its account, approved by by.
func (d *syncDevice) enrol(by *syncDevice) {
	d.t.Helper()
	sk, wk := pkix(d.t, &d.sign.PublicKey), pkix(d.t, d.wrap.PublicKey())
	approval, err := auth.SignBytes(by.sign, auth.ApprovalMessage(d.account, d.id, sk, wk))
	if err != nil {
		d.t.Fatal(err)
	}
	d.must(http.StatusCreated, "POST", "/v1/devices", map[string]any{
		"account": d.account, "device": d.id, "sign_key": sk, "wrap_key": wk, "approver": by.id, "approval": approval,
	}, nil)
}

// groupView is the backend's view of a group, as a device decodes it.
type groupView struct {
	Group       string   `json:"group"`
	Version     uint64   `json:"version"`
	Owner       string   `json:"owner"`
	Surrogates  []string `json:"surrogates"`
	GDKVersion  uint32   `json:"gdk_version"`
	Commitments [][]byte `json:"commitments"`
	EscrowKey   struct {
		Version   uint32 `json:"version"`
		Suite     string `json:"suite"`
		PublicKey []byte `json:"public_key"`
	} `json:"escrow_key"`
	Epoch  uint32 `json:"epoch"`
	Bundle []byte `json:"bundle"`
}

func (g *groupView) bundle(t *testing.T) *bundle.Bundle {
	t.Helper()
	b, err := bundle.Parse(g.Bundle)
	if err != nil {
		t.Fatalf("bundle of %s: %v", g.Group, err)
	}
	return b
}

func (d *syncDevice) group(id string) groupView {
	d.t.Helper()
	var g groupView
	d.must(http.StatusOK, "GET", "/v1/groups/"+id, nil, &g)
	return g
}

// slots returns the encoded slots of b that match.
func slots(t *testing.T, b *bundle.Bundle, match func(s *bundle.Slot) bool) [][]byte {
	t.Helper()
	var out [][]byte
	for i := range b.Slots {
		if match(&b.Slots[i]) {
			raw, err := b.Slots[i].Marshal()
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, raw)
		}
	}
	return out
}

// open opens d's device slot of the group's current GDK, pinning the
// commitment the backend gave (the enrolment channel), as a device does.
func (d *syncDevice) open(g groupView) ([]byte, *device.Keyring) {
	d.t.Helper()
	b := g.bundle(d.t)
	mine := slots(d.t, b, func(s *bundle.Slot) bool {
		return s.Kind == bundle.KindDevice && s.ID == d.id && s.GDKVersion == g.GDKVersion
	})
	if len(mine) != 1 {
		d.t.Fatalf("%s has %d device slots of GDK %d in %s", d.id, len(mine), g.GDKVersion, g.Group)
	}
	gdk, s, err := device.OpenPublic(mine[0], device.Want{Group: g.Group, ID: d.id}, d.wrap)
	if err != nil {
		d.t.Fatalf("%s opens its device slot: %v", d.id, err)
	}
	kr := device.NewKeyring(g.Group)
	if err := kr.Pin(g.GDKVersion, g.Commitments[g.GDKVersion-1]); err != nil {
		d.t.Fatal(err)
	}
	if err := kr.Add(s, gdk); err != nil {
		d.t.Fatalf("%s: the backend's commitment does not match its slot: %v", d.id, err)
	}
	return gdk, kr
}

type recordView struct {
	ID      string `json:"id"`
	Version uint64 `json:"version"`
	Record  []byte `json:"record"`
}

func (d *syncDevice) putNote(group, id string, version uint64, gdk []byte, gdkVersion uint32, text string) (int, map[string]any) {
	d.t.Helper()
	rec, err := device.SealRecord(gdk, group, id, gdkVersion, []byte(text))
	if err != nil {
		d.t.Fatal(err)
	}
	var out map[string]any
	code := d.call("PUT", "/v1/groups/"+group+"/records/"+id, map[string]any{"version": version, "record": rec}, &out)
	return code, out
}

func (d *syncDevice) readNote(group, id string, gdk []byte) (string, error) {
	d.t.Helper()
	var r recordView
	d.must(http.StatusOK, "GET", "/v1/groups/"+group+"/records/"+id, nil, &r)
	_, pt, err := device.OpenRecord(r.Record, gdk)
	return string(pt), err
}

func counter(t *testing.T, g prometheus.Gatherer, name string, labels map[string]string) float64 {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if v, ok := labels[l.GetName()]; ok && v != l.GetValue() {
					continue next
				}
			}
			return m.GetCounter().GetValue()
		}
	}
	return 0
}

// TestSyncBackend runs the reference sync backend (examples/syncbackend)
// against the real escrowd, SoftHSM and Vault, with devices driven by the
// Go reference device: accounts and a group, provisioning and the first
// bundle, a second device enrolled, a surrogate joining (re-wrap) and
// leaving (rotation), a code revealed by support and used (new epoch, and
// a notification), and the cycle job making a missing device slot and
// re-sealing escrow slots after escrow key rotations, through BatchRewrap
// and RewrapToEscrow.
//
// It runs once on each of the backend's stores; after each run the store's
// contents hold none of the notes, passwords or codes in clear.
func TestSyncBackend(t *testing.T) {
	t.Run("bolt", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "sync.db")
		st, err := store.OpenBolt(path)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { st.Close() })
		runSyncBackend(t, st, func() []byte {
			b, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			return b
		})
	})
	t.Run("postgres", func(t *testing.T) {
		url := pgtest.New(t)
		st, err := postgres.Open(context.Background(), url)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { st.Close() })
		runSyncBackend(t, st, func() []byte { return dumpPostgres(t, url) })
	})
}

// dumpPostgres returns every row of the backend's tables as text.
func dumpPostgres(t *testing.T, url string) []byte {
	t.Helper()
	conn, err := pgx.Connect(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	var out []byte
	for _, table := range []string{"accounts", "devices", "nonces", "groups", "members", "records", "notifications", "feed_cursor"} {
		var text string
		if err := conn.QueryRow(context.Background(), "SELECT coalesce(string_agg(t::text, E'\\n'), '') FROM "+table+" t").Scan(&text); err != nil {
			t.Fatal(err)
		}
		if table == "records" && !strings.Contains(text, "note-1") {
			t.Fatalf("the dump of records does not hold them: %.200s", text)
		}
		out = append(out, text...)
	}
	return out
}

func runSyncBackend(t *testing.T, st store.Store, dump func() []byte) {
	s := newStack(t, vaultSrv)
	ctx := ctxT(t)
	esc, err := escrowdclient.Dial(s.addr, filepath.Join(pki.dir, "ca.crt"), filepath.Join(pki.dir, "sync-backend.crt"), filepath.Join(pki.dir, "sync-backend.key"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { esc.Close() })
	srv, err := backend.New(backend.Config{Store: st, Escrowd: esc, Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(srv.Handler())
	t.Cleanup(hs.Close)

	const group = "ann-notes"
	const password = "correct horse battery staple"
	annPhone := newSyncDevice(t, hs.URL, "ann", "ann-phone", nil)
	annPhone.createAccount()
	bobPhone := newSyncDevice(t, hs.URL, "bob", "bob-phone", nil)
	bobPhone.createAccount()

	// Ann creates a group: the backend provisions it at escrowd, and
	// Ann's phone makes the GDK and the first bundle: the escrow slot, its
	// device slot, and a password slot.
	var g groupView
	annPhone.must(http.StatusCreated, "POST", "/v1/groups", map[string]string{"group": group}, &g)
	if g.EscrowKey.Version != 1 || g.EscrowKey.Suite != bundle.SuiteECDHP256 || g.Bundle != nil || g.Version != 1 {
		t.Fatalf("created group %+v", g)
	}
	if code := bobPhone.call("POST", "/v1/groups", map[string]string{"group": group}, nil); code != http.StatusConflict {
		t.Fatalf("a second group %s: %d, want 409", group, code)
	}
	gdk1, err := device.NewGDK()
	if err != nil {
		t.Fatal(err)
	}
	seal := func(raw []byte, err error) bundle.Slot {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		s, err := bundle.ParseSlot(raw)
		if err != nil {
			t.Fatal(err)
		}
		return *s
	}
	first := bundle.Bundle{Group: group, Slots: []bundle.Slot{
		seal(device.SealEscrow(g.EscrowKey.PublicKey, device.To{Group: group, GDKVersion: 1, KeyVersion: g.EscrowKey.Version}, g.EscrowKey.Suite, gdk1)),
		seal(device.SealPublic(bundle.KindDevice, device.To{Group: group, GDKVersion: 1, KeyVersion: 1, ID: "ann-phone"}, bundle.SuiteECDHP256, pkix(t, annPhone.wrap.PublicKey()), gdk1)),
		seal(device.SealPassword(gdk1, device.To{Group: group, GDKVersion: 1, KeyVersion: 1, ID: "ann"}, password, bundle.MinPasswordIterations)),
	}}
	firstRaw, err := first.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	// Bob is no member: he cannot see or write the group.
	if code := bobPhone.call("PUT", "/v1/groups/"+group+"/bundle", map[string]any{"version": 1, "bundle": firstRaw}, nil); code != http.StatusNotFound {
		t.Fatalf("bob uploads ann's bundle: %d, want 404", code)
	}
	annPhone.must(http.StatusOK, "PUT", "/v1/groups/"+group+"/bundle", map[string]any{"version": 1, "bundle": firstRaw}, &g)
	// The backend re-wrapped through the escrow slot to Ann's member key
	// and issued her first epoch of unlock codes.
	b := g.bundle(t)
	if g.Epoch != 1 || len(g.Commitments) != 1 {
		t.Fatalf("after the first bundle: epoch %d, %d commitments", g.Epoch, len(g.Commitments))
	}
	ms := slots(t, b, func(s *bundle.Slot) bool { return s.Kind == bundle.KindMember && s.ID == "ann" })
	if len(ms) != 1 {
		t.Fatalf("%d member slots for ann", len(ms))
	}
	if got, _, err := device.OpenPublic(ms[0], device.Want{Group: group, ID: "ann"}, annPhone.member); err != nil || !bytes.Equal(got, gdk1) {
		t.Fatalf("ann's member slot: %v", err)
	}
	if n := len(slots(t, b, func(s *bundle.Slot) bool { return s.Kind == bundle.KindUnlock && s.ID == "ann" })); n != 5 {
		t.Fatalf("%d unlock slots for ann, want 5", n)
	}

	// Records are versioned: a stale write is 409 with the current version.
	if code, out := annPhone.putNote(group, "note-1", 0, gdk1, 1, "buy milk"); code != http.StatusOK || out["version"] != 1.0 {
		t.Fatalf("note-1: %d %v", code, out)
	}
	if code, out := annPhone.putNote(group, "note-1", 0, gdk1, 1, "buy bread"); code != http.StatusConflict || out["error"] != "conflict" || out["current"] != 1.0 {
		t.Fatalf("stale write of note-1: %d %v, want 409 at version 1", code, out)
	}
	// A stale bundle write too.
	if code := annPhone.call("PUT", "/v1/groups/"+group+"/bundle", map[string]any{"version": 1, "bundle": firstRaw}, nil); code != http.StatusConflict {
		t.Fatalf("stale bundle write: %d, want 409", code)
	}

	// A second device: Ann's laptop, approved by her phone, gets a device
	// slot through escrowd and reads the note.
	annLaptop := newSyncDevice(t, hs.URL, "ann", "ann-laptop", annPhone.member)
	annLaptop.enrol(annPhone)
	laptopGDK, _ := annLaptop.open(annLaptop.group(group))
	if !bytes.Equal(laptopGDK, gdk1) {
		t.Fatal("the laptop opened another GDK")
	}
	if txt, err := annLaptop.readNote(group, "note-1", laptopGDK); err != nil || txt != "buy milk" {
		t.Fatalf("laptop reads note-1: %q, %v", txt, err)
	}

	// Bob has a group of his own.
	bobGroup := "bob-notes"
	var bg groupView
	bobPhone.must(http.StatusCreated, "POST", "/v1/groups", map[string]string{"group": bobGroup}, &bg)
	bgdk, _ := device.NewGDK()
	bobFirst := bundle.Bundle{Group: bobGroup, Slots: []bundle.Slot{
		seal(device.SealEscrow(bg.EscrowKey.PublicKey, device.To{Group: bobGroup, GDKVersion: 1, KeyVersion: bg.EscrowKey.Version}, bg.EscrowKey.Suite, bgdk)),
		seal(device.SealPublic(bundle.KindDevice, device.To{Group: bobGroup, GDKVersion: 1, KeyVersion: 1, ID: "bob-phone"}, bundle.SuiteECDHP256, pkix(t, bobPhone.wrap.PublicKey()), bgdk)),
	}}
	bobRaw, _ := bobFirst.Marshal()
	bobPhone.must(http.StatusOK, "PUT", "/v1/groups/"+bobGroup+"/bundle", map[string]any{"version": 1, "bundle": bobRaw}, &bg)

	// Bob joins Ann's group as a surrogate: a member slot and a device
	// slot, re-wrapped from the escrow slot, and an epoch of his own.
	if code := bobPhone.call("PUT", "/v1/groups/"+group+"/members/bob", nil, nil); code != http.StatusNotFound {
		t.Fatalf("bob adds himself: %d, want 404", code)
	}
	annPhone.must(http.StatusOK, "PUT", "/v1/groups/"+group+"/members/bob", nil, &g)
	if !slices.Equal(g.Surrogates, []string{"bob"}) {
		t.Fatalf("surrogates %v", g.Surrogates)
	}
	var list map[string][]string
	bobPhone.must(http.StatusOK, "GET", "/v1/groups", nil, &list)
	if !slices.Equal(list["groups"], []string{"ann-notes", "bob-notes"}) {
		t.Fatalf("bob's groups: %v", list)
	}
	bv := bobPhone.group(group)
	bobGDK, _ := bobPhone.open(bv)
	if bv.Epoch != 1 || !bytes.Equal(bobGDK, gdk1) {
		t.Fatalf("bob's view: epoch %d", bv.Epoch)
	}
	if txt, err := bobPhone.readNote(group, "note-1", bobGDK); err != nil || txt != "buy milk" {
		t.Fatalf("bob reads note-1: %q, %v", txt, err)
	}
	if code, _ := bobPhone.putNote(group, "note-2", 0, bobGDK, 1, "from bob"); code != http.StatusOK {
		t.Fatalf("bob writes note-2: %d", code)
	}
	// Bob may add a password slot of his own, and change nothing else.
	bb := bv.bundle(t)
	bb.Slots = append(bb.Slots, seal(device.SealPassword(bobGDK, device.To{Group: group, GDKVersion: 1, KeyVersion: 1, ID: "bob"}, "bob's password", bundle.MinPasswordIterations)))
	raw, _ := bb.Marshal()
	bobPhone.must(http.StatusOK, "PUT", "/v1/groups/"+group+"/bundle", map[string]any{"version": bv.Version, "bundle": raw}, &bv)
	bb = bv.bundle(t)
	bb.Slots = slices.DeleteFunc(bb.Slots, func(s bundle.Slot) bool { return s.Kind == bundle.KindPassword && s.ID == "ann" })
	raw, _ = bb.Marshal()
	if code := bobPhone.call("PUT", "/v1/groups/"+group+"/bundle", map[string]any{"version": bv.Version, "bundle": raw}, nil); code != http.StatusForbidden {
		t.Fatalf("bob removes ann's password slot: %d, want 403", code)
	}

	// Ann forgot her password. Support reveals a code; her phone opens
	// the data with it, offline, and then reports it used: escrowd marks it
	// consumed and issues a new epoch, whose slots replace the old ones.
	rv, err := s.support.RevealUnlockCode(ctx, &escrowdv1.RevealUnlockCodeRequest{GroupId: group, UserId: "ann", Ticket: "SUP-77"})
	if err != nil {
		t.Fatal(err)
	}
	g = annPhone.group(group)
	annUnlock := slots(t, g.bundle(t), func(s *bundle.Slot) bool { return s.Kind == bundle.KindUnlock && s.ID == "ann" })
	typed := strings.ToLower(rv.GetCode())
	got, us, err := device.OpenUnlock(annUnlock, device.Want{Group: group, ID: "ann"}, typed)
	if err != nil || !bytes.Equal(got, gdk1) {
		t.Fatalf("the revealed code opens: %v", err)
	}
	annPhone.must(http.StatusOK, "POST", "/v1/groups/"+group+"/codes/consumed", map[string]uint32{"epoch": us.Unlock.Epoch, "index": us.Unlock.Index}, &g)
	if g.Epoch != 2 {
		t.Fatalf("epoch after a consumed code: %d, want 2", g.Epoch)
	}
	annUnlock = slots(t, g.bundle(t), func(s *bundle.Slot) bool { return s.Kind == bundle.KindUnlock && s.ID == "ann" })
	if len(annUnlock) != 5 {
		t.Fatalf("%d unlock slots for ann after the new epoch", len(annUnlock))
	}
	if _, _, err := device.OpenUnlock(annUnlock, device.Want{Group: group, ID: "ann"}, typed); !errors.Is(err, device.ErrWrongCode) {
		t.Fatalf("the used code on the new epoch: %v, want ErrWrongCode", err)
	}
	lc, err := s.support.ListUnlockCodes(ctx, &escrowdv1.ListUnlockCodesRequest{GroupId: group, UserId: "ann"})
	if err != nil || lc.GetEpoch() != 2 {
		t.Fatalf("escrowd's epoch for ann: %v, %v", lc, err)
	}

	// The reveal reaches Ann as a notification, and nobody else.
	if _, err := srv.PollEvents(ctx); err != nil {
		t.Fatal(err)
	}
	var notes struct {
		Notifications []struct {
			Sequence uint64 `json:"sequence"`
			Kind     string `json:"kind"`
			Group    string `json:"group"`
			Epoch    uint32 `json:"epoch"`
			Index    uint32 `json:"index"`
			Ticket   string `json:"ticket"`
		} `json:"notifications"`
	}
	annLaptop.must(http.StatusOK, "GET", "/v1/notifications", nil, &notes)
	if len(notes.Notifications) != 1 {
		t.Fatalf("ann's notifications: %+v", notes)
	}
	if n := notes.Notifications[0]; n.Kind != "code_revealed" || n.Group != group || n.Epoch != 1 || n.Index != rv.GetIndex() || n.Ticket != "SUP-77" {
		t.Fatalf("ann's notification: %+v", n)
	}
	annLaptop.must(http.StatusOK, "GET", fmt.Sprintf("/v1/notifications?after=%d", notes.Notifications[0].Sequence), nil, &notes)
	if len(notes.Notifications) != 0 {
		t.Fatalf("notifications after the last: %+v", notes)
	}
	bobPhone.must(http.StatusOK, "GET", "/v1/notifications", nil, &notes)
	if len(notes.Notifications) != 0 {
		t.Fatalf("bob's notifications: %+v", notes)
	}

	// Bob leaves: the GDK rotates. Ann's devices open GDK 2, pinned by the
	// commitment escrowd returned, and reach GDK 1 through the chain.
	annPhone.must(http.StatusOK, "DELETE", "/v1/groups/"+group+"/members/bob", nil, &g)
	if g.GDKVersion != 2 || len(g.Commitments) != 2 || len(g.Surrogates) != 0 || g.Epoch == 0 {
		t.Fatalf("after bob left: %+v", g)
	}
	gdk2, kr := annPhone.open(g)
	b = g.bundle(t)
	chain := slots(t, b, func(s *bundle.Slot) bool { return s.Kind == bundle.KindChain && s.GDKVersion == 1 })
	if len(chain) != 1 {
		t.Fatalf("%d chain slots", len(chain))
	}
	if old, err := kr.AdoptOlder(chain[0]); err != nil || !bytes.Equal(old, gdk1) {
		t.Fatalf("the chain to GDK 1: %v", err)
	}
	for _, sl := range b.Slots {
		if sl.ID == "bob" || sl.ID == "bob-phone" {
			t.Fatalf("a slot for %s after he left: %+v", sl.ID, sl.Kind)
		}
	}
	if txt, err := annPhone.readNote(group, "note-2", gdk1); err != nil || txt != "from bob" {
		t.Fatalf("ann reads bob's older note: %q, %v", txt, err)
	}
	// Writes under GDK 1 are refused now; under GDK 2 they succeed, and
	// what Bob's phone holds does not open them.
	if code, out := annLaptop.putNote(group, "note-3", 0, gdk1, 1, "after bob"); code != http.StatusConflict || out["error"] != "stale_gdk" {
		t.Fatalf("a note under GDK 1 after the rotation: %d %v", code, out)
	}
	laptopGDK2, _ := annLaptop.open(annLaptop.group(group))
	if code, _ := annLaptop.putNote(group, "note-3", 0, laptopGDK2, 2, "after bob"); code != http.StatusOK {
		t.Fatalf("note-3: %d", code)
	}
	if txt, err := annPhone.readNote(group, "note-3", gdk2); err != nil || txt != "after bob" {
		t.Fatalf("ann's phone reads note-3: %q, %v", txt, err)
	}
	if _, err := annPhone.readNote(group, "note-3", bobGDK); err == nil {
		t.Fatal("bob's GDK opens a note written after he left")
	}
	for _, p := range []string{"/v1/groups/" + group, "/v1/groups/" + group + "/records/note-3"} {
		if code := bobPhone.call("GET", p, nil, nil); code != http.StatusNotFound {
			t.Fatalf("bob GETs %s after leaving: %d, want 404", p, code)
		}
	}
	if code, _ := bobPhone.putNote(group, "note-4", 0, bobGDK, 1, "still here?"); code != http.StatusNotFound {
		t.Fatalf("bob writes after leaving: %d, want 404", code)
	}

	// A device enrolled while escrowd could not be reached has no slot
	// yet (stored here without the API's immediate re-wrap). Then
	// security rotates both groups' escrow keys: the feed tells the
	// backend, and one cycle makes the device's slot and re-seals both
	// escrow slots in one BatchRewrap.
	annWatch := newSyncDevice(t, hs.URL, "ann", "ann-watch", annPhone.member)
	if err := st.AddDevice(ctx, store.Device{ID: annWatch.id, Account: "ann", SignKey: pkix(t, &annWatch.sign.PublicKey),
		WrapKey: pkix(t, annWatch.wrap.PublicKey()), WrapKeyVersion: 1}); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{group, bobGroup} {
		if _, err := s.sec.RotateGroupKeys(ctx, &escrowdv1.RotateGroupKeysRequest{GroupId: id, Escrow: true}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := srv.PollEvents(ctx); err != nil {
		t.Fatal(err)
	}
	rep, err := srv.Cycle(ctx)
	if err != nil || rep.Resealed != 2 || rep.Failed != 0 || rep.Rewraps != 1 {
		t.Fatalf("cycle: %+v, %v", rep, err)
	}
	if wg, _ := annWatch.open(annWatch.group(group)); !bytes.Equal(wg, gdk2) {
		t.Fatal("the watch opened another GDK")
	}
	escrowVersions := func(v groupView) []uint32 {
		var out []uint32
		for _, sl := range v.bundle(t).Slots {
			if sl.Kind == bundle.KindEscrow {
				out = append(out, sl.KeyVersion)
			}
		}
		return out
	}
	gv, bgv := annPhone.group(group), bobPhone.group(bobGroup)
	if v := escrowVersions(gv); !slices.Equal(v, []uint32{2}) {
		t.Fatalf("ann-notes escrow slots of key versions %v, want [2]", v)
	}
	if v := escrowVersions(bgv); !slices.Equal(v, []uint32{2}) {
		t.Fatalf("bob-notes escrow slots of key versions %v, want [2]", v)
	}
	// The re-sealed slot works: escrowd re-wraps from it.
	annTablet := newSyncDevice(t, hs.URL, "ann", "ann-tablet", annPhone.member)
	annTablet.enrol(annLaptop)
	if tg, _ := annTablet.open(annTablet.group(group)); !bytes.Equal(tg, gdk2) {
		t.Fatal("the tablet opened another GDK")
	}
	// A second rotation of one group: one RewrapToEscrow.
	if _, err := s.sec.RotateGroupKeys(ctx, &escrowdv1.RotateGroupKeysRequest{GroupId: bobGroup, Escrow: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := srv.PollEvents(ctx); err != nil {
		t.Fatal(err)
	}
	if rep, err := srv.Cycle(ctx); err != nil || rep.Resealed != 1 {
		t.Fatalf("second cycle: %+v, %v", rep, err)
	}
	if v := escrowVersions(bobPhone.group(bobGroup)); !slices.Equal(v, []uint32{3}) {
		t.Fatalf("bob-notes escrow slots of key versions %v, want [3]", v)
	}
	// A cycle with nothing to do does nothing.
	if rep, err := srv.Cycle(ctx); err != nil || rep.Resealed+rep.Rewraps+rep.Epochs+rep.Failed != 0 {
		t.Fatalf("idle cycle: %+v, %v", rep, err)
	}
	m := srv.Gatherer()
	for _, c := range []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"syncbackend_cycle_escrowd_calls_total", map[string]string{"method": "BatchRewrap", "outcome": "ok"}, 1},
		{"syncbackend_cycle_escrowd_calls_total", map[string]string{"method": "RewrapToEscrow", "outcome": "ok"}, 1},
		{"syncbackend_cycle_rewraps_total", map[string]string{"target": "escrow", "outcome": "ok"}, 3},
		{"syncbackend_cycle_rewraps_total", map[string]string{"target": "device", "outcome": "ok"}, 1},
		{"syncbackend_cycle_runs_total", map[string]string{"outcome": "ok"}, 3},
		{"syncbackend_events_total", map[string]string{"kind": "key_rotated"}, 3},
	} {
		if got := counter(t, m, c.name, c.labels); got != c.want {
			t.Errorf("%s%v = %v, want %v", c.name, c.labels, got, c.want)
		}
	}

	// The backend's database holds no note, password or code in clear.
	db := dump()
	for _, secret := range []string{"buy milk", "from bob", "after bob", password, "bob's password", rv.GetCode(), strings.ReplaceAll(rv.GetCode(), "-", "")} {
		for _, form := range []string{secret, hex.EncodeToString([]byte(secret)), base64.StdEncoding.EncodeToString([]byte(secret))} {
			if bytes.Contains(db, []byte(form)) {
				t.Errorf("the backend's database holds %q", secret)
			}
		}
	}
}
