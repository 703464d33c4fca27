package registry

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/resyncd/resync/internal/etcdtest"
)

// A second Registry with the same agent name takes the name over at once:
// it owns the registrations, the first one notices (Displaced, Err naming
// the other lease), stops and never writes again, and deletes nothing of
// the new owner's when it stops.
func TestNewerProcessTakesTheNameOver(t *testing.T) {
	m := etcdtest.Start(t)
	c := m.Client(t)
	old := newRegistry(t, c, "dup", 5*time.Second, WithOwnerWatch())
	if _, err := old.Register(ctxT(t, 5*time.Second), "p"); err != nil {
		t.Fatal(err)
	}
	if _, err := old.Register(ctxT(t, 5*time.Second), "only-old"); err != nil {
		t.Fatal(err)
	}
	newer := newRegistry(t, c, "dup", 5*time.Second, WithOwnerWatch())
	if _, err := newer.Register(ctxT(t, 5*time.Second), "p"); err != nil {
		t.Fatal(err)
	}
	select {
	case <-old.Displaced():
	case <-time.After(2 * time.Second): // the acceptance bound
		t.Fatal("the older registry did not notice the take-over within 2 s")
	}
	err := old.Err()
	lease := newer.State().Lease
	if !errors.Is(err, ErrDisplaced) || !strings.Contains(err.Error(), fmt.Sprintf("lease %x", int64(lease))) {
		t.Fatalf("Err() = %v, want ErrDisplaced naming lease %x", err, int64(lease))
	}
	<-old.Done()
	resp := get(t, c, layout.AgentRegistrations("dup"), true)
	if len(resp.Kvs) != 1 || string(resp.Kvs[0].Key) != layout.Registration("dup", "p") || clientv3.LeaseID(resp.Kvs[0].Lease) != lease {
		t.Fatalf("registrations after the take-over: %v, want only p on the new lease %x", resp.Kvs, lease)
	}
	if _, err := old.Register(ctxT(t, time.Second), "late"); err == nil {
		t.Fatal("the displaced registry accepted a registration")
	}
	if own := get(t, c, layout.Owner("dup"), false); len(own.Kvs) != 1 || clientv3.LeaseID(own.Kvs[0].Lease) != lease {
		t.Fatalf("owner key %v, want on lease %x", own.Kvs, lease)
	}
}

// A crashed process (client closed, lease still alive) does not delay the
// restart: the new process owns the name at once, not after the TTL.
func TestRestartAfterCrashTakesOverAtOnce(t *testing.T) {
	m := etcdtest.Start(t)
	crashed := m.Client(t)
	old, err := New(crashed, DefaultConfig("cr"), WithLogger(testLogger(t)))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := old.Register(ctxT(t, 5*time.Second), "p"); err != nil {
		t.Fatal(err)
	}
	oldLease := old.State().Lease
	crashed.Close() // the crash: no revoke, the lease (TTL 10 s) stays alive
	defer old.Close()

	c := m.Client(t)
	start := time.Now()
	r := newRegistry(t, c, "cr", 10*time.Second)
	if _, err := r.Register(ctxT(t, 5*time.Second), "p"); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("restart took %v: it waited for the old lease", d)
	}
	resp := get(t, c, layout.Registration("cr", "p"), false)
	if len(resp.Kvs) != 1 || clientv3.LeaseID(resp.Kvs[0].Lease) != r.State().Lease || r.State().Lease == oldLease {
		t.Fatalf("registration %v, want on the new lease %x", resp.Kvs, r.State().Lease)
	}
}

// A wiped prefix (owner key and registrations gone, session alive): the
// registry claims the name again and writes its registrations again.
func TestWipedPrefixRegistersAgain(t *testing.T) {
	m := etcdtest.Start(t)
	c := m.Client(t)
	r := newRegistry(t, c, "w", 5*time.Second, WithOwnerWatch())
	for _, p := range []string{"a", "b"} {
		if _, err := r.Register(ctxT(t, 5*time.Second), p); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := c.Delete(ctxT(t, 5*time.Second), layout.Prefix(), clientv3.WithPrefix()); err != nil {
		t.Fatal(err)
	}
	etcdtest.WaitFor(t, 10*time.Second, "registrations written again", func() bool {
		return len(get(t, c, layout.AgentRegistrations("w"), true).Kvs) == 2 && len(get(t, c, layout.Owner("w"), false).Kvs) == 1
	})
	select {
	case <-r.Displaced():
		t.Fatalf("a wipe displaced the registry: %v", r.Err())
	default:
	}
}
