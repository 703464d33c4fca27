package coordinator

import (
	"context"
	"fmt"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/resyncd/resync/internal/testing/etcdtest"
	"github.com/resyncd/resync/schema"
)

func TestCandidateKey(t *testing.T) {
	key := func(name string) []byte { return []byte(layout.Election() + "/" + name) }
	cases := []struct {
		name string
		kv   *mvccpb.KeyValue
		ok   bool
	}{
		{"coordinator", &mvccpb.KeyValue{Key: key("1f"), Value: []byte("c1"), Lease: 0x1f, CreateRevision: 9}, true},
		{"no lease", &mvccpb.KeyValue{Key: key("1f"), Value: []byte("c1")}, false},
		{"name not hex", &mvccpb.KeyValue{Key: key("garbage"), Value: []byte("c1"), Lease: 0x1f}, false},
		{"name not its lease", &mvccpb.KeyValue{Key: key("20"), Value: []byte("c1"), Lease: 0x1f}, false},
		{"leading zero", &mvccpb.KeyValue{Key: key("01f"), Value: []byte("c1"), Lease: 0x1f}, false},
		{"value not an id", &mvccpb.KeyValue{Key: key("1f"), Value: []byte("not an id"), Lease: 0x1f}, false},
		{"empty value", &mvccpb.KeyValue{Key: key("1f"), Lease: 0x1f}, false},
		{"nested", &mvccpb.KeyValue{Key: key("1f/x"), Value: []byte("c1"), Lease: 0x1f}, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, err := CandidateKey(layout, tc.kv)
			if (err == nil) != tc.ok {
				t.Fatalf("CandidateKey(%q=%q lease %x) = %+v, %v; want ok=%v", tc.kv.Key, tc.kv.Value, tc.kv.Lease, c, err, tc.ok)
			}
			if tc.ok && (c.ID != "c1" || c.Term != 9) {
				t.Fatalf("got %+v", c)
			}
		})
	}
}

// putGarbage writes stray keys under election/: one without a lease, and
// one on a lease whose name is not the lease's id.
func putGarbage(t *testing.T, c *clientv3.Client, tag string) {
	t.Helper()
	ctx := ctxT(t, 5*time.Second)
	if _, err := c.Put(ctx, layout.Election()+"/garbage"+tag, "x"); err != nil {
		t.Fatal(err)
	}
	lease, err := c.Grant(ctx, 60)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Put(ctx, layout.Election()+"/leased"+tag, "not an id!", clientv3.WithLease(lease.ID)); err != nil {
		t.Fatal(err)
	}
}

func leaderID(t *testing.T, c *clientv3.Client) string {
	t.Helper()
	id, _, err := Leader(ctxT(t, 5*time.Second), c, layout)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func TestGarbageUnderElectionIsIgnored(t *testing.T) {
	m := etcdtest.Start(t)
	obs := m.Client(t)
	putGarbage(t, obs, "-before")
	if id := leaderID(t, obs); id != "" {
		t.Fatalf("Leader names %q while no coordinator runs", id)
	}
	a := newCoord(t, []string{m.Endpoint()}, testConfig("a"))
	waitLeader(t, []*testCoord{a}, 10*time.Second)
	if id := leaderID(t, obs); id != "a" {
		t.Fatalf("Leader = %q, want a", id)
	}
	waitFinished(t, obs, 1, 10*time.Second)

	// During a run: garbage written while a leads, then a standby b; a
	// closes and b must take over although garbage is older than b's key.
	putGarbage(t, obs, "-during")
	b := newCoord(t, []string{m.Endpoint()}, testConfig("b"))
	etcdtest.WaitFor(t, 10*time.Second, "b to campaign", func() bool { return b.Status().Campaigning })
	if err := a.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	waitLeader(t, []*testCoord{b}, 10*time.Second)
	if id := leaderID(t, obs); id != "b" {
		t.Fatalf("Leader = %q, want b", id)
	}
	request(t, obs, schema.CauseManual, schema.Scope{}, "after garbage")
	waitFinished(t, obs, 2, 10*time.Second)
	if err := b.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if id := leaderID(t, obs); id != "" {
		t.Fatalf("Leader names %q after every coordinator closed (garbage is not a leader)", id)
	}
}

// closeWithin closes co and fails unless Close returns within bound.
func closeWithin(t *testing.T, name string, closeFn func() error, bound time.Duration) error {
	t.Helper()
	errc := make(chan error, 1)
	start := time.Now()
	go func() { errc <- closeFn() }()
	select {
	case err := <-errc:
		t.Logf("%s: Close returned in %v: %v", name, time.Since(start).Round(time.Millisecond), err)
		return err
	case <-time.After(bound):
		t.Fatalf("%s: Close did not return within %v", name, bound)
		return nil
	}
}

func TestCloseBoundedWhileBlackholed(t *testing.T) {
	for _, role := range []string{"standby", "leader"} {
		t.Run(role, func(t *testing.T) {
			m := etcdtest.Start(t)
			obs := m.Client(t)
			other := newCoord(t, []string{m.Endpoint()}, testConfig("other"))
			if role == "standby" {
				waitLeader(t, []*testCoord{other}, 10*time.Second)
			}
			proxy := etcdtest.NewProxy(t, m.Endpoint())
			cfg := testConfig(role)
			cfg.SessionTTL = 30 * time.Second // the session outlives the blackhole: only Close ends it
			co := newCoord(t, []string{proxy.Endpoint}, cfg)
			if role == "leader" {
				other.Close()
				waitLeader(t, []*testCoord{co}, 10*time.Second)
			} else {
				etcdtest.WaitFor(t, 10*time.Second, "the standby to campaign", func() bool {
					resp, err := obs.Get(ctxT(t, 5*time.Second), layout.Election()+"/", clientv3.WithPrefix(), clientv3.WithCountOnly())
					return err == nil && resp.Count == 2
				})
			}
			proxy.Blackhole()
			// The documented bound is OpTimeout (2 s here); allow for load.
			err := closeWithin(t, role, co.Close, cfg.OpTimeout+3*time.Second)
			if err == nil {
				t.Errorf("Close returned nil although the revoke could not reach etcd")
			}
			proxy.Heal()
		})
	}
}

func TestShutdownBudget(t *testing.T) {
	m := etcdtest.Start(t)
	proxy := etcdtest.NewProxy(t, m.Endpoint())
	cfg := testConfig("s")
	cfg.OpTimeout = 20 * time.Second
	co := newCoord(t, []string{proxy.Endpoint}, cfg)
	waitLeader(t, []*testCoord{co}, 10*time.Second)
	proxy.Blackhole()
	defer proxy.Heal()
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	err := closeWithin(t, "shutdown", func() error { return co.Shutdown(ctx) }, 5*time.Second)
	if err == nil {
		t.Fatal("Shutdown returned nil although its budget ran out before etcd answered")
	}
	// Idempotent: a second Close returns at once with the same error.
	if err2 := closeWithin(t, "second close", co.Close, time.Second); fmt.Sprint(err2) != fmt.Sprint(err) {
		t.Fatalf("second Close = %v, want %v", err2, err)
	}
}
