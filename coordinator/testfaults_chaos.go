//go:build resync_chaos

package coordinator

import (
	"context"

	"github.com/resyncd/resync/schema"
)

// WithTestFaults makes the coordinator misbehave on purpose, for the chaos
// test: beforeWrite (if not nil) is called before each fenced write, and
// with unfenced the writes go without their leadership guard. It exists
// only in builds with the resync_chaos tag; never use it outside tests.
func WithTestFaults(unfenced bool, beforeWrite func()) Option {
	return func(c *Coordinator) { c.faults.unfenced, c.faults.beforeWrite = unfenced, beforeWrite }
}

// WithTestAfterStart calls f once each round's start is committed, before
// its per-agent records are written (or after, when they went with the
// start: a set scope's, a small fleet's; see WithTestRecordsAfter), with
// round n's participants and the leader's context (ended when the leader
// stops): the chaos test records the set there, or blocks until ctx ends
// to kill the leader in between. It exists only in builds with the
// resync_chaos tag.
func WithTestAfterStart(f func(ctx context.Context, n uint64, parts []schema.PluginID)) Option {
	return func(c *Coordinator) { c.faults.afterStart = f }
}

// WithTestRecordsAfter makes every all-scope round write its per-agent
// records after its start Txn, as a fleet too large for the start Txn
// does, whatever the fleet's size: the chaos test's 20 agents then have
// the moment WithTestAfterStart holds. It exists only in builds with the
// resync_chaos tag.
func WithTestRecordsAfter() Option {
	return func(c *Coordinator) { c.faults.recordsAfter = true }
}
