package integration

import (
	"sort"
	"time"

	"github.com/resyncd/resync/coordinator"
	"github.com/resyncd/resync/schema"
)

// WaveAgentWrite is one write of a wave round's per-agent record
// (rounds/<N>/agents/<agent> with a wave state), as the observer saw it in
// etcd's order: the leader records an agent started in the Txn that wakes
// it, and done in the one that tells it NotActive, so these writes are the
// window as etcd holds it.
type WaveAgentWrite struct {
	ModRev int64
	Round  uint64
	Agent  string
	Wave   string // schema.AgentWaiting, AgentStarted, AgentDone, AgentSkipped
	// StartedAt and DoneAt are the leader's times in the record (zero
	// until the agent started, or was done): its own deadline is
	// StartedAt plus the round's RoundDeadline.
	StartedAt, DoneAt time.Time
}

// RecordWaveAgent records a write of a wave round's per-agent record.
func (h *History) RecordWaveAgent(w WaveAgentWrite) { appendLocked(h, &h.WaveAgents, w) }

// waveRound is what checkWaves knows of one wave round.
type waveRound struct {
	maxInFlight int
	abortAt     int64 // first summary write saying aborted; 0: none
	finished    bool
	agents      []WaveAgentWrite
}

// waveRounds gathers the wave rounds of the history from their summary
// writes (a plan) and per-agent writes, each in etcd's order.
func (h *History) waveRounds() map[uint64]*waveRound {
	rounds := map[uint64]*waveRound{}
	for _, w := range h.RoundWrites {
		if w.Malformed || w.Round.Wave == nil {
			continue
		}
		wr := rounds[w.Key]
		if wr == nil {
			wr = &waveRound{maxInFlight: w.Round.Wave.MaxInFlight}
			rounds[w.Key] = wr
		}
		if w.Round.Wave.Aborted != "" && (wr.abortAt == 0 || w.ModRev < wr.abortAt) {
			wr.abortAt = w.ModRev
		}
		wr.finished = wr.finished || w.Round.State == schema.NotActive
	}
	for _, a := range h.WaveAgents {
		if wr := rounds[a.Round]; wr != nil {
			wr.agents = append(wr.agents, a)
		}
	}
	for _, wr := range rounds {
		sort.SliceStable(wr.agents, func(i, j int) bool { return wr.agents[i].ModRev < wr.agents[j].ModRev })
	}
	return rounds
}

// checkWaves checks every wave round (issue 27): the in-flight bound holds
// at every start; no agent starts twice (across failovers too) nor after
// the abort was written; an agent is skipped only after an abort and only
// if it never started, and its plugins got no Started of the round (a
// join resync aside); a finished round left no agent waiting or in flight
// (a failover lost none).
func (h *History) checkWaves(r *Report) {
	for n, wr := range h.waveRounds() {
		r.WaveRounds++
		if wr.abortAt != 0 {
			r.WaveAborted++
		}
		state := h.checkWindow(r, n, wr)
		for a, st := range state {
			if wr.finished && (st == schema.AgentWaiting || st == schema.AgentStarted) {
				r.violate("wave round %d finished with agent %s still %s: an agent was lost", n, a, st)
			}
			if st == schema.AgentSkipped {
				r.WaveSkipped++
			}
		}
		for _, e := range h.Events {
			if e.Revision == n && e.Status == schema.Started && !e.Join && state[e.Agent] == schema.AgentSkipped {
				r.violate("wave round %d: agent %s was skipped but its plugin %s got Started", n, e.Agent, e.Plugin)
			}
		}
	}
}

// checkWindow replays round n's per-agent writes and returns each agent's
// last state.
func (h *History) checkWindow(r *Report, n uint64, wr *waveRound) map[string]string {
	state := map[string]string{}
	inFlight := 0
	for _, w := range wr.agents {
		prev := state[w.Agent]
		switch w.Wave {
		case schema.AgentStarted:
			if prev == schema.AgentStarted || prev == schema.AgentDone || prev == schema.AgentSkipped {
				r.violate("wave round %d: agent %s started again at etcd revision %d (it was %s)", n, w.Agent, w.ModRev, prev)
				continue
			}
			if wr.abortAt != 0 && w.ModRev > wr.abortAt {
				r.violate("wave round %d: agent %s started at etcd revision %d, after the abort at %d", n, w.Agent, w.ModRev, wr.abortAt)
			}
			if inFlight++; wr.maxInFlight > 0 && inFlight > wr.maxInFlight {
				r.violate("wave round %d: %d agents in flight at etcd revision %d, above its bound %d", n, inFlight, w.ModRev, wr.maxInFlight)
			}
		case schema.AgentDone:
			if prev == schema.AgentStarted {
				inFlight--
			}
		case schema.AgentSkipped:
			if prev == schema.AgentStarted || prev == schema.AgentDone {
				r.violate("wave round %d: agent %s skipped at etcd revision %d after it started", n, w.Agent, w.ModRev)
			}
			if wr.abortAt == 0 || w.ModRev < wr.abortAt {
				r.violate("wave round %d: agent %s skipped at etcd revision %d, not after an abort", n, w.Agent, w.ModRev)
			}
		}
		state[w.Agent] = w.Wave
	}
	return state
}

// checkWaveDeadlines checks a completed wave round's timing, which has no
// round-wide deadline: each agent's deadline is its own start plus the
// round's RoundDeadline (Deadline - StartedAt of the summary), so an
// agent is done within that plus the allowance; the round finishes within
// the allowance after the last of its agents' deadlines, completions and
// its abort (then nothing is pending). An outage of every agent (a
// restore) adds its length, as for any round.
func (h *History) checkWaveDeadlines(r *Report, rd coordinator.RoundView) {
	roundDeadline := rd.Deadline.Sub(rd.StartedAt)
	last := map[string]WaveAgentWrite{}
	for _, a := range h.WaveAgents {
		if a.Round == rd.Revision {
			last[a.Agent] = a // in etcd's order: the last write stands
		}
	}
	due := rd.StartedAt
	if rd.Wave != nil && rd.Wave.AbortedAt.After(due) {
		due = rd.Wave.AbortedAt
	}
	if len(last) == 0 && rd.Agents > 0 && !rd.Truncated {
		r.violate("wave round %d of %d agents completed, but the observer saw none of its per-agent wave records", rd.Revision, rd.Agents)
	}
	for agent, a := range last {
		if a.StartedAt.IsZero() {
			continue // never started: skipped, or departed while waiting
		}
		r.WaveAgents++
		own := a.StartedAt.Add(roundDeadline)
		if !a.DoneAt.IsZero() {
			if late := a.DoneAt.Sub(own) - h.outage(a.StartedAt, a.DoneAt); late > h.DeadlineAllowance {
				r.violate("wave round %d: agent %s was done %v after its own deadline (allowance %v)", rd.Revision, agent, late.Round(time.Millisecond), h.DeadlineAllowance)
			}
			own = minTime(own, a.DoneAt)
		}
		due = maxTime(due, own)
	}
	for _, a := range last {
		due = maxTime(due, a.DoneAt)
	}
	if late := rd.FinishedAt.Sub(due) - h.outage(rd.StartedAt, rd.FinishedAt); late > h.DeadlineAllowance {
		r.violate("wave round %d finished %v after the last of its agents' deadlines, completions and its abort (allowance %v)", rd.Revision, late.Round(time.Millisecond), h.DeadlineAllowance)
	}
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}
