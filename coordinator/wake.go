package coordinator

import (
	"context"
	"errors"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/resyncd/resync/schema"
)

// Wake keys (docs/architecture.md, "Waking agents"). etcd notifies a key's
// watchers inside the write that changes it, under its store lock: one put
// to a key that the whole fleet watches stalls every other write to that
// etcd for as long as the fan-out takes (100-200 ms at 10,000 watchers).
// So agents do not watch the revision record; each watches two copies of
// it, which the leader writes after (or with) the revision record:
//
//   - its wake shard, wake/shards/<NN> (schema.WakeShardOf): every
//     all-scope round's record, written to all schema.WakeShards shards in
//     Txns that each notify at most wakeFanout agents;
//   - its own wake key, wake/agents/<agent>: the record of each set-scope
//     round it takes part in, written on its session lease, so that it
//     goes with the agent and never needs collecting. An agent outside a
//     set-scope round gets no event at all.
//
// The revision record stays the truth, and is still written at every
// change: agents of the previous release watch it (one release of rolling
// upgrade), as do resyncctl watch and operators. Nobody else watches it, so
// its writes notify a handful of watchers.

// wakeFanout bounds the agents that one wake write of an all-scope round
// notifies: shards are packed into a Txn only while their live agents add
// up to at most this many (a shard with more goes alone).
const wakeFanout = 512

// errLeaseGone wraps etcd's "requested lease not found": the agent whose
// session lease a wake key was to be written on has gone.
var errLeaseGone = errors.New("the agent's session lease is gone")

// shardSet is a set of wake shards: shard i is in it when s[i].
type shardSet [schema.WakeShards]bool

// shardsFor is the wake shards that an all-scope record goes to: only
// those it changes something in. A Started record goes to the shards
// with live agents (a one-agent fleet writes one shard, not 64: its start
// Txn was 25 KB), a NotActive record to those and to every shard that may
// still hold a Started record (shards: an agent may have come to it
// since). The term's first all-scope write goes to every shard: what the
// predecessor left in them is unknown, and an agent tells coordinators
// that write wake keys from older ones by shard keys existing at all
// (watcher's legacy mode).
func (l *leader) shardsFor(started bool) (s shardSet) {
	for i, n := range l.shardAgents {
		s[i] = !l.shardsKnown || n > 0 || (!started && l.shards[i])
	}
	return s
}

// wroteShards records that an all-scope record went to the shards s.
func (l *leader) wroteShards(started bool, s shardSet) {
	l.shardsKnown = true
	if !started {
		l.shards = shardSet{}
		return
	}
	for i, in := range s {
		l.shards[i] = l.shards[i] || in
	}
}

// wakeShardGroups packs the all-scope wake writes of the record val into
// Txns: consecutive shards of s while their live agents number at most
// wakeFanout (schema.WakeShards is below schema.MaxTxnOps: ops never
// limit a group). fans[i] is how many agents group i wakes.
func (l *leader) wakeShardGroups(val []byte, s shardSet) (groups [][]clientv3.Op, fans []int) {
	perShard := l.shardAgents
	var cur []clientv3.Op
	fan := 0
	for i := range schema.WakeShards {
		if !s[i] {
			continue
		}
		if len(cur) > 0 && fan+perShard[i] > wakeFanout {
			groups, fans = append(groups, cur), append(fans, fan)
			cur, fan = nil, 0
		}
		cur = append(cur, clientv3.OpPut(l.layout.WakeShard(i), string(val)))
		fan += perShard[i]
	}
	return append(groups, cur), append(fans, fan)
}

// noteWake records that one write woke agents (Status.LargestWake).
func (l *leader) noteWake(agents int) {
	l.co.setStatus(func(s *Status) { s.LargestWake = max(s.LargestWake, agents) })
}

// firstShardGroup is the first shard group of the record val if it fits
// in a Txn that already carries fixed ops (nil when it does not): the wake
// of a fleet of up to wakeFanout agents then costs no write of its own.
func (l *leader) firstShardGroup(val []byte, started bool, fixed int) []clientv3.Op {
	groups, fans := l.wakeShardGroups(val, l.shardsFor(started))
	if len(groups[0]) == 0 || fixed+len(groups[0]) > schema.MaxTxnOps {
		return nil
	}
	l.noteWake(fans[0])
	return groups[0]
}

// firstShardOps is how many operations the first shard group of an
// all-scope Started record takes (firstShardGroup).
func (l *leader) firstShardOps() int {
	groups, _ := l.wakeShardGroups(nil, l.shardsFor(true))
	return len(groups[0])
}

// agentWakes are the wake key puts of the set-scope record val for the
// agents of parts, each on its agent's session lease. An agent whose lease
// this leader does not know (its registrations not seen yet) gets none: it
// was no participant then.
func (l *leader) agentWakes(val []byte, parts []schema.PluginID) []put {
	var puts []put
	byAgent(parts, func(agent string, _ []schema.PluginID) {
		if lease, ok := l.agentLeases[agent]; ok {
			puts = append(puts, put{key: l.layout.WakeAgent(agent), val: val, lease: lease})
		}
	})
	return puts
}

// wake writes the wake keys of the record val (already in etcd): all
// shards for an all-scope record, the participants' own keys for a set
// scope. skipFirst: the first shard group (firstShardGroup) went in the
// revision record's Txn. Wake writes that etcd refuses for good are logged
// and skipped: the agents concerned hear of the round at its next record.
// Its error is only the end of leadership.
func (l *leader) wake(val []byte, started, all bool, parts []schema.PluginID, skipFirst bool) error {
	if !all {
		return l.writeAgentWakes(l.agentWakes(val, parts))
	}
	set := l.shardsFor(started)
	defer l.wroteShards(started, set)
	groups, fans := l.wakeShardGroups(val, set)
	if skipFirst || len(groups[0]) == 0 {
		groups, fans = groups[1:], fans[1:]
	}
	for i, g := range groups {
		l.noteWake(fans[i])
		err := l.fencedTxn(g)
		if errors.Is(err, errPermanent) && len(g) > 1 {
			// A small --max-txn-ops or --max-request-bytes: one by one.
			for _, op := range g {
				if err = l.fencedTxn([]clientv3.Op{op}); err != nil {
					break
				}
			}
		}
		if err != nil {
			if !errors.Is(err, errPermanent) {
				return err
			}
			l.log.WithError(err).Error("coordinator: etcd refuses a wake shard write for good; its agents hear of this round only at its next record")
		}
	}
	return nil
}

// writeAgentWakes writes agent wake keys in Txns of at most
// schema.MaxTxnOps (each notifies at most that many agents). A Txn with a
// gone lease is written again one put at a time, without the gone ones.
func (l *leader) writeAgentWakes(puts []put) error {
	for len(puts) > 0 {
		n := min(len(puts), schema.MaxTxnOps)
		ops := make([]clientv3.Op, n)
		for i, p := range puts[:n] {
			ops[i] = p.op()
		}
		l.noteWake(n)
		err := l.fencedTxn(ops)
		switch {
		case errors.Is(err, errLeaseGone):
			for _, p := range puts[:n] {
				if err := l.fencedTxn([]clientv3.Op{p.op()}); err != nil && !errors.Is(err, errLeaseGone) && !errors.Is(err, errPermanent) {
					return err
				}
			}
		case errors.Is(err, errPermanent):
			l.log.WithError(err).Error("coordinator: etcd refuses agent wake writes for good; those agents hear of this round only at its next record")
		case err != nil:
			return err
		}
		puts = puts[n:]
	}
	return nil
}

// rewake writes, at the start of a term, the wake keys of the record the
// term found: its predecessor may have died between the revision record
// and the wake writes, and agents that heard nothing would wait for a
// round's NotActive (or miss its Started) until the next one.
//
// A running wave round is not woken again: each of its agents' wake keys
// was written in the Txn that recorded the agent started or done, and its
// shards must not say Started (rebuildWave continues it).
func (l *leader) rewake() error {
	if l.rev == nil || (l.resume != nil && l.resume.Wave != nil) {
		return nil
	}
	val, err := schema.Encode(*l.rev)
	if err != nil {
		return err
	}
	started := l.rev.State == schema.Started
	if l.rev.Scope.IsAll() {
		return l.wake(val, started, true, nil, false)
	}
	ctx, cancel := context.WithTimeout(l.ctx, 10*l.cfg.OpTimeout)
	defer cancel()
	recs, _, err := ReadRoundAgents(ctx, l.c, l.layout, l.rev.Revision, 0)
	if err != nil {
		if l.ctx.Err() != nil {
			return l.why()
		}
		l.log.WithError(err).WithField("revision", l.rev.Revision).Warn("coordinator: cannot read the round's agents to wake them again; they hear of it at its next record")
		return nil
	}
	var parts []schema.PluginID
	for _, r := range recs {
		if r.Wave != schema.AgentSkipped && r.Wave != schema.AgentWaiting { // never woken
			parts = append(parts, schema.PluginID{Agent: r.Agent})
		}
	}
	return l.wake(val, started, false, parts, false)
}
