// Package resync is the agent side of resync: an etcd-coordinated version of
// ligato cn-infra's datasync/resync, with the same API.
//
// Plugins register by name in Init and receive StatusEvents on a channel:
// Started means "reload your state, then Ack", NotActive means the round
// finished. Within one agent process, plugins receive Started one at a time
// in registration order, each after the previous one acked or timed out;
// agents proceed in parallel. A coordinator (package coordinator, cmd/resyncd)
// decides when a round starts by writing the resync revision in etcd; every
// agent watches it.
//
// Porting a cn-infra plugin changes its import and the construction of the
// resync plugin object, nothing else:
//
//	// before
//	import "github.com/ligato/cn-infra/datasync/resync"
//	p.Resync = &resync.DefaultPlugin
//
//	// after
//	import "github.com/resyncd/resync"
//	rs, err := resync.NewPlugin(resync.Deps{Log: log, Client: etcdClient}, resync.DefaultConfig("agent-1"))
//	p.Resync = rs // a resync.Subscriber; Init calls p.Resync.Register("ifplugin") as before
//
// Plugin has a cn-infra plugin's lifecycle (Init, AfterInit, Close,
// String): list it with the agent's plugins, before those that use it.
// NewPlugin delivers no event before its AfterInit, so plugins may register
// in Init and read from AfterInit. A program without a lifecycle uses New,
// which delivers at once. Registration.StatusChan() is a chan StatusEvent,
// exactly as the seed's.
//
// A join resync is never lost: a plugin that reads its channel late still
// gets exactly one Started for the current revision when it reads.
//
// One process per agent name: a newer process with the same name takes the
// name over at once, and the older one stops delivering, closes its status
// channels and reports ErrDisplaced through Done and Err.
//
// A plugin registered before etcd is reachable gets its Registration at once;
// it receives Started for the current resync revision (its join resync) as
// soon as etcd can be read. A restarted agent (a new Plugin object) reloads
// the same way.
//
// Errors reported with ReportError become resync requests in etcd; the
// coordinator then starts a new round for this agent after its backoff.
//
// TLS and etcd authentication are the injected client's configuration
// (clientv3.Config's TLS, Username and Password); see Example (TlsAndAuth).
// Under `resyncctl rbac apply` an agent's etcd user may write only its own
// registrations and acks and resync requests, and read the revision and
// rounds/: everything a Plugin does.
//
// Plugin.Close deregisters the agent (revokes its lease), stops delivering
// events, cancels pending timeouts and closes every status channel, so that
// `for ev := range reg.StatusChan()` loops end.
package resync
