// Package watcher turns the cluster's resync revision into StatusEvents for
// the plugins of one agent, and turns their acks back into etcd keys.
//
// A Watcher serves one agent. It holds exactly one etcd watch, on the
// revision key (through internal/listwatch, so it survives compaction, lost
// raft leaders and reconnects), however many plugins the agent has. It
// delivers events to the plugins' status channels from one goroutine, the
// dispatcher, which is the only sender on those channels. It never closes
// them: after Close they stay open and silent, as the seed's did, because
// real cn-infra consumers `select { case ev := <-ch: ev.ResyncStatus() }`
// without checking ok, and a closed channel hands them nil events.
//
// # Rounds
//
// When the revision record N is Started and its scope includes some of the
// agent's plugins, the dispatcher delivers a Started event to them one at a
// time, in registration order: plugin k+1 receives it only after plugin k
// acked N or timed out. A plugin that does not take the event from its
// channel within Config.AcceptTimeout, or does not ack within
// Config.AckTimeout, gets a "timeout" ack written on its behalf and the
// dispatcher moves on. Each plugin receives at most one Started per revision:
// the dispatcher remembers, per plugin, the last revision it handled, so a
// reconnect or a re-list after compaction never repeats an event.
//
// Rounds coalesce: if N+1 arrives before N reached a plugin, that plugin only
// ever sees N+1 (an event not yet taken from a channel is withdrawn). A
// plugin already holding N's event keeps it and may ack it; the dispatcher
// waits for that ack (or its timeout) before starting N+1, so an agent never
// has two plugins reloading at once.
//
// When the record becomes NotActive N (the round finished), every plugin that
// took Started N gets a NotActive event, after its ack. A NotActive event
// that is not taken within the accept timeout, or that a newer revision
// overtakes, is dropped and counted (Stats.NotActiveDropped): it never holds
// up the next round.
//
// # Join resync
//
// A plugin registered with a Watcher that has never handled any revision for
// it (a new agent, a restarted agent, a plugin registered late) receives
// Started for the current revision N, whatever the record's state and scope,
// as soon as the record is read: that is how an agent loads its state at
// start-up, as the seed resynced every plugin at start. If the record is
// NotActive, that plugin then receives NotActive after its ack. Its ack is
// written like any other; the coordinator ignores acks of plugins that are
// not participants of an open round. A plugin registered while etcd is
// unreachable gets its join resync once the record can be read.
//
// A join resync is never lost. A plugin that does not take it within the
// accept timeout (a cn-infra plugin that registers in Init and reads from
// AfterInit) is parked: the agent's next plugins proceed, and the
// dispatcher offers the join again, for the current record, whenever it has
// nothing else to deliver, and in order to every round the plugin takes part
// in. The plugin takes it when it reads, exactly once per revision (a parked
// event was never taken; a newer record replaces it). Outside a round no ack
// is written for it; as a participant of a Started round it gets a timeout
// ack for that round (the round does not wait for a plugin that does not
// read), and the coordinator's retry round then covers it. A regular
// round's Started not taken in time gets a timeout ack as before.
//
// Nothing is delivered before Start when the Watcher was made with Held.
//
// # History resets
//
// The revision record carries an epoch (schema.Revision.Epoch), new when the
// coordinator finds no record (a new cluster, a wiped prefix). A record of
// another epoch, or with a lower revision than the current one (an etcd
// snapshot restored), resets the history: the dispatcher forgets the
// revisions its plugins handled and delivers the new rounds (no second join
// resync).
//
// # Rejoin after a lost session
//
// When the agent's registry re-creates a lost session (State().Generation
// grows past 1), the agent may have missed rounds while it was cut off. The
// Watcher does not repeat events locally (that would break "at most one
// Started per plugin per revision"); it writes a request with cause "rejoin"
// and the agent's scope, so that the coordinator runs a new round for it, and
// it writes again, on the new lease, the acks its plugins gave for the
// current revision.
//
// # Writes
//
// Acks (acks/<agent>/<plugin>, on the agent's lease) and requests (the
// agent's own requests/agent/<agent>/<id>, no lease) are written by one
// background goroutine, retried with a growing pause until written or the
// Watcher is closed. Every such Txn is fenced by the agent name's owner key
// being on the agent's lease: nothing is written while the agent has no
// lease, and what is queued when another process takes the name over is
// dropped (logged, Stats.WritesDropped), never written after the takeover. Ack, AckError and Request never wait for etcd: a
// plugin's "acked" (invariant 4: the next plugin gets Started only after
// this one acked or timed out) is its local Ack, so the next plugin never
// waits for the etcd write.
//
// Writes are batched: what is queued goes to etcd in one Txn (at most 128
// operations, etcd's default limit) once the oldest item is
// Config.AckBatchWindow old (default 2 ms), or at once when no other plugin
// of the agent is expected to ack the current revision (so the window never
// delays an agent's last ack of a round). An agent whose plugins ack within
// the window writes all their acks, and any pending request, in one Txn:
// one etcd revision, in the order given. A write etcd refuses for good
// (permission denied, too large for etcd or for a gRPC message limit) is
// dropped, logged with its key and counted (Stats.WritesDropped), never
// retried for ever; "too many requests" and NOSPACE pass, and are retried.
//
// An agent may request a resync only of itself (its agent or one of its
// plugins; see schema.Request.AllowedFor); Request refuses a wider scope.
package watcher
