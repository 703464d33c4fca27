package binaries

import (
	"strings"
	"testing"
	"time"

	"github.com/resyncd/resync/internal/testing/etcdtest"
)

// TestTLSClientCertsAndAuthProcesses runs the binaries against resyncd's
// embedded etcd serving only TLS with client certificates required:
// resyncctl without a certificate (or without TLS) is refused with a clear
// error and exit 1; with the right certificates the agents connect and a
// round completes. Then `resyncctl rbac apply --no-passwords` turns etcd's
// auth on, where each certificate's CN is the user: resyncd (CN resyncd)
// and the agents (CN agent-a, agent-b) keep working and another round
// completes, while agent-a's certificate cannot write agent-b's keys or
// the revision (etcdctl: permission denied).
func TestTLSClientCertsAndAuthProcesses(t *testing.T) {
	dir := t.TempDir()
	pki := etcdtest.NewPKI(t)
	client := etcdtest.FreeAddr(t)
	ep := "https://" + client
	certArgs := func(cn string) []string {
		cert, key := pki.Client(cn)
		return []string{"--endpoints", ep, "--cacert", pki.CAFile, "--cert", cert, "--key", key}
	}
	rd := start(t, dir, "resyncd", append([]string{"--listen-client-url", ep, "--listen-peer-url", "http://" + etcdtest.FreeAddr(t),
		"--embed-cert-file", pki.ServerCert, "--embed-key-file", pki.ServerKey,
		"--embed-trusted-ca-file", pki.CAFile, "--embed-client-cert-auth",
		"--http-addr", etcdtest.FreeAddr(t), "--id", "rd1", "--session-ttl", "2s"}, certArgs("resyncd")[2:]...)...)
	ctl := func(cn string, args ...string) (string, int) {
		return runCmd(t, 60*time.Second, nil, "resyncctl", append(certArgs(cn), args...)...)
	}
	etcdtest.WaitFor(t, 60*time.Second, "resyncd to serve over TLS", func() bool {
		out, code := ctl("root", "status", "-o", "json")
		return code == 0 && strings.Contains(out, `"revision"`)
	})

	// Refused: no client certificate; no TLS at all; a certificate of
	// another CA.
	other := etcdtest.NewPKI(t)
	badCert, badKey := other.Client("root")
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"no client certificate", []string{"--endpoints", ep, "--cacert", pki.CAFile}, "tls: certificate required (no client certificate given: set --cert and --key)"},
		{"no TLS", []string{"--endpoints", client}, "the server speaks TLS"},
		{"certificate of another CA", []string{"--endpoints", ep, "--cacert", pki.CAFile, "--cert", badCert, "--key", badKey}, "TLS: the server refused the connection"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, code := runCmd(t, 30*time.Second, nil, "resyncctl", append(tc.args, "--dial-timeout", "1s", "status")...)
			if code != 1 || !strings.Contains(out, tc.want) || strings.Count(strings.TrimSpace(out), "\n") != 0 {
				t.Fatalf("exit %d, output %q; want exit 1 and one line with %q", code, out, tc.want)
			}
		})
	}

	for _, a := range []string{"agent-a", "agent-b"} {
		start(t, dir, "resync-agent", append(certArgs(a), "--name", a, "--plugins", "ifplugin,l3plugin", "--reload-time", "10ms", "--ttl", "2s")...)
	}
	etcdtest.WaitFor(t, 30*time.Second, "both agents registered over TLS", func() bool {
		out, code := ctl("root", "registrations", "-o", "json")
		return code == 0 && strings.Count(out, `"plugin"`) == 4
	})
	out, code := ctl("root", "trigger", "--reason", "over TLS", "--wait", "--timeout", "60s")
	if code != 0 || !strings.Contains(out, "finished clean") || !strings.Contains(out, "4 acked") {
		t.Fatalf("trigger --wait over TLS exited %d:\n%s", code, out)
	}

	// Auth on, identities from the certificates' CNs.
	out, code = ctl("root", "rbac", "apply", "--agents", "agent-a,agent-b", "--no-passwords")
	if code != 0 || !strings.Contains(out, "enabled authentication") {
		t.Fatalf("rbac apply exited %d:\n%s", code, out)
	}
	out, code = ctl("root", "trigger", "--reason", "with auth", "--wait", "--timeout", "60s")
	if code != 0 || !strings.Contains(out, "finished clean") || !strings.Contains(out, "4 acked") {
		t.Fatalf("trigger --wait with auth exited %d:\n%s", code, out)
	}
	out, code = ctl("root", "rbac", "status")
	if code != 0 || !strings.Contains(out, "authentication  enabled") {
		t.Fatalf("rbac status: %d\n%s", code, out)
	}
	// agent-a's certificate: its own ack is fine, the rest refused.
	etcdctl := func(args ...string) (string, int) {
		cert, key := pki.Client("agent-a")
		return runCmd(t, 30*time.Second, nil, "etcdctl", append([]string{"--endpoints", ep, "--cacert", pki.CAFile, "--cert", cert, "--key", key}, args...)...)
	}
	if out, code := etcdctl("get", "/resync/revision"); code != 0 || !strings.Contains(out, `"revision"`) {
		t.Fatalf("agent-a cannot read the revision: %d %s", code, out)
	}
	for _, args := range [][]string{
		{"put", "/resync/acks/agent-b/ifplugin", `{"revision":99,"result":"ok"}`},
		{"put", "/resync/registrations/agent-b/evil", "{}"},
		{"put", "/resync/revision", "{}"},
		{"put", "/resync/rounds/00000000000000000099", "{}"},
		{"del", "--prefix", "/resync/registrations/agent-b/"},
		{"get", "--prefix", "/resync/acks/agent-b/"},
	} {
		if out, code := etcdctl(args...); code == 0 || !strings.Contains(out, "permission denied") {
			t.Errorf("etcdctl %v as agent-a: exit %d %q, want permission denied", args, code, out)
		}
	}
	// A certificate whose CN is no user is refused too.
	if out, code := ctl("intruder", "--dial-timeout", "2s", "status"); code != 1 || !strings.Contains(out, "permission denied") {
		t.Errorf("status with CN intruder: exit %d %q", code, out)
	}
	if _, err := rd.stop(t, 10*time.Second); err != nil {
		t.Fatalf("resyncd SIGTERM: %v", err)
	}
}
