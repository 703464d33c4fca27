package main

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/spf13/pflag"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"

	rcli "github.com/resyncd/resync/internal/cli"
	"github.com/resyncd/resync/internal/etcdflags"
	"github.com/resyncd/resync/internal/rbac"
	"github.com/resyncd/resync/schema"
)

// passwordEnv is the variable that gives user's password to rbac apply:
// RESYNC_PASSWORD_<USER>, upper-cased, every character outside [A-Z0-9] as
// '_' (agent-1 -> RESYNC_PASSWORD_AGENT_1).
func passwordEnv(user string) string {
	return rcli.EnvPrefix + "PASSWORD_" + strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z':
			return r - 'a' + 'A'
		case r >= 'A' && r <= 'Z', r >= '0' && r <= '9':
			return r
		}
		return '_'
	}, user)
}

// cliPasswords are rbac apply's password sources, in order: --root-password
// (root only), RESYNC_PASSWORD_<USER>, <secrets-dir>/<user>.password; a new
// user with none of these gets a generated password written to
// <secrets-dir>/<user>.password (0600) before it is created.
type cliPasswords struct {
	root    string
	dir     string
	lookup  func(string) (string, bool)
	written []string
}

// file is <dir>/<user>.password, the user's name escaped as in keys
// (schema.EscapeName: "node 1" -> node%201.password), so that no name makes
// a path outside dir.
func (p *cliPasswords) file(user string) string {
	return filepath.Join(p.dir, schema.EscapeName(user)+".password")
}

func (p *cliPasswords) Given(user string) (string, bool, error) {
	if user == rbac.RootUser && p.root != "" {
		return p.root, true, nil
	}
	if v, ok := p.lookup(passwordEnv(user)); ok && v != "" {
		return v, true, nil
	}
	if p.dir == "" {
		return "", false, nil
	}
	b, err := os.ReadFile(p.file(user))
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return "", false, nil
	case err != nil:
		return "", false, err
	}
	pw := strings.TrimRight(string(b), "\r\n")
	if pw == "" {
		return "", false, fmt.Errorf("%s is empty", p.file(user))
	}
	return pw, true, nil
}

func (p *cliPasswords) New(user string) (string, error) {
	if p.dir == "" {
		return "", fmt.Errorf("new user %s has no password: give --secrets-dir (a generated one is written there) or %s", user, passwordEnv(user))
	}
	if err := os.MkdirAll(p.dir, 0o700); err != nil {
		return "", err
	}
	b := make([]byte, 24)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	pw := base64.RawURLEncoding.EncodeToString(b)
	path := p.file(user)
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return "", err
	}
	if _, err := f.WriteString(pw + "\n"); err != nil {
		f.Close()
		return "", err
	}
	if err := f.Close(); err != nil {
		return "", err
	}
	p.written = append(p.written, path)
	return pw, nil
}

// rbacApplyOpts are the flags of rbac apply.
type rbacApplyOpts struct {
	agents, coordUser, operators, dir, rootPW *string
	noPW                                      *bool
}

func setupRBACApply(fs *pflag.FlagSet) func(context.Context, *env) error {
	o := rbacApplyOpts{
		agents:    fs.String("agents", "", "comma-separated agent names: each gets a user of that name and the role resync-agent-<name> (required)"),
		coordUser: fs.String("coordinator-user", rbac.DefaultCoordinatorUser, "user of resyncd (the coordinators): read and write on the whole prefix"),
		operators: fs.String("operators", "", "comma-separated operator users (optional): role "+rbac.OperatorRole+", read the whole prefix and trigger resyncs of any scope (root may too)"),
		dir:       fs.String("secrets-dir", "", "read users' passwords from <dir>/<user>.password; write generated ones there (0600)"),
		rootPW:    fs.String("root-password", "", "password of root (else "+passwordEnv("root")+", the secrets dir, or generated)"),
		noPW:      fs.Bool("no-passwords", false, "create users without passwords: they authenticate with a client certificate whose CN is the user (etcd --client-cert-auth)"),
	}
	return func(ctx context.Context, e *env) error { return rbacApply(ctx, e, o) }
}

// rbacApply is rbac apply: check the spec, connect (without credentials
// while auth is still off), apply, report.
func rbacApply(ctx context.Context, e *env, o rbacApplyOpts) error {
	spec, err := o.spec(e.layout)
	if err != nil {
		return err
	}
	c, err := e.dial(ctx)
	if errors.Is(err, etcdflags.ErrAuthDisabled) {
		// First run: auth is off, credentials are for later runs.
		f := *e.etcd
		f.User, f.Password = "", ""
		e.etcd = &f
		c, err = e.dial(ctx)
	}
	if err != nil {
		return err
	}
	pws := &cliPasswords{root: *o.rootPW, dir: *o.dir, lookup: os.LookupEnv}
	var changes []string
	opts := rbac.Options{Passwords: pws, NoPassword: *o.noPW, Log: func(format string, a ...any) {
		line := fmt.Sprintf(format, a...)
		changes = append(changes, line)
		if !e.json {
			fmt.Fprintln(e.stdout, line)
		}
	}}
	cctx, cancel := context.WithTimeout(ctx, 4*e.etcd.CommandTimeout)
	defer cancel()
	if err := rbac.Apply(cctx, c, spec, opts); err != nil {
		if errors.Is(err, rpctypes.ErrPermissionDenied) || errors.Is(err, rpctypes.ErrUserEmpty) {
			return permissionHint(fmt.Errorf("%w (authentication is on: connect as root, with --user root and its password or a client certificate with CN root)", err))
		}
		return err
	}
	return reportRBACApply(e, changes, pws.written)
}

// spec makes the rbac spec from the flags; its errors are usage errors.
func (o rbacApplyOpts) spec(layout schema.Layout) (rbac.Spec, error) {
	spec := rbac.Spec{Layout: layout, CoordinatorUser: *o.coordUser, Agents: splitList(*o.agents), Operators: splitList(*o.operators)}
	if len(spec.Agents) == 0 {
		return spec, usagef("--agents is required: the agent names, comma-separated")
	}
	if err := spec.Validate(); err != nil {
		return spec, usagef("%v", strings.TrimPrefix(err.Error(), "rbac: "))
	}
	return spec, nil
}

// splitList splits a comma-separated list, dropping empty items.
func splitList(s string) []string {
	var out []string
	for _, v := range strings.Split(s, ",") {
		if v = strings.TrimSpace(v); v != "" {
			out = append(out, v)
		}
	}
	return out
}

// reportRBACApply reports rbac apply's changes (in text mode each was
// printed as it was made) and the password files it wrote.
func reportRBACApply(e *env, changes, written []string) error {
	if e.json {
		return writeJSON(e.stdout, struct {
			Changes          []string `json:"changes"`
			PasswordsWritten []string `json:"passwords_written"`
			AuthEnabled      bool     `json:"auth_enabled"`
		}{append([]string{}, changes...), append([]string{}, written...), true})
	}
	for _, p := range written {
		fmt.Fprintf(e.stdout, "wrote a generated password to %s\n", p)
	}
	if len(changes) == 0 {
		fmt.Fprintln(e.stdout, "nothing to change: roles, users and grants are as specified; authentication is enabled")
	}
	return nil
}

// permDoc is one permission in `rbac status -o json`.
type permDoc struct {
	Type     string `json:"type"`
	Key      string `json:"key"`
	RangeEnd string `json:"range_end,omitempty"`
	Keys     string `json:"keys"`
}

func setupRBACStatus(fs *pflag.FlagSet) func(context.Context, *env) error {
	return rbacStatus
}

// rbacStatus is rbac status: read etcd's auth state, then print it.
func rbacStatus(ctx context.Context, e *env) error {
	c, cctx, cancel, err := e.connect(ctx)
	if err != nil {
		return err
	}
	defer cancel()
	st, err := rbac.ReadStatus(cctx, c)
	if err != nil {
		if errors.Is(err, rpctypes.ErrPermissionDenied) || errors.Is(err, rpctypes.ErrUserEmpty) {
			return permissionHint(fmt.Errorf("%w (rbac status needs root: --user root, or a client certificate with CN root)", err))
		}
		return err
	}
	roles := map[string][]permDoc{}
	for r, perms := range st.Roles {
		docs := []permDoc{}
		for _, p := range perms {
			docs = append(docs, permDoc{Type: strings.Fields(p.String())[0], Key: p.Key, RangeEnd: p.RangeEnd, Keys: p.Range()})
		}
		roles[r] = docs
	}
	if e.json {
		return writeJSON(e.stdout, struct {
			Enabled bool                 `json:"enabled"`
			Users   map[string][]string  `json:"users"`
			Roles   map[string][]permDoc `json:"roles"`
		}{st.Enabled, st.Users, roles})
	}
	return printRBACStatus(e.stdout, st.Enabled, st.Users, roles)
}

// printRBACStatus prints whether auth is on, the users and their roles,
// and each role's permissions.
func printRBACStatus(w io.Writer, enabled bool, users map[string][]string, roles map[string][]permDoc) error {
	state := "disabled"
	if enabled {
		state = "enabled"
	}
	fmt.Fprintf(w, "authentication  %s\n\n", state)
	tw := newTable(w)
	row(tw, "USER", "ROLES")
	for _, u := range sorted(users) {
		row(tw, u, strings.Join(users[u], ","))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(w)
	tw = newTable(w)
	row(tw, "ROLE", "PERMISSION", "KEYS")
	for _, r := range sorted(roles) {
		if len(roles[r]) == 0 {
			row(tw, r, "-", "-")
		}
		for _, p := range roles[r] {
			row(tw, r, p.Type, p.Keys)
		}
	}
	return tw.Flush()
}

func sorted[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
