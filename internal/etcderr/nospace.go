package etcderr

import (
	"errors"
	"strings"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
)

// Hint says what NOSPACE means and what to do. It is appended to every
// NOSPACE error resync's components report.
const Hint = "etcd's database is full (NOSPACE alarm: the backend reached its quota, --quota-backend-bytes) " +
	"and etcd refuses every write until space is freed: compact old revisions (etcdctl compact <revision>), " +
	"defragment (etcdctl defrag), then clear the alarm (etcdctl alarm disarm); " +
	"resyncd does all three by itself for its embedded etcd (unless its /status reports space_exhausted: then see its warning), " +
	"and work resumes by itself once the alarm is cleared (docs/storage.md)"

// IsNoSpace reports whether err is etcd's "database space exceeded"
// (rpctypes.ErrGRPCNoSpace on the server side, rpctypes.ErrNoSpace in the
// client), however wrapped.
func IsNoSpace(err error) bool {
	if err == nil {
		return false
	}
	if errors.Is(err, rpctypes.ErrNoSpace) || errors.Is(err, rpctypes.ErrGRPCNoSpace) {
		return true
	}
	// gRPC status errors and errors that crossed a process boundary as
	// text: match etcd's message.
	return strings.Contains(err.Error(), rpctypes.ErrNoSpace.Error())
}

// NoSpaceError is a NOSPACE error with Hint appended.
type NoSpaceError struct{ Err error }

func (e *NoSpaceError) Error() string { return e.Err.Error() + ": " + Hint }
func (e *NoSpaceError) Unwrap() error { return e.Err }

// Explain returns err with Hint appended when err is NOSPACE, else err
// unchanged (nil stays nil). Explaining twice adds the hint once.
func Explain(err error) error {
	var ns *NoSpaceError
	if !IsNoSpace(err) || errors.As(err, &ns) {
		return err
	}
	return &NoSpaceError{Err: err}
}
