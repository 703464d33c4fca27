package watcher

import (
	"errors"
	"fmt"
	"io"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/resyncd/resync/internal/testing/etcdtest"
	"github.com/resyncd/resync/registry"
	"github.com/resyncd/resync/schema"
)

// Five plugins of one agent get Started strictly in registration order, each
// only after the previous one acked; another agent proceeds meanwhile.
func TestStartedInRegistrationOrderAgentsInParallel(t *testing.T) {
	m := etcdtest.Start(t)
	c := m.Client(t)
	a := newAgent(t, c, "agent-a", 5*time.Second)
	b := newAgent(t, c, "agent-b", 5*time.Second)
	names := []string{"p0", "p1", "p2", "p3", "p4"}
	chA := a.register(t, names...)
	var countB []*counter
	for _, ch := range b.register(t, names...) {
		countB = append(countB, autoAck(b, ch))
	}

	// Round 1 is every plugin's join resync; round 2 a regular round.
	for _, n := range []uint64{1, 2} {
		writeRev(t, c, n, schema.Started, schema.Scope{})
		var evA0 *Event
		for k := range names {
			ev := recv(t, chA[k], fmt.Sprintf("agent-a %s, revision %d", names[k], n))
			if ev.Revision() != n || ev.ResyncStatus() != schema.Started || ev.Plugin() != names[k] || ev.Join() != (n == 1) {
				t.Fatalf("agent-a %s got %s %d join=%v", names[k], ev.ResyncStatus(), ev.Revision(), ev.Join())
			}
			// Nobody after k gets anything while k holds its event.
			for j := k + 1; j < len(names); j++ {
				expectNone(t, chA[j], 20*time.Millisecond, fmt.Sprintf("agent-a %s while %s holds revision %d", names[j], names[k], n))
			}
			if k == 0 {
				// Agent B's first plugin is served while agent A's first
				// plugin still holds its event unacked.
				etcdtest.WaitFor(t, wait, "agent-b p0 served while agent-a p0 holds its event", func() bool {
					return countB[0].get(schema.Started, n) == 1
				})
				evA0 = ev
				// Before the ack, agent A's p1 still waits.
				expectNone(t, chA[1], 3*acceptTimeout/2, "agent-a p1 before p0 acked")
				evA0.Ack()
				continue
			}
			ev.Ack()
		}
		for _, p := range names {
			waitAck(t, c, "agent-a", p, n, schema.ResultOK)
			waitAck(t, c, "agent-b", p, n, schema.ResultOK)
		}
	}
	if s := a.w.Stats(); s.Started != 10 || s.AcceptTimeouts != 0 || s.AckTimeouts != 0 {
		t.Fatalf("agent-a stats %+v", s)
	}
}

// A plugin that never reads its channel is timed out after the accept
// timeout, one that never acks after the ack timeout; the next ones still
// proceed, a late Ack returns at once and changes nothing, and ack keys are on
// the agent's lease.
func TestTimeoutsLetTheNextPluginProceed(t *testing.T) {
	m := etcdtest.Start(t)
	c := m.Client(t)
	a := newAgent(t, c, "a", 5*time.Second)
	ch := a.register(t, "deaf", "mute", "failing", "good")
	// Round 1 is the join resync (never timed out: see
	// TestLateJoinIsParkedNotLost); round 2 is the regular round under test.
	writeRev(t, c, 1, schema.Started, schema.Scope{})
	for k := range ch {
		recv(t, ch[k], "join").Ack()
	}
	start := time.Now()
	writeRev(t, c, 2, schema.Started, schema.Scope{})

	mute := recv(t, ch[1], "mute after deaf's accept timeout")
	if d := time.Since(start); d < acceptTimeout {
		t.Fatalf("mute got Started %v after the write, before deaf's accept timeout %v", d, acceptTimeout)
	}
	ack := waitAck(t, c, "a", "deaf", 2, schema.ResultTimeout)
	if !strings.Contains(ack.Error, "accept timeout") {
		t.Errorf("deaf's timeout ack says %q", ack.Error)
	}
	failing := recv(t, ch[2], "failing after mute's ack timeout")
	waitAck(t, c, "a", "mute", 2, schema.ResultTimeout)

	// A late Ack returns at once and does not overwrite the timeout ack.
	returned := make(chan struct{})
	go func() {
		mute.Ack()
		mute.AckError(errors.New("too late"))
		close(returned)
	}()
	select {
	case <-returned:
	case <-time.After(wait):
		t.Fatal("a late Ack blocked")
	}

	failing.AckError(errors.New("cannot reload: " + strings.Repeat("x", 2*schema.MaxAckErrorLen)))
	recv(t, ch[3], "good").Ack()
	ack = waitAck(t, c, "a", "failing", 2, schema.ResultError)
	if !strings.HasPrefix(ack.Error, "cannot reload: xxx") || len(ack.Error) > schema.MaxAckErrorLen+len(schema.CutMarker) {
		t.Errorf("failing's error ack has %d bytes: %.40q", len(ack.Error), ack.Error)
	}
	waitAck(t, c, "a", "good", 2, schema.ResultOK)
	if ack, _, _ := getAck(t, c, "a", "mute"); ack.Result != schema.ResultTimeout {
		t.Errorf("the late ack overwrote mute's timeout ack: %+v", ack)
	}
	lease := a.reg.State().Lease
	for _, p := range []string{"deaf", "mute", "failing", "good"} {
		if _, l, _ := getAck(t, c, "a", p); l == 0 || clientv3.LeaseID(l) != lease {
			t.Errorf("%s's ack is on lease %x, want the agent's %x", p, l, lease)
		}
	}
	if s := a.w.Stats(); s.AcceptTimeouts != 1 || s.AckTimeouts != 1 || s.Started != 7 {
		t.Fatalf("stats %+v", s)
	}

	// NotActive reaches the plugins that took Started; one not read is
	// dropped and counted, without holding up the others.
	writeRev(t, c, 2, schema.NotActive, schema.Scope{})
	for _, k := range []int{2, 3} {
		if ev := recv(t, ch[k], "NotActive"); ev.ResyncStatus() != schema.NotActive || ev.Revision() != 2 {
			t.Fatalf("got %s %d, want NotActive 2", ev.ResyncStatus(), ev.Revision())
		}
	}
	etcdtest.WaitFor(t, wait, "mute's NotActive dropped", func() bool { return a.w.Stats().NotActiveDropped == 1 })
	expectNone(t, ch[0], 20*time.Millisecond, "deaf never took Started, so gets no NotActive")

	// Closing removes the acks with the lease; every channel stays open
	// and silent (never closed: consumers may not check ok).
	a.close()
	if resp, err := c.Get(ctxT(t, 5*time.Second), layout.AgentAcks("a"), clientv3.WithPrefix()); err != nil || len(resp.Kvs) != 0 {
		t.Fatalf("acks after Close: %v %v", resp, err)
	}
	for k := range ch {
		select {
		case ev, ok := <-ch[k]:
			t.Fatalf("%d's channel after Close: %v (open %v), want open and silent", k, ev, ok)
		default:
		}
	}
}

// A watch reconnect and a compaction of the watched history never repeat a
// Started; revisions written while the agent was away coalesce into the
// latest one.
func TestNoDuplicatesAcrossReconnectAndCompaction(t *testing.T) {
	m := etcdtest.Start(t)
	c := m.Client(t)
	proxy := etcdtest.NewProxy(t, m.Endpoint())
	agentClient := etcdtest.Client(t, proxy.Endpoint)
	a := newAgent(t, agentClient, "a", 10*time.Second)
	chs := a.register(t, "p0", "p1", "p2")
	var counters []*counter
	for _, ch := range chs {
		counters = append(counters, autoAck(a, ch))
	}
	round := func(n uint64) {
		t.Helper()
		writeRev(t, c, n, schema.Started, schema.Scope{})
		for _, p := range []string{"p0", "p1", "p2"} {
			waitAck(t, c, "a", p, n, schema.ResultOK)
		}
	}
	round(1)
	writeRev(t, c, 1, schema.NotActive, schema.Scope{})
	etcdtest.WaitFor(t, wait, "NotActive 1 delivered", func() bool { return counters[2].get(schema.NotActive, 1) == 1 })

	// A reconnect: the watch resumes from where it was.
	proxy.Cut()
	proxy.Restore()
	round(2)

	// Compaction past the watcher's revision while it is away: it must
	// re-list, and the record it re-reads is not delivered again.
	proxy.Cut()
	for i := 0; i < 10; i++ {
		if _, err := c.Put(ctxT(t, 5*time.Second), "unrelated", fmt.Sprint(i)); err != nil {
			t.Fatal(err)
		}
	}
	etcdtest.Compact(t, c)
	proxy.Restore()
	round(3)

	// Rounds written back to back while the agent is cut off: only the
	// latest is delivered, and a compaction does not change that.
	proxy.Cut()
	writeRev(t, c, 4, schema.Started, schema.Scope{})
	writeRev(t, c, 5, schema.Started, schema.Scope{})
	etcdtest.Compact(t, c)
	proxy.Restore()
	for _, p := range []string{"p0", "p1", "p2"} {
		waitAck(t, c, "a", p, 5, schema.ResultOK)
	}
	proxy.Cut()
	writeRev(t, c, 6, schema.Started, schema.Scope{})
	writeRev(t, c, 7, schema.Started, schema.Scope{})
	proxy.Restore()
	for _, p := range []string{"p0", "p1", "p2"} {
		waitAck(t, c, "a", p, 7, schema.ResultOK)
	}

	a.w.Close()
	for i, cnt := range counters {
		<-cnt.done
		got := cnt.snapshot()
		want := map[uint64]int{1: 1, 2: 1, 3: 1, 5: 1, 7: 1}
		if fmt.Sprint(got[schema.Started]) != fmt.Sprint(want) {
			t.Errorf("p%d got Started %v, want %v", i, got[schema.Started], want)
		}
		if fmt.Sprint(got[schema.NotActive]) != fmt.Sprint(map[uint64]int{1: 1}) {
			t.Errorf("p%d got NotActive %v, want once for revision 1", i, got[schema.NotActive])
		}
	}
	t.Logf("stats %+v", a.w.Stats())
}

// A plugin registered late gets its join resync for the newest record its
// wake keys hold, whatever its state, then NotActive; afterwards only
// rounds in its scope reach it. A set-scope round of other agents (7) never
// reaches this agent at all: its join is for the last all-scope round (6).
func TestJoinResyncThenScopedRounds(t *testing.T) {
	m := etcdtest.Start(t)
	c := m.Client(t)
	writeRev(t, c, 6, schema.NotActive, schema.Scope{})
	writeRev(t, c, 7, schema.NotActive, schema.Scope{Agent: "other"})
	a := newAgent(t, c, "a", 5*time.Second)
	ch := a.register(t, "p")[0]
	ev := recv(t, ch, "join resync")
	if ev.ResyncStatus() != schema.Started || ev.Revision() != 6 || !ev.Join() || ev.Reason() != "test round" {
		t.Fatalf("join resync is %s %d join=%v reason=%q", ev.ResyncStatus(), ev.Revision(), ev.Join(), ev.Reason())
	}
	expectNone(t, ch, acceptTimeout/2, "NotActive before the join resync's ack")
	ev.Ack()
	if ev := recv(t, ch, "NotActive after the join ack"); ev.ResyncStatus() != schema.NotActive || ev.Revision() != 6 {
		t.Fatalf("got %s %d", ev.ResyncStatus(), ev.Revision())
	}
	waitAck(t, c, "a", "p", 6, schema.ResultOK)

	// Out of scope: nothing. In scope (this plugin): Started.
	writeRev(t, c, 8, schema.Started, schema.Scope{Agent: "other"})
	writeRev(t, c, 8, schema.NotActive, schema.Scope{Agent: "other"})
	writeRev(t, c, 9, schema.Started, schema.Scope{Agent: "a", Plugin: "q"})
	expectNone(t, ch, 2*acceptTimeout, "rounds out of scope")
	writeRev(t, c, 10, schema.Started, schema.Scope{Agent: "a", Plugin: "p"})
	if ev := recv(t, ch, "round 10"); ev.Revision() != 10 || ev.Join() {
		t.Fatalf("got %d join=%v", ev.Revision(), ev.Join())
	} else {
		ev.Ack()
	}
	waitAck(t, c, "a", "p", 10, schema.ResultOK)

	// A malformed record in its wake shard is skipped and counted; the
	// next good one works.
	if _, err := c.Put(ctxT(t, 5*time.Second), layout.WakeShard(schema.WakeShardOf("a")), `{"revision":"x"}`); err != nil {
		t.Fatal(err)
	}
	writeRev(t, c, 11, schema.Started, schema.Scope{})
	recv(t, ch, "round 11 after garbage").Ack()
	if s := a.w.Stats(); s.Malformed != 1 {
		t.Fatalf("stats %+v, want 1 malformed", s)
	}
}

// When the registry re-creates a lost session, the watcher asks for a rejoin
// round of its agent and writes its acks of the current revision again on
// the new lease; no Started is repeated locally.
func TestRejoinAfterLostSession(t *testing.T) {
	m := etcdtest.Start(t)
	c := m.Client(t)
	proxy := etcdtest.NewProxy(t, m.Endpoint())
	agentClient := etcdtest.Client(t, proxy.Endpoint)
	const ttl = 2 * time.Second
	a := newAgent(t, agentClient, "rj", ttl)
	cnt := autoAck(a, a.register(t, "p")[0])
	writeRev(t, c, 1, schema.Started, schema.Scope{})
	waitAck(t, c, "rj", "p", 1, schema.ResultOK)
	first := a.reg.State()

	proxy.Blackhole()
	etcdtest.WaitFor(t, ttl+5*time.Second, "the agent's ack to expire with its lease", func() bool {
		_, _, ok := getAck(t, c, "rj", "p")
		return !ok
	})
	proxy.HealReset()
	etcdtest.WaitFor(t, 30*time.Second, "a new session", func() bool {
		st := a.reg.State()
		return st.Connected && st.Generation > first.Generation
	})
	waitAck(t, c, "rj", "p", 1, schema.ResultOK)
	if _, l, _ := getAck(t, c, "rj", "p"); clientv3.LeaseID(l) != a.reg.State().Lease {
		t.Fatalf("rewritten ack is on lease %x, want the new %x", l, a.reg.State().Lease)
	}
	var req schema.Request
	etcdtest.WaitFor(t, wait, "a rejoin request", func() bool {
		resp, err := c.Get(ctxT(t, 5*time.Second), layout.Requests(), clientv3.WithPrefix())
		if err != nil || len(resp.Kvs) == 0 {
			return false
		}
		if k := string(resp.Kvs[0].Key); !strings.HasPrefix(k, layout.AgentRequests("rj")) {
			t.Fatalf("rejoin request at %s, want it under the agent's own %s", k, layout.AgentRequests("rj"))
		}
		req, err = schema.DecodeRequest(string(resp.Kvs[0].Key), resp.Kvs[0].Value)
		if err != nil {
			t.Fatal(err)
		}
		return true
	})
	if req.Cause != schema.CauseRejoin || req.Scope != (schema.Scope{Agent: "rj"}) || req.RequestedBy != "rj" ||
		req.Reason != "agent rj re-registered after losing its session" {
		t.Fatalf("rejoin request %+v", req)
	}
	if n := cnt.get(schema.Started, 1); n != 1 {
		t.Fatalf("Started 1 delivered %d times", n)
	}
}

func TestRegisterErrorsAndClose(t *testing.T) {
	m := etcdtest.Start(t)
	c := m.Client(t)
	a := newAgent(t, c, "a", 5*time.Second)
	a.register(t, "p")
	if _, err := a.w.Register("p"); !errors.Is(err, registry.ErrDuplicate) {
		t.Fatalf("duplicate: %v", err)
	}
	if _, err := a.w.Register("a\nb"); !errors.Is(err, schema.ErrInvalidName) {
		t.Fatalf("invalid: %v", err)
	}
	if _, err := a.w.Request(schema.Request{Cause: "bogus"}); err == nil {
		t.Fatal("an invalid request was accepted")
	}
	// An agent asks only for itself.
	for _, scope := range []schema.Scope{{}, {Agent: "b"}, {Agent: "b", Plugin: "p"}} {
		if _, err := a.w.Request(schema.Request{Cause: schema.CauseManual, Scope: scope}); !errors.Is(err, schema.ErrRefused) {
			t.Fatalf("Request of %s by agent a: %v, want ErrRefused", scope, err)
		}
	}
	a.w.Close()
	a.w.Close()
	ch, err := a.w.Register("q")
	if !errors.Is(err, ErrClosed) {
		t.Fatalf("Register after Close: %v", err)
	}
	select { // open and silent: never closed, nothing sent
	case _, ok := <-ch:
		t.Fatalf("channel after Close delivered (open %v)", ok)
	default:
	}
	if s := a.w.Stats(); s.Refused != 2 { // the invalid name, and this one
		t.Fatalf("Stats().Refused = %d, want 2", s.Refused)
	}
	if _, err := a.w.Request(schema.Request{Cause: schema.CauseManual, Scope: schema.Scope{Agent: "a"}}); !errors.Is(err, ErrClosed) {
		t.Fatalf("Request after Close: %v", err)
	}
}

func TestConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		cfg  Config
		want string
	}{
		{Config{AcceptTimeout: -1}, "negative"},
		{Config{RetryMin: time.Second, RetryMax: time.Millisecond}, "RetryMax"},
		{Config{RetryMin: 10 * time.Second}, "RetryMax"},
		{Config{MaxPendingRequests: -1}, "MaxPendingRequests"},
		{Config{AckBatchWindow: 2 * time.Second}, "AckBatchWindow 2s is above 1s"},
	} {
		if err := tc.cfg.Validate(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Validate(%+v) = %v, want %q", tc.cfg, err, tc.want)
		}
	}
	if err := DefaultConfig().Validate(); err != nil {
		t.Fatal(err)
	}
	if err := (Config{}).Validate(); err != nil {
		t.Fatal(err)
	}
}

// Revision N+1 arrives while the first plugin still holds N: that plugin may
// ack N; the plugins not yet reached never get N, only N+1, in order.
func TestNewerRevisionWhileAPluginHoldsTheOlder(t *testing.T) {
	m := etcdtest.Start(t)
	c := m.Client(t)
	a := newAgent(t, c, "agent-a", 5*time.Second)
	chs := a.register(t, "p0", "p1", "p2")
	writeRev(t, c, 1, schema.NotActive, schema.Scope{})
	for k, ch := range chs { // the join resync, in order
		recv(t, ch, fmt.Sprintf("join of p%d", k)).Ack()
	}
	for k, ch := range chs {
		if ev := recv(t, ch, fmt.Sprintf("NotActive of p%d", k)); ev.ResyncStatus() != schema.NotActive {
			t.Fatalf("p%d got %s after its join", k, ev.ResyncStatus())
		}
	}
	writeRev(t, c, 2, schema.Started, schema.Scope{})
	held := recv(t, chs[0], "p0 Started 2")
	if held.Revision() != 2 {
		t.Fatalf("p0 got revision %d", held.Revision())
	}
	writeRev(t, c, 3, schema.Started, schema.Scope{})
	held.Ack() // the held event may still be acked
	waitAck(t, c, "agent-a", "p0", 2, schema.ResultOK)
	for k, ch := range chs {
		ev := recv(t, ch, fmt.Sprintf("p%d Started 3", k))
		if ev.Revision() != 3 || ev.ResyncStatus() != schema.Started {
			t.Fatalf("p%d got %s %d, want Started 3 (never 2 for p1, p2)", k, ev.ResyncStatus(), ev.Revision())
		}
		ev.Ack()
	}
	for _, p := range []string{"p0", "p1", "p2"} {
		waitAck(t, c, "agent-a", p, 3, schema.ResultOK)
	}
}

// A plugin that does not take its join Started within the accept timeout is
// not timed out outside a round: the next plugin proceeds, no timeout ack is
// written for it, and when it reads late it gets exactly one Started for the
// current revision, whose ack is written. As a participant of a Started
// round it gets a timeout ack (the round does not wait for it) and still its
// one late Started.
func TestLateJoinIsParkedNotLost(t *testing.T) {
	m := etcdtest.Start(t)
	c := m.Client(t)
	a := newAgent(t, c, "lj", 5*time.Second)
	ch := a.register(t, "late", "prompt")
	writeRev(t, c, 1, schema.NotActive, schema.Scope{})

	recv(t, ch[1], "prompt's join, after late's accept timeout").Ack()
	waitAck(t, c, "lj", "prompt", 1, schema.ResultOK)
	recv(t, ch[1], "prompt's NotActive 1")
	etcdtest.WaitFor(t, wait, "late's join parked", func() bool { return a.w.Stats().JoinsParked == 1 })
	if _, _, ok := getAck(t, c, "lj", "late"); ok {
		t.Fatal("a timeout ack was written for a parked join resync outside a round")
	}

	ev := recv(t, ch[0], "late's join, read late")
	if ev.Revision() != 1 || !ev.Join() || ev.ResyncStatus() != schema.Started {
		t.Fatalf("late got %s %d join=%v", ev.ResyncStatus(), ev.Revision(), ev.Join())
	}
	ev.Ack()
	waitAck(t, c, "lj", "late", 1, schema.ResultOK)
	if ev := recv(t, ch[0], "late's NotActive 1"); ev.ResyncStatus() != schema.NotActive {
		t.Fatalf("late got %s after its join", ev.ResyncStatus())
	}
	expectNone(t, ch[0], 2*acceptTimeout, "a second event for revision 1")
	if s := a.w.Stats(); s.Started != 2 || s.AcceptTimeouts != 0 {
		t.Fatalf("stats %+v", s)
	}

	// The next round reaches it like any other plugin.
	writeRev(t, c, 2, schema.Started, schema.Scope{})
	for k := range ch {
		if ev := recv(t, ch[k], "round 2"); ev.Revision() != 2 || ev.Join() {
			t.Fatalf("got %d join=%v", ev.Revision(), ev.Join())
		}
	}

	// A new plugin that does not read during a round it is part of: a
	// timeout ack for the round, then its one join when it reads.
	chs := a.register(t, "later")
	writeRev(t, c, 3, schema.Started, schema.Scope{Agent: "lj", Plugin: "later"})
	waitAck(t, c, "lj", "later", 3, schema.ResultTimeout)
	ev = recv(t, chs[0], "later's join, read after its timeout")
	if ev.Revision() != 3 || !ev.Join() {
		t.Fatalf("later got %d join=%v", ev.Revision(), ev.Join())
	}
	ev.Ack()
	waitAck(t, c, "lj", "later", 3, schema.ResultOK)
	expectNone(t, chs[0], 2*acceptTimeout, "a second Started for revision 3")
}

// A parked join follows the record: if a newer revision arrives before the
// plugin reads, it gets that one only.
func TestParkedJoinFollowsTheRecord(t *testing.T) {
	m := etcdtest.Start(t)
	c := m.Client(t)
	a := newAgent(t, c, "pj", 5*time.Second)
	ch := a.register(t, "late")
	writeRev(t, c, 1, schema.Started, schema.Scope{})
	etcdtest.WaitFor(t, wait, "join parked", func() bool { return a.w.Stats().JoinsParked == 1 })
	writeRev(t, c, 2, schema.NotActive, schema.Scope{})
	etcdtest.WaitFor(t, wait, "record 2 seen", func() bool { return a.w.current() == 2 })
	ev := recv(t, ch[0], "join")
	if ev.Revision() != 2 || !ev.Join() {
		t.Fatalf("got %d join=%v, want the join for 2", ev.Revision(), ev.Join())
	}
	ev.Ack()
	waitAck(t, c, "pj", "late", 2, schema.ResultOK)
}

// With Held nothing is delivered until Start.
func TestHeldDeliversAfterStart(t *testing.T) {
	m := etcdtest.Start(t)
	c := m.Client(t)
	reg, err := registry.New(c, registry.DefaultConfig("held"), registry.WithLogger(testLogger(t)))
	if err != nil {
		t.Fatal(err)
	}
	defer reg.Close()
	cfg := DefaultConfig()
	cfg.AcceptTimeout = acceptTimeout
	w, err := New(reg, cfg, WithLogger(testLogger(t)), Held())
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	ch, err := w.Register("p")
	if err != nil {
		t.Fatal(err)
	}
	writeRev(t, c, 1, schema.Started, schema.Scope{})
	etcdtest.WaitFor(t, wait, "record read", func() bool { return w.current() == 1 })
	expectNone(t, ch, 3*acceptTimeout, "an event before Start")
	w.Start()
	if ev := recv(t, ch, "join after Start"); ev.Revision() != 1 || !ev.Join() {
		t.Fatalf("got %d join=%v", ev.Revision(), ev.Join())
	}
}

// A record of a new epoch, or with a lower revision, is a history reset: the
// agent forgets the revisions it handled and takes the new rounds (without a
// second join resync).
func TestHistoryResetTakesNewRounds(t *testing.T) {
	m := etcdtest.Start(t)
	c := m.Client(t)
	a := newAgent(t, c, "hr", 5*time.Second)
	ch := a.register(t, "p")
	writeRevEpoch(t, c, 5, schema.Started, schema.Scope{}, "e1")
	recv(t, ch[0], "join 5").Ack()
	writeRevEpoch(t, c, 5, schema.NotActive, schema.Scope{}, "e1")
	recv(t, ch[0], "NotActive 5")

	// Wiped: the new history starts over at 1 in a new epoch.
	if _, err := c.Delete(ctxT(t, 5*time.Second), layout.Revision()); err != nil {
		t.Fatal(err)
	}
	writeRevEpoch(t, c, 1, schema.NotActive, schema.Scope{}, "e2")
	expectNone(t, ch[0], 3*acceptTimeout, "an event for a NotActive record of the new epoch")
	writeRevEpoch(t, c, 2, schema.Started, schema.Scope{}, "e2")
	if ev := recv(t, ch[0], "round 2 of e2"); ev.Revision() != 2 || ev.Join() || ev.ResyncStatus() != schema.Started {
		t.Fatalf("got %s %d join=%v", ev.ResyncStatus(), ev.Revision(), ev.Join())
	} else {
		ev.Ack()
	}
	waitAck(t, c, "hr", "p", 2, schema.ResultOK)

	// A lower revision without an epoch change (a restored snapshot) is a
	// reset too.
	writeRevEpoch(t, c, 1, schema.Started, schema.Scope{}, "e2")
	if ev := recv(t, ch[0], "round 1 after a restore"); ev.Revision() != 1 || ev.Join() {
		t.Fatalf("got %d join=%v", ev.Revision(), ev.Join())
	}
}

// putRecord writes record (n, st, all scope) to key alone, as no leader
// would: to show which keys a watcher follows.
func putRecord(t *testing.T, c *clientv3.Client, key string, n uint64, st schema.Status) {
	t.Helper()
	now := time.Now().UTC()
	rec := schema.Revision{Revision: n, State: st, Reason: "by hand", Cause: schema.CauseManual, StartedAt: now, Deadline: now.Add(time.Minute), Leader: "test"}
	if st == schema.NotActive {
		rec.FinishedAt = now
	}
	b, err := schema.Encode(rec)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Put(ctxT(t, 5*time.Second), key, string(b)); err != nil {
		t.Fatal(err)
	}
}

// An agent follows its wake shard and its own wake key, not the revision
// record (which a whole fleet would then watch) nor other agents' keys.
func TestWatcherFollowsItsWakeKeysOnly(t *testing.T) {
	m := etcdtest.Start(t)
	c := m.Client(t)
	writeRev(t, c, 1, schema.NotActive, schema.Scope{})
	a := newAgent(t, c, "w", 5*time.Second)
	ch := a.register(t, "p")[0]
	recv(t, ch, "join").Ack()
	recv(t, ch, "NotActive 1")

	putRecord(t, c, layout.Revision(), 2, schema.Started)
	putRecord(t, c, layout.WakeAgent("x"), 2, schema.Started)
	other := 0
	for other == schema.WakeShardOf("w") {
		other++
	}
	putRecord(t, c, layout.WakeShard(other), 2, schema.Started)
	expectNone(t, ch, 2*acceptTimeout, "an event from the revision key, another agent's wake key or another shard")
	if n := a.w.current(); n != 1 {
		t.Fatalf("the watcher's record is %d, want 1", n)
	}

	putRecord(t, c, layout.WakeShard(schema.WakeShardOf("w")), 2, schema.Started)
	if ev := recv(t, ch, "Started 2 from its shard"); ev.Revision() != 2 || ev.ResyncStatus() != schema.Started {
		t.Fatalf("got %s %d, want Started 2", ev.ResyncStatus(), ev.Revision())
	} else {
		ev.Ack()
	}
	writeRev(t, c, 2, schema.NotActive, schema.Scope{})
	recv(t, ch, "NotActive 2")
	// Its own key, written after the shard: the newer record wins.
	writeRev(t, c, 3, schema.Started, schema.Scope{Agent: "w"})
	if ev := recv(t, ch, "Started 3 from its own key"); ev.Revision() != 3 {
		t.Fatalf("got %s %d, want Started 3", ev.ResyncStatus(), ev.Revision())
	}
}

// Legacy mode: a prefix with a revision record and no wake shard (the
// coordinators predate wake keys) makes the watcher follow the revision
// key, as agents did before.
func TestWatcherFollowsTheRevisionOfAnOlderCoordinator(t *testing.T) {
	m := etcdtest.Start(t)
	c := m.Client(t)
	putRecord(t, c, layout.Revision(), 1, schema.NotActive)
	a := newAgent(t, c, "old", 5*time.Second)
	ch := a.register(t, "p")[0]
	if ev := recv(t, ch, "join"); ev.Revision() != 1 {
		t.Fatalf("join for %d, want 1", ev.Revision())
	} else {
		ev.Ack()
	}
	recv(t, ch, "NotActive 1")
	putRecord(t, c, layout.Revision(), 2, schema.Started)
	if ev := recv(t, ch, "Started 2 from the revision key"); ev.Revision() != 2 {
		t.Fatalf("got %s %d, want Started 2", ev.ResyncStatus(), ev.Revision())
	}
}

// relistHook counts the watcher's "re-listing" log lines: a listwatch
// found its history compacted and listed its key again.
type relistHook struct{ n atomic.Int32 }

func (h *relistHook) Levels() []logrus.Level { return logrus.AllLevels }
func (h *relistHook) Fire(e *logrus.Entry) error {
	if strings.Contains(e.Message, "re-listing") {
		h.n.Add(1)
	}
	return nil
}

// A wake key found absent when the watch lists it again (an agent's own
// key goes with its session lease) keeps its last record: the shard's
// older record is no history reset, and the round running is not
// delivered again when a successor writes its record once more (chaos
// seed 20261216: a lost session, a compaction meanwhile, Started 708
// twice).
func TestVanishedWakeKeyIsNoHistoryReset(t *testing.T) {
	m := etcdtest.Start(t)
	c := m.Client(t)
	px := etcdtest.NewProxy(t, m.Endpoint())
	ac, err := etcdtest.NewClient(px.Endpoint)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ac.Close() })
	hook := &relistHook{}
	log := logrus.New()
	log.SetLevel(logrus.DebugLevel)
	log.SetOutput(io.Discard)
	log.AddHook(hook)
	writeRev(t, c, 1, schema.NotActive, schema.Scope{})
	a := newAgentWith(t, ac, "v", 10*time.Second, []Option{WithLogger(log)})
	ch := a.register(t, "p")[0]
	recv(t, ch, "join").Ack()
	recv(t, ch, "NotActive 1")
	writeRev(t, c, 2, schema.Started, schema.Scope{Agent: "v"})
	recv(t, ch, "Started 2").Ack()
	waitAck(t, c, "v", "p", 2, schema.ResultOK)

	// Cut off, its own key gone (as with its lease) and the history
	// compacted: back on etcd, its watches list their keys again.
	px.Cut()
	if _, err := c.Delete(ctxT(t, 5*time.Second), layout.WakeAgent("v")); err != nil {
		t.Fatal(err)
	}
	resp, err := c.Put(ctxT(t, 5*time.Second), "unrelated", "x")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Compact(ctxT(t, 5*time.Second), resp.Header.Revision); err != nil {
		t.Fatal(err)
	}
	px.Restore()
	etcdtest.WaitFor(t, wait, "the wake keys listed again", func() bool { return hook.n.Load() >= 2 })
	a.w.mu.Lock()
	resets := a.w.resets
	a.w.mu.Unlock()
	if n := resets; n != 0 {
		t.Errorf("%d history resets; the own key's absence is none", n)
	}
	writeRev(t, c, 2, schema.Started, schema.Scope{Agent: "v"}) // a successor's rewake
	expectNone(t, ch, 3*acceptTimeout, "round 2 delivered again")
	writeRev(t, c, 2, schema.NotActive, schema.Scope{Agent: "v"})
	if ev := recv(t, ch, "NotActive 2"); ev.Revision() != 2 || ev.ResyncStatus() != schema.NotActive {
		t.Fatalf("got %s %d, want NotActive 2", ev.ResyncStatus(), ev.Revision())
	}
}
