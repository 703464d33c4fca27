// Package etcdflags gives resync's binaries one set of etcd connection flags,
// named as etcdctl names them, with environment fallbacks, and turns them into
// a connected *clientv3.Client or one clear error.
//
// Flags (Register adds them to a *flag.FlagSet; defaults from Default):
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
// Environment: ApplyEnv sets every flag of a FlagSet that was not given on
// the command line from the variable <prefix><NAME>, NAME being the flag's name
// upper-cased with '-' turned into '_': with the prefix "RESYNC_",
// --endpoints reads RESYNC_ENDPOINTS and --dial-timeout reads
// RESYNC_DIAL_TIMEOUT. The command line wins over the environment, which wins
// over the default. One-letter flags (short aliases) are not read from the
// environment.
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
//	fs := flag.NewFlagSet("resyncd", flag.ContinueOnError)
//	ef := etcdflags.Default()
//	ef.Register(fs)
//	if err := fs.Parse(os.Args[1:]); err != nil { ... exit 2 }
//	if err := etcdflags.ApplyEnv(fs, "RESYNC_", os.LookupEnv, etcdflags.Visited(fs)); err != nil { ... exit 2 }
//	c, err := ef.Dial(ctx)
//	if err != nil { fmt.Fprintln(os.Stderr, "resyncd:", err); os.Exit(1) }
//	defer c.Close()
//
// Nothing here holds mutable package state; a Flags value is not safe for
// concurrent mutation, but Dial and Config only read it.
package etcdflags
