package backoff

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/jonboulle/clockwork"
)

const ms = time.Millisecond

func TestDelay(t *testing.T) {
	for _, tc := range []struct {
		name     string
		min, max time.Duration
		n        int
		want     time.Duration
	}{
		{"first", 100 * ms, 2 * time.Second, 0, 100 * ms},
		{"negative n is the first", 100 * ms, 2 * time.Second, -3, 100 * ms},
		{"doubled", 100 * ms, 2 * time.Second, 3, 800 * ms},
		{"capped", 100 * ms, 2 * time.Second, 5, 2 * time.Second},
		{"capped far out", 100 * ms, 2 * time.Second, 1 << 20, 2 * time.Second},
		{"max not a power of two of min", time.Second, time.Minute, 6, time.Minute},
		{"min equals max", time.Second, time.Second, 4, time.Second},
		{"min above max is capped", 2 * time.Second, time.Second, 0, time.Second},
		{"zero min stays zero", 0, time.Second, 10, 0},
		{"huge max does not overflow", time.Second, time.Duration(1<<62 - 1), 100, time.Duration(1 << 62)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := Delay(tc.min, tc.max, tc.n)
			if tc.name == "huge max does not overflow" {
				if got <= 0 || got > tc.max {
					t.Fatalf("Delay = %v, want within (0, %v]", got, tc.max)
				}
				return
			}
			if got != tc.want {
				t.Fatalf("Delay(%v, %v, %d) = %v, want %v", tc.min, tc.max, tc.n, got, tc.want)
			}
		})
	}
}

func TestNextDoublesAndResets(t *testing.T) {
	for _, tc := range []struct {
		name     string
		min, max time.Duration
		want     []time.Duration
	}{
		{"campaign 100ms..5s", 100 * ms, 5 * time.Second, []time.Duration{100 * ms, 200 * ms, 400 * ms, 800 * ms, 1600 * ms, 3200 * ms, 5 * time.Second, 5 * time.Second}},
		{"write 50ms..1s", 50 * ms, time.Second, []time.Duration{50 * ms, 100 * ms, 200 * ms, 400 * ms, 800 * ms, time.Second, time.Second}},
		{"fixed", time.Second, time.Second, []time.Duration{time.Second, time.Second}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := New(tc.min, tc.max)
			for i, want := range tc.want {
				if got := b.Next(); got != want {
					t.Fatalf("pause %d = %v, want %v", i, got, want)
				}
			}
			b.Reset()
			if got := b.Next(); got != tc.min {
				t.Fatalf("after Reset: %v, want %v", got, tc.min)
			}
		})
	}
}

func TestWaitFollowsTheClock(t *testing.T) {
	fc := clockwork.NewFakeClock()
	b := New(time.Second, time.Minute)
	done := make(chan error, 1)
	go func() { done <- b.Wait(context.Background(), fc) }()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := fc.BlockUntilContext(ctx, 1); err != nil {
		t.Fatal(err)
	}
	fc.Advance(time.Second - time.Nanosecond)
	select {
	case err := <-done:
		t.Fatalf("Wait returned %v before its pause was over", err)
	default:
	}
	fc.Advance(time.Nanosecond)
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-ctx.Done():
		t.Fatal("Wait did not return once its pause was over")
	}
	if got := b.Next(); got != 2*time.Second {
		t.Fatalf("the pause after one Wait is %v, want 2s", got)
	}
}

func TestWaitEndsWithCtx(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := New(time.Hour, time.Hour).Wait(ctx, clockwork.NewFakeClock()); !errors.Is(err, context.Canceled) {
		t.Fatalf("Wait with a cancelled ctx = %v, want context.Canceled", err)
	}
}
