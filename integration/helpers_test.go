package integration

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/goleak"

	"github.com/resyncd/resync/coordinator"
	"github.com/resyncd/resync/internal/testing/etcdtest"
	"github.com/resyncd/resync/schema"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m, etcdtest.LeakOptions()...) }

var layout = schema.MustLayout(schema.DefaultPrefix)

func ctxT(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// logSink keeps a run's logs in memory (bounded) so that a chaos run with
// thousands of lines stays quiet unless it fails; then they are written to
// a file whose path is printed.
type logSink struct {
	mu    sync.Mutex
	buf   bytes.Buffer
	limit int
	lost  int
}

func (s *logSink) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.buf.Len()+len(p) > s.limit {
		s.lost++
		return len(p), nil
	}
	return s.buf.Write(p)
}

func (s *logSink) contains(sub string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return bytes.Contains(s.buf.Bytes(), []byte(sub))
}

// dump writes the logs to a file in the system temp dir and returns its path.
func (s *logSink) dump(name string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	path := filepath.Join(os.TempDir(), name)
	data := s.buf.Bytes()
	if s.lost > 0 {
		data = append(data, fmt.Sprintf("... %d log lines dropped (buffer full)\n", s.lost)...)
	}
	if err := os.WriteFile(path, data, 0o644); err != nil {
		return "(could not write logs: " + err.Error() + ")"
	}
	return path
}

func newSinkLogger(s *logSink, level logrus.Level) *logrus.Logger {
	l := logrus.New()
	l.SetOutput(s)
	l.SetLevel(level)
	l.SetFormatter(&logrus.TextFormatter{DisableColors: true, TimestampFormat: "15:04:05.000", FullTimestamp: true})
	return l
}

func testLogger(t testing.TB) *logrus.Logger { return etcdtest.Logger(t, "info") }

// observer watches the whole prefix from the moment it starts and records
// every write of the revision key, of rounds/ and of the election keys into a
// History. It re-watches from its last revision after any break; if the
// history it needs was compacted that is a harness error (the chaos schedule
// only compacts up to Last()).
type observer struct {
	c      *clientv3.Client
	h      *History
	cancel context.CancelFunc
	done   chan struct{}
	probed chan struct{} // closed when probeRevisions returns
	last   atomic.Int64
	live   map[string]int64 // election key -> create revision (observer goroutine only)
	// agents are the per-agent round records as they stand (observer
	// goroutine only): round -> agent -> record.
	agents map[uint64]map[string]schema.RoundAgent
	// cur are the revision, owner, registration, request and election keys
	// as they stand (observer goroutine only): what a restore is compared
	// with.
	cur map[string]*mvccpb.KeyValue
	// resetOK: the next compaction the watch meets is an etcd restore the
	// test made (etcdtest.Cluster.Restore marks the restored revision
	// compacted), not a hole in the history.
	resetOK atomic.Bool
	// log, if set, hears why the watch restarted; rewatches counts the
	// watches the stall watchdog restarted (stallAfter without an event
	// while etcd's revision was past Last()).
	log       logrus.FieldLogger
	rewatches atomic.Int64
	heard     atomic.Int64 // unix nanos of the last watch response
}

// stallAfter is how long the observer's watch may stay silent while etcd
// has moved past what it recorded before the watchdog watches again from
// Last()+1: a watch resumed on a member that restarted, or rejoined
// after a restore, was seen to deliver nothing for over a minute while
// the cluster went on (seed 20261210). Re-watching loses nothing.
const stallAfter = 5 * time.Second

func startObserver(t testing.TB, h *History, endpoints ...string) *observer {
	t.Helper()
	return startObserverLog(t, h, nil, endpoints...)
}

// startObserverLog is startObserver with a log for its watch restarts.
func startObserverLog(t testing.TB, h *History, log logrus.FieldLogger, endpoints ...string) *observer {
	t.Helper()
	c, err := etcdtest.NewClient(endpoints...)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := c.Get(ctxT(t, 10*time.Second), "observer-probe")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	o := &observer{c: c, h: h, log: log, cancel: cancel, done: make(chan struct{}), probed: make(chan struct{}), live: map[string]int64{},
		agents: map[uint64]map[string]schema.RoundAgent{}, cur: map[string]*mvccpb.KeyValue{}}
	o.last.Store(resp.Header.Revision)
	go o.run(ctx)
	go o.probeRevisions(ctx)
	t.Cleanup(o.stop)
	return o
}

// Last is the last etcd revision the observer recorded.
func (o *observer) Last() int64 { return o.last.Load() }

// waitFor waits until the observer has recorded revision rev.
func (o *observer) waitFor(t testing.TB, rev int64, within time.Duration) {
	t.Helper()
	etcdtest.WaitFor(t, within, fmt.Sprintf("the observer to reach revision %d", rev), func() bool { return o.Last() >= rev })
}

func (o *observer) stop() {
	o.cancel()
	<-o.done
	<-o.probed
	o.c.Close()
}

// probeRevisions reads etcd's revision every revProbeEvery and records it
// with the times of the read (History.RecordRevTime): the clock against
// which the owner writes are dated, whatever the watch's lag.
func (o *observer) probeRevisions(ctx context.Context) {
	defer close(o.probed)
	tick := time.NewTicker(revProbeEvery)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		sent := time.Now()
		gctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		resp, err := o.c.Get(gctx, "observer-probe")
		cancel()
		if err == nil {
			o.h.RecordRevTime(RevTime{Rev: resp.Header.Revision, Sent: sent, Recv: time.Now()})
		}
	}
}

// revProbeEvery is probeRevisions' pace.
const revProbeEvery = 50 * time.Millisecond

func (o *observer) run(ctx context.Context) {
	defer close(o.done)
	for ctx.Err() == nil {
		wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
		wch := o.c.Watch(wctx, layout.Prefix(), clientv3.WithPrefix(), clientv3.WithRev(o.Last()+1), clientv3.WithPrevKV())
		o.heard.Store(time.Now().UnixNano())
		stopDog := o.watchdog(wctx, cancel)
		compacted := false
		for resp := range wch {
			o.heard.Store(time.Now().UnixNano())
			if resp.CompactRevision != 0 && o.resetOK.Load() {
				if err := o.reset(ctx); err != nil {
					break // read again after the pause
				}
				o.resetOK.Store(false)
				break
			}
			if resp.CompactRevision != 0 {
				o.h.HarnessError("observer: history compacted at %d while the observer was at %d", resp.CompactRevision, o.Last())
				compacted = true
				break
			}
			if resp.Err() != nil {
				o.logf("observer: watch ended at %d: %v; watching again", o.Last(), resp.Err())
				break
			}
			for _, e := range resp.Events {
				o.observe(e)
				o.last.Store(e.Kv.ModRevision)
			}
		}
		stopDog()
		cancel()
		for range wch {
		}
		if compacted {
			return
		}
		t := time.NewTimer(50 * time.Millisecond)
		select {
		case <-ctx.Done():
		case <-t.C:
		}
		t.Stop()
	}
}

// watchdog cancels the watch (stop) when it has been silent for
// stallAfter while etcd's revision is past Last(); the run loop then
// watches again from Last()+1. The returned func stops it.
func (o *observer) watchdog(ctx context.Context, stop context.CancelFunc) func() {
	done := make(chan struct{})
	exited := make(chan struct{})
	go func() {
		defer close(exited)
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		for {
			select {
			case <-done:
				return
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			if time.Since(time.Unix(0, o.heard.Load())) < stallAfter {
				continue
			}
			gctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			resp, err := o.c.Get(gctx, "observer-probe")
			cancel()
			if err != nil || resp.Header.Revision <= o.Last() {
				continue
			}
			o.rewatches.Add(1)
			o.logf("observer: watch silent for %v while etcd is at %d and the observer at %d; watching again", stallAfter, resp.Header.Revision, o.Last())
			stop()
			return
		}
	}()
	return func() {
		close(done)
		<-exited
	}
}

func (o *observer) logf(format string, a ...any) {
	if o.log != nil {
		o.log.Warnf(format, a...)
	}
}

// reset records what an etcd restore changed, as writes at the restored
// cluster's revision: the owner, registration, request and election keys
// that are back (puts; election keys with their old create revision) or
// gone (deletions). Acks are not recorded (nobody wrote them), and the
// revision record must be unchanged: the test restores only while no
// coordinator runs, so that no round is rewritten.
func (o *observer) reset(ctx context.Context) error {
	gctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	resp, err := o.c.Get(gctx, layout.Prefix(), clientv3.WithPrefix())
	cancel()
	if err != nil {
		return err
	}
	rev := resp.Header.Revision
	now := map[string]*mvccpb.KeyValue{}
	for _, kv := range resp.Kvs {
		if o.tracked(string(kv.Key)) {
			now[string(kv.Key)] = kv
		}
	}
	for key, old := range o.cur {
		if _, ok := now[key]; !ok {
			o.observe(&clientv3.Event{Type: clientv3.EventTypeDelete, Kv: &mvccpb.KeyValue{Key: []byte(key), ModRevision: rev}, PrevKv: old})
		}
	}
	for key, kv := range now {
		old, ok := o.cur[key]
		if ok && old.ModRevision == kv.ModRevision {
			continue
		}
		if key == layout.Revision() {
			o.h.HarnessError("observer: the restore changed the revision record (the test restores only while no coordinator runs)")
		}
		if _, ok := o.live[key]; ok {
			delete(o.live, key) // an election key back from the snapshot: seen anew
		}
		o.h.ReviveElection(key, kv.CreateRevision)
		re := &mvccpb.KeyValue{Key: kv.Key, Value: kv.Value, Lease: kv.Lease, CreateRevision: kv.CreateRevision, ModRevision: rev, Version: kv.Version}
		o.observe(&clientv3.Event{Type: clientv3.EventTypePut, Kv: re})
	}
	o.last.Store(rev)
	return nil
}

// tracked reports whether key is one of those reset compares.
func (o *observer) tracked(key string) bool {
	k, err := layout.Parse(key)
	if err != nil {
		return false
	}
	switch k.Kind {
	case schema.KindRevision, schema.KindOwner, schema.KindRegistration, schema.KindRequest, schema.KindElection:
		return true
	}
	return false
}

func (o *observer) observe(e *clientv3.Event) {
	key := string(e.Kv.Key)
	k, err := layout.Parse(key)
	if err != nil {
		return // a key of no family (garbage): nothing to record
	}
	del := e.Type == clientv3.EventTypeDelete
	if o.tracked(key) {
		if del {
			delete(o.cur, key)
		} else {
			o.cur[key] = e.Kv
		}
	}
	mod := e.Kv.ModRevision
	switch k.Kind {
	case schema.KindRevision:
		if del {
			o.h.RecordRevWrite(RevWrite{ModRev: mod, Deleted: true})
			return
		}
		rec, err := layout.DecodeRevision(key, e.Kv.Value)
		o.h.RecordRevWrite(RevWrite{ModRev: mod, Rec: rec, Malformed: err != nil})
	case schema.KindRound:
		if del {
			return // history trimming
		}
		rd, err := layout.DecodeRound(key, e.Kv.Value)
		o.h.RecordSize(RecordSize{Key: key, ModRev: mod, Bytes: len(key) + len(e.Kv.Value)})
		var recs []schema.RoundAgent
		for _, a := range o.agents[k.Round] {
			recs = append(recs, a)
		}
		slices.SortFunc(recs, func(a, b schema.RoundAgent) int { return strings.Compare(a.Agent, b.Agent) })
		o.h.RecordRoundWrite(RoundWrite{ModRev: mod, Key: k.Round, Round: coordinator.NewRoundView(rd, recs), Malformed: err != nil})
	case schema.KindRoundAgent:
		if del {
			delete(o.agents[k.Round], k.Agent)
			return
		}
		o.h.RecordSize(RecordSize{Key: key, Agent: k.Agent, ModRev: mod, Bytes: len(key) + len(e.Kv.Value)})
		ra, err := layout.DecodeRoundAgent(key, e.Kv.Value)
		if err != nil {
			o.h.HarnessError("observer: malformed round agent record %s: %v", key, err)
			return
		}
		if o.agents[k.Round] == nil {
			o.agents[k.Round] = map[string]schema.RoundAgent{}
		}
		o.agents[k.Round][k.Agent] = ra
		if ra.Wave != "" {
			o.h.RecordWaveAgent(WaveAgentWrite{ModRev: mod, Round: k.Round, Agent: k.Agent, Wave: ra.Wave, StartedAt: ra.StartedAt, DoneAt: ra.DoneAt})
		}
	case schema.KindRequest:
		if del {
			o.h.RecordRequest(key, schema.Request{}, mod, true)
			return
		}
		if _, req, err := layout.DecodeRequest(key, e.Kv.Value); err == nil {
			o.h.RecordRequest(key, req, mod, false)
		}
	case schema.KindOwner:
		w := OwnerWrite{Agent: k.Agent, ModRev: mod, Deleted: del, At: time.Now()}
		if !del {
			w.Lease = e.Kv.Lease
			if ow, err := layout.DecodeOwner(key, e.Kv.Value); err == nil {
				w.Process = ow.Process
			}
		}
		o.h.RecordOwner(w)
	case schema.KindRegistration, schema.KindAck:
		if del && k.Kind == schema.KindAck {
			return
		}
		w := KeyWrite{Ack: k.Kind == schema.KindAck, Agent: k.Agent, Plugin: k.Plugin, ModRev: mod, Lease: e.Kv.Lease, Bytes: len(key) + len(e.Kv.Value),
			Deleted: del, At: time.Now()}
		if w.Ack {
			if _, a, err := layout.DecodeAck(key, e.Kv.Value); err == nil {
				w.Revision, w.Result, w.Error = a.Revision, a.Result, a.Error
			}
		}
		o.h.RecordKeyWrite(w)
	case schema.KindElection:
		if del {
			if create, ok := o.live[key]; ok {
				o.h.RecordElection(key, "", create, mod, true)
				delete(o.live, key)
			}
			return
		}
		if _, err := coordinator.CandidateKey(layout, e.Kv); err != nil {
			return // a stray key (the test's garbage): no coordinator's, as the coordinators see it
		}
		if _, ok := o.live[key]; !ok {
			o.live[key] = e.Kv.CreateRevision
			o.h.RecordElection(key, string(e.Kv.Value), e.Kv.CreateRevision, mod, false)
		}
	}
}

// putOperatorRequest writes req under requests/operator/ and returns its
// etcd revision.
func putOperatorRequest(ctx context.Context, c *clientv3.Client, req schema.Request, now time.Time) (int64, error) {
	b, err := schema.Encode(req)
	if err != nil {
		return 0, err
	}
	resp, err := c.Put(ctx, layout.OperatorRequest(schema.NewRequestID(now)), string(b))
	if err != nil {
		return 0, err
	}
	return resp.Header.Revision, nil
}

// putRequest writes a resync request and returns its etcd revision.
func putRequest(ctx context.Context, c *clientv3.Client, cause schema.Cause, scope schema.Scope, reason string) (int64, error) {
	now := time.Now()
	return putOperatorRequest(ctx, c, schema.Request{Reason: reason, Cause: cause, Scope: scope, RequestedBy: "chaos-test", RequestedAt: now.UTC()}, now)
}

// putTargets writes a request for a set of targets (one: its scope; more:
// its targets) and returns its etcd revision.
func putTargets(ctx context.Context, c *clientv3.Client, cause schema.Cause, targets []schema.Scope, reason string) (int64, error) {
	now := time.Now()
	req := schema.Request{Reason: reason, Cause: cause, RequestedBy: "chaos-test", RequestedAt: now.UTC()}
	if len(targets) == 1 {
		req.Scope = targets[0]
	} else {
		req.Targets = targets
	}
	return putOperatorRequest(ctx, c, req, now)
}
