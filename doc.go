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
// A flavor that holds the plugin by value (ResyncOrch resync.Plugin) and
// sets its dependencies by field needs no constructor at all: the zero
// Plugin reads what is not set (the etcd endpoints, the agent name) from
// the environment in Init (RESYNC_ENDPOINTS, RESYNC_AGENT or cn-infra's
// MICROSERVICE_LABEL, or the file RESYNC_CONFIG names). Any name cn-infra
// accepts works ("K8s resources", "Config VPP default plug:IF/L2/L3").
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
// name over at once, and the older one stops delivering (its status
// channels stay open and silent) and reports ErrDisplaced through Done and
// Err.
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
// events and cancels pending timeouts. It never closes a status channel: a
// cn-infra agent closes its plugins in reverse order, resync (listed last)
// first, while consumers still `select { case ev := <-ch: ev.ResyncStatus() }`
// without checking ok; a closed channel would hand them nil events. A loop
// that wants to end selects on Plugin.Done.
//
// DoResync asks for a resync of this agent's plugins and returns at once;
// the round runs when the coordinator starts it (cn-infra's ran
// synchronously).
package resync
