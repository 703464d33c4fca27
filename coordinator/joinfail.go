package coordinator

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/sirupsen/logrus"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/resyncd/resync/schema"
)

// A failed or timed-out ack leads to a round that includes its plugin
// (invariant 7), also when the plugin was no participant of the round it
// acked: a join resync (a new or restarted agent's plugin gets Started for
// the current revision and acks an error), or a plugin registered after
// the running round started. A participant's failure is answered by its
// round's retry request (finish); any other failed ack is answered here,
// by an error request the leader writes, fenced, under requests/operator/
// with exactly the failed plugins as targets. From then on it is an error
// request like a ReportError: durable until the round that consumes it
// runs, paced by its agent's backoff streak (streaks.go).
//
// A failed ack of plugin p at revision R is answered when a round after R
// includes p (p is told of that round and reloads, and that round's own
// outcome is answered by its retry), or a pending request covers p. A new
// leader checks every failed ack it finds (sweepFailedAcks): its
// predecessor may have died before it wrote the request.

// failedAck notes a failed or timed-out ack of id unless a round or a
// request answers it; step writes the requests (writeFailedAcks).
func (l *leader) failedAck(id schema.PluginID, ack schema.Ack) { l.checkFailedAck(id, ack, nil) }

// checkFailedAck is failedAck with the pending requests' union cover
// (pendingCover) computed once by the caller, or nil.
func (l *leader) checkFailedAck(id schema.PluginID, ack schema.Ack, cover *schema.ScopeSet) {
	if ack.Result == schema.ResultOK || ack.Revision == 0 || ack.Revision > l.lastN {
		return // ok, or not of this history's rounds
	}
	if _, registered := l.regs[id]; !registered {
		return // departed: a new registration gets its own join resync
	}
	if h, ok := l.handled[id]; ok && h >= ack.Revision {
		return
	}
	if rs := l.round; rs != nil {
		if _, part := rs.outcome[id]; part && rs.rec.Revision >= ack.Revision {
			return // the running round's outcome (resolve), or its Started supersedes the ack
		}
	}
	if cover == nil {
		c := l.pendingCover()
		cover = &c
	}
	if cover.Includes(id.Agent, id.Plugin) {
		l.handled[id] = ack.Revision
		return
	}
	if _, ok := l.failedAcks[id]; !ok {
		l.failedAckOrder = append(l.failedAckOrder, id)
	}
	l.failedAcks[id] = ack
}

// pendingCover is the union of the pending requests' scopes. A retry by
// reference (RetryOf without targets, written by older versions) covers its
// round's failed and timed-out participants when this leader knows them.
func (l *leader) pendingCover() schema.ScopeSet {
	var s schema.ScopeSet
	for _, r := range l.requests {
		if r.ByReference() {
			if rs, ok := l.retries[r.RetryOf]; ok {
				s.Union(rs)
			}
			continue
		}
		s.Union(r.ScopeSet())
	}
	return s
}

// sweepFailedAcks checks every failed ack once a new leader has synced
// (or after a watch reset re-listed the acks).
func (l *leader) sweepFailedAcks() {
	ids := make([]schema.PluginID, 0)
	for id, a := range l.acks {
		if a.Result != schema.ResultOK {
			ids = append(ids, id)
		}
	}
	slices.SortFunc(ids, comparePluginIDs)
	cover := l.pendingCover()
	for _, id := range ids {
		l.checkFailedAck(id, l.acks[id], &cover)
	}
}

// dropAnswered removes from the planned failed acks those of an earlier
// revision than the last round that a round since included: Txns of Gets
// (the summaries and the agents' records of those rounds), needed only for
// acks older than the last round (a slow agent, or a new leader's sweep).
// Rounds whose records are beyond the detail history are not consulted: a
// failed ack that old is taken as answered. When etcd fails, every planned
// ack keeps its round: one round too many is safe, one too few is not.
func (l *leader) dropAnswered() {
	l.compactFailedAckOrder()
	var old []schema.PluginID
	for _, id := range l.failedAckOrder {
		if l.failedAcks[id].Revision < l.lastN {
			old = append(old, id)
		}
	}
	if len(old) == 0 {
		return
	}
	from := uint64(1)
	if d := uint64(max(l.cfg.DetailHistory, 1)); l.lastN > d {
		from = l.lastN - d + 1
	}
	in, err := l.readInclusions(from, old)
	if err != nil {
		l.log.WithError(err).WithField("acks", len(old)).Warn("coordinator: cannot read the rounds since some failed acks; planning a round for each of them")
		return
	}
	for _, id := range old {
		r := l.failedAcks[id].Revision
		if in.answered(id, r, from, l.lastN) {
			l.handled[id] = r
			delete(l.failedAcks, id)
		}
	}
	l.compactFailedAckOrder()
}

// compactFailedAckOrder removes from failedAckOrder the plugins whose
// failed ack is no longer planned.
func (l *leader) compactFailedAckOrder() {
	l.failedAckOrder = slices.DeleteFunc(l.failedAckOrder, func(id schema.PluginID) bool {
		_, ok := l.failedAcks[id]
		return !ok
	})
}

// roundRecord names round n's summary (agent empty) or the per-agent
// record of agent.
type roundRecord struct {
	n     uint64
	agent string
}

// inclusions are what the records of recent rounds say about who took
// part: every plugin (an all-scope round), or the plugins of the per-agent
// records read.
type inclusions struct {
	all      map[uint64]bool
	included map[uint64]map[schema.PluginID]bool
}

// readInclusions reads the summaries of rounds from to lastN, and the
// per-agent records in them of old's agents whose failed acks they may
// answer, in Txns of at most schema.MaxTxnOps Gets.
func (l *leader) readInclusions(from uint64, old []schema.PluginID) (inclusions, error) {
	ops, recs := l.inclusionGets(from, old)
	in := inclusions{all: map[uint64]bool{}, included: map[uint64]map[schema.PluginID]bool{}}
	for len(ops) > 0 {
		k := min(len(ops), schema.MaxTxnOps)
		ctx, cancel := context.WithTimeout(l.ctx, 4*l.cfg.OpTimeout)
		resp, err := l.c.Txn(ctx).Then(ops[:k]...).Commit()
		cancel()
		if err != nil {
			return inclusions{}, err
		}
		for i, r := range resp.Responses {
			in.note(l.layout, recs[i], r.GetResponseRange().Kvs)
		}
		ops, recs = ops[k:], recs[k:]
	}
	return in, nil
}

// inclusionGets are readInclusions' Gets, and the record each one reads.
func (l *leader) inclusionGets(from uint64, old []schema.PluginID) ([]clientv3.Op, []roundRecord) {
	ops := []clientv3.Op{}
	var recs []roundRecord
	for n := from; n <= l.lastN; n++ {
		ops = append(ops, clientv3.OpGet(l.layout.Round(n)))
		recs = append(recs, roundRecord{n: n})
	}
	agents := map[string]bool{}
	for _, id := range old {
		if !agents[id.Agent] && l.failedAcks[id].Revision+1 >= from {
			agents[id.Agent] = true
			for n := from; n <= l.lastN; n++ {
				ops = append(ops, clientv3.OpGet(l.layout.RoundAgent(n, id.Agent)))
				recs = append(recs, roundRecord{n: n, agent: id.Agent})
			}
		}
	}
	return ops, recs
}

// note adds what record rr says, read as kvs (none when absent); a
// malformed record says nothing.
func (in inclusions) note(layout schema.Layout, rr roundRecord, kvs []*mvccpb.KeyValue) {
	for _, kv := range kvs {
		if rr.agent == "" {
			if rec, err := layout.DecodeRound(string(kv.Key), kv.Value); err == nil && rec.Scope.IsAll() {
				in.all[rr.n] = true
			}
			continue
		}
		if ra, err := layout.DecodeRoundAgent(string(kv.Key), kv.Value); err == nil {
			if in.included[rr.n] == nil {
				in.included[rr.n] = map[schema.PluginID]bool{}
			}
			for _, p := range ra.Plugins {
				in.included[rr.n][schema.PluginID{Agent: ra.Agent, Plugin: p}] = true
			}
		}
	}
}

// answered says whether a round after revision r, up to last, included
// id; rounds before from were not read: an ack older than them is taken as
// answered.
func (in inclusions) answered(id schema.PluginID, r, from, last uint64) bool {
	answered := r+1 < from
	for n := max(r+1, from); n <= last && !answered; n++ {
		answered = in.all[n] || in.included[n][id]
	}
	return answered
}

func comparePluginIDs(a, b schema.PluginID) int {
	return cmp.Or(cmp.Compare(a.Agent, b.Agent), cmp.Compare(a.Plugin, b.Plugin))
}

// writeFailedAcks writes the planned failed acks' requests: one per agent
// (at most MaxRequestTargets plugins each), fenced, in Txns within the
// write budget. The leader sees them back on its request watch, where they
// are paced like any error request.
func (l *leader) writeFailedAcks(now time.Time) error {
	if len(l.failedAckOrder) == 0 {
		return nil
	}
	l.dropAnswered()
	ids := l.failedAckOrder
	if len(ids) == 0 {
		return nil
	}
	slices.SortStableFunc(ids, func(a, b schema.PluginID) int { return cmp.Compare(a.Agent, b.Agent) })
	var puts []put
	var err error
	byAgent(ids, func(agent string, ps []schema.PluginID) {
		for len(ps) > 0 && err == nil {
			k := min(len(ps), schema.MaxRequestTargets)
			req := schema.Request{Cause: schema.CauseError, RequestedBy: l.identity, RequestedAt: now.UTC()}
			for _, p := range ps[:k] {
				req.Targets = append(req.Targets, schema.Scope{Agent: p.Agent, Plugin: p.Plugin})
			}
			first := l.failedAcks[ps[0]]
			req.Reason = schema.Cut(fmt.Sprintf("%d plugin(s) of agent %s failed a resync they were not a participant of (join or late registration); first %s at revision %d: %s %s",
				k, agent, ps[0].Plugin, first.Revision, first.Result, first.Error), schema.MaxReasonLen)
			var b []byte
			if b, err = schema.Encode(req); err != nil {
				return
			}
			puts = append(puts, put{key: l.layout.OperatorRequest(schema.NewRequestID(now)), val: b})
			l.log.WithFields(logrus.Fields{"agent": agent, "plugins": k, "plugin": ps[0].Plugin, "revision": first.Revision, "result": first.Result}).
				Info("coordinator: plugins failed a resync they were not a participant of; planning a round for them")
			ps = ps[k:]
		}
	})
	if err != nil {
		return err
	}
	lost, err := l.writePuts(nil, puts)
	if err != nil {
		return err
	}
	for _, id := range ids {
		l.handled[id] = l.failedAcks[id].Revision
	}
	if lost > 0 {
		l.log.WithField("requests", lost).Error("coordinator: etcd refuses some failed-ack requests for good; their plugins get no round until they fail again (check etcd's --max-request-bytes and the coordinator's permissions)")
	}
	clear(l.failedAcks)
	l.failedAckOrder = nil
	return nil
}
