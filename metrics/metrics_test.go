package metrics_test

import (
	"errors"
	"io"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/escrowd/escrowd/audit"
	"github.com/escrowd/escrowd/daemon"
	"github.com/escrowd/escrowd/hsm"
	"github.com/escrowd/escrowd/metrics"
)

// One value serves the three packages' observers.
var (
	_ daemon.Observer          = (*metrics.Metrics)(nil)
	_ daemon.HandshakeObserver = (*metrics.Metrics)(nil)
	_ hsm.Observer             = (*metrics.Metrics)(nil)
	_ audit.Observer           = (*metrics.Metrics)(nil)
	_ audit.RefusalObserver    = (*metrics.Metrics)(nil)
	_ daemon.IntentObserver    = (*metrics.Metrics)(nil)
	_ audit.PoisonObserver     = (*metrics.Metrics)(nil)
	_ audit.HaltObserver       = (*metrics.Metrics)(nil)
)

func newMetrics() *metrics.Metrics {
	return metrics.New(metrics.Labels{Methods: daemon.Methods(), HSMOps: hsm.Ops(), Dependencies: []string{"hsm", "vault"},
		HandshakeReasons: daemon.HandshakeReasons()})
}

func scrape(t *testing.T, m *metrics.Metrics) string {
	t.Helper()
	srv := httptest.NewServer(m.Handler())
	defer srv.Close()
	resp, err := srv.Client().Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestObservations: each observer call lands in its metric with the
// labels docs/OPERATIONS.md names.
func TestObservations(t *testing.T) {
	fail := errors.New("boom")
	tests := []struct {
		name    string
		observe func(m *metrics.Metrics)
		// series is a line prefix of the text format; want its value.
		series string
		want   string
	}{
		{"rpc", func(m *metrics.Metrics) {
			m.ObserveRPC("/escrowd.v1.SyncService/Rewrap", "OK", 3*time.Millisecond)
			m.ObserveRPC("/escrowd.v1.SyncService/Rewrap", "Unavailable", time.Second)
		}, `escrowd_rpc_duration_seconds_count{code="Unavailable",method="/escrowd.v1.SyncService/Rewrap"}`, "1"},
		{"rpc bucket", func(m *metrics.Metrics) {
			m.ObserveRPC("/escrowd.v1.SyncService/Rewrap", "OK", 3*time.Millisecond)
		}, `escrowd_rpc_duration_seconds_bucket{code="OK",method="/escrowd.v1.SyncService/Rewrap",le="0.004"}`, "1"},
		{"denial", func(m *metrics.Metrics) {
			m.ObserveDenial("RevealUnlockCode", daemon.DenialTicket)
			m.ObserveDenial("RevealUnlockCode", daemon.DenialTicket)
		}, `escrowd_policy_denials_total{operation="RevealUnlockCode",reason="ticket"}`, "2"},
		{"dependency down", func(m *metrics.Metrics) { m.ObserveCheck("vault", false) },
			`escrowd_dependency_healthy{dependency="vault"}`, "0"},
		{"dependency up", func(m *metrics.Metrics) { m.ObserveCheck("hsm", true) },
			`escrowd_dependency_healthy{dependency="hsm"}`, "1"},
		{"hsm op error", func(m *metrics.Metrics) { m.ObserveHSMOp(hsm.OpHMAC, time.Millisecond, fail) },
			`escrowd_hsm_operation_duration_seconds_count{operation="hmac",result="error"}`, "1"},
		{"hsm op ok", func(m *metrics.Metrics) { m.ObserveHSMOp(hsm.OpHMAC, time.Millisecond, nil) },
			`escrowd_hsm_operation_duration_seconds_count{operation="hmac",result="ok"}`, "1"},
		{"session wait", func(m *metrics.Metrics) { m.ObserveSessionWait(2*time.Millisecond, true) },
			`escrowd_hsm_session_wait_seconds_count{result="ok"}`, "1"},
		{"session wait timeout", func(m *metrics.Metrics) { m.ObserveSessionWait(5*time.Second, false) },
			`escrowd_hsm_session_wait_seconds_count{result="timeout"}`, "1"},
		{"audit batch size", func(m *metrics.Metrics) { m.ObserveAuditBatch(37, 4*time.Millisecond, nil) },
			`escrowd_audit_batch_records_sum`, "37"},
		{"audit commit ok", func(m *metrics.Metrics) { m.ObserveAuditBatch(37, 4*time.Millisecond, nil) },
			`escrowd_audit_commit_duration_seconds_count{result="ok"}`, "1"},
		{"audit commit error counts a vault error", func(m *metrics.Metrics) { m.ObserveAuditBatch(3, time.Second, fail) },
			`escrowd_vault_errors_total{call="write"}`, "1"},
		{"vault health error", func(m *metrics.Metrics) { m.ObserveVaultHealth(fail); m.ObserveVaultHealth(nil) },
			`escrowd_vault_errors_total{call="health"}`, "1"},
		{"handshake refused", func(m *metrics.Metrics) {
			m.ObserveHandshakeFailure(daemon.HandshakeNoCertificate)
			m.ObserveHandshakeFailure(daemon.HandshakeNoCertificate)
		}, `escrowd_tls_handshake_failures_total{reason="no_certificate"}`, "2"},
		{"seeded handshake reason", func(*metrics.Metrics) {},
			`escrowd_tls_handshake_failures_total{reason="expired"}`, "0"},
		{"refusal summarised", func(m *metrics.Metrics) { m.ObserveRefusalSummarised() },
			`escrowd_audit_refusals_summarised_total`, "1"},
		{"open intent", func(m *metrics.Metrics) { m.ObserveOpenIntent("RevealUnlockCode") },
			`escrowd_audit_open_intents_total`, "1"},
		{"poisoned batch", func(m *metrics.Metrics) { m.ObservePoisonedBatch() },
			`escrowd_audit_poisoned_batches_total`, "1"},
		{"audit halted", func(m *metrics.Metrics) { m.ObserveAuditHalted("poisoned") },
			`escrowd_audit_halted{reason="poisoned"}`, "1"},
		{"audit halted, other reason", func(m *metrics.Metrics) { m.ObserveAuditHalted("poisoned") },
			`escrowd_audit_halted{reason="truncated"}`, "0"},
		{"audit goes on", func(m *metrics.Metrics) { m.ObserveAuditHalted("poisoned"); m.ObserveAuditHalted("") },
			`escrowd_audit_halted{reason="poisoned"}`, "0"},
		{"seeded before any observation", func(*metrics.Metrics) {},
			`escrowd_rpc_duration_seconds_count{code="OK",method="/escrowd.v1.SupportService/RevealUnlockCode"}`, "0"},
		{"seeded hsm op", func(*metrics.Metrics) {},
			`escrowd_hsm_operation_duration_seconds_count{operation="rotate",result="error"}`, "0"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := newMetrics()
			tt.observe(m)
			page := scrape(t, m)
			for _, line := range strings.Split(page, "\n") {
				if v, ok := strings.CutPrefix(line, tt.series+" "); ok {
					if v != tt.want {
						t.Fatalf("%s = %s, want %s", tt.series, v, tt.want)
					}
					return
				}
			}
			t.Fatalf("no series %s on the page:\n%s", tt.series, page)
		})
	}
}

// TestLint: the metrics follow Prometheus's naming conventions.
func TestLint(t *testing.T) {
	m := newMetrics()
	m.ObserveDenial("Rewrap", daemon.DenialRole)
	m.ObserveAuditBatch(1, time.Millisecond, nil)
	problems, err := testutil.GatherAndLint(m.Registry())
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("%s: %s", p.Metric, p.Text)
	}
}

// BenchmarkObserveRPC is the cost the interceptor adds to every request.
func BenchmarkObserveRPC(b *testing.B) {
	m := newMetrics()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			m.ObserveRPC("/escrowd.v1.SyncService/Rewrap", "OK", time.Millisecond)
		}
	})
}

// TestDocumented: docs/OPERATIONS.md names every metric with each of its
// labels, every HSM operation and every denial reason, so the page an
// operator reads cannot fall behind the code.
func TestDocumented(t *testing.T) {
	doc, err := os.ReadFile("../docs/OPERATIONS.md")
	if err != nil {
		t.Fatal(err)
	}
	m := newMetrics()
	m.ObserveDenial("Rewrap", daemon.DenialRole)
	m.ObserveAuditBatch(1, time.Millisecond, nil)
	fams, err := m.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, f := range fams {
		if !strings.HasPrefix(f.GetName(), metrics.Namespace+"_") {
			continue
		}
		n++
		if !strings.Contains(string(doc), "`"+f.GetName()+"`") {
			t.Errorf("docs/OPERATIONS.md does not name %s", f.GetName())
		}
		for _, l := range f.GetMetric()[0].GetLabel() {
			if !strings.Contains(string(doc), "`"+l.GetName()+"`") {
				t.Errorf("docs/OPERATIONS.md does not name label %s of %s", l.GetName(), f.GetName())
			}
		}
	}
	if n != 13 {
		t.Errorf("%d escrowd metrics; the test and the docs know 13", n)
	}
	for _, v := range append(append(hsm.Ops(), daemon.DenialReasons()...), daemon.HandshakeReasons()...) {
		if !strings.Contains(string(doc), "`"+v+"`") {
			t.Errorf("docs/OPERATIONS.md does not name %q", v)
		}
	}
}
