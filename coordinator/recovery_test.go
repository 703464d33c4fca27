package coordinator

import (
	"testing"
	"time"

	"github.com/resyncd/resync/internal/testing/etcdtest"
	"github.com/resyncd/resync/internal/testing/handagent"
	"github.com/resyncd/resync/schema"
)

// A garbage value under rounds/ with a number beyond the current revision
// (an operator's typo, an old version) must not make the next leader skip
// revisions: N still steps by exactly 1 across the failover.
func TestGarbageFutureRoundKeyDoesNotSkipRevisions(t *testing.T) {
	m := etcdtest.Start(t)
	obs := m.Client(t)
	eps := []string{m.Endpoint()}
	first := newCoord(t, eps, testConfig("c0"))
	waitLeader(t, []*testCoord{first}, 10*time.Second)
	waitIdle(t, obs, 10*time.Second)
	if _, err := obs.Put(ctxT(t, 5*time.Second), layout.Round(1001), "not json {"); err != nil {
		t.Fatal(err)
	}
	first.Close()
	second := newCoord(t, eps, testConfig("c1"))
	waitLeader(t, []*testCoord{second}, 10*time.Second)
	request(t, obs, schema.CauseManual, schema.Scope{}, "after the garbage")
	etcdtest.WaitFor(t, 10*time.Second, "a round after round 1", func() bool {
		r, ok := readRevision(t, obs)
		return ok && r.Revision > 1 && r.State == schema.NotActive
	})
	if r, _ := readRevision(t, obs); r.Revision != 2 {
		t.Fatalf("the round after round 1 is %d, want 2: a garbage rounds/ key made the leader skip revisions", r.Revision)
	}
	revisionHistory(t, obs)
}

// A garbage value in the revision key while a round runs, then a failover:
// the successor must resume that round from rounds/<N> (same participants,
// completed once), not abandon it Started and start N+1.
func TestGarbageRevisionMidRoundFailoverResumesTheRound(t *testing.T) {
	m := etcdtest.Start(t)
	obs := m.Client(t)
	eps := []string{m.Endpoint()}
	first := newCoord(t, eps, testConfig("c0"))
	waitLeader(t, []*testCoord{first}, 10*time.Second)
	waitIdle(t, obs, 10*time.Second)
	a := handagent.Start(t, eps, "a1", []string{"p"}, map[string]string{"p": "hold"})
	request(t, obs, schema.CauseManual, schema.Scope{}, "held round")
	etcdtest.WaitFor(t, 10*time.Second, "round 2 to reach the agent", func() bool { return a.StartedCount("p", 2) == 1 })
	if _, err := obs.Put(ctxT(t, 5*time.Second), layout.Revision(), "not json {"); err != nil {
		t.Fatal(err)
	}
	first.Crash()
	second := newCoord(t, eps, testConfig("c1"))
	waitLeader(t, []*testCoord{second}, 10*time.Second)
	a.Release()
	r := waitFinished(t, obs, 2, 15*time.Second)
	if r.Counts.Acked != 1 {
		t.Fatalf("round 2 after the failover: %+v, want the held participant acked", r.Counts)
	}
	if rev := waitIdle(t, obs, 10*time.Second); rev.Revision != 2 {
		t.Fatalf("revision after the failover is %d, want round 2 resumed and finished", rev.Revision)
	}
}
