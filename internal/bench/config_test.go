package bench

import (
	"slices"
	"strings"
	"testing"
)

// TestFromEnvOnly: BENCH_ONLY names a part or is refused, and
// BENCH_AUDIT_FLAGS is split into the audited daemon's flags.
func TestFromEnvOnly(t *testing.T) {
	tests := []struct {
		only, flags string
		wantErr     string
		wantFlags   []string
	}{
		{"", "", "", nil},
		{"audit", "", "", nil},
		{"audit", "-audit-linger 10ms  -audit-max-batch 64", "", []string{"-audit-linger", "10ms", "-audit-max-batch", "64"}},
		{"rewrap", "", `BENCH_ONLY="rewrap"`, nil},
	}
	for _, tt := range tests {
		t.Run(tt.only+"/"+tt.flags, func(t *testing.T) {
			t.Setenv("BENCH_ONLY", tt.only)
			t.Setenv("BENCH_AUDIT_FLAGS", tt.flags)
			c, err := FromEnv()
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err %v, want one naming %s", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if c.Only != tt.only || !slices.Equal(c.AuditFlags, tt.wantFlags) {
				t.Fatalf("Only %q AuditFlags %q, want %q %q", c.Only, c.AuditFlags, tt.only, tt.wantFlags)
			}
		})
	}
}

// TestDaemonFlags: BENCH_DAEMON_FLAGS is split on spaces and follows
// -hsm-sessions in every daemon's flags, so a pair's own flags, appended
// after, win; each call returns a slice of its own to append to.
func TestDaemonFlags(t *testing.T) {
	t.Setenv("BENCH_DAEMON_FLAGS", " -hsm-hot-keys 0  -hsm-hot-key-ttl 5s ")
	c, err := FromEnv()
	if err != nil {
		t.Fatal(err)
	}
	c.HSMSessions = 2
	r := &runner{cfg: c}
	want := []string{"-hsm-sessions", "2", "-hsm-hot-keys", "0", "-hsm-hot-key-ttl", "5s"}
	a := r.daemonFlags()
	if !slices.Equal(a, want) {
		t.Fatalf("daemonFlags %q, want %q", a, want)
	}
	if b := r.daemonFlags(); &a[0] == &b[0] {
		t.Fatal("two daemonFlags calls share their backing array: a caller's append would change the other's flags")
	}
	t.Setenv("BENCH_DAEMON_FLAGS", "")
	if c, err = FromEnv(); err != nil {
		t.Fatal(err)
	}
	c.HSMSessions = 2
	r = &runner{cfg: c}
	if got := r.daemonFlags(); !slices.Equal(got, want[:2]) {
		t.Fatalf("daemonFlags without BENCH_DAEMON_FLAGS: %q, want %q", got, want[:2])
	}
}
