package watcher

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/sirupsen/logrus"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/resyncd/resync/internal/etcdspace"
	"github.com/resyncd/resync/schema"
)

// enqueueAck queues a plugin's ack to be written; a newer ack of the same
// plugin replaces one not yet written.
func (w *Watcher) enqueueAck(plugin string, ack schema.Ack) {
	w.omu.Lock()
	w.seq++
	w.pendingAcks[plugin] = pendingAck{ack: ack, seq: w.seq}
	w.lastAcks[plugin] = ack
	w.omu.Unlock()
	w.poke(w.outKick)
}

// outbox writes queued acks (on the current lease) and requests, retrying
// while etcd is unreachable, and reacts to a re-created session (rejoin).
func (w *Watcher) outbox() {
	var seenGen uint64
	pause := w.cfg.RetryMin
	for w.ctx.Err() == nil {
		changed := w.reg.Changed()
		select {
		case <-w.reg.Done():
			changed = nil // closed for good: do not spin on it
		default:
		}
		st := w.reg.State()
		if st.Generation > seenGen {
			if st.Generation > 1 {
				w.rejoin(st.Generation)
			}
			seenGen = st.Generation
		}
		err := w.flush(st.Lease)
		var retry <-chan time.Time
		if err != nil {
			if w.ctx.Err() != nil {
				return
			}
			w.log.WithError(etcdspace.Explain(err)).WithField("retry_in", pause).Warn("watcher: writing acks or requests failed; retrying")
			retry = time.After(pause)
			pause = min(2*pause, w.cfg.RetryMax)
		} else {
			pause = w.cfg.RetryMin
		}
		select {
		case <-w.ctx.Done():
		case <-w.outKick:
		case <-changed:
		case <-retry:
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
				w.pendingAcks[plugin] = pendingAck{ack: ack, seq: w.seq}
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

// flush writes every queued ack (when there is a lease) and request, and
// returns the first error.
func (w *Watcher) flush(lease clientv3.LeaseID) error {
	w.omu.Lock()
	type item struct {
		plugin string
		p      pendingAck
	}
	var acks []item
	for plugin, p := range w.pendingAcks {
		acks = append(acks, item{plugin, p})
	}
	reqs := slices.Clone(w.pendingReqs)
	w.omu.Unlock()
	slices.SortFunc(acks, func(a, b item) int { return cmp.Compare(a.p.seq, b.p.seq) })

	if lease != 0 {
		// One Txn per maxTxnOps acks instead of one Put each: an agent's
		// plugins ack one after another, and the acks that piled up while
		// the previous write was in flight go to etcd in one request (one
		// raft entry, one fsync), in the order they were given.
		for len(acks) > 0 {
			batch := acks[:min(len(acks), maxTxnOps)]
			acks = acks[len(batch):]
			ops := make([]clientv3.Op, 0, len(batch))
			sent := make([]item, 0, len(batch))
			for _, a := range batch {
				b, err := schema.Encode(a.p.ack)
				if err != nil {
					w.log.WithError(err).WithField("plugin", a.plugin).Error("watcher: dropping an invalid ack")
					w.dropAck(a.plugin, a.p.seq)
					continue
				}
				ops = append(ops, clientv3.OpPut(w.layout.Ack(w.agent, a.plugin), string(b), clientv3.WithLease(lease)))
				sent = append(sent, a)
			}
			if len(ops) == 0 {
				continue
			}
			if err := w.txn(ops); err != nil {
				return fmt.Errorf("watcher: write the acks of %d plugins (first %q): %w", len(ops), sent[0].plugin, err)
			}
			for _, a := range sent {
				w.dropAck(a.plugin, a.p.seq)
				w.stats.acksWritten.Add(1)
				w.log.WithFields(logrus.Fields{"plugin": a.plugin, "revision": a.p.ack.Revision, "result": a.p.ack.Result}).Debug("watcher: ack written")
			}
		}
	}
	for _, r := range reqs {
		b, err := schema.Encode(r.req)
		if err == nil {
			err = w.put(w.layout.Request(r.id), string(b))
		}
		if err != nil {
			return fmt.Errorf("watcher: write request %s: %w", r.id, err)
		}
		w.omu.Lock()
		w.pendingReqs = slices.DeleteFunc(w.pendingReqs, func(p pendingRequest) bool { return p.id == r.id })
		w.omu.Unlock()
		w.stats.requestsWritten.Add(1)
		w.log.WithFields(logrus.Fields{"request": r.id, "cause": r.req.Cause, "scope": r.req.Scope.String()}).Info("watcher: resync request written")
	}
	return nil
}

func (w *Watcher) dropAck(plugin string, seq uint64) {
	w.omu.Lock()
	if p, ok := w.pendingAcks[plugin]; ok && p.seq == seq {
		delete(w.pendingAcks, plugin)
	}
	w.omu.Unlock()
}

// maxTxnOps stays within etcd's default --max-txn-ops (128).
const maxTxnOps = 128

func (w *Watcher) txn(ops []clientv3.Op) error {
	ctx, cancel := context.WithTimeout(w.ctx, w.cfg.OpTimeout)
	defer cancel()
	_, err := w.c.Txn(ctx).Then(ops...).Commit()
	return err
}

func (w *Watcher) put(key, val string, opts ...clientv3.OpOption) error {
	ctx, cancel := context.WithTimeout(w.ctx, w.cfg.OpTimeout)
	defer cancel()
	_, err := w.c.Put(ctx, key, val, opts...)
	return err
}
