package integration

import (
	"strings"
	"testing"

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
