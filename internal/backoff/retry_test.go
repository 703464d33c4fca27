package backoff

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jonboulle/clockwork"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var errDown = errors.New("etcd down")

// recv takes the next value of ch, failing the test after a deadline.
func recv[T any](t *testing.T, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(10 * time.Second):
		t.Fatalf("no %s within 10 s", what)
		panic("unreachable")
	}
}

// Failed tries are paced by b on the given clock, exactly: notify hears
// of each pause before it starts, the next try comes when it is over, and
// a success resets b.
func TestRetryPacesOnTheClock(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	fc := clockwork.NewFakeClock()
	b := New(time.Second, 4*time.Second)
	var tries atomic.Int32
	pauses := make(chan time.Duration, 10)
	done := make(chan error, 1)
	go func() {
		done <- Retry(ctx, fc, b, func(context.Context) error {
			if tries.Add(1) <= 4 {
				return errDown
			}
			return nil
		}, func(err error, pause time.Duration) {
			if !errors.Is(err, errDown) {
				t.Errorf("notify got %v, want the try's error", err)
			}
			pauses <- pause
		})
	}()
	for i, want := range []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 4 * time.Second} {
		if got := recv(t, pauses, "pause"); got != want {
			t.Fatalf("pause %d = %v, want %v", i, got, want)
		}
		if err := fc.BlockUntilContext(ctx, 1); err != nil {
			t.Fatal(err)
		}
		fc.Advance(want - time.Nanosecond)
		if n := tries.Load(); n != int32(i+1) {
			t.Fatalf("try %d came before its pause was over", n)
		}
		fc.Advance(time.Nanosecond)
	}
	if err := recv(t, done, "Retry's return"); err != nil {
		t.Fatalf("Retry = %v, want nil after the fifth try succeeded", err)
	}
	if n := tries.Load(); n != 5 {
		t.Fatalf("%d tries, want 5", n)
	}
	if got := b.Next(); got != time.Second {
		t.Fatalf("after a success the next pause is %v, want Min (1s)", got)
	}
}

// A try that takes time counts against its pause: tries start b.Next()
// apart, so a try that failed by waiting out its own timeout (5 s, as a
// registry's session grant does against an etcd it cannot reach) is
// followed by the next at once, and a 1 s try leaves a 3 s pause of 4 s.
// Without it, a process cut off long enough to reach the 5 s maximum
// waited up to 5 s more after etcd came back (chaos seed 20261215: a name
// unowned 4.9 s after its agent could reach etcd again).
func TestRetryCountsTheTryAgainstItsPause(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	fc := clockwork.NewFakeClock()
	b := New(4*time.Second, 4*time.Second)
	took := []time.Duration{5 * time.Second, time.Second, 0}
	var tries atomic.Int32
	pauses := make(chan time.Duration, 10)
	done := make(chan error, 1)
	go func() {
		done <- Retry(ctx, fc, b, func(context.Context) error {
			n := tries.Add(1)
			if n > int32(len(took)) {
				return nil
			}
			fc.Advance(took[n-1]) // the try's own duration
			return errDown
		}, func(_ error, pause time.Duration) { pauses <- pause })
	}()
	for i, want := range []time.Duration{0, 3 * time.Second, 4 * time.Second} {
		if got := recv(t, pauses, "pause"); got != want {
			t.Fatalf("pause after try %d (which took %v) = %v, want %v", i+1, took[i], got, want)
		}
		if want > 0 {
			if err := fc.BlockUntilContext(ctx, 1); err != nil {
				t.Fatal(err)
			}
			fc.Advance(want)
		}
	}
	if err := recv(t, done, "Retry's return"); err != nil {
		t.Fatalf("Retry = %v, want nil", err)
	}
}

func TestRetryOutcomes(t *testing.T) {
	perm := errors.New("request too large")
	for _, tc := range []struct {
		name      string
		cancelled bool // ctx ended before Retry
		try       func(n int) error
		wantTries int
		wantNotes int
		check     func(t *testing.T, err error)
	}{
		{"success at once", false, func(int) error { return nil }, 1, 0, func(t *testing.T, err error) {
			if err != nil {
				t.Fatalf("Retry = %v", err)
			}
		}},
		{"permanent at once", false, func(int) error { return Permanent(perm) }, 1, 0, func(t *testing.T, err error) {
			if err != perm {
				t.Fatalf("Retry = %v, want the permanent error itself", err)
			}
		}},
		{"permanent after failures", false, func(n int) error {
			if n < 3 {
				return errDown
			}
			return Permanent(perm)
		}, 3, 2, func(t *testing.T, err error) {
			if err != perm {
				t.Fatalf("Retry = %v, want the permanent error itself", err)
			}
		}},
		{"ctx ended: no pause, no notify", true, func(int) error { return errDown }, 1, 0, func(t *testing.T, err error) {
			var se *StoppedError
			if !errors.As(err, &se) || se.Tries != 1 || !errors.Is(err, errDown) || !errors.Is(err, context.Canceled) {
				t.Fatalf("Retry = %v, want a StoppedError after 1 try matching the try's error and ctx's", err)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			if tc.cancelled {
				cancel()
			}
			tries, notes := 0, 0
			// Pauses of 0: the clock is not the subject here.
			err := Retry(ctx, clockwork.NewFakeClock(), New(0, 0), func(context.Context) error {
				tries++
				return tc.try(tries)
			}, func(error, time.Duration) { notes++ })
			tc.check(t, err)
			if tries != tc.wantTries || notes != tc.wantNotes {
				t.Fatalf("%d tries and %d notes, want %d and %d", tries, notes, tc.wantTries, tc.wantNotes)
			}
		})
	}
}

// ctx ending during a pause ends Retry at once, with the last failure.
func TestRetryStopsDuringAPause(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	fc := clockwork.NewFakeClock()
	done := make(chan error, 1)
	go func() {
		done <- Retry(ctx, fc, New(time.Hour, time.Hour), func(context.Context) error { return errDown }, nil)
	}()
	wctx, wcancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer wcancel()
	if err := fc.BlockUntilContext(wctx, 1); err != nil {
		t.Fatal(err)
	}
	cancel()
	err := recv(t, done, "Retry's return")
	var se *StoppedError
	if !errors.As(err, &se) || se.Tries != 1 || !errors.Is(err, errDown) || !errors.Is(err, context.Canceled) {
		t.Fatalf("Retry = %v, want a StoppedError after 1 try", err)
	}
}

// A try that made progress before it failed resets b: the next pause is
// Min again.
func TestRetryTryMayReset(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	b := New(time.Millisecond, time.Hour)
	var pauses []time.Duration
	n := 0
	// A fake clock that the tries never advance: the pauses are b's own,
	// none shortened by a try's duration; the pauses go by on their own.
	fc := clockwork.NewFakeClock()
	go func() {
		for ctx.Err() == nil {
			if fc.BlockUntilContext(ctx, 1) == nil {
				fc.Advance(time.Hour)
			}
		}
	}()
	err := Retry(ctx, fc, b, func(context.Context) error {
		n++
		switch n {
		case 3:
			b.Reset() // progress, then failure
		case 5:
			return Permanent(errDown)
		}
		return errDown
	}, func(_ error, pause time.Duration) { pauses = append(pauses, pause) })
	if !errors.Is(err, errDown) {
		t.Fatal(err)
	}
	want := []time.Duration{time.Millisecond, 2 * time.Millisecond, time.Millisecond, 2 * time.Millisecond}
	if len(pauses) != len(want) {
		t.Fatalf("pauses %v, want %v", pauses, want)
	}
	for i := range want {
		if pauses[i] != want[i] {
			t.Fatalf("pauses %v, want %v", pauses, want)
		}
	}
}

func TestPermanentNil(t *testing.T) {
	if Permanent(nil) != nil {
		t.Fatal("Permanent(nil) is not nil")
	}
}
