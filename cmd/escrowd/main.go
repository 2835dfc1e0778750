// Command escrowd is the key escrow daemon: it serves escrowd's gRPC API
// over an HSM, a store and a Vault audit trail.
//
// Settings are flags, or keys of a YAML file named by -config (each key a
// flag's name; a flag given on the command line overrides the file; see
// options). -check-config checks them and the files they name, then exits.
// -metrics-listen serves Prometheus metrics on a listener of its own.
//
// Secrets come from files or the environment, never from flags or the
// configuration file:
//
//	ESCROWD_HSM_PIN or -hsm-pin-file     the HSM user PIN
//	VAULT_TOKEN or -vault-token-file     the token that writes audit records
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"go.opentelemetry.io/otel/trace"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/escrowd/escrowd/audit"
	"github.com/escrowd/escrowd/audit/hsmkey"
	"github.com/escrowd/escrowd/daemon"
	"github.com/escrowd/escrowd/escrow"
	"github.com/escrowd/escrowd/hsm"
	"github.com/escrowd/escrowd/internal/config"
	"github.com/escrowd/escrowd/internal/pidfile"
	"github.com/escrowd/escrowd/internal/secret"
	"github.com/escrowd/escrowd/internal/tracing"
	"github.com/escrowd/escrowd/jobs"
	"github.com/escrowd/escrowd/metrics"
	"github.com/escrowd/escrowd/policy"
	"github.com/escrowd/escrowd/store"
	"github.com/escrowd/escrowd/store/bolt"
	"github.com/escrowd/escrowd/store/postgres"
)

// openStore opens the PostgreSQL store for a postgres:// URL, else the
// embedded store at that path. The name it returns is safe to log.
func openStore(spec string) (store.Store, string, error) {
	if strings.HasPrefix(spec, "postgres://") || strings.HasPrefix(spec, "postgresql://") {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		st, err := postgres.Open(ctx, spec)
		name := "postgres"
		if u, perr := url.Parse(spec); perr == nil {
			name = "postgres://" + u.Host + u.Path
		}
		return st, name, err
	}
	st, err := bolt.Open(spec)
	return st, spec, err
}

func main() {
	o, err := parseOptions(os.Args[1:], os.Stderr, os.LookupEnv)
	if errors.Is(err, flag.ErrHelp) {
		return
	}
	if errors.Is(err, errUsage) {
		fmt.Fprintln(os.Stderr, "escrowd:", err)
		os.Exit(2)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "escrowd:", err)
		os.Exit(1)
	}
	if o.checkConfig {
		if err := checkOnly(o); err != nil {
			fmt.Fprintln(os.Stderr, "escrowd:", err)
			os.Exit(1)
		}
		fmt.Println("escrowd: configuration OK")
		return
	}
	if err := run(o); err != nil {
		fmt.Fprintln(os.Stderr, "escrowd:", err)
		os.Exit(1)
	}
}

func newLogger(level, sampling string) (*zap.Logger, error) {
	cfg, err := loggerConfig(level, sampling)
	if err != nil {
		return nil, err
	}
	return cfg.Build()
}

// loggerConfig is zap's production configuration (JSON to stderr) at
// level, with sampling only if -log-sampling asks for it. zap's default
// samples every message past 100 lines a second, and every request line
// has the same message: under load it dropped a third of them.
func loggerConfig(level, sampling string) (zap.Config, error) {
	var l zapcore.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return zap.Config{}, fmt.Errorf("-log-level: %w", err)
	}
	first, thereafter, err := parseSampling(sampling)
	if err != nil {
		return zap.Config{}, fmt.Errorf("-log-sampling: %w", err)
	}
	cfg := zap.NewProductionConfig()
	cfg.Level = zap.NewAtomicLevelAt(l)
	cfg.EncoderConfig.TimeKey = "time"
	cfg.EncoderConfig.EncodeTime = zapcore.ISO8601TimeEncoder
	cfg.Sampling = nil
	if first > 0 {
		cfg.Sampling = &zap.SamplingConfig{Initial: first, Thereafter: thereafter}
	}
	return cfg, nil
}

// orNone is a rate setting as daemon.Config takes it: 0 (no bound) is
// negative there, where 0 means the default.
func orNone(perSecond int) float64 {
	if perSecond == 0 {
		return -1
	}
	return float64(perSecond)
}

// metricsMux serves /metrics and nothing else.
func metricsMux(m *metrics.Metrics) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", m.Handler())
	return mux
}

// loadPolicy reads and checks the policy file.
func loadPolicy(path string) (*policy.Policy, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("failed to read the policy: %w", err)
	}
	return policy.Parse(path, b, daemon.Operations())
}

// prepared is what start-up reads from the files the settings name.
type prepared struct {
	policy     *policy.Policy
	cert       tls.Certificate
	clientCAs  *x509.CertPool
	caCerts    []*x509.Certificate
	crl        *daemon.Revocations
	pin        string
	vaultToken string
}

// prepare loads the policy, the server certificate, the client CAs and
// the secrets. Errors name the setting; none quotes a secret.
func prepare(o *options) (*prepared, error) {
	p := &prepared{}
	var err error
	if p.policy, err = loadPolicy(o.policyPath); err != nil {
		return nil, err
	}
	if p.cert, err = loadServerCert(o); err != nil {
		return nil, err
	}
	if p.clientCAs, p.caCerts, err = loadClientCAs(o); err != nil {
		return nil, err
	}
	if p.crl, err = loadCRL(o, p.caCerts); err != nil {
		return nil, err
	}
	if p.pin, err = o.loadSecret("HSM user PIN", "hsm-pin-file", o.hsmPINFile, "ESCROWD_HSM_PIN"); err != nil {
		return nil, err
	}
	if p.vaultToken, err = o.loadSecret("Vault token", "vault-token-file", o.vaultTokenFile, "VAULT_TOKEN"); err != nil {
		return nil, err
	}
	return p, nil
}

// reload is SIGHUP: the policy, the server certificate and key, the
// client CAs and the client CRL, each on its own. A file that does not
// load is logged and what was in force stays. The CRL is checked against
// the client CAs in force after the reload. It returns those CAs.
func reload(o *options, srv *daemon.Server, cas []*x509.Certificate, log *zap.Logger) []*x509.Certificate {
	if p, err := loadPolicy(o.policyPath); err != nil {
		log.Error("policy reload refused; the previous policy stays in force", zap.Error(err))
	} else {
		srv.SetPolicy(p)
		log.Info("policy reloaded", zap.String("file", o.policyPath))
	}
	if cert, err := loadServerCert(o); err != nil {
		log.Error("server certificate reload refused; the previous one stays in force", zap.Error(err))
	} else {
		srv.SetCredentials(&cert, nil)
		fields := []zap.Field{zap.String("file", o.tlsCert)}
		if cert.Leaf != nil {
			fields = append(fields, zap.Time("not_after", cert.Leaf.NotAfter))
		}
		log.Info("server certificate reloaded", fields...)
	}
	if pool, certs, err := loadClientCAs(o); err != nil {
		log.Error("client CA reload refused; the previous CAs stay in force", zap.Error(err))
	} else {
		srv.SetCredentials(nil, pool)
		cas = certs
		log.Info("client CAs reloaded", zap.String("file", o.clientCA), zap.Int("cas", len(certs)))
	}
	if o.clientCRL != "" {
		r, err := loadCRL(o, cas)
		if err == nil {
			err = r.NotOlder(srv.Revocations())
		}
		if err != nil {
			log.Error("client CRL reload refused; the previous CRL stays in force", zap.Error(err))
		} else {
			srv.SetRevocations(r)
			log.Info("client CRL reloaded", zap.String("file", o.clientCRL), zap.Int("crls", r.Len()))
		}
	}
	return cas
}

// loadServerCert reads -tls-cert and -tls-key.
func loadServerCert(o *options) (tls.Certificate, error) {
	cert, err := tls.LoadX509KeyPair(o.tlsCert, o.tlsKey)
	if err != nil {
		return cert, fmt.Errorf("failed to load the server certificate (-tls-cert, -tls-key): %w", err)
	}
	return cert, nil
}

// loadClientCAs reads -client-ca.
func loadClientCAs(o *options) (*x509.CertPool, []*x509.Certificate, error) {
	caPEM, err := os.ReadFile(o.clientCA)
	if err != nil {
		return nil, nil, fmt.Errorf("failed to read -client-ca: %w", err)
	}
	certs, err := parseCerts(caPEM)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", o.where("client-ca"), err)
	}
	if len(certs) == 0 {
		return nil, nil, fmt.Errorf("%s: %s holds no PEM certificate", o.where("client-ca"), o.quote("client-ca", o.clientCA))
	}
	pool := x509.NewCertPool()
	for _, c := range certs {
		pool.AddCert(c)
	}
	return pool, certs, nil
}

// parseCerts reads every certificate of a PEM bundle.
func parseCerts(b []byte) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			return certs, nil
		}
		if blk.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, err
		}
		certs = append(certs, c)
	}
}

// loadCRL reads -client-crl, if set, and checks it against the client
// CAs: nil when unset.
func loadCRL(o *options, cas []*x509.Certificate) (*daemon.Revocations, error) {
	if o.clientCRL == "" {
		return nil, nil
	}
	b, err := os.ReadFile(o.clientCRL)
	if err != nil {
		return nil, fmt.Errorf("failed to read -client-crl: %w", err)
	}
	r, err := daemon.ParseCRLs(b, cas, time.Now())
	if err != nil {
		return nil, fmt.Errorf("%s: %w", o.where("client-crl"), err)
	}
	return r, nil
}

// loadSecret reads a secret from the file the setting key names, else the
// environment. A file name the environment made is not printed.
func (o *options) loadSecret(what, key, path, env string) (string, error) {
	s, err := secret.Load(what, path, env)
	if err != nil && path != "" && o.from[key].FromEnv {
		return "", fmt.Errorf("%s: %w: the %s file cannot be read (its name came from the environment, so it is not shown)", o.where(key), config.ErrInvalid, what)
	}
	return s, err
}

// checkOnly is -check-config: everything start-up checks before it opens
// the HSM, the store and Vault.
func checkOnly(o *options) error {
	p, err := prepare(o)
	if err != nil {
		return err
	}
	p.pin, p.vaultToken = "", ""
	if _, err := newLogger(o.logLevel, o.logSampling); err != nil {
		return err
	}
	return nil
}

func run(o *options) error {
	log, err := newLogger(o.logLevel, o.logSampling)
	if err != nil {
		return err
	}
	defer log.Sync() //nolint:errcheck

	p, err := prepare(o)
	if err != nil {
		return err
	}
	pin, vaultToken := p.pin, p.vaultToken
	p.pin, p.vaultToken = "", ""
	// Children of this process have no business with these.
	os.Unsetenv("ESCROWD_HSM_PIN")
	os.Unsetenv("VAULT_TOKEN")

	// The pid file, before anything else opens: a second escrowd on it
	// stops here. Removed when run returns (every exit but a kill).
	if o.pidFile != "" {
		pf, err := pidfile.Acquire(o.pidFile)
		if err != nil {
			return err
		}
		defer func() {
			if err := pf.Release(); err != nil {
				log.Warn("failed to remove the pid file", zap.String("file", pf.Path()), zap.Error(err))
			}
		}()
	}

	// Metrics are off unless -metrics-listen is given; the observers stay
	// nil then (each package has its own no-op).
	var (
		hsmObs    hsm.Observer
		auditObs  audit.Observer
		daemonObs daemon.Observer
		metricsLn net.Listener
		mtr       *metrics.Metrics
	)
	if o.metricsListen != "" {
		if metricsLn, err = net.Listen("tcp", o.metricsListen); err != nil {
			return fmt.Errorf("failed to listen on -metrics-listen: %w", err)
		}
		mtr = metrics.New(metrics.Labels{Methods: daemon.Methods(), HSMOps: hsm.Ops(), Dependencies: []string{"hsm", "vault"},
			HandshakeReasons: daemon.HandshakeReasons()})
		hsmObs, auditObs, daemonObs = mtr, mtr, mtr
	}

	// Tracing is off unless -otlp-endpoint is given.
	tp, stopTracing, err := tracing.New(context.Background(), tracing.Config{Endpoint: o.otlpEndpoint, Insecure: o.otlpInsecure, SampleRatio: o.traceSample})
	if err != nil {
		return err
	}
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := stopTracing(ctx); err != nil {
			log.Warn("failed to flush the last traces", zap.Error(err))
		}
	}()

	h, err := hsm.Open(hsm.Config{
		Module: o.hsmModule, TokenLabel: o.hsmToken, PIN: pin,
		Sessions: o.hsmSessions, KEKLabel: o.kekLabel, AllowPublicKEK: o.allowPublicKEK, Observer: hsmObs,
		HotKeys: o.hsmHotKeys, HotSlots: o.hsmHotSlots, HotKeyTTL: o.hsmHotKeyTTL,
	})
	pin = ""
	if err != nil {
		return fmt.Errorf("failed to open the HSM: %w", err)
	}
	defer h.Close()
	if o.allowPublicKEK {
		log.Warn("-hsm-allow-public-kek: a public master KEK is accepted; SoftHSM keeps it in clear in the token directory. Move the keys to a private KEK and drop the flag (docs/LIFECYCLE.md)")
	}

	st, storeName, err := openStore(o.storePath)
	if err != nil {
		return err
	}
	defer st.Close()

	anchor, _ := st.(audit.Anchor) // both stores keep the trail's head
	aud, err := newAuditor(o, vaultToken, log, auditObs, hsmkey.Keyer{HSM: h}, anchor)
	vaultToken = ""
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	err = aud.Healthy(ctx)
	cancel()
	if err != nil {
		// Fail at start rather than serve requests that can only fail.
		return fmt.Errorf("audit trail at Vault %s: %w", o.vaultAddr, err)
	}

	// With tracing on, escrow and the daemon see the HSM, the store and
	// the audit trail through wrappers that make a span of each call; the
	// job runner keeps the plain ones.
	var (
		escHSM   escrow.HSM     = h
		escStore store.Store    = st
		auditor  daemon.Auditor = aud
		tprov    trace.TracerProvider
	)
	if tp != nil {
		escHSM, escStore, auditor, tprov = tracing.HSM(h, tp), tracing.Store(st, tp), tracing.Audit(aud, tp), tp
		log.Info("tracing on", zap.String("otlp_endpoint", o.otlpEndpoint), zap.Float64("sample_ratio", o.traceSample))
	}
	svc, err := escrow.New(escHSM, escStore, escrow.Config{DefaultSuite: o.defaultSuite})
	if err != nil {
		return err
	}
	defer aud.Close()
	runner := jobs.New(st, svc, h, jobs.Config{Lease: o.jobLease, Poll: o.jobPoll, Batch: o.jobBatch, Logger: log})
	if err := startKEK(h, runner, log); err != nil {
		return err
	}
	srv, err := daemon.New(daemon.Config{
		Escrow: svc, Auditor: auditor, Objects: h, Versions: svc, Jobs: runner, State: escStore, Policy: p.policy,
		TLS: &tls.Config{Certificates: []tls.Certificate{p.cert}}, ClientCAs: p.clientCAs, Revocations: p.crl,
		Checks:               map[string]daemon.Checker{"hsm": h, "vault": aud},
		Logger:               log,
		AuditTimeout:         o.auditTimeout,
		OutcomeBeforeRelease: o.auditOutcomeBeforeRelease,
		Observer:             daemonObs,
		Events:               st,
		TracerProvider:       tprov,

		MaxRecvMsgSize:       o.maxRecvMsgSize,
		MaxConcurrentStreams: uint32(o.maxConcurrentStreams),
		MaxConnections:       o.maxConnections,
		HandshakeTimeout:     o.handshakeTimeout,
		HandshakeFailureRate: orNone(o.handshakeFailureRate),
		RefusalRate:          orNone(o.refusalRate),
	})
	if err != nil {
		return err
	}
	lis, err := net.Listen("tcp", o.listen)
	if err != nil {
		return fmt.Errorf("failed to listen: %w", err)
	}
	var healthLn net.Listener
	if o.healthListen != "" {
		if healthLn, err = net.Listen("tcp", o.healthListen); err != nil {
			lis.Close()
			return fmt.Errorf("failed to listen on -health-listen: %w", err)
		}
	}
	log.Info("escrowd serving", zap.String("addr", lis.Addr().String()), zap.String("hsm_token", o.hsmToken),
		zap.String("store", storeName), zap.String("vault", o.vaultAddr), zap.String("job_owner", runner.Owner()))

	if metricsLn != nil {
		msrv := &http.Server{Handler: metricsMux(mtr), ReadHeaderTimeout: 10 * time.Second}
		go func() {
			if err := msrv.Serve(metricsLn); err != nil && !errors.Is(err, http.ErrServerClosed) {
				log.Error("metrics listener stopped", zap.Error(err))
			}
		}()
		// Closed once the drain and the jobs are done, before the audit
		// writer and the HSM close: a scrape still sees the drain.
		defer msrv.Close()
		log.Info("metrics serving", zap.String("addr", metricsLn.Addr().String()), zap.String("path", "/metrics"))
	}

	jctx, jcancel := context.WithCancel(context.Background())
	jdone := make(chan struct{})
	go func() {
		defer close(jdone)
		runner.Run(jctx)
	}()
	defer func() {
		jcancel()
		<-jdone
	}()
	pdone := make(chan struct{})
	go func() {
		defer close(pdone)
		pruneEvents(jctx, st, pruneEvery, o.eventRetention, o.eventMax, time.Now, log)
	}()
	defer func() {
		jcancel()
		<-pdone
	}()

	sigs, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	errc := make(chan error, 2)
	go func() { errc <- srv.Serve(lis) }()
	if healthLn != nil {
		go func() {
			if err := srv.ServeHealth(healthLn); err != nil {
				errc <- fmt.Errorf("health listener: %w", err)
			}
		}()
		log.Info("health serving", zap.String("addr", healthLn.Addr().String()), zap.String("protocol", "gRPC health, no TLS"))
	}
	for running := true; running; {
		select {
		case err := <-errc:
			return err
		case <-hup:
			p.caCerts = reload(o, srv, p.caCerts, log)
		case <-sigs.Done():
			running = false
		}
	}
	log.Info("shutting down: draining requests", zap.Duration("timeout", o.shutdownTimeout))
	sctx, scancel := context.WithTimeout(context.Background(), o.shutdownTimeout)
	defer scancel()
	srv.Shutdown(sctx)
	return <-errc
}

// startKEK reports every master KEK version on the token, loudly for those
// refused, and switches to the KEK the operator chose (the target of the
// last kek-rotation job) before any request is served.
func startKEK(h *hsm.HSM, runner *jobs.Runner, log *zap.Logger) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	states, err := h.KEKStates(ctx)
	if err != nil {
		return fmt.Errorf("master KEK: %w", err)
	}
	for _, st := range states {
		switch {
		case !st.Usable:
			log.Error("master KEK refused: never used", zap.Uint32("kek_version", st.Version), zap.String("label", st.Label), zap.String("why", st.Problem))
		case st.Public:
			log.Warn("master KEK is a public object, kept in clear by SoftHSM: accepted only because of -hsm-allow-public-kek", zap.Uint32("kek_version", st.Version), zap.String("label", st.Label))
		case st.Problem != "":
			log.Error("objects carrying a master KEK's label were refused", zap.Uint32("kek_version", st.Version), zap.String("why", st.Problem))
		}
	}
	if err := runner.FollowKEK(ctx); err != nil {
		return fmt.Errorf("master KEK: %w", err)
	}
	log.Info("new keys go under master KEK version", zap.Uint32("kek_version", h.CurrentKEK()))
	return nil
}
