// Command resyncctl is the operator CLI of resync: it shows the current
// round and its progress, the registrations, the round history, streams what
// happens, and asks the coordinator for a resync.
//
// Usage:
//
//	resyncctl [global flags] <command> [flags]
//
// Commands: status, trigger, registrations, agents, history, watch, rbac apply,
// rbac status, help. Global
// flags (accepted before or after the command): -o text|json, --prefix, and
// the etcd connection flags of etcdctl (--endpoints, --dial-timeout,
// --command-timeout, --cacert, --cert, --key, --user, --password). Every
// global flag not given on the command line is read from RESYNC_<NAME>
// (RESYNC_ENDPOINTS, RESYNC_OUTPUT, RESYNC_PREFIX, ...).
//
// Exit status: 0 success; 1 failure (etcd unreachable, unknown agent, a
// waited-for round that did not complete clean, a timeout); 2 usage error.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
