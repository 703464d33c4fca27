package integration

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/resyncd/resync"
	"github.com/resyncd/resync/coordinator"
	"github.com/resyncd/resync/internal/testing/etcdtest"
	"github.com/resyncd/resync/schema"
)

// simpleAgent is a resync.Plugin whose plugins ack every Started at once,
// except those whose hold channel is set: they ack when it is closed.
type simpleAgent struct {
	p  *resync.Plugin
	wg sync.WaitGroup

	mu      sync.Mutex
	started map[string][]uint64
}

func startSimpleAgent(t *testing.T, c *clientv3.Client, log logrus.FieldLogger, name string, plugins []string, hold map[string]chan struct{}, onStarted func(plugin string, ev *resync.Event) bool) *simpleAgent {
	t.Helper()
	return startSimpleAgentTTL(t, c, log, name, plugins, hold, onStarted, 2*time.Second)
}

func startSimpleAgentTTL(t *testing.T, c *clientv3.Client, log logrus.FieldLogger, name string, plugins []string, hold map[string]chan struct{}, onStarted func(plugin string, ev *resync.Event) bool, ttl time.Duration) *simpleAgent {
	t.Helper()
	p, err := resync.New(resync.Deps{Log: log, Client: c}, resync.Config{Agent: name, TTL: ttl, AcceptTimeout: time.Second, AckTimeout: 30 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	a := &simpleAgent{p: p, started: map[string][]uint64{}}
	for _, pl := range plugins {
		ch := p.Register(pl).StatusChan()
		a.wg.Add(1)
		go func() {
			defer a.wg.Done()
			for {
				var sev resync.StatusEvent
				select {
				case sev = <-ch:
				case <-p.Done(): // status channels are never closed
					return
				}
				ev := sev.(*resync.Event)
				if ev.ResyncStatus() != resync.Started {
					continue
				}
				a.mu.Lock()
				a.started[pl] = append(a.started[pl], ev.Revision())
				a.mu.Unlock()
				if onStarted != nil && onStarted(pl, ev) {
					continue
				}
				if h := hold[pl]; h != nil {
					<-h
				}
				ev.Ack()
			}
		}()
	}
	t.Cleanup(a.close)
	return a
}

// waitRegistered waits until n registrations are in etcd: Register does not
// wait for etcd, and a test that expects its agents in the first leader's
// initial round must not start the coordinator before they are written.
func waitRegistered(t *testing.T, obs *clientv3.Client, n int) {
	t.Helper()
	etcdtest.WaitFor(t, 20*time.Second, fmt.Sprintf("%d registrations in etcd", n), func() bool {
		resp, err := obs.Get(ctxT(t, 5*time.Second), layout.Registrations(), clientv3.WithPrefix(), clientv3.WithCountOnly())
		return err == nil && resp.Count == int64(n)
	})
}

func (a *simpleAgent) close() {
	a.p.Close()
	a.wg.Wait()
}

func (a *simpleAgent) got(plugin string, n uint64) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, r := range a.started[plugin] {
		if r == n {
			return true
		}
	}
	return false
}

func startCoordinator(t *testing.T, c *clientv3.Client, log logrus.FieldLogger, id string) *coordinator.Coordinator {
	t.Helper()
	co, err := coordinator.New(c, coordinator.Config{ID: id, SessionTTL: 2 * time.Second, RoundDeadline: 30 * time.Second,
		BackoffMin: 100 * time.Millisecond, BackoffMax: time.Second, OpTimeout: 2 * time.Second}, coordinator.WithLogger(log))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { co.Close() })
	return co
}

func readRound(t *testing.T, c *clientv3.Client, n uint64) (coordinator.RoundView, bool) {
	t.Helper()
	r, ok, _ := coordinator.ReadRoundView(ctxT(t, 5*time.Second), c, layout, n)
	return r, ok
}

func readRevision(t *testing.T, c *clientv3.Client) (schema.Revision, bool) {
	t.Helper()
	r, ok, _ := etcdtest.ReadRevision(ctxT(t, 5*time.Second), c, layout)
	return r, ok
}

// waitCompleted waits for a completed round after revision `after` whose
// acked list has want entries, and returns it.
func waitCompleted(t *testing.T, c *clientv3.Client, after uint64, within time.Duration, what string, ok func(coordinator.RoundView) bool) coordinator.RoundView {
	t.Helper()
	var got coordinator.RoundView
	etcdtest.WaitFor(t, within, what, func() bool {
		rev, found := readRevision(t, c)
		if !found {
			return false
		}
		for n := after + 1; n <= rev.Revision; n++ {
			if r, found := readRound(t, c, n); found && r.State == schema.NotActive && ok(r) {
				got = r
				return true
			}
		}
		return false
	})
	return got
}

// etcd unreachable when a Plugin and a Coordinator start: neither fails,
// both connect once etcd is reachable, and the round runs.
func TestUnreachableEtcdAtStartup(t *testing.T) {
	m := etcdtest.Start(t)
	obs := m.Client(t)
	log := testLogger(t)
	agentProxy, coordProxy := etcdtest.NewProxy(t, m.Endpoint()), etcdtest.NewProxy(t, m.Endpoint())
	agentProxy.Cut()
	coordProxy.Cut()
	ac, cc := etcdtest.Client(t, agentProxy.Endpoint), etcdtest.Client(t, coordProxy.Endpoint)
	a := startSimpleAgent(t, ac, log.WithField("agent", "a1"), "a1", []string{"p1", "p2"}, nil, nil)
	co := startCoordinator(t, cc, log, "c0")
	etcdtest.WaitFor(t, 20*time.Second, "the coordinator to report that etcd is unreachable", func() bool { return co.Status().LastError != "" })
	if st := co.Status(); st.Leading {
		t.Fatalf("leading without etcd: %+v", st)
	}
	agentProxy.Restore()
	coordProxy.Restore()
	// Whichever connects first, the plugins get their join resync of the
	// current revision and their acks are written...
	etcdtest.WaitFor(t, 30*time.Second, "the plugins' join resync acks in etcd", func() bool {
		resp, err := obs.Get(ctxT(t, 5*time.Second), layout.AgentAcks("a1"), clientv3.WithPrefix())
		return err == nil && len(resp.Kvs) == 2
	})
	// ...and a round asked for now includes and reaches them.
	if _, err := putRequest(ctxT(t, 5*time.Second), obs, schema.CauseManual, schema.Scope{}, "after start-up"); err != nil {
		t.Fatal(err)
	}
	r := waitCompleted(t, obs, 0, 30*time.Second, "a round acked by both plugins", func(r coordinator.RoundView) bool { return r.Counts.Acked == 2 })
	if !a.got("p1", r.Revision) || !a.got("p2", r.Revision) {
		t.Fatalf("round %d completed but the plugins did not get it: %v", r.Revision, a.started)
	}
}

// All of etcd goes away mid-round and comes back: registrations and the acks
// already given are not lost, and the round completes after.
func TestEtcdGoneMidRound(t *testing.T) {
	cl := etcdtest.StartCluster(t, 3)
	eps := cl.Endpoints()
	obs := etcdtest.Client(t, eps...)
	log := testLogger(t)
	hold := make(chan struct{})
	var agents []*simpleAgent
	for i := range 3 {
		name := fmt.Sprintf("agent-%d", i)
		var h map[string]chan struct{}
		if i == 0 {
			h = map[string]chan struct{}{"p2": hold}
		}
		// A 10 s lease: the test is about registrations and acks surviving
		// etcd's absence, so their leases must outlive the restart of all
		// three members plus the clients' reconnect backoff; with 2 s a
		// slow -race run once expired them and the round saw departures.
		agents = append(agents, startSimpleAgentTTL(t, etcdtest.Client(t, eps...), log.WithField("agent", name), name, []string{"p1", "p2"}, h, nil, 10*time.Second))
	}
	waitRegistered(t, obs, 6)
	startCoordinator(t, etcdtest.Client(t, eps...), log, "c0")
	// Round 1 (the initial one) waits for the held plugin: wait until
	// every other plugin's ack for it is in etcd.
	etcdtest.WaitFor(t, 20*time.Second, "round 1 to reach the held plugin and the others to ack", func() bool {
		if !agents[0].got("p2", 1) {
			return false
		}
		resp, err := obs.Get(ctxT(t, 5*time.Second), layout.Acks(), clientv3.WithPrefix())
		return err == nil && len(resp.Kvs) == 5
	})
	if r, _ := readRevision(t, obs); r.Revision != 1 || r.State != schema.Started {
		t.Fatalf("revision %+v, want round 1 running", r)
	}
	for _, m := range cl.Members {
		m.Stop()
	}
	var wg sync.WaitGroup
	for _, m := range cl.Members {
		wg.Add(1)
		go func() {
			defer wg.Done()
			m.Restart()
		}()
	}
	wg.Wait()
	close(hold)
	r := waitCompleted(t, obs, 0, 30*time.Second, "round 1 to complete", func(r coordinator.RoundView) bool { return r.Revision == 1 })
	if r.Counts.Participants != 6 || r.Counts.Acked != 6 {
		t.Fatalf("round 1 after etcd came back: %+v (acked %v, departed %v, timed out %v), want all 6 acked", r.Counts, r.Acked, r.Departed, r.TimedOut)
	}
}

// Oversized texts are cut to their limit (schema.MaxAckErrorLen,
// schema.MaxReasonLen; plus a marker) wherever they are stored: a plugin's
// AckError text, a ReportError reason; a raw
// request with an oversized reason is rejected and deleted, its key logged.
func TestOversizedReasonsAreTruncated(t *testing.T) {
	m := etcdtest.Start(t)
	obs := m.Client(t)
	sink := &logSink{limit: 16 << 20}
	log := newSinkLogger(sink, logrus.InfoLevel)
	huge := strings.Repeat("é", 10000) // 20 KB of 2-byte runes
	var once sync.Once
	var a *simpleAgent
	a = startSimpleAgent(t, m.Client(t), log, "a1", []string{"p1"}, nil, func(plugin string, ev *resync.Event) bool {
		failed := false
		once.Do(func() {
			ev.AckError(errors.New(huge))
			a.p.ReportError(plugin, errors.New(huge))
			failed = true
		})
		return failed
	})
	waitRegistered(t, obs, 1)
	startCoordinator(t, m.Client(t), log, "c0")
	limit := schema.MaxReasonLen + len(schema.CutMarker)
	r := waitCompleted(t, obs, 0, 20*time.Second, "the failed round", func(r coordinator.RoundView) bool { return r.Counts.Failed == 1 })
	if e, max := r.Errors["a1/p1"], schema.MaxAckErrorLen+len(schema.CutMarker); len(e) > max || !strings.HasSuffix(e, schema.CutMarker) {
		t.Errorf("failed round's error text is %d bytes (limit %d): %.40q...", len(e), max, e)
	}
	retry := waitCompleted(t, obs, r.Revision, 20*time.Second, "the retry round", func(r coordinator.RoundView) bool { return r.Cause == schema.CauseError })
	if len(retry.Reason) > limit+64 || !strings.Contains(retry.Reason, "[truncated]") {
		t.Errorf("retry round reason is %d bytes: %.60q", len(retry.Reason), retry.Reason)
	}
	// A raw request whose reason is over the limit is malformed: deleted,
	// its key logged, no round.
	b := fmt.Sprintf(`{"reason":%q,"cause":"manual","scope":{},"requested_by":"x","requested_at":"2026-11-25T12:00:00Z"}`, huge)
	key := layout.OperatorRequest("oversized-request")
	if _, err := obs.Put(ctxT(t, 5*time.Second), key, b); err != nil {
		t.Fatal(err)
	}
	etcdtest.WaitFor(t, 10*time.Second, "the oversized request to be deleted and logged", func() bool {
		resp, err := obs.Get(ctxT(t, 5*time.Second), key)
		return err == nil && len(resp.Kvs) == 0 && sink.contains(key)
	})
}

// Garbage under every key family is skipped with its key logged, and the
// rest keeps working: a round after the garbage completes with every plugin
// acked.
func TestGarbageRecordsAreSkippedAndLogged(t *testing.T) {
	m := etcdtest.Start(t)
	obs := m.Client(t)
	sink := &logSink{limit: 16 << 20}
	log := newSinkLogger(sink, logrus.InfoLevel)
	a := startSimpleAgent(t, m.Client(t), log, "a1", []string{"p1", "p2"}, nil, nil)
	waitRegistered(t, obs, 2)
	startCoordinator(t, m.Client(t), log, "c0")
	first := waitCompleted(t, obs, 0, 20*time.Second, "the initial round", func(r coordinator.RoundView) bool { return r.Counts.Acked == 2 })
	garbage := map[string]string{
		layout.Registration("ghost", "p"):           "not json {",
		layout.Ack("ghost", "p"):                    `{"revision":0}`,
		layout.AgentRequest("a", "garbage-request"): `{"unknown":true}`,
		// What the agent follows (the leader reads the revision
		// record only when it takes over: coordinator's recovery tests).
		layout.WakeShard(schema.WakeShardOf("a1")): "\xff\xfe",
	}
	for k, v := range garbage {
		if _, err := obs.Put(ctxT(t, 5*time.Second), k, v); err != nil {
			t.Fatal(err)
		}
	}
	etcdtest.WaitFor(t, 10*time.Second, "every garbage key to be logged", func() bool {
		for k := range garbage {
			if k != layout.Ack("ghost", "p") && !sink.contains(k) { // acks are logged when the leader reads them
				return false
			}
		}
		return true
	})
	if _, err := putRequest(ctxT(t, 5*time.Second), obs, schema.CauseManual, schema.Scope{}, "after garbage"); err != nil {
		t.Fatal(err)
	}
	r := waitCompleted(t, obs, first.Revision, 20*time.Second, "a round after the garbage", func(r coordinator.RoundView) bool { return r.Counts.Acked == 2 })
	if r.Revision != first.Revision+1 || !a.got("p1", r.Revision) || !a.got("p2", r.Revision) {
		t.Fatalf("round after the garbage: %d (want %d), plugins got %v", r.Revision, first.Revision+1, a.started)
	}
}

// Oversized values hand-written under registrations/ and acks/ (valid JSON,
// over the family's limit) are rejected unread by the coordinator's
// decoders and logged with their key and the limit; the oversized
// registration is no participant, and rounds go on.
func TestOversizedRecordsAreRejectedWithTheirKey(t *testing.T) {
	m := etcdtest.Start(t)
	obs := m.Client(t)
	sink := &logSink{limit: 16 << 20}
	log := newSinkLogger(sink, logrus.InfoLevel)
	startSimpleAgent(t, m.Client(t), log, "a1", []string{"p1"}, nil, nil)
	waitRegistered(t, obs, 1)
	startCoordinator(t, m.Client(t), log, "c0")
	first := waitCompleted(t, obs, 0, 20*time.Second, "the initial round", func(r coordinator.RoundView) bool { return r.Counts.Acked == 1 })
	pad := strings.Repeat("x", 1<<20)
	huge := map[string]string{
		layout.Registration("ghost", "p"): fmt.Sprintf(`{"agent":"ghost","plugin":"p","order":0,"registered_at":"2026-11-25T12:00:00Z","pad":%q}`, pad),
		layout.Ack("a1", "p1"):            fmt.Sprintf(`{"revision":%d,"result":"ok","error":%q}`, first.Revision, pad),
	}
	for k, v := range huge {
		if _, err := obs.Put(ctxT(t, 5*time.Second), k, v); err != nil {
			t.Fatal(err)
		}
	}
	etcdtest.WaitFor(t, 10*time.Second, "the oversized registration to be logged with its key", func() bool {
		return sink.contains(layout.Registration("ghost", "p")) && sink.contains("the limit is")
	})
	if _, err := putRequest(ctxT(t, 5*time.Second), obs, schema.CauseManual, schema.Scope{}, "after oversized values"); err != nil {
		t.Fatal(err)
	}
	r := waitCompleted(t, obs, first.Revision, 20*time.Second, "a round after the oversized values", func(r coordinator.RoundView) bool { return r.Cause == schema.CauseManual })
	if r.Counts.Participants != 1 || r.Counts.Acked != 1 {
		t.Fatalf("round after oversized values: %+v, want a1/p1 alone, acked", r.Counts)
	}
	if sink.contains(pad[:4096]) {
		t.Fatal("an oversized value was logged in full")
	}
}
