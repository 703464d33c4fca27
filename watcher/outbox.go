package watcher

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/sirupsen/logrus"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/resyncd/resync/internal/backoff"
	"github.com/resyncd/resync/internal/etcderr"
	"github.com/resyncd/resync/registry"
	"github.com/resyncd/resync/schema"
)

// enqueueAck queues a plugin's ack to be written; a newer ack of the same
// plugin replaces one not yet written.
func (w *Watcher) enqueueAck(plugin string, ack schema.Ack) {
	w.omu.Lock()
	w.seq++
	w.pendingAcks[plugin] = pendingAck{ack: ack, seq: w.seq, queued: time.Now()}
	w.lastAcks[plugin] = ack
	w.omu.Unlock()
	w.poke(w.outKick)
}

// maxAckBatchWindow bounds Config.AckBatchWindow.
const maxAckBatchWindow = time.Second

// outbox writes queued acks (on the current lease) and requests, retrying
// while etcd is unreachable, and reacts to a re-created session (rejoin).
//
// Batching: the dispatcher gives plugin k+1 its Started as soon as plugin k
// acked locally (Event.Ack queues the ack and returns; invariant 4's "acked"
// is that local ack), so the acks of an agent's plugins arrive here one
// after another, microseconds apart when the plugins ack at once. Woken by
// the first, the outbox waits until it is AckBatchWindow old or no other
// plugin is expected to ack (gather), then writes everything queued in one
// Txn: the coordinator sees them in one etcd revision, in the order they
// were given. Order across Txns holds too:
// one goroutine writes, oldest first.
func (w *Watcher) outbox() {
	var seenGen uint64
	bo := backoff.New(w.cfg.RetryMin, w.cfg.RetryMax)
	for w.ctx.Err() == nil {
		changed := w.reg.Changed()
		select {
		case <-w.reg.Done():
			changed = nil // closed for good: do not spin on it
		default:
		}
		st := w.reg.State()
		// A rejoin request goes out only once every registration is
		// written on the new session, so that the round it asks for finds
		// all of them.
		if st.Generation > seenGen && (st.Generation == 1 || st.Connected) {
			if st.Generation > 1 {
				w.rejoin(st.Generation)
			}
			seenGen = st.Generation
		}
		var err error
		// Acks and requests are fenced by the owner key (txn): until the
		// registry claimed the name on this session they wait, rather
		// than fail and log (a clean start would always warn once). A
		// displaced process flushes too: flush drops its queue.
		if st.Lease == 0 || st.Owned || errors.Is(w.reg.Err(), registry.ErrDisplaced) {
			err = w.flush(st.Lease)
		}
		var retry <-chan time.Time
		if err != nil {
			if w.ctx.Err() != nil {
				return
			}
			if errors.Is(err, errNotOwner) {
				// The registry may not know yet (an etcd restore its
				// owner watch missed): it compares with etcd.
				w.reg.Recheck()
			}
			pause := bo.Next()
			w.log.WithError(etcderr.Explain(err)).WithField("retry_in", pause).Warn("watcher: writing acks or requests failed; retrying")
			retry = w.clock.After(pause)
		} else {
			bo.Reset()
		}
		select {
		case <-w.ctx.Done():
		case <-w.outKick:
			if retry == nil {
				w.gather()
			}
		case <-changed:
			// A new lease or owner state: write what waits, but
			// still let the acks of an agent's round share one Txn
			// (the owner claim lands just after the first ack).
			if retry == nil {
				w.gather()
			}
		case <-retry:
		}
	}
}

// gather waits until the oldest queued ack or request is AckBatchWindow old,
// so that acks given meanwhile share its Txn. It returns at once when the
// window is off, when a full Txn is queued, when no other plugin of the
// agent is expected to ack the current revision (so the last ack of a
// round, and the only one of a one-plugin agent, is never held back), or
// when the Watcher closes.
func (w *Watcher) gather() {
	if w.cfg.AckBatchWindow <= 0 {
		return
	}
	var t *time.Timer
	for {
		w.omu.Lock()
		n := len(w.pendingAcks) + len(w.pendingReqs)
		var oldest time.Time
		for _, p := range w.pendingAcks {
			if oldest.IsZero() || p.queued.Before(oldest) {
				oldest = p.queued
			}
		}
		for _, r := range w.pendingReqs {
			if oldest.IsZero() || r.queued.Before(oldest) {
				oldest = r.queued
			}
		}
		w.omu.Unlock()
		wait := time.Until(oldest.Add(w.cfg.AckBatchWindow))
		if n == 0 || n >= schema.MaxTxnOps || wait <= 0 || !w.acksExpected() {
			return
		}
		// One timer for the whole gathering, reset per kick (each ack of
		// the agent's round kicks).
		if t == nil {
			t = time.NewTimer(wait)
			defer t.Stop()
		} else {
			t.Reset(wait)
		}
		select {
		case <-w.ctx.Done():
			return
		case <-t.C:
			return
		case <-w.outKick: // one more queued: a full Txn yet?
			t.Stop()
		}
	}
}

// rejoin handles a session re-created after a loss: the agent may have
// missed rounds, so ask the coordinator for a round of its own, and write
// again the acks given for the current revision (they vanished with the old
// lease).
func (w *Watcher) rejoin(gen uint64) {
	w.stats.rejoins.Add(1)
	cur := w.current()
	w.omu.Lock()
	var rewritten []string
	for plugin, ack := range w.lastAcks {
		if ack.Revision == cur {
			if _, pending := w.pendingAcks[plugin]; !pending {
				w.seq++
				w.pendingAcks[plugin] = pendingAck{ack: ack, seq: w.seq, queued: time.Now()}
			}
			rewritten = append(rewritten, plugin)
		}
	}
	w.omu.Unlock()
	slices.Sort(rewritten)
	req := schema.Request{
		Reason:      fmt.Sprintf("agent %s re-registered after losing its session", w.agent),
		Cause:       schema.CauseRejoin,
		Scope:       schema.Scope{Agent: w.agent},
		RequestedBy: w.agent,
	}
	id, err := w.Request(req)
	log := w.log.WithFields(logrus.Fields{"generation": gen, "revision": cur, "acks_rewritten": rewritten})
	if err != nil {
		log.WithError(err).Error("watcher: session re-created, but the rejoin request cannot be queued")
		return
	}
	log.WithField("request", id).Warn("watcher: session re-created after a loss; requesting a resync of this agent")
}

// acksExpected reports whether some plugin of the agent may still ack the
// current revision: it has given no ack yet (its join resync is to come),
// or the revision is Started, includes it, and it has not acked it. It is
// a hint that only paces writes (a wrong answer costs at most one window
// or one more Txn), so it reads the record and the plugins' last acks, not
// the dispatcher's own state.
func (w *Watcher) acksExpected() bool {
	w.mu.Lock()
	rec, part := w.rec, w.part
	names := make([]string, len(w.plugins))
	for i, p := range w.plugins {
		names[i] = p.name
	}
	w.mu.Unlock()
	if rec == nil {
		return false
	}
	w.omu.Lock()
	defer w.omu.Unlock()
	for _, name := range names {
		last, ok := w.lastAcks[name]
		switch {
		case !ok:
			return true
		case last.Revision >= rec.Revision:
		case rec.State == schema.Started && (rec.Scope.IsAll() || part[name]):
			return true
		}
	}
	return false
}

// outItem is one queued write: an ack (plugin set) or a request.
type outItem struct {
	plugin string
	ack    pendingAck
	req    pendingRequest
}

func (it outItem) String() string {
	if it.plugin != "" {
		return "the ack of " + it.plugin
	}
	return "request " + it.req.id
}

// op is the item's etcd write; an item that does not encode is an error.
func (w *Watcher) op(it outItem, lease clientv3.LeaseID) (clientv3.Op, error) {
	if it.plugin != "" {
		b, err := schema.Encode(it.ack.ack)
		if err != nil {
			return clientv3.Op{}, err
		}
		return clientv3.OpPut(w.layout.Ack(w.agent, it.plugin), string(b), clientv3.WithLease(lease)), nil
	}
	b, err := schema.Encode(it.req.req)
	if err != nil {
		return clientv3.Op{}, err
	}
	return clientv3.OpPut(w.layout.AgentRequest(w.agent, it.req.id), string(b)), nil
}

// flush writes every queued ack and request: acks in the order given, then
// requests, in Txns of at most schema.MaxTxnOps operations (one raft entry,
// one fsync, one etcd revision each), each fenced by the agent name's owner
// key being on lease. Without a lease nothing is written: a process between
// sessions may have been displaced meanwhile, and finds out only with its
// next claim (issue 24 point 5: its queued ReportError went out unfenced
// after the takeover). A displaced process writes nothing more: what is
// queued is dropped. It returns the first error that a retry may cure.
func (w *Watcher) flush(lease clientv3.LeaseID) error {
	if err := w.reg.Err(); errors.Is(err, registry.ErrDisplaced) {
		w.dropAll(err)
		return nil
	}
	if lease == 0 {
		return nil // the session's return (reg.Changed) wakes the outbox
	}
	w.omu.Lock()
	items := w.outItems[:0]
	for plugin, p := range w.pendingAcks {
		items = append(items, outItem{plugin: plugin, ack: p})
	}
	slices.SortFunc(items, func(a, b outItem) int { return cmp.Compare(a.ack.seq, b.ack.seq) })
	for _, r := range w.pendingReqs {
		items = append(items, outItem{req: r})
	}
	w.omu.Unlock()
	w.outItems = items
	defer clear(items) // keep no acks alive until the next flush
	for len(items) > 0 {
		batch := items[:min(len(items), schema.MaxTxnOps)]
		items = items[len(batch):]
		if err := w.write(batch, lease); err != nil {
			return err
		}
	}
	return nil
}

// write writes batch in one Txn. If etcd refuses it for good (see
// etcderr.Permanent), the items are written one by one, so that one refused item
// (say, a request the agent's etcd role does not allow) neither blocks the
// others nor is retried for ever: it is dropped, logged and counted.
func (w *Watcher) write(batch []outItem, lease clientv3.LeaseID) error {
	ops, sent := w.outOps[:0], w.outSent[:0]
	for _, it := range batch {
		op, err := w.op(it, lease)
		if err != nil {
			w.drop(it, err)
			continue
		}
		ops = append(ops, op)
		sent = append(sent, it)
	}
	w.outOps, w.outSent = ops, sent
	defer clear(ops)
	defer clear(sent)
	if len(ops) == 0 {
		return nil
	}
	err := w.txn(ops, lease)
	switch {
	case err == nil:
		for _, it := range sent {
			w.written(it)
		}
		return nil
	case !etcderr.Permanent(err):
		return fmt.Errorf("watcher: write %d acks and requests (first %s): %w", len(ops), sent[0], err)
	case len(ops) == 1:
		w.drop(sent[0], err)
		return nil
	}
	// The one-by-one writes reuse the scratch slices: go through a copy.
	for i, it := range slices.Clone(sent) {
		if err := w.write([]outItem{it}, lease); err != nil {
			return fmt.Errorf("%w (%d more waiting)", err, len(sent)-i-1)
		}
	}
	return nil
}

// written takes a written item off the queue (unless it was replaced
// meanwhile).
func (w *Watcher) written(it outItem) {
	if it.plugin != "" {
		w.dropAck(it.plugin, it.ack.seq)
		w.stats.acksWritten.Add(1)
		if !w.debug() {
			return
		}
		w.log.WithFields(logrus.Fields{"plugin": it.plugin, "revision": it.ack.ack.Revision, "result": it.ack.ack.Result}).Debug("watcher: ack written")
		return
	}
	w.dropRequest(it.req.id)
	w.stats.requestsWritten.Add(1)
	w.log.WithFields(logrus.Fields{"request": it.req.id, "cause": it.req.req.Cause, "scope": it.req.req.Scope.String()}).Info("watcher: resync request written")
}

// drop takes an item etcd will never accept off the queue.
func (w *Watcher) drop(it outItem, err error) {
	w.stats.writesDropped.Add(1)
	log := w.log.WithError(err)
	if it.plugin != "" {
		w.dropAck(it.plugin, it.ack.seq)
		log = log.WithFields(logrus.Fields{"key": w.layout.Ack(w.agent, it.plugin), "revision": it.ack.ack.Revision})
	} else {
		w.dropRequest(it.req.id)
		log = log.WithField("key", w.layout.AgentRequest(w.agent, it.req.id))
	}
	// The error says why: most likely a denial (an agent's etcd role older
	// than its resync version), else a size limit.
	log.Error("watcher: etcd refuses this write for good; dropped (if permission denied: is the agent's etcd role up to date? run resyncctl rbac apply)")
}

// dropAll drops every queued ack and request of a displaced process
// (err says who owns the name now): they would be refused by the owner
// fence for ever.
func (w *Watcher) dropAll(err error) {
	w.omu.Lock()
	acks, reqs := len(w.pendingAcks), len(w.pendingReqs)
	ids := make([]string, 0, reqs)
	for _, r := range w.pendingReqs {
		ids = append(ids, r.id)
	}
	clear(w.pendingAcks)
	w.pendingReqs = nil
	w.omu.Unlock()
	if acks+reqs == 0 {
		return
	}
	w.stats.writesDropped.Add(uint64(acks + reqs))
	w.log.WithError(err).WithFields(logrus.Fields{"acks": acks, "requests": ids}).
		Error("watcher: another process owns this agent name; the acks and requests still queued are dropped (one process per agent name)")
}

func (w *Watcher) dropAck(plugin string, seq uint64) {
	w.omu.Lock()
	if p, ok := w.pendingAcks[plugin]; ok && p.seq == seq {
		delete(w.pendingAcks, plugin)
	}
	w.omu.Unlock()
}

func (w *Watcher) dropRequest(id string) {
	w.omu.Lock()
	w.pendingReqs = slices.DeleteFunc(w.pendingReqs, func(p pendingRequest) bool { return p.id == id })
	w.omu.Unlock()
}

func (w *Watcher) txn(ops []clientv3.Op, lease clientv3.LeaseID) error {
	ctx, cancel := context.WithTimeout(w.ctx, w.cfg.OpTimeout)
	defer cancel()
	// Acks and requests are fenced by the agent name's owner key, as
	// registrations are (registry/session.go): a process displaced by a
	// newer one with the same name writes no ack in the second before it
	// notices, not even of a round it took part in, and no request.
	resp, err := w.c.Txn(ctx).If(clientv3.Compare(clientv3.LeaseValue(w.layout.Owner(w.agent)), "=", int64(lease))).
		Then(ops...).Commit()
	if err != nil {
		return err
	}
	if !resp.Succeeded {
		return errNotOwner
	}
	w.stats.ackTxns.Add(1)
	return nil
}

// errNotOwner: the agent name's owner key is not on this session's lease.
// The process was displaced (the registry notices and stops: flush then
// drops what is queued) or is claiming the name (a wiped prefix, a new
// session, a first request): the acks and requests stay queued and are
// retried.
var errNotOwner = errors.New("the agent name's owner key is not on this session's lease (displaced, or claiming the name again)")
