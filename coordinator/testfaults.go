package coordinator

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
	// afterStart, if set, is called after round n's start Txn committed
	// and before its per-agent records are written (a test kills or
	// freezes the leader there).
	afterStart func(n uint64)
}
