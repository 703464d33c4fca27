package coordinator

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/resyncd/resync/internal/testing/etcdtest"
	"github.com/resyncd/resync/schema"
)

// waveAcker plays the agents of a fleet in a wave round: it follows the
// agents' own wake keys and, when one says Started, acks each of that
// agent's plugins (error for the agents in fail), after taking a token
// from tokens when tokens is not nil.
type waveAcker struct {
	f      *fleet
	fail   map[string]bool
	tokens chan struct{}
	mu     sync.Mutex
	starts map[string]int // agent -> Started wake puts seen
}

func newWaveAcker(t *testing.T, f *fleet, obs *clientv3.Client, fail map[string]bool, tokens chan struct{}) *waveAcker {
	t.Helper()
	a := &waveAcker{f: f, fail: fail, tokens: tokens, starts: map[string]int{}}
	byAgent := map[string][]schema.PluginID{}
	for _, id := range f.ids {
		byAgent[id.Agent] = append(byAgent[id.Agent], id)
	}
	queue := make(chan schema.Revision, 10000)
	agentOf := make(chan string, 10000)
	wch := obs.Watch(f.ctx, layout.Prefix()+"wake/agents/", clientv3.WithPrefix(), clientv3.WithCreatedNotify())
	<-wch
	f.wg.Add(2)
	go func() {
		defer f.wg.Done()
		for resp := range wch {
			for _, e := range resp.Events {
				k, err := layout.Parse(string(e.Kv.Key))
				if e.Type != clientv3.EventTypePut || err != nil {
					continue
				}
				rec, err := schema.DecodeRevision(string(e.Kv.Key), e.Kv.Value)
				if err != nil || rec.State != schema.Started {
					continue
				}
				a.mu.Lock()
				a.starts[k.Agent]++
				a.mu.Unlock()
				queue <- rec
				agentOf <- k.Agent
			}
		}
	}()
	go func() {
		defer f.wg.Done()
		for {
			var rec schema.Revision
			select {
			case rec = <-queue:
			case <-f.ctx.Done():
				return
			}
			agent := <-agentOf
			if a.tokens != nil {
				select {
				case <-a.tokens:
				case <-f.ctx.Done():
					return
				}
			}
			res, text := schema.ResultOK, ""
			if a.fail[agent] {
				res, text = schema.ResultError, "reload failed"
			}
			var ops []clientv3.Op
			for _, id := range byAgent[agent] {
				b, _ := schema.Encode(schema.Ack{Revision: rec.Revision, Result: res, Error: text, AckedAt: time.Now().UTC()})
				ops = append(ops, clientv3.OpPut(layout.Ack(id.Agent, id.Plugin), string(b), clientv3.WithLease(f.lease)))
			}
			if _, err := f.c.Txn(f.ctx).Then(ops...).Commit(); err != nil {
				return
			}
		}
	}()
	return a
}

// give lets n more agents ack.
func (a *waveAcker) give(n int) {
	for range n {
		a.tokens <- struct{}{}
	}
}

func waveRequest(t *testing.T, c *clientv3.Client, w schema.Wave, reason string) {
	t.Helper()
	b, err := schema.Encode(schema.Request{Reason: reason, Cause: schema.CauseManual, Wave: &w, RequestedBy: "test", RequestedAt: time.Now().UTC()})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Put(ctxT(t, 5*time.Second), layout.OperatorRequest(schema.NewRequestID(time.Now())), string(b)); err != nil {
		t.Fatal(err)
	}
}

func controlRound(t *testing.T, c *clientv3.Client, n uint64, action string) {
	t.Helper()
	b, err := schema.Encode(schema.Request{Reason: action, Cause: schema.CauseManual, Control: &schema.Control{Round: n, Action: action},
		RequestedBy: "operator", RequestedAt: time.Now().UTC()})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Put(ctxT(t, 5*time.Second), layout.OperatorRequest(schema.NewRequestID(time.Now())), string(b)); err != nil {
		t.Fatal(err)
	}
}

// waveEvent is one event of a wave round in etcd's history, in order.
type waveEvent struct {
	mod   int64
	kind  string // "start" (the agent's wake key says Started), "done" (NotActive), "ack", "shard", "plan"
	agent string
	rec   schema.Revision // start, done, shard
	ack   schema.Ack
	round schema.Round // plan
}

// waveHistory reads every event under the prefix since etcd revision
// from, up to now, from etcd's own history: what the checks below run on.
func waveHistory(t *testing.T, c *clientv3.Client, from int64) []waveEvent {
	t.Helper()
	ctx := ctxT(t, 20*time.Second)
	now, err := c.Get(ctx, "history-probe")
	if err != nil {
		t.Fatal(err)
	}
	var out []waveEvent
	wch := c.Watch(ctx, layout.Prefix(), clientv3.WithPrefix(), clientv3.WithRev(from))
	for resp := range wch {
		if err := resp.Err(); err != nil {
			t.Fatalf("history watch: %v", err)
		}
		for _, e := range resp.Events {
			if ev, ok := waveEventOf(e); ok {
				out = append(out, ev)
			}
		}
		if resp.Header.Revision >= now.Header.Revision {
			break
		}
	}
	return out
}

func waveEventOf(e *clientv3.Event) (waveEvent, bool) {
	key := string(e.Kv.Key)
	k, err := layout.Parse(key)
	if e.Type != clientv3.EventTypePut || err != nil {
		return waveEvent{}, false
	}
	ev := waveEvent{mod: e.Kv.ModRevision, agent: k.Agent}
	switch k.Kind {
	case schema.KindWakeAgent, schema.KindWakeShard:
		rec, err := schema.DecodeRevision(key, e.Kv.Value)
		if err != nil {
			return waveEvent{}, false
		}
		ev.rec, ev.kind = rec, "shard"
		if k.Kind == schema.KindWakeAgent {
			ev.kind = map[schema.Status]string{schema.Started: "start", schema.NotActive: "done"}[rec.State]
		}
	case schema.KindAck:
		_, ack, err := layout.DecodeAck(key, e.Kv.Value)
		if err != nil {
			return waveEvent{}, false
		}
		ev.kind, ev.ack = "ack", ack
	case schema.KindRound:
		r, err := layout.DecodeRound(key, e.Kv.Value)
		if err != nil {
			return waveEvent{}, false
		}
		ev.kind, ev.round = "plan", r
	default:
		return waveEvent{}, false
	}
	return ev, true
}

// waveCheck checks round n's history: no agent Started twice, at most
// maxInFlight agents in flight at any event (from an agent's Started to
// the ack of its last plugin), no wake shard saying Started, and every
// agent's first wake event its own Started (an agent outside the window
// heard nothing). It returns the agents in start order.
func waveCheck(t *testing.T, hist []waveEvent, n uint64, plugins, maxInFlight int) []string {
	t.Helper()
	started := map[string]bool{}
	acked := map[string]int{}
	var order []string
	inFlight, peak := 0, 0
	for _, ev := range hist {
		switch {
		case ev.kind == "shard" && ev.rec.Revision == n && ev.rec.State == schema.Started:
			t.Errorf("a wake shard says round %d Started: a wave round wakes agents by their own keys only", n)
		case ev.kind == "start" && ev.rec.Revision == n:
			if started[ev.agent] {
				t.Errorf("agent %s Started twice in round %d", ev.agent, n)
			}
			started[ev.agent] = true
			order = append(order, ev.agent)
			inFlight++
			peak = max(peak, inFlight)
			if maxInFlight > 0 && inFlight > maxInFlight {
				t.Errorf("at etcd revision %d, %d agents in flight, above the bound %d", ev.mod, inFlight, maxInFlight)
			}
		case ev.kind == "ack" && ev.ack.Revision == n:
			if !started[ev.agent] {
				t.Errorf("agent %s acked round %d before its Started", ev.agent, n)
			}
			if acked[ev.agent]++; acked[ev.agent] == plugins {
				inFlight--
			}
		case ev.kind == "done" && ev.rec.Revision == n && !started[ev.agent]:
			t.Errorf("agent %s got a NotActive for round %d it was never Started for", ev.agent, n)
		}
	}
	t.Logf("round %d: %d agents started, peak in flight %d (bound %d)", n, len(order), peak, maxInFlight)
	return order
}

// wavePlan reads round n's summary.
func wavePlan(t *testing.T, c *clientv3.Client, n uint64) schema.Round {
	t.Helper()
	r, ok := readRound(t, c, n)
	if !ok {
		t.Fatalf("round %d has no summary", n)
	}
	if r.Wave == nil {
		t.Fatalf("round %d is no wave round: %+v", n, r.Round)
	}
	return r.Round
}

func waitWave(t *testing.T, co *testCoord, what string, ok func(WaveStatus) bool) {
	t.Helper()
	etcdtest.WaitFor(t, 30*time.Second, what, func() bool {
		s := co.Status()
		return s.Wave != nil && ok(*s.Wave)
	})
}

// startWaveFleet starts etcd, a fleet of agents x plugins and a
// coordinator whose initial round is done, and returns them.
func startWaveFleet(t *testing.T, agents int, plugins []string, cfg Config) (*etcdtest.Member, *clientv3.Client, *fleet, *testCoord) {
	t.Helper()
	m := etcdtest.Start(t)
	obs := m.Client(t)
	f := startFleet(t, obs, fleetNames(agents, "node-", 0), plugins)
	co := newCoord(t, []string{m.Endpoint()}, cfg)
	waitRevision(t, co, 1, schema.Started)
	f.ack(1, f.ids, schema.ResultOK, "")
	waitFinished(t, obs, 1, 30*time.Second)
	return m, obs, f, co
}

func headRev(t *testing.T, c *clientv3.Client) int64 {
	t.Helper()
	resp, err := c.Get(ctxT(t, 5*time.Second), "probe")
	if err != nil {
		t.Fatal(err)
	}
	return resp.Header.Revision + 1
}

// A wave round of 40 agents x 2 plugins at max-in-flight 5: checked over
// etcd's whole history of the round, never more than 5 agents are in
// flight, none is Started twice, no wake shard says Started, and no agent
// hears of the round before its own Started; each agent's wake key says
// NotActive once its part is done, and every plugin acked.
func TestWaveInFlightBoundHolds(t *testing.T) {
	_, obs, f, co := startWaveFleet(t, 40, []string{"p1", "p2"}, testConfig("c0"))
	from := headRev(t, obs)
	newWaveAcker(t, f, obs, nil, nil)
	waveRequest(t, obs, schema.Wave{MaxInFlight: "5"}, "rolling")
	v := waitFinished(t, obs, 2, 60*time.Second)
	if v.Counts.Acked != 80 || v.Wave == nil || v.Wave.MaxInFlight != 5 || v.Wave.Aborted != "" {
		t.Fatalf("round 2: counts %+v, wave %+v; want 80 acked, max in flight 5, not aborted", v.Counts, v.Wave)
	}
	hist := waveHistory(t, obs, from)
	order := waveCheck(t, hist, 2, 2, 5)
	if len(order) != 40 {
		t.Fatalf("%d agents started, want 40", len(order))
	}
	// Each agent's first wake event of round 2 is its own Started: agents
	// outside the window got none.
	first := map[string]string{}
	done := map[string]bool{}
	for _, ev := range hist {
		if (ev.kind == "start" || ev.kind == "done") && ev.rec.Revision == 2 {
			if _, ok := first[ev.agent]; !ok {
				first[ev.agent] = ev.kind
			}
			done[ev.agent] = done[ev.agent] || ev.kind == "done"
		}
	}
	for a, k := range first {
		if k != "start" || !done[a] {
			t.Errorf("agent %s: first wake event %s, NotActive seen %v", a, k, done[a])
		}
	}
	recs, _, err := ReadRoundAgents(ctxT(t, 5*time.Second), obs, layout, 2, 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range recs {
		if r.Wave != schema.AgentDone || r.State != schema.NotActive || len(r.Acked) != 2 {
			t.Errorf("agent record %+v: want done with 2 acked", r)
		}
	}
	_ = co
}

// Rounds with no wave knob stay as they were: an all-scope round writes
// the shards at its start, and its summary has no plan.
func TestRoundWithoutKnobsIsNoWaveRound(t *testing.T) {
	_, obs, _, _ := startWaveFleet(t, 3, []string{"p"}, testConfig("c0"))
	v, _ := readRound(t, obs, 1)
	if v.Wave != nil {
		t.Fatalf("round 1 has a wave plan %+v without knobs", v.Wave)
	}
}

// The canaries (two, then max-in-flight 3) go first and alone; a manual
// canary pause holds the rest until an operator resumes; then the others
// run, never more than 3 at once.
func TestWaveCanariesFirstAloneAndManualPause(t *testing.T) {
	_, obs, f, co := startWaveFleet(t, 12, []string{"p"}, testConfig("c0"))
	from := headRev(t, obs)
	newWaveAcker(t, f, obs, nil, nil)
	waveRequest(t, obs, schema.Wave{MaxInFlight: "3", Canary: "2", CanaryPause: schema.CanaryPauseManual}, "canaries")
	waitWave(t, co, "the canary pause", func(w WaveStatus) bool { return w.Phase == schema.PhaseCanaryPause && w.Done == 2 })
	r := wavePlan(t, obs, 2)
	if r.Wave.Phase != schema.PhaseCanaryPause || r.Wave.Canaries != 2 || !r.Wave.CanaryManual {
		t.Fatalf("plan %+v: want canary_pause with 2 canaries, manual", r.Wave)
	}
	// Held: the leader made its last step (its status says 0 in flight)
	// and started no one else.
	waitWave(t, co, "nothing in flight", func(w WaveStatus) bool { return w.InFlight == 0 && w.Waiting == 10 })
	if got := waveCheck(t, waveHistory(t, obs, from), 2, 1, 3); len(got) != 2 {
		t.Fatalf("during the canary pause %d agents were started, want the 2 canaries: %v", len(got), got)
	}
	controlRound(t, obs, 2, schema.ActionResume)
	v := waitFinished(t, obs, 2, 60*time.Second)
	if v.Counts.Acked != 12 {
		t.Fatalf("round 2 counts %+v, want 12 acked", v.Counts)
	}
	hist := waveHistory(t, obs, from)
	order := waveCheck(t, hist, 2, 1, 3)
	recs, _, err := ReadRoundAgents(ctxT(t, 5*time.Second), obs, layout, 2, 0)
	if err != nil {
		t.Fatal(err)
	}
	canary := map[string]bool{}
	for _, r := range recs {
		canary[r.Agent] = r.Canary
	}
	if len(order) != 12 || !canary[order[0]] || !canary[order[1]] {
		t.Fatalf("start order %v: want the 2 canaries first", order)
	}
	// Alone: every canary acked before any other agent started.
	lastCanaryAck, firstOther := int64(0), int64(0)
	for _, ev := range hist {
		if ev.kind == "ack" && ev.ack.Revision == 2 && canary[ev.agent] {
			lastCanaryAck = ev.mod
		}
		if ev.kind == "start" && ev.rec.Revision == 2 && !canary[ev.agent] && firstOther == 0 {
			firstOther = ev.mod
		}
	}
	if firstOther <= lastCanaryAck {
		t.Fatalf("an agent started at etcd revision %d, before the canaries' last ack at %d", firstOther, lastCanaryAck)
	}
}

// max-failed 1 at max-in-flight 2, the first 3 agents failing: once a
// second agent failed the round aborts: no agent starts after the plan
// says aborted, those in flight finish, the rest are skipped (recorded
// and counted, and no retry names them), and the round ends aborted.
func TestWaveAbortsAtMaxFailed(t *testing.T) {
	names := fleetNames(20, "node-", 0)
	_, obs, f, _ := startWaveFleet(t, 20, []string{"p"}, testConfig("c0"))
	from := headRev(t, obs)
	newWaveAcker(t, f, obs, map[string]bool{names[0]: true, names[1]: true, names[2]: true}, nil)
	waveRequest(t, obs, schema.Wave{MaxInFlight: "2", MaxFailed: "1"}, "fragile")
	v := waitFinished(t, obs, 2, 60*time.Second)
	if v.Wave == nil || v.Wave.Aborted == "" {
		t.Fatalf("round 2 wave %+v: want aborted", v.Wave)
	}
	hist := waveHistory(t, obs, from)
	order := waveCheck(t, hist, 2, 1, 2)
	abortAt := int64(0)
	for _, ev := range hist {
		if ev.kind == "plan" && ev.round.Revision == 2 && ev.round.Wave != nil && ev.round.Wave.Aborted != "" && abortAt == 0 {
			abortAt = ev.mod
		}
		if ev.kind == "start" && ev.rec.Revision == 2 && abortAt != 0 && ev.mod > abortAt {
			t.Errorf("agent %s started at etcd revision %d, after the abort at %d", ev.agent, ev.mod, abortAt)
		}
	}
	if abortAt == 0 {
		t.Fatal("no plan write says aborted")
	}
	skipped := len(v.Skipped)
	if skipped == 0 || v.Counts.Skipped != 20-len(order) || skipped+len(order) != 20 {
		t.Fatalf("started %d, skipped %d (count %d): want every agent either", len(order), skipped, v.Counts.Skipped)
	}
	started := map[string]bool{}
	for _, a := range order {
		started[a] = true
	}
	for _, id := range v.Skipped {
		if started[id.Agent] {
			t.Errorf("%s is skipped but was Started", id)
		}
	}
	// The retry names the failed agents only.
	resp, err := obs.Get(ctxT(t, 5*time.Second), layout.OperatorRequests(), clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	for _, kv := range resp.Kvs {
		_, req, err := layout.DecodeRequest(string(kv.Key), kv.Value)
		if err != nil || req.RetryOf != 2 {
			continue
		}
		for _, tg := range req.Targets {
			if !started[tg.Agent] {
				t.Errorf("the retry of round 2 names skipped agent %s", tg.Agent)
			}
		}
	}
}

// A progress deadline of 1 s with the one agent in flight never acking:
// the round aborts, the rest is skipped; once the agent acks, the round
// ends aborted.
func TestWaveProgressDeadlineAborts(t *testing.T) {
	_, obs, f, co := startWaveFleet(t, 5, []string{"p"}, testConfig("c0"))
	a := newWaveAcker(t, f, obs, nil, make(chan struct{}))
	waveRequest(t, obs, schema.Wave{MaxInFlight: "1", ProgressDeadline: "1s"}, "slow")
	waitWave(t, co, "the progress deadline's abort", func(w WaveStatus) bool { return w.Aborted != "" && w.Skipped == 4 })
	a.give(1)
	v := waitFinished(t, obs, 2, 30*time.Second)
	if v.Counts.Acked != 1 || v.Counts.Skipped != 4 || v.Wave == nil || v.Wave.Aborted == "" {
		t.Fatalf("round 2 counts %+v wave %+v: want 1 acked, 4 skipped, aborted", v.Counts, v.Wave)
	}
}

// An operator pauses a running wave round (max-in-flight 1): the agent in
// flight finishes and no other starts; resume lets the next one start;
// abort skips the rest once the one in flight finished.
func TestWavePauseResumeAbort(t *testing.T) {
	_, obs, f, co := startWaveFleet(t, 6, []string{"p"}, testConfig("c0"))
	from := headRev(t, obs)
	a := newWaveAcker(t, f, obs, nil, make(chan struct{}))
	waveRequest(t, obs, schema.Wave{MaxInFlight: "1"}, "operated")
	waitWave(t, co, "one agent in flight", func(w WaveStatus) bool { return w.InFlight == 1 })
	controlRound(t, obs, 2, schema.ActionPause)
	waitWave(t, co, "the pause", func(w WaveStatus) bool { return w.Paused })
	if r := wavePlan(t, obs, 2); !r.Wave.Paused || r.Wave.WrittenBy == "" || r.Wave.WrittenBy != r.StartedBy {
		t.Fatalf("plan %+v of a round started by %q: want paused, written by its starter", r.Wave, r.StartedBy)
	}
	a.give(1)
	waitWave(t, co, "the first agent done, none in flight", func(w WaveStatus) bool { return w.Done == 1 && w.InFlight == 0 })
	if got := waveCheck(t, waveHistory(t, obs, from), 2, 1, 1); len(got) != 1 {
		t.Fatalf("while paused %d agents were started, want 1", len(got))
	}
	controlRound(t, obs, 2, schema.ActionResume)
	waitWave(t, co, "the second agent in flight", func(w WaveStatus) bool { return !w.Paused && w.InFlight == 1 && w.Done == 1 })
	controlRound(t, obs, 2, schema.ActionAbort)
	waitWave(t, co, "the abort", func(w WaveStatus) bool { return w.Aborted != "" })
	a.give(1)
	v := waitFinished(t, obs, 2, 30*time.Second)
	if v.Counts.Acked != 2 || v.Counts.Skipped != 4 || v.Wave == nil || v.Wave.Aborted == "" {
		t.Fatalf("round 2 counts %+v wave %+v: want 2 acked, 4 skipped, aborted", v.Counts, v.Wave)
	}
	if got := waveCheck(t, waveHistory(t, obs, from), 2, 1, 1); len(got) != 2 {
		t.Fatalf("%d agents were started, want 2", len(got))
	}
	// Controls are consumed.
	if n := countPrefix(t, obs, layout.OperatorRequests()); n != 0 {
		t.Fatalf("%d operator requests left, want the controls consumed", n)
	}
}

// The leader's client is closed hard mid-wave (its session expires): the
// standby continues the same plan from etcd: the agents in flight are not
// started again, the waiting ones start within the same bound, and every
// agent is started exactly once.
func TestWaveFailoverContinuesThePlan(t *testing.T) {
	m, obs, f, first := startWaveFleet(t, 24, []string{"p1", "p2"}, testConfig("first"))
	second := newCoord(t, []string{m.Endpoint()}, testConfig("second"))
	from := headRev(t, obs)
	a := newWaveAcker(t, f, obs, nil, make(chan struct{}, 100))
	waveRequest(t, obs, schema.Wave{MaxInFlight: "3", Canary: "1"}, "failover")
	a.give(7)
	waitWave(t, first, "7 agents done and 3 in flight", func(w WaveStatus) bool { return w.Done == 7 && w.InFlight == 3 })
	first.Crash()
	first.Close()
	waitLeader(t, []*testCoord{second}, 20*time.Second)
	a.give(17)
	v := waitFinished(t, obs, 2, 60*time.Second)
	if v.Counts.Acked != 48 || v.Wave.Aborted != "" {
		t.Fatalf("round 2 counts %+v wave %+v: want all 48 acked", v.Counts, v.Wave)
	}
	order := waveCheck(t, waveHistory(t, obs, from), 2, 2, 3)
	if len(order) != 24 {
		t.Fatalf("%d agents started, want 24", len(order))
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	for agent, n := range a.starts {
		if n != 1 {
			t.Errorf("agent %s saw %d Started writes", agent, n)
		}
	}
	if v.FinishedBy == v.StartedBy {
		t.Errorf("round 2 started and finished by %s: want the successor to finish it", v.StartedBy)
	}
	_ = fmt.Sprint()
	_ = context.Background
}

// A waiting agent's plugin departs before the round aborts: it stays
// departed and only the still pending plugins are skipped, so the counts
// add up (the summary validates) and the round finishes.
func TestWaveAbortSkipsOnlyThePending(t *testing.T) {
	_, obs, f, co := startWaveFleet(t, 4, []string{"p1", "p2"}, testConfig("c0"))
	a := newWaveAcker(t, f, obs, nil, make(chan struct{}))
	waveRequest(t, obs, schema.Wave{MaxInFlight: "1"}, "departing")
	waitWave(t, co, "one agent in flight", func(w WaveStatus) bool { return w.InFlight == 1 })
	last := f.ids[len(f.ids)-1]
	if _, err := obs.Delete(ctxT(t, 5*time.Second), layout.Registration(last.Agent, last.Plugin)); err != nil {
		t.Fatal(err)
	}
	etcdtest.WaitFor(t, 10*time.Second, "the departure counted", func() bool {
		s := co.Status()
		return s.Progress != nil && s.Progress.Departed == 1
	})
	controlRound(t, obs, 2, schema.ActionAbort)
	waitWave(t, co, "the abort", func(w WaveStatus) bool { return w.Aborted != "" })
	a.give(1)
	v := waitFinished(t, obs, 2, 30*time.Second)
	if c := v.Counts; c.Acked != 2 || c.Departed != 1 || c.Skipped != 5 || c.Pending != 0 {
		t.Fatalf("round 2 counts %+v: want 2 acked, 1 departed, 5 skipped", c)
	}
}

// On a fake clock: the canary pause ends exactly CanaryPause after the
// canaries resolved, and an agent that never acks times out exactly
// RoundDeadline after its own start (not the round's), freeing the window.
func TestWaveCanaryPauseAndAgentDeadlineAreExact(t *testing.T) {
	m := etcdtest.Start(t)
	obs := m.Client(t)
	f := startFleet(t, obs, fleetNames(3, "node-", 0), []string{"p"})
	fc := newFakeClock()
	cfg := testConfig("c0")
	cfg.RoundDeadline = time.Minute
	co := newCoord(t, []string{m.Endpoint()}, cfg, WithClock(fc))
	waitRevision(t, co, 1, schema.Started)
	f.ack(1, f.ids, schema.ResultOK, "")
	waitFinished(t, obs, 1, 10*time.Second)

	a := newWaveAcker(t, f, obs, nil, make(chan struct{}, 10))
	a.give(1) // the canary acks
	waveRequest(t, obs, schema.Wave{MaxInFlight: "1", Canary: "1", CanaryPause: "10s"}, "timed")
	// The coalescing window: the timer armed may be another one when the
	// leader has not seen the request yet (two make test runs side by
	// side), so the clock moves a window at a time until round 2 starts.
	for i := 0; ; i++ {
		armed(t, fc, "the coalescing window")
		fc.Advance(cfg.CoalesceWindow)
		if startedWithin(t, obs, 2, 2*time.Second) {
			break
		}
		if i == 10 {
			t.Fatal("round 2 did not start after 10 coalescing windows")
		}
	}
	waitWave(t, co, "the canary pause", func(w WaveStatus) bool { return w.Phase == schema.PhaseCanaryPause })
	armed(t, fc, "the canary pause's end")
	fc.Advance(10*time.Second - time.Nanosecond)
	if w := co.Status().Wave; w == nil || w.Phase != schema.PhaseCanaryPause || w.InFlight != 0 {
		t.Fatalf("1ns before the pause ends: %+v, want still in the canary pause", w)
	}
	fc.Advance(time.Nanosecond)
	waitWave(t, co, "the second agent in flight", func(w WaveStatus) bool { return w.Phase == schema.PhaseRolling && w.InFlight == 1 })
	started := fc.Now()
	// It never acks: its own deadline, a minute after its start.
	armed(t, fc, "the agent's deadline")
	fc.Advance(cfg.RoundDeadline - time.Nanosecond)
	if w := co.Status().Wave; w == nil || w.Done != 1 {
		t.Fatalf("1ns before the agent's deadline: %+v, want 1 done", w)
	}
	fc.Advance(time.Nanosecond)
	waitWave(t, co, "the second agent timed out, the third in flight", func(w WaveStatus) bool { return w.Done == 2 && w.InFlight == 1 })
	a.give(2) // the late ack of the second (too late: it stays timed out), and the third
	v := waitFinished(t, obs, 2, 10*time.Second)
	if v.Counts.TimedOut != 1 || v.Counts.Acked != 2 {
		t.Fatalf("round 2 counts %+v: want 1 timed out, 2 acked", v.Counts)
	}
	recs, _, err := ReadRoundAgents(ctxT(t, 5*time.Second), obs, layout, 2, 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range recs {
		if len(r.TimedOut) > 0 && !r.DoneAt.Equal(started.Add(cfg.RoundDeadline)) {
			t.Errorf("%s timed out at %v, want its start %v + %v", r.Agent, r.DoneAt, started, cfg.RoundDeadline)
		}
	}
}

// A plugin whose last resync failed still owes one when an aborted wave
// round skips it: the round's retry names it beside the failed ones. Here
// node 4 failed the initial round, whose retry waits out a minute's
// backoff; the wave round (one agent at a time, no failure allowed)
// aborts when node 0 fails and skips node 4, whose failure is then
// still unanswered (the chaos run saw an abort consume such retries).
func TestAbortedWaveRetriesSkippedPluginsThatOweAResync(t *testing.T) {
	cfg := testConfig("c0")
	cfg.BackoffMin, cfg.BackoffMax = time.Minute, time.Minute
	m := etcdtest.Start(t)
	obs := m.Client(t)
	names := fleetNames(6, "node-", 0)
	f := startFleet(t, obs, names, []string{"p"})
	co := newCoord(t, []string{m.Endpoint()}, cfg)
	waitRevision(t, co, 1, schema.Started)
	owes, fails := schema.PluginID{Agent: names[4], Plugin: "p"}, schema.PluginID{Agent: names[0], Plugin: "p"}
	var ok []schema.PluginID
	for _, id := range f.ids {
		if id != owes {
			ok = append(ok, id)
		}
	}
	f.ack(1, ok, schema.ResultOK, "")
	f.ack(1, []schema.PluginID{owes}, schema.ResultError, "cannot load yet")
	waitFinished(t, obs, 1, 30*time.Second)

	newWaveAcker(t, f, obs, map[string]bool{fails.Agent: true}, nil)
	waveRequest(t, obs, schema.Wave{MaxInFlight: "1", MaxFailed: "0"}, "careful")
	v := waitFinished(t, obs, 2, 30*time.Second)
	if v.Wave == nil || v.Wave.Aborted == "" || !slices.Contains(v.Skipped, owes) {
		t.Fatalf("round 2: wave %+v, counts %+v, failed %v, skipped %v: want aborted with %s skipped", v.Wave, v.Counts, v.Failed, v.Skipped, owes)
	}
	var named []schema.PluginID
	etcdtest.WaitFor(t, 10*time.Second, "round 2's retry", func() bool {
		resp, err := obs.Get(ctxT(t, 5*time.Second), layout.OperatorRequests(), clientv3.WithPrefix())
		if err != nil {
			return false
		}
		named = nil
		for _, kv := range resp.Kvs {
			if _, req, err := layout.DecodeRequest(string(kv.Key), kv.Value); err == nil && req.RetryOf == 2 {
				for _, tg := range req.Targets {
					named = append(named, schema.PluginID{Agent: tg.Agent, Plugin: tg.Plugin})
				}
			}
		}
		return len(named) > 0
	})
	if !slices.Contains(named, owes) || !slices.Contains(named, fails) || len(named) != 2 {
		t.Fatalf("round 2's retry names %v; want %s (failed) and %s (skipped, its failure unanswered)", named, fails, owes)
	}
}

// startedWithin reports whether revision n says Started (or later) within
// d of real time.
func startedWithin(t *testing.T, c *clientv3.Client, n uint64, d time.Duration) bool {
	t.Helper()
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if r, ok := readRevision(t, c); ok && r.Revision >= n {
			return true
		}
		time.Sleep(10 * time.Millisecond) // polling etcd, as etcdtest.WaitFor does
	}
	return false
}

// recordWindow replays round n's per-agent records from etcd revision
// from, write by write in etcd's order (a Txn's writes in its order, as the
// chaos checker and etcdctl's watch see them), and returns the most agents
// ever recorded started and not yet done.
func recordWindow(t *testing.T, c *clientv3.Client, from int64, n uint64) int {
	t.Helper()
	ctx := ctxT(t, 20*time.Second)
	now, err := c.Get(ctx, "history-probe")
	if err != nil {
		t.Fatal(err)
	}
	state := map[string]string{}
	inFlight, peak := 0, 0
	wch := c.Watch(ctx, layout.RoundDir(n), clientv3.WithPrefix(), clientv3.WithRev(from))
	for resp := range wch {
		if err := resp.Err(); err != nil {
			t.Fatalf("history watch: %v", err)
		}
		for _, e := range resp.Events {
			k, err := layout.Parse(string(e.Kv.Key))
			if e.Type != clientv3.EventTypePut || err != nil || k.Agent == "" {
				continue
			}
			ra, err := schema.DecodeRoundAgent(string(e.Kv.Key), e.Kv.Value)
			if err != nil {
				continue
			}
			switch {
			case ra.Wave == schema.AgentStarted && state[ra.Agent] != schema.AgentStarted:
				inFlight++
			case ra.Wave == schema.AgentDone && state[ra.Agent] == schema.AgentStarted:
				inFlight--
			}
			state[ra.Agent] = ra.Wave
			peak = max(peak, inFlight)
		}
		if resp.Header.Revision >= now.Header.Revision {
			break
		}
	}
	return peak
}

// One watch response carries a waiting agent's departure and, after it,
// the last ack of the agent in flight: the leader's step marks both done,
// the departed one never having started, and starts the next agent. The
// next agent's start must go after the done record of the agent it
// replaces, not beside the departed one's: replayed write by write, the
// records never show two agents in flight at a bound of 1.
func TestWaveStartFollowsTheDoneItReplaces(t *testing.T) {
	_, obs, f, co := startWaveFleet(t, 3, []string{"p"}, testConfig("c0"))
	from := headRev(t, obs)
	waveRequest(t, obs, schema.Wave{MaxInFlight: "1"}, "departure beside a done")
	waitWave(t, co, "one agent in flight", func(w WaveStatus) bool { return w.InFlight == 1 })
	var running, waiting string
	resp, err := obs.Get(ctxT(t, 5*time.Second), layout.RoundDir(2), clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	for _, kv := range resp.Kvs {
		if ra, err := schema.DecodeRoundAgent(string(kv.Key), kv.Value); err == nil && ra.Agent != "" {
			switch {
			case ra.Wave == schema.AgentStarted:
				running = ra.Agent
			case ra.Wave == schema.AgentWaiting && waiting == "":
				waiting = ra.Agent
			}
		}
	}
	if running == "" || waiting == "" {
		t.Fatalf("round 2's records name no agent in flight (%q) or waiting (%q)", running, waiting)
	}
	b, err := schema.Encode(schema.Ack{Revision: 2, Result: schema.ResultOK, AckedAt: time.Now().UTC()})
	if err != nil {
		t.Fatal(err)
	}
	f.txns([]clientv3.Op{
		clientv3.OpDelete(layout.Registration(waiting, "p")),
		clientv3.OpPut(layout.Ack(running, "p"), string(b), clientv3.WithLease(f.lease)),
	})
	waitWave(t, co, "the departed and the acked agent done, the third in flight", func(w WaveStatus) bool { return w.Done == 2 && w.InFlight == 1 })
	if peak := recordWindow(t, obs, from, 2); peak != 1 {
		t.Fatalf("round 2's records show %d agents in flight at once, want 1 (its bound)", peak)
	}
}

// A wave round whose summary, which holds its plan, is overwritten with
// garbage while no leader runs: the successor can resume it only from
// the revision record, and its per-agent records say it is a wave round,
// so it continues it aborted: the agents in flight complete, the waiting
// ones are skipped and hear nothing of the round. Resumed as a plain
// round, its waiting agents timed out here, in a round that was no wave
// round any more; in chaos (seed 20261212) the successor's wake of an
// all-scope round's shards gave such agents Started, and the skipped
// ones were listed skipped in a round with no plan.
func TestWavePlanLostWithItsSummaryAbortsTheRound(t *testing.T) {
	m, obs, f, first := startWaveFleet(t, 12, []string{"p1", "p2"}, testConfig("first"))
	from := headRev(t, obs)
	a := newWaveAcker(t, f, obs, nil, make(chan struct{}, 100))
	waveRequest(t, obs, schema.Wave{MaxInFlight: "2"}, "plan lost")
	a.give(3)
	waitWave(t, first, "3 agents done and 2 in flight", func(w WaveStatus) bool { return w.Done == 3 && w.InFlight == 2 })
	first.Crash()
	if _, err := obs.Put(ctxT(t, 5*time.Second), layout.Round(2), `{"revision":2,"state":"Bogus"}`); err != nil {
		t.Fatal(err)
	}
	second := newCoord(t, []string{m.Endpoint()}, testConfig("second"))
	waitLeader(t, []*testCoord{second}, 20*time.Second)
	// Tokens for every agent: any agent woken may ack.
	a.give(12)
	var v schema.Round
	etcdtest.WaitFor(t, 60*time.Second, "round 2 finished", func() bool {
		resp, err := obs.Get(ctxT(t, 5*time.Second), layout.Round(2))
		if err != nil || len(resp.Kvs) == 0 {
			return false
		}
		v, err = layout.DecodeRound(layout.Round(2), resp.Kvs[0].Value)
		return err == nil && v.State == schema.NotActive
	})
	if v.Wave == nil || v.Wave.Aborted == "" || v.Counts.Acked != 10 || v.Counts.Skipped != 14 {
		t.Fatalf("round 2 counts %+v wave %+v: want an aborted wave round, 5 agents acked and 7 skipped", v.Counts, v.Wave)
	}
	if order := waveCheck(t, waveHistory(t, obs, from), 2, 2, 2); len(order) != 5 {
		t.Errorf("agents %v started, want the 5 the window let in before the crash", order)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(a.starts) != 5 {
		t.Errorf("%d agents saw a Started write, want 5: %v", len(a.starts), a.starts)
	}
}
