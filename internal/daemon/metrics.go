package daemon

import (
	"context"
	"errors"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"
)

// metrics are the daemon's Prometheus metrics, served on listen_address at
// /metrics, with names modelled on GitLab Runner's
// (gitlab_runner_jobs, fleeting_taskscaler_tasks, …) under our own prefix.
type metrics struct {
	reg      *prometheus.Registry
	jobs     *prometheus.CounterVec
	duration *prometheus.HistogramVec
	requests *prometheus.CounterVec
}

var (
	slotsDesc = prometheus.NewDesc("instance_runner_slots", "Slots by state (idle, reserved, pending, acquired, unavailable, unhealthy, unready), as the taskscaler counts them.",
		[]string{"runner", "state"}, nil)
	instancesDesc = prometheus.NewDesc("instance_runner_instances", "Instances by state (requested, creating, running, deleting).",
		[]string{"runner", "state"}, nil)
	desiredDesc = prometheus.NewDesc("instance_runner_desired_instances", "The planner's target number of instances.",
		[]string{"runner"}, nil)
	runningDesc = prometheus.NewDesc("instance_runner_jobs_running", "Jobs in progress.", []string{"runner"}, nil)
)

func newMetrics(d *Daemon) *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		jobs: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "instance_runner_jobs_total",
			Help: "Jobs finished, by final state and failure reason."}, []string{"runner", "state", "failure_reason"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "instance_runner_job_duration_seconds",
			Help:    "Time from receiving a job to reporting its final state, in seconds.",
			Buckets: []float64{1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200}}, []string{"runner"}),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "instance_runner_job_requests_total",
			Help: "Job requests by outcome: job, empty, error, no_capacity (not sent: no free slot)."}, []string{"runner", "outcome"}),
	}
	m.reg.MustRegister(m.jobs, m.duration, m.requests, capacityCollector{d}, reloadCollector{d},
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// capacityCollector reads every taskscaler's Capacity at scrape time.
type capacityCollector struct{ d *Daemon }

func (c capacityCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- slotsDesc
	ch <- instancesDesc
	ch <- desiredDesc
	ch <- runningDesc
}

func (c capacityCollector) Collect(ch chan<- prometheus.Metric) {
	for _, r := range c.d.runners {
		cp := r.ts.Capacity()
		for state, n := range map[string]int{"idle": cp.Idle, "reserved": cp.Reserved, "pending": cp.Pending,
			"acquired": cp.Acquired, "unavailable": cp.Unavailable, "unhealthy": cp.Unhealthy, "unready": cp.Unready} {
			ch <- prometheus.MustNewConstMetric(slotsDesc, prometheus.GaugeValue, float64(n), r.name, state)
		}
		ic := cp.Instances
		for state, n := range map[string]int{"requested": ic.Requested, "creating": ic.Creating, "running": ic.Running, "deleting": ic.Deleting} {
			ch <- prometheus.MustNewConstMetric(instancesDesc, prometheus.GaugeValue, float64(n), r.name, state)
		}
		ch <- prometheus.MustNewConstMetric(desiredDesc, prometheus.GaugeValue, float64(cp.DesiredInstances), r.name)
		r.mu.Lock()
		n := len(r.running)
		r.mu.Unlock()
		ch <- prometheus.MustNewConstMetric(runningDesc, prometheus.GaugeValue, float64(n), r.name)
	}
}

// serveMetrics serves /metrics and /healthz on addr until ctx ends. A
// listen error is returned at once.
func (d *Daemon) serveMetrics(ctx context.Context, addr string) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(d.metrics.reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok\n")) })
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			d.log.Error("metrics server stopped", zap.Error(err))
		}
	}()
	d.mu.Lock()
	d.metricsAddr = ln.Addr().String()
	d.mu.Unlock()
	d.log.Info("serving metrics", zap.String("listen_address", ln.Addr().String()))
	return nil
}
