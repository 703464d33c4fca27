// Package etcdspace keeps etcd's database from filling: it reads the
// database size against its quota (Read), compacts an external cluster
// from the leading coordinator (Compactor) and looks after the embedded
// etcd (Monitor: usage metrics and warnings, defragmentation, and recovery
// from NOSPACE). What NOSPACE means and how it is worded is etcderr's
// (IsNoSpace, Explain).
//
// See docs/storage.md, "Storage and compaction", for the operator's view.
package etcdspace
