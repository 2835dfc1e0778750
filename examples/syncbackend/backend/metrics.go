package backend

import (
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// metrics are the backend's Prometheus metrics, on a registry of its own
// so that two servers in one process (tests) do not collide.
type metrics struct {
	reg           *prometheus.Registry
	cycles        *prometheus.CounterVec
	cycleSeconds  prometheus.Histogram
	cycleLast     prometheus.Gauge
	rewraps       *prometheus.CounterVec
	calls         *prometheus.CounterVec
	epochs        *prometheus.CounterVec
	events        *prometheus.CounterVec
	eventsMissed  prometheus.Counter
	notifications prometheus.Counter
	requests      *prometheus.CounterVec
}

func newMetrics() *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		cycles: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "syncbackend_cycle_runs_total",
			Help: "Cycle job runs, by outcome (ok: every item done; partial: some left for the next run; error)."}, []string{"outcome"}),
		cycleSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "syncbackend_cycle_duration_seconds",
			Help: "How long a cycle job run took.", Buckets: prometheus.ExponentialBuckets(0.01, 4, 10)}),
		cycleLast: prometheus.NewGauge(prometheus.GaugeOpts{Name: "syncbackend_cycle_last_success_timestamp_seconds",
			Help: "When the last cycle run that left nothing behind ended."}),
		rewraps: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "syncbackend_cycle_rewraps_total",
			Help: "Re-wraps done by the cycle job, by target (member, device, escrow) and outcome."}, []string{"target", "outcome"}),
		calls: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "syncbackend_cycle_escrowd_calls_total",
			Help: "escrowd calls of the cycle job, by method and outcome."}, []string{"method", "outcome"}),
		epochs: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "syncbackend_unlock_epochs_total",
			Help: "Unlock-code epochs asked of escrowd, by outcome."}, []string{"outcome"}),
		events: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "syncbackend_events_total",
			Help: "Events read from escrowd's feed, by kind."}, []string{"kind"}),
		eventsMissed: prometheus.NewCounter(prometheus.CounterOpts{Name: "syncbackend_events_missed_total",
			Help: "Events escrowd pruned before the backend read them."}),
		notifications: prometheus.NewCounter(prometheus.CounterOpts{Name: "syncbackend_notifications_total",
			Help: "Notifications stored for users."}),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "syncbackend_http_requests_total",
			Help: "Device API requests, by route and status code."}, []string{"route", "code"}),
	}
	m.reg.MustRegister(m.cycles, m.cycleSeconds, m.cycleLast, m.rewraps, m.calls, m.epochs, m.events, m.eventsMissed,
		m.notifications, m.requests, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// Metrics serves the backend's metrics in the Prometheus format.
func (s *Server) Metrics() http.Handler {
	return promhttp.HandlerFor(s.metrics.reg, promhttp.HandlerOpts{})
}

// Gatherer gives the metrics to tests.
func (s *Server) Gatherer() prometheus.Gatherer { return s.metrics.reg }
