package coordinator

import (
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/resyncd/resync/internal/testing/etcdtest"
	"github.com/resyncd/resync/internal/testing/handagent"
	"github.com/resyncd/resync/schema"
)

func startAgents(t *testing.T, eps []string, n int, plugins []string, behave func(agent string) map[string]string) []*handagent.Agent {
	t.Helper()
	agents := make([]*handagent.Agent, n)
	var wg sync.WaitGroup
	for i := range agents {
		name := fmt.Sprintf("agent-%02d", i)
		var b map[string]string
		if behave != nil {
			b = behave(name)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			agents[i] = handagent.Start(t, eps, name, plugins, b)
		}()
	}
	wg.Wait()
	return agents
}

func TestRoundOfTwentyAgentsWithDepartureAndFailure(t *testing.T) {
	m := etcdtest.Start(t)
	obs := m.Client(t)
	eps := []string{m.Endpoint()}
	plugins := []string{"if", "l3", "acl"}
	agents := startAgents(t, eps, 20, plugins, func(a string) map[string]string {
		switch a {
		case "agent-07":
			return map[string]string{"if": "never", "l3": "never", "acl": "never"} // dies mid-round
		case "agent-13":
			return map[string]string{"l3": "error"}
		}
		return nil
	})
	co := newCoord(t, eps, testConfig("c0"))
	etcdtest.WaitFor(t, 15*time.Second, "round 1 to reach agent-07", func() bool { return agents[7].StartedCount("if", 1) == 1 })
	agents[7].Crash()
	r := waitFinished(t, obs, 1, 20*time.Second)
	if r.Counts.Participants != 60 || r.Counts.Acked != 56 || r.Counts.Failed != 1 || r.Counts.Departed != 3 || r.Counts.TimedOut != 0 {
		t.Fatalf("round 1 counts %+v, want 60 participants: 56 acked, 1 failed, 3 departed", r.Counts)
	}
	if len(r.Failed) != 1 || r.Failed[0] != (schema.PluginID{Agent: "agent-13", Plugin: "l3"}) || !strings.Contains(r.Errors["agent-13/l3"], "boom") {
		t.Fatalf("failed %v errors %v", r.Failed, r.Errors)
	}
	for _, p := range r.Departed {
		if p.Agent != "agent-07" {
			t.Fatalf("departed %v", r.Departed)
		}
	}
	// The failure plans a retry round after the backoff, scoped to the
	// failed plugin; it fails again (the plugin still errors), then the
	// plugin recovers and the next retry is clean.
	r2 := waitFinished(t, obs, 2, 10*time.Second)
	if r2.Cause != schema.CauseError || fmt.Sprint(r2.Participants) != "[agent-13/l3]" || r2.Scope.String() != "plugin agent-13/l3" || r2.Counts.Failed != 1 {
		t.Fatalf("retry round 2: cause %s scope %s participants %v counts %+v", r2.Cause, r2.Scope, r2.Participants, r2.Counts)
	}
	if gap := r2.StartedAt.Sub(r.FinishedAt); gap < testConfig("").BackoffMin {
		t.Errorf("retry started %v after the failure, before the %v backoff", gap, testConfig("").BackoffMin)
	}
	agents[13].SetBehaviour("l3", "ok")
	r3 := waitFinished(t, obs, 3, 10*time.Second)
	if !r3.Clean() || r3.Counts.Acked != 1 {
		t.Fatalf("round 3 %+v", r3.Counts)
	}
	if gap := r3.StartedAt.Sub(r2.FinishedAt); gap < 2*testConfig("").BackoffMin {
		t.Errorf("second retry started %v after, want the doubled backoff %v", gap, 2*testConfig("").BackoffMin)
	}
	co.hooks.mu.Lock()
	backoffs := append([]time.Duration(nil), co.hooks.backoffs...)
	co.hooks.mu.Unlock()
	if len(backoffs) < 2 || backoffs[1] != 2*backoffs[0] {
		t.Errorf("backoffs %v do not double", backoffs)
	}
	waitIdle(t, obs, 5*time.Second)
	// No further round: the clean round reset the backoff and planned nothing.
	request(t, obs, schema.CauseManual, schema.Scope{}, "check")
	r4 := waitFinished(t, obs, 4, 10*time.Second)
	if r4.Cause != schema.CauseManual || r4.Counts.Participants != 57 {
		t.Fatalf("round 4 %s %+v", r4.Cause, r4.Counts)
	}
	for _, a := range agents {
		if a == agents[7] {
			continue
		}
		for _, p := range plugins {
			if n := a.StartedCount(p, 1); n != 1 {
				t.Errorf("%s/%s got %d Started for round 1", a.Name, p, n)
			}
		}
	}
	revisionHistory(t, obs)
}

func TestSuccessorResumesTheRunningRound(t *testing.T) {
	m := etcdtest.Start(t)
	obs := m.Client(t)
	eps := []string{m.Endpoint()}
	agents := startAgents(t, eps, 3, []string{"p", "q"}, func(string) map[string]string { return map[string]string{"q": "hold"} })
	first := newCoord(t, eps, testConfig("first"))
	etcdtest.WaitFor(t, 10*time.Second, "round 1 to start", func() bool { return agents[2].StartedCount("q", 1) == 1 })
	before, _ := readRound(t, obs, 1)
	second := newCoord(t, eps, testConfig("second"))
	first.Crash()
	etcdtest.WaitFor(t, 10*time.Second, "the successor to resume", func() bool {
		second.hooks.mu.Lock()
		defer second.hooks.mu.Unlock()
		return len(second.hooks.resumed) == 1
	})
	// A late-registered agent is not a participant of the resumed round.
	late := handagent.Start(t, eps, "late", []string{"p"}, nil)
	for _, a := range agents {
		a.Release()
	}
	r := waitFinished(t, obs, 1, 10*time.Second)
	if r.Counts.Participants != 6 || r.Counts.Acked != 6 || fmt.Sprint(r.Participants) != fmt.Sprint(before.Participants) {
		t.Fatalf("resumed round: %+v, participants %v, before %v", r.Counts, r.Participants, before.Participants)
	}
	if !r.Deadline.Equal(before.Deadline) || !strings.HasPrefix(r.StartedBy, "first@") || !strings.HasPrefix(r.FinishedBy, "second@") {
		t.Fatalf("resumed round deadline %v (was %v), started by %s, finished by %s", r.Deadline, before.Deadline, r.StartedBy, r.FinishedBy)
	}
	for _, a := range agents {
		for _, p := range []string{"p", "q"} {
			if n := a.StartedCount(p, 1); n != 1 {
				t.Errorf("%s/%s asked %d times for round 1", a.Name, p, n)
			}
		}
	}
	_ = late
	hist := revisionHistory(t, obs)
	starts := 0
	for _, w := range hist {
		if w.rec.Revision == 1 && w.rec.State == schema.Started {
			starts++
		}
	}
	if starts != 1 {
		t.Errorf("revision 1 Started written %d times", starts)
	}
}

// TestBurstOfErrorRequestsCoalesces: 50 error requests seen before their
// backoff ends make exactly one round (the fake clock stops time until the
// test has seen the leader take every request).
func TestBurstOfErrorRequestsCoalesces(t *testing.T) {
	m := etcdtest.Start(t)
	obs := m.Client(t)
	eps := []string{m.Endpoint()}
	startAgents(t, eps, 2, []string{"p"}, nil)
	fc := newFakeClock()
	cfg := testConfig("c0")
	co := newCoord(t, eps, cfg, WithClock(fc))
	waitFinished(t, obs, 1, 10*time.Second)
	waitIdle(t, obs, 5*time.Second)
	var wg sync.WaitGroup
	for i := 0; i < 50; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			request(t, obs, schema.CauseError, schema.Scope{Agent: fmt.Sprintf("agent-%02d", i%2)}, fmt.Sprintf("error %d", i))
		}()
	}
	wg.Wait()
	etcdtest.WaitFor(t, 10*time.Second, "every request seen", func() bool { return co.hooks.acceptedCount() == 50 })
	armed(t, fc, "the requests' backoff")
	fc.Advance(cfg.BackoffMin)
	r2 := waitFinished(t, obs, 2, 10*time.Second)
	waitIdle(t, obs, 10*time.Second)
	// Wait until no request is left, then count rounds.
	etcdtest.WaitFor(t, 10*time.Second, "every request consumed", func() bool {
		resp, err := obs.Get(ctxT(t, time.Second), layout.Requests(), clientv3WithPrefix())
		return err == nil && len(resp.Kvs) == 0
	})
	rev := waitIdle(t, obs, 10*time.Second)
	if rev.Revision != 2 {
		t.Fatalf("50 requests made %d rounds, want 1", rev.Revision-1)
	}
	if r2.Scope.Agents != 2 || r2.Scope.Plugins != 0 || r2.Scope.IsAll() || !strings.Contains(r2.Reason, "requests") {
		t.Errorf("coalesced round scope %+v reason %q, want the union of the two agents", r2.Scope, r2.Reason)
	}
}

func TestScopedRequestOnlyThatAgent(t *testing.T) {
	m := etcdtest.Start(t)
	obs := m.Client(t)
	eps := []string{m.Endpoint()}
	agents := startAgents(t, eps, 3, []string{"p", "q"}, nil)
	newCoord(t, eps, testConfig("c0"))
	waitFinished(t, obs, 1, 10*time.Second)
	request(t, obs, schema.CauseManual, schema.Scope{Agent: "agent-01"}, "just one")
	r := waitFinished(t, obs, 2, 10*time.Second)
	if fmt.Sprint(r.Participants) != "[agent-01/p agent-01/q]" || r.Counts.Acked != 2 {
		t.Fatalf("scoped round participants %v counts %+v", r.Participants, r.Counts)
	}
	if agents[0].StartedCount("p", 2) != 0 || agents[1].StartedCount("q", 2) != 1 {
		t.Fatal("the scoped round reached the wrong agents")
	}
	request(t, obs, schema.CauseManual, schema.Scope{Agent: "agent-02", Plugin: "q"}, "just one plugin")
	r = waitFinished(t, obs, 3, 10*time.Second)
	if fmt.Sprint(r.Participants) != "[agent-02/q]" {
		t.Fatalf("plugin-scoped round participants %v", r.Participants)
	}
}

// putRequestAt writes a request at key (the writer is the key's).
func putRequestAt(t *testing.T, c *clientv3.Client, key string, scope schema.Scope, reason string) {
	t.Helper()
	b, err := schema.Encode(schema.Request{Reason: reason, Cause: schema.CauseManual, Scope: scope, RequestedBy: "test", RequestedAt: time.Now().UTC()})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Put(ctxT(t, 5*time.Second), key, string(b)); err != nil {
		t.Fatal(err)
	}
}

// An agent's request (under requests/agent/<agent>/) for all or for another
// agent is ignored: deleted, counted as refused, no round. Its request for
// itself runs a round of its plugins only; a legacy requests/<id> key is
// still consumed, whatever its scope.
func TestAgentRequestWiderThanItsWriterIsRefused(t *testing.T) {
	m := etcdtest.Start(t)
	obs := m.Client(t)
	eps := []string{m.Endpoint()}
	startAgents(t, eps, 3, []string{"p", "q"}, nil)
	co := newCoord(t, eps, testConfig("c0"))
	waitFinished(t, obs, 1, 10*time.Second)
	wide := []string{layout.AgentRequest("agent-00", "1-all"), layout.AgentRequest("agent-00", "2-other")}
	putRequestAt(t, obs, wide[0], schema.Scope{}, "agent-00 asks for all")
	putRequestAt(t, obs, wide[1], schema.Scope{Agent: "agent-01"}, "agent-00 asks for agent-01")
	etcdtest.WaitFor(t, 10*time.Second, "both refused requests deleted and counted", func() bool {
		resp, err := obs.Get(ctxT(t, time.Second), layout.AgentRequests("agent-00"), clientv3WithPrefix())
		return err == nil && len(resp.Kvs) == 0 && co.hooks.refusedCount() == 2
	})
	putRequestAt(t, obs, layout.AgentRequest("agent-00", schema.NewRequestID(time.Now())), schema.Scope{Agent: "agent-00"}, "agent-00 for itself")
	r := waitFinished(t, obs, 2, 10*time.Second)
	if r.Reason != "agent-00 for itself" || fmt.Sprint(r.Participants) != "[agent-00/p agent-00/q]" || r.Counts.Acked != 2 {
		t.Fatalf("round 2 is %q with participants %v counts %+v, want agent-00's own round", r.Reason, r.Participants, r.Counts)
	}
	putRequestAt(t, obs, layout.LegacyRequest(schema.NewRequestID(time.Now())), schema.Scope{}, "legacy key")
	r = waitFinished(t, obs, 3, 10*time.Second)
	if r.Reason != "legacy key" || r.Counts.Acked != 6 {
		t.Fatalf("round 3 is %q with counts %+v, want the legacy request's round of all", r.Reason, r.Counts)
	}
	if n := co.hooks.refusedCount(); n != 2 {
		t.Fatalf("%d requests refused, want 2", n)
	}
}

func TestGarbageIsSkippedAndTheRoundCompletes(t *testing.T) {
	m := etcdtest.Start(t)
	obs := m.Client(t)
	eps := []string{m.Endpoint()}
	startAgents(t, eps, 2, []string{"p"}, nil)
	newCoord(t, eps, testConfig("c0"))
	waitFinished(t, obs, 1, 10*time.Second)
	for k, v := range map[string]string{
		layout.LegacyRequest("garbage-1"):            "{{{",
		layout.AgentRequest("agent-00", "garbage-2"): `{"cause":"whim"}`,
		layout.Prefix() + "requests/a/b":             "{}",
		layout.Ack("agent-00", "ghost"):              "not json",
		layout.Ack("agent-01", "p") + "x":            `{"revision":0}`,
		layout.Acks() + "nested":                     "x",
	} {
		if _, err := obs.Put(ctxT(t, 5*time.Second), k, v); err != nil {
			t.Fatal(err)
		}
	}
	request(t, obs, schema.CauseManual, schema.Scope{}, "despite garbage")
	r := waitFinished(t, obs, 2, 10*time.Second)
	if r.Counts.Acked != 2 {
		t.Fatalf("round 2 with garbage around: %+v", r.Counts)
	}
	etcdtest.WaitFor(t, 10*time.Second, "garbage requests deleted", func() bool {
		resp, err := obs.Get(ctxT(t, time.Second), layout.Requests(), clientv3WithPrefix())
		return err == nil && len(resp.Kvs) == 0
	})
}

// TestDeadlineTimesOutAndHistoryIsBounded: on the fake clock, a plugin that
// never acks times out exactly at the round's deadline while its agent's
// other plugin acks; the retry (scoped to the silent plugin) comes exactly
// BackoffMin after and times out too; once the plugin answers, the next
// retry, 2 x BackoffMin after, is clean. History 2 keeps exactly the last
// two rounds and no key of a pruned one.
func TestDeadlineTimesOutAndHistoryIsBounded(t *testing.T) {
	m := etcdtest.Start(t)
	obs := m.Client(t)
	eps := []string{m.Endpoint()}
	agents := startAgents(t, eps, 1, []string{"ok", "silent"}, func(string) map[string]string { return map[string]string{"silent": "never"} })
	fc := newFakeClock()
	cfg := testConfig("c0")
	cfg.RoundDeadline = time.Minute
	cfg.History = 2
	t0 := fc.Now()
	co := newCoord(t, eps, cfg, WithClock(fc))

	// timeOut ends round n at its deadline once the leader has seen every
	// ack it will get (acked of them).
	timeOut := func(n uint64, acked int) RoundView {
		t.Helper()
		etcdtest.WaitFor(t, 10*time.Second, fmt.Sprintf("round %d's acks seen", n), func() bool {
			p := co.Status().Progress
			return p != nil && p.Acked == acked && p.Pending == 1
		})
		return timesOutAtDeadline(t, fc, co, n, cfg.RoundDeadline, "[agent-00/silent]")
	}
	// retry waits for the retry of round n-1, due pause after it.
	retry := func(n uint64, after time.Time, pause time.Duration) {
		t.Helper()
		retryDue(t, fc, co, n-1, pause)
		// Started, or already over: a plugin that answers acks at once.
		var r RoundView
		etcdtest.WaitFor(t, 10*time.Second, fmt.Sprintf("round %d", n), func() bool {
			var ok bool
			r, ok = readRound(t, obs, n)
			return ok
		})
		if want := after.Add(pause); !r.StartedAt.Equal(want) || r.Cause != schema.CauseError {
			t.Fatalf("round %d (%s) started at %v, want the retry at %v (%v after round %d)", n, r.Cause, r.StartedAt, want, pause, n-1)
		}
	}

	r1 := waitRevision(t, co, 1, schema.Started)
	if !r1.StartedAt.Equal(t0) || !r1.Deadline.Equal(t0.Add(cfg.RoundDeadline)) {
		t.Fatalf("round 1 started %v with deadline %v, want %v and %v", r1.StartedAt, r1.Deadline, t0, t0.Add(cfg.RoundDeadline))
	}
	v1 := timeOut(1, 1)
	if fmt.Sprint(v1.Acked) != "[agent-00/ok]" {
		t.Fatalf("round 1 acked %v, want [agent-00/ok]", v1.Acked)
	}
	retry(2, v1.FinishedAt, cfg.BackoffMin)
	v2 := timeOut(2, 0)
	if fmt.Sprint(v2.Participants) != "[agent-00/silent]" {
		t.Fatalf("round 2 participants %v, want the retry of [agent-00/silent] only", v2.Participants)
	}
	agents[0].SetBehaviour("silent", "ok")
	retry(3, v2.FinishedAt, 2*cfg.BackoffMin)
	if v3 := waitFinished(t, obs, 3, 10*time.Second); !v3.Clean() || fmt.Sprint(v3.Acked) != "[agent-00/silent]" {
		t.Fatalf("round 3 acked %v timed out %v failed %v: want a clean retry of agent-00/silent", v3.Acked, v3.TimedOut, v3.Failed)
	}

	rev, _ := readRevision(t, obs)
	if rev.Revision != 3 || rev.State != schema.NotActive {
		t.Fatalf("revision %d %s after the clean retry, want 3 NotActive", rev.Revision, rev.State)
	}
	resp, err := obs.Get(ctxT(t, 5*time.Second), layout.Rounds(), clientv3WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	// Pruning removes every key of a pruned round: its summary and the
	// per-agent and scope records under rounds/<N>/.
	var summaries []uint64
	for _, kv := range resp.Kvs {
		k, err := layout.Parse(string(kv.Key))
		if err != nil {
			t.Fatal(err)
		}
		if k.Round+2 <= rev.Revision {
			t.Errorf("key %s of a pruned round is left (last round %d, history 2)", kv.Key, rev.Revision)
		}
		if k.Kind == schema.KindRound {
			summaries = append(summaries, k.Round)
		}
	}
	if fmt.Sprint(summaries) != "[2 3]" {
		t.Fatalf("history holds rounds %v (want the last 2: [2 3])", summaries)
	}
}
