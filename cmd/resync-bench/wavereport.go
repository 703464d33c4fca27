package main

import (
	"fmt"
	"io"
	"text/tabwriter"
)

// printWaves prints the wave rows: the round against its ideal window,
// the peak agents in flight against the window, and the watch events and
// reads of the agents outside it, beside the same size without waves.
func printWaves(w io.Writer, rounds []RoundRow) {
	var waves []RoundRow
	for _, r := range rounds {
		if r.Window > 0 {
			waves = append(waves, r)
		}
	}
	if len(waves) == 0 {
		return
	}
	fmt.Fprintln(w, "\nWaves (in flight: an agent's first plugin Started to its last plugin's ack, from the fleet's own timestamps, exact sweep;")
	fmt.Fprintln(w, "ideal: per round, the sum of every agent's own resync time / the window; events and reads: the fleet's clients', per round")
	fmt.Fprintln(w, "and participating agent; outside: what no agent in the window needed, per round, target 0; CPU floor: the round's CPU time")
	fmt.Fprintln(w, "over the CPUs, the least wall time any schedule of its work could take), ms")
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "agents x plugins[@targeted]~window\tmode\twindow\tround p50\tideal p50\tround/ideal\tCPU floor\tCPU floor/ideal\tagent resync p50\tpeak in flight\tevents/agent\treads/agent\toutside events\toutside reads\tno waves: round p50\tevents/agent\treads/agent\t")
	for _, r := range waves {
		peer := []string{"-", "-", "-"}
		if p := peerOf(rounds, r); p != nil {
			peer = []string{f1(p.Round.P50), f2(perAgent(p.events(), *p)), f2(perAgent(p.reads(), *p))}
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t\n", r.size(), r.Mode, r.windowText(),
			f1(r.Round.P50), f1(r.Ideal.P50), f2(r.RoundOverIdeal), f1(r.CPUFloor), f2(ratio(r.CPUFloor, r.Ideal.P50)), f1(r.AgentResync.P50), r.PeakInFlight,
			f2(perAgent(r.events(), r)), f2(perAgent(r.reads(), r)), perRound(r.outsideEvents(), r), perRound(r.outsideReads(), r),
			peer[0], peer[1], peer[2])
	}
	tw.Flush()
}

// printWakeIO prints every row's watch events and reads by key, per
// measured round.
func printWakeIO(w io.Writer, rounds []RoundRow) {
	fmt.Fprintln(w, "\nWake events and reads (the fleet's etcd clients: events in each WatchResponse, Range RPCs sent), per measured round;")
	fmt.Fprintln(w, "own key: a participating agent's wake/agents/<a>; shard: wake/shards/NN; outside: own keys and participation reads of agents")
	fmt.Fprintln(w, "outside the round; other: keys and reads no round claims")
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "agents x plugins[@targeted][~window]\tmode\tevents\town key Started\town key NotActive\tshard Started\tshard NotActive\toutside events\tother events\treads\tparticipation reads\toutside reads\tother reads\t")
	for _, r := range rounds {
		io, o := r.IO, r.OtherIO
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t\n", r.size(), r.Mode, perRound(r.events(), r),
			perRound(io.OwnStarted, r), perRound(io.OwnNotActive, r), perRound(io.ShardStarted, r), perRound(io.ShardNotActive, r),
			perRound(io.OutsideEvents, r), perRound(o.Events, r), perRound(r.reads(), r), perRound(io.Reads, r),
			perRound(io.OutsideReads, r), perRound(o.Reads, r))
	}
	tw.Flush()
}

// printBudget prints each wave row's round and tenant beside the same
// size without waves ("-" when the run has none): what a write budget (the
// window) buys the other users of etcd, and what it costs the round.
func printBudget(w io.Writer, rounds []RoundRow) {
	var tw *tabwriter.Writer
	for _, r := range rounds {
		if r.Window == 0 {
			continue
		}
		if tw == nil {
			fmt.Fprintln(w, "\nWrite budget (the window bounds the agents reloading and writing acks at once), ms; tenant: puts sent while the measured rounds ran")
			tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
			fmt.Fprintln(tw, "agents x plugins[@targeted]~window\tmode\twindow\tround p50\ttenant p50\ttenant p99\ttenant max\tno budget: round p50\ttenant p50\ttenant p99\ttenant max\t")
		}
		peer := []string{"-", "-", "-", "-"}
		if p := peerOf(rounds, r); p != nil {
			peer = []string{f1(p.Round.P50), f1(p.TenantRounds.P50), f1(p.TenantRounds.P99), f1(p.TenantRounds.Max)}
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t\n", r.size(), r.Mode, r.windowText(),
			f1(r.Round.P50), f1(r.TenantRounds.P50), f1(r.TenantRounds.P99), f1(r.TenantRounds.Max), peer[0], peer[1], peer[2], peer[3])
	}
	if tw != nil {
		tw.Flush()
	}
}

// perRound is n per measured round of r, "-" without any.
func perRound(n int64, r RoundRow) string {
	if r.Round.N == 0 {
		return "-"
	}
	return f1(float64(n) / float64(r.Round.N))
}

// waveTargets are the goals of the wave rows (issue #27) and of the write
// budget (issue #26), and the targeted round in a large fleet (#26).
func waveTargets(rounds []RoundRow) []Target {
	var out []Target
	for _, r := range rounds {
		if r.Window == 0 {
			continue
		}
		name := fmt.Sprintf("waves %s %s", r.size(), r.Mode)
		out = append(out,
			Target{Name: name + ": peak in flight", Goal: fmt.Sprintf("<= the window (%d agents)", r.Window),
				Measured: fmt.Sprintf("%d agents (fleet's timestamps, %d rounds)", r.PeakInFlight, r.Round.N), Met: r.PeakInFlight > 0 && r.PeakInFlight <= r.Window},
			Target{Name: name + ": round vs ideal window", Goal: "p50 <= 1.3 x ideal p50",
				Measured: fmt.Sprintf("%.2f x (%.1f / %.1f ms)%s", r.RoundOverIdeal, r.Round.P50, r.Ideal.P50, cpuBound(r)), Met: r.Ideal.N > 0 && r.RoundOverIdeal <= 1.3},
			Target{Name: name + ": agents outside the window", Goal: "0 events, 0 reads",
				Measured: fmt.Sprintf("%d events, %d reads in %d rounds", r.outsideEvents(), r.outsideReads(), r.Round.N), Met: r.Round.N > 0 && r.outsideEvents() == 0 && r.outsideReads() == 0})
		if p := peerOf(rounds, r); p != nil && r.WindowSetOn == windowOnCoordinator {
			out = append(out, Target{Name: fmt.Sprintf("write budget %s %s", r.size(), r.Mode), Goal: "tenant p99 over the rounds <= 50 ms",
				Measured: fmt.Sprintf("%.1f ms (no budget: %.1f ms); round p50 %.1f ms (no budget: %.1f ms)", r.TenantRounds.P99, p.TenantRounds.P99, r.Round.P50, p.Round.P50),
				Met:      r.TenantRounds.N > 0 && r.TenantRounds.P99 <= 50})
		}
	}
	return append(out, targetedTargets(rounds)...)
}

// targetedTargets compare a round of T agents in a larger fleet (AxP@T)
// with a round of a fleet of T agents (TxP), both in process.
func targetedTargets(rounds []RoundRow) []Target {
	var out []Target
	for _, r := range rounds {
		if r.Targeted == 0 || !r.hasFloors() {
			continue
		}
		for _, s := range rounds {
			if s.Agents == r.Targeted && s.Plugins == r.Plugins && s.Targeted == 0 && s.hasFloors() {
				out = append(out, Target{Name: fmt.Sprintf("round %s vs %s", r.size(), s.size()), Goal: "p50 <= 1.5 x",
					Measured: fmt.Sprintf("%.2f x (%.1f / %.1f ms)", ratio(r.Round.P50, s.Round.P50), r.Round.P50, s.Round.P50),
					Met:      s.Round.N > 0 && r.Round.N > 0 && r.Round.P50 <= 1.5*s.Round.P50})
			}
		}
	}
	return out
}

// cpuBound says when a wave row's round could not have met 1.3x its
// ideal window on these CPUs: its CPU time over them alone is more.
func cpuBound(r RoundRow) string {
	if r.Ideal.N == 0 || r.CPUFloor <= 1.3*r.Ideal.P50 {
		return ""
	}
	return fmt.Sprintf("; CPU-bound: its CPU over %d CPUs alone is %.1f ms (%.2f x ideal)", r.CPUs, r.CPUFloor, ratio(r.CPUFloor, r.Ideal.P50))
}
