package binaries

import (
	"strings"
	"testing"
	"time"

	"github.com/resyncd/resync/internal/testing/etcdtest"
)

// TestSIGTERMBoundedWhileEtcdUnreachable: resyncd (leading) and
// resync-agent exit within their documented bounds after SIGTERM while
// their etcd is blackholed or stopped: resyncd within --shutdown-timeout,
// resync-agent within the 5 s bound of the plugin's Close.
func TestSIGTERMBoundedWhileEtcdUnreachable(t *testing.T) {
	bins(t) // build first: the timing below is of the commands alone
	const budget = 2 * time.Second
	for _, fault := range []string{"blackholed", "stopped"} {
		t.Run(fault, func(t *testing.T) {
			m := etcdtest.Start(t)
			proxy := etcdtest.NewProxy(t, m.Endpoint())
			dir := t.TempDir()
			rd := start(t, dir, "resyncd", "--endpoints", proxy.Endpoint, "--http-addr", etcdtest.FreeAddr(t),
				"--id", "rd1", "--session-ttl", "30s", "--shutdown-timeout", budget.String())
			ag := start(t, dir, "resync-agent", "--endpoints", proxy.Endpoint, "--name", "agent-a", "--plugins", "p1,p2", "--ttl", "30s")
			ctl := func(args ...string) (string, int) {
				return runCmd(t, 30*time.Second, nil, "resyncctl", append([]string{"--endpoints", m.Endpoint()}, args...)...)
			}
			etcdtest.WaitFor(t, 60*time.Second, "rd1 to lead", func() bool {
				out, code := ctl("status", "-o", "json")
				return code == 0 && strings.Contains(out, `rd1@`)
			})
			etcdtest.WaitFor(t, 60*time.Second, "the agent's registrations", func() bool {
				out, code := ctl("registrations", "-o", "json")
				return code == 0 && strings.Count(out, `"plugin"`) == 2
			})
			if fault == "blackholed" {
				proxy.Blackhole()
				defer proxy.Heal()
			} else {
				m.Stop()
			}
			// resyncd: the budget, plus process exit and the client's close.
			took, err := rd.stop(t, budget+3*time.Second)
			t.Logf("resyncd exited %v after SIGTERM: %v", took.Round(time.Millisecond), err)
			if err != nil && strings.Contains(err.Error(), "still running") {
				t.Errorf("resyncd: %v (budget --shutdown-timeout %v)", err, budget)
			}
			took, err = ag.stop(t, 5*time.Second+3*time.Second)
			t.Logf("resync-agent exited %v after SIGTERM: %v", took.Round(time.Millisecond), err)
			if err != nil && strings.Contains(err.Error(), "still running") {
				t.Errorf("resync-agent: %v (bound 5 s)", err)
			}
		})
	}
}
