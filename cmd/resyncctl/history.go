package main

import (
	"context"
	"flag"
	"fmt"
	"slices"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/resyncd/resync/schema"
)

// maxHistory bounds -n: the coordinator keeps 100 rounds by default.
const maxHistory = 100000

func setupHistory(fs *flag.FlagSet) func(context.Context, *env) error {
	n := fs.Int("n", 10, "how many of the latest rounds to show")
	return func(ctx context.Context, e *env) error {
		if *n < 1 || *n > maxHistory {
			return usagef("-n %d: give 1 to %d", *n, maxHistory)
		}
		c, err := e.dial(ctx)
		if err != nil {
			return err
		}
		ctx, cancel := e.etcd.CommandContext(ctx)
		defer cancel()
		// Round keys are zero-padded: key order is round order.
		resp, err := c.Get(ctx, e.layout.Rounds(), clientv3.WithPrefix(),
			clientv3.WithSort(clientv3.SortByKey, clientv3.SortDescend), clientv3.WithLimit(int64(*n)))
		if err != nil {
			return fmt.Errorf("read %s: %w", e.layout.Rounds(), err)
		}
		rounds := make([]schema.Round, 0, len(resp.Kvs))
		for _, kv := range resp.Kvs {
			key := string(kv.Key)
			k, err := e.layout.Parse(key)
			if err == nil && k.Kind != schema.KindRound {
				err = &schema.DecodeError{Key: key, Reason: "not a round key"}
			}
			if err != nil {
				e.skipped(err)
				continue
			}
			r, err := schema.DecodeRound(key, kv.Value)
			if err != nil {
				e.skipped(err)
				continue
			}
			rounds = append(rounds, r)
		}
		slices.Reverse(rounds) // oldest first, the latest next to the prompt
		if e.json {
			if rounds == nil {
				rounds = []schema.Round{}
			}
			return writeJSON(e.stdout, struct {
				Rounds []schema.Round `json:"rounds"`
			}{rounds})
		}
		tw := newTable(e.stdout)
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
}
