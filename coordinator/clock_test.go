package coordinator

import (
	"fmt"
	"testing"
	"time"

	"github.com/jonboulle/clockwork"

	"github.com/resyncd/resync/internal/testing/etcdtest"
	"github.com/resyncd/resync/schema"
)

// The coordinator's timing (coalescing window, round deadline, error
// backoff) runs on its clock (WithClock). These tests drive a fake clock, so
// they check each time exactly, not within wall-clock bounds. While idle the
// leader has no timer; with work pending it has exactly one, the fake
// clock's only waiter, and nothing else wakes it: after an Advance short of
// the timer nothing can have happened, and one past it the step happens.

// newFakeClock starts at the real time, so the records keep realistic
// timestamps.
func newFakeClock() *clockwork.FakeClock {
	return clockwork.NewFakeClockAt(time.Now().UTC().Truncate(time.Second))
}

// armed waits until the leader armed its timer.
func armed(t *testing.T, fc *clockwork.FakeClock, what string) {
	t.Helper()
	if err := fc.BlockUntilContext(ctxT(t, 10*time.Second), 1); err != nil {
		t.Fatalf("the leader armed no timer for %s: %v", what, err)
	}
}

// waitRevision waits for revision n in state st.
func waitRevision(t *testing.T, obs *testCoord, n uint64, st schema.Status) schema.Revision {
	t.Helper()
	var r schema.Revision
	etcdtest.WaitFor(t, 10*time.Second, fmt.Sprintf("revision %d %s", n, st), func() bool {
		var ok bool
		r, ok = readRevision(t, obs.c)
		return ok && r.Revision == n && r.State == st
	})
	return r
}

// stillAt fails unless the revision record is still n in state st.
func stillAt(t *testing.T, obs *testCoord, n uint64, st schema.Status, why string) {
	t.Helper()
	if r, ok := readRevision(t, obs.c); !ok || r.Revision != n || r.State != st {
		t.Fatalf("%s: revision %d %s, want still %d %s", why, r.Revision, r.State, n, st)
	}
}

// timesOutAtDeadline advances fc through round n's deadline (deadline
// after its start): the round must still run 1 ns before it and finish
// exactly at it, with exactly timedOut (printed, e.g. "[a/p]") timed out.
func timesOutAtDeadline(t *testing.T, fc *clockwork.FakeClock, co *testCoord, n uint64, deadline time.Duration, timedOut string) RoundView {
	t.Helper()
	armed(t, fc, fmt.Sprintf("round %d's deadline", n))
	fc.Advance(deadline - time.Nanosecond)
	stillAt(t, co, n, schema.Started, "1ns before the deadline")
	fc.Advance(time.Nanosecond)
	v := waitFinished(t, co.c, n, 10*time.Second)
	if !v.FinishedAt.Equal(v.Deadline) || fmt.Sprint(v.TimedOut) != timedOut {
		t.Fatalf("round %d finished at %v (deadline %v), timed out %v: want at the deadline, %s timed out", n, v.FinishedAt, v.Deadline, v.TimedOut, timedOut)
	}
	return v
}

// retryDue advances fc to the retry of round n, pause after it finished:
// 1 ns before, round n must still be the last one.
func retryDue(t *testing.T, fc *clockwork.FakeClock, co *testCoord, n uint64, pause time.Duration) {
	t.Helper()
	armed(t, fc, fmt.Sprintf("the retry of round %d", n))
	fc.Advance(pause - time.Nanosecond)
	stillAt(t, co, n, schema.NotActive, fmt.Sprintf("1ns before the retry of round %d is due", n))
	fc.Advance(time.Nanosecond)
}

// TestCoalescingWindowIsExact: requests seen within the window of the first
// make one round, started exactly CoalesceWindow after the first was seen.
func TestCoalescingWindowIsExact(t *testing.T) {
	m := etcdtest.Start(t)
	eps := []string{m.Endpoint()}
	fc := newFakeClock()
	cfg := testConfig("c0")
	cfg.CoalesceWindow = 10 * time.Second // far beyond any wall-clock delay of the test
	co := newCoord(t, eps, cfg, WithClock(fc))
	waitRevision(t, co, 1, schema.NotActive) // the initial round: no participant, done at once

	t0 := fc.Now()
	request(t, co.c, schema.CauseManual, schema.Scope{}, "first")
	armed(t, fc, "the first request")
	fc.Advance(cfg.CoalesceWindow / 2)
	request(t, co.c, schema.CauseManual, schema.Scope{}, "second")
	etcdtest.WaitFor(t, 10*time.Second, "the second request seen", func() bool { return co.hooks.acceptedCount() == 2 })
	fc.Advance(cfg.CoalesceWindow/2 - time.Nanosecond)
	stillAt(t, co, 1, schema.NotActive, "1ns before the window ends")
	fc.Advance(time.Nanosecond)
	r := waitFinished(t, co.c, 2, 10*time.Second)
	if want := t0.Add(cfg.CoalesceWindow); !r.StartedAt.Equal(want) {
		t.Errorf("round 2 started at %v, want %v (the first request + CoalesceWindow)", r.StartedAt, want)
	}
	if r.Reason != "2 requests: first; second" {
		t.Errorf("round 2 reason %q: want both requests in it", r.Reason)
	}
}

// TestDeadlineAndBackoffAreExact: a participant that never acks times out
// exactly at the round's deadline; the retry of its round comes exactly
// BackoffMin after the round finished, the retry of that one twice as long
// after it (the agent's error streak doubles).
func TestDeadlineAndBackoffAreExact(t *testing.T) {
	m := etcdtest.Start(t)
	eps := []string{m.Endpoint()}
	startAgents(t, eps, 1, []string{"p"}, func(string) map[string]string { return map[string]string{"p": "never"} })
	fc := newFakeClock()
	cfg := testConfig("c0")
	cfg.RoundDeadline = time.Minute
	cfg.BackoffMin, cfg.BackoffMax = 10*time.Second, time.Minute
	t0 := fc.Now()
	co := newCoord(t, eps, cfg, WithClock(fc))

	r1 := waitRevision(t, co, 1, schema.Started)
	if !r1.StartedAt.Equal(t0) || !r1.Deadline.Equal(t0.Add(cfg.RoundDeadline)) {
		t.Fatalf("round 1 started %v with deadline %v, want %v and %v", r1.StartedAt, r1.Deadline, t0, t0.Add(cfg.RoundDeadline))
	}
	finish := func(n uint64) RoundView { return timesOutAtDeadline(t, fc, co, n, cfg.RoundDeadline, "[agent-00/p]") }
	retry := func(n uint64, after time.Time, pause time.Duration) {
		t.Helper()
		retryDue(t, fc, co, n-1, pause)
		r := waitRevision(t, co, n, schema.Started)
		if want := after.Add(pause); !r.StartedAt.Equal(want) || r.Cause != schema.CauseError {
			t.Fatalf("round %d (%s) started at %v, want the retry at %v (%v after round %d)", n, r.Cause, r.StartedAt, want, pause, n-1)
		}
	}
	v1 := finish(1)
	retry(2, v1.FinishedAt, cfg.BackoffMin)
	v2 := finish(2)
	retry(3, v2.FinishedAt, 2*cfg.BackoffMin)
	if bo := co.hooks.backoffList(); fmt.Sprint(bo) != fmt.Sprint([]time.Duration{cfg.BackoffMin, 2 * cfg.BackoffMin}) {
		t.Errorf("backoffs %v, want [BackoffMin 2xBackoffMin]", bo)
	}
}
