package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/escrowd/escrowd/internal/config"
)

// fakePIN is what $ESCROWD_HSM_PIN holds in these tests: no error may
// quote it.
const fakePIN = "271828-not-a-path"

// testEnv makes the files the settings name in a temporary directory and
// returns a lookup for ${DIR} (that directory) and $ESCROWD_HSM_PIN.
func testEnv(t *testing.T) (dir string, lookup func(string) (string, bool)) {
	t.Helper()
	dir = t.TempDir()
	for _, f := range []string{"server.crt", "server.key", "ca.crt", "clients.crl", "policy.yaml", "module.so", "hsm.pin", "vault.token"} {
		if err := os.WriteFile(filepath.Join(dir, f), []byte("x\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return dir, func(name string) (string, bool) {
		switch name {
		case "DIR":
			return dir, true
		case "ESCROWD_HSM_PIN":
			return fakePIN, true
		}
		return "", false
	}
}

func parse(t *testing.T, lookup func(string) (string, bool), args ...string) (*options, error) {
	t.Helper()
	return parseOptions(args, io.Discard, lookup)
}

// TestEveryFlagInTheFile: the file can hold every setting a flag has:
// full.yaml names each one (and nothing else), and each differs from the
// built-in default.
func TestEveryFlagInTheFile(t *testing.T) {
	_, lookup := testEnv(t)
	var keys []string
	newFlagSet(&options{}).VisitAll(func(f *flag.Flag) {
		if !notInFile[f.Name] {
			keys = append(keys, f.Name)
		}
	})
	o, err := parse(t, lookup, "-config", "testdata/full.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if len(o.from) != len(keys) {
		t.Fatalf("full.yaml sets %d settings, escrowd has %d: %v", len(o.from), len(keys), keys)
	}
	for _, k := range keys {
		if _, ok := o.from[k]; !ok {
			t.Errorf("full.yaml does not set %s", k)
		}
	}
	// Every option field moved from its default.
	var def options
	newFlagSet(&def)
	got, want := reflect.ValueOf(*o), reflect.ValueOf(def)
	for i := 0; i < got.NumField(); i++ {
		name := got.Type().Field(i).Name
		switch name {
		case "configPath", "checkConfig", "from":
			continue
		}
		// fmt prints unexported fields, which Interface refuses.
		if fmt.Sprint(got.Field(i)) == fmt.Sprint(want.Field(i)) {
			t.Errorf("options.%s kept its default %v: no key of the file sets it", name, got.Field(i))
		}
	}
	if o.auditTimeout != 3*time.Second || o.auditMaxBatch != 64 || o.hsmSessions != 16 || o.metricsListen != "127.0.0.1:19420" {
		t.Errorf("values not parsed as the flags would: %+v", o)
	}
}

// TestPrecedence: a flag on the command line beats the file, which beats
// the default.
func TestPrecedence(t *testing.T) {
	_, lookup := testEnv(t)
	tests := []struct {
		name           string
		args           []string
		wantBatch      int
		wantListen     string
		wantAuditMount string
	}{
		{"file over default", []string{"-config", "testdata/minimal.yaml"}, 64, "127.0.0.1:7420", "secret"},
		{"flag over file", []string{"-config", "testdata/minimal.yaml", "-audit-max-batch", "7"}, 7, "127.0.0.1:7420", "secret"},
		{"flag after -config or before it", []string{"-audit-max-batch", "9", "-config", "testdata/minimal.yaml", "-listen", "127.0.0.1:1"}, 9, "127.0.0.1:1", "secret"},
		{"flag equal to the default still wins", []string{"-config", "testdata/minimal.yaml", "-audit-max-batch=512"}, 512, "127.0.0.1:7420", "secret"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o, err := parse(t, lookup, tt.args...)
			if err != nil {
				t.Fatal(err)
			}
			if o.auditMaxBatch != tt.wantBatch || o.listen != tt.wantListen || o.auditMount != tt.wantAuditMount {
				t.Fatalf("audit-max-batch %d listen %s audit-mount %s; want %d %s %s",
					o.auditMaxBatch, o.listen, o.auditMount, tt.wantBatch, tt.wantListen, tt.wantAuditMount)
			}
		})
	}
}

// TestFlagsAlone: without -config escrowd starts from flags, as the e2e
// tests and benchmarks run it.
func TestFlagsAlone(t *testing.T) {
	dir, lookup := testEnv(t)
	o, err := parse(t, lookup, "-tls-cert", filepath.Join(dir, "server.crt"), "-tls-key", filepath.Join(dir, "server.key"),
		"-client-ca", filepath.Join(dir, "ca.crt"), "-policy", filepath.Join(dir, "policy.yaml"), "-hsm-token", "t",
		"-vault-addr", "http://127.0.0.1:8200", "-audit-max-batch", "1", "-metrics-listen", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if o.auditMaxBatch != 1 || o.metricsListen != "127.0.0.1:0" || len(o.from) != 0 {
		t.Fatalf("%+v", o)
	}
}

func TestConfigErrors(t *testing.T) {
	dir, lookup := testEnv(t)
	tests := []struct {
		name string
		args []string
		// want are substrings of the error.
		want []string
	}{
		{"unknown key", []string{"-config", "testdata/unknown-key.yaml"},
			[]string{"testdata/unknown-key.yaml:2: hsm-pin: unknown setting"}},
		{"-config in the file", []string{"-config", "testdata/config-key.yaml"},
			[]string{"testdata/config-key.yaml:1: config: unknown setting"}},
		{"duration", []string{"-config", "testdata/bad-duration.yaml"},
			[]string{"testdata/bad-duration.yaml:2: audit-timeout: not a duration"}},
		{"number", []string{"-config", "testdata/bad-int.yaml"},
			[]string{"testdata/bad-int.yaml:2: hsm-sessions: not a whole number"}},
		{"unset variable", []string{"-config", "testdata/unset-env.yaml"},
			[]string{"testdata/unset-env.yaml:2: hsm-pin-file: environment variable ESCROWD_TEST_UNSET is not set"}},
		{"no such file", []string{"-config", "testdata/nonexistent.yaml"}, []string{"-config:", "no such file"}},
		{"a PIN used as a path", []string{"-config", "testdata/pin-as-path.yaml"},
			[]string{"testdata/pin-as-path.yaml:7: hsm-pin-file", "value from the environment, not shown", "no such file"}},
		{"required", []string{"-config", "testdata/missing-required.yaml"},
			[]string{"-tls-cert: invalid configuration: is required", "-tls-key", "-client-ca", "-policy", "-hsm-token"}},
		{"every bad value at once", []string{"-config", "testdata/bad-values.yaml"}, []string{
			`bad-values.yaml:6: listen: invalid configuration: "127.0.0.1" is not host:port`,
			`bad-values.yaml:7: metrics-listen: invalid configuration: "127.0.0.1:7420x" does not end in a port number`,
			`bad-values.yaml:8: vault-addr: invalid configuration: "vault.internal:8200" is not an http:// or https:// URL`,
			`bad-values.yaml:9: hsm-sessions: invalid configuration: must be at least 1`,
			`bad-values.yaml:10: job-poll: invalid configuration: must be more than zero`,
			`bad-values.yaml:11: log-level: invalid configuration: "loud" is not debug`,
			`bad-values.yaml:12: vault-token-file: invalid configuration: "/nonexistent/vault.token": no such file or directory`,
			`bad-values.yaml:13: default-suite: invalid configuration: "rsa-4096" is not ecdh-p256`,
			`bad-values.yaml:14: hsm-hot-slots: invalid configuration: must be 0 (none kept) or more`,
		}},
		{"a pid file in no directory", []string{"-config", "testdata/minimal.yaml", "-pid-file", "/nonexistent/escrowd.pid"},
			[]string{`-pid-file: invalid configuration: "/nonexistent/escrowd.pid": its directory does not exist`}},
		{"every bad transport value at once", []string{"-config", "testdata/bad-transport.yaml"}, []string{
			`bad-transport.yaml:8: health-listen: invalid configuration: is the gRPC address`,
			`bad-transport.yaml:9: log-sampling: invalid configuration: "sometimes" is not off or FIRST:THEREAFTER`,
			`bad-transport.yaml:10: max-recv-msg-size: invalid configuration: must be 65536 to 67108864 bytes`,
			`bad-transport.yaml:11: max-concurrent-streams: invalid configuration: must be at least 1`,
			`bad-transport.yaml:12: max-connections: invalid configuration: must be at least 1`,
			`bad-transport.yaml:13: handshake-timeout: invalid configuration: must be more than zero`,
			`bad-transport.yaml:14: handshake-failure-rate: invalid configuration: must be 0 (no bound) or more`,
			`bad-transport.yaml:15: refusal-rate: invalid configuration: must be 0 (no pacing) or more`,
		}},
		{"one port for both", []string{"-config", "testdata/same-port.yaml"},
			[]string{"same-port.yaml:8: metrics-listen: invalid configuration: is the gRPC address"}},
		{"a bad flag is named as a flag", []string{"-config", "testdata/minimal.yaml", "-tls-cert", filepath.Join(dir, "nope.crt")},
			[]string{"-tls-cert: invalid configuration:", "nope.crt", "no such file"}},
		{"a stray argument", []string{"-config", "testdata/minimal.yaml", "extra"}, []string{`usage: unexpected argument "extra"`}},
		{"an unknown flag", []string{"-hsm-pin", "1234"}, []string{"usage: flag provided but not defined: -hsm-pin"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := parse(t, lookup, tt.args...)
			if err == nil {
				t.Fatal("parsed")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error does not say %q:\n%v", w, err)
				}
			}
			if strings.Contains(err.Error(), fakePIN) {
				t.Fatalf("the error quotes the PIN:\n%v", err)
			}
			var ce *config.Error
			if !errors.Is(err, config.ErrInvalid) && !errors.As(err, &ce) && !errors.Is(err, os.ErrNotExist) && !errors.Is(err, errUsage) {
				t.Errorf("error wraps no sentinel: %v", err)
			}
		})
	}
}

// TestSecretFileFromEnvNotShown: a secret file whose name the environment
// made is read, and when it cannot be, the error does not show the name.
func TestSecretFileFromEnvNotShown(t *testing.T) {
	dir, lookup := testEnv(t)
	o, err := parse(t, lookup, "-config", "testdata/full.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if s, err := o.loadSecret("HSM user PIN", "hsm-pin-file", o.hsmPINFile, "ESCROWD_HSM_PIN"); err != nil || s != "x" {
		t.Fatalf("loadSecret: %q %v", s, err)
	}
	if err := os.WriteFile(filepath.Join(dir, "hsm.pin"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = o.loadSecret("HSM user PIN", "hsm-pin-file", o.hsmPINFile, "ESCROWD_HSM_PIN")
	if err == nil || strings.Contains(err.Error(), dir) || !strings.Contains(err.Error(), "full.yaml:12: hsm-pin-file") {
		t.Fatalf("empty PIN file: %v", err)
	}
}

// TestContribExample: the example configuration of contrib/systemd holds
// only real settings with valid values, and the unit gives a drain more
// time than the example's shutdown-timeout.
func TestContribExample(t *testing.T) {
	o := &options{from: map[string]config.Setting{}}
	fs := newFlagSet(o) // sets every field to its default
	o.configPath = "../../contrib/systemd/escrowd.yaml"
	lookup := func(name string) (string, bool) {
		if name == "CREDENTIALS_DIRECTORY" {
			return "/run/credentials/escrowd.service", true
		}
		return "", false
	}
	if err := o.applyFile(fs, lookup); err != nil {
		t.Fatal(err)
	}
	if o.hsmPINFile != "/run/credentials/escrowd.service/hsm.pin" || o.metricsListen == "" || o.healthListen == "" {
		t.Fatalf("example: %+v", o)
	}
	unit, err := os.ReadFile("../../contrib/systemd/escrowd.service")
	if err != nil {
		t.Fatal(err)
	}
	var stop time.Duration
	for _, line := range strings.Split(string(unit), "\n") {
		if v, ok := strings.CutPrefix(line, "TimeoutStopSec="); ok {
			if stop, err = time.ParseDuration(v); err != nil {
				t.Fatal(err)
			}
		}
	}
	if stop <= o.shutdownTimeout+5*time.Second {
		t.Fatalf("TimeoutStopSec %s leaves no room after shutdown-timeout %s", stop, o.shutdownTimeout)
	}
	for _, want := range []string{"NoNewPrivileges=yes", "ProtectSystem=strict", "ReadWritePaths=/var/lib/escrowd", "PrivateTmp=yes",
		"Restart=on-failure", "ExecReload=/bin/kill -HUP $MAINPID", "LoadCredential=hsm.pin:"} {
		if !strings.Contains(string(unit), want) {
			t.Errorf("the unit lacks %s", want)
		}
	}
}

// TestLogSampling: by default every log line is written, however many
// share a message (zap's production default kept the first 100 a second
// of each and then one in 100: under load a third of the request lines
// were lost); -log-sampling turns sampling on, explicitly.
func TestLogSampling(t *testing.T) {
	for _, tt := range []struct {
		sampling string
		min, max int
	}{
		{"off", 3200, 3200},
		{"100:100", 100, 200},
	} {
		t.Run(tt.sampling, func(t *testing.T) {
			cfg, err := loggerConfig("info", tt.sampling)
			if err != nil {
				t.Fatal(err)
			}
			out := filepath.Join(t.TempDir(), "log")
			cfg.OutputPaths = []string{out}
			l, err := cfg.Build()
			if err != nil {
				t.Fatal(err)
			}
			for i := range 3200 {
				l.Info("finished call", zap.Int("i", i))
			}
			l.Sync()
			b, err := os.ReadFile(out)
			if err != nil {
				t.Fatal(err)
			}
			if n := strings.Count(string(b), "\n"); n < tt.min || n > tt.max {
				t.Fatalf("%d of 3200 lines written, want %d to %d", n, tt.min, tt.max)
			}
		})
	}
	if _, err := loggerConfig("info", "0:5"); err == nil {
		t.Fatal("log-sampling 0:5 accepted")
	}
}
