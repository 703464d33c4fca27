//go:build resync_chaos

package integration

import (
	"context"

	"github.com/resyncd/resync/coordinator"
	"github.com/resyncd/resync/schema"
)

// afterStartHooks: with the resync_chaos tag every coordinator reports each
// round's participants right after its start Txn (checkStartSets), and the
// leader can be held there and killed (leader-kill-after-start).
const afterStartHooks = true

func (env *chaosEnv) testOptions(k *startKill) []coordinator.Option {
	return []coordinator.Option{coordinator.WithTestAfterStart(func(ctx context.Context, n uint64, parts []schema.PluginID) {
		env.h.RecordStartSet(n, parts)
		k.hold(ctx, n)
	})}
}
