// Command vaultdev runs a real HashiCorp Vault server (Vault 1.13.0, MPL-2.0,
// compiled from the Go module proxy as a library) for escrowd's tests and for
// `make run`. It does what `vault server -dev` does: a Vault core on in-memory
// (or, with -data, file) storage, initialised with one unseal key, unsealed,
// with a known root token, KV v2 at secret/, transit at transit/ and
// optionally a file audit device, served over plain HTTP on a loopback
// address.
//
// It is a development tool only: it is never linked into the daemon and it
// keeps the unseal key next to the data.
//
// The address file is written (atomically) only once the server is ready:
// unsealed, mounts in place, a KV v2 write has succeeded through the HTTP
// listener and the audit device (if any) is enabled.
package main

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"
	kv "github.com/hashicorp/vault-plugin-secrets-kv"
	"github.com/hashicorp/vault/audit"
	auditFile "github.com/hashicorp/vault/builtin/audit/file"
	auditSocket "github.com/hashicorp/vault/builtin/audit/socket"
	"github.com/hashicorp/vault/builtin/logical/transit"
	"github.com/hashicorp/vault/helper/namespace"
	vaulthttp "github.com/hashicorp/vault/http"
	"github.com/hashicorp/vault/sdk/helper/consts"
	"github.com/hashicorp/vault/sdk/logical"
	"github.com/hashicorp/vault/sdk/physical"
	physFile "github.com/hashicorp/vault/sdk/physical/file"
	physInmem "github.com/hashicorp/vault/sdk/physical/inmem"
	"github.com/hashicorp/vault/vault"
	vaultseal "github.com/hashicorp/vault/vault/seal"
)

const stateFileName = "vaultdev-state.json"

type options struct {
	listen    string
	addrFile  string
	tokenFile string
	auditFile string
	dataDir   string
	logLevel  string
	timeout   time.Duration
	stdinEOF  bool
}

// state is what -data keeps across restarts. Development only: the unseal
// key lives next to the sealed data.
type state struct {
	UnsealKey string `json:"unseal_key"` // base64
	RootToken string `json:"root_token"`
}

func main() {
	var o options
	flag.StringVar(&o.listen, "listen", "127.0.0.1:8200", "loopback `host:port` to listen on (port 0 picks a free port)")
	flag.StringVar(&o.addrFile, "addr-file", "", "write the server's `URL` here once ready (required)")
	flag.StringVar(&o.tokenFile, "token-file", "", "write the root token here, mode 0600 (required)")
	flag.StringVar(&o.auditFile, "audit-file", "", "enable a file audit device writing to this `path`")
	flag.StringVar(&o.dataDir, "data", "", "keep Vault's storage, unseal key and root token in this `dir` (default: in memory)")
	flag.StringVar(&o.logLevel, "log-level", "warn", "Vault log level (trace, debug, info, warn, error)")
	flag.DurationVar(&o.timeout, "start-timeout", 30*time.Second, "give up if not ready within this time")
	flag.BoolVar(&o.stdinEOF, "exit-on-stdin-eof", false, "shut down when stdin reaches end of file (lets a test harness's death stop Vault)")
	flag.Parse()

	if err := run(o); err != nil {
		fmt.Fprintf(os.Stderr, "vaultdev: %v\n", err)
		os.Exit(1)
	}
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "vaultdev: "+format+"\n", args...)
}

func run(o options) error {
	if flag.NArg() != 0 {
		return fmt.Errorf("unexpected arguments: %q", flag.Args())
	}
	if o.addrFile == "" || o.tokenFile == "" {
		return errors.New("-addr-file and -token-file are required")
	}
	host, _, err := net.SplitHostPort(o.listen)
	if err != nil {
		return fmt.Errorf("-listen %q: %w", o.listen, err)
	}
	if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
		return fmt.Errorf("-listen %q: only loopback addresses are allowed (this is a dev server)", o.listen)
	}
	// A stale address file would claim readiness of a server that is not
	// there yet.
	if err := os.Remove(o.addrFile); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("removing stale address file: %w", err)
	}

	started := time.Now()
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	if o.stdinEOF {
		go func() {
			_, _ = io.Copy(io.Discard, os.Stdin)
			sigs <- stdinClosed{}
		}()
	}

	ctx, cancel := context.WithTimeout(context.Background(), o.timeout)
	defer cancel()
	go func() {
		select {
		case s := <-sigs:
			logf("got %v during start-up, giving up", s)
			cancel()
		case <-ctx.Done():
		}
	}()

	level := hclog.LevelFromString(o.logLevel)
	if level == hclog.NoLevel {
		return fmt.Errorf("-log-level %q: unknown level", o.logLevel)
	}
	logger := hclog.New(&hclog.LoggerOptions{
		Name:   "vault",
		Level:  level,
		Output: os.Stderr,
		// KV v2 in Vault 1.13 tries to publish an event on every write;
		// without the events.alpha1 experiment there is no broker and it
		// warns each time. Drop that noise.
		Exclude: func(_ hclog.Level, msg string, args ...interface{}) bool {
			return msg == "Error sending event"
		},
	})

	// Storage.
	var phys physical.Backend
	var st *state
	statePath := ""
	if o.dataDir != "" {
		if err := os.MkdirAll(filepath.Join(o.dataDir, "storage"), 0o700); err != nil {
			return fmt.Errorf("creating data dir: %w", err)
		}
		statePath = filepath.Join(o.dataDir, stateFileName)
		if st, err = loadState(statePath); err != nil {
			return fmt.Errorf("reading saved state: %w", err)
		}
		phys, err = physFile.NewFileBackend(map[string]string{"path": filepath.Join(o.dataDir, "storage")}, logger.Named("storage"))
	} else {
		phys, err = physInmem.NewInmem(nil, logger.Named("storage"))
	}
	if err != nil {
		return fmt.Errorf("storage: %w", err)
	}

	ln, err := net.Listen("tcp", o.listen)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	defer ln.Close()
	addr := "http://" + ln.Addr().String()

	core, err := vault.NewCore(&vault.CoreConfig{
		Physical: phys,
		AuditBackends: map[string]audit.Factory{
			"file":   auditFile.Factory,
			"socket": auditSocket.Factory,
		},
		LogicalBackends: map[string]logical.Factory{
			"kv":      kv.Factory,
			"transit": transit.Factory,
		},
		BuiltinRegistry: emptyRegistry{},
		DisableMlock:    true,
		Logger:          logger,
		RedirectAddr:    addr,
	})
	if err != nil {
		return fmt.Errorf("creating Vault core: %w", err)
	}
	defer func() {
		if err := core.Shutdown(); err != nil {
			logf("core shutdown: %v", err)
		}
	}()

	rootToken, err := initAndUnseal(ctx, core, statePath, st)
	if err != nil {
		return err
	}

	srv := &http.Server{
		Handler:           vaulthttp.Handler.Handler(&vault.HandlerProperties{Core: core}),
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          nil,
	}
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(ln) }()

	if err := setup(ctx, core, rootToken, addr, o.auditFile); err != nil {
		srv.Close()
		return err
	}

	if err := writeFileAtomic(o.tokenFile, []byte(rootToken), 0o600); err != nil {
		srv.Close()
		return fmt.Errorf("writing token file: %w", err)
	}
	if err := writeFileAtomic(o.addrFile, []byte(addr), 0o644); err != nil {
		srv.Close()
		return fmt.Errorf("writing address file: %w", err)
	}
	cancel() // start-up context no longer needed
	logf("ready at %s in %v (storage: %s, audit: %s)", addr, time.Since(started).Round(time.Millisecond),
		describe(o.dataDir, "in memory"), describe(o.auditFile, "off"))

	select {
	case s := <-sigs:
		logf("got %v, shutting down", s)
	case err := <-serveErr:
		return fmt.Errorf("http server: %w", err)
	}
	// Remove the address file first: it means "ready".
	_ = os.Remove(o.addrFile)
	shutCtx, shutCancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer shutCancel()
	if err := srv.Shutdown(shutCtx); err != nil {
		logf("http shutdown: %v", err)
	}
	return nil
}

func describe(v, empty string) string {
	if v == "" {
		return empty
	}
	return v
}

func loadState(path string) (*state, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var st state
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if st.UnsealKey == "" || st.RootToken == "" {
		return nil, fmt.Errorf("%s: incomplete state", path)
	}
	return &st, nil
}

// initAndUnseal initialises a new Vault (or re-opens one kept with -data),
// unseals it and returns the root token to use.
func initAndUnseal(ctx context.Context, core *vault.Core, statePath string, st *state) (string, error) {
	nsctx := namespace.ContextWithNamespace(ctx, namespace.RootNamespace)
	inited, err := core.Initialized(nsctx)
	if err != nil {
		return "", fmt.Errorf("checking initialisation: %w", err)
	}
	wantToken := os.Getenv("VAULTDEV_ROOT_TOKEN")
	if strings.Contains(wantToken, ".") {
		return "", errors.New("VAULTDEV_ROOT_TOKEN must not contain '.': Vault refuses such custom token IDs")
	}

	if inited {
		if st == nil {
			return "", fmt.Errorf("storage is initialised but %s is missing: cannot unseal (delete the data dir to start afresh)", statePath)
		}
		key, err := base64.StdEncoding.DecodeString(st.UnsealKey)
		if err != nil {
			return "", fmt.Errorf("bad unseal key in %s: %w", statePath, err)
		}
		if err := unseal(core, key); err != nil {
			return "", err
		}
		if err := waitActive(ctx, core); err != nil {
			return "", err
		}
		if wantToken != "" && wantToken != st.RootToken {
			// The caller asked for a different root token: create it
			// alongside the old one and remember it.
			if err := createRootToken(nsctx, core, st.RootToken, wantToken); err != nil {
				return "", err
			}
			st.RootToken = wantToken
			if err := saveState(statePath, st); err != nil {
				return "", err
			}
		}
		logf("re-opened and unsealed existing storage")
		return st.RootToken, nil
	}
	if st != nil {
		return "", fmt.Errorf("%s exists but storage is not initialised: delete the data dir to start afresh", statePath)
	}

	barrier := &vault.SealConfig{SecretShares: 1, SecretThreshold: 1}
	if core.SealAccess().StoredKeysSupported() != vaultseal.StoredKeysNotSupported {
		barrier.StoredShares = 1
	}
	res, err := core.Initialize(nsctx, &vault.InitParams{BarrierConfig: barrier})
	if err != nil {
		return "", fmt.Errorf("initialising: %w", err)
	}
	if len(res.SecretShares) != 1 {
		return "", fmt.Errorf("initialising: got %d unseal keys, want 1", len(res.SecretShares))
	}
	key := append([]byte(nil), res.SecretShares[0]...)
	if err := unseal(core, key); err != nil {
		return "", err
	}
	if err := waitActive(ctx, core); err != nil {
		return "", err
	}

	if wantToken == "" {
		wantToken, err = randomToken()
		if err != nil {
			return "", err
		}
	}
	if err := createRootToken(nsctx, core, res.RootToken, wantToken); err != nil {
		return "", err
	}
	// Revoke the generated root token: only the known one remains.
	resp, err := core.HandleRequest(nsctx, &logical.Request{
		Operation:   logical.UpdateOperation,
		ClientToken: res.RootToken,
		Path:        "auth/token/revoke-self",
	})
	if err := respErr(resp, err); err != nil {
		return "", fmt.Errorf("revoking the initial root token: %w", err)
	}
	if statePath != "" {
		if err := saveState(statePath, &state{
			UnsealKey: base64.StdEncoding.EncodeToString(key),
			RootToken: wantToken,
		}); err != nil {
			return "", err
		}
	}
	logf("initialised and unsealed new storage")
	return wantToken, nil
}

func unseal(core *vault.Core, key []byte) error {
	ok, err := core.Unseal(key)
	if err != nil {
		return fmt.Errorf("unsealing: %w", err)
	}
	if !ok {
		return errors.New("unsealing: Vault is still sealed")
	}
	return nil
}

func waitActive(ctx context.Context, core *vault.Core) error {
	for {
		isLeader, _, _, err := core.Leader()
		if errors.Is(err, vault.ErrHANotEnabled) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("checking active status: %w", err)
		}
		if isLeader {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting to become active: %w", ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func createRootToken(ctx context.Context, core *vault.Core, parent, id string) error {
	resp, err := core.HandleRequest(ctx, &logical.Request{
		Operation:   logical.UpdateOperation,
		ClientToken: parent,
		Path:        "auth/token/create",
		Data: map[string]any{
			"id":                id,
			"policies":          []string{"root"},
			"no_parent":         true,
			"no_default_policy": true,
		},
	})
	if err := respErr(resp, err); err != nil {
		return fmt.Errorf("creating the root token: %w", err)
	}
	if resp == nil || resp.Auth == nil || resp.Auth.ClientToken != id {
		return errors.New("creating the root token: unexpected response")
	}
	return nil
}

func randomToken() (string, error) {
	b := make([]byte, 24)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	// Vault refuses custom token IDs containing '.' (so no "hvs." prefix).
	return "vaultdev-" + hex.EncodeToString(b), nil
}

// respErr merges HandleRequest's two error channels: the message of an
// error response is more useful than the bare logical.ErrInvalidRequest
// that comes with it.
func respErr(resp *logical.Response, err error) error {
	if resp != nil && resp.IsError() {
		if err != nil && !errors.Is(resp.Error(), err) {
			return fmt.Errorf("%w: %v", err, resp.Error())
		}
		return resp.Error()
	}
	return err
}

// setup puts the mounts and the audit device in place (idempotently) and
// waits until a KV v2 write succeeds through the HTTP listener.
func setup(ctx context.Context, core *vault.Core, token, addr, auditPath string) error {
	nsctx := namespace.ContextWithNamespace(ctx, namespace.RootNamespace)
	req := func(op logical.Operation, path string, data map[string]any) (*logical.Response, error) {
		resp, err := core.HandleRequest(nsctx, &logical.Request{
			Operation:   op,
			ClientToken: token,
			Path:        path,
			Data:        data,
		})
		return resp, respErr(resp, err)
	}

	resp, err := req(logical.ReadOperation, "sys/mounts", nil)
	if err != nil {
		return fmt.Errorf("listing mounts: %w", err)
	}
	mounts := map[string]any{}
	if resp != nil {
		mounts = resp.Data
	}
	for _, m := range []struct {
		path, typ string
		opts      map[string]string
	}{
		{"secret/", "kv", map[string]string{"version": "2"}},
		{"transit/", "transit", nil},
	} {
		if existing, ok := mounts[m.path]; ok {
			if typ := mountType(existing); typ != m.typ {
				return fmt.Errorf("%s is mounted as %q, want %q", m.path, typ, m.typ)
			}
			continue
		}
		data := map[string]any{"type": m.typ}
		if m.opts != nil {
			data["options"] = m.opts
		}
		if _, err := req(logical.UpdateOperation, "sys/mounts/"+strings.TrimSuffix(m.path, "/"), data); err != nil {
			return fmt.Errorf("mounting %s at %s: %w", m.typ, m.path, err)
		}
	}

	if err := waitKVWrite(ctx, addr, token); err != nil {
		return err
	}

	if auditPath != "" {
		abs, err := filepath.Abs(auditPath)
		if err != nil {
			return err
		}
		resp, err := req(logical.ReadOperation, "sys/audit", nil)
		if err != nil {
			return fmt.Errorf("listing audit devices: %w", err)
		}
		enable := true
		if resp != nil {
			if dev, ok := resp.Data["file/"].(map[string]any); ok {
				opts, _ := dev["options"].(map[string]string)
				if dev["type"] == "file" && opts["file_path"] == abs {
					enable = false
				} else if _, err := req(logical.DeleteOperation, "sys/audit/file", nil); err != nil {
					return fmt.Errorf("disabling old audit device: %w", err)
				}
			}
		}
		if enable {
			if _, err := req(logical.UpdateOperation, "sys/audit/file", map[string]any{
				"type":    "file",
				"options": map[string]string{"file_path": abs, "log_raw": "false", "mode": "0600"},
			}); err != nil {
				return fmt.Errorf("enabling file audit device at %s: %w", abs, err)
			}
		}
	}
	return nil
}

func mountType(v any) string {
	switch m := v.(type) {
	case map[string]any:
		s, _ := m["type"].(string)
		return s
	}
	return ""
}

// waitKVWrite writes (and then destroys) a probe secret through the HTTP
// API until it succeeds: a new KV v2 mount refuses writes for ~0.5 s while
// it upgrades.
func waitKVWrite(ctx context.Context, addr, token string) error {
	const probe = "/v1/secret/data/.vaultdev-ready"
	client := &http.Client{Timeout: 5 * time.Second}
	do := func(method, path, body string) (int, string, error) {
		r, err := http.NewRequestWithContext(ctx, method, addr+path, strings.NewReader(body))
		if err != nil {
			return 0, "", err
		}
		r.Header.Set("X-Vault-Token", token)
		resp, err := client.Do(r)
		if err != nil {
			return 0, "", err
		}
		defer resp.Body.Close()
		var buf [512]byte
		n, _ := resp.Body.Read(buf[:])
		return resp.StatusCode, string(buf[:n]), nil
	}
	var last string
	for {
		code, body, err := do(http.MethodPut, probe, `{"data":{"ready":"yes"}}`)
		if err == nil && code/100 == 2 {
			break
		}
		if err != nil {
			last = err.Error()
		} else {
			last = fmt.Sprintf("HTTP %d: %s", code, strings.TrimSpace(body))
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for a KV v2 write to succeed (last: %s): %w", last, ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
	code, body, err := do(http.MethodDelete, "/v1/secret/metadata/.vaultdev-ready", "")
	if err != nil || code/100 != 2 {
		return fmt.Errorf("deleting the KV probe: %v HTTP %d %s", err, code, body)
	}
	return nil
}

func saveState(path string, st *state) error {
	b, err := json.Marshal(st)
	if err != nil {
		return err
	}
	if err := writeFileAtomic(path, b, 0o600); err != nil {
		return fmt.Errorf("saving state: %w", err)
	}
	return nil
}

// writeFileAtomic writes data to a temporary file in path's directory and
// renames it over path, so readers see either nothing or the whole file.
func writeFileAtomic(path string, data []byte, mode os.FileMode) error {
	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	f, err := os.CreateTemp(dir, "."+base+".tmp*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp) // no-op after a successful rename
	if err := f.Chmod(mode); err != nil {
		f.Close()
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// stdinClosed is the "signal" sent when -exit-on-stdin-eof sees EOF.
type stdinClosed struct{}

func (stdinClosed) String() string { return "end of stdin" }
func (stdinClosed) Signal()        {}

// emptyRegistry is a builtin-plugin registry with nothing in it: the
// backends vaultdev needs are registered directly in the core's config, and
// leaving the real registry out keeps every other Vault plugin out of the
// binary.
type emptyRegistry struct{}

func (emptyRegistry) Contains(string, consts.PluginType) bool { return false }
func (emptyRegistry) Get(string, consts.PluginType) (func() (interface{}, error), bool) {
	return nil, false
}
func (emptyRegistry) Keys(consts.PluginType) []string { return nil }
func (emptyRegistry) DeprecationStatus(string, consts.PluginType) (consts.DeprecationStatus, bool) {
	return consts.Unknown, false
}
