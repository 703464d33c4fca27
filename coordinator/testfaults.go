package coordinator

import (
	"context"

	"github.com/resyncd/resync/schema"
)

// testFaults are deliberate deviations from correct behaviour, for the chaos
// test only: they let it prove that its checker catches a deposed leader's
// write. They can be set only through WithTestFaults, which exists only in
// builds with the resync_chaos build tag (testfaults_chaos.go); in every
// other build they stay zero: every write fenced, no pauses.
type testFaults struct {
	// unfenced: fenced writes are sent without their leadership guard.
	unfenced bool
	// beforeWrite, if set, is called before each fenced write (a test
	// pauses the leader there, as a GC pause or a stopped process would).
	beforeWrite func()
	// afterStart, if set, is called once round n's start is committed in
	// etcd and before its per-agent records are written (for a set scope
	// or a small fleet they went before the start or with it), with the
	// participants it started with and the leader's context: a test
	// records the set, or blocks until ctx ends to crash the leader
	// between the two writes.
	afterStart func(ctx context.Context, n uint64, parts []schema.PluginID)
	// recordsAfter: an all-scope round's per-agent records are written
	// after its start whatever the fleet's size, as a large fleet's are
	// (placeRecords), so that a test's small fleet has the moment between
	// the two writes that afterStart holds.
	recordsAfter bool
}
