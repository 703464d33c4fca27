package watcher

import (
	"testing"
	"time"

	"github.com/jonboulle/clockwork"

	"github.com/resyncd/resync/internal/testing/etcdtest"
	"github.com/resyncd/resync/schema"
)

// TestTimeoutsFollowTheClock: the accept and ack timeouts and the acks'
// timestamps run on the injected clock (WithClock), so a fake clock times
// them exactly. While a plugin is offered an event, or holds one unacked,
// the dispatcher's timeout is the fake clock's only waiter.
func TestTimeoutsFollowTheClock(t *testing.T) {
	m := etcdtest.Start(t)
	c := m.Client(t)
	fc := clockwork.NewFakeClockAt(time.Now().UTC().Truncate(time.Second))
	const accept, ack = time.Minute, time.Hour // never reached in real time
	a := newAgentWith(t, c, "a", 5*time.Second, []Option{WithClock(fc)}, func(cfg *Config) {
		cfg.AcceptTimeout, cfg.AckTimeout = accept, ack
	})
	ch := a.register(t, "deaf", "mute", "good")
	writeRev(t, c, 1, schema.Started, schema.Scope{})
	for k := range ch {
		recv(t, ch[k], "join").Ack()
	}
	waitAck(t, c, "a", "good", 1, schema.ResultOK)
	blocked := func(what string) {
		t.Helper()
		if err := fc.BlockUntilContext(ctxT(t, wait), 1); err != nil {
			t.Fatalf("no timeout running for %s: %v", what, err)
		}
	}

	t0 := fc.Now()
	writeRev(t, c, 2, schema.Started, schema.Scope{})
	blocked("deaf's accept")
	fc.Advance(accept - time.Nanosecond)
	if s := a.w.Stats(); s.AcceptTimeouts != 0 {
		t.Fatalf("accept timeout 1ns early: %+v", s)
	}
	select {
	case ev := <-ch[1]:
		t.Fatalf("mute got %s before deaf's accept timeout", ev.ResyncStatus())
	default:
	}
	fc.Advance(time.Nanosecond)
	if got := waitAck(t, c, "a", "deaf", 2, schema.ResultTimeout); !got.AckedAt.Equal(t0.Add(accept)) {
		t.Errorf("deaf's timeout ack is stamped %v, want the fake clock's %v", got.AckedAt, t0.Add(accept))
	}

	mute := recv(t, ch[1], "mute after deaf's accept timeout")
	etcdtest.WaitFor(t, wait, "mute's Started counted", func() bool { return a.w.Stats().Started == 4 })
	blocked("mute's ack")
	fc.Advance(ack - time.Nanosecond)
	if s := a.w.Stats(); s.AckTimeouts != 0 {
		t.Fatalf("ack timeout 1ns early: %+v", s)
	}
	fc.Advance(time.Nanosecond)
	if got := waitAck(t, c, "a", "mute", 2, schema.ResultTimeout); !got.AckedAt.Equal(t0.Add(accept + ack)) {
		t.Errorf("mute's timeout ack is stamped %v, want the fake clock's %v", got.AckedAt, t0.Add(accept+ack))
	}
	mute.Ack() // late: a no-op
	recv(t, ch[2], "good after mute's ack timeout").Ack()
	waitAck(t, c, "a", "good", 2, schema.ResultOK)
	if s := a.w.Stats(); s.AcceptTimeouts != 1 || s.AckTimeouts != 1 {
		t.Fatalf("stats %+v: want one accept and one ack timeout", s)
	}
}
