// Package etcdflags gives resync's binaries one set of etcd connection flags,
// named as etcdctl names them, with environment fallbacks, and turns them into
// a connected *clientv3.Client or one clear error.
//
// Flags (Register adds them to a *pflag.FlagSet; defaults from Default):
//
//	--endpoints        comma-separated host:port list (default 127.0.0.1:2379);
//	                   an https:// endpoint turns TLS on
//	--dial-timeout     bound of connecting and of the first request (default 5s)
//	--command-timeout  bound of each later request (default 10s)
//	--cacert           CA bundle that verifies the server (turns TLS on)
//	--cert, --key      client certificate and key, both or neither (turn TLS on)
//	--user             user name, or "user:password" as etcdctl accepts it
//	--password         password (prefer the RESYNC_PASSWORD variable: flags
//	                   show in the process list)
//
// Environment: internal/cli's ApplyEnv sets every flag not given on the
// command line from RESYNC_<NAME> (RESYNC_ENDPOINTS, RESYNC_DIAL_TIMEOUT,
// ...); the command line wins over the environment, which wins over the
// default.
//
// Connecting: clientv3.New does not fail on an unreachable endpoint, so Dial
// probes the cluster with one read bounded by the dial timeout and returns an
// *UnreachableError (matching ErrUnreachable with errors.Is) whose text is a
// single line saying where and how long it tried. When an endpoint accepts
// connections but does not answer because of TLS (a plain client on a TLS
// server, an unknown server CA, a missing or refused client certificate),
// the line says that instead of asking whether etcd runs.
//
// Typical use in a main package:
//
//	fs := pflag.NewFlagSet("resyncd", pflag.ContinueOnError)
//	ef := etcdflags.Default()
//	ef.Register(fs)
//	if err := cli.Parse(fs, "resyncd", os.Args[1:]); err != nil { ... exit cli.ExitUsage }
//	c, err := ef.Dial(ctx)
//	if err != nil { fmt.Fprintln(os.Stderr, "resyncd:", err); os.Exit(cli.ExitFailure) }
//	defer c.Close()
//
// Nothing here holds mutable package state; a Flags value is not safe for
// concurrent mutation, but Dial and Config only read it.
package etcdflags
