package resync_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/goleak"

	"github.com/resyncd/resync"
	"github.com/resyncd/resync/internal/etcdtest"
	"github.com/resyncd/resync/schema"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m, etcdtest.LeakOptions()...) }

var layout = schema.MustLayout(schema.DefaultPrefix)

const wait = 10 * time.Second

func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// newPlugin starts a resync Plugin with short test timeouts; it is closed
// in t.Cleanup.
func newPlugin(t *testing.T, c *clientv3.Client, agent string) *resync.Plugin {
	t.Helper()
	l := etcdtest.Logger(t, "debug")
	cfg := resync.DefaultConfig(agent)
	cfg.TTL = 2 * time.Second
	cfg.AcceptTimeout = 200 * time.Millisecond
	cfg.AckTimeout = 500 * time.Millisecond
	p, err := resync.New(resync.Deps{Log: l.WithField("incarnation", time.Now().Format("15:04:05.000")), Client: c}, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

func writeRev(t *testing.T, c *clientv3.Client, n uint64, state schema.Status) {
	t.Helper()
	now := time.Now().UTC()
	rec := schema.Revision{Revision: n, State: state, Reason: "test", Cause: schema.CauseManual, StartedAt: now, Deadline: now.Add(time.Minute), Leader: "test"}
	if state == schema.NotActive {
		rec.FinishedAt = now
	}
	b, err := schema.Encode(rec)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Put(ctxT(t, 5*time.Second), layout.Revision(), string(b)); err != nil {
		t.Fatal(err)
	}
}

func recv(t *testing.T, r resync.Registration, status resync.Status, n uint64) *resync.Event {
	t.Helper()
	select {
	case ev, ok := <-r.StatusChan():
		if !ok {
			t.Fatalf("%s: channel closed, want %s %d", r, status, n)
		}
		e := ev.(*resync.Event)
		if e.ResyncStatus() != status || e.Revision() != n {
			t.Fatalf("%s: got %s %d, want %s %d", r, e.ResyncStatus(), e.Revision(), status, n)
		}
		return e
	case <-time.After(wait):
		t.Fatalf("%s: no %s %d within %v", r, status, n, wait)
	}
	return nil
}

func waitAck(t *testing.T, c *clientv3.Client, agent, plugin string, n uint64) (schema.Ack, clientv3.LeaseID) {
	t.Helper()
	var (
		ack   schema.Ack
		lease clientv3.LeaseID
	)
	key := layout.Ack(agent, plugin)
	etcdtest.WaitFor(t, wait, "ack of "+key, func() bool {
		resp, err := c.Get(ctxT(t, 5*time.Second), key)
		if err != nil || len(resp.Kvs) == 0 {
			return false
		}
		ack, err = schema.DecodeAck(key, resp.Kvs[0].Value)
		if err != nil {
			t.Fatal(err)
		}
		lease = clientv3.LeaseID(resp.Kvs[0].Lease)
		return ack.Revision == n
	})
	return ack, lease
}

func leaseOf(t *testing.T, c *clientv3.Client, key string) clientv3.LeaseID {
	t.Helper()
	resp, err := c.Get(ctxT(t, 5*time.Second), key)
	if err != nil || len(resp.Kvs) == 0 {
		t.Fatalf("get %s: %v %v", key, resp, err)
	}
	return clientv3.LeaseID(resp.Kvs[0].Lease)
}

func keys(t *testing.T, c *clientv3.Client, prefix string) int {
	t.Helper()
	resp, err := c.Get(ctxT(t, 5*time.Second), prefix, clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		t.Fatal(err)
	}
	return int(resp.Count)
}

// A restarted agent (a new Plugin with the same agent name, after a clean
// Close or a crash) gets a join resync for the current revision.
func TestRestartedAgentGetsJoinResync(t *testing.T) {
	m := etcdtest.Start(t)
	c := m.Client(t)
	first := newPlugin(t, c, "agent")
	r := first.Register("ifplugin")
	writeRev(t, c, 1, resync.Started)
	recv(t, r, resync.Started, 1).Ack()
	_, lease := waitAck(t, c, "agent", "ifplugin", 1)
	if lease == 0 || lease != leaseOf(t, c, layout.Registration("agent", "ifplugin")) {
		t.Fatalf("ack on lease %x, not the agent's registration lease", lease)
	}
	writeRev(t, c, 1, resync.NotActive)
	recv(t, r, resync.NotActive, 1).Ack()

	// A clean restart: Close ends the plugin's loop and removes its keys.
	ended := make(chan struct{})
	go func() {
		for range r.StatusChan() {
		}
		close(ended)
	}()
	if err := first.Close(); err != nil {
		t.Fatal(err)
	}
	<-ended
	if n := keys(t, c, layout.Prefix()+"acks/") + keys(t, c, layout.Registrations()); n != 0 {
		t.Fatalf("%d registration and ack keys left after Close", n)
	}
	second := newPlugin(t, c, "agent")
	r = second.Register("ifplugin")
	ev := recv(t, r, resync.Started, 1)
	if !ev.Join() {
		t.Fatal("the restarted agent's Started is not marked as its join resync")
	}
	ev.Ack()
	recv(t, r, resync.NotActive, 1)
	waitAck(t, c, "agent", "ifplugin", 1)

	// A crash: the agent's client goes away without Close. The next
	// incarnation gets its join resync too (and the crashed one still
	// closes in bounded time).
	crashClient, err := etcdtest.NewClient(m.Endpoint())
	if err != nil {
		t.Fatal(err)
	}
	writeRev(t, c, 2, resync.Started)
	recv(t, r, resync.Started, 2).Ack()
	crashed := newPlugin(t, crashClient, "agent2")
	cr := crashed.Register("ifplugin")
	recv(t, cr, resync.Started, 2).Ack()
	waitAck(t, c, "agent2", "ifplugin", 2)
	crashClient.Close()
	third := newPlugin(t, c, "agent2")
	recv(t, third.Register("ifplugin"), resync.Started, 2).Ack()
	start := time.Now()
	crashed.Close()
	t.Logf("closing the crashed incarnation took %v", time.Since(start))
	if _, ok := <-cr.StatusChan(); ok {
		t.Fatal("crashed incarnation's channel still open")
	}
}

// Register never fails the agent's start: while etcd is unreachable it
// returns at once, and the plugin gets its join resync once etcd is up.
func TestRegisterWhileEtcdUnreachable(t *testing.T) {
	m := etcdtest.Start(t)
	c := m.Client(t)
	writeRev(t, c, 3, resync.NotActive)
	proxy := etcdtest.NewProxy(t, m.Endpoint())
	proxy.Cut()
	p := newPlugin(t, etcdtest.Client(t, proxy.Endpoint), "offline")
	regs := []resync.Registration{p.Register("first"), p.Register("second")}
	p.ReportError("first", errors.New("vpp unreachable"))
	select {
	case ev := <-regs[0].StatusChan():
		t.Fatalf("got %v with etcd unreachable", ev)
	case <-time.After(300 * time.Millisecond):
	}
	proxy.Restore()
	for _, r := range regs {
		recv(t, r, resync.Started, 3).Ack()
	}
	for _, r := range regs {
		recv(t, r, resync.NotActive, 3)
	}
	waitAck(t, c, "offline", "first", 3)
	waitAck(t, c, "offline", "second", 3)
	etcdtest.WaitFor(t, wait, "the error reported while offline to be written", func() bool {
		return keys(t, c, layout.Requests()) == 1
	})
}

// ReportError writes a well-formed request: cause error, this agent's scope,
// reason "<name>: <error>" cut to schema.MaxReasonLen.
func TestReportErrorWritesRequest(t *testing.T) {
	m := etcdtest.Start(t)
	c := m.Client(t)
	p := newPlugin(t, c, "reporter")
	long := errors.New("apply failed: " + strings.Repeat("é", schema.MaxReasonLen))
	p.ReportError("l3plugin", long)
	p.ReportError("aclplugin", nil)
	var reqs []schema.Request
	etcdtest.WaitFor(t, wait, "two requests", func() bool {
		resp, err := c.Get(ctxT(t, 5*time.Second), layout.Requests(), clientv3.WithPrefix(), clientv3.WithSort(clientv3.SortByKey, clientv3.SortAscend))
		if err != nil || len(resp.Kvs) != 2 {
			return false
		}
		reqs = nil
		for _, kv := range resp.Kvs {
			if kv.Lease != 0 {
				t.Errorf("request %s is on a lease", kv.Key)
			}
			req, err := schema.DecodeRequest(string(kv.Key), kv.Value)
			if err != nil {
				t.Fatal(err)
			}
			reqs = append(reqs, req)
		}
		return true
	})
	for _, req := range reqs {
		if req.Cause != schema.CauseError || req.Scope != (schema.Scope{Agent: "reporter"}) || req.RequestedBy != "reporter" || req.RequestedAt.IsZero() {
			t.Errorf("request %+v", req)
		}
	}
	if r := reqs[0].Reason; !strings.HasPrefix(r, "l3plugin: apply failed: é") || len(r) > schema.MaxReasonLen+len("...[truncated]") {
		t.Errorf("reason of %d bytes: %.40q", len(r), r)
	}
	if r := reqs[1].Reason; !strings.HasPrefix(r, "aclplugin: ") {
		t.Errorf("reason for a nil error: %q", r)
	}
	// The counter follows the write: wait for it rather than race it.
	etcdtest.WaitFor(t, wait, "RequestsWritten 2", func() bool { return p.Stats().RequestsWritten == 2 })
}

// Duplicate and invalid names, and Close: never a panic, errors from
// RegisterE, channels closed, Close idempotent.
func TestRegisterNamesAndClose(t *testing.T) {
	m := etcdtest.Start(t)
	c := m.Client(t)
	p := newPlugin(t, c, "names")
	r := p.Register("ifplugin")
	if r.String() != "ifplugin" {
		t.Fatalf("String() = %q", r)
	}
	if again := p.Register("ifplugin"); again != r {
		t.Fatal("a duplicate Register did not return the existing registration")
	}
	// The root package's sentinels: no import of registry or schema needed.
	if again, err := p.RegisterE("ifplugin"); !errors.Is(err, resync.ErrDuplicate) || again != r {
		t.Fatalf("duplicate RegisterE: %v", err)
	}
	for _, name := range []string{"", "a\nb", strings.Repeat("x", 200)} {
		bad, err := p.RegisterE(name)
		if !errors.Is(err, resync.ErrInvalidName) {
			t.Errorf("RegisterE(%q): %v", name, err)
		}
		if _, ok := <-bad.StatusChan(); ok {
			t.Errorf("RegisterE(%q) returned an open channel", name)
		}
		if _, ok := <-p.Register(name).StatusChan(); ok {
			t.Errorf("Register(%q) returned an open channel", name)
		}
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if _, ok := <-r.StatusChan(); ok {
		t.Fatal("channel open after Close")
	}
	if after, err := p.RegisterE("late"); !errors.Is(err, resync.ErrClosed) {
		t.Fatalf("RegisterE after Close: %v", err)
	} else if _, ok := <-after.StatusChan(); ok {
		t.Fatal("Register after Close returned an open channel")
	}
	p.ReportError("late", errors.New("x")) // logged, no panic
	if n := keys(t, c, layout.Prefix()); n != 0 {
		t.Fatalf("%d keys left after Close", n)
	}

	// NewRegistration wraps a channel, as in the seed.
	ch := make(chan resync.StatusEvent, 1)
	nr := resync.NewRegistration("mine", ch)
	if nr.String() != "mine" || nr.StatusChan() != (<-chan resync.StatusEvent)(ch) {
		t.Fatal("NewRegistration")
	}
}

func TestNewRejectsBadInput(t *testing.T) {
	m := etcdtest.Start(t)
	c := m.Client(t)
	if _, err := resync.New(resync.Deps{}, resync.DefaultConfig("a")); err == nil {
		t.Error("New without a client succeeded")
	}
	for _, tc := range []struct {
		cfg  resync.Config
		want string
	}{
		{resync.Config{}, "agent name is empty"},
		{resync.Config{Agent: "a\tb"}, "control character"},
		{resync.Config{Agent: "a", TTL: time.Millisecond}, "TTL"},
		{resync.Config{Agent: "a", AckTimeout: -time.Second}, "negative"},
		{resync.Config{Agent: "a", Prefix: "relative/"}, "must start with"},
	} {
		if _, err := resync.New(resync.Deps{Client: c}, tc.cfg); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("New(%+v) = %v, want %q", tc.cfg, err, tc.want)
		}
	}
	if _, err := resync.New(resync.Deps{Client: c}, resync.DefaultConfig("a\x01b")); !errors.Is(err, resync.ErrInvalidName) {
		t.Errorf("New with agent a\\x01b: %v, want one wrapping resync.ErrInvalidName", err)
	}
	if err := resync.DefaultConfig("a").Validate(); err != nil {
		t.Fatal(err)
	}
}
