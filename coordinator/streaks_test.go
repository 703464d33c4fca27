package coordinator

import (
	"testing"
	"time"

	"github.com/resyncd/resync/schema"
)

// simulate reports an error from agent every `every` from t0 for d, starting
// an error-triggered round whenever the oldest unanswered error is due, as
// the leader does. It returns the round start times.
func simulate(b *errorStreaks, agent string, t0 time.Time, d, every time.Duration) []time.Time {
	var rounds []time.Time
	var due time.Time // of the oldest pending error; zero: none pending
	for now := t0; now.Before(t0.Add(d)); now = now.Add(every) {
		if !due.IsZero() && !now.Before(due) {
			b.Started(agent, now)
			rounds = append(rounds, now)
			due = time.Time{}
		}
		b.Reported(agent, now)
		if due.IsZero() {
			due = b.Due(agent, now)
		}
	}
	return rounds
}

func TestErrorStreakDoublesAndResetsOnlyAfterQuiet(t *testing.T) {
	min, max := 100*time.Millisecond, time.Second
	b := newErrorStreaks(min, max)
	t0 := time.Unix(1000, 0)
	rounds := simulate(b, "a", t0, 30*time.Second, 5*time.Millisecond)
	// Ramp 0.1 + 0.2 + 0.4 + 0.8 s, then one per second.
	if n := len(rounds); n > 30+4 || n < 25 {
		t.Fatalf("%d error-triggered rounds in 30 s of errors with backoff %v..%v; the doubling allows 30 s / 1 s + 4", n, min, max)
	}
	wantGaps := []time.Duration{200 * time.Millisecond, 400 * time.Millisecond, 800 * time.Millisecond, time.Second, time.Second}
	for i, want := range wantGaps {
		if gap := rounds[i+1].Sub(rounds[i]); gap < want || gap > want+10*time.Millisecond {
			t.Errorf("gap %d = %v, want %v", i, gap, want)
		}
	}
	last := t0.Add(30 * time.Second)
	// An error just before the quiet period ends: still slow.
	almost := last.Add(2*max - 10*time.Millisecond)
	b2 := *b
	b2.by = map[string]*streak{"a": ptr(*b.by["a"])}
	b2.Reported("a", almost)
	if due := b2.Due("a", almost); due.Sub(almost) < max/2 {
		t.Errorf("error %v after the last one: due in %v, want the streak's %v", 2*max-10*time.Millisecond, due.Sub(almost), max)
	}
	// After a quiet period: fast again.
	quiet := last.Add(2*max + time.Millisecond)
	b.Reported("a", quiet)
	if due := b.Due("a", quiet); due.Sub(quiet) != min {
		t.Errorf("after a quiet period: due in %v, want %v", due.Sub(quiet), min)
	}
	// Other agents are not paced by a's streak.
	if due := b.Due("b", quiet); due.Sub(quiet) != min {
		t.Errorf("another agent: due in %v, want %v", due.Sub(quiet), min)
	}
}

func TestErrorStreakClusterWidePacesEveryAgent(t *testing.T) {
	b := newErrorStreaks(100*time.Millisecond, time.Second)
	t0 := time.Unix(1000, 0)
	for i := range 5 {
		now := t0.Add(time.Duration(i) * time.Second)
		b.Reported(allAgents, now)
		b.Started(allAgents, now)
	}
	now := t0.Add(4*time.Second + 100*time.Millisecond)
	b.Reported("c", now)
	if due := b.Due("c", now); due.Sub(now) < 900*time.Millisecond {
		t.Errorf("agent c during a cluster-wide streak: due in %v, want about 1 s", due.Sub(now))
	}
}

func TestErrorStreakReplayedFromHistory(t *testing.T) {
	min, max := 100*time.Millisecond, time.Second
	live := newErrorStreaks(min, max)
	t0 := time.Unix(1000, 0)
	starts := simulate(live, "a", t0, 10*time.Second, 5*time.Millisecond)
	var hist []schema.Round
	var shift time.Duration
	for i := range starts {
		starts[i] = starts[i].Add(shift)
		hist = append(hist, schema.Round{Revision: uint64(i + 1), Cause: schema.CauseError, Scope: schema.ScopeSummary{Agents: 1, First: "a"}, StartedAt: starts[i]})
		if i%3 == 0 && i > 0 {
			// A slow round (a loaded machine): the next one starts more
			// than the quiet period after this one's start, soon after it
			// finished; the streak goes on.
			hist[len(hist)-1].FinishedAt = starts[i].Add(3 * max)
			shift += 3 * max
		}
		hist = append(hist, schema.Round{Revision: uint64(i + 1), Cause: schema.CauseManual, StartedAt: starts[i]}) // not counted
	}
	replayed := newErrorStreaks(min, max)
	replayed.replay(hist)
	if got, want := replayed.Delay("a"), live.Delay("a"); got != want || got != max {
		t.Fatalf("replayed delay %v, live %v, want %v", got, want, max)
	}
	now := starts[len(starts)-1].Add(50 * time.Millisecond)
	replayed.Reported("a", now)
	if due := replayed.Due("a", now); due.Sub(now) != max {
		t.Fatalf("after failover: due in %v, want %v", due.Sub(now), max)
	}
}

func ptr[T any](v T) *T { return &v }
