package main

import (
	"strconv"

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
	return size{Agents: r.Agents, Plugins: r.Plugins, Target: r.Targeted, Wave: r.Wave}
}
