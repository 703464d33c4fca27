package coordinator

import (
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/resyncd/resync/internal/testing/etcdtest"
	"github.com/resyncd/resync/schema"
)

// A plain round's agents whose plugins have all resolved get their outcome
// record while the round still runs, in batches of earlyBatch agents, so
// that the finish after the last ack writes only the rest. A successor
// that takes over between the two (the first leader stops) resumes with
// the same participants and takes the outcomes the early records list,
// even of an agent that left since: outcomes never change.
func TestDoneAgentsOutcomesAreWrittenWhileTheRoundRuns(t *testing.T) {
	m := etcdtest.Start(t)
	obs := m.Client(t)
	eps := []string{m.Endpoint()}
	agents := fleetNames(earlyBatch+2, "agent-", 0)
	f := startFleet(t, obs, agents, []string{"p0", "p1"})
	first := newCoord(t, eps, testConfig("first"))
	waitRevision(t, first, 1, schema.Started)

	// A batch of agents done (one of them failed), two still pending.
	failed := agents[1]
	done := map[string]bool{}
	var acked, failing, pending []schema.PluginID
	for _, id := range f.ids {
		switch {
		case id.Agent == failed:
			failing = append(failing, id)
		case len(done) < earlyBatch || done[id.Agent]:
			acked = append(acked, id)
		default:
			pending = append(pending, id)
			continue
		}
		done[id.Agent] = true
	}
	f.ack(1, failing, schema.ResultError, "disk full")
	f.ack(1, acked, schema.ResultOK, "")

	// Their records say so while the round is still Started.
	var recs map[string]schema.RoundAgent
	etcdtest.WaitFor(t, 10*time.Second, "early outcome records of the done agents", func() bool {
		recs = roundAgents(t, obs, 1)
		n := 0
		for _, r := range recs {
			if r.State == schema.NotActive {
				n++
			}
		}
		return n == earlyBatch
	})
	if rev, ok := readRevision(t, obs); !ok || rev.Revision != 1 || rev.State != schema.Started {
		t.Fatalf("revision record %+v: want round 1 still Started", rev)
	}
	for _, a := range agents {
		r := recs[a]
		switch {
		case len(r.Plugins) != 2:
			t.Errorf("record of %s: %+v, want its 2 plugins", a, r)
		case a == failed && (len(r.Failed) != 2 || r.Errors["p0"] != "disk full"):
			t.Errorf("record of %s: %+v, want both plugins failed with their error", a, r)
		case done[a] && a != failed && (r.State != schema.NotActive || len(r.Acked) != 2):
			t.Errorf("record of %s: %+v, want both plugins acked", a, r)
		case !done[a] && (r.State != schema.Started || len(r.Acked)+len(r.Failed) > 0):
			t.Errorf("record of the pending %s: %+v, want it Started with no outcome", a, r)
		}
	}

	// The first leader stops, and while none runs a done agent leaves
	// (its keys go, as at its lease's expiry). A successor resumes round
	// 1 from these records, keeps that agent acked (its record says so:
	// it acked before it left), and finishes at the last ack.
	first.Close()
	gone := agents[0]
	for _, p := range []string{"p0", "p1"} {
		for _, k := range []string{layout.Ack(gone, p), layout.Registration(gone, p)} {
			if _, err := obs.Delete(ctxT(t, 5*time.Second), k); err != nil {
				t.Fatal(err)
			}
		}
	}
	second := newCoord(t, eps, testConfig("second"))
	waitLeader(t, []*testCoord{second}, 10*time.Second)
	f.ack(1, pending, schema.ResultOK, "")
	r := waitFinished(t, obs, 1, 10*time.Second)
	if r.Counts.Participants != 2*len(agents) || r.Counts.Acked != 2*(len(agents)-1) || r.Counts.Failed != 2 || r.Counts.Departed != 0 {
		t.Fatalf("round 1 counts %+v", r.Counts)
	}
	if len(r.Participants) != 2*len(agents) || len(r.Acked) != 2*(len(agents)-1) || len(r.Failed) != 2 {
		t.Fatalf("round 1 records: %d participants, %d acked, %d failed", len(r.Participants), len(r.Acked), len(r.Failed))
	}
	for _, rec := range roundAgents(t, obs, 1) {
		if rec.State != schema.NotActive {
			t.Errorf("record of %s after the finish: %+v", rec.Agent, rec)
		}
	}
}

// roundAgents are round n's per-agent records by agent.
func roundAgents(t *testing.T, c *clientv3.Client, n uint64) map[string]schema.RoundAgent {
	t.Helper()
	recs, bad, err := ReadRoundAgents(ctxT(t, 5*time.Second), c, layout, n, 0)
	if err != nil || len(bad) > 0 {
		t.Fatalf("round %d records: %v %v", n, err, bad)
	}
	out := map[string]schema.RoundAgent{}
	for _, r := range recs {
		out[r.Agent] = r
	}
	return out
}
