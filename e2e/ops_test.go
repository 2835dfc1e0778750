package e2e

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	escrowdv1 "github.com/escrowd/escrowd/api/escrowd/v1"
)

// scrapeMetrics reads addr's /metrics into series → value.
func scrapeMetrics(t *testing.T, addr string) map[string]float64 {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("GET /metrics: %s\n%s", resp.Status, b)
	}
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			t.Fatalf("metrics line %q: %v", line, err)
		}
		out[line[:i]] = v
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// TestConfigFileAndMetrics runs escrowd from a configuration file alone:
// -check-config accepts it and refuses a broken one naming the key; the
// daemon serves, health answers a probe without a certificate on
// health-listen, its /metrics counts what the requests did in the HSM,
// the audit trail, the policy and the TLS handshake; SIGTERM drains it
// and exits 0, both listeners closed.
func TestConfigFileAndMetrics(t *testing.T) {
	escrowd, _ := buildBinaries(t)
	dir := t.TempDir()
	addr, maddr, haddr := freeAddr(t), freeAddr(t), freeAddr(t)
	policyPath, err := filepath.Abs("testdata/policy.yaml")
	if err != nil {
		t.Fatal(err)
	}
	// The PIN file's directory comes from the environment, as a systemd
	// unit's $CREDENTIALS_DIRECTORY would.
	t.Setenv("ESCROWD_E2E_PIN_DIR", token.Dir)
	conf := fmt.Sprintf(`# escrowd e2e: every path absolute, as in /etc/escrowd/escrowd.yaml
listen: %s
metrics-listen: %s
health-listen: %s
store: %s
hsm-module: %s
hsm-token: %s
hsm-pin-file: ${ESCROWD_E2E_PIN_DIR}/user.pin
vault-addr: %s
vault-token-file: %s
audit-prefix: escrowd-test/config-file
audit-max-batch: 16
tls-cert: %s
tls-key: %s
client-ca: %s
policy: %s
log-level: warn
shutdown-timeout: 10s
`, addr, maddr, haddr, filepath.Join(dir, "escrowd.db"), token.Module, token.Label, vaultSrv.Addr, writeSecret(t, vaultSrv.Token),
		filepath.Join(pki.dir, "server.crt"), filepath.Join(pki.dir, "server.key"), filepath.Join(pki.dir, "ca.crt"), policyPath)
	confPath := filepath.Join(dir, "escrowd.yaml")
	if err := os.WriteFile(confPath, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}

	out, err := exec.Command(escrowd, "-config", confPath, "-check-config").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "configuration OK") {
		t.Fatalf("-check-config: %v\n%s", err, out)
	}
	bad := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(bad, []byte(strings.Replace(conf, "audit-max-batch: 16", "audit-max-batch: 16\naudit-max-batches: 8", 1)), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err = exec.Command(escrowd, "-config", bad, "-check-config").CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 || !strings.Contains(string(out), "bad.yaml:13: audit-max-batches: unknown setting") {
		t.Fatalf("-check-config of a bad file: %v\n%s", err, out)
	}

	r := &replica{t: t, bin: escrowd, addr: addr, args: []string{"-config", confPath}}
	r.start()
	t.Cleanup(r.kill)
	r.connect()
	ctx := ctxT(t)
	if _, err := r.sync.ProvisionGroup(ctx, &escrowdv1.ProvisionGroupRequest{GroupId: "cfg-family"}); err != nil {
		t.Fatalf("provision: %v\n%s", err, r.logs())
	}
	if _, err := r.sec.GetGroup(ctx, &escrowdv1.GetGroupRequest{GroupId: "cfg-family"}); err != nil {
		t.Fatal(err)
	}
	// A reveal needs a ticket reference: a denial by the ticket rule.
	if _, err := r.sup.RevealUnlockCode(ctx, &escrowdv1.RevealUnlockCodeRequest{GroupId: "cfg-family", UserId: "u"}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("reveal without a ticket: %v", err)
	}
	// Health answers a probe without a certificate on health-listen; the
	// API listener refuses one at the handshake.
	hconn, err := grpc.NewClient(haddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer hconn.Close()
	if h, err := healthpb.NewHealthClient(hconn).Check(ctx, &healthpb.HealthCheckRequest{}); err != nil || h.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("health on health-listen: %v %v", h.GetStatus(), err)
	}
	anon, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: pki.ca.Pool(), MinVersion: tls.VersionTLS13})))
	if err != nil {
		t.Fatal(err)
	}
	defer anon.Close()
	if _, err := healthpb.NewHealthClient(anon).Check(ctx, &healthpb.HealthCheckRequest{}); status.Code(err) != codes.Unavailable {
		t.Fatalf("health on listen without a certificate: %v, want the handshake refused", err)
	}
	// The server counts the refusal as the client hears of it.
	deadline := time.Now().Add(5 * time.Second)
	for scrapeMetrics(t, maddr)[`escrowd_tls_handshake_failures_total{reason="no_certificate"}`] < 1 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}

	m := scrapeMetrics(t, maddr)
	for _, c := range []struct {
		series string
		min    float64
		max    float64
	}{
		{`escrowd_rpc_duration_seconds_count{code="OK",method="/escrowd.v1.SyncService/ProvisionGroup"}`, 1, 1},
		{`escrowd_rpc_duration_seconds_count{code="PermissionDenied",method="/escrowd.v1.SupportService/RevealUnlockCode"}`, 1, 1},
		{`escrowd_rpc_duration_seconds_count{code="OK",method="/escrowd.v1.SecurityService/GetGroup"}`, 1, 1},
		{`escrowd_policy_denials_total{operation="RevealUnlockCode",reason="ticket"}`, 1, 1},
		{`escrowd_hsm_operation_duration_seconds_count{operation="generate_escrow_key",result="ok"}`, 1, 1},
		// The group's unlock key, and the audit trail's chain key on its
		// first write.
		{`escrowd_hsm_operation_duration_seconds_count{operation="generate_unlock_key",result="ok"}`, 2, 2},
		{`escrowd_hsm_operation_duration_seconds_count{operation="healthy",result="ok"}`, 1, 1e9},
		{`escrowd_hsm_operation_duration_seconds_count{operation="hmac",result="error"}`, 0, 0},
		// Three audited requests, one of which changes state (an intent
		// and an outcome): four records, in one to four Vault writes.
		{`escrowd_audit_batch_records_sum`, 4, 4},
		{`escrowd_audit_batch_records_count`, 1, 4},
		{`escrowd_audit_commit_duration_seconds_count{result="ok"}`, 1, 4},
		{`escrowd_audit_commit_duration_seconds_count{result="error"}`, 0, 0},
		{`escrowd_vault_errors_total{call="write"}`, 0, 0},
		{`escrowd_dependency_healthy{dependency="hsm"}`, 1, 1},
		{`escrowd_dependency_healthy{dependency="vault"}`, 1, 1},
		{`escrowd_hsm_session_wait_seconds_count{result="timeout"}`, 0, 0},
		{`escrowd_tls_handshake_failures_total{reason="no_certificate"}`, 1, 1},
		{`escrowd_tls_handshake_failures_total{reason="expired"}`, 0, 0},
		{`escrowd_audit_refusals_summarised_total`, 0, 0},
		{`escrowd_rpc_duration_seconds_count{code="OK",method="/grpc.health.v1.Health/Check"}`, 1, 1},
	} {
		v, ok := m[c.series]
		if !ok {
			t.Errorf("no series %s", c.series)
			continue
		}
		if v < c.min || v > c.max {
			t.Errorf("%s = %v, want %v..%v", c.series, v, c.min, c.max)
		}
	}
	for s := range m {
		if strings.Contains(s, "cfg-family") || strings.Contains(s, "alice") {
			t.Errorf("a request field reached a label: %s", s)
		}
	}

	if err := r.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-r.exited:
		if err != nil {
			t.Fatalf("exit after SIGTERM: %v\n%s", err, r.logs())
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("escrowd did not stop on SIGTERM\n%s", r.logs())
	}
	if _, err := http.Get("http://" + maddr + "/metrics"); err == nil {
		t.Fatal("the metrics listener outlived the daemon")
	}
	if c, err := net.DialTimeout("tcp", haddr, time.Second); err == nil {
		c.Close()
		t.Fatal("the health listener outlived the daemon")
	}
	if strings.Contains(r.logs(), token.UserPIN) || strings.Contains(r.logs(), vaultSrv.Token) {
		t.Fatal("the log holds a secret")
	}
}
