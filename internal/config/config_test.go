package config

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

// keys are the settings the tests' files may use: a subset of escrowd's
// flags (cmd/escrowd tests the real set).
var keys = map[string]bool{
	"listen": true, "metrics-listen": true, "store": true, "hsm-pin-file": true, "hsm-sessions": true,
	"audit-timeout": true, "audit-max-batch": true, "log-level": true, "audit-prefix": true, "vault-token-file": true,
}

func known(k string) bool { return keys[k] }

// secretValue is what the environment holds; no error may quote it.
const secretValue = "db.internal-s3cr3t"

func lookup(name string) (string, bool) {
	switch name {
	case "PGHOST", "ESCROWD_SECRET_DIR":
		return secretValue, true
	case "EMPTY":
		return "", true
	}
	return "", false
}

func TestParseFiles(t *testing.T) {
	tests := []struct {
		file string
		want []Setting // nil with wantErr ""
		// wantErr is the error's text without the file name; "" for none.
		wantErr string
	}{
		{"full.yaml", []Setting{
			{Key: "listen", Value: "0.0.0.0:7420", Line: 2},
			{Key: "metrics-listen", Value: "127.0.0.1:9420", Line: 3},
			{Key: "store", Value: "postgres://escrowd@" + secretValue + ":5432/escrowd", Line: 4, FromEnv: true},
			{Key: "hsm-pin-file", Value: "/run/credentials/escrowd.service/hsm.pin", Line: 5},
			{Key: "hsm-sessions", Value: "8", Line: 6},
			{Key: "audit-timeout", Value: "5s", Line: 7},
			{Key: "audit-max-batch", Value: "512", Line: 8},
			{Key: "log-level", Value: "info", Line: 9},
			{Key: "audit-prefix", Value: "escrowd/$audit/" + secretValue, Line: 10, FromEnv: true},
		}, ""},
		{"empty.yaml", nil, ""},
		{"comments.yaml", nil, ""},
		{"unknown-key.yaml", nil, ":2: hsm-pin: unknown setting"},
		{"duplicate.yaml", nil, ":3: listen: set twice (first on line 1)"},
		{"list-value.yaml", nil, ":2: listen: must be a single value"},
		{"map-value.yaml", nil, ":2: store: must be a single value"},
		{"null-value.yaml", nil, ":2: store: has no value"},
		{"unset-env.yaml", nil, ":2: vault-token-file: environment variable NOT_SET_ANYWHERE is not set"},
		{"malformed-ref.yaml", nil, ":1: store: malformed ${NAME} reference"},
		{"bad-name-ref.yaml", nil, ":1: store: malformed ${NAME} reference"},
		{"two-docs.yaml", nil, ":2: holds more than one YAML document"},
		{"not-mapping.yaml", nil, ":1: must be a mapping"},
		{"bad-yaml.yaml", nil, ": not YAML: line 3: found unexpected end of stream"},
		{"alias.yaml", nil, ":2: metrics-listen: must be a single value"},
		{"int-key.yaml", nil, ":1: a key must be a setting name"},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			path := filepath.Join("testdata", tt.file)
			data, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			got, err := Parse(path, data, known, lookup)
			if tt.wantErr != "" {
				if err == nil {
					t.Fatalf("parsed: %+v", got)
				}
				if !errors.Is(err, ErrInvalid) {
					t.Errorf("error %v does not wrap ErrInvalid", err)
				}
				if want := path + tt.wantErr; !strings.HasPrefix(err.Error(), want) {
					t.Fatalf("error %q\nwant it to start %q", err, want)
				}
				if strings.Contains(err.Error(), secretValue) {
					t.Fatalf("error quotes an environment value: %q", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != len(tt.want) {
				t.Fatalf("got %d settings %+v, want %d", len(got), got, len(tt.want))
			}
			for i := range got {
				if got[i] != tt.want[i] {
					t.Errorf("setting %d: %+v, want %+v", i, got[i], tt.want[i])
				}
			}
		})
	}
}

func TestParseTooLarge(t *testing.T) {
	data := []byte("listen: x\n" + strings.Repeat("#", MaxSize))
	if _, err := Parse("big.yaml", data, known, lookup); err == nil || !strings.Contains(err.Error(), "larger than") {
		t.Fatalf("Parse of %d bytes: %v", len(data), err)
	}
}

func TestExpand(t *testing.T) {
	tests := []struct {
		in, want string
		fromEnv  bool
		wantErr  string
	}{
		{"plain", "plain", false, ""},
		{"$5 and $HOME stay", "$5 and $HOME stay", false, ""},
		{"${PGHOST}", secretValue, true, ""},
		{"a${EMPTY}b", "ab", true, ""},
		{"$${PGHOST}", "$" + secretValue, true, ""},
		{"${PGHOST}/${ESCROWD_SECRET_DIR}", secretValue + "/" + secretValue, true, ""},
		{"${_X}", "", false, "_X is not set"},
		{"${PGHOST}${UNSET}", "", false, "UNSET is not set"},
		{"${}", "", false, "malformed"},
		{"${PG-HOST}", "", false, "malformed"},
		{"${PGHOST", "", false, "malformed"},
		{"${ PGHOST }", "", false, "malformed"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, fromEnv, err := Expand(tt.in, lookup)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Expand: %q, %v; want error %q", got, err, tt.wantErr)
				}
				if strings.Contains(err.Error(), secretValue) {
					t.Fatalf("error quotes an environment value: %q", err)
				}
				return
			}
			if err != nil || got != tt.want || fromEnv != tt.fromEnv {
				t.Fatalf("Expand = %q, %v, %v; want %q, %v", got, fromEnv, err, tt.want, tt.fromEnv)
			}
		})
	}
}

// FuzzParseConfig: Parse never panics; what it accepts holds known keys
// once each, quotes no environment value in an error, and writing the
// settings back out as YAML parses to the same settings.
func FuzzParseConfig(f *testing.F) {
	files, _ := filepath.Glob(filepath.Join("testdata", "*.yaml"))
	for _, p := range files {
		b, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte("listen: ${PGHOST}${"))
	f.Add([]byte("{listen: a, store: b}"))
	f.Add([]byte("listen: !!binary aGVsbG8="))
	f.Fuzz(func(t *testing.T, data []byte) {
		got, err := Parse("fuzz.yaml", data, known, lookup)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("error does not wrap ErrInvalid: %v", err)
			}
			if strings.Contains(err.Error(), secretValue) {
				t.Fatalf("error quotes an environment value: %q", err)
			}
			return
		}
		m := make(map[string]string)
		for _, s := range got {
			if !keys[s.Key] {
				t.Fatalf("unknown key %q accepted", s.Key)
			}
			if _, dup := m[s.Key]; dup {
				t.Fatalf("key %q accepted twice", s.Key)
			}
			m[s.Key] = s.Value
		}
		out, err := yaml.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		// Values already expanded may hold "${" only if the environment
		// did, and lookup's values do not: the second parse expands
		// nothing.
		again, err := Parse("again.yaml", out, known, nil)
		if err != nil {
			t.Fatalf("re-parse of %q: %v", out, err)
		}
		if len(again) != len(m) {
			t.Fatalf("re-parse: %d settings, want %d", len(again), len(m))
		}
		for _, s := range again {
			if m[s.Key] != s.Value || s.FromEnv {
				t.Fatalf("re-parse: %s = %q (env %v), want %q", s.Key, s.Value, s.FromEnv, m[s.Key])
			}
		}
	})
}
