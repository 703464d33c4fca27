package main

import (
	"fmt"
	"strconv"
	"time"

	"github.com/resyncd/resync/schema"
)

// Wave sizes (AxP~W, AxP~W%, AxP~budget). A size with a window runs its
// rounds in waves: ~W and ~W% ask for them on each request (schema.Wave's
// MaxInFlight, issue #27); ~budget runs the coordinator with a window of
// -budget-window agents for every round (coordinator.Config.Wave, what
// resyncd --max-in-flight sets: the write budget of issue #26) and asks
// for nothing on the requests. Its rows report, besides the round tables'
// columns, the peak agents in flight and the ideal window from the fleet's
// own timestamps (inflight.go), and every row the watch events and reads
// of the fleet's clients (wakeio.go). A wave size has no floors and no
// barrier: they would repeat those of the size without waves, which
// release every agent at once.

// waveBudget is the window of a size written AxP~budget: -budget-window
// agents, set on the coordinator.
const waveBudget = "budget"

// Where a wave row's window was set (RoundRow.WindowSetOn).
const (
	windowOnRequest     = "request"
	windowOnCoordinator = "coordinator"
)

// waves are the wave knobs of a size's rounds: those its requests carry
// (nil: none) and the coordinator's, for every round.
func (s size) waves(budget int) (req *schema.Wave, coord schema.Wave) {
	switch s.Wave {
	case "":
		return nil, schema.Wave{}
	case waveBudget:
		return nil, schema.Wave{MaxInFlight: schema.Limit(strconv.Itoa(budget))}
	}
	return &schema.Wave{MaxInFlight: schema.Limit(s.Wave)}, schema.Wave{}
}

// window is the size's window in agents, resolved as the coordinator
// resolves it against a measured round's agents (schema.Plan); 0: no
// waves.
func (s size) window(budget int) int {
	req, coord := s.waves(budget)
	ws := []schema.Wave{coord}
	if req != nil {
		ws = append(ws, *req)
	}
	plan, _, ok := schema.Plan(s.measured().Agents, ws...)
	if !ok {
		return 0
	}
	return plan.MaxInFlight
}

// size is the row's size as the tables name it.
func (r RoundRow) size() size {
	return size{Agents: r.Agents, Plugins: r.Plugins, Target: r.Targeted, Wave: r.Wave, Reload: time.Duration(r.ReloadMS * float64(time.Millisecond))}
}

// noteRound records measured round rev's agents in flight, asked of the
// fleet before the next round replaces its spans.
func (r *roundRun) noteRound(rev uint64) error {
	fr, err := r.agents.round(r.ctx, rev)
	if err != nil {
		return err
	}
	r.revs = append(r.revs, rev)
	r.spans = append(r.spans, fr.Span)
	return nil
}

// fillWaves fills the row's window, agents in flight, ideal window and
// wake events and reads from the measured rounds, once the fleet's
// clients have received the last round's events (quiet for settleQuiet).
func (r *roundRun) fillWaves() error {
	row := r.row
	row.Wave = r.sz.Wave
	if row.Window = r.sz.window(r.o.budgetWindow); row.Window > 0 {
		row.WindowSetOn = windowOnRequest
		if r.sz.Wave == waveBudget {
			row.WindowSetOn = windowOnCoordinator
		}
	}
	var ideal, resync []time.Duration
	for _, sp := range r.spans {
		row.PeakInFlight = max(row.PeakInFlight, sp.Peak)
		row.SpanAgents = max(row.SpanAgents, sp.Agents)
		if sp.Agents > 0 {
			resync = append(resync, sp.Busy/time.Duration(sp.Agents))
		}
		if w := min(row.Window, sp.Agents); w > 0 {
			ideal = append(ideal, sp.Busy/time.Duration(w))
		}
	}
	row.AgentResync, row.Ideal = tenantDist(resync), dist(ideal)
	row.RoundOverIdeal = ratio(row.Round.P50, row.Ideal.P50)
	c1, err := r.settle()
	if err != nil || r.first == nil {
		return err
	}
	row.OtherIO = otherIO{Events: c1.Other.Events - r.first.Other.Events, Reads: c1.Other.Reads - r.first.Other.Reads}
	for _, rev := range r.revs {
		fr, err := r.agents.round(r.ctx, rev)
		if err != nil {
			return err
		}
		row.IO.add(fr.IO)
	}
	return nil
}

// settleQuiet is how long the fleet's clients must receive no watch event
// before the last round's events count as all in: its finish reaches the
// agents outside a wave window after the window's own NotActive did.
const settleQuiet = 250 * time.Millisecond

// settle waits, at most 30 s, until the fleet's clients received no event
// for settleQuiet, and returns the fleet's counts then.
func (r *roundRun) settle() (fleetCounts, error) {
	var last fleetCounts
	since := time.Now()
	err := waitFor(r.ctx, 30*time.Second, "the fleet's watch events to settle", func() (bool, error) {
		c, err := r.agents.counts(r.ctx)
		if err != nil {
			return false, err
		}
		if c.Events != last.Events {
			since = time.Now()
		}
		last = c
		return time.Since(since) >= settleQuiet, nil
	})
	return last, err
}

// peerOf is the row of the same fleet, target and mode without waves, if
// the run has one.
func peerOf(rows []RoundRow, r RoundRow) *RoundRow {
	for i, x := range rows {
		if x.Wave == "" && x.Agents == r.Agents && x.Plugins == r.Plugins && x.Targeted == r.Targeted && x.Mode == r.Mode && x.ReloadMS == r.ReloadMS {
			return &rows[i]
		}
	}
	return nil
}

// perAgent is n per round and participating agent.
func perAgent(n int64, r RoundRow) float64 {
	if r.Round.N == 0 {
		return 0
	}
	return float64(n) / float64(r.Round.N*r.size().measured().Agents)
}

// outsideEvents are the watch events of a row's measured rounds that no
// agent in a wave window needed: a shard's Started (it wakes the whole
// shard), own-key events of agents outside the round, events no round
// claims. A wave round's agents need their own key's Started and
// NotActive, and the round's end reaches every agent through its shard
// (NotActive, after the window closed): none of those counts.
func (r RoundRow) outsideEvents() int64 {
	return r.IO.ShardStarted + r.IO.OutsideEvents + r.OtherIO.Events
}

// outsideReads are the Range RPCs no agent in a window needed: anything
// but a participating agent's read of its participation record.
func (r RoundRow) outsideReads() int64 { return r.IO.OutsideReads + r.OtherIO.Reads }

// reads is every Range RPC of the row's measured rounds.
func (r RoundRow) reads() int64 { return r.IO.Reads + r.outsideReads() }

// events is every watch event of the row's measured rounds.
func (r RoundRow) events() int64 { return r.IO.Events() + r.OtherIO.Events }

func (r RoundRow) windowText() string {
	if r.WindowSetOn == windowOnCoordinator {
		return fmt.Sprintf("%d (coordinator)", r.Window)
	}
	return strconv.Itoa(r.Window)
}
