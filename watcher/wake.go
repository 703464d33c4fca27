package watcher

import (
	"context"
	"errors"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/resyncd/resync/internal/backoff"
	"github.com/resyncd/resync/internal/listwatch"
	"github.com/resyncd/resync/schema"
)

// An agent does not watch the revision record, which a whole fleet would
// then watch (one write of it would notify every agent under etcd's store
// lock); it watches two copies the leader writes (coordinator/wake.go):
// its wake shard, which every all-scope round's record reaches, and its
// own wake key, which only the set-scope rounds it takes part in reach.
// The newer of the two, by etcd mod revision (the leader writes them in
// order, and etcd's revisions only grow, across restores too), is the
// current record.
//
// Legacy mode: when the prefix holds a revision record but no wake shard
// (the coordinators are older than wake keys: upgrade resyncd first), or
// when this agent may not read its wake keys (the RBAC roles predate
// them: run resyncctl rbac apply again), the watcher follows the revision
// key itself, as before, until it closes.

// wakeSource is what one of the two wake keys last held.
type wakeSource struct {
	rec *schema.Revision // nil: no valid record seen
	mod int64            // its etcd mod revision
}

// watch follows this agent's wake keys, or the revision key in legacy
// mode.
func (w *Watcher) watch() {
	legacy, ok := w.legacyMode()
	if !ok {
		return // closing
	}
	if legacy {
		w.watchRevision()
		return
	}
	var (
		src [2]wakeSource
		cur int64 // mod revision of the record handed on
	)
	keys := [2]string{w.layout.WakeShard(schema.WakeShardOf(w.agent)), w.layout.WakeAgent(w.agent)}
	handle := func(i int, ev listwatch.Event) error {
		w.wmu.Lock()
		defer w.wmu.Unlock()
		if ev.Reset {
			// The state at a new listing is the truth, older or not (an
			// etcd restore lowers it: setRecord sees the reset), except
			// a key found absent: it went with the agent's session lease
			// (the own key does, by design) and its last record stays,
			// as after a delete. Forgetting it made the other key's older
			// record look like a history reset after every lost session,
			// and the round then running was delivered again (chaos seed
			// 20261216). A listing below the mod revision kept is a
			// history that went back (a restore without
			// --bump-revision): then nothing is kept.
			if len(ev.Kvs) > 0 || ev.Revision < src[i].mod {
				src[i] = wakeSource{}
			}
			for _, kv := range ev.Kvs {
				if rec, ok := w.decode(string(kv.Key), kv.Value); ok {
					src[i] = wakeSource{rec: &rec, mod: kv.ModRevision}
				}
			}
			cur = -1
		}
		for _, e := range ev.Changes {
			// A deleted wake key (its agent's lease gone, a wiped prefix)
			// changes nothing: the last record seen stays.
			if e.Type == clientv3.EventTypeDelete || e.Kv.ModRevision <= src[i].mod {
				continue
			}
			if rec, ok := w.decode(string(e.Kv.Key), e.Kv.Value); ok {
				src[i] = wakeSource{rec: &rec, mod: e.Kv.ModRevision}
			}
		}
		best := src[0]
		if src[1].rec != nil && (best.rec == nil || src[1].mod > best.mod) {
			best = src[1]
		}
		if best.rec == nil || best.mod == cur || (!ev.Reset && best.mod < cur) {
			return nil
		}
		cur = best.mod
		w.setRecord(*best.rec)
		return nil
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		w.runWatch(keys[1], func(ev listwatch.Event) error { return handle(1, ev) })
	}()
	w.runWatch(keys[0], func(ev listwatch.Event) error { return handle(0, ev) })
	<-done
}

// runWatch list-watches key until the Watcher closes.
func (w *Watcher) runWatch(key string, h func(listwatch.Event) error) {
	err := listwatch.Run(w.ctx, w.c, key, listwatch.Options{Log: w.log}, h)
	if err != nil && !errors.Is(err, context.Canceled) {
		w.log.WithError(err).WithField("key", key).Error("watcher: wake key watch ended")
	}
}

// legacyMode decides, once, whether this agent follows the revision key
// (see above). It retries while etcd fails; ok is false when the Watcher
// closes.
func (w *Watcher) legacyMode() (legacy, ok bool) {
	var shards, revs int64
	err := backoff.Retry(w.ctx, w.clock, backoff.New(w.cfg.RetryMin, w.cfg.RetryMax), func(ctx context.Context) error {
		ctx, cancel := context.WithTimeout(ctx, w.cfg.OpTimeout)
		defer cancel()
		resp, err := w.c.Txn(ctx).Then(
			clientv3.OpGet(w.layout.WakeShards(), clientv3.WithPrefix(), clientv3.WithCountOnly()),
			clientv3.OpGet(w.layout.Revision(), clientv3.WithCountOnly()),
		).Commit()
		if err != nil {
			if errors.Is(err, rpctypes.ErrPermissionDenied) || errors.Is(err, rpctypes.ErrGRPCPermissionDenied) {
				return backoff.Permanent(err)
			}
			return err
		}
		shards, revs = resp.Responses[0].GetResponseRange().Count, resp.Responses[1].GetResponseRange().Count
		return nil
	}, func(err error, pause time.Duration) {
		w.log.WithError(err).WithField("retry_in", pause).Warn("watcher: reading the wake keys failed; retrying")
	})
	switch {
	case w.ctx.Err() != nil:
		return false, false
	case err != nil:
		w.log.WithError(err).Warn("watcher: this agent may not read its wake keys (RBAC roles from before them: run `resyncctl rbac apply` again); following the revision key instead, which wakes with every round")
		return true, true
	case shards == 0 && revs > 0:
		w.log.Warn("watcher: the coordinators write no wake keys (they are older than this agent: upgrade resyncd before agents); following the revision key until this agent restarts")
		return true, true
	}
	return false, true
}
