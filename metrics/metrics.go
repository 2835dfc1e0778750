// Package metrics keeps escrowd's Prometheus metrics and serves them.
//
// It is the only package of escrowd that imports Prometheus. The packages
// it measures (daemon, hsm, audit) each define a small Observer interface
// of their own, and *Metrics satisfies all three; cmd/escrowd wires them.
// This package imports none of them, so the arrows point one way.
//
// The label values are fixed sets (method names, HSM operation names,
// status code names, denial reasons, dependency names): no identity,
// group, ticket or message ever reaches a label. The series New is given
// are made up front, so that a dashboard shows zeros rather than gaps.
//
// docs/OPERATIONS.md lists every metric, what a bad value means and the
// alert to set.
package metrics

import (
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Namespace prefixes every metric name.
const Namespace = "escrowd"

// Labels names the series made up front. Any field may be empty.
type Labels struct {
	Methods          []string // full gRPC method names, each seeded with code OK
	HSMOps           []string
	Dependencies     []string // health check names
	HandshakeReasons []string // reasons a TLS handshake is refused
}

// Metrics holds every metric. It is safe for concurrent use.
type Metrics struct {
	reg *prometheus.Registry

	rpc          *prometheus.HistogramVec
	hsmOp        *prometheus.HistogramVec
	sessionWait  *prometheus.HistogramVec
	auditBatch   prometheus.Histogram
	auditCommit  *prometheus.HistogramVec
	vaultErrors  *prometheus.CounterVec
	denials      *prometheus.CounterVec
	dependencyUp *prometheus.GaugeVec
	handshakes   *prometheus.CounterVec
	summarised   prometheus.Counter
	openIntents  prometheus.Counter
	poisoned     prometheus.Counter
	halted       *prometheus.GaugeVec
}

// Result label values.
const (
	resultOK    = "ok"
	resultError = "error"
)

func result(err error) string {
	if err != nil {
		return resultError
	}
	return resultOK
}

// New makes the metrics on a registry of their own (with the Go runtime
// and process collectors), so that nothing registered globally by a
// library ends up on escrowd's page.
func New(l Labels) *Metrics {
	m := &Metrics{
		reg: prometheus.NewRegistry(),
		rpc: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: Namespace, Name: "rpc_duration_seconds",
			Help:    "Time to serve one gRPC request, by full method and status code; the audit commit and any dual-control wait included.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16), // 0.5 ms to 16 s
		}, []string{"method", "code"}),
		hsmOp: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: Namespace, Subsystem: "hsm", Name: "operation_duration_seconds",
			Help:    "Time of one HSM operation, by operation and result; the wait for a session and a recovery retry included.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 16), // 0.1 ms to 3.3 s
		}, []string{"operation", "result"}),
		sessionWait: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: Namespace, Subsystem: "hsm", Name: "session_wait_seconds",
			Help:    "Time a caller waited because every pooled HSM session was checked out, by result (ok: got one; timeout: gave up). Callers that did not wait are not counted.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 16),
		}, []string{"result"}),
		auditBatch: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: Namespace, Subsystem: "audit", Name: "batch_records",
			Help:    "Records in one Vault write of the audit trail (group commit).",
			Buckets: prometheus.ExponentialBuckets(1, 2, 11), // 1 to 1024
		}),
		auditCommit: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: Namespace, Subsystem: "audit", Name: "commit_duration_seconds",
			Help:    "Time of one Vault write of an audit batch, by result.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14), // 0.5 ms to 4 s
		}, []string{"result"}),
		vaultErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace, Subsystem: "vault", Name: "errors_total",
			Help: "Failed Vault calls, by call: write (an audit batch; its requests failed closed) or health.",
		}, []string{"call"}),
		denials: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace, Subsystem: "policy", Name: "denials_total",
			Help: "Requests refused by the rules, by operation and reason (certificate, identity, role, ticket, rate_limit, approval, dual_control).",
		}, []string{"operation", "reason"}),
		dependencyUp: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: Namespace, Name: "dependency_healthy",
			Help: "1 if the last health check of the dependency passed, else 0; while any is 0 gRPC health reports NOT_SERVING.",
		}, []string{"dependency"}),
		handshakes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace, Subsystem: "tls", Name: "handshake_failures_total",
			Help: "TLS handshakes the API listener refused, by reason (no_certificate, expired, unknown_authority, invalid_certificate, revoked, crl_expired, timeout, closed, protocol).",
		}, []string{"reason"}),
		summarised: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: Namespace, Subsystem: "audit", Name: "refusals_summarised_total",
			Help: "Refused requests that found the audit trail's refusal lane full and were counted in a summary record instead of recorded one by one.",
		}),
		openIntents: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: Namespace, Subsystem: "audit", Name: "open_intents_total",
			Help: "State-changing requests whose intent record was committed and whose outcome record could not be: each may or may not have taken effect; `escrowctl audit verify` lists them.",
		}),
		poisoned: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: Namespace, Subsystem: "audit", Name: "poisoned_batches_total",
			Help: "Audit trail positions the writer skipped because they held something it will not chain after: not a batch, or a batch whose MAC does not verify under the chain key. Someone other than escrowd wrote to the trail.",
		}),
		halted: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: Namespace, Subsystem: "audit", Name: "halted",
			Help: "1 while the audit writer refuses to write, by reason: poisoned (a position holds what escrowd did not write, not yet acknowledged) or truncated (the trail ends below its anchored head). Every request that needs a record fails UNAVAILABLE meanwhile; health reports NOT_SERVING with the reason.",
		}, []string{"reason"}),
	}
	m.reg.MustRegister(m.rpc, m.hsmOp, m.sessionWait, m.auditBatch, m.auditCommit, m.vaultErrors, m.denials, m.dependencyUp,
		m.handshakes, m.summarised, m.openIntents, m.poisoned, m.halted,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	m.seed(l)
	return m
}

func (m *Metrics) seed(l Labels) {
	for _, meth := range l.Methods {
		m.rpc.WithLabelValues(meth, "OK")
	}
	for _, op := range l.HSMOps {
		m.hsmOp.WithLabelValues(op, resultOK)
		m.hsmOp.WithLabelValues(op, resultError)
	}
	m.sessionWait.WithLabelValues(resultOK)
	m.sessionWait.WithLabelValues("timeout")
	m.auditCommit.WithLabelValues(resultOK)
	m.auditCommit.WithLabelValues(resultError)
	m.vaultErrors.WithLabelValues("write")
	m.vaultErrors.WithLabelValues("health")
	for _, r := range haltReasons {
		m.halted.WithLabelValues(r)
	}
	for _, d := range l.Dependencies {
		m.dependencyUp.WithLabelValues(d)
	}
	for _, r := range l.HandshakeReasons {
		m.handshakes.WithLabelValues(r)
	}
}

// Handler serves the metrics in the Prometheus text format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{Registry: m.reg})
}

// Registry is where the metrics live, for tests that gather them.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// ObserveRPC satisfies daemon.Observer.
func (m *Metrics) ObserveRPC(method, code string, took time.Duration) {
	m.rpc.WithLabelValues(method, code).Observe(took.Seconds())
}

// ObserveDenial satisfies daemon.Observer.
func (m *Metrics) ObserveDenial(operation, reason string) {
	m.denials.WithLabelValues(operation, reason).Inc()
}

// ObserveCheck satisfies daemon.Observer.
func (m *Metrics) ObserveCheck(dependency string, healthy bool) {
	v := 0.0
	if healthy {
		v = 1
	}
	m.dependencyUp.WithLabelValues(dependency).Set(v)
}

// ObserveHandshakeFailure satisfies daemon.HandshakeObserver.
func (m *Metrics) ObserveHandshakeFailure(reason string) {
	m.handshakes.WithLabelValues(reason).Inc()
}

// ObserveOpenIntent satisfies daemon.IntentObserver.
func (m *Metrics) ObserveOpenIntent(string) { m.openIntents.Inc() }

// ObservePoisonedBatch satisfies audit.PoisonObserver.
func (m *Metrics) ObservePoisonedBatch() { m.poisoned.Inc() }

// haltReasons are the reasons audit.HaltObserver reports.
var haltReasons = []string{"poisoned", "truncated"}

// ObserveAuditHalted satisfies audit.HaltObserver: the writer halted for
// reason, or went on ("").
func (m *Metrics) ObserveAuditHalted(reason string) {
	for _, r := range haltReasons {
		v := 0.0
		if r == reason {
			v = 1
		}
		m.halted.WithLabelValues(r).Set(v)
	}
}

// ObserveRefusalSummarised satisfies audit.RefusalObserver.
func (m *Metrics) ObserveRefusalSummarised() { m.summarised.Inc() }

// ObserveHSMOp satisfies hsm.Observer.
func (m *Metrics) ObserveHSMOp(op string, took time.Duration, err error) {
	m.hsmOp.WithLabelValues(op, result(err)).Observe(took.Seconds())
}

// ObserveSessionWait satisfies hsm.Observer.
func (m *Metrics) ObserveSessionWait(waited time.Duration, got bool) {
	r := resultOK
	if !got {
		r = "timeout"
	}
	m.sessionWait.WithLabelValues(r).Observe(waited.Seconds())
}

// ObserveAuditBatch satisfies audit.Observer.
func (m *Metrics) ObserveAuditBatch(records int, took time.Duration, err error) {
	m.auditBatch.Observe(float64(records))
	m.auditCommit.WithLabelValues(result(err)).Observe(took.Seconds())
	if err != nil {
		m.vaultErrors.WithLabelValues("write").Inc()
	}
}

// ObserveVaultHealth satisfies audit.Observer.
func (m *Metrics) ObserveVaultHealth(err error) {
	if err != nil {
		m.vaultErrors.WithLabelValues("health").Inc()
	}
}
