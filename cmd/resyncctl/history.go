package main

import (
	"context"
	"io"

	"github.com/spf13/pflag"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/resyncd/resync/schema"
)

// maxHistory bounds -n: the coordinator keeps 100 round summaries by default.
const maxHistory = 100000

func setupHistory(fs *pflag.FlagSet) func(context.Context, *env) error {
	n := fs.IntP("n", "n", 10, "how many of the latest rounds to show")
	round := fs.Uint64("round", 0, "show round N in detail instead: each participant's outcome (acked, failed with its error, timed out, departed; pending while it runs)")
	return func(ctx context.Context, e *env) error {
		if fs.Changed("round") {
			if fs.Changed("n") {
				return usagef("-n and --round: give one (--round shows a single round)")
			}
			return roundDetail(ctx, e, *round)
		}
		return history(ctx, e, *n)
	}
}

// history is the history command: read the latest n summaries, then print
// them.
func history(ctx context.Context, e *env, n int) error {
	if n < 1 || n > maxHistory {
		return usagef("-n %d: give 1 to %d", n, maxHistory)
	}
	c, ctx, cancel, err := e.connect(ctx)
	if err != nil {
		return err
	}
	defer cancel()
	rounds, err := e.readSummaries(ctx, c, n)
	if err != nil {
		return err
	}
	if e.json {
		return e.writeHistoryJSON(ctx, c, rounds)
	}
	return printHistory(e.stdout, rounds)
}

// writeHistoryJSON writes the rounds, each with a set scope's every target.
func (e *env) writeHistoryJSON(ctx context.Context, c *clientv3.Client, rounds []schema.Round) error {
	// A set scope's every target, while the round keeps its detail.
	type roundDoc struct {
		schema.Round
		ScopeTargets []string `json:"scope_targets,omitempty"`
	}
	docs := make([]roundDoc, len(rounds))
	for i := range rounds {
		docs[i].Round = rounds[i]
		var err error
		if docs[i].ScopeTargets, err = e.readScopeTargets(ctx, c, &rounds[i]); err != nil {
			return err
		}
	}
	return writeJSON(e.stdout, struct {
		Rounds []roundDoc `json:"rounds"`
	}{docs})
}

func printHistory(w io.Writer, rounds []schema.Round) error {
	tw := newTable(w)
	row(tw, "REVISION", "CAUSE", "SCOPE", "PARTICIPANTS", "ACKED", "FAILED", "TIMED_OUT", "DEPARTED", "DURATION", "FINISHED_AT", "LEADER")
	for _, r := range rounds {
		dur, leader := durationMS(r.DurationMS), r.FinishedBy
		if r.State == schema.Started {
			dur, leader = "running", r.StartedBy
		}
		row(tw, r.Revision, r.Cause, scopeText(r.Scope), r.Counts.Participants, r.Counts.Acked, r.Counts.Failed,
			r.Counts.TimedOut, r.Counts.Departed, dur, timestamp(r.FinishedAt), leader)
	}
	return tw.Flush()
}
