package resync_test

import (
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/resyncd/resync"
	"github.com/resyncd/resync/coordinator"
	"github.com/resyncd/resync/internal/testing/etcdtest"
	"github.com/resyncd/resync/schema"
)

// startCoordinator runs a real coordinator with short test timings.
func startCoordinator(t *testing.T, c *clientv3.Client, id string) *coordinator.Coordinator {
	t.Helper()
	co, err := coordinator.New(c, coordinator.Config{ID: id, SessionTTL: 2 * time.Second, RoundDeadline: 30 * time.Second,
		BackoffMin: 100 * time.Millisecond, BackoffMax: time.Second, OpTimeout: 2 * time.Second},
		coordinator.WithLogger(etcdtest.Logger(t, "info").WithField("coordinator", id)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { co.Close() })
	return co
}

// waitRound waits until round n is finished and returns it.
func waitRound(t *testing.T, c *clientv3.Client, n uint64, within time.Duration) schema.Round {
	t.Helper()
	var r schema.Round
	etcdtest.WaitFor(t, within, "round finished", func() bool {
		var ok bool
		r, ok, _ = etcdtest.ReadRound(ctxT(t, 5*time.Second), c, layout, n)
		return ok && r.State == schema.NotActive
	})
	return r
}

// roundAgent reads rounds/<n>/agents/<agent> (zero if absent).
func roundAgent(t *testing.T, c *clientv3.Client, n uint64, agent string) schema.RoundAgent {
	t.Helper()
	key := layout.RoundAgent(n, agent)
	resp, err := c.Get(ctxT(t, 5*time.Second), key)
	if err != nil || len(resp.Kvs) == 0 {
		return schema.RoundAgent{}
	}
	ra, err := schema.DecodeRoundAgent(key, resp.Kvs[0].Value)
	if err != nil {
		t.Fatal(err)
	}
	return ra
}

func waitRegistrations(t *testing.T, c *clientv3.Client, agent string, n int) {
	t.Helper()
	etcdtest.WaitFor(t, wait, "registrations of "+agent, func() bool { return keys(t, c, layout.AgentRegistrations(agent)) == n })
}

// lifecyclePlugin is a cn-infra style plugin: it registers for resync in
// Init and starts reading its channel in AfterInit, after a delay.
type lifecyclePlugin struct {
	name  string
	rs    resync.Subscriber
	delay time.Duration
	log   logrus.FieldLogger

	reg  resync.Registration
	stop chan struct{} // closed by Close: the loop ends (status channels never close)
	wg   sync.WaitGroup
	mu   sync.Mutex
	seen []*resync.Event // every event taken, in order
}

func (p *lifecyclePlugin) Init() error {
	p.reg = p.rs.Register(p.name)
	return nil
}

func (p *lifecyclePlugin) AfterInit() error {
	p.stop = make(chan struct{})
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		<-time.After(p.delay) // the plugin is slow to start reading: the scenario, not a wait
		for {
			var ev resync.StatusEvent
			select {
			case ev = <-p.reg.StatusChan():
			case <-p.stop:
				return
			}
			e := ev.(*resync.Event)
			p.mu.Lock()
			p.seen = append(p.seen, e)
			p.mu.Unlock()
			p.log.WithField("plugin", p.name).WithField("status", e.ResyncStatus()).WithField("revision", e.Revision()).Info("test plugin: event")
			ev.Ack()
		}
	}()
	return nil
}

func (p *lifecyclePlugin) Close() error {
	close(p.stop)
	p.wg.Wait()
	return nil
}
func (p *lifecyclePlugin) String() string { return p.name }

// started counts the Started events taken for revision n.
func (p *lifecyclePlugin) started(n uint64) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	k := 0
	for _, e := range p.seen {
		if e.ResyncStatus() == resync.Started && e.Revision() == n {
			k++
		}
	}
	return k
}

// Two plugins register in Init and read from AfterInit 3 s later, longer
// than the accept timeout (default 1 s). Round 1 (both are participants)
// gets their timeout acks and does not wait; the join resync is not lost:
// each plugin, when it reads, gets exactly one Started for the revision
// current then, acks it, and the coordinator records that ack in that
// round (the retry round that covers them). No revision is delivered twice.
func TestLifecycleLateReadersGetTheirJoinResync(t *testing.T) {
	m := etcdtest.Start(t)
	c := m.Client(t)
	log := etcdtest.Logger(t, "debug")
	cfg := resync.DefaultConfig("lc") // the default 1 s accept timeout
	rs, err := resync.NewPlugin(resync.Deps{Log: log, Client: c}, cfg)
	if err != nil {
		t.Fatal(err)
	}
	a := &lifecyclePlugin{name: "ifplugin", rs: rs, delay: 3 * time.Second, log: log}
	b := &lifecyclePlugin{name: "l3plugin", rs: rs, delay: 3 * time.Second, log: log}
	plugins := []cnInfraPlugin{rs, a, b}
	// As cn-infra's agent: every Init in order, then every AfterInit.
	for _, p := range plugins {
		if err := p.Init(); err != nil {
			t.Fatalf("%s Init: %v", p, err)
		}
	}
	waitRegistrations(t, c, "lc", 2)
	startCoordinator(t, c, "co") // round 1: both plugins are participants
	for _, p := range plugins {
		if err := p.AfterInit(); err != nil {
			t.Fatalf("%s AfterInit: %v", p, err)
		}
	}
	for _, p := range []*lifecyclePlugin{a, b} {
		// The plugin took a Started and the round of that revision
		// recorded its ack.
		var n uint64
		etcdtest.WaitFor(t, 60*time.Second, p.name+"'s late join recorded by the coordinator", func() bool {
			p.mu.Lock()
			for _, e := range p.seen {
				if e.ResyncStatus() == resync.Started {
					n = e.Revision()
					break
				}
			}
			p.mu.Unlock()
			if n == 0 {
				return false
			}
			r, ok, _ := etcdtest.ReadRound(ctxT(t, 5*time.Second), c, layout, n)
			return ok && r.State == schema.NotActive && roundAgent(t, c, n, "lc").Outcome(p.name) == "acked"
		})
		p.mu.Lock()
		first := p.seen[0]
		seen := map[uint64]int{}
		for _, e := range p.seen {
			if e.ResyncStatus() == resync.Started {
				seen[e.Revision()]++
			}
		}
		p.mu.Unlock()
		if !first.Join() || first.ResyncStatus() != resync.Started {
			t.Errorf("%s's first event: %s %d join=%v, want its join Started", p.name, first.ResyncStatus(), first.Revision(), first.Join())
		}
		for rev, k := range seen {
			if k != 1 {
				t.Errorf("%s got %d Started for revision %d", p.name, k, rev)
			}
		}
		if ack, _ := waitAck(t, c, "lc", p.name, n); ack.Result != schema.ResultOK {
			t.Errorf("%s's ack: %+v", p.name, ack)
		}
	}
	if s := rs.Stats(); s.JoinsParked != 2 {
		t.Errorf("stats %+v: want both joins parked", s)
	}
	for i := len(plugins) - 1; i >= 0; i-- {
		if err := plugins[i].Close(); err != nil {
			t.Fatal(err)
		}
	}
	a.wg.Wait()
	b.wg.Wait()
}

// A plugin that is slow to take a round's Started (not its join) gets a
// timeout ack; the coordinator then plans a retry that covers it.
func TestLateReaderOfARoundIsCoveredByTheRetry(t *testing.T) {
	m := etcdtest.Start(t)
	c := m.Client(t)
	p := newPlugin(t, c, "lr")
	fast, slow := p.Register("fast"), p.Register("slow")
	waitRegistrations(t, c, "lr", 2)
	startCoordinator(t, c, "co")
	recv(t, fast, resync.Started, 1).Ack()
	recv(t, slow, resync.Started, 1).Ack()
	if r := waitRound(t, c, 1, wait); r.Counts.Acked != 2 {
		t.Fatalf("round 1 %+v", r)
	}
	recv(t, fast, resync.NotActive, 1)
	recv(t, slow, resync.NotActive, 1)

	if err := putRequest(t, c, "round 2"); err != nil {
		t.Fatal(err)
	}
	recv(t, fast, resync.Started, 2).Ack()
	// slow does not read: its Started 2 times out (200 ms in newPlugin).
	r := waitRound(t, c, 2, wait)
	if ra := roundAgent(t, c, 2, "lr"); r.Counts.TimedOut != 1 || !slices.Equal(ra.TimedOut, []string{"slow"}) {
		t.Fatalf("round 2 %+v, timed out %v, want slow", r.Counts, ra.TimedOut)
	}
	recv(t, fast, resync.NotActive, 2)
	// The retry round 3 covers slow, which now reads.
	ev := recv(t, slow, resync.Started, 3)
	ev.Ack()
	r = waitRound(t, c, 3, wait)
	if ra := roundAgent(t, c, 3, "lr"); r.Cause != schema.CauseError || r.Counts.Acked != 1 || !slices.Equal(ra.Acked, []string{"slow"}) {
		t.Fatalf("retry round 3: cause %s, %+v, acked %v", r.Cause, r.Counts, ra.Acked)
	}
}

func putRequest(t *testing.T, c *clientv3.Client, reason string) error {
	t.Helper()
	now := time.Now().UTC()
	b, err := schema.Encode(schema.Request{Reason: reason, Cause: schema.CauseManual, RequestedBy: "test", RequestedAt: now})
	if err != nil {
		return err
	}
	_, err = c.Put(ctxT(t, 5*time.Second), layout.OperatorRequest(schema.NewRequestID(now)), string(b))
	return err
}
