package integration

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	clientv3 "go.etcd.io/etcd/client/v3"

	resync "github.com/resyncd/resync"
	"github.com/resyncd/resync/coordinator"
	"github.com/resyncd/resync/internal/testing/etcdtest"
	"github.com/resyncd/resync/schema"
)

// plugEvent is one event a plugin took, numbered across the whole test.
type plugEvent struct {
	seq    int64
	agent  string
	plugin string
	status resync.Status
	rev    uint64
}

// eventLog numbers every plugin event of every agent in one order.
type eventLog struct {
	seq atomic.Int64
	mu  sync.Mutex
	evs []plugEvent
}

func (l *eventLog) add(agent, plugin string, st resync.Status, rev uint64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.evs = append(l.evs, plugEvent{seq: l.seq.Add(1), agent: agent, plugin: plugin, status: st, rev: rev})
}

func (l *eventLog) of(agent string, rev uint64) []plugEvent {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []plugEvent
	for _, e := range l.evs {
		if e.agent == agent && e.rev == rev {
			out = append(out, e)
		}
	}
	return out
}

// waveAgent is a real agent (resync.Plugin, its own client) whose plugins
// log every event and ack Started at once, unless the agent is held.
type waveAgent struct {
	name string
	p    *resync.Plugin
	wg   sync.WaitGroup
	hold atomic.Pointer[chan struct{}]
}

func startWaveAgent(t *testing.T, ep, name string, plugins []string, log *eventLog) *waveAgent {
	t.Helper()
	c := etcdtest.Client(t, ep)
	p, err := resync.New(resync.Deps{Log: quietLog(t), Client: c}, resync.Config{Agent: name, TTL: 2 * time.Second, AcceptTimeout: time.Second, AckTimeout: 30 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	a := &waveAgent{name: name, p: p}
	for _, pl := range plugins {
		ch := p.Register(pl).StatusChan()
		a.wg.Add(1)
		go func() {
			defer a.wg.Done()
			for {
				var ev resync.StatusEvent
				select {
				case ev = <-ch:
				case <-p.Done():
					return
				}
				log.add(name, pl, ev.ResyncStatus(), ev.(*resync.Event).Revision())
				if ev.ResyncStatus() != resync.Started {
					continue
				}
				if h := a.hold.Load(); h != nil {
					select {
					case <-*h:
					case <-p.Done():
						return
					}
				}
				ev.Ack()
			}
		}()
	}
	t.Cleanup(func() {
		p.Close()
		a.wg.Wait()
	})
	return a
}

func quietLog(t *testing.T) *logrus.Logger { return etcdtest.Logger(t, "warn") }

// wakeCounter counts the etcd watch events on each agent's two wake keys
// (its shard and its own key): what the agent's watcher receives.
type wakeCounter struct {
	mu sync.Mutex
	n  map[string]int
	// own: the etcd mod revision of each agent's own wake key writes, by
	// round and state.
	own map[string]map[uint64]map[schema.Status]int64
}

func countWakes(t *testing.T, c *clientv3.Client, agents []string) *wakeCounter {
	t.Helper()
	w := &wakeCounter{n: map[string]int{}, own: map[string]map[uint64]map[schema.Status]int64{}}
	owner := map[string][]string{}
	for _, a := range agents {
		owner[layout.WakeAgent(a)] = append(owner[layout.WakeAgent(a)], a)
		s := layout.WakeShard(schema.WakeShardOf(a))
		owner[s] = append(owner[s], a)
	}
	ctx, cancel := context.WithCancel(context.Background())
	wch := c.Watch(ctx, layout.Wakes(), clientv3.WithPrefix(), clientv3.WithCreatedNotify())
	<-wch
	done := make(chan struct{})
	go func() {
		defer close(done)
		for resp := range wch {
			w.mu.Lock()
			for _, e := range resp.Events {
				for _, a := range owner[string(e.Kv.Key)] {
					w.n[a]++
				}
				w.noteOwn(e)
			}
			w.mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	return w
}

// noteOwn records a put of an agent's own wake key (w.mu held).
func (w *wakeCounter) noteOwn(e *clientv3.Event) {
	k, err := layout.Parse(string(e.Kv.Key))
	if err != nil || k.Kind != schema.KindWakeAgent || e.Type != clientv3.EventTypePut {
		return
	}
	rec, err := layout.DecodeWake(string(e.Kv.Key), e.Kv.Value)
	if err != nil {
		return
	}
	if w.own[k.Agent] == nil {
		w.own[k.Agent] = map[uint64]map[schema.Status]int64{}
	}
	if w.own[k.Agent][rec.Revision] == nil {
		w.own[k.Agent][rec.Revision] = map[schema.Status]int64{}
	}
	w.own[k.Agent][rec.Revision][rec.State] = e.Kv.ModRevision
}

// ownAt is the mod revision at which agent a's own wake key got round n's
// record in state st (0: not seen).
func (w *wakeCounter) ownAt(a string, n uint64, st schema.Status) int64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.own[a][n][st]
}

func (w *wakeCounter) get(a string) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.n[a]
}

func putWave(t *testing.T, c *clientv3.Client, req schema.Request) {
	t.Helper()
	req.Cause, req.RequestedBy, req.RequestedAt = schema.CauseManual, "test", time.Now().UTC()
	if req.Reason == "" {
		req.Reason = "wave"
	}
	b, err := schema.Encode(req)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Put(ctxT(t, 5*time.Second), layout.OperatorRequest(schema.NewRequestID(time.Now())), string(b)); err != nil {
		t.Fatal(err)
	}
}

// Real agents in a wave round of one agent at a time: while the first
// agent holds its reload, the others' watchers get no watch event and
// their plugins no event at all. Each agent's plugins get NotActive when
// its own part is done, before the next agent's Started. In a round
// aborted while the first agent holds, the agents never started get no
// event at all, even after the round's NotActive reaches the shards.
func TestWaveAgentsOutsideTheWindowSeeNothing(t *testing.T) {
	m := etcdtest.Start(t)
	ep := m.Endpoint()
	obs := m.Client(t)
	log := &eventLog{}
	names := []string{"a0", "a1", "a2", "a3", "a4"}
	plugins := []string{"p1", "p2"}
	var agents []*waveAgent
	for _, n := range names {
		agents = append(agents, startWaveAgent(t, ep, n, plugins, log))
	}
	waitRegistered(t, obs, len(names)*len(plugins))
	hist := NewHistory(0)
	observed := startObserver(t, hist, ep)
	co := startCoordinator(t, etcdtest.Client(t, ep), quietLog(t), "c1")
	waitCompleted(t, obs, 0, 30*time.Second, "the initial round", func(v coordinator.RoundView) bool { return len(v.Acked) == 10 })
	wakes := countWakes(t, obs, names)

	hold := make(chan struct{})
	agents[0].hold.Store(&hold)
	putWave(t, obs, schema.Request{Wave: &schema.Wave{MaxInFlight: "1"}})
	etcdtest.WaitFor(t, 20*time.Second, "a0's p1 Started in round 2", func() bool { return len(log.of("a0", 2)) > 0 })
	for _, a := range names[1:] {
		if evs, n := log.of(a, 2), wakes.get(a); len(evs) > 0 || n > 0 {
			t.Errorf("%s is outside the window but got %d plugin events and %d wake watch events", a, len(evs), n)
		}
	}
	agents[0].hold.Store(nil)
	close(hold)
	v := waitCompleted(t, obs, 1, 60*time.Second, "round 2", func(v coordinator.RoundView) bool { return v.Revision == 2 })
	if len(v.Acked) != 10 {
		t.Fatalf("round 2 acked %v, want all 10", v.Acked)
	}
	// Each agent: its plugins' Started, then their NotActive; in etcd, its
	// NotActive written no later than the next agent's Started (the two
	// agents' watchers then deliver each at its own pace: the order of
	// deliveries across agents is not the protocol's).
	var prevNotActive int64
	for _, a := range names {
		var starts, nots int
		for _, e := range log.of(a, 2) {
			if e.status == resync.Started {
				starts++
			} else {
				nots++
			}
		}
		if starts != 2 || nots != 2 {
			t.Errorf("%s got %d Started and %d NotActive in round 2, want 2 and 2", a, starts, nots)
		}
		etcdtest.WaitFor(t, 10*time.Second, a+"'s NotActive of round 2 in the wake watch", func() bool {
			return wakes.ownAt(a, 2, schema.NotActive) > 0
		})
		started, done := wakes.ownAt(a, 2, schema.Started), wakes.ownAt(a, 2, schema.NotActive)
		if started == 0 || started < prevNotActive {
			t.Errorf("%s's Started of round 2 was written at %d, before the previous agent's NotActive at %d", a, started, prevNotActive)
		}
		prevNotActive = done
	}

	// Round 3: aborted while a0 holds; the others are never woken.
	hold3 := make(chan struct{})
	agents[0].hold.Store(&hold3)
	putWave(t, obs, schema.Request{Wave: &schema.Wave{MaxInFlight: "1"}})
	etcdtest.WaitFor(t, 20*time.Second, "a0's p1 Started in round 3", func() bool { return len(log.of("a0", 3)) > 0 })
	putWave(t, obs, schema.Request{Control: &schema.Control{Round: 3, Action: schema.ActionAbort}})
	etcdtest.WaitFor(t, 20*time.Second, "round 3 aborted", func() bool {
		s := co.Status()
		return s.Wave != nil && s.Wave.Aborted != ""
	})
	agents[0].hold.Store(nil)
	close(hold3)
	v = waitCompleted(t, obs, 2, 60*time.Second, "round 3", func(v coordinator.RoundView) bool { return v.Revision == 3 })
	if len(v.Acked) != 2 || len(v.Skipped) != 8 || v.Wave == nil || v.Wave.Aborted == "" {
		t.Fatalf("round 3: acked %v skipped %v wave %+v; want a0's 2 acked, 8 skipped, aborted", v.Acked, v.Skipped, v.Wave)
	}
	// The round's NotActive reached the shards: once every agent's
	// watcher has it, none of the skipped agents' plugins got an event.
	etcdtest.WaitFor(t, 10*time.Second, "round 3's NotActive in every agent's wake watch", func() bool {
		for _, a := range names[1:] {
			if wakes.get(a) == 0 {
				return false
			}
		}
		return true
	})
	// A round 4 for all: an agent's dispatcher handles records in order,
	// so once each agent took Started 4 it is past round 3.
	putWave(t, obs, schema.Request{Reason: "after"})
	etcdtest.WaitFor(t, 30*time.Second, "every agent's Started of round 4", func() bool {
		for _, a := range names {
			if len(log.of(a, 4)) == 0 {
				return false
			}
		}
		return true
	})
	for _, a := range names[1:] {
		if evs := log.of(a, 3); len(evs) > 0 {
			t.Errorf("%s was skipped in round 3 but its plugins got %v", a, evs)
		}
	}
	// The chaos checker's wave rules pass on what the observer saw.
	resp, err := obs.Get(ctxT(t, 5*time.Second), "probe")
	if err != nil {
		t.Fatal(err)
	}
	observed.waitFor(t, resp.Header.Revision, 10*time.Second)
	observed.stop()
	r := &Report{}
	hist.checkWaves(r)
	if r.WaveRounds != 2 || len(r.Violations) > 0 {
		t.Fatalf("the wave checker saw %d wave rounds (want 2): %v", r.WaveRounds, r.Violations)
	}
}
