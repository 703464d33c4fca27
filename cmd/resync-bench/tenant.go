package main

import (
	"context"
	"sync"
	"time"

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

	mu      sync.Mutex
	samples []probeSample
}

type probeSample struct {
	at   time.Time // sent
	took time.Duration
}

// startProbe starts the tenant on a client of its own.
func startProbe(e *env) (*probe, error) {
	c, err := e.client()
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	p := &probe{c: c, cancel: cancel, done: make(chan struct{})}
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
		p.mu.Lock()
		p.samples = append(p.samples, probeSample{at: at, took: time.Since(at)})
		p.mu.Unlock()
	}
}

// Close stops the probe and its client.
func (p *probe) Close() {
	p.cancel()
	<-p.done
	p.c.Close()
}

// between is the latency of every put sent in [from, to).
func (p *probe) between(from, to time.Time) []time.Duration {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []time.Duration
	for _, s := range p.samples {
		if !s.at.Before(from) && s.at.Before(to) {
			out = append(out, s.took)
		}
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
