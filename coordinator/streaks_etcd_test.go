package coordinator

import (
	"errors"
	"fmt"
	"io"
	"sync"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	clientv3 "go.etcd.io/etcd/client/v3"

	resync "github.com/resyncd/resync"
	"github.com/resyncd/resync/internal/testing/etcdtest"
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

// pluginEvents acks every event of a plugin and notes the last NotActive it
// took, so that a test knows the plugin holds no timer of the fake clock.
type pluginEvents struct {
	mu        sync.Mutex
	notActive uint64 // the last NotActive revision taken
}

// It ends on done (the resync plugin's Done: status channels never close).
func (pe *pluginEvents) run(ch <-chan resync.StatusEvent, done <-chan struct{}) {
	for {
		var ev resync.StatusEvent
		select {
		case ev = <-ch:
		case <-done:
			return
		}
		ev.Ack()
		e := ev.(*resync.Event)
		pe.mu.Lock()
		if e.ResyncStatus() == schema.NotActive {
			pe.notActive = max(pe.notActive, e.Revision())
		}
		pe.mu.Unlock()
	}
}

func (pe *pluginEvents) tookNotActive(n uint64) bool {
	pe.mu.Lock()
	defer pe.mu.Unlock()
	return pe.notActive >= n
}

// TestReportErrorLoopObeysBackoffAcrossFailover: on the fake clock, shared
// by the coordinators and the agent, a plugin keeps calling ReportError
// while acking every round ok (backoff 100 ms..1 s), before and halfway
// through each pause. Each error-triggered round starts exactly its backoff
// after the previous one ended: 100, 200, 400, 800 ms, then every 1 s. The
// leader crashes (a real lease expiry, during which the clock stands still)
// and its successor keeps the streak: its first backoff is the 1 s cap, not
// 100 ms, and its first round comes exactly 1 s after its predecessor's
// last. An error 1 ns short of a quiet period (2 x 1 s without errors nor
// their rounds) still gets the cap; one a quiet period after the last
// round gets 100 ms again.
func TestReportErrorLoopObeysBackoffAcrossFailover(t *testing.T) {
	m := etcdtest.Start(t)
	obs := m.Client(t)
	eps := []string{m.Endpoint()}
	fc := newFakeClock()
	cfg := func(id string) Config {
		c := testConfig(id)
		c.BackoffMin, c.BackoffMax = 100*time.Millisecond, time.Second
		c.History = 1000
		return c
	}
	lo, hi := cfg("").BackoffMin, cfg("").BackoffMax
	quiet := 2 * hi
	quietLog := logrus.New()
	quietLog.SetOutput(io.Discard)
	pcfg := resync.DefaultConfig("a1")
	pcfg.TTL = 5 * time.Second
	p, err := resync.New(resync.Deps{Client: etcdtest.Client(t, m.Endpoint()), Log: quietLog, Clock: fc}, pcfg)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	reg := p.Register("p1")
	var events pluginEvents
	acked := make(chan struct{})
	go func() {
		defer close(acked)
		events.run(reg.StatusChan(), p.Done()) // every round clean: only the reports ask for rounds
	}()
	defer func() { p.Close(); <-acked }()
	// The agent registers first, so that the leader knows it from the
	// start (a registration and a request reach it by separate watches).
	etcdtest.WaitFor(t, 10*time.Second, "p1 registered", func() bool { return countPrefix(t, obs, layout.Registrations()) == 1 })
	first := newCoord(t, eps, cfg("first"), WithClock(fc))
	waitLeader(t, []*testCoord{first}, 10*time.Second)
	if v := waitFinished(t, obs, 1, 10*time.Second); fmt.Sprint(v.Acked) != "[a1/p1]" {
		t.Fatalf("the initial round acked %v, want [a1/p1]", v.Acked)
	}
	etcdtest.WaitFor(t, 10*time.Second, "p1 told the initial round ended", func() bool { return events.tookNotActive(1) })

	ld := first
	var want []time.Duration // the backoff of every report the leader ld saw, in order
	// send reports n errors, which the leader is to see with backoff d.
	send := func(n int, d time.Duration) {
		for range n {
			p.ReportError("p1", errors.New("boom"))
			want = append(want, d)
		}
	}
	// seen waits until the leader saw every report, with its backoff.
	seen := func() {
		t.Helper()
		etcdtest.WaitFor(t, 10*time.Second, "the reports seen", func() bool { return len(ld.hooks.backoffList()) == len(want) })
		if got := ld.hooks.backoffList(); fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("%s's backoffs %v, want %v", ld.ID(), got, want)
		}
	}
	report := func(n int, d time.Duration) {
		t.Helper()
		send(n, d)
		seen()
	}
	var starts []time.Time // of the error-triggered rounds
	rev := uint64(1)
	// next lets the pause after end pass, with one more report halfway (it
	// gets backoff d and does not delay the round): the next round starts
	// exactly then, answers every report, and ends at once (the clock
	// stands still while the plugin acks).
	next := func(end time.Time, pause, d time.Duration) time.Time {
		t.Helper()
		armed(t, fc, fmt.Sprintf("the round after %d", rev))
		fc.Advance(pause / 2)
		report(1, d)
		armed(t, fc, fmt.Sprintf("the round after %d", rev))
		fc.Advance(pause - pause/2 - time.Nanosecond)
		stillAt(t, ld, rev, schema.NotActive, "1ns before the backoff ends")
		fc.Advance(time.Nanosecond)
		rev++
		v := waitFinished(t, obs, rev, 10*time.Second)
		if wantAt := end.Add(pause); v.Cause != schema.CauseError || !v.StartedAt.Equal(wantAt) || !v.FinishedAt.Equal(v.StartedAt) || !v.Clean() {
			t.Fatalf("round %d (%s, %+v) ran %v to %v, want a clean error round at %v (%v after %v)", rev, v.Cause, v.Counts, v.StartedAt, v.FinishedAt, wantAt, pause, end)
		}
		starts = append(starts, v.StartedAt)
		etcdtest.WaitFor(t, 10*time.Second, "p1 told the round ended", func() bool { return events.tookNotActive(rev) })
		if n := countPrefix(t, obs, layout.Requests()); n != 0 {
			t.Fatalf("%d requests left after round %d: it answers every report", n, rev)
		}
		return v.FinishedAt
	}

	// The ramp, then the cap: each round's reports are seen with the
	// streak so far (none before the first round).
	const perRound = 3
	end := fc.Now() // the first errors: their round is BackoffMin after them
	for _, d := range []time.Duration{lo, 2 * lo, 4 * lo, 8 * lo, hi, hi} {
		report(perRound, d)
		end = next(end, d, d)
	}

	// Crash: the successor takes over once the lease expires; the reports
	// made meanwhile are its first, at the streak's cap.
	second := newCoord(t, eps, cfg("second"), WithClock(fc))
	first.Crash()
	ld, want = second, nil
	send(perRound, hi)
	waitLeader(t, []*testCoord{second}, 10*time.Second)
	seen()
	for range 2 {
		end = next(end, hi, hi)
		report(perRound, hi)
	}
	end = next(end, hi, hi)

	// Quiet: an error 1ns short of a quiet period after the last round
	// still gets the cap; one a full quiet period after the last round
	// gets BackoffMin.
	fc.Advance(quiet - time.Nanosecond)
	report(1, hi)
	end = next(end.Add(quiet-time.Nanosecond), hi, hi)
	fc.Advance(quiet)
	report(1, lo)
	next(end.Add(quiet), lo, lo)

	var got []time.Time
	for _, r := range errorRounds(t, obs, "a1") {
		got = append(got, r.StartedAt)
	}
	if fmt.Sprint(got) != fmt.Sprint(starts) {
		t.Errorf("error-triggered rounds in the history started at %v, want %v", got, starts)
	}
}
