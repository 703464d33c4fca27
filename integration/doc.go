// Package integration holds resync's reliability tests: a chaos test that
// runs coordinators and agents against a real 3-member etcd cluster while a
// seeded schedule injects faults (crashed and restarted coordinators,
// partitioned and restarted agents, stopped etcd members, compaction,
// garbage values), records what every plugin saw and what etcd stored, and
// checks the design's invariants over that history; and tests of bad input
// (etcd unreachable or gone mid-round, oversized texts, garbage records).
//
// The checker (History, Check) is in this non-test file so that its rules
// are documented and reusable; everything that starts processes is in the
// test files.
package integration
