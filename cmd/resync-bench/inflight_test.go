package main

import (
	"testing"
	"time"
)

// TestSpanOf checks the sweep of agents in flight on spans built by hand:
// each agent from its first Started to its last ack Txn sent (peak), and
// to its last ack committed (busy).
func TestSpanOf(t *testing.T) {
	t0 := time.Unix(1000, 0)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	span := func(rev uint64, start, sent, done int) *agentSpan {
		s := &agentSpan{}
		s.started(rev, at(start))
		s.acked(rev, at(start))
		s.ackWritten(rev, at(sent), at(done))
		return s
	}
	spans := []*agentSpan{
		span(7, 0, 10, 12),  // [0, 10]
		span(7, 5, 20, 21),  // [5, 20]
		span(7, 10, 30, 31), // starts as the first ends: no overlap with it
		span(7, 15, 16, 18), // [15, 16]: 3 in flight with the 2nd and 3rd
		span(6, 0, 100, 100),
		{},
	}
	got := spanOf(spans, 7)
	want := RoundSpan{Agents: 4, Peak: 3, Busy: (12 + 16 + 21 + 3) * time.Millisecond}
	if got != want {
		t.Errorf("spanOf = %+v, want %+v", got, want)
	}
	if got := spanOf(spans, 8); got != (RoundSpan{}) {
		t.Errorf("spanOf a round no agent took = %+v, want zero", got)
	}
	// A later Started of another round starts the agent's span afresh.
	spans[0].started(8, at(50))
	if got := spanOf(spans, 8); got.Agents != 1 || got.Busy != 0 || got.Peak != 1 {
		t.Errorf("spanOf the new round = %+v, want 1 agent, no busy time yet, peak 1", got)
	}
}
