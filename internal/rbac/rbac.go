// Package rbac sets up etcd's own authentication for a resync deployment
// with least privilege: a coordinator role that may read and write the whole
// prefix, an operator role that may read it and write operators' requests,
// and one role per agent that may touch only that agent's keys. It is what
// `resyncctl rbac apply` and `resyncctl rbac status` run.
//
// The roles, for prefix P (default /resync/):
//
//	resync-coordinator   readwrite  P...                    (the whole prefix)
//	resync-operator      read       P...                    (the whole prefix)
//	                     readwrite  P requests/operator/...
//	resync-agent-<a>     readwrite  P registrations/<a>/...
//	                     readwrite  P acks/<a>/...
//	                     readwrite  P requests/agent/<a>/...
//	                     readwrite  P owners/<a>            (the key alone)
//	                     read       P revision              (the key alone)
//	                     read       P rounds/...
//
// That is all an agent needs: its registry writes and deletes its
// registrations (on its lease) and its owner key (one process per agent
// name), its watcher watches the revision key and
// writes its acks (on the same lease) and its own requests (ReportError,
// rejoin). So etcd itself refuses an agent's request under another agent's
// prefix, under the operators' prefix or at a legacy requests/<id> key, and
// its overwriting or deleting others' requests; the coordinator refuses
// what etcd cannot judge, an agent's request, under its own prefix, for
// other agents or all (schema.Request.AllowedFor). Leases need no
// permission beyond authentication, except that revoking one (an agent's
// Close) needs write permission on every key attached to it: only the
// agent's own registrations and acks are. Reading rounds/ is granted so that
// an agent may look up the summary of a round it took part in.
//
// Users: one per agent, named like the agent and bound to its role; the
// coordinator user (default "resyncd") bound to resync-coordinator; the
// operators (Spec.Operators, optional) bound to resync-operator, which is
// what resyncctl status, history, watch and trigger need; and "root" with
// the root role, which etcd requires before it enables authentication (root
// may do everything, operators' work included). With client certificate
// authentication (etcd's --client-cert-auth) a client that presents a
// certificate and no password is the user named by the certificate's common
// name (CN), so users may be created without a password
// (Options.NoPassword).
package rbac

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/resyncd/resync/schema"
)

// Names of the roles and users this package manages.
const (
	// RootUser and RootRole are etcd's: auth enable needs the user root
	// with the role root.
	RootUser = "root"
	RootRole = "root"
	// CoordinatorRole may read and write the whole prefix.
	CoordinatorRole = "resync-coordinator"
	// OperatorRole may read the whole prefix and write operators'
	// requests (resyncctl status, history, watch, trigger).
	OperatorRole = "resync-operator"
	// AgentRolePrefix + agent name is an agent's role.
	AgentRolePrefix = "resync-agent-"
	// DefaultCoordinatorUser is the coordinator's user unless told
	// otherwise.
	DefaultCoordinatorUser = "resyncd"
)

// Permission types, as clientv3.PermissionType (clientv3's PermRead etc. are
// of etcd's protobuf type).
const (
	Read      = clientv3.PermissionType(clientv3.PermRead)
	Write     = clientv3.PermissionType(clientv3.PermWrite)
	ReadWrite = clientv3.PermissionType(clientv3.PermReadWrite)
)

// AgentRole is the role of agent.
func AgentRole(agent string) string { return AgentRolePrefix + agent }

// Perm is one permission of a role: Key alone when RangeEnd is "", else the
// range [Key, RangeEnd) (a prefix when RangeEnd is
// clientv3.GetPrefixRangeEnd(Key)).
type Perm struct {
	Type     clientv3.PermissionType
	Key      string
	RangeEnd string
}

// String is like "readwrite prefix /resync/acks/a/".
func (p Perm) String() string {
	return strings.ToLower(authTypeName(p.Type)) + " " + p.Range()
}

// Range describes the keys: "key K", "prefix P" or "range [K, E)".
func (p Perm) Range() string {
	switch {
	case p.Key == "" && p.RangeEnd == "\x00":
		return "all keys"
	case p.RangeEnd == "":
		return "key " + p.Key
	case p.RangeEnd == clientv3.GetPrefixRangeEnd(p.Key):
		return "prefix " + p.Key
	default:
		return fmt.Sprintf("range [%s, %s)", p.Key, p.RangeEnd)
	}
}

func authTypeName(t clientv3.PermissionType) string {
	switch t {
	case Read:
		return "read"
	case Write:
		return "write"
	case ReadWrite:
		return "readwrite"
	}
	return fmt.Sprintf("perm(%d)", t)
}

// Spec is the deployment to secure.
type Spec struct {
	// Layout gives the key prefix.
	Layout schema.Layout
	// CoordinatorUser is the coordinators' user (DefaultCoordinatorUser if
	// empty). It must not be root.
	CoordinatorUser string
	// Agents are the agent names; each becomes a user with its own role.
	Agents []string
	// Operators are users bound to OperatorRole (optional: root may do
	// their work too).
	Operators []string
}

func (s Spec) coordinatorUser() string {
	if s.CoordinatorUser == "" {
		return DefaultCoordinatorUser
	}
	return s.CoordinatorUser
}

// Validate checks names: agents and the coordinator user are valid resync
// names, distinct, and none is root.
func (s Spec) Validate() error {
	cu := s.coordinatorUser()
	if err := schema.ValidateToken("coordinator user", cu); err != nil {
		return fmt.Errorf("rbac: %w", err)
	}
	if cu == RootUser {
		return errors.New("rbac: the coordinator user must not be root: it would have every permission")
	}
	if len(s.Agents) == 0 {
		return errors.New("rbac: no agents: name at least one")
	}
	seen := map[string]bool{cu: true, RootUser: true}
	for _, a := range s.Agents {
		if err := schema.ValidateName("agent", a); err != nil {
			return fmt.Errorf("rbac: %w", err)
		}
		if seen[a] {
			return fmt.Errorf("rbac: agent %q is named twice, or like the coordinator user or root", a)
		}
		seen[a] = true
	}
	for _, o := range s.Operators {
		if err := schema.ValidateToken("operator user", o); err != nil {
			return fmt.Errorf("rbac: %w", err)
		}
		if seen[o] {
			return fmt.Errorf("rbac: operator user %q is named twice, or like an agent, the coordinator user or root", o)
		}
		seen[o] = true
	}
	return nil
}

func prefix(key string) Perm {
	return Perm{Key: key, RangeEnd: clientv3.GetPrefixRangeEnd(key)}
}

func withType(p Perm, t clientv3.PermissionType) Perm { p.Type = t; return p }

// Roles are the roles and their exact permissions, by role name (root not
// included: it needs none).
func (s Spec) Roles() map[string][]Perm {
	l := s.Layout
	roles := map[string][]Perm{
		CoordinatorRole: {withType(prefix(l.Prefix()), ReadWrite)},
		OperatorRole: {
			withType(prefix(l.Prefix()), Read),
			withType(prefix(l.OperatorRequests()), ReadWrite),
		},
	}
	for _, a := range s.Agents {
		roles[AgentRole(a)] = []Perm{
			withType(prefix(l.AgentRegistrations(a)), ReadWrite),
			withType(prefix(l.AgentAcks(a)), ReadWrite),
			withType(prefix(l.AgentRequests(a)), ReadWrite),
			{Type: ReadWrite, Key: l.Owner(a)},
			{Type: Read, Key: l.Revision()},
			withType(prefix(l.Prefix()+"rounds/"), Read),
			// Its wake shard is one of these; its own wake key is on its
			// session lease, and revoking a lease needs write permission
			// on every key attached to it.
			withType(prefix(l.WakeShards()), Read),
			{Type: ReadWrite, Key: l.WakeAgent(a)},
		}
	}
	return roles
}

// Users are the users and their one role, by user name.
func (s Spec) Users() map[string]string {
	users := map[string]string{RootUser: RootRole, s.coordinatorUser(): CoordinatorRole}
	for _, a := range s.Agents {
		users[a] = AgentRole(a)
	}
	for _, o := range s.Operators {
		users[o] = OperatorRole
	}
	return users
}

// Passwords supplies the users' passwords to Apply.
type Passwords interface {
	// Given returns the password the operator chose for user, if any. An
	// existing user with a given password gets it set unless it already
	// has it (so re-applying converges); one without keeps its own.
	Given(user string) (password string, ok bool, err error)
	// New returns a password for a user about to be created that has no
	// given password: typically generated and stored where the user's
	// process can read it. It is called before the user is created.
	New(user string) (string, error)
}

// Options tune Apply.
type Options struct {
	// Passwords supplies passwords; required unless NoPassword.
	Passwords Passwords
	// NoPassword creates users without a password: they authenticate only
	// with a client certificate whose CN is their name (etcd
	// --client-cert-auth). Given passwords are still set.
	NoPassword bool
	// Log receives one line per change (nil: none).
	Log func(format string, a ...any)
}

// Apply makes etcd's roles, users and grants match spec, idempotently, and
// enables authentication: it creates what is missing, sets given passwords,
// revokes permissions of the managed roles that spec does not list and
// resync roles that a managed user should not have, then enables auth if it
// is off. Once auth is on, c must be root's client. Roles and users that
// spec does not name are left alone.
func Apply(ctx context.Context, c *clientv3.Client, spec Spec, o Options) error {
	if err := spec.Validate(); err != nil {
		return err
	}
	if o.Passwords == nil && !o.NoPassword {
		return errors.New("rbac: no password source and not NoPassword")
	}
	logf := o.Log
	if logf == nil {
		logf = func(string, ...any) {}
	}
	roles := spec.Roles()
	names := sortedKeys(roles)
	if _, err := c.RoleAdd(ctx, RootRole); err == nil {
		logf("created role %s", RootRole)
	} else if !errors.Is(err, rpctypes.ErrRoleAlreadyExist) {
		return fmt.Errorf("rbac: add role %s: %w", RootRole, err)
	}
	for _, name := range names {
		if err := applyRole(ctx, c, name, roles[name], logf); err != nil {
			return err
		}
	}
	users := spec.Users()
	for _, u := range sortedKeys(users) {
		if err := applyUser(ctx, c, u, users[u], o, logf); err != nil {
			return err
		}
	}
	st, err := c.AuthStatus(ctx)
	if err != nil {
		return fmt.Errorf("rbac: auth status: %w", err)
	}
	if !st.Enabled {
		if _, err := c.AuthEnable(ctx); err != nil {
			return fmt.Errorf("rbac: auth enable: %w", err)
		}
		logf("enabled authentication")
	}
	return nil
}

func applyRole(ctx context.Context, c *clientv3.Client, name string, want []Perm, logf func(string, ...any)) error {
	var have []Perm
	resp, err := c.RoleGet(ctx, name)
	switch {
	case errors.Is(err, rpctypes.ErrRoleNotFound):
		if _, err := c.RoleAdd(ctx, name); err != nil {
			return fmt.Errorf("rbac: add role %s: %w", name, err)
		}
		logf("created role %s", name)
	case err != nil:
		return fmt.Errorf("rbac: get role %s: %w", name, err)
	default:
		for _, p := range resp.Perm {
			have = append(have, Perm{Type: clientv3.PermissionType(p.PermType), Key: string(p.Key), RangeEnd: string(p.RangeEnd)})
		}
	}
	for _, p := range have {
		if !slices.Contains(want, p) {
			if _, err := c.RoleRevokePermission(ctx, name, p.Key, p.RangeEnd); err != nil {
				return fmt.Errorf("rbac: role %s: revoke %s: %w", name, p, err)
			}
			logf("role %s: revoked %s", name, p)
		}
	}
	for _, p := range want {
		if !slices.Contains(have, p) {
			if _, err := c.RoleGrantPermission(ctx, name, p.Key, p.RangeEnd, p.Type); err != nil {
				return fmt.Errorf("rbac: role %s: grant %s: %w", name, p, err)
			}
			logf("role %s: granted %s", name, p)
		}
	}
	return nil
}

func applyUser(ctx context.Context, c *clientv3.Client, user, role string, o Options, logf func(string, ...any)) error {
	var given string
	var ok bool
	if o.Passwords != nil {
		var err error
		if given, ok, err = o.Passwords.Given(user); err != nil {
			return fmt.Errorf("rbac: password of %s: %w", user, err)
		}
	}
	var roles []string
	resp, err := c.UserGet(ctx, user)
	switch {
	case errors.Is(err, rpctypes.ErrUserNotFound):
		pw := given
		if !ok && !o.NoPassword {
			if pw, err = o.Passwords.New(user); err != nil {
				return fmt.Errorf("rbac: password of new user %s: %w", user, err)
			}
		}
		if pw == "" {
			_, err = c.UserAddWithOptions(ctx, user, "", &clientv3.UserAddOptions{NoPassword: true})
		} else {
			_, err = c.UserAdd(ctx, user, pw)
		}
		if err != nil {
			return fmt.Errorf("rbac: add user %s: %w", user, err)
		}
		logf("created user %s", user)
	case err != nil:
		return fmt.Errorf("rbac: get user %s: %w", user, err)
	default:
		roles = resp.Roles
		if ok && !authenticates(ctx, c, user, given) {
			if _, err := c.UserChangePassword(ctx, user, given); err != nil {
				return fmt.Errorf("rbac: set password of %s: %w", user, err)
			}
			logf("user %s: set the given password", user)
		}
	}
	for _, r := range roles {
		if r != role && (r == CoordinatorRole || r == OperatorRole || strings.HasPrefix(r, AgentRolePrefix)) {
			if _, err := c.UserRevokeRole(ctx, user, r); err != nil {
				return fmt.Errorf("rbac: user %s: revoke role %s: %w", user, r, err)
			}
			logf("user %s: revoked role %s", user, r)
		}
	}
	if !slices.Contains(roles, role) {
		if _, err := c.UserGrantRole(ctx, user, role); err != nil {
			return fmt.Errorf("rbac: user %s: grant role %s: %w", user, role, err)
		}
		logf("user %s: granted role %s", user, role)
	}
	return nil
}

// authenticates reports whether user logs in with password (false when
// auth is off: then the password is set to be sure).
func authenticates(ctx context.Context, c *clientv3.Client, user, password string) bool {
	_, err := c.Authenticate(ctx, user, password)
	return err == nil
}

// Status is etcd's authentication state.
type Status struct {
	Enabled bool
	// Users maps every user to its roles.
	Users map[string][]string
	// Roles maps every role to its permissions.
	Roles map[string][]Perm
}

// ReadStatus returns etcd's authentication state (with auth on, c must be root's
// client).
func ReadStatus(ctx context.Context, c *clientv3.Client) (Status, error) {
	st := Status{Users: map[string][]string{}, Roles: map[string][]Perm{}}
	as, err := c.AuthStatus(ctx)
	if err != nil {
		return st, fmt.Errorf("rbac: auth status: %w", err)
	}
	st.Enabled = as.Enabled
	ul, err := c.UserList(ctx)
	if err != nil {
		return st, fmt.Errorf("rbac: list users: %w", err)
	}
	for _, u := range ul.Users {
		ur, err := c.UserGet(ctx, u)
		if err != nil {
			return st, fmt.Errorf("rbac: get user %s: %w", u, err)
		}
		st.Users[u] = ur.Roles
	}
	rl, err := c.RoleList(ctx)
	if err != nil {
		return st, fmt.Errorf("rbac: list roles: %w", err)
	}
	for _, r := range rl.Roles {
		rr, err := c.RoleGet(ctx, r)
		if err != nil {
			return st, fmt.Errorf("rbac: get role %s: %w", r, err)
		}
		perms := []Perm{}
		for _, p := range rr.Perm {
			perms = append(perms, Perm{Type: clientv3.PermissionType(p.PermType), Key: string(p.Key), RangeEnd: string(p.RangeEnd)})
		}
		st.Roles[r] = perms
	}
	return st, nil
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
