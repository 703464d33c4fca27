package watcher

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/goleak"

	"github.com/resyncd/resync/internal/testing/etcdtest"
	"github.com/resyncd/resync/registry"
	"github.com/resyncd/resync/schema"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m, etcdtest.LeakOptions()...) }

var layout = schema.MustLayout(schema.DefaultPrefix)

// Short timeouts for tests, set through Config.
const (
	acceptTimeout = 200 * time.Millisecond
	ackTimeout    = 500 * time.Millisecond
	wait          = 10 * time.Second // deadline of conditions that should hold soon
)

func testLogger(t *testing.T) logrus.FieldLogger { return etcdtest.Logger(t, "debug") }

func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

type agent struct {
	reg *registry.Registry
	w   *Watcher
}

func newAgent(t *testing.T, c *clientv3.Client, name string, ttl time.Duration, tune ...func(*Config)) *agent {
	t.Helper()
	return newAgentWith(t, c, name, ttl, nil, tune...)
}

// newAgentWith is newAgent with options for the Watcher.
func newAgentWith(t *testing.T, c *clientv3.Client, name string, ttl time.Duration, opts []Option, tune ...func(*Config)) *agent {
	t.Helper()
	rc := registry.DefaultConfig(name)
	rc.TTL = ttl
	rc.OpTimeout = time.Second
	rc.RetryMax = 200 * time.Millisecond
	log := testLogger(t).WithField("test_agent", name)
	reg, err := registry.New(c, rc, registry.WithLogger(log))
	if err != nil {
		t.Fatal(err)
	}
	cfg := DefaultConfig()
	cfg.AcceptTimeout = acceptTimeout
	cfg.AckTimeout = ackTimeout
	cfg.OpTimeout = time.Second
	cfg.RetryMax = 200 * time.Millisecond
	for _, f := range tune {
		f(&cfg)
	}
	w, err := New(reg, cfg, append([]Option{WithLogger(log)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	a := &agent{reg: reg, w: w}
	t.Cleanup(a.close)
	return a
}

func (a *agent) close() {
	a.w.Close()
	a.reg.Close()
}

func (a *agent) register(t *testing.T, plugins ...string) []<-chan StatusEvent {
	t.Helper()
	var chs []<-chan StatusEvent
	for _, p := range plugins {
		ch, err := a.w.Register(p)
		if err != nil {
			t.Fatal(err)
		}
		chs = append(chs, ch)
	}
	return chs
}

// writeRev plays the coordinator: it writes the revision record and its
// wake keys (etcdtest.PutRecord) and, for a scope that is not all, first the
// participation record
// rounds/<N>/agents/<agent> of the scope's agent (an agent scope lists the
// plugins these tests use: p, q, r).
func writeRev(t *testing.T, c *clientv3.Client, n uint64, state schema.Status, scope schema.Scope) {
	t.Helper()
	writeRevEpoch(t, c, n, state, scope, "")
}

// writeRevEpoch is writeRev with an epoch.
func writeRevEpoch(t *testing.T, c *clientv3.Client, n uint64, state schema.Status, scope schema.Scope, epoch string) {
	t.Helper()
	now := time.Now().UTC()
	var set schema.ScopeSet
	set.Add(scope)
	if state == schema.Started && !scope.All() {
		ra := schema.RoundAgent{Revision: n, Agent: scope.Agent, State: schema.Started, Plugins: []string{"p", "q", "r"}}
		if scope.Plugin != "" {
			ra.Plugins = []string{scope.Plugin}
		}
		b, err := schema.Encode(ra)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.Put(ctxT(t, 5*time.Second), layout.RoundAgent(n, scope.Agent), string(b)); err != nil {
			t.Fatal(err)
		}
	}
	rec := schema.Revision{
		Revision: n, State: state, Reason: "test round", Cause: schema.CauseManual, Scope: set.Summary(),
		StartedAt: now, Deadline: now.Add(time.Minute), Leader: "test", Epoch: epoch,
	}
	if state == schema.NotActive {
		rec.FinishedAt = now
	}
	var agents []string
	if !scope.All() {
		agents = []string{scope.Agent}
	}
	if err := etcdtest.PutRecord(ctxT(t, 5*time.Second), c, layout, rec, agents...); err != nil {
		t.Fatal(err)
	}
}

// recv waits for the next event on ch.
func recv(t *testing.T, ch <-chan StatusEvent, what string) *Event {
	t.Helper()
	select {
	case ev, ok := <-ch:
		if !ok {
			t.Fatalf("%s: channel closed", what)
		}
		return ev.(*Event)
	case <-time.After(wait):
		t.Fatalf("%s: no event within %v", what, wait)
	}
	return nil
}

// expectNone checks that nothing arrives on ch for d.
func expectNone(t *testing.T, ch <-chan StatusEvent, d time.Duration, what string) {
	t.Helper()
	select {
	case ev := <-ch:
		e := ev.(*Event)
		t.Fatalf("%s: unexpected %s %d for %s", what, e.ResyncStatus(), e.Revision(), e.Plugin())
	case <-time.After(d):
	}
}

// getAck reads a plugin's ack key; ok is false when it does not exist.
func getAck(t *testing.T, c *clientv3.Client, agent, plugin string) (schema.Ack, int64, bool) {
	t.Helper()
	key := layout.Ack(agent, plugin)
	resp, err := c.Get(ctxT(t, 5*time.Second), key)
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Kvs) == 0 {
		return schema.Ack{}, 0, false
	}
	ack, err := schema.DecodeAck(key, resp.Kvs[0].Value)
	if err != nil {
		t.Fatal(err)
	}
	return ack, resp.Kvs[0].Lease, true
}

// waitAck waits until the plugin's ack key holds revision n with result res.
func waitAck(t *testing.T, c *clientv3.Client, agent, plugin string, n uint64, res schema.Result) schema.Ack {
	t.Helper()
	var ack schema.Ack
	etcdtest.WaitFor(t, wait, "ack of "+agent+"/"+plugin, func() bool {
		a, _, ok := getAck(t, c, agent, plugin)
		ack = a
		return ok && a.Revision == n && a.Result == res
	})
	return ack
}

// counter runs a plugin that acks every event and counts them per status and
// revision.
type counter struct {
	mu     sync.Mutex
	counts map[schema.Status]map[uint64]int
	done   chan struct{}
}

// It ends when a's Watcher is closed (status channels are never closed).
func autoAck(a *agent, ch <-chan StatusEvent) *counter {
	c := &counter{counts: map[schema.Status]map[uint64]int{schema.Started: {}, schema.NotActive: {}}, done: make(chan struct{})}
	go func() {
		defer close(c.done)
		for {
			var ev StatusEvent
			select {
			case ev = <-ch:
			case <-a.w.Done():
				return
			}
			e := ev.(*Event)
			c.mu.Lock()
			c.counts[e.ResyncStatus()][e.Revision()]++
			c.mu.Unlock()
			e.Ack()
		}
	}()
	return c
}

func (c *counter) get(s schema.Status, n uint64) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.counts[s][n]
}

func (c *counter) snapshot() map[schema.Status]map[uint64]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := map[schema.Status]map[uint64]int{}
	for s, m := range c.counts {
		out[s] = map[uint64]int{}
		for n, k := range m {
			out[s][n] = k
		}
	}
	return out
}
