// Package backoff paces the retries of a failing operation: the pause starts
// at Min, doubles after every failure up to Max, and starts again at Min after
// a success (Reset). It is the one retry pacing of the module: the session
// loops, watches, writes and reads that retry etcd calls all use it, each with
// its own named Min and Max. Retry is the one retry loop around "try once"
// (retry.go); a loop whose pause must also end on other events (a kick, a
// new session) paces itself with Next and Reset.
//
// The pauses are exact, without jitter: each loop that uses it runs once per
// process (one coordinator, one registry and watcher per agent), etcd's client
// already spreads its reconnects, and exact pauses keep log lines and tests
// exact.
package backoff

import (
	"context"
	"time"

	"github.com/jonboulle/clockwork"
)

// Delay is the pause after n doublings: min x 2^n, at most max (n <= 0 gives
// min; a min of 0 gives 0). coordinator's per-agent round backoff uses it
// directly; a Backoff counts n itself.
func Delay(min, max time.Duration, n int) time.Duration {
	d := min
	for i := 0; i < n && d > 0 && d < max; i++ {
		d *= 2
	}
	return minDuration(d, max)
}

func minDuration(a, b time.Duration) time.Duration {
	if a < b {
		return a
	}
	return b
}

// Backoff is the pause between attempts of one retry loop. Set Min and Max;
// the zero value of the rest starts at Min. It is not safe for concurrent
// use: one loop owns it.
type Backoff struct {
	// Min is the first pause, and the pause after Reset.
	Min time.Duration
	// Max caps the doubling.
	Max time.Duration

	n int // doublings since Reset
}

// New returns a Backoff from min doubling to max.
func New(min, max time.Duration) *Backoff { return &Backoff{Min: min, Max: max} }

// Next returns the pause to wait after a failure and doubles the next one
// (up to Max).
func (b *Backoff) Next() time.Duration {
	d := Delay(b.Min, b.Max, b.n)
	if d > 0 && d < b.Max {
		b.n++
	}
	return d
}

// Reset makes the next pause Min again: call it after a success.
func (b *Backoff) Reset() { b.n = 0 }

// Wait pauses for Next() on clk (the real clock if nil): Sleep(ctx, clk,
// b.Next()).
func (b *Backoff) Wait(ctx context.Context, clk clockwork.Clock) error {
	return Sleep(ctx, clk, b.Next())
}

// Sleep pauses for d on clk (the real clock if nil). It returns nil when the
// pause is over, or ctx's error as soon as ctx ends. A loop that logs its
// pause takes it from Next and sleeps it here.
func Sleep(ctx context.Context, clk clockwork.Clock, d time.Duration) error {
	if clk == nil {
		clk = clockwork.NewRealClock()
	}
	t := clk.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.Chan():
		return nil
	}
}
