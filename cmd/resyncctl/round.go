package main

import (
	"context"
	"fmt"
	"io"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/resyncd/resync/schema"
)

// pluginOutcome is one participant of a round and what became of it.
type pluginOutcome struct {
	Agent   string         `json:"agent"`
	Plugin  string         `json:"plugin"`
	Outcome schema.Outcome `json:"outcome"`
	Error   string         `json:"error,omitempty"`
}

// roundDetail is history --round N: round n's summary and every
// participant's outcome, from its per-agent records once it finished, from
// the acks and registrations while it runs.
func roundDetail(ctx context.Context, e *env, n uint64) error {
	if n == 0 {
		return usagef("--round 0: rounds are numbered from 1")
	}
	c, ctx, cancel, err := e.connect(ctx)
	if err != nil {
		return err
	}
	defer cancel()
	r, err := e.readRound(ctx, c, n)
	if err != nil {
		return err
	}
	if r == nil {
		return fmt.Errorf("round %d has no record %s: it never ran, or is older than the rounds the coordinator keeps (resyncd --history); resyncctl history lists those kept", n, e.layout.Round(n))
	}
	rows, err := e.readOutcomes(ctx, c, r)
	if err != nil {
		return err
	}
	if e.json {
		return writeJSON(e.stdout, struct {
			Round   schema.Round    `json:"round"`
			Plugins []pluginOutcome `json:"plugins"`
		}{*r, rows})
	}
	return printRoundDetail(e.stdout, r, rows)
}

// readOutcomes is every participant of round r with its outcome, in agent
// and registration order: from its agent's record once that says
// NotActive (a finished round's, or a wave round's agent done or
// skipped), else from acks and registrations.
func (e *env) readOutcomes(ctx context.Context, c *clientv3.Client, r *schema.Round) ([]pluginOutcome, error) {
	recs, parts, err := e.readParticipants(ctx, c, r.Revision)
	if err != nil {
		return nil, err
	}
	rows := make([]pluginOutcome, 0, len(parts))
	var acks map[schema.PluginID]schema.Ack
	var live map[schema.PluginID]bool
	for _, rec := range recs {
		if rec.State == schema.NotActive || r.State == schema.NotActive {
			for _, p := range rec.Plugins {
				rows = append(rows, pluginOutcome{Agent: rec.Agent, Plugin: p, Outcome: rec.Outcome(p), Error: rec.Errors[p]})
			}
			continue
		}
		if acks == nil {
			if acks, live, err = e.readLive(ctx, c); err != nil {
				return nil, err
			}
		}
		for _, p := range rec.Plugins {
			id := schema.PluginID{Agent: rec.Agent, Plugin: p}
			a := acks[id]
			row := pluginOutcome{Agent: id.Agent, Plugin: id.Plugin, Outcome: schema.Resolve(r.Revision, a, live[id], false)}
			if row.Outcome == schema.OutcomeFailed {
				row.Error = a.Error
			}
			rows = append(rows, row)
		}
	}
	return rows, nil
}

func printRoundDetail(w io.Writer, r *schema.Round, rows []pluginOutcome) error {
	state := fmt.Sprintf("%s, %s", r.State, durationMS(r.DurationMS))
	if r.State == schema.Started {
		state = fmt.Sprintf("%s (running since %s, deadline %s)", r.State, timestamp(r.StartedAt), timestamp(r.Deadline))
	}
	fmt.Fprintf(w, "round %d: %s; cause %s, scope %s, reason %q\n", r.Revision, state, r.Cause, scopeText(r.Scope), r.Reason)
	if r.Wave != nil {
		fmt.Fprintf(w, "waves: %s\n", waveDoc{WavePlan: *r.Wave}.planString())
	}
	if r.Truncated {
		fmt.Fprintln(w, "its records were cut to fit etcd's limits: some participants or error texts may be missing below")
	}
	if len(rows) == 0 {
		fmt.Fprintf(w, "no participant records (%d participants in its summary)\n", r.Counts.Participants)
		return nil
	}
	tw := newTable(w)
	row(tw, "AGENT", "PLUGIN", "OUTCOME", "ERROR")
	for _, o := range rows {
		row(tw, o.Agent, o.Plugin, o.Outcome, o.Error)
	}
	return tw.Flush()
}
