// Package etcdtest starts real etcd for tests: an embedded single member on
// loopback, a multi-member cluster whose members can be stopped and
// restarted, and etcd's fault-injecting TCP proxy (go.etcd.io/etcd/pkg/v3/proxy)
// between a client and a member so that a test can blackhole it.
//
// Everything started here is stopped in t.Cleanup. Data dirs live in
// t.TempDir(). Raft ticks are fast (TickMs 25, ElectionMs 250), so lease TTLs
// down to 1 s are honoured (etcd raises a TTL below 1.5 election timeouts).
package etcdtest
