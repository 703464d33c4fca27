package integration

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/resyncd/resync/coordinator"
	"github.com/resyncd/resync/schema"
)

// goodHistory is a small valid history: coordinator c0 (term 10) runs
// rounds 1 and 2 for agent a (plugins p1, p2), both acked.
func goodHistory() *History {
	h := NewHistory(5 * time.Second)
	t0 := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	parts := []schema.PluginID{{Agent: "a", Plugin: "p1"}, {Agent: "a", Plugin: "p2"}}
	h.RecordElection("/resync/election/1", "c0", 10, 10, false)
	h.AddIncarnation(1, "a", []string{"p1", "p2"})
	mod := int64(20)
	for n := uint64(1); n <= 2; n++ {
		start, deadline := t0.Add(time.Duration(n)*time.Minute), t0.Add(time.Duration(n)*time.Minute+10*time.Second)
		rev := schema.Revision{Revision: n, State: schema.Started, Reason: "r", Cause: schema.CauseManual,
			Participants: 2, StartedAt: start, Deadline: deadline, Leader: "c0@10"}
		round := coordinator.RoundView{Round: schema.Round{Revision: n, State: schema.Started, Reason: "r", Cause: schema.CauseManual,
			Counts: schema.RoundCounts{Participants: 2, Pending: 2}, StartedAt: start, Deadline: deadline, StartedBy: "c0@10"}, Participants: parts}
		h.RecordRoundWrite(RoundWrite{ModRev: mod, Key: n, Round: round})
		h.RecordRevWrite(RevWrite{ModRev: mod, Rec: rev})
		for _, p := range parts {
			h.RecordEvent(Event{Agent: "a", Plugin: p.Plugin, Incarnation: 1, Revision: n, Status: schema.Started, Join: n == 1})
			h.RecordAck(AckSent{Agent: "a", Plugin: p.Plugin, Incarnation: 1, Revision: n, Result: schema.ResultOK})
		}
		mod += 10
		rev.State, rev.FinishedAt = schema.NotActive, start.Add(time.Second)
		round.State, round.FinishedAt, round.FinishedBy = schema.NotActive, rev.FinishedAt, "c0@10"
		round.Acked, round.Counts.Acked, round.Counts.Pending = parts, 2, 0
		h.RecordRoundWrite(RoundWrite{ModRev: mod, Key: n, Round: round})
		h.RecordRevWrite(RevWrite{ModRev: mod, Rec: rev})
		mod += 10
	}
	h.FinalRevision = 2
	return h
}

// lastRound returns the last completed round write of n, to doctor it.
func lastRound(h *History, n uint64) *coordinator.RoundView {
	for i := len(h.RoundWrites) - 1; i >= 0; i-- {
		if h.RoundWrites[i].Key == n && h.RoundWrites[i].Round.State == schema.NotActive {
			return &h.RoundWrites[i].Round
		}
	}
	return nil
}

// TestCheckerCatchesViolations proves that the checker can fail: each
// doctored history must be reported with the expected violation, and the
// undoctored one must pass.
func TestCheckerCatchesViolations(t *testing.T) {
	if rep := goodHistory().Check(); len(rep.Violations) != 0 {
		t.Fatalf("the good history has violations: %v", rep.Violations)
	} else if rep.RoundsCompleted != 2 || rep.Events != 4 || rep.AcksMatched != 4 || rep.FinalAcks != 2 || rep.FencedWrites != 8 {
		t.Fatalf("the good history checked too little: %s", rep.Summary())
	}
	for _, tc := range []struct {
		name   string
		doctor func(h *History)
		want   string
	}{
		{"duplicate Started", func(h *History) {
			h.RecordEvent(Event{Agent: "a", Plugin: "p2", Incarnation: 1, Revision: 2, Status: schema.Started})
		}, "got Started 2 twice"},
		{"gap in revisions", func(h *History) {
			for i := range h.RevWrites {
				if h.RevWrites[i].Rec.Revision == 2 {
					h.RevWrites[i].Rec.Revision = 3
				}
			}
		}, "revision went from 1 to 3"},
		{"revision restarted after it finished", func(h *History) {
			w := h.RevWrites[len(h.RevWrites)-1]
			w.ModRev, w.Rec.State = 70, schema.Started
			h.RecordRevWrite(w)
		}, "Started again"},
		{"revision started before the previous finished", func(h *History) {
			h.RevWrites = append(h.RevWrites[:1], h.RevWrites[2:]...)
		}, "while revision 1 was still Started"},
		{"write with an old term", func(h *History) {
			h.RecordElection("/resync/election/1", "", 10, 60, true)
			h.RecordElection("/resync/election/2", "c1", 60, 60, false)
			w := h.RevWrites[len(h.RevWrites)-1]
			w.ModRev, w.Rec.Leader = 65, "c1@60"
			h.RecordRevWrite(w)
			w.ModRev, w.Rec.Leader = 70, "c0@10"
			h.RecordRevWrite(w)
		}, "a deposed leader wrote"},
		{"write by a term that does not lead", func(h *History) {
			h.RecordElection("/resync/election/2", "c1", 15, 15, false)
			h.RevWrites[len(h.RevWrites)-1].Rec.Leader = "c1@15"
		}, "while term 10 (c0) led"},
		{"participant in two outcome lists", func(h *History) {
			r := lastRound(h, 2)
			r.Failed = append(r.Failed, r.Acked[0])
		}, "is both acked and failed"},
		{"participant without outcome", func(h *History) {
			r := lastRound(h, 2)
			r.Acked = r.Acked[:1]
		}, "has no outcome"},
		{"round never completed", func(h *History) {
			h.RoundWrites = h.RoundWrites[:len(h.RoundWrites)-1]
		}, "revision 2 has no completed round record"},
		{"round never completed, started before the teardown", func(h *History) {
			h.RoundWrites = h.RoundWrites[:len(h.RoundWrites)-1]
			h.TeardownRev = 40 // round 2 started at 40: before the teardown
		}, "revision 2 has no completed round record"},
		{"round finished long after its deadline", func(h *History) {
			r := lastRound(h, 2)
			r.FinishedAt = r.Deadline.Add(time.Minute)
		}, "after its deadline"},
		{"Started out of registration order", func(h *History) {
			for i := range h.Events {
				if h.Events[i].Revision == 2 {
					h.Events[i].Seq = 100 - h.Events[i].Seq
				}
			}
		}, "against registration order"},
		{"first Started not a join", func(h *History) { h.Events[0].Join = false }, "is not a join resync"},
		{"acked without an ack sent", func(h *History) { h.Acks = h.Acks[:len(h.Acks)-1] }, "no incarnation of it sent an ok ack"},
		{"live plugin missed the final round", func(h *History) {
			h.AddIncarnation(2, "b", []string{"q"})
		}, "did not ack the final revision"},
		{"malformed record not written by the test", func(h *History) {
			h.RecordRevWrite(RevWrite{ModRev: 55, Malformed: true})
		}, "was not written by the test"},
		{"participant outside the requested scopes", func(h *History) {
			// Round 2 (Started at etcd revision 40) consumed one request
			// for agent b only.
			h.RecordRequest("/resync/requests/x", schema.Request{Cause: schema.CauseManual, Scope: schema.Scope{Agent: "b"}}, 35, false)
			h.RecordRequest("/resync/requests/x", schema.Request{}, 40, true)
		}, "outside the union of the 1 requests"},
		{"Started outside a set scope", func(h *History) {
			r := lastRound(h, 2)
			r.Scope = schema.ScopeSummary{Plugins: 1, First: "a/p1"}
			r.Participants, r.Acked = r.Participants[:1], r.Acked[:1]
		}, "a/p2 got Started but is no participant"},
		{"observer compacted away", func(h *History) { h.HarnessError("observer: history compacted") }, "harness: observer"},
		{"error rounds faster than the backoff", func(h *History) {
			h.Backoff = BackoffConfig{Min: 100 * time.Millisecond, Max: time.Second, Slack: 10 * time.Millisecond}
			t0 := time.Date(2026, 11, 25, 13, 0, 0, 0, time.UTC)
			// 100 ms apart, then 200 ms: the third needed 400 ms.
			for i, at := range []time.Duration{0, 200 * time.Millisecond, 400 * time.Millisecond} {
				h.RecordRoundWrite(RoundWrite{ModRev: int64(100 + i), Key: uint64(10 + i), Round: coordinator.RoundView{Round: schema.Round{Revision: uint64(10 + i),
					State: schema.Started, Cause: schema.CauseError, Scope: schema.ScopeSummary{Agents: 1, First: "a"}, StartedAt: t0.Add(at), StartedBy: "c0@10"}}})
			}
		}, "the backoff allows 400ms (streak of 2)"},
		{"registration by a process that does not own the agent", func(h *History) {
			h.RecordOwner(OwnerWrite{Agent: "a", ModRev: 15, Lease: 1, Process: "old"})
			h.RecordKeyWrite(KeyWrite{Agent: "a", Plugin: "p1", ModRev: 16, Lease: 2})
		}, "two live owners"},
		{"registration while nobody owns the agent", func(h *History) {
			h.RecordOwner(OwnerWrite{Agent: "a", ModRev: 15, Lease: 1, Process: "old"})
			h.RecordOwner(OwnerWrite{Agent: "a", ModRev: 16, Deleted: true})
			h.RecordKeyWrite(KeyWrite{Agent: "a", Plugin: "p1", ModRev: 17, Lease: 1})
		}, "while nobody owned the agent name"},
		{"displaced process never told", func(h *History) {
			takeover(h)
			h.Duplicates[0].DoneAt = time.Time{}
		}, "Done never fired: two live owners"},
		{"displaced process told late", func(h *History) {
			d := takeover(h)
			d.DoneAt = d.Started.Add(11 * time.Second)
		}, "Done fired 11s after the newer one started"},
		{"displaced process's channels left open", func(h *History) {
			takeover(h).Closed = false
		}, "Done fired, but its plugin loops did not end"},
		{"newer process never took over", func(h *History) {
			takeover(h)
			h.Owners = h.Owners[:1]
		}, "never took the owner key over from process old"},
		{"displaced process wrote after the take-over", func(h *History) {
			takeover(h)
			h.RecordKeyWrite(KeyWrite{Ack: true, Agent: "a", Plugin: "p2", ModRev: 19, Lease: 1, Revision: 2})
		}, "the displaced process wrote the ack (revision 2) of p2 at 19 on its lease 1 after the take-over at 18"},
		{"displaced process received an event after Done", func(h *History) {
			d := takeover(h)
			h.RecordEvent(Event{Agent: "a", Plugin: "p1", Incarnation: 1, Revision: 3, Status: schema.NotActive,
				WaitFrom: d.DoneAt.Add(time.Millisecond), At: d.DoneAt.Add(time.Second)})
		}, "received NotActive 3 after its Done fired"},
		{"late taker timed out without a retry", func(h *History) {
			lateTimeout(h, 1)
		}, "round 1 recorded late taker a/p2 timed_out but asked for no retry"},
		{"late taker lost", func(h *History) {
			lateTimeout(h, 2)
		}, "round 2 recorded late taker a/p2 timed_out, and no later round delivered it"},
		{"error text over its cap", func(h *History) {
			lastRound(h, 2).Errors = map[string]string{"a/p2": strings.Repeat("<", 300)}
		}, "round 2's error of a/p2 is 1800 bytes after JSON escaping: the cap is 1038"},
		{"ack error text over its cap", func(h *History) {
			h.RecordKeyWrite(KeyWrite{Ack: true, Agent: "a", Plugin: "p1", ModRev: 19, Lease: 1, Revision: 1, Error: strings.Repeat("&", 1100)})
		}, "the error of ack a/p1 at 19 is 1100 bytes: the cap is 1038"},
		{"round record over the write budget", func(h *History) {
			h.WriteBudget = 16 << 10
			h.RecordSize(RecordSize{Key: "/resync/rounds/2/agents/a", Agent: "a", ModRev: 40, Bytes: 9000})
		}, "is 9000 bytes: its budget is 8192"},
		{"participant name cut short", func(h *History) {
			h.Incarnations[1].Plugins[1] = longName("p2-")
		}, "round 2 lists participant a/p2 (1+2 bytes), a name no incarnation registered"},
		{"successor resumed with a plugin registered after Started", func(h *History) {
			// Round 2 started with a/p1 only; a/p2 registered later and the
			// successor that finished it took it in.
			h.RecordStartSet(2, []schema.PluginID{{Agent: "a", Plugin: "p1"}})
			lastRound(h, 2).FinishedBy = "c1@60"
		}, "round 2 was finished by c1@60 after c0@10 started it with participants it did not have at Started: a/p2"},
		{"successor dropped a participant that had left", func(h *History) {
			// Round 2 started with a/p3 too; it left during the failover
			// and the successor forgot it instead of counting it departed.
			h.RecordStartSet(2, []schema.PluginID{{Agent: "a", Plugin: "p1"}, {Agent: "a", Plugin: "p2"}, {Agent: "a", Plugin: "p3"}})
		}, "round 2 was finished by its leader without participants it had at Started (not even departed): a/p3"},
		{"failed join resync never retried", func(h *History) {
			seams(h)
			failedJoin(h, 55, 0)
		}, "b/q: error ack for revision 2 was never included in a later round"},
		{"failed join resync retried too late", func(h *History) {
			seams(h)
			at := failedJoin(h, 55, 0)
			roundFor(h, 3, 60, at.Add(5*time.Second), "c0@10", schema.PluginID{Agent: "b", Plugin: "q"})
		}, "b/q: error ack for revision 2 was included in no round until round 3, 5s after it"},
		{"timed-out participant never retried", func(h *History) {
			seams(h)
			r := lastRound(h, 2)
			r.Acked, r.TimedOut = r.Acked[:1], []schema.PluginID{{Agent: "a", Plugin: "p2"}}
		}, "a/p2: timed_out in round 2 was never included in a later round"},
		{"name unowned while its live process reaches etcd", func(h *History) {
			seams(h)
			unowned(h)
		}, "agent a had no owner for 10s from 12:20:10.000 while its live incarnation 1 reached etcd (bound 3s)"},
		{"Close past its bound", func(h *History) {
			h.RecordClose("coordinator c1-0 (standby, blackholed)", 9*time.Second, 5*time.Second)
		}, "Close of coordinator c1-0 (standby, blackholed) took 9s"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := goodHistory()
			tc.doctor(h)
			rep := h.Check()
			found := false
			for _, v := range rep.Violations {
				found = found || strings.Contains(v, tc.want)
			}
			if !found {
				t.Errorf("violation %q not reported; got %q", tc.want, rep.Violations)
			}
		})
	}
	// Error rounds at the pace of the backoff, and a new leader's first
	// one, are not violations.
	h0 := goodHistory()
	h0.Backoff = BackoffConfig{Min: 100 * time.Millisecond, Max: time.Second, Slack: 10 * time.Millisecond}
	t0 := time.Date(2026, 11, 25, 13, 0, 0, 0, time.UTC)
	for i, at := range []time.Duration{0, 200 * time.Millisecond, 600 * time.Millisecond, 1400 * time.Millisecond, 2400 * time.Millisecond, 2500 * time.Millisecond} {
		by := "c0@10"
		if i == 5 {
			by = "c1@50"
		}
		h0.RecordRoundWrite(RoundWrite{ModRev: int64(100 + i), Key: uint64(10 + i), Round: coordinator.RoundView{Round: schema.Round{Revision: uint64(10 + i),
			State: schema.Started, Cause: schema.CauseError, Scope: schema.ScopeSummary{Agents: 1, First: "a"}, StartedAt: t0.Add(at), StartedBy: by}}})
	}
	h0.RecordClose("plugin", time.Second, 5*time.Second)
	if rep := h0.Check(); rep.ErrorRounds != 6 || rep.Closes != 1 || len(backoffViolations(rep)) != 0 {
		t.Errorf("paced error rounds: %s %v", rep.Summary(), backoffViolations(rep))
	}
	// A round started after the teardown began may stay incomplete.
	cut := goodHistory()
	cut.RoundWrites = cut.RoundWrites[:len(cut.RoundWrites)-1]
	cut.TeardownRev = 35
	if rep := cut.Check(); len(rep.Violations) != 0 {
		t.Errorf("a round cut short by the teardown: %v", rep.Violations)
	}
	// The test's own garbage is skipped, not reported.
	h := goodHistory()
	h.RecordRevWrite(RevWrite{ModRev: 55, Malformed: true})
	h.RecordGarbage(55, layout.Revision())
	if rep := h.Check(); len(rep.Violations) != 0 || rep.GarbageSkipped != 1 {
		t.Errorf("injected garbage: %s %v", rep.Summary(), rep.Violations)
	}
}

// takeover doctors h: agent a owned by process old (incarnation 1, lease
// 1), a duplicate (incarnation 2) started after revision 16 that took the
// name over at 18 on lease 2; the old one was told at once.
func takeover(h *History) *Duplicate {
	t0 := time.Date(2026, 11, 25, 12, 5, 0, 0, time.UTC)
	h.RecordOwner(OwnerWrite{Agent: "a", ModRev: 15, Lease: 1, Process: "old"})
	h.RecordOwner(OwnerWrite{Agent: "a", ModRev: 18, Lease: 2, Process: "new"})
	d := &Duplicate{Agent: "a", Old: 1, New: 2, StartRev: 16, Started: t0, Bound: 10 * time.Second}
	h.AddDuplicate(d)
	h.Displaced(d, t0.Add(time.Second))
	h.ChannelsClosed(d)
	return d
}

// lateTimeout doctors h: plugin a/p2 did not read its channel around round
// n's start, and round n recorded it timed_out.
func lateTimeout(h *History, n uint64) {
	r := lastRound(h, n)
	r.Acked, r.TimedOut = r.Acked[:1], []schema.PluginID{{Agent: "a", Plugin: "p2"}}
	h.RecordLate(LateWindow{Agent: "a", Plugin: "p2", Incarnation: 1, From: r.StartedAt.Add(-time.Second), Until: r.StartedAt.Add(time.Second)})
}

// TestCheckerNewFaultsPass: the new fault classes' good outcomes are no
// violations: a take-over the displaced process heeded, a late taker
// retried and delivered by the next round, 1 KiB error texts cut to their
// cap, 128-character names.
func TestCheckerNewFaultsPass(t *testing.T) {
	h := goodHistory()
	d := takeover(h)
	// An event the displaced process's plugin took just before Done fired,
	// stamped just after it (At is taken after the receive): its wait
	// began before Done, so it is no delivery after Done.
	h.RecordEvent(Event{Agent: "a", Plugin: "p1", Incarnation: 1, Revision: 2, Status: schema.NotActive,
		WaitFrom: d.DoneAt.Add(-time.Millisecond), At: d.DoneAt.Add(time.Millisecond)})
	// The displaced process's ack of round 1, started (at 20) before a
	// take-over at 25, written at 26: in flight, not a violation.
	h.Owners[len(h.Owners)-1].ModRev = 25
	h.RecordKeyWrite(KeyWrite{Ack: true, Agent: "a", Plugin: "p2", ModRev: 26, Lease: 1, Revision: 1})
	h.RecordKeyWrite(KeyWrite{Agent: "a", Plugin: "p1", ModRev: 25, Lease: 2})
	h.RecordKeyWrite(KeyWrite{Ack: true, Agent: "a", Plugin: "p1", ModRev: 19, Lease: 2, Revision: 2,
		Error: schema.Cut(strings.Repeat("<&>", 400), schema.MaxAckErrorLen)})
	lateTimeout(h, 1)
	h.RecordRequest("/resync/requests/operator/r1", schema.Request{Cause: schema.CauseError, RetryOf: 1}, 31, false)
	h.WriteBudget = 16 << 10
	h.RecordSize(RecordSize{Key: "/resync/rounds/2/agents/a", Agent: "a", ModRev: 40, Bytes: 8000})
	lastRound(h, 2).Errors = map[string]string{"a/p2": schema.Cut(strings.Repeat("<", 2000), schema.MaxAckErrorLen)}
	long := schema.PluginID{Agent: longName("a-"), Plugin: longName("p-")}
	h.AddIncarnation(3, long.Agent, []string{long.Plugin})
	r := lastRound(h, 2)
	r.Participants = append(slices.Clone(r.Participants), long)
	r.Acked = append(slices.Clone(r.Acked), long)
	r.Counts.Participants++
	h.RecordAck(AckSent{Agent: long.Agent, Plugin: long.Plugin, Incarnation: 3, Revision: 2, Result: schema.ResultOK})
	// A parked join taken after the next plugin's Started: not against
	// registration order. q1 stopped reading until t1+2s, but took its
	// join only at t1+5s, once the dispatcher was idle again (q2 had held
	// it until its ack timeout: chaos seed 777 saw it).
	t1 := time.Date(2026, 11, 25, 12, 10, 0, 0, time.UTC)
	h.AddIncarnation(4, "b", []string{"q1", "q2"})
	h.RecordEvent(Event{Agent: "b", Plugin: "q2", Incarnation: 4, Revision: 2, Status: schema.Started, Join: true, At: t1})
	h.RecordEvent(Event{Agent: "b", Plugin: "q1", Incarnation: 4, Revision: 2, Status: schema.Started, Join: true, At: t1.Add(5 * time.Second)})
	h.RecordLate(LateWindow{Agent: "b", Plugin: "q1", Incarnation: 4, From: t1.Add(-time.Second), Until: t1.Add(2 * time.Second)})
	for _, p := range []string{"q1", "q2"} {
		h.RecordAck(AckSent{Agent: "b", Plugin: p, Incarnation: 4, Revision: 2, Result: schema.ResultOK})
	}
	// Revision 2 again in a new epoch (the revision record was lost and
	// the coordinator recovered from the round records, reusing its
	// number: seed 20261213): delivered again, not twice.
	h.RecordEvent(Event{Agent: "b", Plugin: "q2", Incarnation: 4, Revision: 2, Epoch: "e2", Status: schema.Started, At: t1.Add(time.Minute)})
	rep := h.Check()
	if len(rep.Violations) != 0 {
		t.Fatalf("violations: %q", rep.Violations)
	}
	if rep.Takeovers != 1 || rep.InflightAcks != 1 || rep.OwnedWrites != 1 || rep.LateTimeouts != 1 || rep.TextsChecked != 2 || rep.LongNames != 1 {
		t.Errorf("checked too little: %s", rep.Summary())
	}
}

func backoffViolations(r *Report) []string {
	var out []string
	for _, v := range r.Violations {
		if strings.Contains(v, "backoff") || strings.Contains(v, "Close of") {
			out = append(out, v)
		}
	}
	return out
}

// seams doctors h to check the rules of issue 24: a 100 ms to 1 s backoff
// with 500 ms of slack, a 2 s agent TTL with 1 s of slack.
func seams(h *History) {
	h.Backoff = BackoffConfig{Min: 100 * time.Millisecond, Max: time.Second, Slack: 10 * time.Millisecond}
	h.RetrySlack = 500 * time.Millisecond
	h.AgentTTL, h.OwnerSlack = 2*time.Second, time.Second
}

// failedJoin doctors h: agent b (incarnation 2, plugin q) registered after
// round 2 finished and AckErrored its join resync (revision 2) at etcd
// revision mod, after after; it returns when.
func failedJoin(h *History, mod int64, after time.Duration) time.Time {
	at := time.Date(2026, 11, 25, 12, 3, 0, 0, time.UTC).Add(after)
	h.AddIncarnation(2, "b", []string{"q"})
	h.Incarnations[2].Began = at.Add(-time.Second)
	h.RecordKeyWrite(KeyWrite{Agent: "b", Plugin: "q", ModRev: mod - 2, Lease: 7, At: at.Add(-time.Second)})
	h.RecordEvent(Event{Agent: "b", Plugin: "q", Incarnation: 2, Revision: 2, Status: schema.Started, Join: true, At: at.Add(-100 * time.Millisecond)})
	h.RecordAck(AckSent{Agent: "b", Plugin: "q", Incarnation: 2, Revision: 2, Result: schema.ResultError, At: at})
	h.RecordKeyWrite(KeyWrite{Ack: true, Agent: "b", Plugin: "q", ModRev: mod, Lease: 7, Revision: 2, Result: schema.ResultError, At: at})
	h.FinalRevision = 0 // b acks no final round here
	return at
}

// roundFor doctors h: round n, started at etcd revision mod at start with
// participants parts (all acked, each with its ok ack), finished a second
// later, by leader.
func roundFor(h *History, n uint64, mod int64, start time.Time, leader string, parts ...schema.PluginID) {
	deadline := start.Add(10 * time.Second)
	rev := schema.Revision{Revision: n, State: schema.Started, Reason: "r", Cause: schema.CauseError, Participants: len(parts),
		StartedAt: start, Deadline: deadline, Leader: leader}
	round := coordinator.RoundView{Round: schema.Round{Revision: n, State: schema.Started, Reason: "r", Cause: schema.CauseError,
		Counts: schema.RoundCounts{Participants: len(parts), Pending: len(parts)}, StartedAt: start, Deadline: deadline, StartedBy: leader}, Participants: parts}
	h.RecordRoundWrite(RoundWrite{ModRev: mod, Key: n, Round: round})
	h.RecordRevWrite(RevWrite{ModRev: mod, Rec: rev})
	for _, p := range parts {
		h.RecordAck(AckSent{Agent: p.Agent, Plugin: p.Plugin, Revision: n, Result: schema.ResultOK})
	}
	rev.State, rev.FinishedAt = schema.NotActive, start.Add(time.Second)
	round.State, round.FinishedAt, round.FinishedBy = schema.NotActive, rev.FinishedAt, leader
	round.Acked, round.Counts.Acked, round.Counts.Pending = parts, len(parts), 0
	h.RecordRoundWrite(RoundWrite{ModRev: mod + 1, Key: n, Round: round})
	h.RecordRevWrite(RevWrite{ModRev: mod + 1, Rec: rev})
}

// unowned doctors h: agent a's incarnation 1 claims its name at 12:20,
// loses it at 12:20:10 and gets it back only at 12:20:20, reachable all
// along; the recording ends at 12:21.
func unowned(h *History) time.Time {
	t := time.Date(2026, 11, 25, 12, 20, 0, 0, time.UTC)
	h.Incarnations[1].Began = t.Add(-100 * time.Millisecond)
	h.RecordOwner(OwnerWrite{Agent: "a", ModRev: 15, Lease: 1, Process: "one", At: t})
	h.RecordOwner(OwnerWrite{Agent: "a", ModRev: 60, Deleted: true, At: t.Add(10 * time.Second)})
	h.RecordOwner(OwnerWrite{Agent: "a", ModRev: 61, Lease: 3, Process: "one", At: t.Add(20 * time.Second)})
	h.End = t.Add(time.Minute)
	return t
}

// TestCheckerSeamsPass: the good outcomes of issue 24's rules are no
// violations: a round finished by a successor with exactly its Started
// set (a plugin that left counted departed), a failed join retried within
// the backoff bound, one retried after the round then running, one whose
// plugin registered again meanwhile, and a name unowned only while its
// process was cut off.
func TestCheckerSeamsPass(t *testing.T) {
	h := goodHistory()
	seams(h)
	parts := []schema.PluginID{{Agent: "a", Plugin: "p1"}, {Agent: "a", Plugin: "p2"}}
	h.RecordStartSet(1, parts)
	h.RecordStartSet(2, parts)
	// c0 dies at etcd revision 45, during round 2; c1 (term 45) finishes it.
	h.RecordElection("/resync/election/1", "", 10, 45, true)
	h.RecordElection("/resync/election/2", "c1", 45, 45, false)
	r := lastRound(h, 2)
	r.FinishedBy = "c1@45"
	for i := range h.RevWrites {
		if h.RevWrites[i].ModRev == 50 {
			h.RevWrites[i].Rec.Leader = "c1@45"
		}
	}
	r.Acked, r.Departed = parts[:1], parts[1:]
	r.Counts.Acked, r.Counts.Departed = 1, 1
	// b/q fails its join at 12:03 (revision 55): the retry, round 3, starts
	// 1.2 s later (backoff bound 1 s + 500 ms slack).
	q := schema.PluginID{Agent: "b", Plugin: "q"}
	at := failedJoin(h, 55, 0)
	roundFor(h, 3, 60, at.Add(1200*time.Millisecond), "c1@45", q)
	h.RecordStartSet(3, []schema.PluginID{q})
	// It fails round 3 as well (at revision 62, 12:03:02), while round 4
	// (of agent a, 12:03:02.5 to 12:03:06.5) runs: round 5 includes it at
	// 12:03:07 after round 4 finished.
	h.RecordKeyWrite(KeyWrite{Ack: true, Agent: "b", Plugin: "q", ModRev: 62, Lease: 7, Revision: 3, Result: schema.ResultError, At: at.Add(2 * time.Second)})
	roundFor(h, 4, 63, at.Add(2500*time.Millisecond), "c1@45", parts[0])
	lastRound(h, 4).FinishedAt = at.Add(6500 * time.Millisecond)
	roundFor(h, 5, 70, at.Add(7*time.Second), "c1@45", q)
	// Round 4 would finish 22.5 s past its deadline, but every agent and
	// coordinator was out for 27 s meanwhile (an etcd restore).
	lastRound(h, 4).FinishedAt = at.Add(35 * time.Second)
	h.RecordUnreachable("", at.Add(3*time.Second), at.Add(30*time.Second))
	// It times out its join at 12:03:10 (revision 75) and its registration
	// is deleted with its lease right after: exempt.
	h.RecordKeyWrite(KeyWrite{Ack: true, Agent: "b", Plugin: "q", ModRev: 75, Lease: 7, Revision: 5, Result: schema.ResultTimeout, At: at.Add(10 * time.Second)})
	h.RecordKeyWrite(KeyWrite{Agent: "b", Plugin: "q", ModRev: 76, Lease: 7, Deleted: true, At: at.Add(11 * time.Second)})
	// Round 6 records it failed at 81, after its registration went (its
	// error ack came first; seed 20261214): no round can include it
	// until it registers again, so none is due.
	roundFor(h, 6, 80, at.Add(12*time.Second), "c1@45", q)
	r6 := lastRound(h, 6)
	r6.Acked, r6.Failed, r6.Counts.Acked, r6.Counts.Failed = nil, []schema.PluginID{q}, 0, 1
	h.RecordAck(AckSent{Agent: "b", Plugin: "q", Incarnation: 2, Revision: 6, Result: schema.ResultError, At: at.Add(12 * time.Second)})
	// Agent a unowned for 10 s, 9 of them cut off: 2 s after the heal.
	t0 := unowned(h)
	h.RecordUnreachable("a", t0.Add(9*time.Second), t0.Add(18*time.Second))
	h.Incarnations[2].Ended = at.Add(12 * time.Second)
	h.Incarnations[2].Alive = false
	h.RecordOwner(OwnerWrite{Agent: "b", ModRev: 52, Lease: 7, Process: "bee", At: at.Add(-time.Second)})
	rep := h.Check()
	if len(rep.Violations) != 0 {
		t.Fatalf("violations: %q", rep.Violations)
	}
	if rep.StartSets != 3 || rep.Resumes != 1 || rep.RetriesChecked != 3 || rep.OwnerGaps < 2 {
		t.Errorf("checked too little: %s", rep.Summary())
	}
}

// TestCheckerExcusesOnlyACompactedStart: a successor that resumed an
// all-scope round with other participants than its Started set took the
// documented fallback (its records incomplete, its start compacted away):
// counted, no violation, only when etcd was compacted past the round's
// start before its finish. Otherwise it is a violation.
func TestCheckerExcusesOnlyACompactedStart(t *testing.T) {
	for _, tc := range []struct {
		name     string
		compact  int64 // 0: none
		fallback bool
	}{
		{"compacted past the start before the finish", 45, true},
		{"compacted only up to the start", 40, false},
		{"compacted after the finish", 50, false},
		{"never compacted", 0, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := goodHistory()
			parts := []schema.PluginID{{Agent: "a", Plugin: "p1"}, {Agent: "a", Plugin: "p2"}}
			h.RecordStartSet(1, parts)
			h.RecordStartSet(2, parts[:1]) // a/p2 registered after round 2's start
			// c0 dies at etcd revision 45, during round 2; c1 (term 45)
			// resumes it with the live registrations and finishes it.
			h.RecordElection("/resync/election/1", "", 10, 45, true)
			h.RecordElection("/resync/election/2", "c1", 45, 45, false)
			lastRound(h, 2).FinishedBy = "c1@45"
			for i := range h.RevWrites {
				if h.RevWrites[i].ModRev == 50 {
					h.RevWrites[i].Rec.Leader = "c1@45"
				}
			}
			if tc.compact > 0 {
				h.RecordCompaction(tc.compact)
			}
			rep := h.Check()
			if tc.fallback {
				if len(rep.Violations) != 0 || rep.ResumeFallbacks != 1 {
					t.Fatalf("want the fallback counted and no violation: %s %q", rep.Summary(), rep.Violations)
				}
				return
			}
			want := "round 2 was finished by c1@45 after c0@10 started it with participants it did not have at Started: a/p2"
			if rep.ResumeFallbacks != 0 || !slices.Contains(rep.Violations, want) {
				t.Fatalf("want %q and no fallback counted: %s %q", want, rep.Summary(), rep.Violations)
			}
		})
	}
}

// TestCheckerDatesOwnerWritesByEtcd: the observer's own times of owner
// writes lag with its watch; where the revision probes bracket a write,
// the unowned rule dates it by etcd's commit instead. A delete and the
// re-claim the observer saw 10 s apart, committed 1 s apart, are no
// violation; committed 10 s apart, they are.
func TestCheckerDatesOwnerWritesByEtcd(t *testing.T) {
	probes := func(h *History, t0 time.Time, delAt, putAt time.Duration) {
		for _, p := range []struct {
			rev int64
			at  time.Duration
		}{{14, -time.Second}, {59, delAt - 50*time.Millisecond}, {60, delAt}, {60, putAt - 50*time.Millisecond}, {61, putAt}, {62, time.Minute}} {
			h.RecordRevTime(RevTime{Rev: p.rev, Sent: t0.Add(p.at - 10*time.Millisecond), Recv: t0.Add(p.at)})
		}
	}
	h := goodHistory()
	seams(h)
	t0 := unowned(h) // the observer saw the delete at t0+10s, the put at t0+20s
	probes(h, t0, 5*time.Second, 6*time.Second)
	if r := h.Check(); len(r.Violations) > 0 {
		t.Fatalf("a 1 s gap by etcd's commits was flagged: %v", r.Violations)
	}
	h = goodHistory()
	seams(h)
	t0 = unowned(h)
	probes(h, t0, 5*time.Second, 15*time.Second)
	r := h.Check()
	if !slices.ContainsFunc(r.Violations, func(v string) bool { return strings.Contains(v, "had no owner for") }) {
		t.Fatalf("a 10 s gap by etcd's commits was not flagged: %v", r.Violations)
	}
}
