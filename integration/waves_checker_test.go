package integration

import (
	"strings"
	"testing"
	"time"

	"github.com/resyncd/resync/coordinator"
	"github.com/resyncd/resync/schema"
)

// goodWaveHistory is a valid wave round 3 of agents a, b, c at
// max-in-flight 1: recorded waiting, then started and done one at a time,
// then the summary NotActive.
func goodWaveHistory() *History {
	h := NewHistory(0)
	plan := &schema.WavePlan{MaxInFlight: 1, Phase: schema.PhaseRolling}
	h.RecordRoundWrite(RoundWrite{ModRev: 100, Key: 3, Round: coordinator.RoundView{Round: schema.Round{Revision: 3, State: schema.Started, Wave: plan}}})
	mod := int64(101)
	rec := func(agent, wave string) {
		h.RecordWaveAgent(WaveAgentWrite{ModRev: mod, Round: 3, Agent: agent, Wave: wave})
		mod++
	}
	for _, a := range []string{"a", "b", "c"} {
		rec(a, schema.AgentWaiting)
	}
	for _, a := range []string{"a", "b", "c"} {
		rec(a, schema.AgentStarted)
		h.RecordEvent(Event{Agent: a, Plugin: "p", Revision: 3, Status: schema.Started})
		rec(a, schema.AgentDone)
	}
	h.RecordRoundWrite(RoundWrite{ModRev: 200, Key: 3, Round: coordinator.RoundView{Round: schema.Round{Revision: 3, State: schema.NotActive, Wave: plan}}})
	return h
}

// setWave changes the wave state of agent's write at etcd revision mod.
func setWave(h *History, mod int64, agent, wave string) {
	for i := range h.WaveAgents {
		if h.WaveAgents[i].ModRev == mod && h.WaveAgents[i].Agent == agent {
			h.WaveAgents[i].Wave = wave
		}
	}
}

// abortAt records the plan aborted at etcd revision mod.
func abortAt(h *History, mod int64) {
	plan := &schema.WavePlan{MaxInFlight: 1, Phase: schema.PhaseRolling, Aborted: "3 agents failed"}
	h.RecordRoundWrite(RoundWrite{ModRev: mod, Key: 3, Round: coordinator.RoundView{Round: schema.Round{Revision: 3, State: schema.Started, Wave: plan}}})
}

// The wave rules flag each doctored history (issue 27's checker rules:
// the in-flight bound, nothing started after an abort, skipped agents
// never started, a failover keeps the plan) and pass the good one.
func TestCheckerCatchesWaveViolations(t *testing.T) {
	r := &Report{}
	goodWaveHistory().checkWaves(r)
	if len(r.Violations) != 0 || r.WaveRounds != 1 {
		t.Fatalf("the good wave history: %d wave rounds, violations %v", r.WaveRounds, r.Violations)
	}
	for _, tc := range []struct {
		name   string
		doctor func(h *History)
		want   string
	}{
		{"window exceeded", func(h *History) {
			h.RecordWaveAgent(WaveAgentWrite{ModRev: 104, Round: 3, Agent: "d", Wave: schema.AgentStarted}) // with a in flight
		}, "2 agents in flight at etcd revision 104, above its bound 1"},
		{"started after the abort", func(h *History) { abortAt(h, 105) }, "agent c started at etcd revision 108, after the abort at 105"},
		{"skipped after it started", func(h *History) {
			abortAt(h, 106)
			setWave(h, 109, "c", schema.AgentSkipped)
		}, "agent c skipped at etcd revision 109 after it started"},
		{"skipped without an abort", func(h *History) {
			h.WaveAgents = h.WaveAgents[:7] // c's start and done gone
			h.RecordWaveAgent(WaveAgentWrite{ModRev: 150, Round: 3, Agent: "c", Wave: schema.AgentSkipped})
		}, "agent c skipped at etcd revision 150, not after an abort"},
		{"a skipped agent's plugin got Started", func(h *History) {
			h.WaveAgents = h.WaveAgents[:7]
			abortAt(h, 140)
			h.RecordWaveAgent(WaveAgentWrite{ModRev: 150, Round: 3, Agent: "c", Wave: schema.AgentSkipped})
		}, "agent c was skipped but its plugin p got Started"},
		{"started twice across a failover", func(h *History) {
			h.RecordWaveAgent(WaveAgentWrite{ModRev: 150, Round: 3, Agent: "a", Wave: schema.AgentStarted})
		}, "agent a started again at etcd revision 150 (it was done)"},
		{"an agent lost in a failover", func(h *History) {
			h.WaveAgents = h.WaveAgents[:len(h.WaveAgents)-1] // c never done
		}, "finished with agent c still started: an agent was lost"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := goodWaveHistory()
			tc.doctor(h)
			r := &Report{}
			h.checkWaves(r)
			if !strings.Contains(strings.Join(r.Violations, "\n"), tc.want) {
				t.Fatalf("violations %v, want one with %q", r.Violations, tc.want)
			}
		})
	}
}

// timedWaveHistory is goodWaveHistory with times, completed: round 3
// starts at t0 (RoundDeadline 10 s); a runs 0-1 s, b 1-12 s (past the
// round's deadline, within its own), c 12-13 s; the round finishes at
// 13 s with every participant acked.
func timedWaveHistory() (*History, time.Time) {
	h := goodWaveHistory()
	h.DeadlineAllowance = time.Second
	t0 := time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)
	span := map[string][2]time.Duration{"a": {0, time.Second}, "b": {time.Second, 12 * time.Second}, "c": {12 * time.Second, 13 * time.Second}}
	for i := range h.WaveAgents {
		w := &h.WaveAgents[i]
		if w.Wave == schema.AgentStarted || w.Wave == schema.AgentDone {
			w.StartedAt = t0.Add(span[w.Agent][0])
		}
		if w.Wave == schema.AgentDone {
			w.DoneAt = t0.Add(span[w.Agent][1])
		}
	}
	parts := []schema.PluginID{{Agent: "a", Plugin: "p"}, {Agent: "b", Plugin: "p"}, {Agent: "c", Plugin: "p"}}
	for i := range h.RoundWrites {
		rd := &h.RoundWrites[i].Round
		rd.StartedAt, rd.Deadline, rd.Participants = t0, t0.Add(10*time.Second), parts
		rd.Counts.Participants = len(parts)
		if rd.State == schema.NotActive {
			rd.FinishedAt, rd.Acked = t0.Add(13*time.Second), parts
		}
	}
	return h, t0
}

// The round rules know waves: a wave round's agents have their own
// deadlines (a round past its summary's deadline is no violation), and
// skipped is the outcome of an aborted wave round only. Each doctored
// history is flagged, the good one is not.
func TestCheckerWaveRoundRules(t *testing.T) {
	h, t0 := timedWaveHistory()
	r := &Report{}
	h.checkRounds(r)
	if len(r.Violations) != 0 || r.RoundsCompleted != 1 || r.WaveAgents != 3 {
		t.Fatalf("the good timed wave history: %d rounds, %d agents checked, violations %v", r.RoundsCompleted, r.WaveAgents, r.Violations)
	}
	final := func(h *History) *coordinator.RoundView { return &h.RoundWrites[len(h.RoundWrites)-1].Round }
	for _, tc := range []struct {
		name   string
		doctor func(h *History)
		want   string
	}{
		{"an agent done past its own deadline", func(h *History) {
			for i := range h.WaveAgents {
				if w := &h.WaveAgents[i]; w.Agent == "b" && w.Wave == schema.AgentDone {
					w.DoneAt = t0.Add(14 * time.Second)
				}
			}
			final(h).FinishedAt = t0.Add(14 * time.Second)
		}, "wave round 3: agent b was done 3s after its own deadline"},
		{"finished long after its last agent", func(h *History) {
			final(h).FinishedAt = t0.Add(20 * time.Second)
		}, "wave round 3 finished 7s after the last of its agents' deadlines"},
		{"skipped without an abort", func(h *History) {
			rd := final(h)
			rd.Acked, rd.Skipped = rd.Acked[:2], rd.Acked[2:]
		}, "round 3 lists c/p skipped, but it is no aborted wave round"},
		{"per-agent records never observed", func(h *History) {
			final(h).Agents = 3
			h.WaveAgents = nil
		}, "wave round 3 of 3 agents completed, but the observer saw none of its per-agent wave records"},
		{"a plain round past its deadline", func(h *History) {
			for i := range h.RoundWrites {
				h.RoundWrites[i].Round.Wave = nil
			}
		}, "round 3 finished 3s after its deadline"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h, _ := timedWaveHistory()
			tc.doctor(h)
			r := &Report{}
			h.checkRounds(r)
			if !strings.Contains(strings.Join(r.Violations, "\n"), tc.want) {
				t.Fatalf("violations %v, want one with %q", r.Violations, tc.want)
			}
		})
	}
	t.Run("skipped in an aborted round", func(t *testing.T) {
		h, _ := timedWaveHistory()
		rd := final(h)
		rd.Acked, rd.Skipped = rd.Acked[:2], rd.Acked[2:]
		rd.Wave = &schema.WavePlan{MaxInFlight: 1, Phase: schema.PhaseRolling, Aborted: "aborted by chaos-test", AbortedAt: t0.Add(12 * time.Second)}
		r := &Report{}
		h.checkRounds(r)
		if len(r.Violations) != 0 {
			t.Fatalf("violations %v, want none", r.Violations)
		}
	})
	// A failed join resync's retry taken in by an aborted wave round that
	// skipped the plugin: the plugin's last ack is still the failure, so
	// the aborted round's own retry must include it within the backoff
	// from that round's finish. Round 4 does; without it the checker
	// flags the lost retry.
	skipped := func(retry bool) *Report {
		h := goodHistory()
		seams(h)
		at := failedJoin(h, 55, 0)
		q := schema.PluginID{Agent: "b", Plugin: "q"}
		roundFor(h, 3, 60, at.Add(500*time.Millisecond), "c0@10", q)
		rd := lastRound(h, 3)
		rd.Acked, rd.Skipped = nil, []schema.PluginID{q}
		rd.Wave = &schema.WavePlan{MaxInFlight: 1, Phase: schema.PhaseRolling, Aborted: "aborted by chaos-test"}
		if retry {
			roundFor(h, 4, 70, at.Add(2*time.Second), "c0@10", q)
		}
		r := &Report{}
		h.checkRetries(r)
		return r
	}
	t.Run("a retry skipped by an aborted wave round, retried", func(t *testing.T) {
		if r := skipped(true); len(r.Violations) != 0 || r.RetriesSkipped != 1 || r.RetriesChecked != 2 {
			t.Fatalf("retries_skipped=%d retries_checked=%d violations %v, want 1, 2 and none", r.RetriesSkipped, r.RetriesChecked, r.Violations)
		}
	})
	t.Run("a retry skipped by an aborted wave round, never retried", func(t *testing.T) {
		r := skipped(false)
		if want := "b/q: skipped by aborted wave round 3, its last ack a failure was never included in a later round"; len(r.Violations) != 1 || !strings.Contains(r.Violations[0], want) {
			t.Fatalf("violations %v, want one: %q", r.Violations, want)
		}
	})
	// A successor that resumed the round rewrites its plan: the summary
	// names the leader that started it (term 10), the plan its writer
	// (term 140), checked against the leader at its revision; a rewrite
	// whose plan names the deposed starter is a violation.
	t.Run("a successor's plan rewrite", func(t *testing.T) {
		h, _ := timedWaveHistory()
		h.RecordElection("/resync/election/1", "c0", 10, 10, false)
		h.RecordElection("/resync/election/1", "", 10, 150, true)
		h.RecordElection("/resync/election/2", "c1", 140, 140, false)
		for i := range h.RoundWrites {
			h.RoundWrites[i].Round.StartedBy, h.RoundWrites[i].Round.FinishedBy = "c0@10", "c1@140"
		}
		rewrite := h.RoundWrites[0]
		rewrite.ModRev, rewrite.Round.Wave = 160, &schema.WavePlan{MaxInFlight: 1, Phase: schema.PhaseRolling, Paused: true, WrittenBy: "c1@140"}
		h.RoundWrites = append(h.RoundWrites[:1], rewrite, h.RoundWrites[1])
		r := &Report{}
		h.checkFencing(r)
		if len(r.Violations) != 0 {
			t.Fatalf("violations %v, want none", r.Violations)
		}
		h.RoundWrites[1].Round.Wave.WrittenBy = "c0@10" // the deposed starter rewrote it
		h.checkFencing(r)
		if !strings.Contains(strings.Join(r.Violations, "\n"), "rounds/3 Started (its wave plan rewritten) at 160 by term 10 while term 140 (c1) led") {
			t.Fatalf("violations %v, want the rewrite by a deposed term", r.Violations)
		}
		h.RoundWrites[1].Round.Wave.WrittenBy = "c1@140"
		r = &Report{}
		h.RoundWrites[0].ModRev = 150 // the start itself by a term that no longer leads
		h.checkFencing(r)
		if !strings.Contains(strings.Join(r.Violations, "\n"), "rounds/3 Started at 150 by term 10 while term 140 (c1) led") {
			t.Fatalf("violations %v, want the start by a deposed term", r.Violations)
		}
	})
}
