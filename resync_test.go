package resync_test

import (
	"context"
	"errors"
	"fmt"
	"github.com/sirupsen/logrus"
	"github.com/sirupsen/logrus/hooks/test"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/goleak"

	"github.com/resyncd/resync"
	"github.com/resyncd/resync/internal/testing/etcdtest"
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
	if err := etcdtest.PutRecord(ctxT(t, 5*time.Second), c, layout, rec); err != nil {
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

// silent asserts that ch is open and holds no event: after Close, a
// refused registration or a displacement, nothing is delivered and nothing
// is closed (a consumer reading `ev := <-ch` without checking ok would get
// a nil event from a closed channel).
func silent(t *testing.T, what string, ch chan resync.StatusEvent) {
	t.Helper()
	select {
	case ev, ok := <-ch:
		if !ok {
			t.Fatalf("%s: the status channel is closed", what)
		}
		t.Fatalf("%s: delivered %v", what, ev)
	default:
	}
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

	// A clean restart: Close closes Done (the plugin's loop ends on it),
	// leaves the status channel open and silent, and removes its keys.
	if err := first.Close(); err != nil {
		t.Fatal(err)
	}
	<-first.Done()
	silent(t, "after Close", r.StatusChan())
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
	<-crashed.Done()
	silent(t, "the crashed incarnation after Close", cr.StatusChan())
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
	if r := reqs[0].Reason; !strings.HasPrefix(r, "l3plugin: apply failed: é") || len(r) > schema.MaxReasonLen+len(schema.CutMarker) {
		t.Errorf("reason of %d bytes: %.40q", len(r), r)
	}
	if r := reqs[1].Reason; !strings.HasPrefix(r, "aclplugin: ") {
		t.Errorf("reason for a nil error: %q", r)
	}
	// The counter follows the write: wait for it rather than race it.
	etcdtest.WaitFor(t, wait, "RequestsWritten 2", func() bool { return p.Stats().RequestsWritten == 2 })
}

// Duplicate and invalid names, and Close: never a panic, errors from
// RegisterE, a refusal logged at error level, counted and listed in the
// agent's owner record, channels never closed, Close idempotent.
func TestRegisterNamesAndClose(t *testing.T) {
	m := etcdtest.Start(t)
	c := m.Client(t)
	log, hook := test.NewNullLogger()
	p, err := resync.New(resync.Deps{Log: log, Client: c}, resync.DefaultConfig("names"))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
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
	bad := []string{"", "a\nb", strings.Repeat("x", 200)}
	for _, name := range bad {
		reg, err := p.RegisterE(name)
		if !errors.Is(err, resync.ErrInvalidName) {
			t.Errorf("RegisterE(%q): %v", name, err)
		}
		silent(t, fmt.Sprintf("RegisterE(%q)", name), reg.StatusChan())
		silent(t, fmt.Sprintf("Register(%q)", name), p.Register(name).StatusChan())
	}
	refusals := 0
	for _, e := range hook.AllEntries() {
		if e.Level == logrus.ErrorLevel && strings.Contains(e.Message, "register refused") {
			refusals++
		}
	}
	if refusals != len(bad) { // Register logs; RegisterE leaves it to its caller
		t.Errorf("%d refusals logged at error level, want %d", refusals, len(bad))
	}
	if got := p.Stats().Refused; got != uint64(2*len(bad)) {
		t.Errorf("Stats().Refused = %d, want %d", got, 2*len(bad))
	}
	// Operators see them: the owner record lists the count and the first names.
	var owner schema.Owner
	etcdtest.WaitFor(t, wait, "the refusals in the owner record", func() bool {
		resp, err := c.Get(ctxT(t, 5*time.Second), layout.Owner("names"))
		if err != nil || len(resp.Kvs) != 1 {
			return false
		}
		owner, err = layout.DecodeOwner(layout.Owner("names"), resp.Kvs[0].Value)
		return err == nil && owner.Refused == 2*len(bad)
	})
	if len(owner.RefusedNames) != schema.MaxRefusedNames || owner.RefusedNames[2] != `"a\nb"` {
		t.Errorf("owner record lists %q", owner.RefusedNames)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	<-p.Done()
	silent(t, "after Close", r.StatusChan())
	if after, err := p.RegisterE("late"); !errors.Is(err, resync.ErrClosed) {
		t.Fatalf("RegisterE after Close: %v", err)
	} else {
		silent(t, "Register after Close", after.StatusChan())
	}
	if got := p.Stats().Refused; got != uint64(2*len(bad)+1) {
		t.Errorf("Stats().Refused after a Register after Close = %d, want %d", got, 2*len(bad)+1)
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
		{resync.Config{}, "no agent name: set Plugin.Config.Agent, RESYNC_AGENT or MICROSERVICE_LABEL"},
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
