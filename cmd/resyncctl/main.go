// Command resyncctl is the operator CLI of resync: it shows the current
// round and its progress, the registrations, the round history, streams what
// happens, and asks the coordinator for a resync.
//
// Usage:
//
//	resyncctl [global flags] <command> [flags]
//
// Commands: status, trigger, registrations, agents, history, watch, rbac apply,
// rbac status, completion, help. Global flags (accepted before or after the
// command): -o/--output text|json, --prefix, and the etcd connection flags of
// etcdctl (--endpoints, --dial-timeout, --command-timeout, --cacert, --cert,
// --key, --user, --password). Every global flag not given on the command line
// is read from RESYNC_<NAME> (RESYNC_ENDPOINTS, RESYNC_OUTPUT, RESYNC_PREFIX,
// ...). Flags are spf13/pflag's, the commands spf13/cobra's; Go flag's
// single-dash spelling of long flags (-endpoints) still works (internal/cli).
//
// Exit status (internal/cli): 0 success; 1 failure (etcd unreachable,
// unknown agent, a waited-for round that did not complete clean, a timeout);
// 2 usage error.
package main

import rcli "github.com/resyncd/resync/internal/cli"

func main() { rcli.Main(run) }
