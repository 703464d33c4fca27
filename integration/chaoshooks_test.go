//go:build !resync_chaos

package integration

import "github.com/resyncd/resync/coordinator"

// afterStartHooks: without the resync_chaos tag the coordinators have no
// test hooks: no Started participant sets are recorded and no leader is
// killed after a start (make chaos builds with the tag).
const afterStartHooks = false

func (env *chaosEnv) testOptions(*startKill, bool) []coordinator.Option { return nil }
