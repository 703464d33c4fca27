package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/resyncd/resync/internal/testing/etcdtest"
)

func readSecret(t *testing.T, dir, user string) string {
	t.Helper()
	path := filepath.Join(dir, user+".password")
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("%s has mode %v, want 0600", path, fi.Mode().Perm())
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	pw := strings.TrimSpace(string(b))
	if len(pw) < 32 {
		t.Fatalf("generated password of %s is %d characters", user, len(pw))
	}
	return pw
}

func TestRBACApplyStatusAndIdempotence(t *testing.T) {
	m := etcdtest.Start(t)
	ep := m.Endpoint()
	dir := filepath.Join(t.TempDir(), "secrets")
	t.Setenv("RESYNC_PASSWORD_AGENT_B", "b-from-env")
	// Logging in (bcrypt) on a loaded machine under -race can pass the 5 s
	// defaults.
	t.Setenv("RESYNC_DIAL_TIMEOUT", "30s")
	t.Setenv("RESYNC_COMMAND_TIMEOUT", "30s")

	// First run: auth off, so the root credentials given for later runs are
	// dropped; passwords generated into the secrets dir, except agent-b's.
	code, out, _ := cli(t, ctxT(t, 60*time.Second), "rbac", "apply", "--endpoints", ep, "--user", "root:later",
		"--agents", "agent-a,agent-b", "--operators", "ops", "--secrets-dir", dir)
	if code != 0 {
		t.Fatalf("rbac apply exited %d", code)
	}
	for _, want := range []string{
		"role resync-agent-agent-a: granted readwrite prefix /resync/acks/agent-a/",
		"role resync-agent-agent-a: granted read key /resync/revision",
		"role resync-agent-agent-a: granted readwrite prefix /resync/requests/agent/agent-a/",
		"role resync-coordinator: granted readwrite prefix /resync/",
		"role resync-operator: granted readwrite prefix /resync/requests/operator/",
		"user agent-b: granted role resync-agent-agent-b",
		"user ops: granted role resync-operator",
		"enabled authentication",
		"wrote a generated password to " + filepath.Join(dir, "root.password"),
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q", want)
		}
	}
	root := readSecret(t, dir, "root")
	readSecret(t, dir, "agent-a")
	readSecret(t, dir, "resyncd")
	ops := readSecret(t, dir, "ops")
	if _, err := os.Stat(filepath.Join(dir, "agent-b.password")); err == nil {
		t.Error("agent-b's password came from the environment but was also written")
	}

	// Again, as root: nothing to change.
	t.Setenv("RESYNC_PASSWORD", root)
	code, out, _ = cli(t, ctxT(t, 60*time.Second), "rbac", "apply", "--endpoints", ep, "--user", "root",
		"--agents", "agent-a,agent-b", "--operators", "ops", "--secrets-dir", dir)
	if code != 0 || !strings.Contains(out, "nothing to change") {
		t.Fatalf("second rbac apply: exit %d, %q", code, out)
	}
	// Status as root: a table.
	code, out, _ = cli(t, ctxT(t, 30*time.Second), "rbac", "status", "--endpoints", ep, "--user", "root")
	if code != 0 {
		t.Fatalf("rbac status exited %d", code)
	}
	for _, want := range []string{"authentication  enabled", "agent-a  resync-agent-agent-a", "resync-agent-agent-b  readwrite   prefix /resync/requests/agent/agent-b/", "ops      resync-operator", "resync-coordinator    readwrite   prefix /resync/"} {
		if !strings.Contains(out, want) {
			t.Errorf("status lacks %q:\n%s", want, out)
		}
	}
	code, out, _ = cli(t, ctxT(t, 30*time.Second), "rbac", "status", "-o", "json", "--endpoints", ep, "--user", "root")
	if code != 0 || !strings.Contains(out, `"keys": "key /resync/revision"`) {
		t.Fatalf("rbac status -o json: %d %s", code, out)
	}
	// agent-b logs in with the password from the environment; it is no root.
	t.Setenv("RESYNC_PASSWORD", "") // else it would be the password of --user user:password
	code, _, errOut := cli(t, ctxT(t, 30*time.Second), "rbac", "status", "--endpoints", ep, "--user", "agent-b:b-from-env")
	if code != 1 || !strings.Contains(errOut, "permission denied") || !strings.Contains(errOut, "needs root") {
		t.Fatalf("rbac status as agent-b: %d %q", code, errOut)
	}
	// An agent's user cannot read the whole prefix: status says whom to use.
	code, _, errOut = cli(t, ctxT(t, 30*time.Second), "status", "--endpoints", ep, "--user", "agent-b:b-from-env")
	if code != 1 || !strings.Contains(errOut, "permission denied (with etcd auth on, resyncctl's commands read the whole prefix: use an operator's user (rbac apply --operators), the coordinator's user or root)") {
		t.Fatalf("status as agent-b: %d %q", code, errOut)
	}
	// An agent's user cannot trigger: etcd refuses the operators' prefix,
	// and trigger says whose credentials it needs. The operator's user can.
	code, _, errOut = cli(t, ctxT(t, 30*time.Second), "trigger", "--reason", "x", "--endpoints", ep, "--user", "agent-b:b-from-env")
	if code != 1 || !strings.Contains(errOut, "permission denied: trigger needs an operator's credentials") || strings.Contains(errOut, "coordinator's user") {
		t.Fatalf("trigger as agent-b: %d %q", code, errOut)
	}
	code, out, errOut = cli(t, ctxT(t, 30*time.Second), "trigger", "--reason", "x", "--endpoints", ep, "--user", "ops:"+ops)
	if code != 0 || !strings.Contains(out, "requested resync") {
		t.Fatalf("trigger as the operator ops: %d %q %q", code, out, errOut)
	}
	code, out, errOut = cli(t, ctxT(t, 30*time.Second), "status", "--endpoints", ep, "--user", "ops:"+ops)
	if code != 0 {
		t.Fatalf("status as the operator ops: %d %q %q", code, out, errOut)
	}
	// No user at all.
	code, _, errOut = cli(t, ctxT(t, 30*time.Second), "status", "--endpoints", ep)
	if code != 1 || !strings.Contains(errOut, "requires authentication: set --user and --password") {
		t.Fatalf("status without a user: %d %q", code, errOut)
	}
	// A wrong password is named as such.
	code, _, errOut = cli(t, ctxT(t, 30*time.Second), "status", "--endpoints", ep, "--user", "agent-b:wrong")
	if code != 1 || !strings.Contains(errOut, `rejected the credentials of user "agent-b"`) {
		t.Fatalf("wrong password: %d %q", code, errOut)
	}
}

func TestRBACUsage(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"rbac"}, "rbac needs a command: apply or status"},
		{[]string{"rbac", "nope"}, `unknown command "rbac nope"`},
		{[]string{"rbac", "apply"}, "--agents is required"},
		{[]string{"rbac", "apply", "--agents", "a\x01"}, "control character"},
		{[]string{"rbac", "apply", "--agents", strings.Repeat("p", 200)}, "200 bytes long"},
		{[]string{"rbac", "apply", "--agents", "a,a"}, "named twice"},
		{[]string{"rbac", "apply", "--agents", "a", "--coordinator-user", "root"}, "must not be root"},
		{[]string{"rbac", "apply", "--agents", "a", "--operators", "a"}, `operator user "a" is named twice, or like an agent`},
		{[]string{"rbac", "apply", "--agents", "a", "--operators", "o/p"}, "invalid name"},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			// An endpoint that nobody serves: usage errors come first.
			args := append(tc.args, "--endpoints", etcdtest.DeadAddr(t), "--dial-timeout", "1s")
			code, _, errOut := cli(t, ctxT(t, 10*time.Second), args...)
			if code != 2 || !strings.Contains(errOut, tc.want) {
				t.Fatalf("exit %d %q, want 2 and %q", code, errOut, tc.want)
			}
		})
	}
}
