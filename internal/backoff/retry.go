package backoff

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jonboulle/clockwork"
)

// Retry is the module's retry loop: it calls try until try returns nil or a
// Permanent error, or ctx ends, starting tries at least b.Next() apart on
// clk (the real clock if nil): after a failure it pauses b.Next() less the
// time the failed try took, so a try that failed by waiting out its own
// timeout (an etcd that cannot be reached) is followed by the next one at
// once. A pause would add its whole length to the time a process stays
// cut off after etcd comes back, where a try in flight completes as soon
// as the connection does. notify, if not nil, hears of each failure
// that will be retried, with the pause about to be taken: the caller logs
// there. try does one attempt and says what it means; Retry decides when
// the next one comes.
//
//   - try returns nil: Retry resets b and returns nil.
//   - try returns Permanent(err): Retry returns err, at once.
//   - ctx ends after a failed try, or during a pause: Retry returns a
//     *StoppedError with the last failure (errors.Is matches it and ctx's
//     error), without calling notify.
//
// try is called at least once, with ctx. b is owned by this loop (not safe
// for concurrent use); try may Reset it when its attempt made progress
// before it failed (a watch that delivered events), so that the next pause
// is Min again.
func Retry(ctx context.Context, clk clockwork.Clock, b *Backoff, try func(context.Context) error, notify func(err error, pause time.Duration)) error {
	if clk == nil {
		clk = clockwork.NewRealClock()
	}
	for tries := 1; ; tries++ {
		began := clk.Now()
		err := try(ctx)
		if err == nil {
			b.Reset()
			return nil
		}
		if p := (*permanentError)(nil); errors.As(err, &p) {
			return p.err
		}
		if ctx.Err() != nil {
			return &StoppedError{Last: err, Tries: tries, Ctx: ctx.Err()}
		}
		pause := max(b.Next()-clk.Since(began), 0)
		if notify != nil {
			notify(err, pause)
		}
		if Sleep(ctx, clk, pause) != nil {
			return &StoppedError{Last: err, Tries: tries, Ctx: ctx.Err()}
		}
	}
}

// Permanent marks err as not worth retrying: Retry returns err itself at
// once. Permanent(nil) is nil.
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	return &permanentError{err: err}
}

type permanentError struct{ err error }

func (e *permanentError) Error() string { return e.err.Error() }
func (e *permanentError) Unwrap() error { return e.err }

// StoppedError is Retry's error when its ctx ended before a try succeeded.
type StoppedError struct {
	// Last is the last try's error.
	Last error
	// Tries is the number of tries made.
	Tries int
	// Ctx is the ctx's error (context.Canceled or DeadlineExceeded).
	Ctx error
}

func (e *StoppedError) Error() string {
	return fmt.Sprintf("%v (stopped after %d tries: %v)", e.Last, e.Tries, e.Ctx)
}

// Unwrap gives both the last failure and ctx's error to errors.Is and
// errors.As.
func (e *StoppedError) Unwrap() []error { return []error{e.Last, e.Ctx} }
