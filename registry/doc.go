// Package registry keeps an agent's plugin registrations in etcd.
//
// A Registry owns one etcd session (a lease kept alive) and
// writes registrations/<agent>/<plugin> on it, with each plugin's
// registration order. When the agent dies its lease expires and its keys
// vanish; nobody waits for a dead agent. When the session is lost while the
// agent lives (its lease expired during a partition), the Registry creates a
// new session, writes every registration again in the original order, and
// signals its owner through Changed so that a join resync can follow.
//
// One process per agent name: the Registry that owns the name holds
// owners/<agent> on its lease; a newer one (in etcd's order, never by a
// host's clock) takes it over at once and the older one stops (Displaced,
// Err wrapping ErrDisplaced); an owner key that an etcd restore brought
// back never makes a live owner give up. See owner.go.
//
// The package is the writer's side only. Readers (the coordinator, which
// follows registrations and acks in one watch, and resyncctl) decode each
// record with schema's Layout.DecodeRegistration, which checks that the key
// and the value name the same plugin.
package registry
