package coordinator

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/resyncd/resync/internal/testing/etcdtest"
	"github.com/resyncd/resync/internal/testing/handagent"
	"github.com/resyncd/resync/schema"
)

// errorText is about 1 KiB of text that JSON escaping makes about 3.5 times
// longer ("<" and ">" become \u003c and \u003e).
var errorText = strings.Repeat("reload <failed> ", 64)[:1000]

// checkOutcomes checks that v's participants are exactly want, each in
// exactly one outcome, all failed with a capped error (or the record
// truncated).
func checkOutcomes(t *testing.T, v RoundView, want []schema.PluginID) {
	t.Helper()
	if v.Counts.Participants != len(want) || v.Counts.Failed != len(want) || v.Counts.Pending != 0 {
		t.Fatalf("round %d counts %+v, want %d participants all failed", v.Revision, v.Counts, len(want))
	}
	seen := make(map[schema.PluginID]string, len(want))
	for _, p := range v.Participants {
		seen[p] = ""
	}
	for _, l := range []struct {
		name string
		ids  []schema.PluginID
	}{{"acked", v.Acked}, {"failed", v.Failed}, {"timed_out", v.TimedOut}, {"departed", v.Departed}} {
		for _, p := range l.ids {
			prev, ok := seen[p]
			if !ok || prev != "" {
				t.Fatalf("round %d: %s in %s (participant %v, earlier outcome %q)", v.Revision, p, l.name, ok, prev)
			}
			seen[p] = l.name
		}
	}
	for _, p := range want {
		if seen[p] != "failed" {
			t.Fatalf("round %d: %s has outcome %q, want failed", v.Revision, p, seen[p])
		}
	}
	if len(seen) != len(want) {
		t.Fatalf("round %d lists %d participants, want %d", v.Revision, len(seen), len(want))
	}
	for p, e := range v.Errors {
		b, _ := json.Marshal(e)
		if len(b)-2 > schema.MaxAckErrorLen+len(schema.CutMarker) {
			t.Fatalf("error of %s is %d bytes after JSON escaping", p, len(b)-2)
		}
	}
	if len(v.Errors) != len(want) && !v.Truncated {
		t.Fatalf("round %d keeps %d error texts of %d failures and is not marked truncated", v.Revision, len(v.Errors), len(want))
	}
}

// 10,000 participants that all fail with 1 KiB errors: the round finishes
// (also across a failover in the middle), every participant has exactly one
// outcome, and no request the coordinators wrote exceeded their budget,
// measured on the wire; the same with 128-character names.
func TestTenThousandFailuresStayWithinTheBudget(t *testing.T) {
	if testing.Short() {
		t.Skip("10,000 participants")
	}
	for _, tc := range []struct {
		name  string
		width int
	}{{"short names", 0}, {"128-character names", 128}} {
		t.Run(tc.name, func(t *testing.T) {
			m := etcdtest.Start(t)
			obs := m.Client(t)
			eps := []string{m.Endpoint()}
			agents := fleetNames(1000, "agent-", tc.width)
			plugins := fleetNames(10, "plugin-", tc.width)
			f := startFleet(t, obs, agents, plugins)
			const budget = 256 << 10
			cfg := testConfig("c1")
			cfg.WriteBudget = budget
			cfg.RoundDeadline = 5 * time.Minute
			cfg.BackoffMin, cfg.BackoffMax = time.Minute, time.Minute // no retry round during the test
			var me meter
			c1 := newMeteredCoord(t, eps, cfg, &me, nil)
			var rev schema.Revision
			etcdtest.WaitFor(t, 60*time.Second, "round 1 Started with 10,000 participants", func() bool {
				r, ok := readRevision(t, obs)
				rev = r
				return ok && r.Revision == 1 && r.State == schema.Started
			})
			if rev.Participants != 10000 {
				t.Fatalf("round 1 has %d participants, want 10000 (the fleet registered before the leader read it?)", rev.Participants)
			}
			// Half fail, the leader sees them, then it hands over.
			f.ack(1, f.ids[:5000], schema.ResultError, errorText)
			etcdtest.WaitFor(t, 60*time.Second, "the leader to count 5,000 failures", func() bool {
				p := c1.Status().Progress
				return p != nil && p.Failed == 5000
			})
			c1.Close()
			cfg.ID = "c2"
			c2 := newMeteredCoord(t, eps, cfg, &me, nil)
			etcdtest.WaitFor(t, 30*time.Second, "c2 to resume round 1", func() bool {
				c2.hooks.mu.Lock()
				defer c2.hooks.mu.Unlock()
				return len(c2.hooks.resumed) == 1 && c2.hooks.resumed[0].Counts.Participants == 10000
			})
			f.ack(1, f.ids[5000:], schema.ResultError, errorText)
			etcdtest.WaitFor(t, 60*time.Second, "round 1 to finish", func() bool {
				r, ok, err := etcdtest.ReadRound(ctxT(t, 5*time.Second), obs, layout, 1)
				return err == nil && ok && r.State == schema.NotActive
			})
			v, _, err := ReadRoundView(ctxT(t, 2*time.Minute), obs, layout, 1)
			if err != nil {
				t.Fatal(err)
			}
			if !strings.HasPrefix(v.StartedBy, "c1@") || !strings.HasPrefix(v.FinishedBy, "c2@") {
				t.Errorf("round 1 started by %s, finished by %s: want c1, then c2", v.StartedBy, v.FinishedBy)
			}
			checkOutcomes(t, v, f.ids)
			if got := me.max.Load(); got > budget+4<<10 {
				t.Fatalf("the coordinators wrote a %d-byte request: the budget is %d", got, budget)
			} else {
				t.Logf("largest request written: %d bytes (budget %d); coordinator's own count: %d", got, budget, c2.Status().LargestWrite)
			}
			// Readers: the summary and the revision stay small.
			for _, k := range []string{layout.Round(1), layout.Revision()} {
				resp, err := obs.Get(ctxT(t, 5*time.Second), k)
				if err != nil || len(resp.Kvs) != 1 || len(resp.Kvs[0].Value) > 4<<10 {
					t.Fatalf("%s: %v, %d bytes", k, err, len(resp.Kvs[0].Value))
				}
			}
		})
	}
}

// etcd refuses the per-agent records with their error texts for good (a
// tiny --max-request-bytes): the leader logs it with the key and size,
// writes them without the texts, and the round completes, marked truncated;
// nothing is retried.
func TestPermanentRefusalCompletesDegraded(t *testing.T) {
	ep := startSmallEtcd(t, 5<<10) // one agent's record with its 10 error texts is ~7.6 KB
	obs := etcdtest.Client(t, ep)
	f := startFleet(t, obs, []string{"a1", "a2"}, fleetNames(10, "p", 0))
	var me meter
	var logs etcdtest.Buffer
	cfg := testConfig("c1")
	cfg.BackoffMin, cfg.BackoffMax = time.Minute, time.Minute
	newMeteredCoord(t, []string{ep}, cfg, &me, &logs)
	etcdtest.WaitFor(t, 30*time.Second, "round 1 Started", func() bool {
		r, ok := readRevision(t, obs)
		return ok && r.Revision == 1 && r.State == schema.Started
	})
	f.batch = 2 // the acks themselves must pass etcd's limit
	f.ack(1, f.ids, schema.ResultError, errorText)
	var v RoundView
	etcdtest.WaitFor(t, 30*time.Second, "round 1 to complete", func() bool {
		var ok bool
		v, ok = readRound(t, obs, 1)
		return ok && v.State == schema.NotActive
	})
	checkOutcomes(t, v, f.ids)
	if !v.Truncated {
		t.Fatalf("the degraded round is not marked truncated: %+v\n%s", v.Round, logs.String())
	}
	out := logs.String()
	if !strings.Contains(out, "etcd refuses this record for good; writing it without its error texts") ||
		!strings.Contains(out, "key="+layout.RoundAgent(1, "a1")) || !strings.Contains(out, "bytes=") {
		t.Fatalf("no clear log line with the key and size:\n%s", out)
	}
	if strings.Contains(out, "fenced write failed; retrying") {
		t.Fatalf("a write was retried:\n%s", out)
	}
}

// Two agent-scoped requests in one coalescing window: one round whose
// participants are exactly those agents' plugins; the others get nothing.
func TestTwoScopedRequestsMakeOneRoundOfTheirUnion(t *testing.T) {
	m := etcdtest.Start(t)
	obs := m.Client(t)
	eps := []string{m.Endpoint()}
	agents := startAgents(t, eps, 5, []string{"p", "q"}, nil)
	cfg := testConfig("c0")
	cfg.CoalesceWindow = 300 * time.Millisecond
	newCoord(t, eps, cfg)
	waitFinished(t, obs, 1, 10*time.Second)
	waitIdle(t, obs, 5*time.Second)
	var wg sync.WaitGroup
	for _, a := range []string{"agent-01", "agent-03"} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			request(t, obs, schema.CauseManual, schema.Scope{Agent: a}, "only "+a)
		}()
	}
	wg.Wait()
	r := waitFinished(t, obs, 2, 10*time.Second)
	if got := fmt.Sprint(r.Participants); got != "[agent-01/p agent-01/q agent-03/p agent-03/q]" || r.Counts.Acked != 4 {
		t.Fatalf("round 2 participants %s counts %+v", got, r.Counts)
	}
	if r.Scope.String() != "2 targets (2 agents, 0 plugins): agent-01, agent-03" {
		t.Errorf("round 2 scope %q", r.Scope)
	}
	for i, a := range agents {
		for _, p := range []string{"p", "q"} {
			want := 0
			if i == 1 || i == 3 {
				want = 1
			}
			if n := a.StartedCount(p, 2); n != want {
				t.Errorf("%s/%s got Started 2 %d times, want %d", a.Name, p, n, want)
			}
		}
	}
	if rev := waitIdle(t, obs, 5*time.Second); rev.Revision != 2 {
		t.Fatalf("revision %d: the two requests made more than one round", rev.Revision)
	}
}

// Failures in 3 agents of 20: the retry's participants are exactly the
// failed plugins, nothing else of those agents or of the fleet.
func TestRetryCoversExactlyTheFailedPlugins(t *testing.T) {
	m := etcdtest.Start(t)
	obs := m.Client(t)
	eps := []string{m.Endpoint()}
	plugins := []string{"if", "l3", "acl"}
	startAgents(t, eps, 20, plugins, func(a string) map[string]string {
		switch a {
		case "agent-02", "agent-13":
			return map[string]string{"l3": handagent.Error}
		case "agent-07":
			return map[string]string{"if": handagent.Error, "acl": handagent.Error}
		}
		return nil
	})
	newCoord(t, eps, testConfig("c0"))
	r1 := waitFinished(t, obs, 1, 20*time.Second)
	want := "[agent-02/l3 agent-07/if agent-07/acl agent-13/l3]"
	if fmt.Sprint(r1.Failed) != want {
		t.Fatalf("round 1 failed %v", r1.Failed)
	}
	r2 := waitFinished(t, obs, 2, 20*time.Second)
	if fmt.Sprint(r2.Participants) != want || r2.Cause != schema.CauseError {
		t.Fatalf("retry round 2: cause %s participants %v, want exactly %s", r2.Cause, r2.Participants, want)
	}
	if r2.Scope.Plugins != 4 || r2.Scope.Agents != 0 {
		t.Errorf("retry scope %+v, want 4 plugins", r2.Scope)
	}
}

// ReportError from 10 of 100 agents within 100 ms: one round of exactly
// those agents' plugins, nothing else.
func TestErrorReportsFromTenAgentsMakeOneRoundOfThem(t *testing.T) {
	m := etcdtest.Start(t)
	obs := m.Client(t)
	eps := []string{m.Endpoint()}
	agents := fleetNames(100, "agent-", 0)
	f := startFleet(t, obs, agents, []string{"p", "q"})
	starts := f.autoAck(obs)
	newCoord(t, eps, testConfig("c0"))
	waitFinished(t, obs, 1, 20*time.Second)
	waitIdle(t, obs, 5*time.Second)
	reporters := []string{}
	for i := 3; i < 100; i += 10 {
		reporters = append(reporters, agents[i])
	}
	var wg sync.WaitGroup
	for _, a := range reporters { // as ReportError does: an error request for its agent, under its own prefix
		wg.Add(1)
		go func() {
			defer wg.Done()
			now := time.Now()
			b, err := schema.Encode(schema.Request{Reason: "plugin p of " + a + " failed", Cause: schema.CauseError,
				Scope: schema.Scope{Agent: a}, RequestedBy: a, RequestedAt: now.UTC()})
			if err != nil {
				t.Error(err)
				return
			}
			if _, err := obs.Put(ctxT(t, 5*time.Second), layout.AgentRequest(a, schema.NewRequestID(now)), string(b)); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	r := waitFinished(t, obs, 2, 20*time.Second)
	var want []schema.PluginID
	for _, a := range reporters {
		want = append(want, schema.PluginID{Agent: a, Plugin: "p"}, schema.PluginID{Agent: a, Plugin: "q"})
	}
	if !slices.Equal(r.Participants, want) || r.Counts.Acked != 20 || r.Cause != schema.CauseError {
		t.Fatalf("round 2: cause %s participants %v counts %+v, want exactly the 10 reporters' plugins", r.Cause, r.Participants, r.Counts)
	}
	etcdtest.WaitFor(t, 10*time.Second, "every request consumed", func() bool {
		resp, err := obs.Get(ctxT(t, time.Second), layout.Requests(), clientv3WithPrefix())
		return err == nil && len(resp.Kvs) == 0
	})
	if rev := waitIdle(t, obs, 5*time.Second); rev.Revision != 2 {
		t.Fatalf("revision %d: the 10 reports made more than one round", rev.Revision)
	}
	got := starts.of(2)
	if len(got) != len(want) {
		t.Fatalf("%d plugins got Started 2, want %d", len(got), len(want))
	}
	for _, p := range want {
		if !got[p] {
			t.Fatalf("%s did not get Started 2", p)
		}
	}
}
