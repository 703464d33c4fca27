package coordinator

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/resyncd/resync/internal/backoff"
	"github.com/resyncd/resync/internal/etcderr"
	"github.com/resyncd/resync/internal/etcdspace"
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
// value to try when etcd refuses the full one for good.
type put struct {
	key     string
	val     []byte
	degrade func() []byte
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
			ops = append(ops, clientv3.OpPut(puts[n].key, string(puts[n].val)))
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

func (l *leader) writeOne(p put) (lost int, err error) {
	err = l.fencedTxn([]clientv3.Op{clientv3.OpPut(p.key, string(p.val))})
	if err == nil || !errors.Is(err, errPermanent) {
		return 0, err
	}
	if p.degrade != nil {
		small := p.degrade()
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
	if int64(size) > l.co.largestWrite.Load() {
		l.co.largestWrite.Store(int64(size))
		l.co.setStatus(func(s *Status) { s.LargestWrite = max(s.LargestWrite, size) })
	}
	bo := backoff.New(pauseMin, pauseMax)
	for {
		if l.co.faults.beforeWrite != nil {
			l.co.faults.beforeWrite()
		}
		ctx, cancel := context.WithTimeout(l.ctx, l.cfg.OpTimeout)
		txn := l.c.Txn(ctx)
		if !l.co.faults.unfenced {
			txn = txn.If(clientv3.Compare(clientv3.CreateRevision(l.key), "=", l.term))
		}
		resp, err := txn.Then(ops...).Commit()
		cancel()
		if err == nil {
			if !resp.Succeeded {
				return fmt.Errorf("%w: fenced write refused (leader key %s no longer has create revision %d)", ErrDeposed, l.key, l.term)
			}
			return nil
		}
		if l.ctx.Err() != nil {
			return l.ctx.Err()
		}
		if etcderr.Permanent(err) {
			first := ""
			if len(ops) > 0 {
				first = string(ops[0].KeyBytes())
			}
			l.log.WithError(err).WithField("ops", len(ops)).WithField("bytes", size).WithField("first_key", first).
				Warn("coordinator: etcd refused a write for good; not retrying it as is")
			return fmt.Errorf("%w: %d ops, %d bytes, first key %s: %v", errPermanent, len(ops), size, first, err)
		}
		pause := bo.Next()
		l.log.WithError(etcdspace.Explain(err)).WithField("retry_in", pause).Warn("coordinator: fenced write failed; retrying")
		if err := l.sleep(pause); err != nil {
			return err
		}
	}
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

// ReadRoundAgents reads round n's per-agent records (rounds/<N>/agents/),
// in pages of at most page keys, in agent name order. A malformed record is
// returned in bad and skipped. Readers (resyncctl, the checker, a
// successor resuming a round) use it; it never reads the whole prefix in
// one response.
func ReadRoundAgents(ctx context.Context, kv clientv3.KV, layout schema.Layout, n uint64, page int) (recs []schema.RoundAgent, bad []error, err error) {
	if page <= 0 {
		page = 100 // at most ~100 x 15 KB (10 plugins with 128-character names and 1 KiB errors)
	}
	prefix := layout.RoundAgents(n)
	end := clientv3.GetPrefixRangeEnd(prefix)
	from := prefix
	var rev int64
	for {
		opts := []clientv3.OpOption{clientv3.WithRange(end), clientv3.WithLimit(int64(page)),
			clientv3.WithSort(clientv3.SortByKey, clientv3.SortAscend)}
		if rev != 0 {
			opts = append(opts, clientv3.WithRev(rev))
		}
		resp, err := kv.Get(ctx, from, opts...)
		if err != nil {
			return nil, nil, fmt.Errorf("read %s: %w", prefix, err)
		}
		rev = resp.Header.Revision
		for _, item := range resp.Kvs {
			r, err := layout.DecodeRoundAgent(string(item.Key), item.Value)
			if err != nil {
				bad = append(bad, err)
				continue
			}
			recs = append(recs, r)
		}
		if !resp.More || len(resp.Kvs) == 0 {
			return recs, bad, nil
		}
		from = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	}
}

// ReadRoundScope reads round n's scope targets (rounds/<N>/scope/), in
// chunk order; none for an all-scope round.
func ReadRoundScope(ctx context.Context, kv clientv3.KV, layout schema.Layout, n uint64) (targets []string, bad []error, err error) {
	prefix := layout.RoundScopes(n)
	resp, err := kv.Get(ctx, prefix, clientv3.WithPrefix(), clientv3.WithSort(clientv3.SortByKey, clientv3.SortAscend))
	if err != nil {
		return nil, nil, fmt.Errorf("read %s: %w", prefix, err)
	}
	for _, item := range resp.Kvs {
		r, err := layout.DecodeRoundScope(string(item.Key), item.Value)
		if err != nil {
			bad = append(bad, err)
			continue
		}
		targets = append(targets, r.Targets...)
	}
	return targets, bad, nil
}

// RoundView is a round's summary with its participants and their outcomes
// from rounds/<N>/agents/: what a reader shows or checks. Lists are in
// agent and registration order. Outcome lists are empty while the round
// runs (the leader writes them when it completes).
type RoundView struct {
	schema.Round
	Participants []schema.PluginID `json:"participants"`
	Acked        []schema.PluginID `json:"acked,omitempty"`
	Failed       []schema.PluginID `json:"failed,omitempty"`
	TimedOut     []schema.PluginID `json:"timed_out,omitempty"`
	Departed     []schema.PluginID `json:"departed,omitempty"`
	// Errors maps "agent/plugin" of failed participants (escaped names, as
	// the participants' JSON: schema.PluginID.Key) to their error.
	Errors map[string]string `json:"errors,omitempty"`
}

// NewRoundView joins a summary and its per-agent records.
func NewRoundView(r schema.Round, agents []schema.RoundAgent) RoundView {
	v := RoundView{Round: r}
	ids := func(agent string, names []string) []schema.PluginID {
		out := make([]schema.PluginID, len(names))
		for i, n := range names {
			out[i] = schema.PluginID{Agent: agent, Plugin: n}
		}
		return out
	}
	for _, a := range agents {
		v.Participants = append(v.Participants, ids(a.Agent, a.Plugins)...)
		v.Acked = append(v.Acked, ids(a.Agent, a.Acked)...)
		v.Failed = append(v.Failed, ids(a.Agent, a.Failed)...)
		v.TimedOut = append(v.TimedOut, ids(a.Agent, a.TimedOut)...)
		v.Departed = append(v.Departed, ids(a.Agent, a.Departed)...)
		for p, e := range a.Errors {
			if v.Errors == nil {
				v.Errors = map[string]string{}
			}
			v.Errors[schema.PluginID{Agent: a.Agent, Plugin: p}.Key()] = e
		}
	}
	return v
}

// ReadRoundView reads round n's summary and per-agent records; ok is false
// when the summary is absent. A malformed summary or per-agent record is an
// error.
func ReadRoundView(ctx context.Context, kv clientv3.KV, layout schema.Layout, n uint64) (v RoundView, ok bool, err error) {
	resp, err := kv.Get(ctx, layout.Round(n))
	if err != nil || len(resp.Kvs) == 0 {
		return RoundView{}, false, err
	}
	r, err := layout.DecodeRound(string(resp.Kvs[0].Key), resp.Kvs[0].Value)
	if err != nil {
		return RoundView{}, false, err
	}
	recs, bad, err := ReadRoundAgents(ctx, kv, layout, n, 0)
	if err != nil {
		return RoundView{}, false, err
	}
	if len(bad) > 0 {
		return RoundView{}, false, bad[0]
	}
	return NewRoundView(r, recs), true, nil
}
