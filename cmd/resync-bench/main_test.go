package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
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
// barrier, failover, memory, keys) at tiny sizes against the embedded
// etcd, so that a broken bench fails CI. It checks that each experiment
// produced its rows, not any number.
func TestSmokeExperiments(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "results.json")
	var stdout bytes.Buffer
	code := run([]string{
		"-sizes", "1x1,2x2", "-rounds", "2", "-warmup", "1",
		"-barrier-rounds", "1", "-barrier-timeout", "20s",
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
	if len(res.Rounds) != 2 {
		t.Errorf("round-latency rows = %d, want 2 (1x1 and 2x2)", len(res.Rounds))
	}
	for _, r := range res.Rounds {
		// The probe writes every 5 ms: 2 s idle, and the measured rounds
		// (each followed by its NotActive wait) leave at least a sample.
		// A fleet this small is woken by one write (its start Txn).
		if r.TenantIdle.N < 10 || r.TenantRounds.N == 0 || r.TenantNearWrites.N == 0 || r.WakeFanout != r.Agents {
			t.Errorf("%dx%d: tenant probe idle %d samples, rounds %d, near writes %d, largest wake %d (want >= 10, > 0, > 0, %d)",
				r.Agents, r.Plugins, r.TenantIdle.N, r.TenantRounds.N, r.TenantNearWrites.N, r.WakeFanout, r.Agents)
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
