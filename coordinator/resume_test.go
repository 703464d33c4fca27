package coordinator

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/resyncd/resync/internal/testing/etcdtest"
	"github.com/resyncd/resync/schema"
)

// withFaults sets the coordinator's test faults (testfaults.go).
func withFaults(f testFaults) Option { return func(c *Coordinator) { c.faults = f } }

// revoke ends a hand fleet's lease: its registrations and acks vanish.
func (f *fleet) revoke() {
	f.t.Helper()
	f.stop()
	if _, err := f.c.Revoke(ctxT(f.t, 5*time.Second), f.lease); err != nil {
		f.t.Fatal(err)
	}
}

// TestSuccessorResumesTheParticipantsFixedAtStarted: the leader dies after
// an all-scope round's start Txn and before its per-agent records (written
// after the start as a large fleet's are: recordsAfter). While
// no leader runs, one participant's agent leaves, one re-registers (a new
// lease: its agent restarted) and a new agent registers. The successor
// resumes the round with exactly the participants of its start: the one
// that left is departed, the re-registered one is kept (its error ack
// counts: it failed), and the newcomer is no participant (it gets its join
// resync only). Both of their failures are then retried: the failed
// participant by the round's retry, the newcomer's failed join by its own
// request.
func TestSuccessorResumesTheParticipantsFixedAtStarted(t *testing.T) {
	m := etcdtest.Start(t)
	obs := m.Client(t)
	eps := []string{m.Endpoint()}
	stay := handPlugins(t, obs, "a1", "p")
	leaves := handPlugins(t, obs, "a2", "p")
	rereg := handPlugins(t, obs, "a3", "p")
	etcdtest.WaitFor(t, 10*time.Second, "3 registrations", func() bool { return countPrefix(t, obs, layout.Registrations()) == 3 })

	frozen, release := make(chan struct{}), make(chan struct{})
	first := newCoord(t, eps, testConfig("first"), withFaults(testFaults{recordsAfter: true, afterStart: func(_ context.Context, n uint64, _ []schema.PluginID) {
		if n == 2 {
			close(frozen)
			<-release
		}
	}}))
	waitLeader(t, []*testCoord{first}, 10*time.Second)
	waitRevision(t, first, 1, schema.Started)
	for _, f := range []*fleet{stay, leaves, rereg} {
		f.ack(1, f.ids, schema.ResultOK, "")
	}
	waitFinished(t, obs, 1, 10*time.Second)
	second := newCoord(t, eps, testConfig("second"))
	request(t, obs, schema.CauseManual, schema.Scope{}, "round 2")
	select {
	case <-frozen:
	case <-time.After(10 * time.Second):
		t.Fatal("round 2 did not start")
	}
	if n := countPrefix(t, obs, layout.RoundAgents(2)); n != 0 {
		t.Fatalf("%d records of round 2 written before the fault", n)
	}
	leaves.revoke()
	rereg.revoke()
	rereg = handPlugins(t, obs, "a3", "p")
	late := handPlugins(t, obs, "a4", "p")
	// The leader dies: its client goes, and it is let go on.
	first.c.Close()
	close(release)
	first.Close()

	etcdtest.WaitFor(t, 15*time.Second, "the successor to resume round 2", func() bool {
		second.hooks.mu.Lock()
		defer second.hooks.mu.Unlock()
		return len(second.hooks.resumed) == 1
	})
	// The successor made the set durable: its records, one per agent of
	// the start, so that a later successor resumes with the same set even
	// after etcd compacted the start's revision.
	etcdtest.WaitFor(t, 10*time.Second, "round 2's records of a1, a2 and a3", func() bool {
		recs, bad, err := ReadRoundAgents(ctxT(t, 5*time.Second), obs, layout, 2, 0)
		if err != nil || len(bad) > 0 || len(recs) != 3 {
			return false
		}
		for i, a := range []string{"a1", "a2", "a3"} {
			if recs[i].Agent != a || fmt.Sprint(recs[i].Plugins) != "[p]" {
				return false
			}
		}
		return true
	})
	stay.ack(2, stay.ids, schema.ResultOK, "")
	rereg.ack(2, rereg.ids, schema.ResultError, "dependency not ready")
	late.ack(2, late.ids, schema.ResultError, "dependency not ready")
	v := waitFinished(t, obs, 2, 10*time.Second)
	if got := fmt.Sprint(v.Participants); got != "[a1/p a2/p a3/p]" {
		t.Errorf("round 2 resumed with participants %s, want those of its start [a1/p a2/p a3/p]", got)
	}
	if fmt.Sprint(v.Acked) != "[a1/p]" || fmt.Sprint(v.Failed) != "[a3/p]" || fmt.Sprint(v.Departed) != "[a2/p]" || v.Counts.Participants != 3 {
		t.Errorf("round 2: acked %v, failed %v, departed %v, %+v; want a1/p acked, a3/p failed, a2/p departed", v.Acked, v.Failed, v.Departed, v.Counts)
	}
	// The retries: rounds of a3/p and a4/p (together or apart), and
	// nothing else.
	retried := map[string]bool{}
	for n := uint64(3); len(retried) < 2; n++ {
		if n > 4 {
			t.Fatalf("retries after round 2 covered only %v, want a3/p and a4/p", retried)
		}
		var r RoundView
		etcdtest.WaitFor(t, 10*time.Second, fmt.Sprintf("round %d", n), func() bool {
			var ok bool
			r, ok = readRound(t, obs, n)
			return ok
		})
		if r.Cause != schema.CauseError {
			t.Fatalf("round %d: cause %s, want an error round", n, r.Cause)
		}
		for _, p := range r.Participants {
			if p.String() != "a3/p" && p.String() != "a4/p" {
				t.Fatalf("round %d includes %s: only a3/p and a4/p failed", n, p)
			}
			retried[p.String()] = true
		}
		for _, f := range []*fleet{rereg, late} {
			f.ack(n, f.ids, schema.ResultOK, "")
		}
		waitFinished(t, obs, n, 10*time.Second)
	}
	if !strings.HasPrefix(v.StartedBy, "first@") || !strings.HasPrefix(v.FinishedBy, "second@") {
		t.Errorf("round 2 started by %s, finished by %s", v.StartedBy, v.FinishedBy)
	}
	if s := second.Status(); s.ResumeFallbacks != 0 {
		t.Errorf("%d resume fallbacks: the start revision was readable", s.ResumeFallbacks)
	}
	revisionHistory(t, obs)
}

// TestResumeFallsBackWhenTheStartIsCompacted: as above, but etcd's history
// is compacted past the round's start before the successor reads it: the
// round resumes with the live registrations, and the fallback is counted.
func TestResumeFallsBackWhenTheStartIsCompacted(t *testing.T) {
	m := etcdtest.Start(t)
	obs := m.Client(t)
	eps := []string{m.Endpoint()}
	stay := handPlugins(t, obs, "a1", "p")
	frozen, release := make(chan struct{}), make(chan struct{})
	first := newCoord(t, eps, testConfig("first"), withFaults(testFaults{recordsAfter: true, afterStart: func(_ context.Context, n uint64, _ []schema.PluginID) {
		if n == 1 {
			close(frozen)
			<-release
		}
	}}))
	select {
	case <-frozen:
	case <-time.After(10 * time.Second):
		t.Fatal("round 1 did not start")
	}
	late := handPlugins(t, obs, "a4", "p")
	resp, err := obs.Get(ctxT(t, 5*time.Second), "compact-probe")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := obs.Compact(ctxT(t, 5*time.Second), resp.Header.Revision, clientv3.WithCompactPhysical()); err != nil {
		t.Fatal(err)
	}
	second := newCoord(t, eps, testConfig("second"))
	first.c.Close()
	close(release)
	first.Close()
	etcdtest.WaitFor(t, 15*time.Second, "the successor to resume round 1", func() bool { return second.Status().ResumeFallbacks == 1 })
	// The fallback set is made durable: its records.
	etcdtest.WaitFor(t, 10*time.Second, "round 1's records of a1 and a4", func() bool {
		recs, bad, err := ReadRoundAgents(ctxT(t, 5*time.Second), obs, layout, 1, 0)
		return err == nil && len(bad) == 0 && len(recs) == 2 && recs[0].Agent == "a1" && recs[1].Agent == "a4"
	})
	for _, f := range []*fleet{stay, late} {
		f.ack(1, f.ids, schema.ResultOK, "")
	}
	if v := waitFinished(t, obs, 1, 10*time.Second); fmt.Sprint(v.Participants) != "[a1/p a4/p]" {
		t.Errorf("round 1 resumed with participants %v, want the live registrations [a1/p a4/p]", v.Participants)
	}
}

// TestSuccessorReadsTheLeadersViewNotTheStartTxn: a leader chooses an
// all-scope round's participants from its watch's view, which may lag etcd
// by the time its start Txn lands: a plugin registered in between is no
// participant. The summary records the view's revision; a successor that
// finds no per-agent records resumes with the registrations at that
// revision, not at the start Txn's: a3/p, registered after the view, is no
// participant there either.
func TestSuccessorReadsTheLeadersViewNotTheStartTxn(t *testing.T) {
	m := etcdtest.Start(t)
	obs := m.Client(t)
	eps := []string{m.Endpoint()}
	a1 := handPlugins(t, obs, "a1", "p")
	a2 := handPlugins(t, obs, "a2", "p")
	etcdtest.WaitFor(t, 10*time.Second, "2 registrations", func() bool { return countPrefix(t, obs, layout.Registrations()) == 2 })
	view, err := obs.Get(ctxT(t, 5*time.Second), layout.Registrations(), clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		t.Fatal(err)
	}
	a3 := handPlugins(t, obs, "a3", "p") // after the view, before the start Txn
	etcdtest.WaitFor(t, 10*time.Second, "3 registrations", func() bool { return countPrefix(t, obs, layout.Registrations()) == 3 })

	now := time.Now().UTC()
	round := schema.Round{Revision: 1, State: schema.Started, Reason: "lagging view", Cause: schema.CauseManual,
		Scope: schema.ScopeSummary{All: true}, Counts: schema.RoundCounts{Participants: 2, Pending: 2}, Agents: 2,
		StartedAt: now, Deadline: now.Add(time.Minute), StartedBy: "dead@1", ViewRevision: view.Header.Revision}
	rev := schema.Revision{Revision: 1, State: schema.Started, Reason: round.Reason, Cause: round.Cause, Scope: round.Scope,
		Participants: 2, StartedAt: now, Deadline: round.Deadline, Leader: "dead@1", Epoch: "hand"}
	rb, err := schema.Encode(round)
	if err != nil {
		t.Fatal(err)
	}
	vb, err := schema.Encode(rev)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := obs.Txn(ctxT(t, 5*time.Second)).Then(clientv3.OpPut(layout.Round(1), string(rb)), clientv3.OpPut(layout.Revision(), string(vb))).Commit(); err != nil {
		t.Fatal(err)
	}

	co := newCoord(t, eps, testConfig("successor"))
	etcdtest.WaitFor(t, 15*time.Second, "the successor to resume round 1", func() bool {
		co.hooks.mu.Lock()
		defer co.hooks.mu.Unlock()
		return len(co.hooks.resumed) == 1
	})
	for _, f := range []*fleet{a1, a2, a3} {
		f.ack(1, f.ids, schema.ResultOK, "")
	}
	v := waitFinished(t, obs, 1, 10*time.Second)
	if got := fmt.Sprint(v.Participants); got != "[a1/p a2/p]" {
		t.Errorf("round 1 resumed with participants %s, want those of the leader's view [a1/p a2/p]", got)
	}
	if v.Counts.Participants != 2 || v.Counts.Acked != 2 {
		t.Errorf("round 1 counts %+v, want 2 participants, 2 acked", v.Counts)
	}
}
