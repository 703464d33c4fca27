package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/goleak"

	"github.com/resyncd/resync/internal/testing/etcdtest"
	"github.com/resyncd/resync/internal/testing/handagent"
	"github.com/resyncd/resync/schema"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m, etcdtest.LeakOptions()...) }

// cli runs resyncctl with args and returns its exit status and outputs.
func cli(t *testing.T, ctx context.Context, args ...string) (int, string, string) {
	t.Helper()
	var out, errb etcdtest.Buffer
	code := run(ctx, args, &out, &errb)
	t.Logf("resyncctl %s -> %d\nstdout:\n%s\nstderr:\n%s", schema.Cut(strings.Join(args, " "), 2000), code, out.String(), errb.String())
	return code, out.String(), errb.String()
}

func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func readRound(t *testing.T, c *clientv3.Client, n uint64) (schema.Round, bool) {
	t.Helper()
	r, ok, err := etcdtest.ReadRound(ctxT(t, 5*time.Second), c, layout, n)
	if err != nil {
		t.Fatal(err)
	}
	return r, ok
}

func waitRound(t *testing.T, c *clientv3.Client, n uint64, state schema.Status) schema.Round {
	t.Helper()
	var r schema.Round
	etcdtest.WaitFor(t, 20*time.Second, fmt.Sprintf("round %d %s", n, state), func() bool {
		var ok bool
		r, ok = readRound(t, c, n)
		return ok && r.State == state
	})
	return r
}

func countKeys(t *testing.T, c *clientv3.Client, prefix string) int64 {
	t.Helper()
	resp, err := c.Get(ctxT(t, 5*time.Second), prefix, clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		t.Fatal(err)
	}
	return resp.Count
}

func TestTriggerWaitCleanStatusHistoryRegistrations(t *testing.T) {
	m := etcdtest.Start(t)
	obs := m.Client(t)
	ep := m.Endpoint()
	startHandAgent(t, ep, "a1", []string{"p1", "p2", "p3"}, nil)
	slow := startHandAgent(t, ep, "a2", []string{"q1", "slow"}, map[string]string{"slow": "hold"})
	startCoordinator(t, ep, "c1")
	// Round 1 (initial) waits on the held plugin: status computes its
	// progress from the participants, acks and registrations.
	waitRound(t, obs, 1, schema.Started)
	etcdtest.WaitFor(t, 10*time.Second, "4 acks of round 1", func() bool {
		code, out, _ := cli(t, ctxT(t, 10*time.Second), "status", "-o", "json", "--endpoints", ep)
		var d statusDoc
		return code == 0 && json.Unmarshal([]byte(out), &d) == nil && d.Progress != nil && d.Progress.Counts.Acked == 4
	})
	code, out, _ := cli(t, ctxT(t, 10*time.Second), "--endpoints", ep, "status", "-o", "json")
	var st statusDoc
	if err := json.Unmarshal([]byte(out), &st); err != nil || code != 0 {
		t.Fatalf("status -o json: %d %v", code, err)
	}
	want := schema.RoundCounts{Participants: 5, Acked: 4, Pending: 1}
	if st.Revision != 1 || st.State != schema.Started || st.Progress.Counts != want ||
		len(st.Progress.Pending) != 1 || st.Progress.Pending[0].String() != "a2/slow" || !strings.HasPrefix(st.Leader, "c1@") {
		t.Fatalf("status of the running round: %+v", st)
	}
	code, out, _ = cli(t, ctxT(t, 10*time.Second), "--endpoints", ep, "status")
	if code != 0 || !strings.Contains(out, "pending       1 (a2/slow)") || !strings.Contains(out, "state         Started") {
		t.Fatalf("status text:\n%s", out)
	}
	slow.Release()
	waitRound(t, obs, 1, schema.NotActive)

	// trigger --wait: a clean round 2, with progress lines.
	code, out, _ = cli(t, ctxT(t, 40*time.Second), "trigger", "--endpoints", ep, "--reason", "config changed", "--wait", "--timeout", "30s", "--who", "tester")
	if code != 0 {
		t.Fatalf("trigger --wait exited %d", code)
	}
	for _, s := range []string{"requested resync", "round 2 started for the request", "round 2: 5 participants", "round 2 finished clean"} {
		if !strings.Contains(out, s) {
			t.Errorf("trigger --wait output lacks %q", s)
		}
	}
	r2 := waitRound(t, obs, 2, schema.NotActive)
	if r2.Cause != schema.CauseManual || r2.Reason != "config changed" || r2.Counts.Acked != 5 {
		t.Fatalf("round 2 = %+v", r2)
	}
	if n := countKeys(t, obs, layout.Requests()); n != 0 {
		t.Fatalf("%d requests left after the round", n)
	}

	code, out, _ = cli(t, ctxT(t, 10*time.Second), "status", "-o", "json", "--endpoints", ep)
	st = statusDoc{}
	if err := json.Unmarshal([]byte(out), &st); err != nil || code != 0 {
		t.Fatalf("status -o json: %d %v", code, err)
	}
	if st.Revision != 2 || st.State != schema.NotActive || st.Progress == nil || st.Progress.Counts.Acked != 5 || st.Cause != schema.CauseManual {
		t.Fatalf("status after round 2: %+v", st)
	}

	code, out, _ = cli(t, ctxT(t, 10*time.Second), "history", "-o", "json", "--endpoints", ep)
	var hist struct{ Rounds []schema.Round }
	if err := json.Unmarshal([]byte(out), &hist); err != nil || code != 0 {
		t.Fatalf("history -o json: %d %v", code, err)
	}
	if len(hist.Rounds) != 2 || hist.Rounds[0].Revision != 1 || hist.Rounds[1].Revision != 2 || hist.Rounds[1].Counts.Acked != 5 {
		t.Fatalf("history: %+v", hist.Rounds)
	}
	code, out, _ = cli(t, ctxT(t, 10*time.Second), "history", "-n", "1", "--endpoints", ep)
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if code != 0 || len(lines) != 2 || !strings.HasPrefix(lines[0], "REVISION") || !strings.HasPrefix(lines[1], "2 ") || !strings.Contains(lines[1], "manual") {
		t.Fatalf("history -n 1:\n%s", out)
	}

	code, out, _ = cli(t, ctxT(t, 10*time.Second), "registrations", "--endpoints", ep)
	lines = strings.Split(strings.TrimSpace(out), "\n")
	var got []string
	for _, l := range lines[1:] {
		f := strings.Fields(l)
		got = append(got, f[0]+"/"+f[1]+"#"+f[2])
	}
	if code != 0 || strings.Join(got, " ") != "a1/p1#0 a1/p2#1 a1/p3#2 a2/q1#0 a2/slow#1" {
		t.Fatalf("registrations in order: %v\n%s", got, out)
	}
	code, out, _ = cli(t, ctxT(t, 10*time.Second), "registrations", "-o", "json", "--endpoints", ep)
	var regs struct{ Registrations []registrationDoc }
	if err := json.Unmarshal([]byte(out), &regs); err != nil || code != 0 || len(regs.Registrations) != 5 || regs.Registrations[0].Lease == "0" {
		t.Fatalf("registrations -o json: %d %v %+v", code, err, regs)
	}
}

func TestTriggerWaitFailedPlugin(t *testing.T) {
	m := etcdtest.Start(t)
	obs := m.Client(t)
	ep := m.Endpoint()
	startHandAgent(t, ep, "a1", []string{"good", "bad"}, map[string]string{"bad": "error"})
	startCoordinator(t, ep, "c1")
	waitRound(t, obs, 1, schema.NotActive)
	// Retry rounds follow the failure; whichever round consumes the
	// request fails the same way.
	code, out, errOut := cli(t, ctxT(t, 40*time.Second), "--endpoints", ep, "trigger", "--agent", "a1", "--reason", "try again", "--wait", "--timeout", "30s")
	if code != 1 {
		t.Fatalf("trigger --wait with a failing plugin exited %d, want 1", code)
	}
	if !strings.Contains(out, "finished NOT clean") || !strings.Contains(out, "a1/bad") || !strings.Contains(out, "reload failed: boom") {
		t.Errorf("summary does not show the failure:\n%s", out)
	}
	if !strings.Contains(errOut, "did not complete clean: failed a1/bad") {
		t.Errorf("stderr does not name the failed plugin:\n%s", errOut)
	}

	// -o json: one document on stdout, clean false.
	code, out, _ = cli(t, ctxT(t, 40*time.Second), "--endpoints", ep, "-o", "json", "trigger", "--reason", "again", "--wait", "--timeout", "30s")
	var doc triggerDoc
	if err := json.Unmarshal([]byte(out), &doc); err != nil || code != 1 || doc.Clean == nil || *doc.Clean || doc.Round == nil || len(doc.Round.Failed) != 1 {
		t.Fatalf("trigger -o json --wait: %d %v %+v", code, err, doc)
	}
}

func TestTriggerValidation(t *testing.T) {
	m := etcdtest.Start(t)
	obs := m.Client(t)
	ep := m.Endpoint()
	startHandAgent(t, ep, "a1", []string{"p1"}, nil)
	for _, tc := range []struct {
		name string
		args []string
		code int
		want string
	}{
		{"unknown agent", []string{"--agent", "nope", "--reason", "x"}, 1, "resyncctl: agent nope has no live registrations (known agents: a1)"},
		{"unknown plugin", []string{"--agent", "a1", "--plugin", "zz", "--reason", "x"}, 1, "plugin zz of agent a1 has no live registration (its plugins: p1)"},
		{"plugin without agent", []string{"--plugin", "p1", "--reason", "x"}, 2, "--plugin needs --agent"},
		{"no reason", []string{"--agent", "a1"}, 2, "--reason is required"},
		{"blank reason", []string{"--reason", "  "}, 2, "--reason is required"},
		{"agent name with a slash is a name", []string{"--agent", "a/b", "--reason", "x"}, 1, "resyncctl: agent a/b has no live registrations"},
		{"invalid escape is taken as typed", []string{"--agent", "a%2fb", "--reason", "x"}, 1, "resyncctl: agent a%2fb has no live registrations"},
		{"invalid UTF-8 agent name", []string{"--agent", "a\xff", "--reason", "x"}, 2, "invalid name"},
		{"200-byte plugin name", []string{"--agent", "a1", "--plugin", strings.Repeat("p", 200), "--reason", "x"}, 2, "plugin name is 200 bytes long: the limit is 128"},
		{"control characters", []string{"--agent", "a1\n", "--reason", "x"}, 2, "invalid name"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := append([]string{"trigger", "--endpoints", ep}, tc.args...)
			code, _, errOut := cli(t, ctxT(t, 10*time.Second), args...)
			if code != tc.code || !strings.Contains(errOut, tc.want) {
				t.Fatalf("exit %d, stderr %q; want %d and %q", code, errOut, tc.code, tc.want)
			}
			if n := countKeys(t, obs, layout.Requests()); n != 0 {
				t.Fatalf("a refused trigger wrote %d requests", n)
			}
		})
	}
	// A valid scoped request is written, cause manual, by resyncctl@host,
	// its 1 MiB reason cut to 1 KiB.
	code, _, _ := cli(t, ctxT(t, 10*time.Second), "trigger", "--endpoints", ep, "--agent", "a1", "--plugin", "p1", "--reason", strings.Repeat("r", 1<<20))
	resp, err := obs.Get(ctxT(t, 5*time.Second), layout.Requests(), clientv3.WithPrefix())
	if code != 0 || err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("scoped trigger: %d %v %v", code, err, resp)
	}
	req, err := schema.DecodeRequest(string(resp.Kvs[0].Key), resp.Kvs[0].Value)
	if err != nil || req.Cause != schema.CauseManual || req.Scope != (schema.Scope{Agent: "a1", Plugin: "p1"}) ||
		!strings.HasPrefix(req.RequestedBy, "resyncctl@") || len(req.Reason) > schema.MaxReasonLen+20 {
		t.Fatalf("request %+v %v", req, err)
	}
}

func TestUnreachableEtcdIsOneClearLine(t *testing.T) {
	addr := etcdtest.DeadAddr(t)
	for _, args := range [][]string{
		{"status"}, {"registrations"}, {"history"}, {"watch"}, {"trigger", "--reason", "x", "--wait"},
	} {
		t.Run(args[0], func(t *testing.T) {
			start := time.Now()
			code, out, errOut := cli(t, ctxT(t, 30*time.Second), append([]string{"--endpoints", addr, "--dial-timeout", "1s"}, args...)...)
			if took := time.Since(start); took > 5*time.Second {
				t.Errorf("took %v with a 1s dial timeout", took)
			}
			want := "resyncctl: cannot reach etcd at " + addr + " within 1s (dial timeout): is resyncd or etcd running? set --endpoints\n"
			if code != 1 || errOut != want || out != "" {
				t.Fatalf("exit %d, stderr %q; want 1 and %q", code, errOut, want)
			}
		})
	}
}

func TestWatchStreamsANewRound(t *testing.T) {
	m := etcdtest.Start(t)
	obs := m.Client(t)
	ep := m.Endpoint()
	startHandAgent(t, ep, "a1", []string{"p1"}, nil)
	startCoordinator(t, ep, "c1")
	waitRound(t, obs, 1, schema.NotActive)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var text, jsonl, errText etcdtest.Buffer
	done := make(chan int, 2)
	go func() { done <- run(ctx, []string{"watch", "--endpoints", ep}, &text, &errText) }()
	go func() { done <- run(ctx, []string{"watch", "-o", "json", "--endpoints", ep}, &jsonl, &errText) }()
	etcdtest.WaitFor(t, 10*time.Second, "both watches to print the current revision", func() bool {
		return strings.Contains(text.String(), "1 NotActive") && strings.Contains(jsonl.String(), `"event":"current"`)
	})
	if code, _, _ := cli(t, ctxT(t, 10*time.Second), "trigger", "--endpoints", ep, "--reason", "watch me"); code != 0 {
		t.Fatal("trigger failed")
	}
	etcdtest.WaitFor(t, 20*time.Second, "round 2 lines", func() bool {
		s := text.String()
		return strings.Contains(s, "2 Started cause=manual") && strings.Contains(s, "a1/p1 revision=2 result=ok") &&
			strings.Contains(s, "2 finished clean") && strings.Contains(jsonl.String(), `"kind":"round"`)
	})
	cancel()
	for i := 0; i < 2; i++ {
		select {
		case code := <-done:
			if code != 0 {
				t.Errorf("watch exited %d after cancel", code)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("watch did not stop after cancel")
		}
	}
	t.Logf("watch:\n%s", text.String())
	kinds := map[string]bool{}
	sc := bufio.NewScanner(strings.NewReader(jsonl.String()))
	for sc.Scan() {
		var l watchLine
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			t.Fatalf("watch -o json line %q: %v", sc.Text(), err)
		}
		kinds[l.Kind] = true
		if l.Kind == "round" && (l.Round == nil || l.Round.Revision != 2 || l.Round.Counts.Acked != 1) {
			t.Errorf("round line %s", sc.Text())
		}
	}
	for _, k := range []string{"revision", "leader", "request", "ack", "round"} {
		if !kinds[k] {
			t.Errorf("watch -o json printed no %s line", k)
		}
	}
	if errText.String() != "" {
		t.Errorf("watch wrote to stderr: %s", errText.String())
	}
}

func TestEnvFallback(t *testing.T) {
	m := etcdtest.Start(t)
	ep := m.Endpoint()
	t.Setenv("RESYNC_ENDPOINTS", ep)
	t.Setenv("RESYNC_OUTPUT", "json")
	code, out, _ := cli(t, ctxT(t, 10*time.Second), "status")
	var st statusDoc
	if err := json.Unmarshal([]byte(out), &st); code != 0 || err != nil || st.Revision != 0 || st.Leader != "" {
		t.Fatalf("status with RESYNC_ENDPOINTS/RESYNC_OUTPUT: %d %v %+v", code, err, st)
	}
	// The command line wins over the environment.
	code, out, _ = cli(t, ctxT(t, 10*time.Second), "status", "-o", "text")
	if code != 0 || !strings.Contains(out, "revision  none yet") {
		t.Fatalf("-o text over RESYNC_OUTPUT=json: %d\n%s", code, out)
	}
	t.Setenv("RESYNC_ENDPOINTS", etcdtest.DeadAddr(t))
	t.Setenv("RESYNC_DIAL_TIMEOUT", "1s")
	if code, _, _ := cli(t, ctxT(t, 10*time.Second), "--endpoints", ep, "status"); code != 0 {
		t.Fatalf("--endpoints did not win over RESYNC_ENDPOINTS: exit %d", code)
	}
	if code, _, errOut := cli(t, ctxT(t, 10*time.Second), "status"); code != 1 || !strings.Contains(errOut, "within 1s") {
		t.Fatalf("RESYNC_DIAL_TIMEOUT unused: %d %q", code, errOut)
	}
}

func TestUsageErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{nil, 2, "no command given"},
		{[]string{"bogus"}, 2, `unknown command "bogus"`},
		{[]string{"status", "--nope"}, 2, "resyncctl status: unknown flag: --nope\nRun 'resyncctl status --help' for usage."},
		{[]string{"--nope", "status"}, 2, "unknown flag: --nope"},
		{[]string{"status", "-xyz"}, 2, "unknown flag: --xyz"},
		{[]string{"status", "-nope"}, 2, "unknown shorthand flag: 'n' in -nope (long flags take two dashes: --name)"},
		{[]string{"status", "--dial-timeout", "soon"}, 2, `invalid argument "soon" for "--dial-timeout" flag`},
		{[]string{"status", "-dial-timeout", "0s"}, 2, "--dial-timeout"}, // Go flag's single-dash spelling still works
		{[]string{"-o=yaml", "status"}, 2, `-o "yaml": use text or json`},
		{[]string{"completion"}, 2, "completion needs one shell"},
		{[]string{"status", "extra"}, 2, `unexpected argument "extra"`},
		{[]string{"status", "-o", "yaml"}, 2, `-o "yaml": use text or json`},
		{[]string{"--prefix", "relative", "status"}, 2, "must start with"},
		{[]string{"history", "-n", "0"}, 2, "-n 0"},
		{[]string{"status", "--dial-timeout", "0s"}, 2, "--dial-timeout"},
		{[]string{"help"}, 0, ""},
		{[]string{"help", "trigger"}, 0, ""},
		{[]string{"trigger", "-h"}, 0, ""},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			code, out, errOut := cli(t, context.Background(), tc.args...)
			if code != tc.code || !strings.Contains(errOut, tc.want) {
				t.Fatalf("exit %d, stderr %q; want %d and %q", code, errOut, tc.code, tc.want)
			}
			if code == 0 && !strings.Contains(out, "Usage: resyncctl") {
				t.Fatalf("help printed no usage on stdout: %q", out)
			}
			if code == 2 && !strings.Contains(errOut, "sage") {
				t.Errorf("usage error without usage: %q", errOut)
			}
		})
	}
}

func TestMalformedRecordsAreReportedAndSkipped(t *testing.T) {
	m := etcdtest.Start(t)
	obs := m.Client(t)
	ep := m.Endpoint()
	startHandAgent(t, ep, "a1", []string{"p1"}, nil)
	startCoordinator(t, ep, "c1")
	waitRound(t, obs, 1, schema.NotActive)
	for k, v := range map[string]string{
		layout.Registration("a0", "junk"): "{not json",
		layout.Round(1000):                `{"revision":"x"}`,
		layout.Ack("a0", "junk"):          "nope",
	} {
		if _, err := obs.Put(ctxT(t, 5*time.Second), k, v); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		cmd  string
		key  string
		want string
	}{
		{"registrations", layout.Registration("a0", "junk"), "a1     p1"},
		{"history", layout.Round(1000), "1         initial"},
	} {
		code, out, errOut := cli(t, ctxT(t, 10*time.Second), tc.cmd, "--endpoints", ep)
		if code != 0 || !strings.Contains(errOut, "skipping a malformed record") || !strings.Contains(errOut, tc.key) || !strings.Contains(out, tc.want) {
			t.Errorf("%s with a malformed record: exit %d\nstdout %s\nstderr %s", tc.cmd, code, out, errOut)
		}
	}
	// A scoped trigger reads registrations: the garbage one is no agent.
	code, _, errOut := cli(t, ctxT(t, 10*time.Second), "trigger", "--endpoints", ep, "--agent", "a0", "--reason", "x")
	if code != 1 || !strings.Contains(errOut, "agent a0 has no live registrations (known agents: a1)") {
		t.Errorf("trigger for the garbage agent: %d %s", code, errOut)
	}
}

func TestTriggerWaitTimesOutWithoutCoordinator(t *testing.T) {
	m := etcdtest.Start(t)
	ep := m.Endpoint()
	start := time.Now()
	code, _, errOut := cli(t, ctxT(t, 20*time.Second), "trigger", "--endpoints", ep, "--reason", "nobody listens", "--wait", "--timeout", "1s")
	if took := time.Since(start); took > 8*time.Second {
		t.Errorf("--timeout 1s took %v", took)
	}
	if code != 1 || !strings.Contains(errOut, "no coordinator leads right now") ||
		!strings.Contains(errOut, "timed out after 1s (--timeout): no round started for request") {
		t.Fatalf("exit %d, stderr %q", code, errOut)
	}
	if n := countKeys(t, m.Client(t), layout.Requests()); n != 1 {
		t.Fatalf("the request should stay queued: %d requests", n)
	}
}

// trigger takes several targets (comma lists and repeated flags); the round
// covers exactly their union; status and history show the set compactly,
// -o json lists every target.
func TestTriggerSeveralTargets(t *testing.T) {
	m := etcdtest.Start(t)
	obs := m.Client(t)
	ep := m.Endpoint()
	agents := map[string]*handagent.Agent{}
	for _, a := range []string{"n1", "n2", "n3", "n4"} {
		agents[a] = startHandAgent(t, ep, a, []string{"p1", "p2"}, nil)
	}
	startCoordinator(t, ep, "c1")
	waitRound(t, obs, 1, schema.NotActive)
	code, out, _ := cli(t, ctxT(t, 40*time.Second), "--endpoints", ep, "trigger", "--agent", "n1,n2", "--plugin", "n3/p2",
		"--plugin", "n4/p1", "--reason", "several", "--wait", "--timeout", "30s")
	if code != 0 || !strings.Contains(out, "round 2 finished clean") || !strings.Contains(out, "6 participants") {
		t.Fatalf("trigger with 4 targets: exit %d\n%s", code, out)
	}
	for a, ag := range agents {
		for _, p := range []string{"p1", "p2"} {
			want := 0
			if a == "n1" || a == "n2" || a+"/"+p == "n3/p2" || a+"/"+p == "n4/p1" {
				want = 1
			}
			if n := ag.StartedCount(p, 2); n != want {
				t.Errorf("%s/%s got Started 2 %d times, want %d", a, p, n, want)
			}
		}
	}
	code, out, _ = cli(t, ctxT(t, 10*time.Second), "--endpoints", ep, "status")
	if code != 0 || !strings.Contains(out, "4 targets (2 agents, 2 plugins): n1, n2, n3/p2, n4/p1") {
		t.Errorf("status does not show the set scope:\n%s", out)
	}
	code, out, _ = cli(t, ctxT(t, 10*time.Second), "--endpoints", ep, "-o", "json", "status")
	var st statusDoc
	if err := json.Unmarshal([]byte(out), &st); code != 0 || err != nil || fmt.Sprint(st.ScopeTargets) != "[n1 n2 n3/p2 n4/p1]" || st.Scope.Agents != 2 {
		t.Errorf("status -o json: %d %v %+v", code, err, st)
	}
	code, out, _ = cli(t, ctxT(t, 10*time.Second), "--endpoints", ep, "history")
	if code != 0 || !strings.Contains(out, "4 targets") {
		t.Errorf("history does not show the set scope:\n%s", out)
	}
}
