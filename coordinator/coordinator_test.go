package coordinator

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/goleak"

	"github.com/resyncd/resync/internal/testing/etcdtest"
	"github.com/resyncd/resync/internal/testing/handagent"
	"github.com/resyncd/resync/schema"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m, etcdtest.LeakOptions()...) }

func testConfig(id string) Config {
	cfg := DefaultConfig()
	cfg.ID = id
	cfg.SessionTTL = 2 * time.Second
	cfg.RoundDeadline = 30 * time.Second
	cfg.BackoffMin = 200 * time.Millisecond
	cfg.BackoffMax = time.Second
	cfg.OpTimeout = 2 * time.Second
	return cfg
}

type testCoord struct {
	*Coordinator
	c     *clientv3.Client
	hooks *recHooks
}

func newCoord(t *testing.T, endpoints []string, cfg Config, opts ...Option) *testCoord {
	t.Helper()
	c, err := etcdtest.NewClient(endpoints...)
	if err != nil {
		t.Fatal(err)
	}
	h := &recHooks{}
	co, err := New(c, cfg, append([]Option{WithLogger(testLogger(t).WithField("test_coord", cfg.ID)), WithHooks(h)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		co.Close()
		c.Close()
	})
	return &testCoord{Coordinator: co, c: c, hooks: h}
}

// Crash closes the coordinator's client without resigning, then stops it.
func (tc *testCoord) Crash() {
	tc.c.Close()
	tc.Close()
}

type recHooks struct {
	NopHooks
	mu       sync.Mutex
	started  []schema.Round
	resumed  []schema.Round
	finished []schema.Round
	backoffs []time.Duration
	refused  []schema.Request
	accepted int
}

func (h *recHooks) Request(r schema.Request, err error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	switch {
	case errors.Is(err, schema.ErrRefused):
		h.refused = append(h.refused, r)
	case err == nil:
		h.accepted++
	}
}

func (h *recHooks) acceptedCount() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.accepted
}

func (h *recHooks) refusedCount() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.refused)
}

func (h *recHooks) RoundStarted(r schema.Round, resumed bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if resumed {
		h.resumed = append(h.resumed, r)
	} else {
		h.started = append(h.started, r)
	}
}
func (h *recHooks) RoundFinished(r schema.Round) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.finished = append(h.finished, r)
}
func (h *recHooks) Backoff(d time.Duration) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.backoffs = append(h.backoffs, d)
}

func leaderOf(t *testing.T, coords []*testCoord) *testCoord {
	t.Helper()
	var leaders []*testCoord
	for _, c := range coords {
		if c.Status().Leading {
			leaders = append(leaders, c)
		}
	}
	if len(leaders) > 1 {
		t.Fatalf("%d coordinators believe they lead", len(leaders))
	}
	if len(leaders) == 0 {
		return nil
	}
	return leaders[0]
}

func waitLeader(t *testing.T, coords []*testCoord, within time.Duration) *testCoord {
	t.Helper()
	var l *testCoord
	etcdtest.WaitFor(t, within, "a leader", func() bool { l = leaderOf(t, coords); return l != nil })
	return l
}

func readRevision(t *testing.T, c *clientv3.Client) (schema.Revision, bool) {
	t.Helper()
	r, ok, err := etcdtest.ReadRevision(ctxT(t, 5*time.Second), c, layout)
	if err != nil {
		t.Fatal(err)
	}
	return r, ok
}

func readRound(t *testing.T, c *clientv3.Client, n uint64) (RoundView, bool) {
	t.Helper()
	r, ok, err := ReadRoundView(ctxT(t, 5*time.Second), c, layout, n)
	if err != nil {
		t.Fatal(err)
	}
	return r, ok
}

// waitFinished waits for round n's summary.
func waitFinished(t *testing.T, c *clientv3.Client, n uint64, within time.Duration) RoundView {
	t.Helper()
	var r RoundView
	etcdtest.WaitFor(t, within, fmt.Sprintf("round %d to finish", n), func() bool {
		var ok bool
		r, ok = readRound(t, c, n)
		return ok && r.State == schema.NotActive
	})
	return r
}

func waitIdle(t *testing.T, c *clientv3.Client, within time.Duration) schema.Revision {
	t.Helper()
	var r schema.Revision
	etcdtest.WaitFor(t, within, "the revision to be NotActive", func() bool {
		var ok bool
		r, ok = readRevision(t, c)
		return ok && r.State == schema.NotActive
	})
	return r
}

func request(t *testing.T, c *clientv3.Client, cause schema.Cause, scope schema.Scope, reason string) {
	t.Helper()
	b, err := schema.Encode(schema.Request{Reason: reason, Cause: cause, Scope: scope, RequestedBy: "test", RequestedAt: time.Now().UTC()})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Put(ctxT(t, 5*time.Second), layout.OperatorRequest(schema.NewRequestID(time.Now())), string(b)); err != nil {
		t.Fatal(err)
	}
}

// revWrite is one write of the revision key, from etcd's history.
type revWrite struct {
	rec    schema.Revision
	term   int64
	modRev int64
}

// revisionHistory reads every write of the revision key from etcd's history
// and checks the single-writer invariants: revisions step by exactly +1,
// each N is Started before NotActive, and leader terms never go back (no
// write from a deposed leader after its successor wrote).
func revisionHistory(t *testing.T, c *clientv3.Client) []revWrite {
	t.Helper()
	ctx := ctxT(t, 10*time.Second)
	now, err := c.Get(ctx, "history-probe")
	if err != nil {
		t.Fatal(err)
	}
	wch := c.Watch(ctx, layout.Revision(), clientv3.WithRev(1))
	var out []revWrite
	for resp := range wch {
		if err := resp.Err(); err != nil {
			t.Fatalf("history watch: %v", err)
		}
		for _, e := range resp.Events {
			if e.Type != clientv3.EventTypePut {
				continue
			}
			r, err := schema.DecodeRevision(layout.Revision(), e.Kv.Value)
			if err != nil {
				t.Fatal(err)
			}
			_, termStr, _ := strings.Cut(r.Leader, "@")
			term, _ := strconv.ParseInt(termStr, 10, 64)
			out = append(out, revWrite{rec: r, term: term, modRev: e.Kv.ModRevision})
		}
		if resp.Header.Revision >= now.Header.Revision {
			break
		}
	}
	for i := 1; i < len(out); i++ {
		prev, cur := out[i-1], out[i]
		if cur.term < prev.term {
			t.Errorf("write at %d by term %d after a write by term %d: a deposed leader wrote", cur.modRev, cur.term, prev.term)
		}
		switch {
		case cur.rec.Revision == prev.rec.Revision:
			if prev.rec.State == schema.NotActive && cur.rec.State == schema.Started {
				t.Errorf("revision %d restarted after it finished", cur.rec.Revision)
			}
		case cur.rec.Revision == prev.rec.Revision+1:
			if cur.rec.State != schema.Started {
				t.Errorf("revision %d first written as %s", cur.rec.Revision, cur.rec.State)
			}
		default:
			t.Errorf("revision went from %d to %d", prev.rec.Revision, cur.rec.Revision)
		}
	}
	return out
}

func TestConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		cfg  Config
		want string
	}{
		{Config{SessionTTL: 100 * time.Millisecond}, "below the 1s minimum"},
		{Config{BackoffMin: time.Minute, BackoffMax: time.Second}, "BackoffMax"},
		{Config{ID: "a/b"}, `coordinator id "a/b" has '/'`},
		{Config{RoundDeadline: time.Millisecond, CoalesceWindow: time.Second}, "RoundDeadline"},
		{Config{Prefix: "relative/"}, "must start with"},
		// Cross-field rules hold against the defaults of the other field.
		{Config{BackoffMin: 2 * time.Minute}, "BackoffMax 1m0s is below BackoffMin 2m0s"},
		{Config{CoalesceWindow: 3 * time.Minute}, "RoundDeadline 2m0s is below CoalesceWindow 3m0s"},
	} {
		if err := tc.cfg.Validate(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Validate(%+v) = %v, want %q", tc.cfg, err, tc.want)
		}
	}
	if err := (Config{}).Validate(); err != nil {
		t.Errorf("the zero Config (all defaults) is invalid: %v", err)
	}
}

func TestFirstLeaderStartsInitialRound(t *testing.T) {
	m := etcdtest.Start(t)
	obs := m.Client(t)
	a := handagent.Start(t, []string{m.Endpoint()}, "a1", []string{"p1", "p2"}, nil)
	co := newCoord(t, []string{m.Endpoint()}, testConfig("c1"))
	r := waitFinished(t, obs, 1, 15*time.Second)
	if r.Cause != schema.CauseInitial || r.Counts.Acked != 2 || r.Counts.Participants != 2 || !strings.HasPrefix(r.FinishedBy, "c1@") {
		t.Fatalf("round 1 = %+v", r)
	}
	rev := waitIdle(t, obs, 5*time.Second)
	if rev.Revision != 1 || rev.FinishedAt.IsZero() {
		t.Fatalf("revision after round 1: %+v", rev)
	}
	if a.StartedCount("p1", 1) != 1 || a.StartedCount("p2", 1) != 1 {
		t.Fatal("plugins were not asked exactly once")
	}
	if st := co.Status(); !st.Leading || st.Revision == nil || st.Revision.Revision != 1 {
		t.Fatalf("status %+v", st)
	}
	revisionHistory(t, obs)
}

func TestExactlyOneLeaderAndFailover(t *testing.T) {
	m := etcdtest.Start(t)
	obs := m.Client(t)
	eps := []string{m.Endpoint()}
	var coords []*testCoord
	for i := 0; i < 3; i++ {
		coords = append(coords, newCoord(t, eps, testConfig(fmt.Sprintf("c%d", i))))
	}
	first := waitLeader(t, coords, 10*time.Second)
	waitIdle(t, obs, 10*time.Second)
	// Leadership is stable: still exactly one leader, the same one.
	for i := 0; i < 20; i++ {
		if l := leaderOf(t, coords); l != first {
			t.Fatalf("leadership moved without a fault")
		}
	}
	id, _, err := Leader(ctxT(t, 5*time.Second), obs, layout)
	if err != nil || id != first.ID() {
		t.Fatalf("Leader() = %q, %v; want %q", id, err, first.ID())
	}

	// Crash: the client goes away without resigning.
	rest := without(coords, first)
	crashed := time.Now()
	first.Crash()
	second := waitLeader(t, rest, testConfig("").SessionTTL+time.Second)
	t.Logf("crash failover took %v", time.Since(crashed).Round(time.Millisecond))

	// Graceful: Close resigns.
	rest = without(rest, second)
	closed := time.Now()
	second.Close()
	waitLeader(t, rest, time.Second)
	t.Logf("graceful handover took %v", time.Since(closed).Round(time.Millisecond))
	request(t, obs, schema.CauseManual, schema.Scope{}, "after failovers")
	waitFinished(t, obs, 2, 10*time.Second)
	revisionHistory(t, obs)
}

func without(cs []*testCoord, x *testCoord) []*testCoord {
	var out []*testCoord
	for _, c := range cs {
		if c != x {
			out = append(out, c)
		}
	}
	return out
}

func TestLeaderKeyDeletedByHandDeposes(t *testing.T) {
	m := etcdtest.Start(t)
	obs := m.Client(t)
	eps := []string{m.Endpoint()}
	coords := []*testCoord{newCoord(t, eps, testConfig("c0")), newCoord(t, eps, testConfig("c1"))}
	first := waitLeader(t, coords, 10*time.Second)
	waitIdle(t, obs, 10*time.Second)
	term := first.Status().Term
	resp, err := obs.Get(ctxT(t, 5*time.Second), layout.Election()+"/", clientv3.WithFirstCreate()...)
	if err != nil || len(resp.Kvs) != 1 || resp.Kvs[0].CreateRevision != term {
		t.Fatalf("leader key: %v %v", resp, err)
	}
	if _, err := obs.Delete(ctxT(t, 5*time.Second), string(resp.Kvs[0].Key)); err != nil {
		t.Fatal(err)
	}
	// The deposed leader notices the deletion while the standby (which
	// watched the same key) is elected: wait until exactly one leads.
	etcdtest.WaitFor(t, 10*time.Second, "one leader in a new term", func() bool {
		var leaders []*testCoord
		for _, c := range coords {
			if c.Status().Leading {
				leaders = append(leaders, c)
			}
		}
		return len(leaders) == 1 && leaders[0].Status().Term > term
	})
	request(t, obs, schema.CauseManual, schema.Scope{}, "after deposition")
	waitFinished(t, obs, 2, 10*time.Second)
	revisionHistory(t, obs)
}

func TestFencedWriteRefusedAfterDeposition(t *testing.T) {
	m := etcdtest.Start(t)
	obs := m.Client(t)
	co := newCoord(t, []string{m.Endpoint()}, testConfig("c0"))
	waitLeader(t, []*testCoord{co}, 10*time.Second)
	waitIdle(t, obs, 10*time.Second)
	// A leader object that holds a stale term: the write must be refused
	// and reported as deposition, and nothing written.
	before, _ := readRevision(t, obs)
	ended, end := context.WithCancelCause(context.Background())
	defer end(nil)
	l := &leader{co: co.Coordinator, cfg: co.cfg, layout: layout, c: obs, key: layout.Election() + "/stale", term: 1,
		log: testLogger(t), ctx: context.Background(), ended: ended, end: end}
	err := l.fencedTxn([]clientv3.Op{clientv3.OpPut(layout.Revision(), "forged")})
	if !errors.Is(err, ErrDeposed) {
		t.Fatalf("fenced write with a stale term: %v, want ErrDeposed", err)
	}
	after, _ := readRevision(t, obs)
	if after != before {
		t.Fatalf("the refused write changed the revision: %+v -> %+v", before, after)
	}
}

func TestPartitionedLeaderIsFenced(t *testing.T) {
	m := etcdtest.Start(t)
	obs := m.Client(t)
	proxy := etcdtest.NewProxy(t, m.Endpoint())
	old := newCoord(t, []string{proxy.Endpoint}, testConfig("old"))
	waitLeader(t, []*testCoord{old}, 10*time.Second)
	waitIdle(t, obs, 10*time.Second)
	// A round is running on the old leader when the partition starts.
	a := handagent.Start(t, []string{m.Endpoint()}, "a1", []string{"p"}, map[string]string{"p": "hold"})
	request(t, obs, schema.CauseManual, schema.Scope{}, "before partition")
	etcdtest.WaitFor(t, 10*time.Second, "round 2 to start", func() bool { return a.StartedCount("p", 2) == 1 })
	proxy.Blackhole()
	successor := newCoord(t, []string{m.Endpoint()}, testConfig("new"))
	waitLeader(t, []*testCoord{successor}, 3*testConfig("").SessionTTL+5*time.Second)
	a.Release() // the participant acks; the successor completes round 2
	waitFinished(t, obs, 2, 10*time.Second)
	etcdtest.WaitFor(t, 15*time.Second, "the partitioned leader to step down", func() bool { return !old.Status().Leading })
	proxy.HealReset()
	request(t, obs, schema.CauseManual, schema.Scope{}, "after heal")
	waitFinished(t, obs, 3, 15*time.Second)
	hist := revisionHistory(t, obs)
	for _, w := range hist {
		if strings.HasPrefix(w.rec.Leader, "old@") && w.rec.Revision > 2 {
			t.Errorf("the partitioned leader wrote revision %d", w.rec.Revision)
		}
	}
	if a.StartedCount("p", 2) != 1 {
		t.Errorf("participant asked %d times for round 2", a.StartedCount("p", 2))
	}
}
