package etcdtest

import "go.uber.org/goleak"

// LeakOptions are the goleak options for packages that use this harness.
//
// They ignore only goroutines of net/http's connection machinery: members of
// a multi-member cluster talk over etcd's peer transport (rafthttp), whose
// idle HTTP connections between two stopped members can outlive Close by an
// unbounded time. Our own code does not use net/http in the packages that use
// this harness; cmd/resyncd's HTTP server is checked without these options.
func LeakOptions() []goleak.Option {
	return []goleak.Option{
		goleak.IgnoreAnyFunction("net/http.(*persistConn).readLoop"),
		goleak.IgnoreAnyFunction("net/http.(*persistConn).writeLoop"),
		goleak.IgnoreAnyFunction("net/http.(*connReader).backgroundRead"),
		goleak.IgnoreAnyFunction("net/http.(*conn).serve"),
	}
}
