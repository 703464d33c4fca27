package main

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	resync "github.com/resyncd/resync"
	"github.com/resyncd/resync/internal/testing/etcdtest"
	"github.com/resyncd/resync/schema"
)

// startRealAgents starts one real agent (resync.Plugin, one plugin "p")
// per name on client c; those in fail ack with an error after round 1.
func startRealAgents(t *testing.T, c *clientv3.Client, names []string, fail map[string]bool) {
	t.Helper()
	var wg sync.WaitGroup
	t.Cleanup(wg.Wait) // after every Close below (cleanups run last first)
	for _, name := range names {
		p, err := resync.New(resync.Deps{Log: quietLogger(t), Client: c}, resync.Config{Agent: name, TTL: 5 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		ch := p.Register("p").StatusChan()
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case ev := <-ch:
					if ev.ResyncStatus() != resync.Started {
						continue
					}
					if fail[name] && ev.(*resync.Event).Revision() > 1 {
						ev.(*resync.Event).AckError(fmt.Errorf("reload failed"))
						continue
					}
					ev.Ack()
				case <-p.Done():
					return
				}
			}
		}()
		t.Cleanup(func() { p.Close() })
	}
}

// The worked example of README's "Rolling resync", on 100 agents:
// trigger with 3 canaries and a manual canary pause, 10% at a time,
// abort above 2% failed; status during the canary pause; resume; the
// round aborts once 3 agents failed, the rest skipped; pause and abort of
// a finished round or of no wave round are clear errors.
func TestRollingResyncFromTheCLI(t *testing.T) {
	m := etcdtest.Start(t)
	ep := m.Endpoint()
	obs := m.Client(t)
	names := make([]string, 100)
	for i := range names {
		names[i] = fmt.Sprintf("node-%03d", i)
	}
	startRealAgents(t, etcdtest.Client(t, ep), names, map[string]bool{"node-010": true, "node-011": true, "node-012": true})
	etcdtest.WaitFor(t, 30*time.Second, "100 registrations", func() bool { return countKeys(t, obs, layout.Registrations()) == 100 })
	startCoordinator(t, ep, "c1")
	waitRound(t, obs, 1, schema.NotActive)

	run := func(args ...string) (int, string, string) {
		return cli(t, ctxT(t, 20*time.Second), append([]string{"--endpoints", ep}, args...)...)
	}
	wctx, stopWatch := context.WithCancel(context.Background())
	var watched, watchErr etcdtest.Buffer
	watchDone := make(chan int, 1)
	go func() { watchDone <- runCLI(wctx, []string{"watch", "--endpoints", ep}, &watched, &watchErr) }()
	defer func() {
		stopWatch()
		<-watchDone
	}()
	etcdtest.WaitFor(t, 10*time.Second, "the watch's current revision", func() bool { return strings.Contains(watched.String(), "1 NotActive") })
	code, out, _ := run("trigger", "--reason", "config v2", "--canary", "3", "--canary-pause", "manual", "--max-in-flight", "10%", "--max-failed", "2%")
	if code != 0 || !strings.Contains(out, "requested resync") {
		t.Fatalf("trigger exited %d: %s", code, out)
	}
	etcdtest.WaitFor(t, 30*time.Second, "the canary pause", func() bool {
		r, ok := readRound(t, obs, 2)
		return ok && r.Wave != nil && r.Wave.Phase == schema.PhaseCanaryPause
	})
	code, out, _ = run("status")
	if code != 0 || !strings.Contains(out, "canary_pause: 0 in flight (max 10), 3 done, 97 waiting, 0 skipped, 0 failed (abort above 2); canaries done, waiting for resyncctl resume") ||
		!strings.Contains(out, "each agent's, 30s after its start") {
		t.Fatalf("status during the canary pause exited %d:\n%s", code, out)
	}
	if code, out, _ = run("resume", "--round", "2"); code != 0 || !strings.Contains(out, "requested resume of round 2") {
		t.Fatalf("resume exited %d: %s", code, out)
	}
	r := waitRound(t, obs, 2, schema.NotActive)
	if r.Wave == nil || !strings.Contains(r.Wave.Aborted, "3 agents failed, above max_failed 2") || r.Counts.Skipped == 0 {
		t.Fatalf("round 2: wave %+v counts %+v; want aborted past 2 failed, some skipped", r.Wave, r.Counts)
	}
	code, out, _ = run("status")
	if code != 0 || !strings.Contains(out, "aborted: 3 agents failed, above max_failed 2") {
		t.Fatalf("status after the abort exited %d:\n%s", code, out)
	}
	code, out, _ = run("history", "--round", "2")
	if code != 0 || !strings.Contains(out, "node-099  p       skipped") || !strings.Contains(out, "node-010  p       failed") {
		t.Fatalf("history --round 2 exited %d:\n%s", code, out)
	}
	defer func() { t.Logf("watch:\n%s", watched.String()) }()
	etcdtest.WaitFor(t, 10*time.Second, "the watch's wave lines", func() bool {
		w := watched.String()
		return strings.Contains(w, "2 canary, max 10 in flight, 3 canaries, abort above 2 failed") &&
			strings.Contains(w, "2 canary_pause, max 10 in flight") && strings.Contains(w, "aborted=\"3 agents failed, above max_failed 2\"")
	})
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"abort", "--round", "2"}, "round 2 has finished"},
		{[]string{"pause", "--round", "1"}, "round 1 does not run in waves"},
		{[]string{"pause"}, "--round is required"},
		{[]string{"trigger", "--reason", "x", "--max-in-flight", "0"}, "max_in_flight must be above 0"},
		{[]string{"trigger", "--reason", "x", "--canary-pause", "soon"}, "canary_pause"},
	} {
		code, _, errOut := run(tc.args...)
		if code != 2 || !strings.Contains(errOut, tc.want) {
			t.Errorf("resyncctl %v exited %d, stderr %q; want 2 and %q", tc.args, code, errOut, tc.want)
		}
	}
}

// runCLI is run, named apart from the test's helper closures.
func runCLI(ctx context.Context, args []string, out, errOut *etcdtest.Buffer) int {
	return run(ctx, args, out, errOut)
}

// While an aborted wave round still runs, its skipped plugins count as
// skipped, not pending.
func TestSkipWaveCountsSkippedNotPending(t *testing.T) {
	a, b, c := schema.PluginID{Agent: "a", Plugin: "p"}, schema.PluginID{Agent: "b", Plugin: "p"}, schema.PluginID{Agent: "c", Plugin: "p"}
	p := progress{Counts: schema.RoundCounts{Participants: 3, Pending: 3}, Pending: []schema.PluginID{a, b, c}}
	skipWave(&p, []schema.RoundAgent{{Agent: "b", Skipped: []string{"p"}, Plugins: []string{"p"}}, {Agent: "c", Skipped: []string{"p"}, Plugins: []string{"p"}}})
	if p.Counts.Pending != 1 || p.Counts.Skipped != 2 || len(p.Pending) != 1 || p.Pending[0] != a {
		t.Fatalf("progress %+v: want a pending, b and c skipped", p)
	}
}
