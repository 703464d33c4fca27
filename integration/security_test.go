package integration

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/resyncd/resync/coordinator"
	"github.com/resyncd/resync/internal/rbac"
	"github.com/resyncd/resync/internal/testing/etcdtest"
	"github.com/resyncd/resync/schema"
)

// testPasswords hands out a fixed password per new user and remembers it.
type testPasswords struct {
	mu  sync.Mutex
	pws map[string]string
}

func (p *testPasswords) Given(string) (string, bool, error) { return "", false, nil }

func (p *testPasswords) New(user string) (string, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	pw := "pw-of-" + user
	p.pws[user] = pw
	return pw, nil
}

func (p *testPasswords) of(user string) string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.pws[user]
}

// TestLeastPrivilegeRoundOverTLS runs a whole deployment on an etcd that
// serves only TLS with client certificates and has authentication on, as
// `resyncctl rbac apply` sets it up: a coordinator with its user and agents
// a and b with theirs. A full round completes with both agents acked and a
// ReportError round follows; agent a's credentials cannot touch b's keys,
// the revision, rounds/ or the election, and cannot read what is not its
// own; a client without a certificate is refused; a's Close revokes its
// lease (which needs write permission on every key attached to it).
func TestLeastPrivilegeRoundOverTLS(t *testing.T) {
	pki := etcdtest.NewPKI(t)
	m := etcdtest.StartTLS(t, pki, true)
	ep := m.Endpoint()
	tlsFor := func() clientv3.Config {
		return clientv3.Config{Endpoints: []string{ep}, TLS: pki.ClientTLS("resync-client")}
	}

	// Refused without a client certificate, and with one from another CA.
	for name, tc := range map[string]clientv3.Config{
		"no client certificate": {Endpoints: []string{ep}, TLS: pki.ClientTLS(""), DialTimeout: time.Second},
		"untrusted CA":          {Endpoints: []string{ep}, TLS: etcdtest.NewPKI(t).ClientTLS("intruder"), DialTimeout: time.Second},
	} {
		c, err := etcdtest.NewClientWith(tc)
		if err == nil {
			_, err = c.Put(ctxT(t, 2*time.Second), layout.OperatorRequest("intruder"), "x")
			c.Close()
		}
		if err == nil {
			t.Fatalf("%s: a write succeeded", name)
		}
		t.Logf("%s: refused: %v", name, err)
	}

	admin := etcdtest.ClientWith(t, tlsFor())
	pws := &testPasswords{pws: map[string]string{}}
	spec := rbac.Spec{Layout: layout, Agents: []string{"a", "b"}, Operators: []string{"ops"}}
	if err := rbac.Apply(ctxT(t, 30*time.Second), admin, spec, rbac.Options{Passwords: pws, Log: t.Logf}); err != nil {
		t.Fatal(err)
	}
	as := func(user string) *clientv3.Client {
		cfg := tlsFor()
		cfg.Username, cfg.Password = user, pws.of(user)
		// Logging in (bcrypt) under a loaded -race run can pass the 5 s
		// default dial timeout.
		cfg.DialTimeout = 30 * time.Second
		return etcdtest.ClientWith(t, cfg)
	}
	root := as(rbac.RootUser)
	// The admin client (no user) may no longer write.
	if _, err := admin.Put(ctxT(t, 5*time.Second), layout.OperatorRequest("anon"), "x"); err == nil {
		t.Fatal("a client without a user wrote with auth on")
	}

	sink := &logSink{limit: 16 << 20}
	log := newSinkLogger(sink, logrus.DebugLevel)
	defer func() {
		if t.Failed() {
			t.Logf("logs: %s", sink.dump("resync-security-"+t.Name()+".log"))
		}
	}()
	startCoordinator(t, as(rbac.DefaultCoordinatorUser), log, "c0")
	ca, cb := as("a"), as("b")
	// A 10 s TTL: this test is about permissions, not lease expiry (a
	// starved -race run once stalled etcd past a 2 s TTL).
	a := startSimpleAgentTTL(t, ca, log, "a", []string{"p1", "p2"}, nil, nil, 10*time.Second)
	startSimpleAgentTTL(t, cb, log, "b", []string{"p1"}, nil, nil, 10*time.Second)
	etcdtest.WaitFor(t, 20*time.Second, "both agents registered", func() bool {
		resp, err := root.Get(ctxT(t, 5*time.Second), layout.Registrations(), clientv3.WithPrefix(), clientv3.WithCountOnly())
		return err == nil && resp.Count == 3
	})

	// The operator may request a round of everyone.
	ops := as("ops")
	if _, err := putRequest(ctxT(t, 5*time.Second), ops, schema.CauseManual, schema.Scope{}, "least privilege"); err != nil {
		t.Fatalf("the operator cannot write a request: %v", err)
	}
	// The round the request started, whatever its cause: on a starved
	// machine the agents' leases may expire first, and their rejoin
	// requests then coalesce with it (cause rejoin, reason "3 requests:
	// ...; least privilege").
	r := waitCompleted(t, root, 0, 30*time.Second, "a round with both agents acked", func(r coordinator.RoundView) bool {
		return strings.Contains(r.Reason, "least privilege") && r.Counts.Acked == 3
	})
	for _, p := range []schema.PluginID{{Agent: "a", Plugin: "p1"}, {Agent: "a", Plugin: "p2"}, {Agent: "b", Plugin: "p1"}} {
		if !slices.Contains(r.Acked, p) {
			t.Fatalf("round %d: %s not acked: %+v", r.Revision, p, r)
		}
	}
	// ReportError goes through the watcher's request write.
	a.p.ReportError("p1", errors.New("lost state"))

	// Under its own prefix, etcd lets agent a write anything; the
	// coordinator ignores (logs and deletes) a request for all or for b,
	// and runs a's request for itself.
	own := func(scope schema.Scope, reason string) string {
		now := time.Now()
		b, err := schema.Encode(schema.Request{Reason: reason, Cause: schema.CauseManual, Scope: scope, RequestedBy: "a", RequestedAt: now.UTC()})
		if err != nil {
			t.Fatal(err)
		}
		key := layout.AgentRequest("a", schema.NewRequestID(now))
		if _, err := ca.Put(ctxT(t, 5*time.Second), key, string(b)); err != nil {
			t.Fatalf("agent a cannot write %s: %v", key, err)
		}
		return key
	}
	for _, key := range []string{own(schema.Scope{}, "a asks for all"), own(schema.Scope{Agent: "b"}, "a asks for b")} {
		etcdtest.WaitFor(t, 20*time.Second, "the coordinator to log and delete "+key, func() bool {
			resp, err := root.Get(ctxT(t, 5*time.Second), key)
			return err == nil && len(resp.Kvs) == 0 &&
				sink.contains("ignoring and deleting a request wider than its writer may ask for") && sink.contains(key)
		})
	}
	reportRound := r.Revision + 1
	r = waitCompleted(t, root, r.Revision, 30*time.Second, "the ReportError round", func(r coordinator.RoundView) bool {
		return r.Cause == schema.CauseError && slices.Contains(r.Acked, schema.PluginID{Agent: "a", Plugin: "p1"})
	})
	if r.Revision != reportRound {
		t.Fatalf("the ReportError round is %d, want %d: a refused request ran", r.Revision, reportRound)
	}
	own(schema.Scope{Agent: "a"}, "a asks for itself")
	r = waitCompleted(t, root, r.Revision, 30*time.Second, "agent a's round of itself", func(coordinator.RoundView) bool { return true })
	if r.Reason != "a asks for itself" || fmt.Sprint(r.Participants) != "[a/p1 a/p2]" || r.Counts.Acked != 2 {
		t.Fatalf("round %d after the refused requests is %q with participants %v counts %+v, want a's own round", r.Revision, r.Reason, r.Participants, r.Counts)
	}

	// What agent a may not do, each refused with permission denied.
	before, err := root.Get(ctxT(t, 5*time.Second), layout.Prefix(), clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	const forged = `{"forged":"by agent a"}`
	denied := []struct {
		what string
		op   clientv3.Op
	}{
		{"write b's ack", clientv3.OpPut(layout.Ack("b", "p1"), forged)},
		{"write b's registration", clientv3.OpPut(layout.Registration("b", "evil"), forged)},
		{"delete b's registration", clientv3.OpDelete(layout.Registration("b", "p1"))},
		{"write the revision", clientv3.OpPut(layout.Revision(), forged)},
		{"delete the revision", clientv3.OpDelete(layout.Revision())},
		{"write a round", clientv3.OpPut(layout.Round(r.Revision), forged)},
		{"write an election key", clientv3.OpPut(layout.Election()+"/fake", forged)},
		{"write a request under b's prefix", clientv3.OpPut(layout.AgentRequest("b", "1-forged"), forged)},
		{"delete b's requests", clientv3.OpDelete(layout.AgentRequests("b"), clientv3.WithPrefix())},
		{"write an operator's request", clientv3.OpPut(layout.OperatorRequest("1-forged"), forged)},
		{"write a legacy request", clientv3.OpPut(layout.LegacyRequest("1-forged"), forged)},
		{"write outside the prefix", clientv3.OpPut("/elsewhere", forged)},
		{"read b's registrations", clientv3.OpGet(layout.AgentRegistrations("b"), clientv3.WithPrefix())},
		{"read b's acks", clientv3.OpGet(layout.AgentAcks("b"), clientv3.WithPrefix())},
		{"read requests", clientv3.OpGet(layout.Requests(), clientv3.WithPrefix())},
		{"read the whole prefix", clientv3.OpGet(layout.Prefix(), clientv3.WithPrefix())},
		{"read the election", clientv3.OpGet(layout.Election(), clientv3.WithPrefix())},
	}
	for _, tc := range denied {
		t.Run("agent a cannot "+tc.what, func(t *testing.T) {
			_, err := ca.Do(ctxT(t, 5*time.Second), tc.op)
			if !errors.Is(err, rpctypes.ErrPermissionDenied) {
				t.Fatalf("got %v, want permission denied", err)
			}
			// Nor inside a Txn.
			_, err = ca.Txn(ctxT(t, 5*time.Second)).Then(tc.op).Commit()
			if !errors.Is(err, rpctypes.ErrPermissionDenied) {
				t.Fatalf("in a Txn: got %v, want permission denied", err)
			}
		})
	}
	// ... and nothing was written: no event since `before` carries the
	// forged value or the forged keys (the system runs meanwhile, so other
	// writes are fine). A whole-keyspace watch sees /elsewhere too.
	const marker = "/security-test-marker"
	if _, err := root.Put(ctxT(t, 5*time.Second), marker, "end of the refused writes"); err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithCancel(ctxT(t, 10*time.Second))
	defer cancel()
	seen := false
	for resp := range root.Watch(wctx, "\x00", clientv3.WithFromKey(), clientv3.WithRev(before.Header.Revision+1)) {
		if err := resp.Err(); err != nil {
			t.Fatal(err)
		}
		for _, ev := range resp.Events {
			key := string(ev.Kv.Key)
			if string(ev.Kv.Value) == forged || key == "/elsewhere" || key == layout.Registration("b", "evil") || key == layout.Election()+"/fake" {
				t.Fatalf("a refused write happened: %s %s=%q", ev.Type, key, ev.Kv.Value)
			}
			seen = seen || key == marker
		}
		if seen {
			break
		}
	}
	if !seen {
		t.Fatal("the history watch ended before the marker")
	}
	// What a may read: the revision and rounds/ (and its own requests).
	for _, key := range []string{layout.Revision(), layout.Round(r.Revision)} {
		if resp, err := ca.Get(ctxT(t, 5*time.Second), key); err != nil || len(resp.Kvs) != 1 {
			t.Fatalf("agent a cannot read %s: %v", key, err)
		}
	}
	if sink.contains("permission denied") {
		t.Fatal("a component logged permission denied during the rounds")
	}

	// a's Close revokes its lease: its registrations and acks vanish at once.
	a.close()
	for _, p := range []string{layout.AgentRegistrations("a"), layout.AgentAcks("a")} {
		resp, err := root.Get(ctxT(t, 5*time.Second), p, clientv3.WithPrefix(), clientv3.WithCountOnly())
		if err != nil || resp.Count != 0 {
			t.Fatalf("after a's Close, %s holds %d keys (%v): the lease revoke was refused", p, resp.Count, err)
		}
	}
}

// The same credentials without TLS: a wrong password is refused before any
// request, with the user named.
func TestWrongPasswordIsRefused(t *testing.T) {
	m := etcdtest.Start(t)
	admin := m.Client(t)
	pws := &testPasswords{pws: map[string]string{}}
	if err := rbac.Apply(ctxT(t, 30*time.Second), admin, rbac.Spec{Layout: layout, Agents: []string{"a"}}, rbac.Options{Passwords: pws}); err != nil {
		t.Fatal(err)
	}
	_, err := etcdtest.NewClientWith(clientv3.Config{Endpoints: []string{m.Endpoint()}, Username: "a", Password: "guess", Context: context.Background()})
	if !errors.Is(err, rpctypes.ErrAuthFailed) {
		t.Fatalf("wrong password: %v, want authentication failed", err)
	}
}
