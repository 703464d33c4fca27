package coordinator

import (
	"fmt"
	"strings"
	"testing"
	"time"

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
