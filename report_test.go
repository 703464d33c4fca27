package resync_test

import (
	"errors"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/resyncd/resync/internal/testing/etcdtest"
	"github.com/resyncd/resync/schema"
)

// Why TestReportErrorWritesRequest failed under load: its agent registers
// no plugin, so it never claimed its name, and a request written once the
// session existed was fenced by an owner key that never came: retried for
// ever. The test passed only when the outbox's first write beat the
// session's lease grant (then it went out unfenced, with no lease). Now a
// request makes the registry claim the name and is written fenced: here
// the error is reported only once the session exists, the order a loaded
// machine produced.
func TestReportErrorAfterTheSessionWritesRequest(t *testing.T) {
	m := etcdtest.Start(t)
	c := m.Client(t)
	p := newPlugin(t, c, "late-reporter")
	etcdtest.WaitFor(t, wait, "the agent's session lease", func() bool {
		resp, err := c.Leases(ctxT(t, 5*time.Second))
		return err == nil && len(resp.Leases) == 1
	})
	p.ReportError("l3plugin", errors.New("apply failed"))
	etcdtest.WaitFor(t, wait, "the request written", func() bool { return p.Stats().RequestsWritten == 1 })
	resp, err := c.Get(ctxT(t, 5*time.Second), layout.AgentRequests("late-reporter"), clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Kvs) != 1 {
		t.Fatalf("requests %v, want one", resp.Kvs)
	}
	req, err := schema.DecodeRequest(string(resp.Kvs[0].Key), resp.Kvs[0].Value)
	if err != nil || req.Cause != schema.CauseError || req.Reason != "l3plugin: apply failed" {
		t.Fatalf("request %+v (%v)", req, err)
	}
	if own := getOwner(t, c, "late-reporter"); own == 0 {
		t.Fatal("the agent wrote a request without owning its name")
	}
}

// getOwner returns the lease of agent's owner key, 0 if none.
func getOwner(t *testing.T, c *clientv3.Client, agent string) int64 {
	t.Helper()
	resp, err := c.Get(ctxT(t, 5*time.Second), layout.Owner(agent))
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Kvs) == 0 {
		return 0
	}
	return resp.Kvs[0].Lease
}
