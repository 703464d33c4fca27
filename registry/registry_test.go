package registry

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/goleak"

	"github.com/resyncd/resync/internal/testing/etcdtest"
	"github.com/resyncd/resync/schema"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m, etcdtest.LeakOptions()...) }

var layout = schema.MustLayout(schema.DefaultPrefix)

func testLogger(t *testing.T) logrus.FieldLogger { return etcdtest.Logger(t, "debug") }

func newRegistry(t *testing.T, c *clientv3.Client, agent string, ttl time.Duration, opts ...Option) *Registry {
	t.Helper()
	cfg := DefaultConfig(agent)
	cfg.TTL = ttl
	cfg.RetryMax = 200 * time.Millisecond
	cfg.OpTimeout = time.Second
	r, err := New(c, cfg, append([]Option{WithLogger(testLogger(t))}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func get(t *testing.T, c *clientv3.Client, key string, prefix bool) *clientv3.GetResponse {
	t.Helper()
	opts := []clientv3.OpOption{}
	if prefix {
		opts = append(opts, clientv3.WithPrefix())
	}
	resp, err := c.Get(ctxT(t, 5*time.Second), key, opts...)
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

func TestRegisterWritesOrderedRecordsOnTheLease(t *testing.T) {
	m := etcdtest.Start(t)
	c := m.Client(t)
	r := newRegistry(t, c, "agent-1", 5*time.Second)
	for _, p := range []string{"ifplugin", "l3plugin", "aclplugin"} {
		if _, err := r.Register(ctxT(t, 5*time.Second), p); err != nil {
			t.Fatal(err)
		}
	}
	resp := get(t, c, layout.AgentRegistrations("agent-1"), true)
	if len(resp.Kvs) != 3 {
		t.Fatalf("got %d keys, want 3", len(resp.Kvs))
	}
	want := map[string]int{"ifplugin": 0, "l3plugin": 1, "aclplugin": 2}
	for _, kv := range resp.Kvs {
		reg, err := layout.DecodeRegistration(string(kv.Key), kv.Value)
		if err != nil {
			t.Fatal(err)
		}
		if reg.Agent != "agent-1" || reg.Order != want[reg.Plugin] || reg.RegisteredAt.IsZero() {
			t.Errorf("%s = %+v, want order %d", kv.Key, reg, want[reg.Plugin])
		}
		if clientv3.LeaseID(kv.Lease) != r.State().Lease || kv.Lease == 0 {
			t.Errorf("%s is on lease %x, want the session's %x", kv.Key, kv.Lease, r.State().Lease)
		}
		if !strings.Contains(string(kv.Value), `"order":`) || strings.Contains(string(kv.Value), "\n") {
			t.Errorf("value is not one-line JSON with an order: %s", kv.Value)
		}
	}
	if st := r.State(); !st.Connected || st.Generation != 1 {
		t.Errorf("state %+v, want connected generation 1", st)
	}
}

func TestCloseRevokesAtOnce(t *testing.T) {
	m := etcdtest.Start(t)
	c := m.Client(t)
	r := newRegistry(t, c, "a", 60*time.Second) // a long TTL: only the revoke can remove the keys
	if _, err := r.Register(ctxT(t, 5*time.Second), "p"); err != nil {
		t.Fatal(err)
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if n := len(get(t, c, layout.Registrations(), true).Kvs); n != 0 {
		t.Fatalf("%d registrations left right after Close", n)
	}
	if err := r.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if _, err := r.Add("q"); !errors.Is(err, ErrClosed) {
		t.Fatalf("Add after Close: %v, want ErrClosed", err)
	}
	select {
	case <-r.Changed():
	default:
		t.Fatal("Changed is not closed after Close")
	}
}

func TestCrashedAgentDisappearsWithinTTL(t *testing.T) {
	m := etcdtest.Start(t)
	observer := m.Client(t)
	agentClient, err := etcdtest.NewClient(m.Endpoint())
	if err != nil {
		t.Fatal(err)
	}
	const ttl = 2 * time.Second
	r := newRegistry(t, agentClient, "crashy", ttl)
	if _, err := r.Register(ctxT(t, 5*time.Second), "p"); err != nil {
		t.Fatal(err)
	}
	agentClient.Close() // a crash: the lease is not revoked, only no longer kept alive
	crashed := time.Now()
	etcdtest.WaitFor(t, ttl+time.Second, "the crashed agent's registration to expire", func() bool {
		return len(get(t, observer, layout.Registrations(), true).Kvs) == 0
	})
	t.Logf("gone %v after the crash (TTL %v)", time.Since(crashed).Round(time.Millisecond), ttl)
}

// A duplicate or invalid name writes no registration; an invalid one is
// counted and listed in the owner record (operators see it), nothing more.
func TestRejectsDuplicateAndInvalidNamesWritingOnlyTheRefusal(t *testing.T) {
	m := etcdtest.Start(t)
	c := m.Client(t)
	r := newRegistry(t, c, "a", 5*time.Second)
	if _, err := r.Register(ctxT(t, 5*time.Second), "p"); err != nil {
		t.Fatal(err)
	}
	regRev := get(t, c, layout.Registration("a", "p"), false).Kvs[0].ModRevision
	if _, err := r.Register(ctxT(t, 5*time.Second), "p"); !errors.Is(err, ErrDuplicate) {
		t.Fatalf("duplicate: %v, want ErrDuplicate", err)
	}
	bad := []string{"a\x00b", "", strings.Repeat("x", 129), "\xff"}
	for _, name := range bad {
		_, err := r.Register(ctxT(t, 5*time.Second), name)
		if !errors.Is(err, schema.ErrInvalidName) {
			t.Errorf("Register(%q) = %v, want ErrInvalidName", name, err)
		}
	}
	if _, err := New(c, DefaultConfig("bad\nagent")); !errors.Is(err, schema.ErrInvalidName) {
		t.Errorf("New with agent bad/agent: %v", err)
	}
	if n, names := r.Refused(); n != len(bad) || len(names) != len(bad) || names[0] != `"a\x00b"` {
		t.Fatalf("Refused() = %d %q", n, names)
	}
	etcdtest.WaitFor(t, 10*time.Second, "the refusals in the owner record", func() bool {
		resp := get(t, c, layout.Owner("a"), false)
		if len(resp.Kvs) != 1 {
			return false
		}
		o, err := layout.DecodeOwner(layout.Owner("a"), resp.Kvs[0].Value)
		return err == nil && o.Refused == len(bad) && len(o.RefusedNames) == len(bad)
	})
	resp := get(t, c, layout.Prefix(), true)
	if len(resp.Kvs) != 2 { // the registration and the owner key
		t.Fatalf("rejected registrations wrote keys: %d keys", len(resp.Kvs))
	}
	if rev := get(t, c, layout.Registration("a", "p"), false).Kvs[0].ModRevision; rev != regRev {
		t.Fatalf("the registration was rewritten (mod revision %d -> %d)", regRev, rev)
	}
	if got := r.Plugins(); len(got) != 1 || got[0].Plugin != "p" {
		t.Fatalf("Plugins() = %+v", got)
	}
}

func TestConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		cfg  Config
		want string
	}{
		{Config{Agent: "a", TTL: 500 * time.Millisecond}, "below the 1s minimum"},
		{Config{Agent: "a", Prefix: "nope"}, "must start with"},
		{Config{Agent: "a", RetryMin: time.Second, RetryMax: time.Millisecond}, "RetryMax"},
		// Regression: Validate checks the configuration that runs, so a
		// RetryMin above the default RetryMax (5 s) is refused, as the
		// watcher refuses it.
		{Config{Agent: "a", RetryMin: 10 * time.Second}, "RetryMax 5s is below RetryMin 10s"},
		{Config{}, "agent name is empty"},
	} {
		if err := tc.cfg.Validate(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Validate(%+v) = %v, want %q", tc.cfg, err, tc.want)
		}
	}
	if err := DefaultConfig("a").Validate(); err != nil {
		t.Errorf("DefaultConfig is invalid: %v", err)
	}
	if err := (Config{Agent: "a"}).Validate(); err != nil {
		t.Errorf("a Config with only the agent (all defaults) is invalid: %v", err)
	}
}

func TestDeregisterDeletesKey(t *testing.T) {
	m := etcdtest.Start(t)
	c := m.Client(t)
	r := newRegistry(t, c, "a", 5*time.Second)
	for _, p := range []string{"p", "q"} {
		if _, err := r.Register(ctxT(t, 5*time.Second), p); err != nil {
			t.Fatal(err)
		}
	}
	if err := r.Deregister("p"); err != nil {
		t.Fatal(err)
	}
	if err := r.Deregister("p"); !errors.Is(err, ErrNotRegistered) {
		t.Fatalf("second Deregister: %v", err)
	}
	etcdtest.WaitFor(t, 5*time.Second, "p's key deleted", func() bool {
		return len(get(t, c, layout.Registration("a", "p"), false).Kvs) == 0
	})
	if len(get(t, c, layout.Registration("a", "q"), false).Kvs) != 1 {
		t.Fatal("q's key went away too")
	}
}

func TestPartitionedAgentReRegistersInOrder(t *testing.T) {
	m := etcdtest.Start(t)
	observer := m.Client(t)
	p := etcdtest.NewProxy(t, m.Endpoint())
	agentClient := etcdtest.Client(t, p.Endpoint)
	const ttl = 2 * time.Second
	r := newRegistry(t, agentClient, "cut", ttl)
	plugins := []string{"z", "a", "m", "b"}
	for _, pl := range plugins {
		if _, err := r.Register(ctxT(t, 5*time.Second), pl); err != nil {
			t.Fatal(err)
		}
	}
	first := r.State()
	changed := r.Changed()

	p.Blackhole()
	etcdtest.WaitFor(t, ttl+5*time.Second, "the partitioned agent's keys to expire", func() bool {
		return len(get(t, observer, layout.Registrations(), true).Kvs) == 0
	})
	etcdtest.WaitFor(t, 10*time.Second, "the registry to notice the lost session", func() bool {
		return !r.State().Connected
	})
	select {
	case <-changed:
	default:
		t.Fatal("owner was not told of the lost session")
	}
	p.HealReset()
	etcdtest.WaitFor(t, 20*time.Second, "re-registration on a new session", func() bool {
		st := r.State()
		return st.Connected && st.Generation == first.Generation+1
	})
	resp := get(t, observer, layout.Registrations(), true)
	if len(resp.Kvs) != len(plugins) {
		t.Fatalf("%d keys after healing, want %d", len(resp.Kvs), len(plugins))
	}
	for _, kv := range resp.Kvs {
		reg, err := layout.DecodeRegistration(string(kv.Key), kv.Value)
		if err != nil {
			t.Fatal(err)
		}
		if plugins[reg.Order] != reg.Plugin {
			t.Errorf("%s has order %d, want the original order of %v", reg.Plugin, reg.Order, plugins)
		}
		if clientv3.LeaseID(kv.Lease) == first.Lease || clientv3.LeaseID(kv.Lease) != r.State().Lease {
			t.Errorf("%s is on lease %x, want the new session's %x", kv.Key, kv.Lease, r.State().Lease)
		}
	}
}
