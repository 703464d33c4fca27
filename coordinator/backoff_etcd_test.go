package coordinator

import (
	"errors"
	"io"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	clientv3 "go.etcd.io/etcd/client/v3"

	resync "github.com/resyncd/resync"
	"github.com/resyncd/resync/internal/etcdtest"
	"github.com/resyncd/resync/schema"
)

// errorRounds reads the error-caused rounds of agent's scope from history.
func errorRounds(t *testing.T, c *clientv3.Client, agent string) []schema.Round {
	t.Helper()
	resp, err := c.Get(ctxT(t, 10*time.Second), layout.Rounds(), clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	var out []schema.Round
	for _, kv := range resp.Kvs {
		if k, err := layout.Parse(string(kv.Key)); err != nil || k.Kind != schema.KindRound {
			continue
		}
		r, err := schema.DecodeRound(string(kv.Key), kv.Value)
		if err == nil && r.Cause == schema.CauseError && r.Scope.First == agent {
			out = append(out, r)
		}
	}
	return out
}

func (h *recHooks) backoffList() []time.Duration {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]time.Duration(nil), h.backoffs...)
}

// TestReportErrorLoopObeysBackoffAcrossFailover: a plugin calls ReportError
// in a loop for 30 s while acking every round ok (backoff 100 ms..1 s). The
// error-triggered rounds are at most what the doubling allows; the leader
// crashes at 15 s and its successor keeps the streak (its first backoff is
// the 1 s cap, not 100 ms); only after a quiet period is the next error
// retried fast again.
func TestReportErrorLoopObeysBackoffAcrossFailover(t *testing.T) {
	m := etcdtest.Start(t)
	obs := m.Client(t)
	eps := []string{m.Endpoint()}
	cfg := func(id string) Config {
		c := testConfig(id)
		c.BackoffMin, c.BackoffMax = 100*time.Millisecond, time.Second
		c.History = 1000
		return c
	}
	first := newCoord(t, eps, cfg("first"))
	waitLeader(t, []*testCoord{first}, 10*time.Second)
	waitIdle(t, obs, 10*time.Second)

	quietLog := logrus.New()
	quietLog.SetOutput(io.Discard)
	pcfg := resync.DefaultConfig("a1")
	pcfg.TTL = 5 * time.Second
	p, err := resync.New(resync.Deps{Client: etcdtest.Client(t, m.Endpoint()), Log: quietLog}, pcfg)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	reg := p.Register("p1")
	acked := make(chan struct{})
	go func() {
		defer close(acked)
		for ev := range reg.StatusChan() {
			ev.Ack() // every round clean: only the reports ask for rounds
		}
	}()
	defer func() { p.Close(); <-acked }()

	const loop = 30 * time.Second
	began := time.Now()
	tick := time.NewTicker(2 * time.Millisecond) // a tight loop, paced so as not to starve the machine
	defer tick.Stop()
	var second *testCoord
	for time.Since(began) < loop {
		<-tick.C
		p.ReportError("p1", errors.New("boom"))
		if second == nil && time.Since(began) > loop/2 {
			second = newCoord(t, eps, cfg("second"))
			first.Crash()
		}
	}
	lastReport := time.Now()
	bo := second.hooks.backoffList()
	if len(bo) == 0 || bo[0] != time.Second {
		t.Errorf("the successor's first backoffs %v: want the streak's 1s cap (the streak survives failover)", bo[:min(len(bo), 5)])
	}
	if len(bo) == 0 || bo[len(bo)-1] != time.Second {
		t.Errorf("the last backoff of the loop is %v, want the 1s cap", bo[len(bo)-1:])
	}
	etcdtest.WaitFor(t, 10*time.Second, "the last reports' round", func() bool {
		r, ok := readRevision(t, obs)
		return ok && r.State == schema.NotActive && r.StartedAt.After(lastReport.Add(-10*time.Millisecond))
	})
	n := len(errorRounds(t, obs, "a1"))
	// Ramp 0.1+0.2+0.4+0.8 s (4 rounds), then at most one per second; one
	// more for the round of the last reports.
	allowed := int(loop/time.Second) + 4 + 1
	t.Logf("%d error-triggered rounds in %v of ReportError (allowed %d)", n, loop, allowed)
	if n > allowed {
		t.Errorf("%d error-triggered rounds in %v: the backoff allows %d", n, loop, allowed)
	}
	if n < 10 {
		t.Errorf("only %d error-triggered rounds in %v: the errors were not retried", n, loop)
	}

	// Only after a quiet period (2 x 1 s without errors nor their rounds:
	// the agent's queued reports drain first) is an error retried fast.
	var quietSince time.Time
	var lastRev uint64
	etcdtest.WaitFor(t, 30*time.Second, "a quiet period of 2 x backoff-max", func() bool {
		r, ok := readRevision(t, obs)
		if !ok || r.State != schema.NotActive || r.Revision != lastRev || countPrefix(t, obs, layout.Requests()) > 0 {
			lastRev, quietSince = r.Revision, time.Now()
			return false
		}
		return time.Since(quietSince) > 2*time.Second+200*time.Millisecond
	})
	before := len(second.hooks.backoffList())
	p.ReportError("p1", errors.New("after quiet"))
	etcdtest.WaitFor(t, 10*time.Second, "the report to be seen", func() bool { return len(second.hooks.backoffList()) > before })
	if d := second.hooks.backoffList()[before]; d != 100*time.Millisecond {
		t.Errorf("an error after a quiet period: backoff %v, want 100ms", d)
	}
}
