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
