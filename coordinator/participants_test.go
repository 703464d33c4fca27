package coordinator

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/resyncd/resync/schema"
)

// TestSetScopeParticipantsAreThoseItIncludes: a set scope's participants,
// found by binary search for each of its agents, are exactly the
// registrations the scope includes, in registration order, whatever mix
// of whole agents, single plugins, absent agents and names sorting next to
// each other ("a", "a b", "ab") it holds.
func TestSetScopeParticipantsAreThoseItIncludes(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	names := []string{"a", "a b", "ab", "b", "b-1", "c", "zz", "agent 07", "agent-07", "é"}
	for iter := range 200 {
		l := &leader{regs: map[schema.PluginID]schema.Registration{}}
		for _, a := range names {
			if rng.IntN(4) == 0 {
				continue // not registered
			}
			for k := range rng.IntN(4) + 1 {
				r := schema.Registration{Agent: a, Plugin: fmt.Sprintf("p%d", rng.IntN(10)), Order: k}
				l.regs[r.ID()] = r
			}
		}
		var scope schema.ScopeSet
		for range rng.IntN(5) + 1 {
			a := names[rng.IntN(len(names))]
			if rng.IntN(2) == 0 {
				scope.Add(schema.Scope{Agent: a})
			} else {
				scope.Add(schema.Scope{Agent: a, Plugin: fmt.Sprintf("p%d", rng.IntN(10))})
			}
		}
		got := l.participants(scope)
		var want []schema.PluginID
		for _, id := range l.participants(schema.AllScopes()) {
			if scope.Includes(id.Agent, id.Plugin) {
				want = append(want, id)
			}
		}
		if !slices.Equal(got, want) {
			t.Fatalf("iteration %d, scope %v: participants %v, want %v", iter, scope.Targets(), got, want)
		}
	}
}

// BenchmarkSetScopeParticipants: the participants of a round of 100 agents
// in a fleet of 10,000 agents of 10 plugins (issue 26's 10000x10@100): by
// binary search for each agent of the scope, not a scan of the fleet.
func BenchmarkSetScopeParticipants(b *testing.B) {
	l := &leader{regs: map[schema.PluginID]schema.Registration{}}
	for a := range 10000 {
		for p := range 10 {
			r := schema.Registration{Agent: fmt.Sprintf("agent-%05d", a), Plugin: fmt.Sprintf("plugin-%03d", p), Order: p}
			l.regs[r.ID()] = r
		}
	}
	var scope schema.ScopeSet
	for a := range 100 {
		scope.Add(schema.Scope{Agent: fmt.Sprintf("agent-%05d", a*100)})
	}
	l.participants(scope) // l.ordered, built once per change of the registrations
	b.ResetTimer()
	for b.Loop() {
		if got := l.participants(scope); len(got) != 1000 {
			b.Fatalf("%d participants, want 1000", len(got))
		}
	}
}
