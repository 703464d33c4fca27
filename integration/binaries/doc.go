// Package binaries tests resync's commands as an operator runs them: it
// builds resyncd, resync-agent, resyncctl and etcdctl, runs them as real
// processes, and executes the etcdctl examples of README.md and docs/*.md.
package binaries
