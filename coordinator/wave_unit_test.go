package coordinator

import (
	"fmt"
	"slices"
	"testing"
)

// TestPairUpNeverAddsToTheWindow: a wave step's Txns commit in any order
// (stepWrites at once), and each unit pairUp makes is written whole in one
// Txn, in its order. Replayed write by write, as etcd's history shows
// them, no unit puts an agent in flight before it frees one: a start
// comes after the done it replaces, the agents done that were never
// started free nothing and pair with no start, and only the starts left
// over once every freed agent has its pair (room earlier steps freed)
// add to the window. Every agent is in exactly one unit.
func TestPairUpNeverAddsToTheWindow(t *testing.T) {
	for _, c := range []struct{ unstarted, freed, started int }{
		{0, 0, 0}, {0, 0, 5}, {0, 5, 0}, {0, 3, 3}, {0, 2, 7}, {0, 7, 2},
		{1, 0, 1}, {2, 1, 3}, {3, 3, 3}, {1, 2, 1},
	} {
		name := func(p string, n int) (out []string) {
			for i := range n {
				out = append(out, fmt.Sprintf("%s%d", p, i))
			}
			return out
		}
		unstarted, freed, started := name("u", c.unstarted), name("f", c.freed), name("s", c.started)
		units := pairUp(unstarted, freed, started)
		var all []string
		leftover := 0
		for _, u := range units {
			if len(u) == 0 || len(u) > 2 {
				t.Errorf("%+v: unit %v", c, u)
			}
			inFlight, peak := 0, 0
			for _, a := range u {
				all = append(all, a)
				switch a[0] {
				case 'f':
					inFlight--
				case 's':
					inFlight++
				}
				peak = max(peak, inFlight)
			}
			leftover += peak
		}
		if want := max(c.started-c.freed, 0); leftover != want {
			t.Errorf("%+v: units %v put %d agents in flight before freeing one, want %d (the starts left over)", c, units, leftover, want)
		}
		want := slices.Concat(unstarted, freed, started)
		slices.Sort(want)
		slices.Sort(all)
		if !slices.Equal(all, want) {
			t.Errorf("%+v: units hold %v, want %v", c, all, want)
		}
	}
}
