// Package etcderr says what etcd's errors mean: which are permanent
// (Permanent, the one rule used by every loop that must choose between
// retrying an etcd write and giving up on it: the coordinator's fenced
// writes, the watcher's acks and requests, resyncctl's reads), which is
// NOSPACE (IsNoSpace), and how NOSPACE is explained to whoever reads the
// error (Hint, Explain: used by the coordinator, the agents' writers and
// resyncctl), and reads again what a compaction cut between two reads at
// one revision (ReadAgainIfCompacted).
//
// A permanent error is one etcd (or the gRPC client in front of it) returns
// again for the same request however often it is sent: the request is larger
// than etcd's --max-request-bytes or than a gRPC message limit, a Txn has more
// operations than --max-txn-ops or names a key twice, or the user's role does
// not permit it. Retrying it only fills the log; the writer gives up on that
// request (the coordinator writes a degraded record, the watcher drops the
// item) and says so.
//
// Everything else is transient and retried with backoff: a timeout, an
// unreachable or leaderless cluster, and two errors that share gRPC's
// ResourceExhausted code with "message larger than max" but pass by
// themselves: "too many requests" (etcd's apply backlog is full; it drains)
// and NOSPACE (a quota alarm: resyncd clears it by itself for its embedded
// etcd, an operator for an external one, and writes then succeed again).
package etcderr

import (
	"errors"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Permanent reports whether err, however wrapped, is an etcd error that
// cannot succeed on retry (see the package doc): etcd's request size or Txn
// operation limits, a Txn that names a key twice, a permission denial, each
// in the client's (rpctypes.ErrRequestTooLarge) and the server's
// (rpctypes.ErrGRPCRequestTooLarge) form, and any other gRPC status with
// code ResourceExhausted (a gRPC message size limit, the client's or the
// server's) or PermissionDenied, except etcd's "too many requests" and
// NOSPACE. Permanent(nil) is false.
func Permanent(err error) bool {
	if err == nil {
		return false
	}
	// Checked first: they carry ResourceExhausted, as a message too large
	// for gRPC does, but they pass.
	if errors.Is(err, rpctypes.ErrTooManyRequests) || errors.Is(err, rpctypes.ErrGRPCRequestTooManyRequests) ||
		IsNoSpace(err) {
		return false
	}
	for _, perm := range []error{
		rpctypes.ErrRequestTooLarge, rpctypes.ErrGRPCRequestTooLarge,
		rpctypes.ErrTooManyOps, rpctypes.ErrGRPCTooManyOps,
		rpctypes.ErrDuplicateKey, rpctypes.ErrGRPCDuplicateKey,
		rpctypes.ErrPermissionDenied, rpctypes.ErrGRPCPermissionDenied,
	} {
		if errors.Is(err, perm) {
			return true
		}
	}
	switch status.Code(err) {
	case codes.ResourceExhausted, codes.PermissionDenied:
		return true
	}
	return false
}
