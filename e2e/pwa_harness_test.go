package e2e

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/escrowd/escrowd/examples/syncbackend/backend"
	"github.com/escrowd/escrowd/examples/syncbackend/escrowdclient"
	"github.com/escrowd/escrowd/examples/syncbackend/store"
)

// pwaHarness is what the demo PWA's Chromium tests run against: a real
// escrowd (SoftHSM, Vault, the dev PKI), the reference sync backend
// in-process over mutual TLS on the embedded store, the built app served
// from a 127.0.0.1 listener, and a support listener the page cannot
// reach. Everything stops with the test.
type pwaHarness struct {
	stack *stack
	ctx   context.Context
	// store and dbPath are the sync backend's database.
	store  *store.Bolt
	dbPath string
	// origin is the app's, as http://localhost:PORT: WebAuthn takes no IP
	// address as a relying party id.
	origin string
	// control is the support listener, serving the handler given to newPWAHarness.
	control *httptest.Server
	// shots is where the scripts save screenshots: ESCROWD_PWA_SCREENSHOTS, or a temporary directory.
	shots string
	// node and webDir run the scripts: node, and web/ whose node_modules holds playwright-core.
	node, webDir string
}

// newPWAHarness starts the stack. control makes the support listener's
// handler (nil: none); it may use the harness's stack and context.
// Missing node, Chromium or playwright-core fail the test.
func newPWAHarness(t *testing.T, control func(h *pwaHarness) http.Handler) *pwaHarness {
	t.Helper()
	h := &pwaHarness{}
	var err error
	if h.node, err = exec.LookPath("node"); err != nil {
		t.Fatal("node is not installed: run `make deps`")
	}
	if _, err := os.Stat(chromiumPath); err != nil {
		t.Fatalf("Chromium is not installed at %s: run `make deps` (apt-get install chromium)", chromiumPath)
	}
	if h.webDir, err = filepath.Abs("../web"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(h.webDir, "node_modules", "playwright-core", "package.json")); err != nil {
		t.Fatal("web/node_modules/playwright-core is missing: run `make deps` (npm ci --prefix web)")
	}

	h.stack = newStack(t, vaultSrv)
	// The backend's event feed and the support calls run for the whole
	// browser run, longer than ctxT's two minutes on a loaded machine.
	ctx, cancelCtx := context.WithTimeout(context.Background(), 6*time.Minute)
	t.Cleanup(cancelCtx)
	h.ctx = ctx
	esc, err := escrowdclient.Dial(h.stack.addr, filepath.Join(pki.dir, "ca.crt"), filepath.Join(pki.dir, "sync-backend.crt"), filepath.Join(pki.dir, "sync-backend.key"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { esc.Close() })
	h.dbPath = filepath.Join(t.TempDir(), "sync.db")
	if h.store, err = store.OpenBolt(h.dbPath); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.store.Close() })

	appLis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	h.origin = fmt.Sprintf("http://localhost:%d", appLis.Addr().(*net.TCPAddr).Port)
	srv, err := backend.New(backend.Config{Store: h.store, Escrowd: esc, Log: slog.New(slog.NewTextHandler(io.Discard, nil)),
		EventsEvery: 200 * time.Millisecond, AllowOrigins: []string{h.origin}})
	if err != nil {
		t.Fatal(err)
	}
	runCtx, stopRun := context.WithCancel(h.ctx)
	done := make(chan struct{})
	go func() { srv.Run(runCtx); close(done) }()
	t.Cleanup(func() { stopRun(); <-done })
	hs := httptest.NewServer(srv.Handler())
	t.Cleanup(hs.Close)

	dist := buildPWA(t, hs.URL)
	mux := http.NewServeMux()
	mux.Handle("/", http.FileServer(http.Dir(dist)))
	app := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go app.Serve(appLis)
	t.Cleanup(func() { app.Close() })
	ctl := http.Handler(http.NotFoundHandler())
	if control != nil {
		ctl = control(h)
	}
	h.control = httptest.NewServer(ctl)
	t.Cleanup(h.control.Close)

	h.shots = os.Getenv("ESCROWD_PWA_SCREENSHOTS")
	if h.shots == "" {
		h.shots = t.TempDir()
	} else if err := os.MkdirAll(h.shots, 0o755); err != nil {
		t.Fatal(err)
	}
	return h
}
