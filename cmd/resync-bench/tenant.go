package main

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// tenantEvery is how often the tenant probe writes: another user of the
// same etcd (Kubernetes objects, the agents' own configuration) whose
// latency a round must not stall.
const tenantEvery = 5 * time.Millisecond

// nearWrite is how close to a coordinator's start or finish write a probe
// write counts as "near" it: the notify stall of a key the fleet watches
// lands within it.
const nearWrite = 100 * time.Millisecond

// probe is the tenant: its own etcd client putting one small key outside
// the resync prefix every tenantEvery, one put at a time, recording when
// each was sent and how long etcd took to answer.
type probe struct {
	c      *clientv3.Client
	cancel context.CancelFunc
	done   chan struct{}

	slow prometheus.Gauge // etcd's slow-watcher gauge; nil if not found

	mu      sync.Mutex
	samples []probeSample
}

type probeSample struct {
	at   time.Time // sent
	took time.Duration
	slow int // etcd's slow watchers when it was answered (-1: unknown)
}

// startProbe starts the tenant on a client of its own.
func startProbe(e *env) (*probe, error) {
	c, err := e.client()
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	p := &probe{c: c, cancel: cancel, done: make(chan struct{}), slow: etcdSlowWatchers()}
	go p.run(ctx)
	return p, nil
}

func (p *probe) run(ctx context.Context) {
	defer close(p.done)
	tick := time.NewTicker(tenantEvery)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		at := time.Now()
		wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		_, err := p.c.Put(wctx, "/bench-tenant/probe", at.Format(time.RFC3339Nano))
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			continue // a failed put is no latency sample; the next tick tries again
		}
		took := time.Since(at)
		p.mu.Lock()
		p.samples = append(p.samples, probeSample{at: at, took: took, slow: gaugeInt(p.slow)})
		p.mu.Unlock()
	}
}

// Close stops the probe and its client.
func (p *probe) Close() {
	p.cancel()
	<-p.done
	p.c.Close()
}

// slowBetween counts the puts sent in [from, to) and, of those, the ones
// answered while etcd had one or more slow watchers, and the most.
func (p *probe) slowBetween(from, to time.Time) SlowWatchers {
	var out SlowWatchers
	for _, s := range p.window(from, to) {
		if s.slow < 0 {
			continue
		}
		out.Samples++
		if s.slow > 0 {
			out.WithSlow++
		}
		out.Max = max(out.Max, s.slow)
	}
	return out
}

// window is the samples of the puts sent in [from, to).
func (p *probe) window(from, to time.Time) []probeSample {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []probeSample
	for _, s := range p.samples {
		if !s.at.Before(from) && s.at.Before(to) {
			out = append(out, s)
		}
	}
	return out
}

// between is the latency of every put sent in [from, to).
func (p *probe) between(from, to time.Time) []time.Duration {
	w := p.window(from, to)
	out := make([]time.Duration, len(w))
	for i, s := range w {
		out[i] = s.took
	}
	return out
}

// near is the latency of every put in flight within nearWrite of one of
// the instants at (a put sent before and answered after counts).
func (p *probe) near(at []time.Time) []time.Duration {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []time.Duration
	for _, s := range p.samples {
		end := s.at.Add(s.took)
		for _, t := range at {
			if !end.Before(t.Add(-nearWrite)) && !s.at.After(t.Add(nearWrite)) {
				out = append(out, s.took)
				break
			}
		}
	}
	return out
}

// idle measures the probe alone for d: the tenant's latency with the fleet
// registered and no round running.
func (p *probe) idle(ctx context.Context, d time.Duration) ([]time.Duration, error) {
	from := time.Now()
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-t.C:
	}
	return p.between(from, time.Now()), nil
}

// tenantDist is dist without the per-sample list: the probe takes
// thousands of samples a size.
func tenantDist(samples []time.Duration) Dist {
	d := dist(samples)
	d.All = nil
	return d
}

// SlowWatchers is how often the tenant probe found etcd with slow
// watchers: watchers whose stream's buffer (128 responses) was full when
// a write notified them. etcd parks such a watcher, then catches it up
// from its store every 100 ms: a watcher of every ack (the leader's, the
// floors' counter) sees the acks of a burst up to 100 ms late, on some
// rounds and not others.
type SlowWatchers struct {
	Samples  int `json:"samples"`
	WithSlow int `json:"with_slow"`
	Max      int `json:"max"`
}

// add sums two counts.
func (s SlowWatchers) add(o SlowWatchers) SlowWatchers {
	return SlowWatchers{Samples: s.Samples + o.Samples, WithSlow: s.WithSlow + o.WithSlow, Max: max(s.Max, o.Max)}
}

// share is the fraction of samples with a slow watcher, "-" without any.
func (s SlowWatchers) share() string {
	if s.Samples == 0 {
		return "-"
	}
	return fmt.Sprintf("%.0f%%", 100*float64(s.WithSlow)/float64(s.Samples))
}

// etcdSlowWatchers is the embedded etcd's gauge of slow watchers
// (etcd_debugging_mvcc_slow_watcher_total).
func etcdSlowWatchers() prometheus.Gauge {
	return etcdGauge("slow_watcher_total", "Total number of unsynced slow watchers.")
}

// etcdGauge is the embedded etcd's gauge etcd_debugging_mvcc_<name>,
// read directly: a registration of the same name and help is refused with
// the collector already registered (nil if there is none). Gathering the
// whole registry every 5 ms would cost the bench CPU.
func etcdGauge(name, help string) prometheus.Gauge {
	g := prometheus.NewGauge(prometheus.GaugeOpts{Namespace: "etcd_debugging", Subsystem: "mvcc", Name: name, Help: help})
	err := prometheus.DefaultRegisterer.Register(g)
	if are, ok := err.(prometheus.AlreadyRegisteredError); ok {
		if existing, ok := are.ExistingCollector.(prometheus.Gauge); ok {
			return existing
		}
	}
	if err == nil {
		prometheus.DefaultRegisterer.Unregister(g)
	}
	return nil
}

// gaugeInt is g's value, -1 without g.
func gaugeInt(g prometheus.Gauge) int {
	if g == nil {
		return -1
	}
	var m dto.Metric
	if g.Write(&m) != nil {
		return -1
	}
	return int(m.GetGauge().GetValue())
}
