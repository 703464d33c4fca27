package coordinator

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/resyncd/resync/internal/testing/etcdtest"
	"github.com/resyncd/resync/schema"
)

// requestTargets writes an operator request for the set of agents.
func requestTargets(t *testing.T, c *clientv3.Client, agents []string, reason string) {
	t.Helper()
	req := schema.Request{Reason: reason, Cause: schema.CauseManual, RequestedBy: "test", RequestedAt: time.Now().UTC()}
	for _, a := range agents {
		req.Targets = append(req.Targets, schema.Scope{Agent: a})
	}
	b, err := schema.Encode(req)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Put(ctxT(t, 5*time.Second), layout.OperatorRequest(schema.NewRequestID(time.Now())), string(b)); err != nil {
		t.Fatal(err)
	}
}

// createRev is key's create revision (0: absent).
func createRev(t *testing.T, c *clientv3.Client, key string) int64 {
	t.Helper()
	resp, err := c.Get(ctxT(t, 5*time.Second), key)
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Kvs) == 0 {
		return 0
	}
	return resp.Kvs[0].CreateRevision
}

// A set-scope round's records are readable no later than its Started: in
// the start Txn itself when they fit in it with the start, before it
// otherwise. What an earlier attempt at the same round left under
// rounds/<N>/ is wiped first, and only then (found by a read).
func TestSetScopeRecordsGoWithTheStartAndLeftoversAreWiped(t *testing.T) {
	m := etcdtest.Start(t)
	obs := m.Client(t)
	eps := []string{m.Endpoint()}
	// Names of the longest kind: 10 agents' records (about 1 KiB each)
	// exceed half of a 16 KiB write budget, 2 agents' do not.
	long := strings.Repeat("p", schema.MaxNameLen-2)
	var plugins []string
	for i := range 8 {
		plugins = append(plugins, fmt.Sprintf("%s%02d", long, i))
	}
	agents := startAgents(t, eps, 10, plugins, nil)
	cfg := testConfig("c0")
	cfg.WriteBudget = 16 << 10
	newCoord(t, eps, cfg)
	waitFinished(t, obs, 1, 10*time.Second)

	// Round 2 was tried before: a record of an agent outside its scope.
	leftover := layout.RoundAgent(2, "agent-09")
	if _, err := obs.Put(ctxT(t, 5*time.Second), leftover, "left by a start that never committed"); err != nil {
		t.Fatal(err)
	}
	requestTargets(t, obs, []string{"agent-01", "agent-02"}, "two agents")
	r := waitFinished(t, obs, 2, 10*time.Second)
	if r.Counts.Acked != 16 || agents[1].StartedCount(plugins[0], 2) != 1 {
		t.Fatalf("round 2 counts %+v", r.Counts)
	}
	if rev := createRev(t, obs, leftover); rev != 0 {
		t.Errorf("the earlier attempt's record %s is still there (create revision %d)", leftover, rev)
	}
	start := createRev(t, obs, layout.Round(2))
	for _, a := range []string{"agent-01", "agent-02"} {
		if got := createRev(t, obs, layout.RoundAgent(2, a)); got != start {
			t.Errorf("round 2's record of %s created at revision %d, its start at %d: want them in one Txn", a, got, start)
		}
	}

	// Ten agents' records do not fit in the start Txn: they go before it.
	all := make([]string, 10)
	for i := range all {
		all[i] = fmt.Sprintf("agent-%02d", i)
	}
	requestTargets(t, obs, all, "ten agents")
	r = waitFinished(t, obs, 3, 10*time.Second)
	if r.Counts.Acked != 80 {
		t.Fatalf("round 3 counts %+v", r.Counts)
	}
	start = createRev(t, obs, layout.Round(3))
	for _, a := range all {
		if got := createRev(t, obs, layout.RoundAgent(3, a)); got == 0 || got >= start {
			t.Errorf("round 3's record of %s created at revision %d, its start at %d: want it before", a, got, start)
		}
	}
}

// A small fleet's all-scope round writes its per-agent records in its
// start Txn (one Txn before Started, and none after it that the leader's
// handling of the acks would wait for), with what an earlier attempt left
// under rounds/<N>/ wiped around them in the same Txn: a leftover at a
// participant's own record key is overwritten, the others are deleted,
// keys sorting before, between and after the records alike.
func TestSmallFleetRecordsGoInTheStartAroundLeftovers(t *testing.T) {
	m := etcdtest.Start(t)
	obs := m.Client(t)
	eps := []string{m.Endpoint()}
	startAgents(t, eps, 3, []string{"p", "q"}, nil)
	newCoord(t, eps, testConfig("c0"))
	waitFinished(t, obs, 1, 10*time.Second)

	own := layout.RoundAgent(2, "agent-01")
	gone := []string{
		layout.RoundDir(2) + "!before-every-record",
		layout.RoundAgent(2, "agent-00x"), // between agent-00's and agent-01's
		layout.RoundAgent(2, "agent-09"),
		layout.RoundScope(2, 0),
		layout.RoundDir(2) + "~after-every-record",
	}
	for _, k := range append([]string{own}, gone...) {
		if _, err := obs.Put(ctxT(t, 5*time.Second), k, "left by a start that never committed"); err != nil {
			t.Fatal(err)
		}
	}
	request(t, obs, schema.CauseManual, schema.Scope{}, "everyone")
	r := waitFinished(t, obs, 2, 10*time.Second)
	if r.Counts.Acked != 6 || r.Counts.Participants != 6 {
		t.Fatalf("round 2 counts %+v, want 6 participants acked", r.Counts)
	}
	start := createRev(t, obs, layout.Round(2))
	at := func(key string, rev int64) *mvccpb.KeyValue {
		t.Helper()
		resp, err := obs.Get(ctxT(t, 5*time.Second), key, clientv3.WithRev(rev))
		if err != nil {
			t.Fatal(err)
		}
		if len(resp.Kvs) == 0 {
			return nil
		}
		return resp.Kvs[0]
	}
	for _, k := range gone {
		if at(k, start-1) == nil || at(k, start) != nil || createRev(t, obs, k) != 0 {
			t.Errorf("the earlier attempt's %s: want it deleted by the start Txn (revision %d)", k, start)
		}
	}
	for _, a := range []string{"agent-00", "agent-01", "agent-02"} {
		kv := at(layout.RoundAgent(2, a), start)
		var rec schema.RoundAgent
		var err error
		if kv != nil {
			rec, err = schema.DecodeRoundAgent(string(kv.Key), kv.Value)
		}
		if kv == nil || kv.ModRevision != start || err != nil || rec.Agent != a || fmt.Sprint(rec.Plugins) != "[p q]" {
			t.Errorf("round 2's record of %s at its start (revision %d): %v; want it written by the start Txn, with [p q]", a, start, kv)
		}
	}
	recs, bad, err := ReadRoundAgents(ctxT(t, 5*time.Second), obs, layout, 2, 0)
	if err != nil || len(bad) > 0 || len(recs) != 3 {
		t.Fatalf("round 2's records after it: %d, unreadable %v, err %v; want agent-00..02's", len(recs), bad, err)
	}
}

// An ack already in etcd for the revision a round starts with (one that
// outlived an etcd restore: its agent acked that revision before the
// restore took etcd back) resolves its participant at the start, though
// no event about it comes after: the leader skips that check only when no
// ack is so high. Here the successor lists the ack before the round.
func TestAnAckForTheStartingRevisionResolvesAtTheStart(t *testing.T) {
	m := etcdtest.Start(t)
	obs := m.Client(t)
	eps := []string{m.Endpoint()}
	early := handPlugins(t, obs, "a1", "p")
	other := handPlugins(t, obs, "a2", "p")
	first := newCoord(t, eps, testConfig("first"))
	waitRevision(t, first, 1, schema.Started)
	for _, f := range []*fleet{early, other} {
		f.ack(1, f.ids, schema.ResultOK, "")
	}
	waitFinished(t, obs, 1, 10*time.Second)
	first.Close()

	early.ack(2, early.ids, schema.ResultOK, "")
	second := newCoord(t, eps, testConfig("second"))
	waitLeader(t, []*testCoord{second}, 10*time.Second)
	request(t, obs, schema.CauseManual, schema.Scope{}, "round 2")
	waitRevision(t, second, 2, schema.Started)
	other.ack(2, other.ids, schema.ResultOK, "")
	v := waitFinished(t, obs, 2, 10*time.Second)
	if fmt.Sprint(v.Acked) != "[a1/p a2/p]" || v.Counts.Acked != 2 {
		t.Errorf("round 2: acked %v, counts %+v; want a1/p acked by its earlier ack, and a2/p", v.Acked, v.Counts)
	}
}
