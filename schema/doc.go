// Package schema is the shared vocabulary of resync: the etcd key layout under
// a configurable prefix, the JSON records stored under those keys, the resync
// Status values, and the validation of agent and plugin names.
//
// It is a leaf package: it imports nothing from etcd or from the rest of the
// module, so the registry, the watcher, the coordinator and the binaries can
// all depend on it without import cycles.
//
// Every decoder here is strict (unknown fields, trailing data, missing or
// out-of-range fields are errors), bounded (values larger than the limit of
// their key family are rejected before they are parsed) and total: it returns
// a *DecodeError naming the key and what is wrong, and never panics on any
// input. Callers log such errors with the key and skip the record; nothing
// else is lost.
package schema
