package main

import (
	"context"
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/sirupsen/logrus"
)

// Machine describes where the run happened.
type Machine struct {
	GOOS       string `json:"goos"`
	GOARCH     string `json:"goarch"`
	NumCPU     int    `json:"num_cpu"`
	GOMAXPROCS int    `json:"gomaxprocs"`
	GoVersion  string `json:"go_version"`
	Hostname   string `json:"hostname"`
}

// Settings are the run's documented settings.
type Settings struct {
	Etcd             string  `json:"etcd"`
	Rounds           int     `json:"rounds"`
	Warmup           int     `json:"warmup_rounds"`
	AgentsPerClient  int     `json:"agents_per_client"`
	CoalesceWindowMs float64 `json:"coalesce_window_ms"`
	BarrierRounds    int     `json:"double_barrier_rounds"`
	BarrierMax       int     `json:"double_barrier_max_participants,omitempty"`
	BarrierTimeoutMs float64 `json:"double_barrier_timeout_ms"`
	AgentConfig      string  `json:"agent_config"`
	// AgentsApart: each size's rounds also ran with the agents apart
	// (-agents-apart; rows with mode agents-apart).
	AgentsApart bool `json:"agents_apart"`
	// BudgetWindow is the window of the sizes written AxP~budget
	// (-budget-window), set on the coordinator.
	BudgetWindow int `json:"budget_window"`
}

// Target is one goal and whether this run met it.
type Target struct {
	Name     string `json:"name"`
	Goal     string `json:"goal"`
	Measured string `json:"measured"`
	Met      bool   `json:"met"`
}

// Results is the JSON document of a run.
type Results struct {
	Machine  Machine         `json:"machine"`
	Settings Settings        `json:"settings"`
	Start    time.Time       `json:"start"`
	WallS    float64         `json:"wall_s"`
	Rounds   []RoundRow      `json:"rounds,omitempty"`
	Failover *FailoverResult `json:"failover,omitempty"`
	Memory   []MemoryResult  `json:"memory,omitempty"`
	Keys     []KeysRow       `json:"keys,omitempty"`
	Shapes   []ShapeRow      `json:"wake_shapes,omitempty"`
	Targets  []Target        `json:"targets"`
	Error    string          `json:"error,omitempty"`
}

func runAll(ctx context.Context, o options, log logrus.FieldLogger) (*Results, error) {
	res := &Results{Machine: machine(), Start: time.Now().UTC(), Settings: Settings{
		Etcd:             "embedded v3.7.3, single member, default ticks (100/1000 ms), fsync on",
		Rounds:           o.rounds,
		Warmup:           o.warmup,
		AgentsPerClient:  o.agentsPerClient,
		CoalesceWindowMs: ms(o.coalesce),
		BarrierRounds:    o.barrierRounds,
		BarrierTimeoutMs: ms(o.barrierTimeout),
		BarrierMax:       o.barrierMax,
		AgentConfig:      fmt.Sprintf("resync.DefaultConfig (TTL 10s) with accept %v, ack %v; plugins ack at once", benchAcceptTimeout, benchAckTimeout),
		AgentsApart:      o.apart != nil,
		BudgetWindow:     o.budgetWindow,
	}}
	defer func() { res.WallS = time.Since(res.Start).Seconds(); res.Targets = targets(res, o) }()
	progress("starting embedded etcd")
	e, err := startEnv(ctx, o.dir)
	if err != nil {
		return res, err
	}
	defer e.Close()
	if err := runExperimentsIn(ctx, e, o, res, log); err != nil {
		res.Error = err.Error()
		return res, err
	}
	return res, nil
}

// runExperimentsIn runs the experiments o selects on e, in order, filling
// res; it stops at the first that fails.
func runExperimentsIn(ctx context.Context, e *env, o options, res *Results, log logrus.FieldLogger) error {
	if o.only["rounds"] {
		for _, sz := range o.sizes {
			row, err := measureSize(ctx, e, o, sz, log)
			res.Rounds = append(res.Rounds, row)
			if err != nil {
				return fmt.Errorf("rounds %s: %w", sz, err)
			}
			if o.apart == nil {
				continue
			}
			row, err = measureApart(ctx, e, o, sz, log)
			res.Rounds = append(res.Rounds, row)
			if err != nil {
				return fmt.Errorf("rounds %s, agents apart: %w", sz, err)
			}
		}
	}
	var err error
	if o.only["shapes"] {
		if res.Shapes, err = measureShapes(ctx, e, o.shapeWatchers, o.shapeWakes); err != nil {
			return fmt.Errorf("wake shapes: %w", err)
		}
	}
	if o.only["failover"] {
		progress("failover")
		if res.Failover, err = measureFailover(ctx, e, o, log); err != nil {
			return fmt.Errorf("failover: %w", err)
		}
	}
	if o.only["memory"] {
		for _, n := range o.memParticipants {
			progress("memory: %d participants", n)
			m, err := measureMemory(ctx, e, n)
			if err != nil {
				return fmt.Errorf("memory %d: %w", n, err)
			}
			res.Memory = append(res.Memory, *m)
		}
	}
	if o.only["keys"] {
		progress("keys: %s", o.keySize)
		if res.Keys, err = measureKeys(ctx, e, o, log); err != nil {
			return fmt.Errorf("keys: %w", err)
		}
	}
	return nil
}

// targets checks the results against the project's goals.
func targets(res *Results, o options) []Target {
	var out []Target
	if len(res.Rounds) > 0 {
		out = append(out, roundTargets(res.Rounds)...)
		out = append(out, waveTargets(res.Rounds)...)
	}
	if f := res.Failover; f != nil {
		lim := f.SessionTTLMs + 500
		out = append(out,
			Target{Name: "crash failover", Goal: fmt.Sprintf("median <= TTL + 0.5 s (%.0f ms)", lim),
				Measured: fmt.Sprintf("%.0f ms (n=%d)", f.Crash.P50, f.Crash.N), Met: f.Crash.N > 0 && f.Crash.P50 <= lim},
			Target{Name: "graceful failover", Goal: "median <= 50 ms",
				Measured: fmt.Sprintf("%.1f ms (n=%d)", f.Graceful.P50, f.Graceful.N), Met: f.Graceful.N > 0 && f.Graceful.P50 <= 50})
	}
	for _, m := range res.Memory {
		// 1 KiB at fleet scale (50,000 participants and more), 2 KiB below.
		limit := 2048.0
		if m.Participants >= 50000 {
			limit = 1024
		}
		out = append(out, Target{Name: fmt.Sprintf("coordinator heap at %d participants", m.Participants), Goal: fmt.Sprintf("<= %.0f B per participant", limit),
			Measured: fmt.Sprintf("%.0f B per participant", m.PerParticipant), Met: m.PerParticipant <= limit})
	}
	if len(res.Keys) > 0 {
		out = append(out, keysTarget(res.Keys))
	}
	return out
}

// roundTargets are the round-latency goals, against the floors and the
// DoubleBarrier, and the write-size goal.
func roundTargets(all []RoundRow) []Target {
	// The goal is stated for 1000x10 in process (agents-apart, wave and
	// reload rows have no floors); the largest size measured stands in for
	// it in quick runs (its name says which).
	var rounds []RoundRow
	for _, x := range all {
		if x.hasFloors() {
			rounds = append(rounds, x)
		}
	}
	if len(rounds) == 0 {
		return []Target{largestWriteTarget(all)}
	}
	r := rounds[len(rounds)-1]
	for _, x := range rounds {
		if x.Targeted == 0 {
			r = x // the last size whose rounds reach the whole fleet
		}
	}
	for _, x := range rounds {
		if x.Agents == 1000 && x.Plugins == 10 && x.Targeted == 0 {
			r = x
		}
	}
	var out []Target
	name := fmt.Sprintf("round %s vs etcd floor", r.size())
	out = append(out, Target{Name: name, Goal: "p50 <= 1.5 x floor p50",
		Measured: fmt.Sprintf("%.2f x (%.1f / %.1f ms); vs the batched floor %.2f x (%.1f ms)",
			r.OursOverFloor, r.Round.P50, r.Floor.P50, r.OursOverFloorTxn, r.FloorTxn.P50),
		Met: r.Floor.N > 0 && r.OursOverFloor <= 1.5})
	out = append(out, Target{Name: fmt.Sprintf("round %s vs batched etcd floor", r.size()), Goal: "p50 <= 1.5 x floor txn p50",
		Measured: fmt.Sprintf("%.2f x (%.1f / %.1f ms); the watched floor alone is %.2f x, the delivered floor %.2f x",
			r.OursOverFloorTxn, r.Round.P50, r.FloorTxn.P50, r.WatchedOverTxn, ratio(r.DeliveredFloor.P50, r.FloorTxn.P50)),
		Met: r.FloorTxn.N > 0 && r.OursOverFloorTxn <= 1.5})
	out = append(out, largestWriteTarget(all))
	return append(out, barrierTarget(r))
}

func largestWriteTarget(all []RoundRow) Target {
	largest := 0
	for _, x := range all {
		largest = max(largest, x.LargestWrite)
	}
	return Target{Name: "largest coordinator request", Goal: "<= WriteBudget (512 KiB), whatever the size",
		Measured: fmt.Sprintf("%d B", largest), Met: largest <= 512<<10}
}

func barrierTarget(r RoundRow) Target {
	b := Target{Name: fmt.Sprintf("round %s vs DoubleBarrier", r.size()), Goal: "p50 < DoubleBarrier p50"}
	switch {
	case r.Barrier.N > 0:
		b.Measured = fmt.Sprintf("%.2f x (%.1f / %.1f ms)", r.OursOverBarrier, r.Round.P50, r.Barrier.P50)
		b.Met = r.Round.P50 < r.Barrier.P50
	case r.BarrierTimedOut:
		b.Measured = fmt.Sprintf("%.1f ms vs DoubleBarrier > %.0f ms (timed out)", r.Round.P50, r.BarrierTimeout)
		b.Met = r.Round.P50 < r.BarrierTimeout
	case r.BarrierSkipped != "":
		b.Measured = "DoubleBarrier skipped: " + r.BarrierSkipped
	default:
		b.Measured = "DoubleBarrier not measured: " + r.BarrierError
	}
	return b
}

func keysTarget(keys []KeysRow) Target {
	same := true
	for _, k := range keys {
		same = same && k.PerParticipantState == keys[0].PerParticipantState && k.Requests == 0
	}
	first, last := keys[0], keys[len(keys)-1]
	return Target{Name: "etcd keys per participant", Goal: "constant over rounds",
		Measured: fmt.Sprintf("%.3f after %d rounds, %.3f after %d (state keys %.3f; round records %d, kept <= History)",
			first.PerParticipant, first.Rounds, last.PerParticipant, last.Rounds, last.PerParticipantState, last.RoundRecords),
		Met: same}
}

// printTable prints the results as tables, one section per experiment.
func printTable(w io.Writer, res *Results) {
	m := res.Machine
	fmt.Fprintf(w, "resync-bench: %s/%s, %d CPUs, %s; %s\n", m.GOOS, m.GOARCH, m.NumCPU, m.GoVersion, res.Settings.Etcd)
	fmt.Fprintf(w, "coordinator CoalesceWindow %.0f ms; %d agents per etcd client; %d rounds per size (p50/p99 nearest rank); wall %.0f s\n",
		res.Settings.CoalesceWindowMs, res.Settings.AgentsPerClient, res.Settings.Rounds, res.WallS)
	if len(res.Rounds) > 0 {
		printRounds(w, res.Rounds)
		printRoundCost(w, res)
		printTenant(w, res.Rounds)
		printWaves(w, res.Rounds)
		printBudget(w, res.Rounds)
		printWakeIO(w, res.Rounds)
		printRoundNotes(w, res.Rounds)
	}
	if res.Failover != nil {
		printFailover(w, res.Failover)
	}
	for i, mm := range res.Memory {
		if i == 0 {
			fmt.Fprintf(w, "\nCoordinator memory (%s)\n", mm.Method)
		}
		fmt.Fprintf(w, "  %d participants (%d agents), %d rounds: live heap %.1f MiB -> %.1f MiB = %.0f B per participant; peak HeapAlloc %.1f MiB; %d goroutines\n",
			mm.Participants, mm.Agents, mm.Rounds, mib(mm.HeapBefore), mib(mm.HeapAfter), mm.PerParticipant, mib(mm.PeakHeap), mm.Goroutines)
	}
	if len(res.Keys) > 0 {
		printKeys(w, res.Keys)
	}
	if len(res.Shapes) > 0 {
		printShapes(w, res.Shapes)
	}
	if len(res.Targets) > 0 {
		printTargets(w, res.Targets)
	}
	if res.Error != "" {
		fmt.Fprintf(w, "\nrun stopped early: %s\n", res.Error)
	}
}

func printRounds(w io.Writer, rounds []RoundRow) {
	fmt.Fprintln(w, "\nRound latency (request written -> revision NotActive, every participant acked), ms;")
	fmt.Fprintln(w, "floors of the same participants: per-put (each ack its own Put), batched (each agent's acks in one Txn),")
	fmt.Fprintln(w, "watched (batched, plus every agent notified through a watch and every ack collected by one; no resync code),")
	fmt.Fprintln(w, "delivered (watched, plus each agent handing the round to its plugins' goroutines in order before writing),")
	fmt.Fprintln(w, "protocol (delivered, plus a round's request write before it and finish write after it: 4 writes, as any round);")
	fmt.Fprintln(w, "mode: in-process (agents, coordinator and etcd share every CPU) or agents-apart (agents in a child process on a CPU")
	fmt.Fprintln(w, "of their own, etcd, coordinator and tenant on the others; no floors, which run in process)")
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "agents x plugins[@targeted]\tmode\tparticipants\tclients\tround p50\tround p99\tto Started p50\tto all acked p50\tfloor p50\tbatched p50\twatched p50\tdelivered p50\tprotocol p50\tbarrier p50\tours/floor\tours/batched\tours/watched\tours/delivered\tours/protocol\twatched/batched\tours/barrier\t")
	for _, r := range rounds {
		cells := []string{r.size().String(), r.Mode, fmt.Sprint(r.Participants), fmt.Sprint(r.Clients),
			f1(r.Round.P50), f1(r.Round.P99), f1(r.ToStarted.P50), f1(r.AllAcked.P50)}
		fmt.Fprintln(tw, strings.Join(append(cells, floorCells(r)...), "\t")+"\t")
	}
	tw.Flush()
}

// hasFloors says whether the row's floors and barrier were measured: not
// for an agents-apart row, a wave row, or one whose plugins reload.
func (r RoundRow) hasFloors() bool { return r.Mode != modeApart && r.Wave == "" && r.ReloadMS == 0 }

// floorCells are a round row's floor, barrier and ratio columns, "-" for
// a row without floors.
func floorCells(r RoundRow) []string {
	if !r.hasFloors() {
		return slices.Repeat([]string{"-"}, 13)
	}
	bp50, rb := "-", "-"
	switch {
	case r.Barrier.N > 0:
		bp50 = f1(r.Barrier.P50)
		rb = fmt.Sprintf("%.2f", r.OursOverBarrier)
	case r.BarrierTimedOut:
		bp50 = fmt.Sprintf(">%.0f", r.BarrierTimeout)
		rb = fmt.Sprintf("<%.3f", r.OursOverBarrier)
	}
	return []string{f1(r.Floor.P50), f1(r.FloorTxn.P50), f1(r.WatchedFloor.P50), f1(r.DeliveredFloor.P50), f1(r.ProtocolFloor.P50), bp50,
		f2(r.OursOverFloor), f2(r.OursOverFloorTxn), f2(r.OursOverWatched), f2(r.OursOverDelivered), f2(r.OursOverProtocol), f2(r.WatchedOverTxn), rb}
}

func printRoundCost(w io.Writer, res *Results) {
	fmt.Fprintln(w, "\nRound cost (CPU: the bench process, agents, coordinator and etcd together; agents-apart: both processes, and the agents' share)")
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "agents x plugins[@targeted]\tmode\tlargest write B\tcoord heap B/participant\tack Txns/agent\tCPU ms/round\tagents' CPU ms/round\tbatched floor CPU ms\t")
	for _, r := range res.Rounds {
		agents, floor := "-", fmt.Sprintf("%.0f", r.FloorTxnCPU)
		if r.Mode == modeApart {
			agents, floor = fmt.Sprintf("%.0f", r.AgentsCPUPerRound), "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%.2f\t%.0f\t%s\t%s\t\n", r.size(), r.Mode, r.LargestWrite, heapOf(res, r.Participants),
			r.AckTxnsPerAgent, r.CPUPerRound, agents, floor)
	}
	tw.Flush()
	for _, r := range res.Rounds {
		if a := r.Apart; a != nil {
			fmt.Fprintf(w, "  %s agents-apart: bench (etcd, coordinator, tenant) on CPUs %s (%d threads, GOMAXPROCS %d), agents (pid %d) on CPUs %s (%d threads, GOMAXPROCS %d), child exit %d\n",
				r.size(), a.BenchCPUs, a.BenchThreads, a.BenchGOMAXPROCS, a.AgentsPID, a.AgentsCPUs, a.AgentsThreads, a.AgentsGOMAXPROCS, a.AgentsExitCode)
		}
	}
}

// printTenant prints the tenant probe's latency next to each size's
// rounds: what a round costs the other users of the same etcd.
func printTenant(w io.Writer, rounds []RoundRow) {
	fmt.Fprintln(w, "\nTenant (another client putting one small key every 5 ms), ms; near: puts in flight within 100 ms of a round's start or finish write;")
	fmt.Fprintln(w, "slow watchers: share of its puts during the rounds answered while etcd had a watcher parked as slow (its 128-response")
	fmt.Fprintln(w, "buffer full; etcd catches it up every 100 ms), and the most at once")
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "agents x plugins[@targeted]\tmode\tlargest wake\tidle p50\tidle p99\trounds p50\trounds p99\trounds max\tnear p99\tnear max\tnear max/idle p99\tslow watchers: share\tmax\t")
	for _, r := range rounds {
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%.2f\t%s\t%d\t\n", r.size(), r.Mode, r.WakeFanout,
			f1(r.TenantIdle.P50), f1(r.TenantIdle.P99), f1(r.TenantRounds.P50), f1(r.TenantRounds.P99), f1(r.TenantRounds.Max),
			f1(r.TenantNearWrites.P99), f1(r.TenantNearWrites.Max), ratio(r.TenantNearWrites.Max, r.TenantIdle.P99),
			r.SlowWatchers.share(), r.SlowWatchers.Max)
	}
	tw.Flush()
}

// printRoundNotes lists what each size's measurement left out.
func printRoundNotes(w io.Writer, rounds []RoundRow) {
	for _, r := range rounds {
		name := fmt.Sprintf("%s %s", r.size(), r.Mode)
		if r.InitialDeparted > 0 {
			fmt.Fprintf(w, "  %s: %d participants departed in the unmeasured initial round (leases lapsed while the fleet started) and registered again\n", name, r.InitialDeparted)
		}
		if r.NotActiveMissing > 0 {
			fmt.Fprintf(w, "  %s: %d NotActive events not taken within 30 s\n", name, r.NotActiveMissing)
		}
		for _, u := range r.Unclean {
			fmt.Fprintf(w, "  %s: unclean measured round, not a sample: %s\n", name, u)
		}
		for _, x := range r.Extra {
			fmt.Fprintf(w, "  %s: extra round, not requested, not a sample: %s\n", name, x)
		}
		if r.BarrierError != "" {
			fmt.Fprintf(w, "  %s: DoubleBarrier failed: %s\n", name, r.BarrierError)
		}
		if r.BarrierSkipped != "" {
			fmt.Fprintf(w, "  %s: DoubleBarrier skipped: %s\n", name, r.BarrierSkipped)
		}
	}
}

func printFailover(w io.Writer, f *FailoverResult) {
	fmt.Fprintf(w, "\nFailover (%dx%d agents, coordinator SessionTTL %.0f ms, standby campaigning for %.0f ms; leader stops -> successor's Started for a pending request), ms\n",
		f.Agents, f.Plugins, f.SessionTTLMs, f.StandbySettleMs)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "kind\tn\tmedian\tmin\tmax\tto leading median\t")
	fmt.Fprintf(tw, "crash (client closed, no resign)\t%d\t%s\t%s\t%s\t%s\t\n", f.Crash.N, f1(f.Crash.P50), f1(f.Crash.Min), f1(f.Crash.Max), f1(f.CrashLeading.P50))
	fmt.Fprintf(tw, "graceful (Close: resign)\t%d\t%s\t%s\t%s\t%s\t\n", f.Graceful.N, f1(f.Graceful.P50), f1(f.Graceful.Min), f1(f.Graceful.Max), f1(f.GracefulLeading.P50))
	tw.Flush()
	if f.Discarded > 0 || f.CloseFailed > 0 || f.NotLeading > 0 {
		fmt.Fprintf(w, "  not samples: %d handovers where the old leader had taken the request (the successor resumed its round), %d graceful ones whose Close failed (no resign: the TTL was waited for), %d where the leader to stop no longer led\n", f.Discarded, f.CloseFailed, f.NotLeading)
	}
}

func printKeys(w io.Writer, keys []KeysRow) {
	fmt.Fprintln(w, "\netcd keys under the prefix")
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "after rounds\tparticipants\tkeys\tregistrations\tacks\trounds/\trequests/\tother\tkeys/participant\t(registrations+acks)/participant\t")
	for _, k := range keys {
		fmt.Fprintf(tw, "%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%.3f\t%.3f\t\n", k.Rounds, k.Participants, k.Keys, k.Registrations, k.Acks,
			k.RoundRecords, k.Requests, k.Other, k.PerParticipant, k.PerParticipantState)
	}
	tw.Flush()
}

func printTargets(w io.Writer, targets []Target) {
	fmt.Fprintln(w, "\nTargets")
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	for _, t := range targets {
		mark := "MET"
		if !t.Met {
			mark = "MISSED"
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\n", mark, t.Name, t.Goal, t.Measured)
	}
	tw.Flush()
}

// heapOf is the coordinator's heap per participant measured (memory
// experiment) at n participants, "-" if not measured.
func heapOf(res *Results, n int) string {
	for _, m := range res.Memory {
		if m.Participants == n {
			return fmt.Sprintf("%.0f", m.PerParticipant)
		}
	}
	return "-"
}

func f1(v float64) string { return fmt.Sprintf("%.1f", v) }

func f2(v float64) string { return fmt.Sprintf("%.2f", v) }

func mib(b uint64) float64 { return float64(b) / (1 << 20) }
