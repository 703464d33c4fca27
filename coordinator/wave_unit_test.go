package coordinator

import (
	"slices"
	"testing"
)

// TestPairUpNeverAddsToTheWindow: a wave step's Txns commit in any order
// (stepWrites at once), so each unit pairUp makes, being written whole in
// one Txn, starts at most as many agents as it finishes, but for the
// starts left over once every done agent has its pair: those use room
// that earlier steps freed. Every agent is in exactly one unit.
func TestPairUpNeverAddsToTheWindow(t *testing.T) {
	for _, c := range []struct{ done, started int }{{0, 0}, {0, 5}, {5, 0}, {3, 3}, {2, 7}, {7, 2}} {
		var done, started []string
		for i := range c.done {
			done = append(done, "d"+string(rune('a'+i)))
		}
		for i := range c.started {
			started = append(started, "s"+string(rune('a'+i)))
		}
		units := pairUp(done, started)
		var all []string
		unpaired := 0
		for _, u := range units {
			d, s := 0, 0
			for _, a := range u {
				all = append(all, a)
				if a[0] == 'd' {
					d++
				} else {
					s++
				}
			}
			if s > d {
				unpaired += s - d
			}
			if len(u) == 0 || len(u) > 2 {
				t.Errorf("%d done, %d started: unit %v", c.done, c.started, u)
			}
		}
		if want := max(c.started-c.done, 0); unpaired != want {
			t.Errorf("%d done, %d started: %d starts without a done beside them, want %d (%v)", c.done, c.started, unpaired, want, units)
		}
		want := slices.Concat(done, started)
		slices.Sort(want)
		slices.Sort(all)
		if !slices.Equal(all, want) {
			t.Errorf("%d done, %d started: units hold %v, want %v", c.done, c.started, all, want)
		}
	}
}
