//go:build resync_chaos

package coordinator

// WithTestFaults makes the coordinator misbehave on purpose, for the chaos
// test: beforeWrite (if not nil) is called before each fenced write, and
// with unfenced the writes go without their leadership guard. It exists
// only in builds with the resync_chaos tag; never use it outside tests.
func WithTestFaults(unfenced bool, beforeWrite func()) Option {
	return func(c *Coordinator) { c.faults = testFaults{unfenced: unfenced, beforeWrite: beforeWrite} }
}
