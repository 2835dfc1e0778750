// Command escrowd is the key escrow daemon: it serves escrowd's gRPC API
// over an HSM, a store and a Vault audit trail.
//
// Secrets come from files or the environment, never from flags:
//
//	ESCROWD_HSM_PIN or -hsm-pin-file     the HSM user PIN
//	VAULT_TOKEN or -vault-token-file     the token that writes audit records
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"flag"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/escrowd/escrowd/daemon"
	"github.com/escrowd/escrowd/escrow"
	"github.com/escrowd/escrowd/hsm"
	"github.com/escrowd/escrowd/internal/secret"
	"github.com/escrowd/escrowd/jobs"
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

type options struct {
	listen          string
	tlsCert         string
	tlsKey          string
	clientCA        string
	policyPath      string
	storePath       string
	hsmModule       string
	hsmToken        string
	hsmPINFile      string
	hsmSessions     int
	kekLabel        string
	vaultAddr       string
	vaultTokenFile  string
	auditMount      string
	auditPrefix     string
	auditTimeout    time.Duration
	auditMaxBatch   int
	defaultSuite    string
	logLevel        string
	shutdownTimeout time.Duration
	jobLease        time.Duration
	jobPoll         time.Duration
	jobBatch        int
}

func main() {
	var o options
	fs := flag.NewFlagSet("escrowd", flag.ExitOnError)
	fs.StringVar(&o.listen, "listen", "127.0.0.1:7420", "gRPC listen address")
	fs.StringVar(&o.tlsCert, "tls-cert", "", "server certificate, PEM (required)")
	fs.StringVar(&o.tlsKey, "tls-key", "", "server private key, PEM (required)")
	fs.StringVar(&o.clientCA, "client-ca", "", "CA certificates that sign client certificates, PEM (required)")
	fs.StringVar(&o.policyPath, "policy", "", "policy file (required); SIGHUP reloads it")
	fs.StringVar(&o.storePath, "store", "escrowd.db", "embedded store file, or a postgres:// URL for the PostgreSQL store (several replicas)")
	fs.StringVar(&o.hsmModule, "hsm-module", "/usr/lib/softhsm/libsofthsm2.so", "PKCS#11 module path")
	fs.StringVar(&o.hsmToken, "hsm-token", "", "HSM token label (required)")
	fs.StringVar(&o.hsmPINFile, "hsm-pin-file", "", "file holding the HSM user PIN (else $ESCROWD_HSM_PIN)")
	fs.IntVar(&o.hsmSessions, "hsm-sessions", 4, "HSM session pool size")
	fs.StringVar(&o.kekLabel, "kek-label", "escrowd-kek", "master KEK label on the token")
	fs.StringVar(&o.vaultAddr, "vault-addr", os.Getenv("VAULT_ADDR"), "Vault address (default $VAULT_ADDR)")
	fs.StringVar(&o.vaultTokenFile, "vault-token-file", "", "file holding the Vault token (else $VAULT_TOKEN)")
	fs.StringVar(&o.auditMount, "audit-mount", "secret", "Vault KV v2 mount for audit records")
	fs.StringVar(&o.auditPrefix, "audit-prefix", "escrowd/audit", "folder under the mount for audit records")
	fs.DurationVar(&o.auditTimeout, "audit-timeout", 5*time.Second, "bound on one audit commit; past it the request fails closed")
	fs.IntVar(&o.auditMaxBatch, "audit-max-batch", 512, "most records in one Vault write (group commit); 1 makes one write per request")
	fs.StringVar(&o.defaultSuite, "default-suite", "ecdh-p256", "escrow key suite of new groups: ecdh-p256 (milliseconds to provision), rsa-oaep-sha1 (SoftHSM) or rsa-oaep-sha256 (hardware HSMs), about a second each")
	fs.StringVar(&o.logLevel, "log-level", "info", "debug, info, warn or error")
	fs.DurationVar(&o.shutdownTimeout, "shutdown-timeout", 15*time.Second, "how long running requests may finish on SIGTERM")
	fs.DurationVar(&o.jobLease, "job-lease", 15*time.Second, "lease of a running job: another replica takes it over this long after its runner died")
	fs.DurationVar(&o.jobPoll, "job-poll", 2*time.Second, "how often to look for jobs to run")
	fs.IntVar(&o.jobBatch, "job-batch", 100, "groups per job checkpoint")
	_ = fs.Parse(os.Args[1:])

	if err := run(o); err != nil {
		fmt.Fprintln(os.Stderr, "escrowd:", err)
		os.Exit(1)
	}
}

func newLogger(level string) (*zap.Logger, error) {
	var l zapcore.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("-log-level: %w", err)
	}
	cfg := zap.NewProductionConfig()
	cfg.Level = zap.NewAtomicLevelAt(l)
	cfg.EncoderConfig.TimeKey = "time"
	cfg.EncoderConfig.EncodeTime = zapcore.ISO8601TimeEncoder
	return cfg.Build()
}

// loadPolicy reads and checks the policy file.
func loadPolicy(path string) (*policy.Policy, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("failed to read the policy: %w", err)
	}
	return policy.Parse(path, b, daemon.Operations())
}

func run(o options) error {
	log, err := newLogger(o.logLevel)
	if err != nil {
		return err
	}
	defer log.Sync() //nolint:errcheck

	for _, f := range []struct{ name, val string }{
		{"-hsm-token", o.hsmToken}, {"-tls-cert", o.tlsCert}, {"-tls-key", o.tlsKey},
		{"-client-ca", o.clientCA}, {"-policy", o.policyPath},
	} {
		if f.val == "" {
			return fmt.Errorf("%s is required", f.name)
		}
	}
	pol, err := loadPolicy(o.policyPath)
	if err != nil {
		return err
	}
	cert, err := tls.LoadX509KeyPair(o.tlsCert, o.tlsKey)
	if err != nil {
		return fmt.Errorf("failed to load the server certificate: %w", err)
	}
	caPEM, err := os.ReadFile(o.clientCA)
	if err != nil {
		return fmt.Errorf("failed to read -client-ca: %w", err)
	}
	clientCAs := x509.NewCertPool()
	if !clientCAs.AppendCertsFromPEM(caPEM) {
		return fmt.Errorf("-client-ca %s holds no PEM certificate", o.clientCA)
	}
	pin, err := secret.Load("HSM user PIN", o.hsmPINFile, "ESCROWD_HSM_PIN")
	if err != nil {
		return err
	}
	vaultToken, err := secret.Load("Vault token", o.vaultTokenFile, "VAULT_TOKEN")
	if err != nil {
		return err
	}
	// Children of this process have no business with these.
	os.Unsetenv("ESCROWD_HSM_PIN")
	os.Unsetenv("VAULT_TOKEN")

	h, err := hsm.Open(hsm.Config{
		Module: o.hsmModule, TokenLabel: o.hsmToken, PIN: pin,
		Sessions: o.hsmSessions, KEKLabel: o.kekLabel,
	})
	pin = ""
	if err != nil {
		return fmt.Errorf("failed to open the HSM: %w", err)
	}
	defer h.Close()

	st, storeName, err := openStore(o.storePath)
	if err != nil {
		return err
	}
	defer st.Close()

	aud, err := newAuditor(o, vaultToken, log)
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

	svc, err := escrow.New(h, st, escrow.Config{DefaultSuite: o.defaultSuite})
	if err != nil {
		return err
	}
	defer aud.Close()
	runner := jobs.New(st, svc, h, jobs.Config{Lease: o.jobLease, Poll: o.jobPoll, Batch: o.jobBatch, Logger: log})
	srv, err := daemon.New(daemon.Config{
		Escrow: svc, Auditor: aud, Objects: h, Versions: svc, Jobs: runner, State: st, Policy: pol,
		TLS: &tls.Config{Certificates: []tls.Certificate{cert}}, ClientCAs: clientCAs,
		Checks:       map[string]daemon.Checker{"hsm": h, "vault": aud},
		Logger:       log,
		AuditTimeout: o.auditTimeout,
	})
	if err != nil {
		return err
	}
	lis, err := net.Listen("tcp", o.listen)
	if err != nil {
		return fmt.Errorf("failed to listen: %w", err)
	}
	log.Info("escrowd serving", zap.String("addr", lis.Addr().String()), zap.String("hsm_token", o.hsmToken),
		zap.String("store", storeName), zap.String("vault", o.vaultAddr), zap.String("job_owner", runner.Owner()))

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

	sigs, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(lis) }()
	for running := true; running; {
		select {
		case err := <-errc:
			return err
		case <-hup:
			p, err := loadPolicy(o.policyPath)
			if err != nil {
				log.Error("policy reload refused; the previous policy stays in force", zap.Error(err))
				continue
			}
			srv.SetPolicy(p)
			log.Info("policy reloaded", zap.String("file", o.policyPath))
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
