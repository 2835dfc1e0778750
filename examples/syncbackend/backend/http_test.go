package backend

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/escrowd/escrowd/examples/syncbackend/auth"
	"github.com/escrowd/escrowd/examples/syncbackend/store"
)

// fakeEscrowd provisions groups and is unavailable for everything else:
// enough for the API's authentication and error paths. The escrowd
// operations themselves run against the real daemon in e2e/.
type fakeEscrowd struct{ provisioned []string }

func (f *fakeEscrowd) ProvisionGroup(_ context.Context, group string) (EscrowKey, error) {
	f.provisioned = append(f.provisioned, group)
	return EscrowKey{Version: 1, Suite: "ecdh-p256", PublicKey: []byte("pk")}, nil
}
func (f *fakeEscrowd) Rewrap(context.Context, string, []byte, Recipient) ([]byte, error) {
	return nil, ErrEscrowdUnavailable
}
func (f *fakeEscrowd) IssueUnlockCodes(context.Context, string, string, []byte) (UnlockEpoch, error) {
	return UnlockEpoch{}, ErrEscrowdUnavailable
}
func (f *fakeEscrowd) MarkUnlockCodeConsumed(context.Context, string, string, uint32, uint32) error {
	return ErrEscrowdUnavailable
}
func (f *fakeEscrowd) RotateGroupKey(context.Context, RotateRequest) (Rotation, error) {
	return Rotation{}, ErrEscrowdUnavailable
}
func (f *fakeEscrowd) RewrapToEscrow(context.Context, string, []byte) ([]byte, uint32, error) {
	return nil, 0, ErrEscrowdUnavailable
}
func (f *fakeEscrowd) BatchRewrap(context.Context, []BatchItem) ([]BatchResult, error) {
	return nil, ErrEscrowdUnavailable
}
func (f *fakeEscrowd) ListEvents(context.Context, uint64, int) (EventPage, error) {
	return EventPage{}, ErrEscrowdUnavailable
}

type testDevice struct {
	id, account string
	key         *ecdsa.PrivateKey
	pub         []byte
}

func newTestDevice(t *testing.T, account, id string) *testDevice {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, _ := x509.MarshalPKIXPublicKey(&k.PublicKey)
	return &testDevice{id: id, account: account, key: k, pub: der}
}

type apiTest struct {
	t   *testing.T
	srv *Server
	hs  *httptest.Server
	now time.Time
}

func newAPITest(t *testing.T) *apiTest { return newAPITestWith(t, nil) }

func newAPITestWith(t *testing.T, origins []string) *apiTest {
	st, err := store.OpenBolt(filepath.Join(t.TempDir(), "sync.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	a := &apiTest{t: t, now: time.Unix(1_800_000_000, 0)}
	a.srv, err = New(Config{Store: st, Escrowd: &fakeEscrowd{}, Log: slog.New(slog.NewTextHandler(io.Discard, nil)), Now: func() time.Time { return a.now }, AllowOrigins: origins})
	if err != nil {
		t.Fatal(err)
	}
	a.hs = httptest.NewServer(a.srv.Handler())
	t.Cleanup(a.hs.Close)
	return a
}

// send signs body as d at time at and sends it, returning the status and
// the decoded error body.
func (a *apiTest) send(d *testDevice, method, path, body string, at time.Time, edit func(*http.Request)) (int, errorBody) {
	req, _ := http.NewRequest(method, a.hs.URL+path, strings.NewReader(body))
	if err := auth.Sign(req, []byte(body), d.id, d.key, at); err != nil {
		a.t.Fatal(err)
	}
	if edit != nil {
		edit(req)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		a.t.Fatal(err)
	}
	defer resp.Body.Close()
	var eb errorBody
	b, _ := io.ReadAll(resp.Body)
	_ = json.Unmarshal(b, &eb)
	return resp.StatusCode, eb
}

func (a *apiTest) createAccount(d *testDevice) {
	b := `{"account":"` + d.account + `","member_key":"` + b64(d.pub) + `","device":"` + d.id + `","sign_key":"` + b64(d.pub) + `","wrap_key":"` + b64(d.pub) + `"}`
	if code, eb := a.send(d, "POST", "/v1/accounts", b, a.now, nil); code != http.StatusCreated {
		a.t.Fatalf("create account %s: %d %+v", d.account, code, eb)
	}
}

func b64(b []byte) string {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	_ = enc.Encode(b)
	return strings.Trim(strings.TrimSpace(buf.String()), `"`)
}

func TestAuthentication(t *testing.T) {
	a := newAPITest(t)
	ann := newTestDevice(t, "ann", "ann-phone")
	a.createAccount(ann)
	const path = "/v1/groups"

	if code, eb := a.send(ann, "GET", path, "", a.now, nil); code != http.StatusOK {
		t.Fatalf("a signed request: %d %+v", code, eb)
	}
	mallory := newTestDevice(t, "ann", "ann-phone") // ann's device id, another key
	stranger := newTestDevice(t, "x", "unknown-device")
	var replay http.Header
	for _, tc := range []struct {
		name string
		dev  *testDevice
		at   time.Time
		edit func(*http.Request)
		want int
		says string
	}{
		{"another key for the device", mallory, a.now, nil, 401, "signature"},
		{"unknown device", stranger, a.now, nil, 401, "unknown device"},
		{"too old", ann, a.now.Add(-3 * time.Minute), nil, 401, "window"},
		{"from the future", ann, a.now.Add(3 * time.Minute), nil, 401, "window"},
		{"no signature", ann, a.now, func(r *http.Request) { r.Header.Del(auth.HeaderSignature) }, 401, "missing"},
		{"path changed after signing", ann, a.now, func(r *http.Request) { r.URL.Path = "/v1/notifications" }, 401, "signature"},
		{"query added after signing", ann, a.now, func(r *http.Request) { r.URL.RawQuery = "after=1" }, 401, "signature"},
		{"first use of a nonce", ann, a.now, func(r *http.Request) { replay = r.Header.Clone() }, 200, ""},
		{"replay", ann, a.now, func(r *http.Request) { r.Header = replay }, 401, "replay"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, eb := a.send(tc.dev, "GET", path, "", tc.at, tc.edit)
			if code != tc.want || !strings.Contains(eb.Message, tc.says) || code == 401 && eb.Error != "unauthenticated" {
				t.Fatalf("%d %+v, want %d saying %q", code, eb, tc.want, tc.says)
			}
		})
	}
	// A replay is refused still after the backend's clock moved within
	// the window, and the body is covered too.
	a.now = a.now.Add(time.Minute)
	req, _ := http.NewRequest("POST", a.hs.URL+path, strings.NewReader(`{"group":"g2"}`))
	_ = auth.Sign(req, []byte(`{"group":"g1"}`), ann.id, ann.key, a.now)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 401 {
		t.Fatalf("a body other than the one signed: %d", resp.StatusCode)
	}
}

func TestEnrolment(t *testing.T) {
	a := newAPITest(t)
	phone := newTestDevice(t, "ann", "ann-phone")
	a.createAccount(phone)
	// The account exists: a second creation is 409, and a creation
	// signed by another key than the one it registers is 401.
	again := newTestDevice(t, "ann", "ann-other")
	b := `{"account":"ann","member_key":"` + b64(again.pub) + `","device":"ann-other","sign_key":"` + b64(again.pub) + `","wrap_key":"` + b64(again.pub) + `"}`
	if code, eb := a.send(again, "POST", "/v1/accounts", b, a.now, nil); code != 409 || eb.Error != "exists" {
		t.Fatalf("second account ann: %d %+v", code, eb)
	}
	thief := newTestDevice(t, "eve", "eve-phone")
	b = `{"account":"eve","member_key":"` + b64(thief.pub) + `","device":"eve-phone","sign_key":"` + b64(phone.pub) + `","wrap_key":"` + b64(thief.pub) + `"}`
	if code, _ := a.send(thief, "POST", "/v1/accounts", b, a.now, nil); code != 401 {
		t.Fatalf("an account registering a key it does not hold: %d", code)
	}

	laptop := newTestDevice(t, "ann", "ann-laptop")
	enrol := func(by *testDevice, account string) (int, errorBody) {
		sig, _ := auth.SignBytes(by.key, auth.ApprovalMessage(account, laptop.id, laptop.pub, laptop.pub))
		b := `{"account":"` + account + `","device":"ann-laptop","sign_key":"` + b64(laptop.pub) + `","wrap_key":"` + b64(laptop.pub) + `","approver":"` + by.id + `","approval":"` + b64(sig) + `"}`
		return a.send(laptop, "POST", "/v1/devices", b, a.now, nil)
	}
	bob := newTestDevice(t, "bob", "bob-phone")
	a.createAccount(bob)
	if code, eb := enrol(bob, "ann"); code != 403 {
		t.Fatalf("bob approves a device for ann: %d %+v", code, eb)
	}
	if code, eb := enrol(phone, "ann"); code != 201 {
		t.Fatalf("enrol: %d %+v", code, eb)
	}
	if code, eb := a.send(laptop, "GET", "/v1/groups", "", a.now, nil); code != 200 {
		t.Fatalf("the enrolled laptop: %d %+v", code, eb)
	}
}

func TestErrors(t *testing.T) {
	a := newAPITest(t)
	ann := newTestDevice(t, "ann", "ann-phone")
	a.createAccount(ann)
	for _, tc := range []struct {
		method, path, body string
		want               int
		name               string
	}{
		{"POST", "/v1/groups", `{"group":"ann notes"}`, 400, "bad_request"},
		{"POST", "/v1/groups", `{"group":"ann-notes"}`, 201, ""},
		{"POST", "/v1/groups", `{"group":"ann-notes"}`, 409, "exists"},
		{"GET", "/v1/groups/none", ``, 404, "not_found"},
		{"PUT", "/v1/groups/ann-notes/bundle", `{"version":1,"bundle":"e30="}`, 400, "bad_request"},
		{"PUT", "/v1/groups/ann-notes/bundle", `{"version":9,"bundle":"e30="}`, 409, "conflict"},
		{"PUT", "/v1/groups/ann-notes/members/nobody", ``, 404, "not_found"},
		{"GET", "/v1/notifications?after=x", ``, 400, "bad_request"},
		{"PUT", "/v1/groups/ann-notes/records/n1", `{"version":0,"record":"e30="}`, 400, "bad_request"},
	} {
		code, eb := a.send(ann, tc.method, tc.path, tc.body, a.now, nil)
		if code != tc.want || eb.Error != tc.name {
			t.Errorf("%s %s %s: %d %+v, want %d %s", tc.method, tc.path, tc.body, code, eb, tc.want, tc.name)
		}
	}
	code, eb := a.send(ann, "PUT", "/v1/groups/ann-notes/bundle", `{"version":9,"bundle":"e30="}`, a.now, nil)
	if code != 409 || eb.Current == nil || *eb.Current != 1 {
		t.Fatalf("conflict body: %+v", eb)
	}
}

func TestCORS(t *testing.T) {
	a := newAPITestWith(t, []string{"http://127.0.0.1:5173"})
	preflight := func(origin string) *http.Response {
		req, _ := http.NewRequest("OPTIONS", a.hs.URL+"/v1/groups", nil)
		req.Header.Set("Origin", origin)
		req.Header.Set("Access-Control-Request-Method", "POST")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp
	}
	resp := preflight("http://127.0.0.1:5173")
	if resp.StatusCode != 204 || resp.Header.Get("Access-Control-Allow-Origin") != "http://127.0.0.1:5173" ||
		!strings.Contains(resp.Header.Get("Access-Control-Allow-Headers"), auth.HeaderSignature) || resp.Header.Get("Access-Control-Allow-Credentials") != "" {
		t.Fatalf("preflight from the allowed origin: %d %v", resp.StatusCode, resp.Header)
	}
	if resp := preflight("http://evil.example"); resp.Header.Get("Access-Control-Allow-Origin") != "" {
		t.Fatalf("preflight from another origin allowed: %v", resp.Header)
	}
}
