package coordinator

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/resyncd/resync/internal/backoff"
	"github.com/resyncd/resync/internal/etcderr"
	"github.com/resyncd/resync/schema"
)

// errPermanent wraps an etcd error that retrying cannot fix
// (etcderr.Permanent): the request is too large, has too many operations,
// or is not permitted.
var errPermanent = errors.New("etcd refuses this write for good")

// Pauses between attempts while etcd fails (internal/backoff doubles them
// from the minimum to the maximum, and starts again after a success).
const (
	// retryMin is the first pause after a failed etcd call of the campaign
	// or of the leader's reads: most failures are brief (a leader change
	// in etcd, a dropped connection), so the first retry comes soon.
	retryMin = 100 * time.Millisecond
	// retryMax caps the pause of the leader's reads (the revision at the
	// start of a term, a retried round's participants): the leader makes
	// no progress meanwhile, so it must notice soon that etcd is back.
	retryMax = 2 * time.Second
	// pauseMin and pauseMax pace a failing fenced write: half the read
	// pauses, as a write holds up a round (its start, its completion).
	pauseMin = 50 * time.Millisecond
	pauseMax = time.Second
)

// opOverhead approximates the bytes etcd's request encoding adds per
// operation beyond its key and value.
const opOverhead = 16

// put is one key the leader writes; degrade, when set, returns a smaller
// value to try when etcd refuses the full one for good. lease, when set,
// attaches the key to that lease (an agent's wake key).
type put struct {
	key     string
	val     []byte
	degrade func() []byte
	lease   clientv3.LeaseID
}

// op is the put as an etcd operation.
func (p put) op() clientv3.Op {
	if p.lease != 0 {
		return clientv3.OpPut(p.key, string(p.val), clientv3.WithLease(p.lease))
	}
	return clientv3.OpPut(p.key, string(p.val))
}

func (p put) size() int { return len(p.key) + len(p.val) + opOverhead }

func putsSize(puts []put) int {
	n := 0
	for _, p := range puts {
		n += p.size()
	}
	return n
}

func opsSize(ops []clientv3.Op) int {
	n := 0
	for _, op := range ops {
		n += len(op.KeyBytes()) + len(op.ValueBytes()) + len(op.RangeBytes()) + opOverhead
	}
	return n
}

// parallelWrites is how many of writePuts' Txns are in flight at once:
// etcd commits concurrent Txns in shared raft entries and fsyncs, so a
// round's per-agent records (agents/128 Txns) cost a fraction of the
// round trips they cost one after another.
const parallelWrites = 4

// writePuts writes puts (after the ops in first, which go in the first
// Txn) in fenced Txns of at most schema.MaxTxnOps operations and WriteBudget
// bytes, up to parallelWrites at once (the keys are distinct, so their
// order does not matter). A batch etcd refuses for good is split into
// single puts; a single put refused for good is retried with its degraded
// value, and otherwise logged with its key and size and skipped. It
// returns how many puts were degraded or skipped; an error only when
// leadership ended.
func (l *leader) writePuts(first []clientv3.Op, puts []put) (lost int, err error) {
	type txnBatch struct {
		ops   []clientv3.Op
		first int // ops from first
		puts  []put
	}
	budget := l.cfg.WriteBudget
	var batches []txnBatch
	for len(first) > 0 || len(puts) > 0 {
		ops := first
		size := opsSize(first)
		first = nil
		n := 0
		for n < len(puts) && len(ops) < schema.MaxTxnOps && (n == 0 && len(ops) == 0 || size+puts[n].size() <= budget) {
			ops = append(ops, puts[n].op())
			size += puts[n].size()
			n++
		}
		batches = append(batches, txnBatch{ops: ops, first: len(ops) - n, puts: puts[:n]})
		puts = puts[n:]
	}
	for len(batches) > 0 {
		wave := batches[:min(len(batches), parallelWrites)]
		batches = batches[len(wave):]
		errs := make([]error, len(wave))
		var wg sync.WaitGroup
		for i, b := range wave {
			wg.Add(1)
			go func() {
				defer wg.Done()
				errs[i] = l.fencedTxn(b.ops)
				if errs[i] != nil && !errors.Is(errs[i], errPermanent) {
					// Leadership ended; fencedTxn may have taken the
					// reason from deposedC: pass it on to the others.
					l.deposed(errs[i].Error())
				}
			}()
		}
		wg.Wait()
		for i, b := range wave {
			if errs[i] == nil {
				continue
			}
			if !errors.Is(errs[i], errPermanent) {
				return lost, errs[i]
			}
			// One by one, degraded when refused.
			if b.first > 0 {
				if err := l.fencedTxn(b.ops[:b.first]); err != nil && !errors.Is(err, errPermanent) {
					return lost, err
				}
			}
			for _, p := range b.puts {
				l2, err := l.writeOne(p)
				lost += l2
				if err != nil {
					return lost, err
				}
			}
		}
	}
	return lost, nil
}

// degraded is p's smaller value, nil when it has none.
func degraded(p put) []byte {
	if p.degrade == nil {
		return nil
	}
	return p.degrade()
}

func (l *leader) writeOne(p put) (lost int, err error) {
	err = l.fencedTxn([]clientv3.Op{p.op()})
	if err == nil || !errors.Is(err, errPermanent) {
		return 0, err
	}
	if small := degraded(p); small != nil {
		l.log.WithError(err).WithField("key", p.key).WithField("bytes", len(p.val)).WithField("degraded_bytes", len(small)).
			Error("coordinator: etcd refuses this record for good; writing it without its error texts (marked truncated)")
		err = l.fencedTxn([]clientv3.Op{clientv3.OpPut(p.key, string(small))})
		if err == nil || !errors.Is(err, errPermanent) {
			return 1, err
		}
	}
	l.log.WithError(err).WithField("key", p.key).WithField("bytes", len(p.val)).
		Error("coordinator: etcd refuses this record for good even degraded; skipping it (the round summary is marked truncated)")
	return 1, nil
}

// fencedTxn applies ops only while our leader key still has our create
// revision. A refused guard means deposed (no retry); an error that cannot
// succeed on retry is returned wrapped in errPermanent, logged with the
// request's size; any other etcd error is retried (the ops are idempotent)
// until leadership is lost.
func (l *leader) fencedTxn(ops []clientv3.Op) error {
	size := opsSize(ops)
	// A CAS loop: a wave step's Txns are written concurrently.
	for old := l.co.largestWrite.Load(); int64(size) > old; old = l.co.largestWrite.Load() {
		if l.co.largestWrite.CompareAndSwap(old, int64(size)) {
			l.co.setStatus(func(s *Status) { s.LargestWrite = max(s.LargestWrite, size) })
			break
		}
	}
	first := ""
	if len(ops) > 0 {
		first = string(ops[0].KeyBytes())
	}
	// Each attempt runs on the term's context, not on ended: a write sent
	// before the leader learns its term ended goes out as before, and the
	// fence alone decides (what a paused leader's write tests).
	return l.retry(backoff.New(pauseMin, pauseMax), func(context.Context) error {
		if l.co.faults.beforeWrite != nil {
			l.co.faults.beforeWrite()
		}
		ctx, cancel := context.WithTimeout(l.ctx, l.cfg.OpTimeout)
		defer cancel()
		txn := l.c.Txn(ctx)
		if !l.co.faults.unfenced {
			txn = txn.If(clientv3.Compare(clientv3.CreateRevision(l.key), "=", l.term))
		}
		resp, err := txn.Then(ops...).Commit()
		switch {
		case err == nil && !resp.Succeeded:
			return backoff.Permanent(fmt.Errorf("%w: fenced write refused (leader key %s no longer has create revision %d)", ErrDeposed, l.key, l.term))
		case err == nil:
			return nil
		case errors.Is(err, rpctypes.ErrLeaseNotFound) || errors.Is(err, rpctypes.ErrGRPCLeaseNotFound):
			return backoff.Permanent(fmt.Errorf("%w: %d ops, first key %s: %v", errLeaseGone, len(ops), first, err))
		case etcderr.Permanent(err):
			l.log.WithError(err).WithField("ops", len(ops)).WithField("bytes", size).WithField("first_key", first).
				Warn("coordinator: etcd refused a write for good; not retrying it as is")
			return backoff.Permanent(fmt.Errorf("%w: %d ops, %d bytes, first key %s: %v", errPermanent, len(ops), size, first, err))
		}
		return err
	}, func(err error, pause time.Duration) {
		l.log.WithError(etcderr.Explain(err)).WithField("retry_in", pause).Warn("coordinator: fenced write failed; retrying")
	})
}

// fencedDelete deletes keys in fenced batches.
func (l *leader) fencedDelete(keys []string) error {
	for len(keys) > 0 {
		n := min(len(keys), schema.MaxTxnOps)
		ops := make([]clientv3.Op, n)
		for i, k := range keys[:n] {
			ops[i] = clientv3.OpDelete(k)
		}
		if err := l.fencedTxn(ops); err != nil {
			return err
		}
		keys = keys[n:]
	}
	return nil
}
