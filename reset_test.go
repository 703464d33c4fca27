package resync_test

import (
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/resyncd/resync"
	"github.com/resyncd/resync/internal/testing/etcdtest"
	"github.com/resyncd/resync/schema"
)

// autoAck acks every event of reg until stop is closed (the resync
// plugin's Done: status channels are never closed).
func autoAck(t *testing.T, reg resync.Registration, stop <-chan struct{}) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case ev := <-reg.StatusChan():
				ev.Ack()
			case <-stop:
				return
			}
		}
	}()
	t.Cleanup(func() { <-done })
}

func readRevision(t *testing.T, c *clientv3.Client) (schema.Revision, bool) {
	t.Helper()
	r, ok, _ := etcdtest.ReadRevision(ctxT(t, 5*time.Second), c, layout)
	return r, ok
}

// The prefix is wiped under a running coordinator and agent (the history is
// reset): the coordinator starts over at round 1 in a new epoch, the agent
// registers again and takes the new rounds, and they complete clean, with
// no timed-out participant.
func TestWipedPrefixStartsOverClean(t *testing.T) {
	m := etcdtest.Start(t)
	c := m.Client(t)
	p := newPlugin(t, c, "ws")
	for _, name := range []string{"ifplugin", "l3plugin"} {
		autoAck(t, p.Register(name), p.Done())
	}
	waitRegistrations(t, c, "ws", 2)
	t.Cleanup(func() { p.Close() }) // before autoAck's cleanup waits
	startCoordinator(t, c, "co")
	for n := uint64(1); n <= 3; n++ {
		if n > 1 {
			if err := putRequest(t, c, "before the wipe"); err != nil {
				t.Fatal(err)
			}
		}
		if r := waitRound(t, c, n, wait); r.Counts.Acked != 2 || !r.Clean() {
			t.Fatalf("round %d before the wipe: %+v", n, r)
		}
	}
	old, _ := readRevision(t, c)
	if old.Epoch == "" {
		t.Fatal("the coordinator wrote no epoch")
	}

	if _, err := c.Delete(ctxT(t, 5*time.Second), layout.Prefix(), clientv3.WithPrefix()); err != nil {
		t.Fatal(err)
	}
	etcdtest.WaitFor(t, wait, "a new epoch", func() bool {
		r, ok := readRevision(t, c)
		return ok && r.Epoch != old.Epoch
	})
	waitRegistrations(t, c, "ws", 2)
	if err := putRequest(t, c, "after the wipe"); err != nil {
		t.Fatal(err)
	}
	// Rounds restart at 1; the first one that has our plugins as
	// participants completes with both acked.
	var last uint64
	etcdtest.WaitFor(t, 30*time.Second, "a clean round of the new history with both plugins", func() bool {
		rev, ok := readRevision(t, c)
		if !ok || rev.Epoch == old.Epoch {
			return false
		}
		last = rev.Revision
		r, ok, _ := etcdtest.ReadRound(ctxT(t, 5*time.Second), c, layout, rev.Revision)
		return ok && r.State == schema.NotActive && r.Counts.Acked == 2
	})
	if last > old.Revision {
		t.Errorf("the new history is at round %d, past the old %d: it did not start over", last, old.Revision)
	}
	for n := uint64(1); n <= last; n++ {
		r := waitRound(t, c, n, wait)
		if !r.Clean() {
			t.Errorf("round %d of the new history: %+v", n, r.Counts)
		}
	}
	if s := p.Stats(); s.AcceptTimeouts != 0 || s.AckTimeouts != 0 {
		t.Errorf("agent stats %+v", s)
	}
}
