package main

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/resyncd/resync/internal/backoff"
	"github.com/resyncd/resync/internal/etcderr"
)

// Pacing of resyncctl's retries of a transient etcd error, within the
// command's --command-timeout: the first soon enough to ride out an etcd
// leader election (a few hundred milliseconds), then doubling.
const (
	retryMin = 100 * time.Millisecond
	retryMax = 2 * time.Second
)

// retryable reports whether err is worth another attempt within ctx (the
// command's budget). What is permanent is etcderr.Permanent's one rule
// (request too large, too many operations, permission denied). Not retried
// either: an ended ctx; etcd's two answers about the revision asked for
// (compacted, future revision), which are answers, not failures; and
// NOSPACE, which passes only when its alarm is cleared (by resyncd within
// its 30 s check, or by an operator), longer than a command's budget: the
// operator gets its explanation at once. The rest passes by itself and is
// retried: a leader change, "request timed out" (also "possibly due to
// previous leader failure"), no leader, an unreachable member (gRPC
// Unavailable), "too many requests".
func retryable(ctx context.Context, err error) bool {
	switch {
	case err == nil, ctx.Err() != nil, etcderr.Permanent(err), etcderr.IsNoSpace(err):
		return false
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return false
	case errors.Is(err, rpctypes.ErrCompacted), errors.Is(err, rpctypes.ErrFutureRev):
		return false
	}
	switch status.Code(err) {
	case codes.Canceled, codes.DeadlineExceeded:
		return false
	}
	return true
}

// retrier retries an etcd call while its error is retryable and its ctx
// lasts, pausing with the module's backoff; note (optional) hears of each
// retry.
type retrier struct {
	note func(err error, pause time.Duration)
}

// do runs call until it succeeds, fails for good, or ctx ends. When ctx
// ends during a pause, the last etcd error is returned, saying that it was
// retried.
func (r retrier) do(ctx context.Context, call func() error) error {
	err := backoff.Retry(ctx, nil, backoff.New(retryMin, retryMax), func(ctx context.Context) error {
		err := call()
		if err != nil && !retryable(ctx, err) {
			return backoff.Permanent(err) // an ended ctx too: its error is the call's
		}
		return err
	}, r.note)
	if se, ok := err.(*backoff.StoppedError); ok {
		return &retriedError{err: se.Last, tries: se.Tries}
	}
	return err
}

// retriedError is a transient error that lasted the whole command budget.
type retriedError struct {
	err   error
	tries int
}

func (e *retriedError) Error() string {
	return fmt.Sprintf("%v (still failing after %d attempts within --command-timeout: check etcd's members and leader with etcdctl endpoint status, or raise --command-timeout to wait longer)", e.err, e.tries)
}
func (e *retriedError) Unwrap() error { return e.err }

// retryKV is the etcd client's KV with its reads retried (retrier): Get,
// a Do of a Get, and a Txn whose operations are all Gets. Writes pass
// through: retrying one is safe only when the write says how (trigger's
// request write does).
type retryKV struct {
	clientv3.KV
	r retrier
}

func (k *retryKV) Get(ctx context.Context, key string, opts ...clientv3.OpOption) (*clientv3.GetResponse, error) {
	var resp *clientv3.GetResponse
	err := k.r.do(ctx, func() (err error) {
		resp, err = k.KV.Get(ctx, key, opts...)
		return err
	})
	return resp, err
}

func (k *retryKV) Do(ctx context.Context, op clientv3.Op) (clientv3.OpResponse, error) {
	if !op.IsGet() {
		return k.KV.Do(ctx, op)
	}
	var resp clientv3.OpResponse
	err := k.r.do(ctx, func() (err error) {
		resp, err = k.KV.Do(ctx, op)
		return err
	})
	return resp, err
}

func (k *retryKV) Txn(ctx context.Context) clientv3.Txn { return &retryTxn{kv: k, ctx: ctx} }

// retryTxn collects a Txn and commits it on the wrapped KV: once if it
// writes, with retries if it only reads.
type retryTxn struct {
	kv          *retryKV
	ctx         context.Context
	cmps        []clientv3.Cmp
	thens, elss []clientv3.Op
}

func (t *retryTxn) If(cs ...clientv3.Cmp) clientv3.Txn { t.cmps = append(t.cmps, cs...); return t }
func (t *retryTxn) Then(ops ...clientv3.Op) clientv3.Txn {
	t.thens = append(t.thens, ops...)
	return t
}
func (t *retryTxn) Else(ops ...clientv3.Op) clientv3.Txn { t.elss = append(t.elss, ops...); return t }

func (t *retryTxn) Commit() (*clientv3.TxnResponse, error) {
	commit := func() (*clientv3.TxnResponse, error) {
		return t.kv.KV.Txn(t.ctx).If(t.cmps...).Then(t.thens...).Else(t.elss...).Commit()
	}
	for _, op := range append(t.thens[:len(t.thens):len(t.thens)], t.elss...) {
		if !op.IsGet() {
			return commit()
		}
	}
	var resp *clientv3.TxnResponse
	err := t.kv.r.do(t.ctx, func() (err error) {
		resp, err = commit()
		return err
	})
	return resp, err
}

// setClient makes c the command's client, its reads retried within each
// call's ctx (retryKV), each retry noted on stderr.
func (e *env) setClient(c *clientv3.Client) {
	c.KV = &retryKV{KV: c.KV, r: e.retrier()}
	e.client = c
}

// retrier is the command's retrier: it notes each retry on stderr (and to
// e.retried, tests' hook).
func (e *env) retrier() retrier {
	return retrier{note: func(err error, pause time.Duration) {
		e.warn("etcd: %s; retrying in %v (within --command-timeout %v)", oneLine(err.Error()), pause, e.etcd.CommandTimeout)
		if e.retried != nil {
			e.retried(err)
		}
	}}
}
