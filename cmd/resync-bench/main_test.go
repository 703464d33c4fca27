package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"go.uber.org/goleak"

	"github.com/resyncd/resync/internal/testing/etcdtest"
)

// TestMain also serves as the memory experiment's child process and the
// agents-apart mode's: both re-execute os.Executable(), which under go
// test is this test binary.
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == childMemoryArg {
		os.Exit(childMemory(os.Args[2:]))
	}
	if len(os.Args) > 1 && os.Args[1] == childAgentsArg {
		os.Exit(childAgents(os.Args[2:]))
	}
	goleak.VerifyTestMain(m, etcdtest.LeakOptions()...)
}

// TestSmokeExperiments runs every experiment (rounds with its floors and
// barrier, a wave size, failover, memory, keys) at tiny sizes against the
// embedded etcd, so that a broken bench fails CI. It checks that each
// experiment produced its rows, not any number, except where a number is
// the coordinator's promise (checkWaveRow).
func TestSmokeExperiments(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "results.json")
	var stdout bytes.Buffer
	code := run([]string{
		"-sizes", "1x1,2x2,20x2~5", "-rounds", "2", "-warmup", "1",
		"-barrier-rounds", "1", "-barrier-timeout", "20s", "-barrier-max", "3",
		"-failovers", "1", "-session-ttl", "1s", "-standby-settle", "100ms",
		"-mem-participants", "4",
		"-key-size", "2x2", "-key-rounds", "1,2",
		"-out", out, "-dir", dir, "-log", filepath.Join(dir, "bench.log"),
	}, &stdout)
	if code != 0 {
		t.Fatalf("resync-bench exited %d, want 0; stdout:\n%s", code, stdout.String())
	}
	var res Results
	readJSON(t, out, &res)
	if res.Error != "" {
		t.Errorf("results carry an error: %s", res.Error)
	}
	if len(res.Rounds) != 3 {
		t.Fatalf("round-latency rows = %d, want 3 (1x1, 2x2 and 20x2~5)", len(res.Rounds))
	}
	checkWaveRow(t, res.Rounds[2], 5)
	// -barrier-max 3: 1x1's barrier runs, 2x2's (4 participants) is skipped.
	if b, r := res.Rounds[0], res.Rounds[1]; b.Barrier.N != 1 || b.BarrierSkipped != "" || r.Barrier.N != 0 || !strings.Contains(r.BarrierSkipped, "4 participants, above -barrier-max 3") {
		t.Errorf("barriers: 1x1 %d samples (skipped %q), 2x2 %d samples (skipped %q): want 1 and none, 0 and skipped",
			b.Barrier.N, b.BarrierSkipped, r.Barrier.N, r.BarrierSkipped)
	}
	if !strings.Contains(stdout.String(), "2x2 in-process: DoubleBarrier skipped: 4 participants") {
		t.Errorf("the tables do not say 2x2's barrier was skipped:\n%s", stdout.String())
	}
	if r := res.Rounds[1]; r.Wave != "" || r.Window != 0 || r.IO.ShardStarted == 0 || r.PeakInFlight == 0 {
		t.Errorf("2x2: wave %q, window %d, shard Started events %d, peak in flight %d: want none, 0, > 0, > 0", r.Wave, r.Window, r.IO.ShardStarted, r.PeakInFlight)
	}
	for _, section := range []string{"\nWaves (", "\nWrite budget (", "\nWake events and reads ("} {
		if !strings.Contains(stdout.String(), section) {
			t.Errorf("the tables have no %q section:\n%s", section, stdout.String())
		}
	}
	for i, r := range res.Rounds {
		// The probe writes every 5 ms: 2 s idle, 200 ms around each start
		// and finish write. The two measured rounds of 1x1 and 2x2 take 3
		// to 6 ms each and may see no put sent while they ran (it failed
		// 1 run in 6); the wave row's take 20 ms and more. A fleet this
		// small is woken by one write (its start Txn).
		during := r.TenantRounds.N > 0 || i < 2
		if i < 2 && (r.ProtocolFloor.N != 2 || r.OursOverProtocol <= 0) {
			t.Errorf("%dx%d: protocol floor %d samples, ours/protocol %.2f: want 2, > 0", r.Agents, r.Plugins, r.ProtocolFloor.N, r.OursOverProtocol)
		}
		if r.TenantIdle.N < 10 || !during || r.TenantNearWrites.N == 0 || r.WakeFanout != r.Agents {
			t.Errorf("%dx%d: tenant probe idle %d samples, rounds %d, near writes %d, largest wake %d (want >= 10, > 0 for the wave row, > 0, %d)",
				r.Agents, r.Plugins, r.TenantIdle.N, r.TenantRounds.N, r.TenantNearWrites.N, r.WakeFanout, r.Agents)
		}
		// etcd's slow-watcher gauge was found and read at every put.
		if sw := r.SlowWatchers; sw.Samples != r.TenantRounds.N || sw.WithSlow > sw.Samples || sw.Max < 0 {
			t.Errorf("%dx%d: slow watchers %+v over %d tenant puts: want the gauge read at each", r.Agents, r.Plugins, sw, r.TenantRounds.N)
		}
	}
	if !strings.Contains(stdout.String(), "Tenant (another client") {
		t.Errorf("the table has no tenant section:\n%s", stdout.String())
	}
	if res.Failover == nil {
		t.Error("no failover result")
	}
	if len(res.Memory) != 1 || res.Memory[0].Participants != 4 {
		t.Errorf("memory results = %+v, want one for 4 participants", res.Memory)
	}
	if len(res.Keys) != 2 {
		t.Errorf("key-count rows = %d, want 2 (after rounds 1 and 2)", len(res.Keys))
	}
	if !strings.Contains(stdout.String(), "Round latency") {
		t.Errorf("the table has no round-latency section:\n%s", stdout.String())
	}
}

// checkWaveRow checks a wave row: its fields filled, and the peak agents
// in flight, swept over the fleet's own timestamps of every measured
// round, within the window: the coordinator's bound. Its rounds woke no
// wake shard with a Started: only the agents' own keys.
func checkWaveRow(t *testing.T, r RoundRow, window int) {
	t.Helper()
	name := fmt.Sprintf("%s %s", r.size(), r.Mode)
	if r.Window != window || r.WindowSetOn != windowOnRequest || r.Round.N == 0 {
		t.Errorf("%s: window %d set on %q, %d rounds: want %d, %q, > 0", name, r.Window, r.WindowSetOn, r.Round.N, window, windowOnRequest)
	}
	if r.PeakInFlight < 1 || r.PeakInFlight > window {
		t.Errorf("%s: peak agents in flight %d, want 1 to the window, %d", name, r.PeakInFlight, window)
	}
	if r.SpanAgents != r.Agents || r.Ideal.N != r.Round.N || r.Ideal.P50 <= 0 || r.RoundOverIdeal <= 0 || r.AgentResync.N != r.Round.N {
		t.Errorf("%s: %d agents in a round, ideal window %d samples (p50 %.2f ms, round/ideal %.2f), agent resync %d samples: want %d, %d, > 0, > 0, %d",
			name, r.SpanAgents, r.Ideal.N, r.Ideal.P50, r.RoundOverIdeal, r.AgentResync.N, r.Agents, r.Round.N, r.Round.N)
	}
	if r.IO.OwnStarted == 0 || r.IO.OwnNotActive == 0 || r.IO.ShardStarted != 0 {
		t.Errorf("%s: own-key events Started %d, NotActive %d, shard Started %d: want > 0, > 0, 0", name, r.IO.OwnStarted, r.IO.OwnNotActive, r.IO.ShardStarted)
	}
	if r.CPUs != runtime.NumCPU() || r.CPUFloor <= 0 || r.CPUFloor != r.CPUPerRound/float64(r.CPUs) {
		t.Errorf("%s: CPU floor %.2f ms over %d CPUs, CPU per round %.2f ms: want the CPU over %d CPUs", name, r.CPUFloor, r.CPUs, r.CPUPerRound, runtime.NumCPU())
	}
}

// A wave row whose CPU time over the CPUs alone exceeds 1.3x its ideal
// window says so in its target, and only such a row.
func TestCPUBoundWaveRowSaysSo(t *testing.T) {
	r := RoundRow{CPUs: 2, Ideal: Dist{N: 3, P50: 500}}
	r.CPUFloor = 651
	if got := cpuBound(r); !strings.Contains(got, "CPU-bound") || !strings.Contains(got, "651.0 ms (1.30 x ideal)") {
		t.Errorf("CPU floor 651 ms, ideal 500 ms: %q, want it named CPU-bound at 1.30 x", got)
	}
	r.CPUFloor = 650
	if got := cpuBound(r); got != "" {
		t.Errorf("CPU floor 650 ms, ideal 500 ms: %q, want nothing (1.3x is reachable)", got)
	}
	r.CPUFloor, r.Ideal = 900, Dist{}
	if got := cpuBound(r); got != "" {
		t.Errorf("no ideal window: %q, want nothing", got)
	}
}

// TestSmokeAgentsApart runs the rounds at tiny sizes with -agents-apart:
// each size in process, then with its agents in a child process pinned to
// a CPU of its own. It checks that the agents-apart rows are filled, that
// both processes ran on the CPUs the split gave them (every thread, as
// /proc read them), that the child exited cleanly and is gone, and that
// this process got its CPUs back; not any number, except a wave size's
// window (10x10~3), kept in both modes: apart, the child reports each
// round's spans and counts.
func TestSmokeAgentsApart(t *testing.T) {
	cpus, err := allowedCPUs()
	if err != nil {
		t.Skipf("no CPU affinity here: %v", err)
	}
	split, err := splitCPUs(cpus)
	if err != nil {
		t.Skipf("agents-apart needs 2 CPUs: %v", err)
	}
	before, _, err := threadCPUs(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	out := filepath.Join(dir, "results.json")
	var stdout bytes.Buffer
	code := run([]string{"-only", "rounds", "-agents-apart", "-sizes", "1x1,10x10~3+2ms", "-rounds", "2", "-warmup", "1",
		"-barrier-rounds", "1", "-barrier-timeout", "20s", "-out", out, "-dir", dir, "-log", filepath.Join(dir, "bench.log")}, &stdout)
	if code != 0 {
		t.Fatalf("resync-bench -agents-apart exited %d, want 0; stdout:\n%s", code, stdout.String())
	}
	var res Results
	readJSON(t, out, &res)
	if !res.Settings.AgentsApart || len(res.Rounds) != 4 {
		t.Fatalf("settings agents_apart %v, %d rows: want true, 4 (1x1 and 10x10~3, each in-process and agents-apart)", res.Settings.AgentsApart, len(res.Rounds))
	}
	for i, r := range res.Rounds {
		want := []string{modeInProcess, modeApart}[i%2]
		if r.Mode != want {
			t.Errorf("row %d (%dx%d): mode %q, want %q", i, r.Agents, r.Plugins, r.Mode, want)
		}
		if r.Mode == modeApart {
			checkApartRow(t, r, split)
		}
		if r.Wave != "" {
			checkWaveRow(t, r, 3)
			// Each plugin reloads 2 ms, one after the other: the agent,
			// in this process or in the child, resyncs for 20 ms at least.
			if r.ReloadMS != 2 || r.AgentResync.P50 < 20 {
				t.Errorf("%s %s: plugin reload %.1f ms, agent resync p50 %.1f ms: want 2, >= 20", r.size(), r.Mode, r.ReloadMS, r.AgentResync.P50)
			}
		}
	}
	if !strings.Contains(stdout.String(), modeApart) {
		t.Errorf("the tables name no agents-apart row:\n%s", stdout.String())
	}
	if after, _, err := threadCPUs(os.Getpid()); err != nil || after != before {
		t.Errorf("this process's threads run on CPUs %q after the run (%v), want %q as before", after, err, before)
	}
}

// checkApartRow checks that an agents-apart row is filled and that its
// child is gone.
func checkApartRow(t *testing.T, r RoundRow, split *cpuSplit) {
	t.Helper()
	name := fmt.Sprintf("%dx%d agents-apart", r.Agents, r.Plugins)
	if r.Round.N != 2 || r.ToStarted.N != 2 || r.AllAcked.N != 2 || r.AckTxnsPerAgent == 0 || r.CPUPerRound == 0 || r.AgentsCPUPerRound == 0 {
		t.Errorf("%s: rounds %d, to Started %d, to all acked %d samples, %.2f ack Txns per agent, CPU %.1f ms, agents' CPU %.1f ms per round: want 2, 2, 2, > 0, > 0, > 0",
			name, r.Round.N, r.ToStarted.N, r.AllAcked.N, r.AckTxnsPerAgent, r.CPUPerRound, r.AgentsCPUPerRound)
	}
	if r.TenantIdle.N == 0 || r.TenantRounds.N == 0 || r.WakeFanout != r.Agents || r.Floor.N != 0 {
		t.Errorf("%s: tenant idle %d, rounds %d samples, largest wake %d, floor %d samples: want > 0, > 0, %d, 0",
			name, r.TenantIdle.N, r.TenantRounds.N, r.WakeFanout, r.Floor.N, r.Agents)
	}
	a := r.Apart
	if a == nil {
		t.Fatalf("%s: no agents_apart in the JSON", name)
	}
	if a.AgentsCPUs != strconv.Itoa(split.agents) || a.BenchCPUs != cpuRanges(split.bench) || a.AgentsThreads == 0 || a.BenchThreads == 0 {
		t.Errorf("%s: agents' threads (%d) on CPUs %q, the bench's (%d) on %q: want %q and %q", name,
			a.AgentsThreads, a.AgentsCPUs, a.BenchThreads, a.BenchCPUs, strconv.Itoa(split.agents), cpuRanges(split.bench))
	}
	if a.AgentsExitCode != 0 {
		t.Errorf("%s: the agents' child exited %d, want 0", name, a.AgentsExitCode)
	}
	if err := syscall.Kill(a.AgentsPID, 0); !errors.Is(err, syscall.ESRCH) {
		t.Errorf("%s: the agents' child %d is still there after the run (kill 0: %v)", name, a.AgentsPID, err)
	}
}

// cpuRanges writes ascending CPUs as /proc's Cpus_allowed_list does: runs
// of consecutive CPUs as ranges ("0-2,5").
func cpuRanges(cpus []int) string {
	var parts []string
	for i := 0; i < len(cpus); {
		j := i
		for j+1 < len(cpus) && cpus[j+1] == cpus[j]+1 {
			j++
		}
		if j == i {
			parts = append(parts, strconv.Itoa(cpus[i]))
		} else {
			parts = append(parts, fmt.Sprintf("%d-%d", cpus[i], cpus[j]))
		}
		i = j + 1
	}
	return strings.Join(parts, ",")
}

// TestAgentsApartRefusedOnOneCPU pins this process to one CPU, as a
// 1-CPU machine is, and checks that -agents-apart is refused with an
// error that says why.
func TestAgentsApartRefusedOnOneCPU(t *testing.T) {
	cpus, err := allowedCPUs()
	if err != nil {
		t.Skipf("no CPU affinity here: %v", err)
	}
	t.Cleanup(func() {
		if err := pinProcess(cpus); err != nil {
			t.Errorf("restore CPUs: %v", err)
		}
	})
	if err := pinProcess(cpus[:1]); err != nil {
		t.Fatal(err)
	}
	f, err := parseFlags([]string{"-agents-apart"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.options(); err == nil || !strings.Contains(err.Error(), "needs 2 CPUs") {
		t.Errorf("options() on one CPU = %v, want the error that -agents-apart needs 2 CPUs", err)
	}
}

func TestSplitCPUs(t *testing.T) {
	for _, tc := range []struct {
		allowed []int
		bench   []int
		agents  int
		err     bool
	}{
		{allowed: nil, err: true},
		{allowed: []int{3}, err: true},
		{allowed: []int{0, 1}, bench: []int{0}, agents: 1},
		{allowed: []int{0, 2, 5}, bench: []int{0, 2}, agents: 5},
	} {
		t.Run(fmt.Sprint(tc.allowed), func(t *testing.T) {
			s, err := splitCPUs(tc.allowed)
			if tc.err {
				if err == nil || !strings.Contains(err.Error(), "needs 2 CPUs") {
					t.Errorf("splitCPUs = %+v, %v; want the error that it needs 2 CPUs", s, err)
				}
				return
			}
			if err != nil || !slices.Equal(s.bench, tc.bench) || s.agents != tc.agents || !slices.Equal(s.all, tc.allowed) {
				t.Errorf("splitCPUs = %+v, %v; want bench %v, agents %d", s, err, tc.bench, tc.agents)
			}
		})
	}
}

// TestSmokeSoak runs the soak for six short samples, then redraws its
// plot from the JSON. It checks that rounds ran without failing and that
// the samples, the JSON and both plots were written; it does not check
// the soak's verdict, whose trends mean nothing over a second or two.
func TestSmokeSoak(t *testing.T) {
	dir := t.TempDir()
	out, svg := filepath.Join(dir, "soak.json"), filepath.Join(dir, "soak.svg")
	var stdout bytes.Buffer
	code := run([]string{"-soak", "1200ms", "-soak-sample", "200ms", "-soak-size", "2x2",
		"-soak-out", out, "-soak-svg", svg}, &stdout)
	var res SoakResult
	readJSON(t, out, &res)
	if code != 0 && (res.Pass || res.FirstError != "") {
		t.Fatalf("soak exited %d (pass %v, first error %q); stdout:\n%s", code, res.Pass, res.FirstError, stdout.String())
	}
	if res.Rounds == 0 || res.FailedRounds != 0 {
		t.Errorf("soak rounds = %d, failed %d: want some, none failed (first error %q)", res.Rounds, res.FailedRounds, res.FirstError)
	}
	if len(res.Samples) < 6 {
		t.Errorf("soak samples = %d, want at least 6", len(res.Samples))
	}
	assertFile(t, svg)

	replot := filepath.Join(dir, "replot.svg")
	if code := run([]string{"-soak-replot", out, "-soak-svg", replot}, &stdout); code != 0 {
		t.Fatalf("-soak-replot exited %d, want 0", code)
	}
	assertFile(t, replot)
}

func readJSON(t *testing.T, path string, v any) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("read the bench's JSON: %v", err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("decode %s: %v", path, err)
	}
}

func assertFile(t *testing.T, path string) {
	t.Helper()
	if st, err := os.Stat(path); err != nil || st.Size() == 0 {
		t.Errorf("%s not written (%v)", path, err)
	}
}
