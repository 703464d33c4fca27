//go:build resync_chaos

package integration

import (
	"context"

	"github.com/resyncd/resync/coordinator"
	"github.com/resyncd/resync/schema"
)

// afterStartHooks: with the resync_chaos tag every coordinator reports each
// round's participants right after its start Txn (checkStartSets), and the
// leader can be held there and killed (leader-kill-after-start). Every
// other coordinator (recordsAfter) writes an all-scope round's records
// after its start, as a fleet too large for the start Txn does: the kill
// then falls between the two writes; with the others, after a start that
// carried the records.
const afterStartHooks = true

func (env *chaosEnv) testOptions(k *startKill, recordsAfter bool) []coordinator.Option {
	opts := []coordinator.Option{coordinator.WithTestAfterStart(func(ctx context.Context, n uint64, parts []schema.PluginID) {
		env.h.RecordStartSet(n, parts)
		k.hold(ctx, n)
	})}
	if recordsAfter {
		opts = append(opts, coordinator.WithTestRecordsAfter())
	}
	return opts
}
