package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap/zapcore"

	"github.com/escrowd/escrowd/daemon"
	"github.com/escrowd/escrowd/escrow/bundle"
	"github.com/escrowd/escrowd/hsm"
	"github.com/escrowd/escrowd/internal/config"
	"github.com/escrowd/escrowd/store"
)

// options are escrowd's settings. Every one is a flag, and every flag but
// -config and -check-config is also a key of the configuration file, with
// the flag's name as the key.
//
// Precedence, highest first: a flag given on the command line, the
// configuration file, the environment default of -vault-addr ($VAULT_ADDR),
// the built-in default.
type options struct {
	listen                    string
	metricsListen             string
	healthListen              string
	tlsCert                   string
	tlsKey                    string
	clientCA                  string
	clientCRL                 string
	policyPath                string
	storePath                 string
	hsmModule                 string
	hsmToken                  string
	hsmPINFile                string
	hsmSessions               int
	hsmHotKeys                int
	hsmHotSlots               int
	hsmHotKeyTTL              time.Duration
	kekLabel                  string
	allowPublicKEK            bool
	vaultAddr                 string
	vaultTokenFile            string
	auditMount                string
	auditPrefix               string
	auditTimeout              time.Duration
	auditMaxBatch             int
	auditLinger               time.Duration
	auditOutcomeBeforeRelease bool
	defaultSuite              string
	logLevel                  string
	shutdownTimeout           time.Duration
	jobLease                  time.Duration
	jobPoll                   time.Duration
	jobBatch                  int
	pidFile                   string
	otlpEndpoint              string
	otlpInsecure              bool
	traceSample               float64
	eventRetention            time.Duration
	eventMax                  int
	logSampling               string

	maxRecvMsgSize       int
	maxConcurrentStreams int
	maxConnections       int
	handshakeTimeout     time.Duration
	handshakeFailureRate int
	refusalRate          int

	configPath  string
	checkConfig bool

	// from says where a setting read from the file came from; settings
	// absent from it came from a flag or a default.
	from map[string]config.Setting

	// auditAcceptTruncation: go on after the anchored head when the trail
	// in Vault ends below it (docs/OPERATIONS.md).
	auditAcceptTruncation bool
}

// errUsage: the command line itself is malformed (exit status 2, as the
// flag package has it). Every other refusal to start exits 1.
var errUsage = errors.New("usage")

// notInFile are the flags the configuration file cannot set.
var notInFile = map[string]bool{"config": true, "check-config": true}

func newFlagSet(o *options) *flag.FlagSet {
	fs := flag.NewFlagSet("escrowd", flag.ContinueOnError)
	fs.StringVar(&o.configPath, "config", "", "YAML configuration file; its keys are these flags' names, and a flag given here overrides the file (docs/OPERATIONS.md)")
	fs.BoolVar(&o.checkConfig, "check-config", false, "check the flags, the configuration file and the files they name, then exit: 0 if all is well")
	fs.StringVar(&o.listen, "listen", "127.0.0.1:7420", "gRPC listen address")
	fs.StringVar(&o.metricsListen, "metrics-listen", "", "address of the Prometheus /metrics listener, plain HTTP, e.g. 127.0.0.1:9420 (default off)")
	fs.StringVar(&o.healthListen, "health-listen", "", "address of a gRPC health listener without TLS, for probes that have no client certificate, e.g. 127.0.0.1:7421 (default off: health only on -listen, with a certificate)")
	fs.IntVar(&o.maxRecvMsgSize, "max-recv-msg-size", daemon.DefaultMaxRecvMsgSize, "largest request message, in bytes; a larger one is refused RESOURCE_EXHAUSTED")
	fs.IntVar(&o.maxConcurrentStreams, "max-concurrent-streams", daemon.DefaultMaxConcurrentStreams, "RPCs one connection may run at once")
	fs.IntVar(&o.maxConnections, "max-connections", daemon.DefaultMaxConnections, "connections open at once on -listen; more wait in the kernel's accept queue")
	fs.DurationVar(&o.handshakeTimeout, "handshake-timeout", daemon.DefaultHandshakeTimeout, "time a connection has for its TLS handshake and HTTP/2 set-up")
	fs.IntVar(&o.handshakeFailureRate, "handshake-failure-rate", daemon.DefaultHandshakeFailureRate, "failed TLS handshakes a second -listen absorbs; past it, it accepts new connections only at this rate (0: no bound)")
	fs.IntVar(&o.refusalRate, "refusal-rate", daemon.DefaultRefusalRate, "refused requests a second one caller is answered at once; past it, each waits its turn (0: no pacing)")
	fs.StringVar(&o.tlsCert, "tls-cert", "", "server certificate, PEM (required)")
	fs.StringVar(&o.tlsKey, "tls-key", "", "server private key, PEM (required)")
	fs.StringVar(&o.clientCA, "client-ca", "", "CA certificates that sign client certificates, PEM (required)")
	fs.StringVar(&o.clientCRL, "client-crl", "", "CRLs of the client CAs, PEM (one or more) or DER (one), each signed by a CA of -client-ca; checked at every handshake and request; past a CRL's nextUpdate every client is refused; SIGHUP reloads it (default off: no revocation)")
	fs.StringVar(&o.policyPath, "policy", "", "policy file (required); SIGHUP reloads it")
	fs.StringVar(&o.storePath, "store", "escrowd.db", "embedded store file, or a postgres:// URL for the PostgreSQL store (several replicas)")
	fs.StringVar(&o.hsmModule, "hsm-module", "/usr/lib/softhsm/libsofthsm2.so", "PKCS#11 module path")
	fs.StringVar(&o.hsmToken, "hsm-token", "", "HSM token label (required)")
	fs.StringVar(&o.hsmPINFile, "hsm-pin-file", "", "file holding the HSM user PIN (else $ESCROWD_HSM_PIN)")
	fs.IntVar(&o.hsmSessions, "hsm-sessions", 4, "HSM session pool size")
	fs.IntVar(&o.hsmHotKeys, "hsm-hot-keys", 64, "unwrapped escrow keys each HSM session keeps inside the token, so that re-wraps of one group in a row unwrap its key once (0: none; docs/HSM.md, \"Hot escrow keys\")")
	fs.IntVar(&o.hsmHotSlots, "hsm-hot-slots", 0, "opened escrow slots (the GDK and its binding key) each HSM session keeps inside the token, so that re-wraps of the same slot in a row open and check it once (0, the default: none; docs/HSM.md, \"Hot slots\")")
	fs.DurationVar(&o.hsmHotKeyTTL, "hsm-hot-key-ttl", hsm.DefaultHotKeyTTL, "longest an unwrapped escrow key or an opened slot is kept inside the token after it was unwrapped or opened")
	fs.StringVar(&o.kekLabel, "kek-label", "escrowd-kek", "master KEK label on the token")
	fs.BoolVar(&o.allowPublicKEK, "hsm-allow-public-kek", false, "accept a public master KEK, as `escrowctl hsm init` made it before KEKs were private: SoftHSM keeps it in clear in the token directory. Development, and migrating such a token (docs/LIFECYCLE.md), only")
	fs.StringVar(&o.vaultAddr, "vault-addr", os.Getenv("VAULT_ADDR"), "Vault address (default $VAULT_ADDR)")
	fs.StringVar(&o.vaultTokenFile, "vault-token-file", "", "file holding the Vault token (else $VAULT_TOKEN)")
	fs.StringVar(&o.auditMount, "audit-mount", "secret", "Vault KV v2 mount for audit records")
	fs.StringVar(&o.auditPrefix, "audit-prefix", "escrowd/audit", "folder under the mount for audit records")
	fs.DurationVar(&o.auditTimeout, "audit-timeout", 5*time.Second, "bound on one audit commit; past it the request fails closed")
	fs.IntVar(&o.auditMaxBatch, "audit-max-batch", 512, "most records in one Vault write (group commit); 1 makes one write per request")
	fs.BoolVar(&o.auditOutcomeBeforeRelease, "audit-outcome-before-release", false, "a reveal's code leaves only once its outcome record is written too, not only its intent, and a re-wrap keeps one record written after its HSM work: one more Vault write of latency per reveal, and an open intent then always means nothing was returned (docs/AUDIT.md, \"When the outcome is written\")")
	fs.DurationVar(&o.auditLinger, "audit-linger", 0, "how long a Vault write waits for more records once it has one (0: it takes what queued while the last write ran); trades latency for fewer, larger writes")
	fs.BoolVar(&o.auditAcceptTruncation, "audit-accept-truncation", false, "when the audit trail in Vault ends below the head the store anchors, go on after the anchored head instead of refusing (after the incident is recorded: docs/OPERATIONS.md)")
	fs.StringVar(&o.defaultSuite, "default-suite", "ecdh-p256", "escrow key suite of new groups: ecdh-p256 (milliseconds to provision), rsa-oaep-sha1 (SoftHSM) or rsa-oaep-sha256 (hardware HSMs), about a second each")
	fs.StringVar(&o.logLevel, "log-level", "info", "debug, info, warn or error")
	fs.StringVar(&o.logSampling, "log-sampling", "off", "off: every log line is written; FIRST:THEREAFTER, e.g. 100:100: each second, of the lines with one message and level, the first FIRST and then every THEREAFTER-th (request lines included)")
	fs.DurationVar(&o.shutdownTimeout, "shutdown-timeout", 15*time.Second, "how long running requests may finish on SIGTERM")
	fs.DurationVar(&o.jobLease, "job-lease", 15*time.Second, "lease of a running job: another replica takes it over this long after its runner died")
	fs.DurationVar(&o.jobPoll, "job-poll", 2*time.Second, "how often to look for jobs to run")
	fs.IntVar(&o.jobBatch, "job-batch", 100, "groups per job checkpoint")
	fs.DurationVar(&o.eventRetention, "event-retention", store.DefaultEventRetention, "how long the event feed (SyncService.ListEvents) keeps an event; older ones are pruned every hour")
	fs.IntVar(&o.eventMax, "event-max", store.DefaultEventMax, "most events the feed keeps; the oldest beyond are pruned every hour (0: no bound but event-retention)")
	fs.StringVar(&o.otlpEndpoint, "otlp-endpoint", "", "OpenTelemetry collector (OTLP over gRPC), host:port: traces every request, its policy decision, store and HSM calls and audit commit (default off)")
	fs.BoolVar(&o.otlpInsecure, "otlp-insecure", false, "send traces to otlp-endpoint without TLS (a collector on loopback or a sidecar)")
	fs.Float64Var(&o.traceSample, "trace-sample-ratio", 1, "share of requests traced when the caller sent no sampling decision, in (0, 1]")
	fs.StringVar(&o.pidFile, "pid-file", "", "file to write escrowd's process id to, locked while it runs and removed on exit (default none); a second escrowd on the same file refuses to start")
	return fs
}

// parseOptions reads the command line and, if -config names one, the
// configuration file, then checks every setting. lookupEnv resolves the
// file's ${NAME} references. Usage and flag errors go to stderr.
func parseOptions(args []string, stderr io.Writer, lookupEnv func(string) (string, bool)) (*options, error) {
	o := &options{from: map[string]config.Setting{}}
	fs := newFlagSet(o)
	fs.SetOutput(stderr)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil, err
		}
		return nil, fmt.Errorf("%w: %w", errUsage, err)
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("%w: unexpected argument %q: every setting is a flag", errUsage, fs.Arg(0))
	}
	if o.configPath != "" {
		if err := o.applyFile(fs, lookupEnv); err != nil {
			return nil, err
		}
	}
	if err := o.check(); err != nil {
		return nil, err
	}
	return o, nil
}

// applyFile sets every flag the file names and the command line did not.
func (o *options) applyFile(fs *flag.FlagSet, lookupEnv func(string) (string, bool)) error {
	data, err := os.ReadFile(o.configPath)
	if err != nil {
		return fmt.Errorf("-config: %w", err)
	}
	known := func(k string) bool { return !notInFile[k] && fs.Lookup(k) != nil }
	settings, err := config.Parse(o.configPath, data, known, lookupEnv)
	if err != nil {
		return err
	}
	explicit := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { explicit[f.Name] = true })
	for _, s := range settings {
		if explicit[s.Key] {
			continue
		}
		o.from[s.Key] = s
		if err := fs.Set(s.Key, s.Value); err != nil {
			return &config.Error{File: o.configPath, Line: s.Line, Key: s.Key, Reason: "not " + kindOf(fs.Lookup(s.Key))}
		}
	}
	return nil
}

// kindOf describes the values a flag takes.
func kindOf(f *flag.Flag) string {
	switch f.Value.(flag.Getter).Get().(type) {
	case time.Duration:
		return "a duration (such as 5s, 2m or 1h30m)"
	case int:
		return "a whole number"
	case bool:
		return "true or false"
	}
	return "a valid value"
}

// where names a setting in an error: the file and line it came from, or
// its flag.
func (o *options) where(key string) string {
	if s, ok := o.from[key]; ok {
		return fmt.Sprintf("%s:%d: %s", o.configPath, s.Line, key)
	}
	return "-" + key
}

// quote shows a setting's value in an error, unless the environment made
// it: then it may hold a secret someone referenced by mistake.
func (o *options) quote(key, val string) string {
	if o.from[key].FromEnv {
		return "(value from the environment, not shown)"
	}
	return strconv.Quote(val)
}

func (o *options) invalid(key, format string, args ...any) error {
	return fmt.Errorf("%s: %w: %s", o.where(key), config.ErrInvalid, fmt.Sprintf(format, args...))
}

// check validates every setting and reports every problem, each naming its
// key: required settings present, addresses, numbers and durations in
// range, and the files they name readable.
func (o *options) check() error {
	var errs []error
	add := func(err error) {
		if err != nil {
			errs = append(errs, err)
		}
	}
	for _, r := range []struct{ key, val string }{
		{"tls-cert", o.tlsCert}, {"tls-key", o.tlsKey}, {"client-ca", o.clientCA},
		{"policy", o.policyPath}, {"hsm-token", o.hsmToken}, {"store", o.storePath},
	} {
		if r.val == "" {
			add(o.invalid(r.key, "is required"))
		}
	}
	if auditNeedsVault && o.vaultAddr == "" {
		add(o.invalid("vault-addr", "is required (or set $VAULT_ADDR)"))
	}
	add(o.checkAddr("listen", o.listen))
	if o.otlpEndpoint != "" {
		add(o.checkAddr("otlp-endpoint", o.otlpEndpoint))
	}
	if o.traceSample <= 0 || o.traceSample > 1 {
		add(o.invalid("trace-sample-ratio", "must be in (0, 1]"))
	}
	if o.metricsListen != "" {
		add(o.checkAddr("metrics-listen", o.metricsListen))
		if o.metricsListen == o.listen {
			add(o.invalid("metrics-listen", "is the gRPC address (-listen); give it a port of its own"))
		}
	}
	if o.healthListen != "" {
		add(o.checkAddr("health-listen", o.healthListen))
		switch o.healthListen {
		case o.listen:
			add(o.invalid("health-listen", "is the gRPC address (-listen); give it a port of its own"))
		case o.metricsListen:
			add(o.invalid("health-listen", "is the metrics address (-metrics-listen); give it a port of its own"))
		}
	}
	if o.vaultAddr != "" {
		if u, err := url.Parse(o.vaultAddr); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			add(o.invalid("vault-addr", "%s is not an http:// or https:// URL", o.quote("vault-addr", o.vaultAddr)))
		}
	}
	for _, f := range []struct{ key, path string }{
		{"tls-cert", o.tlsCert}, {"tls-key", o.tlsKey}, {"client-ca", o.clientCA}, {"client-crl", o.clientCRL}, {"policy", o.policyPath},
		{"hsm-module", o.hsmModule}, {"hsm-pin-file", o.hsmPINFile}, {"vault-token-file", o.vaultTokenFile},
	} {
		if f.path != "" {
			add(o.checkReadable(f.key, f.path))
		}
	}
	if o.pidFile != "" {
		if st, err := os.Stat(filepath.Dir(o.pidFile)); err != nil || !st.IsDir() {
			add(o.invalid("pid-file", "%s: its directory does not exist", o.quote("pid-file", o.pidFile)))
		}
	}
	for _, n := range []struct {
		key string
		val int
	}{{"hsm-sessions", o.hsmSessions}, {"audit-max-batch", o.auditMaxBatch}, {"job-batch", o.jobBatch},
		{"max-concurrent-streams", o.maxConcurrentStreams}, {"max-connections", o.maxConnections}} {
		if n.val < 1 {
			add(o.invalid(n.key, "must be at least 1"))
		}
	}
	if o.auditLinger < 0 {
		add(o.invalid("audit-linger", "must not be negative"))
	}
	for _, d := range []struct {
		key string
		val time.Duration
	}{{"audit-timeout", o.auditTimeout}, {"shutdown-timeout", o.shutdownTimeout}, {"job-lease", o.jobLease}, {"job-poll", o.jobPoll},
		{"event-retention", o.eventRetention}, {"handshake-timeout", o.handshakeTimeout}} {
		if d.val <= 0 {
			add(o.invalid(d.key, "must be more than zero"))
		}
	}
	if o.eventMax < 0 {
		add(o.invalid("event-max", "must be 0 (no bound) or more"))
	}
	if o.hsmHotKeys < 0 {
		add(o.invalid("hsm-hot-keys", "must be 0 (none kept) or more"))
	}
	if o.hsmHotSlots < 0 {
		add(o.invalid("hsm-hot-slots", "must be 0 (none kept) or more"))
	}
	if o.hsmHotKeyTTL <= 0 {
		add(o.invalid("hsm-hot-key-ttl", "must be more than zero"))
	}
	if o.defaultSuite != "" && !bundle.PublicKeySuite(o.defaultSuite) {
		add(o.invalid("default-suite", "%s is not ecdh-p256, rsa-oaep-sha1 or rsa-oaep-sha256", o.quote("default-suite", o.defaultSuite)))
	}
	var l zapcore.Level
	if err := l.UnmarshalText([]byte(o.logLevel)); err != nil {
		add(o.invalid("log-level", "%s is not debug, info, warn or error", o.quote("log-level", o.logLevel)))
	}
	if _, _, err := parseSampling(o.logSampling); err != nil {
		add(o.invalid("log-sampling", "%s is not off or FIRST:THEREAFTER (two whole numbers, at least 1)", o.quote("log-sampling", o.logSampling)))
	}
	if o.maxRecvMsgSize < minRecvMsgSize || o.maxRecvMsgSize > maxRecvMsgSize {
		add(o.invalid("max-recv-msg-size", "must be %d to %d bytes", minRecvMsgSize, maxRecvMsgSize))
	}
	if o.maxConcurrentStreams > math.MaxUint32 {
		add(o.invalid("max-concurrent-streams", "must be at most %d", uint32(math.MaxUint32)))
	}
	if o.handshakeFailureRate < 0 {
		add(o.invalid("handshake-failure-rate", "must be 0 (no bound) or more"))
	}
	if o.refusalRate < 0 {
		add(o.invalid("refusal-rate", "must be 0 (no pacing) or more"))
	}
	return errors.Join(errs...)
}

// Bounds of -max-recv-msg-size: a full BatchRewrap (256 items of at most
// 8 KiB of slot and 1 KiB of public key) is about 2.4 MiB; gRPC itself
// allows no more than 2 GiB, and Vault's audit trail is not the place for
// what a larger request could do.
const (
	minRecvMsgSize = 64 << 10
	maxRecvMsgSize = 64 << 20
)

// parseSampling reads -log-sampling: "off" (0, 0), or FIRST:THEREAFTER.
func parseSampling(v string) (first, thereafter int, err error) {
	if v == "off" {
		return 0, 0, nil
	}
	a, b, ok := strings.Cut(v, ":")
	if !ok {
		return 0, 0, errors.New("no colon")
	}
	if first, err = strconv.Atoi(a); err == nil {
		thereafter, err = strconv.Atoi(b)
	}
	if err != nil || first < 1 || thereafter < 1 {
		return 0, 0, errors.New("not two whole numbers, at least 1")
	}
	return first, thereafter, nil
}

func (o *options) checkAddr(key, addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return o.invalid(key, "%s is not host:port", o.quote(key, addr))
	}
	if p, err := strconv.Atoi(port); err != nil || p < 0 || p > 65535 {
		return o.invalid(key, "%s does not end in a port number", o.quote(key, addr))
	}
	if host != "" && net.ParseIP(host) == nil && strings.ContainsAny(host, " /\\") {
		return o.invalid(key, "%s has no valid host", o.quote(key, addr))
	}
	return nil
}

// checkReadable opens and closes a file. The error names the key and the
// path (unless the environment made it) and the reason, never contents.
func (o *options) checkReadable(key, path string) error {
	f, err := os.Open(path)
	if err != nil {
		reason := "cannot be read"
		var pe *os.PathError
		if errors.As(err, &pe) {
			reason = pe.Err.Error()
		}
		return o.invalid(key, "%s: %s", o.quote(key, path), reason)
	}
	defer f.Close()
	if st, err := f.Stat(); err == nil && st.IsDir() {
		return o.invalid(key, "%s is a directory", o.quote(key, path))
	}
	return nil
}
