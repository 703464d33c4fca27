package main

import (
	"slices"
	"sync"
	"time"

	"github.com/resyncd/resync"
)

// agentSpan is one agent's part in the latest round its plugins took a
// Started of, from the fleet's own timestamps: from its first plugin's
// Started to its last plugin's ack, as its plugins ack (Ack) and as its
// ack Txns go to etcd (sent) and return (committed; wakeIO sees them). The
// fleet keeps one per agent; safe for concurrent use (its plugins and its
// client's calls run in their own goroutines).
type agentSpan struct {
	mu              sync.Mutex
	rev             uint64
	first, last     time.Time // first Started taken, last Ack called
	sent, committed time.Time // last ack Txn sent, and returned
}

// started records that a plugin took round rev's Started at at: the
// agent's first of rev starts its span.
func (s *agentSpan) started(rev uint64, at time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.rev != rev {
		s.rev, s.first, s.last, s.sent, s.committed = rev, at, at, time.Time{}, time.Time{}
	}
}

// acked records that a plugin acked round rev's Started at at.
func (s *agentSpan) acked(rev uint64, at time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.rev == rev && at.After(s.last) {
		s.last = at
	}
}

// ackWritten records that an ack Txn of round rev was sent at sent and
// committed at done.
func (s *agentSpan) ackWritten(rev uint64, sent, done time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.rev == rev {
		s.sent, s.committed = later(s.sent, sent), later(s.committed, done)
	}
}

func later(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// revisionOf is the round an event belongs to (0 if the event does not
// say: the bench's events are the watcher's, which do).
func revisionOf(ev resync.StatusEvent) uint64 {
	if r, ok := ev.(interface{ Revision() uint64 }); ok {
		return r.Revision()
	}
	return 0
}

// RoundSpan is one round's agents in flight, as the fleet's own
// timestamps give them (agentSpan).
type RoundSpan struct {
	// Agents whose plugins took the round's Started.
	Agents int `json:"agents"`
	// Peak is the most of them in flight at once: an exact sweep over
	// every agent's start (its first Started) and end (its last ack Txn
	// sent: etcd had not committed it, so the coordinator had not seen it
	// and the agent still held its place in the window), not a sample.
	Peak int `json:"peak_in_flight"`
	// Busy is the sum over the agents of their own resync time: first
	// Started to last ack committed (its Txn returned).
	Busy time.Duration `json:"busy_ns"`
}

// spanOf sweeps the spans of round rev. Only the agents' latest round is
// kept: call it before the next round starts.
func spanOf(spans []*agentSpan, rev uint64) RoundSpan {
	type edge struct {
		at time.Time
		d  int // +1: an agent starts, -1: one ends
	}
	var out RoundSpan
	edges := make([]edge, 0, 2*len(spans))
	for _, s := range spans {
		s.mu.Lock()
		if rev != 0 && s.rev == rev {
			// An agent with nothing after its first Started (none of its
			// acks sent) is in flight for that instant.
			end := later(later(s.last, s.sent), s.first.Add(time.Nanosecond))
			edges = append(edges, edge{s.first, +1}, edge{end, -1})
			out.Agents++
			out.Busy += later(s.last, s.committed).Sub(s.first)
		}
		s.mu.Unlock()
	}
	// At the same instant an end goes before a start: the coordinator
	// starts an agent only after another's done record, itself after that
	// agent's last ack, so a tie is two clock readings, not an overlap.
	slices.SortFunc(edges, func(a, b edge) int {
		if c := a.at.Compare(b.at); c != 0 {
			return c
		}
		return a.d - b.d
	})
	n := 0
	for _, e := range edges {
		n += e.d
		out.Peak = max(out.Peak, n)
	}
	return out
}
