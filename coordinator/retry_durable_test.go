package coordinator

import (
	"fmt"
	"testing"
	"time"

	"github.com/jonboulle/clockwork"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"

	"github.com/resyncd/resync/internal/testing/etcdtest"
	"github.com/resyncd/resync/schema"
)

// The retry of an unclean round is durable until its round runs
// (invariant 7): it carries its targets, so it neither depends on the
// round's per-agent records (pruned after DetailHistory rounds) nor on the
// memory of the leader that planned it, nor is it dropped when the
// round's summary Txn falls back to smaller writes.

// retryConfig: 10 s doubling to 1 min, on a fake clock.
func retryConfig(id string) Config {
	cfg := testConfig(id)
	cfg.BackoffMin, cfg.BackoffMax = 10*time.Second, time.Minute
	return cfg
}

// failTwice runs rounds 1 (initial) and 2 (its retry) on fc, where a1/p
// fails both; a2/p (if in f) acks round 1 ok. It returns when round 2's
// retry is planned, 2 x BackoffMin after round 2 finished.
func failTwice(t *testing.T, fc *clockwork.FakeClock, co *testCoord, f *fleet, a1 []schema.PluginID) RoundView {
	t.Helper()
	waitRevision(t, co, 1, schema.Started)
	f.ack(1, a1, schema.ResultError, "boom")
	if len(f.ids) > len(a1) {
		f.ack(1, f.ids[len(a1):], schema.ResultOK, "")
	}
	v1 := waitFinished(t, co.c, 1, 10*time.Second)
	etcdtest.WaitFor(t, 10*time.Second, "the retry of round 1 seen", func() bool { return len(co.hooks.backoffList()) == 1 })
	retryDue(t, fc, co, 1, 10*time.Second)
	errorRound(t, co.c, 2, "[a1/p]", v1.FinishedAt.Add(10*time.Second))
	f.ack(2, a1, schema.ResultError, "boom")
	v2 := waitFinished(t, co.c, 2, 10*time.Second)
	etcdtest.WaitFor(t, 10*time.Second, "the retry of round 2 seen", func() bool { return len(co.hooks.backoffList()) == 2 })
	if bo := co.hooks.backoffList(); fmt.Sprint(bo) != "[10s 20s]" {
		t.Fatalf("backoffs %v, want [10s 20s]", bo)
	}
	return v2
}

// TestRetrySurvivesPrunedRecordsAndFailover: while round 2's retry waits
// out its backoff, another agent's error round runs, and its finish prunes
// round 2's per-agent records (DetailHistory 1); then the leader hands
// over. The successor still runs the retry, of exactly the failed plugin.
func TestRetrySurvivesPrunedRecordsAndFailover(t *testing.T) {
	m := etcdtest.Start(t)
	obs := m.Client(t)
	eps := []string{m.Endpoint()}
	f := startFleet(t, obs, []string{"a1", "a2"}, []string{"p"})
	a1, a2 := f.ids[:1], f.ids[1:]
	fc := newFakeClock()
	cfg := retryConfig("first")
	cfg.DetailHistory = 1
	first := newCoord(t, eps, cfg, WithClock(fc))
	failTwice(t, fc, first, f, a1)

	// a2 reports an error: its round comes before a1's retry and prunes
	// round 2's records.
	putErrorRequest(t, obs, "a2")
	etcdtest.WaitFor(t, 10*time.Second, "a2's error seen", func() bool { return len(first.hooks.backoffList()) == 3 })
	armed(t, fc, "a2's error round")
	fc.Advance(10 * time.Second)
	errorRound(t, obs, 3, "[a2/p]", time.Time{})
	f.ack(3, a2, schema.ResultOK, "")
	waitFinished(t, obs, 3, 10*time.Second)
	if n := countPrefix(t, obs, layout.RoundAgents(2)); n != 0 {
		t.Fatalf("round 2 still has %d per-agent records: DetailHistory 1 prunes them", n)
	}
	first.Close()

	cfg.ID = "second"
	second := newCoord(t, eps, cfg, WithClock(fc))
	waitLeader(t, []*testCoord{second}, 10*time.Second)
	etcdtest.WaitFor(t, 10*time.Second, "the retry seen by the successor", func() bool { return len(second.hooks.backoffList()) == 1 })
	armed(t, fc, "the retry of round 2")
	fc.Advance(cfg.BackoffMax)
	errorRound(t, obs, 4, "[a1/p]", time.Time{})
}

// TestRetryKeepsItsBackoffAcrossFailover: the leader hands over right
// after planning round 2's retry (the fake clock stands still): the
// successor runs it exactly when its predecessor would have, twice
// BackoffMin after round 2 (a1's streak), not BackoffMin after it.
func TestRetryKeepsItsBackoffAcrossFailover(t *testing.T) {
	m := etcdtest.Start(t)
	obs := m.Client(t)
	eps := []string{m.Endpoint()}
	f := startFleet(t, obs, []string{"a1"}, []string{"p"})
	fc := newFakeClock()
	cfg := retryConfig("first")
	first := newCoord(t, eps, cfg, WithClock(fc))
	v2 := failTwice(t, fc, first, f, f.ids)
	first.Close()

	cfg.ID = "second"
	second := newCoord(t, eps, cfg, WithClock(fc))
	waitLeader(t, []*testCoord{second}, 10*time.Second)
	etcdtest.WaitFor(t, 10*time.Second, "the retry seen by the successor", func() bool { return len(second.hooks.backoffList()) == 1 })
	if bo := second.hooks.backoffList(); fmt.Sprint(bo) != "[20s]" {
		t.Fatalf("the successor paces the retry with %v, want [20s] (a1's streak)", bo)
	}
	retryDue(t, fc, second, 2, 20*time.Second)
	errorRound(t, obs, 3, "[a1/p]", v2.FinishedAt.Add(20*time.Second))
}

// TestRetrySurvivesTheSummaryFallback: etcd refuses Txns of more than 3
// operations for good, so round 2's summary Txn (summary, revision, the
// pruning of round 1's records, the retry) falls back to the summary and
// revision alone. The retry is written on its own and its round runs.
func TestRetrySurvivesTheSummaryFallback(t *testing.T) {
	ep := startEtcdWith(t, func(cfg *embed.Config) { cfg.MaxTxnOps = 3 })
	obs := etcdtest.Client(t, ep)
	f := startFleet(t, obs, []string{"a1"}, []string{"p"})
	f.batch = 1
	cfg := testConfig("c0")
	cfg.DetailHistory = 1
	newCoord(t, []string{ep}, cfg)
	waitRevision(t, &testCoord{c: obs}, 1, schema.Started)
	f.ack(1, f.ids, schema.ResultError, "boom")
	errorRound(t, obs, 2, "[a1/p]", time.Time{})
	waitRevision(t, &testCoord{c: obs}, 2, schema.Started)
	f.ack(2, f.ids, schema.ResultError, "boom")
	if v := waitFinished(t, obs, 2, 10*time.Second); !v.Truncated {
		t.Fatalf("round 2's summary is not marked truncated: the fallback did not happen (%+v)", v.Round)
	}
	errorRound(t, obs, 3, "[a1/p]", time.Time{})
}

// putErrorRequest writes agent's ReportError-style request for itself.
func putErrorRequest(t *testing.T, c *clientv3.Client, agent string) {
	t.Helper()
	b, err := schema.Encode(schema.Request{Reason: "boom", Cause: schema.CauseError, Scope: schema.Scope{Agent: agent}, RequestedBy: agent, RequestedAt: time.Now().UTC()})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Put(ctxT(t, 5*time.Second), layout.AgentRequest(agent, schema.NewRequestID(time.Now())), string(b)); err != nil {
		t.Fatal(err)
	}
}
