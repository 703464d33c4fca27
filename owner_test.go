package resync_test

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/resyncd/resync"
	"github.com/resyncd/resync/internal/testing/etcdtest"
	"github.com/resyncd/resync/registry"
)

// ownerOf reads the owner key of agent.
func ownerOf(t *testing.T, c *clientv3.Client, agent string) (registry.Owner, clientv3.LeaseID, bool) {
	t.Helper()
	key := layout.Owner(agent)
	resp, err := c.Get(ctxT(t, 5*time.Second), key)
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Kvs) == 0 {
		return registry.Owner{}, 0, false
	}
	o, err := layout.DecodeOwner(key, resp.Kvs[0].Value)
	if err != nil {
		t.Fatal(err)
	}
	return o, clientv3.LeaseID(resp.Kvs[0].Lease), true
}

// Agent A, then A' with the same name: A' owns the registrations at once, A
// reports the conflict within 2 s (Done, Err naming A”s lease) and stops
// delivering (its channels stay open and silent); when A' exits nothing of the name is left and A is not
// running unregistered.
func TestDuplicateNameNewerProcessOwns(t *testing.T) {
	m := etcdtest.Start(t)
	c := m.Client(t)
	a := newPlugin(t, c, "dup")
	aRegs := []resync.Registration{a.Register("ifplugin"), a.Register("l3plugin")}
	waitRegistrations(t, c, "dup", 2)
	_, aLease, _ := ownerOf(t, c, "dup")

	a2 := newPlugin(t, c, "dup")
	a2Regs := []resync.Registration{a2.Register("ifplugin"), a2.Register("l3plugin")}
	select {
	case <-a.Done():
	case <-time.After(2 * time.Second): // the acceptance bound
		t.Fatal("A did not report the conflict within 2 s")
	}
	etcdtest.WaitFor(t, wait, "A' owning the name", func() bool {
		_, l, ok := ownerOf(t, c, "dup")
		return ok && l != aLease
	})
	_, lease, _ := ownerOf(t, c, "dup")
	if err := a.Err(); !errors.Is(err, resync.ErrDisplaced) || !strings.Contains(err.Error(), fmt.Sprintf("lease %x", int64(lease))) {
		t.Fatalf("A's Err() = %v, want ErrDisplaced naming lease %x", err, int64(lease))
	}
	for _, r := range aRegs { // stopped delivering, never closed
		silent(t, "A displaced: "+r.String(), r.StatusChan())
	}
	if _, err := a.RegisterE("late"); !errors.Is(err, resync.ErrClosed) {
		t.Fatalf("A registered after being displaced: %v", err)
	}
	etcdtest.WaitFor(t, wait, "A' registrations on its lease", func() bool {
		resp, err := c.Get(ctxT(t, 5*time.Second), layout.AgentRegistrations("dup"), clientv3.WithPrefix())
		if err != nil || len(resp.Kvs) != 2 {
			return false
		}
		for _, kv := range resp.Kvs {
			if clientv3.LeaseID(kv.Lease) != lease {
				return false
			}
		}
		return true
	})
	// A' works: it gets its join resync.
	writeRev(t, c, 1, resync.Started)
	for _, r := range a2Regs {
		recv(t, r, resync.Started, 1).Ack()
	}

	// A' exits: nothing of the name is left, and A is not running.
	if err := a2.Close(); err != nil {
		t.Fatal(err)
	}
	if n := keys(t, c, layout.AgentRegistrations("dup")); n != 0 {
		t.Fatalf("%d registrations left after A' exited", n)
	}
	if _, _, ok := ownerOf(t, c, "dup"); ok {
		t.Fatal("owner key left after A' exited")
	}
	select {
	case <-a.Done():
	default:
		t.Fatal("A runs on, unregistered")
	}
	if err := a.Close(); err != nil {
		t.Fatalf("A's Close after its displacement: %v", err)
	}
}

// A crashed process (its client gone without revoking, its lease alive for
// its 10 s TTL) does not delay the restart: the new process owns the name
// and its registrations at once.
func TestDuplicateNameCrashRestartTakesOverAtOnce(t *testing.T) {
	m := etcdtest.Start(t)
	crashed := m.Client(t)
	cfg := resync.DefaultConfig("cr") // TTL 10 s
	old, err := resync.New(resync.Deps{Log: etcdtest.Logger(t, "error"), Client: crashed}, cfg)
	if err != nil {
		t.Fatal(err)
	}
	old.Register("ifplugin")
	c := m.Client(t)
	waitRegistrations(t, c, "cr", 1)
	_, oldLease, _ := ownerOf(t, c, "cr")
	crashed.Close() // the crash
	defer old.Close()

	start := time.Now()
	p, err := resync.New(resync.Deps{Log: etcdtest.Logger(t, "debug"), Client: c}, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	p.Register("ifplugin")
	etcdtest.WaitFor(t, 5*time.Second, "the restarted process owning the name", func() bool {
		_, l, ok := ownerOf(t, c, "cr")
		resp, err := c.Get(ctxT(t, 5*time.Second), layout.Registration("cr", "ifplugin"))
		return ok && l != oldLease && err == nil && len(resp.Kvs) == 1 && clientv3.LeaseID(resp.Kvs[0].Lease) == l
	})
	if d := time.Since(start); d >= 10*time.Second {
		t.Fatalf("took %v: waited for the old lease", d)
	}
	if ttl, err := c.TimeToLive(ctxT(t, 5*time.Second), oldLease); err != nil || ttl.TTL <= 0 {
		t.Fatalf("the old lease is gone already (%v, %v): the test did not test a live old lease", ttl, err)
	}
}
