package rbac

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/goleak"

	"github.com/resyncd/resync/internal/testing/etcdtest"
	"github.com/resyncd/resync/schema"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m, etcdtest.LeakOptions()...) }

var layout = schema.MustLayout(schema.DefaultPrefix)

// passwords generates "gen-<user>" for new users and hands out given ones.
type passwords struct {
	mu    sync.Mutex
	given map[string]string
	made  []string
}

func (p *passwords) Given(user string) (string, bool, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	pw, ok := p.given[user]
	return pw, ok, nil
}

func (p *passwords) New(user string) (string, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.made = append(p.made, user)
	return "gen-" + user, nil
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func login(t *testing.T, m *etcdtest.Member, user, password string) (*clientv3.Client, error) {
	c, err := etcdtest.NewClientWith(clientv3.Config{Endpoints: []string{m.Endpoint()}, Username: user, Password: password})
	if err == nil {
		t.Cleanup(func() { c.Close() })
	}
	return c, err
}

func TestApplyIsExactAndIdempotent(t *testing.T) {
	m := etcdtest.Start(t)
	spec := Spec{Layout: layout, Agents: []string{"a", "b"}, Operators: []string{"ops"}}
	pws := &passwords{given: map[string]string{}}
	var changes []string
	logf := func(format string, a ...any) { changes = append(changes, fmt.Sprintf(format, a...)) }
	if err := Apply(ctxT(t), m.Client(t), spec, Options{Passwords: pws, Log: logf}); err != nil {
		t.Fatal(err)
	}
	if want := []string{"a", "b", "ops", "resyncd", "root"}; !slices.Equal(pws.made, want) {
		t.Fatalf("generated passwords for %v, want %v", pws.made, want)
	}
	if !slices.Contains(changes, "enabled authentication") {
		t.Fatalf("changes %v: auth not enabled", changes)
	}
	root, err := login(t, m, "root", "gen-root")
	if err != nil {
		t.Fatal(err)
	}
	st, err := ReadStatus(ctxT(t), root)
	if err != nil {
		t.Fatal(err)
	}
	spec.CoordinatorUser = DefaultCoordinatorUser
	want := spec.Roles()
	if _, ok := st.Roles[RootRole]; !ok {
		t.Fatalf("no root role in %v", st.Roles)
	}
	delete(st.Roles, RootRole)
	if !st.Enabled || !maps.EqualFunc(st.Roles, want, func(a, b []Perm) bool { return slices.Equal(sortPerms(a), sortPerms(b)) }) {
		t.Fatalf("roles %v, want %v", st.Roles, want)
	}
	for u, r := range spec.Users() {
		if !slices.Equal(st.Users[u], []string{r}) {
			t.Fatalf("user %s has roles %v, want [%s]", u, st.Users[u], r)
		}
	}

	// Again, as root: nothing to do, no password generated.
	changes, pws.made = nil, nil
	if err := Apply(ctxT(t), root, spec, Options{Passwords: pws, Log: logf}); err != nil {
		t.Fatal(err)
	}
	if len(changes) != 0 || len(pws.made) != 0 {
		t.Fatalf("second apply changed %v, generated %v", changes, pws.made)
	}

	// Drift: an extra permission for a, a's user given the coordinator
	// role. Apply takes both away, and sets a given password.
	if _, err := root.RoleGrantPermission(ctxT(t), AgentRole("a"), layout.Prefix(), clientv3.GetPrefixRangeEnd(layout.Prefix()), ReadWrite); err != nil {
		t.Fatal(err)
	}
	if _, err := root.UserGrantRole(ctxT(t), "a", CoordinatorRole); err != nil {
		t.Fatal(err)
	}
	pws.given["a"] = "new-a"
	changes = nil
	if err := Apply(ctxT(t), root, spec, Options{Passwords: pws, Log: logf}); err != nil {
		t.Fatal(err)
	}
	for _, c := range []string{"role resync-agent-a: revoked readwrite prefix /resync/", "user a: revoked role resync-coordinator", "user a: set the given password"} {
		if !slices.Contains(changes, c) {
			t.Errorf("changes %q lack %q", changes, c)
		}
	}
	if _, err := login(t, m, "a", "gen-a"); !errors.Is(err, rpctypes.ErrAuthFailed) {
		t.Errorf("old password of a: %v", err)
	}
	a, err := login(t, m, "a", "new-a")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.Put(ctxT(t), layout.Revision(), "x"); !errors.Is(err, rpctypes.ErrPermissionDenied) {
		t.Fatalf("a writes the revision after the re-apply: %v", err)
	}

	// Requests: each writer only under its own prefix.
	ops, err := login(t, m, "ops", "gen-ops")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		who  string
		c    *clientv3.Client
		key  string
		want error
	}{
		{"a", a, layout.AgentRequest("a", "1"), nil},
		{"a", a, layout.AgentRequest("b", "1"), rpctypes.ErrPermissionDenied},
		{"a", a, layout.OperatorRequest("1"), rpctypes.ErrPermissionDenied},
		{"a", a, layout.LegacyRequest("1"), rpctypes.ErrPermissionDenied},
		{"ops", ops, layout.OperatorRequest("1"), nil},
		{"ops", ops, layout.AgentRequest("a", "2"), rpctypes.ErrPermissionDenied},
	} {
		if _, err := tc.c.Put(ctxT(t), tc.key, "{}"); !errors.Is(err, tc.want) && err != tc.want {
			t.Errorf("%s writes %s: %v, want %v", tc.who, tc.key, err, tc.want)
		}
	}
	if _, err := ops.Get(ctxT(t), layout.Prefix(), clientv3.WithPrefix()); err != nil {
		t.Errorf("the operator cannot read the prefix: %v", err)
	}

	// Without credentials, once auth is on, Apply fails clearly.
	if err := Apply(ctxT(t), m.Client(t), spec, Options{Passwords: pws}); err == nil || !strings.Contains(err.Error(), "rbac:") {
		t.Fatalf("apply without root: %v", err)
	}
}

// An agent named with a space (its keys carry the escaped name, node%201)
// writes only its own keys: not those of "node 10", whose escaped name
// node%2010 starts with node%201, nor those of "node".
func TestAgentNamedWithASpaceWritesOnlyItsOwnKeys(t *testing.T) {
	m := etcdtest.Start(t)
	agents := []string{"node 1", "node 10", "node", "Config VPP/x"}
	spec := Spec{Layout: layout, Agents: agents}
	pws := &passwords{given: map[string]string{}}
	if err := Apply(ctxT(t), m.Client(t), spec, Options{Passwords: pws}); err != nil {
		t.Fatal(err)
	}
	c, err := login(t, m, "node 1", "gen-node 1")
	if err != nil {
		t.Fatal(err)
	}
	const plugin = "Config VPP default plug:IF/L2/L3"
	for _, a := range agents {
		var want error
		if a != "node 1" {
			want = rpctypes.ErrPermissionDenied
		}
		for _, key := range []string{layout.Registration(a, plugin), layout.Ack(a, plugin), layout.Owner(a), layout.AgentRequest(a, "1-a")} {
			if _, err := c.Put(ctxT(t), key, "{}"); !errors.Is(err, want) && err != want {
				t.Errorf("node 1 writes %s: %v, want %v", key, err, want)
			}
		}
	}
	if _, err := c.Get(ctxT(t), layout.Revision()); err != nil {
		t.Errorf("node 1 reads the revision: %v", err)
	}
}

func sortPerms(p []Perm) []Perm {
	p = slices.Clone(p)
	slices.SortFunc(p, func(a, b Perm) int { return strings.Compare(a.String(), b.String()) })
	return p
}

// Users made without a password authenticate only with a client
// certificate whose CN is their name.
func TestNoPasswordUsersAuthenticateByCertificate(t *testing.T) {
	pki := etcdtest.NewPKI(t)
	m := etcdtest.StartTLS(t, pki, true)
	cfg := func(cn string) clientv3.Config {
		return clientv3.Config{Endpoints: []string{m.Endpoint()}, TLS: pki.ClientTLS(cn)}
	}
	spec := Spec{Layout: layout, Agents: []string{"a", "b"}}
	if err := Apply(ctxT(t), etcdtest.ClientWith(t, cfg("root")), spec, Options{NoPassword: true}); err != nil {
		t.Fatal(err)
	}
	a := etcdtest.ClientWith(t, cfg("a"))
	if _, err := a.Put(ctxT(t), layout.Ack("a", "p"), "x"); err != nil {
		t.Fatalf("a (by certificate) writes its ack: %v", err)
	}
	if _, err := a.Put(ctxT(t), layout.Ack("b", "p"), "x"); !errors.Is(err, rpctypes.ErrPermissionDenied) {
		t.Fatalf("a (by certificate) writes b's ack: %v", err)
	}
	if _, err := etcdtest.ClientWith(t, cfg("nobody")).Put(ctxT(t), layout.OperatorRequest("x"), "x"); err == nil {
		t.Fatal("a certificate whose CN is no user wrote")
	}
	// root by certificate may read the state.
	if st, err := ReadStatus(ctxT(t), etcdtest.ClientWith(t, cfg("root"))); err != nil || !st.Enabled || len(st.Users) != 4 {
		t.Fatalf("status as root by certificate: %+v %v", st, err)
	}
	// No password: a password login fails.
	if _, err := a.Authenticate(ctxT(t), "a", "anything"); err == nil || !strings.Contains(err.Error(), "authentication failed") {
		t.Fatalf("password login of a user without a password: %v", err)
	}
}

func TestSpecValidate(t *testing.T) {
	for _, tc := range []struct {
		spec Spec
		want string
	}{
		{Spec{Agents: []string{"a\nb"}}, "control character"},
		{Spec{Agents: []string{"\xff"}}, "not valid UTF-8"},
		{Spec{Agents: []string{strings.Repeat("p", 200)}}, "200 bytes long"},
		{Spec{Agents: []string{""}}, "agent name is empty"},
		{Spec{Agents: nil}, "no agents"},
		{Spec{Agents: []string{"a", "a"}}, `agent "a" is named twice`},
		{Spec{Agents: []string{"root"}}, `agent "root" is named twice, or like the coordinator user or root`},
		{Spec{Agents: []string{"resyncd"}}, `like the coordinator user`},
		{Spec{Agents: []string{"a"}, CoordinatorUser: "root"}, "must not be root"},
		{Spec{Agents: []string{"a"}, CoordinatorUser: "co ord"}, "invalid name"},
		{Spec{Agents: []string{"a"}, Operators: []string{"a"}}, `operator user "a" is named twice, or like an agent`},
		{Spec{Agents: []string{"a"}, Operators: []string{"resyncd"}}, `operator user "resyncd" is named twice`},
		{Spec{Agents: []string{"a"}, Operators: []string{""}}, "operator user is empty"},
	} {
		t.Run(fmt.Sprint(tc.spec.Agents, tc.spec.CoordinatorUser), func(t *testing.T) {
			tc.spec.Layout = layout
			err := tc.spec.Validate()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want %q", err, tc.want)
			}
		})
	}
}
