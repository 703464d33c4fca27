package coordinator

import (
	"fmt"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/resyncd/resync/internal/testing/etcdtest"
	"github.com/resyncd/resync/schema"
)

// handPlugins registers plugins of agent (in order) on a lease of their
// own, kept alive until the test ends; the test writes their acks.
func handPlugins(t *testing.T, c *clientv3.Client, agent string, plugins ...string) *fleet {
	t.Helper()
	return startFleet(t, c, []string{agent}, plugins)
}

// errorRound waits for round n and checks that it is an error round of
// exactly want (printed, e.g. "[a1/p]"); on a fake clock, started at at.
func errorRound(t *testing.T, c *clientv3.Client, n uint64, want string, at time.Time) RoundView {
	t.Helper()
	var v RoundView
	etcdtest.WaitFor(t, 10*time.Second, fmt.Sprintf("round %d", n), func() bool {
		var ok bool
		v, ok = readRound(t, c, n)
		return ok
	})
	if v.Cause != schema.CauseError || fmt.Sprint(v.Participants) != want || (!at.IsZero() && !v.StartedAt.Equal(at)) {
		t.Fatalf("round %d: cause %s, participants %v, started at %v; want an error round of %s at %v", n, v.Cause, v.Participants, v.StartedAt, want, at)
	}
	return v
}

// TestFailedJoinAckGetsARound: a plugin that fails its join resync (it
// registers while the cluster is idle and acks the current revision with
// an error), and one registered after a round started that fails that
// round's Started (it is no participant of it), each get a round that
// includes them, exactly BackoffMin after the leader saw the failure (the
// fake clock stands still meanwhile). A timed-out join ack counts as a
// failure too.
func TestFailedJoinAckGetsARound(t *testing.T) {
	m := etcdtest.Start(t)
	obs := m.Client(t)
	eps := []string{m.Endpoint()}
	fc := newFakeClock()
	cfg := testConfig("c0")
	cfg.RoundDeadline = time.Hour
	cfg.BackoffMin, cfg.BackoffMax = 10*time.Second, time.Minute
	co := newCoord(t, eps, cfg, WithClock(fc))
	waitRevision(t, co, 1, schema.NotActive) // no participant: done at once

	// Join: a1/p registers and fails revision 1's join resync.
	a1 := handPlugins(t, obs, "a1", "p")
	t0 := fc.Now()
	a1.ack(1, a1.ids, schema.ResultError, "dependency not ready")
	etcdtest.WaitFor(t, 10*time.Second, "the failed join seen", func() bool { return len(co.hooks.backoffList()) == 1 })
	retryDue(t, fc, co, 1, cfg.BackoffMin)
	errorRound(t, obs, 2, "[a1/p]", t0.Add(cfg.BackoffMin))

	// Late registration: a2/q registers while round 2 runs (a1/p has not
	// acked it) and times out on round 2's Started.
	a2 := handPlugins(t, obs, "a2", "q")
	etcdtest.WaitFor(t, 10*time.Second, "a2/q registered", func() bool { return countPrefix(t, obs, layout.AgentRegistrations("a2")) == 1 })
	t1 := fc.Now()
	a2.ack(2, a2.ids, schema.ResultTimeout, "")
	etcdtest.WaitFor(t, 10*time.Second, "the late plugin's timeout seen", func() bool { return len(co.hooks.backoffList()) == 2 })
	stillAt(t, co, 2, schema.Started, "a1/p has not acked round 2")
	a1.ack(2, a1.ids, schema.ResultOK, "")
	if v := waitFinished(t, obs, 2, 10*time.Second); fmt.Sprint(v.Participants) != "[a1/p]" || v.Counts.Acked != 1 {
		t.Fatalf("round 2: participants %v, %+v; want a1/p alone, acked", v.Participants, v.Counts)
	}
	retryDue(t, fc, co, 2, t1.Add(cfg.BackoffMin).Sub(fc.Now()))
	errorRound(t, obs, 3, "[a2/q]", t1.Add(cfg.BackoffMin))
	a2.ack(3, a2.ids, schema.ResultOK, "")
	waitFinished(t, obs, 3, 10*time.Second)
	if n := countPrefix(t, obs, layout.Requests()); n != 0 {
		t.Fatalf("%d requests left after round 3: every failure is answered once", n)
	}
}

// TestFailedJoinAckFoundBySuccessor: a plugin fails its join resync while
// no coordinator leads (as when the leader dies before it planned the
// round): the next leader finds the failed ack and runs a round of that
// plugin, exactly once.
func TestFailedJoinAckFoundBySuccessor(t *testing.T) {
	m := etcdtest.Start(t)
	obs := m.Client(t)
	eps := []string{m.Endpoint()}
	fc := newFakeClock()
	cfg := testConfig("first")
	cfg.BackoffMin, cfg.BackoffMax = 10*time.Second, time.Minute
	first := newCoord(t, eps, cfg, WithClock(fc))
	waitRevision(t, first, 1, schema.NotActive)
	first.Close()

	a1 := handPlugins(t, obs, "a1", "p", "q")
	a1.ack(1, a1.ids[1:], schema.ResultError, "dependency not ready")
	a1.ack(1, a1.ids[:1], schema.ResultOK, "")
	cfg.ID = "second"
	second := newCoord(t, eps, cfg, WithClock(fc))
	waitLeader(t, []*testCoord{second}, 10*time.Second)
	etcdtest.WaitFor(t, 10*time.Second, "the failed join found", func() bool { return len(second.hooks.backoffList()) == 1 })
	t0 := fc.Now()
	retryDue(t, fc, second, 1, cfg.BackoffMin)
	errorRound(t, obs, 2, "[a1/q]", t0.Add(cfg.BackoffMin))
	a1.ack(2, a1.ids[1:], schema.ResultOK, "")
	waitFinished(t, obs, 2, 10*time.Second)
	if n := countPrefix(t, obs, layout.Requests()); n != 0 {
		t.Fatalf("%d requests left after round 2: the failure is answered once", n)
	}
	if bo := second.hooks.backoffList(); len(bo) != 1 {
		t.Fatalf("backoffs %v: the failed join was planned more than once", bo)
	}
}
