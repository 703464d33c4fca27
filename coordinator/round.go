package coordinator

import (
	"context"
	"errors"
	"slices"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/resyncd/resync/internal/backoff"
	"github.com/resyncd/resync/internal/etcderr"
	"github.com/resyncd/resync/schema"
)

// roundState tracks one running round incrementally: every event resolves at
// most one participant, and completion is a counter reaching zero.
type roundState struct {
	rec     schema.Round                       // the summary as written at start
	parts   []schema.PluginID                  // by agent and registration order
	outcome map[schema.PluginID]schema.Outcome // OutcomePending until resolved
	errs    map[schema.PluginID]string
	counts  schema.RoundCounts
	lost    int      // detail records degraded or skipped (etcd refused them for good)
	wave    *waveRun // a wave round's window (wave.go); nil otherwise

	// A plain round's agents whose participants have all resolved get
	// their outcome record while the round runs (writeEarly), not all at
	// its finish: agentParts are each agent's participants, agentLeft
	// those not resolved yet, doneQ the agents done and not recorded,
	// recorded those written.
	agentParts map[string][]schema.PluginID
	agentLeft  map[string]int
	doneQ      []string
	recorded   map[string]bool
}

func newRoundState(rec schema.Round, parts []schema.PluginID) *roundState {
	agents := min(max(rec.Agents, 0), len(parts)) // a size hint: a resumed round's is read from etcd
	rs := &roundState{rec: rec, parts: parts, outcome: make(map[schema.PluginID]schema.Outcome, len(parts)),
		agentParts: make(map[string][]schema.PluginID, agents), agentLeft: make(map[string]int, agents),
		recorded: make(map[string]bool, agents)}
	for _, p := range parts {
		rs.outcome[p] = schema.OutcomePending
	}
	byAgent(parts, func(agent string, ps []schema.PluginID) {
		rs.agentParts[agent], rs.agentLeft[agent] = ps, len(ps)
	})
	rs.counts = schema.RoundCounts{Participants: len(rs.outcome), Pending: len(rs.outcome)}
	rs.rec.Counts = rs.counts
	return rs
}

// resolve applies schema.Resolve to pending participant p with the current
// acks and registrations (expired: the round's deadline passed). The first
// outcome other than pending sticks; later calls for p do nothing.
func (l *leader) resolve(p schema.PluginID, expired bool) {
	rs := l.round
	if rs == nil {
		return
	}
	if o, ok := rs.outcome[p]; !ok || o != schema.OutcomePending {
		return
	}
	_, registered := l.regs[p]
	ack := l.acks[p]
	outcome := schema.Resolve(rs.rec.Revision, ack, registered, expired)
	if outcome == schema.OutcomePending {
		return
	}
	rs.set(p, outcome, ack.Error)
	l.co.hooks.Resolved(p, outcome)
}

// set records pending participant p's outcome (errText: a failed one's
// error) and counts it, in the window too for a wave round.
func (rs *roundState) set(p schema.PluginID, outcome schema.Outcome, errText string) {
	rs.outcome[p] = outcome
	rs.counts.Pending--
	switch outcome {
	case schema.OutcomeAcked:
		rs.counts.Acked++
	case schema.OutcomeFailed:
		rs.counts.Failed++
		if rs.errs == nil {
			rs.errs = map[schema.PluginID]string{}
		}
		rs.errs[p] = schema.Cut(errText, schema.MaxAckErrorLen)
	case schema.OutcomeTimedOut:
		rs.counts.TimedOut++
	case schema.OutcomeDeparted:
		rs.counts.Departed++
	case schema.OutcomeSkipped:
		rs.counts.Skipped++
	}
	if rs.wave != nil {
		rs.waveResolved(p, outcome)
	} else if rs.agentLeft[p.Agent]--; rs.agentLeft[p.Agent] == 0 {
		rs.doneQ = append(rs.doneQ, p.Agent)
	}
}

// reconcile resolves every pending participant from the current state.
func (l *leader) reconcile() {
	for p, o := range l.round.outcome {
		if o == schema.OutcomePending {
			l.resolve(p, false)
		}
	}
}

// reconcileStarted is reconcile for a round this leader just started from
// its own view: every participant is registered in it, so only an ack
// already written for the round's revision can resolve one (one that
// outlived an etcd restore). When no ack is that high it does nothing:
// going through 100,000 participants took 50-170 ms of the leader's CPU
// right after a 10000x10 wave round's start, while etcd waited for it.
func (l *leader) reconcileStarted() {
	if l.topAck >= l.round.rec.Revision {
		l.reconcile()
	}
}

func (l *leader) onState(ev stateEvent) {
	if ev.reset || ev.rev > l.viewRev {
		l.viewRev = ev.rev
	}
	for _, err := range ev.bad {
		l.log.WithError(err).Warn("coordinator: skipping a malformed record")
	}
	if ev.reset {
		l.regs, l.acks = ev.regs, ev.acks
		l.topAck = 0
		for _, a := range l.acks {
			l.topAck = max(l.topAck, a.Revision)
		}
		l.agentLeases, l.agentRegs, l.shardAgents = ev.leases, map[string]int{}, [schema.WakeShards]int{}
		for id := range l.regs {
			if l.agentRegs[id.Agent]++; l.agentRegs[id.Agent] == 1 {
				l.shardAgents[schema.WakeShardOf(id.Agent)]++
			}
		}
		l.ordered = nil
		l.stateSynced = true
		l.swept = false // step checks the failed acks of the new listing
		if l.round != nil {
			l.reconcile()
		}
		return
	}
	for _, it := range ev.items {
		switch {
		case it.isAck && it.deleted:
			delete(l.acks, it.id)
		case it.isAck:
			l.acks[it.id] = *it.ack
			l.topAck = max(l.topAck, it.ack.Revision)
			l.resolve(it.id, false)
			if l.swept {
				l.failedAck(it.id, *it.ack)
			}
		case it.deleted:
			if _, ok := l.regs[it.id]; ok {
				l.dropAgentReg(it.id.Agent)
			}
			delete(l.regs, it.id)
			delete(l.handled, it.id)
			delete(l.failedAcks, it.id)
			l.ordered = nil
			l.resolve(it.id, false)
		default:
			if _, ok := l.regs[it.id]; !ok {
				if l.agentRegs[it.id.Agent]++; l.agentRegs[it.id.Agent] == 1 {
					l.shardAgents[schema.WakeShardOf(it.id.Agent)]++
				}
			}
			l.regs[it.id] = *it.reg
			l.agentLeases[it.id.Agent] = it.lease
			l.ordered = nil
		}
	}
}

// dropAgentReg counts one registration of agent gone; with its last, the
// agent's lease is forgotten.
func (l *leader) dropAgentReg(agent string) {
	if l.agentRegs[agent]--; l.agentRegs[agent] <= 0 {
		delete(l.agentRegs, agent)
		delete(l.agentLeases, agent)
		l.shardAgents[schema.WakeShardOf(agent)]--
	}
}

func (l *leader) nextWake() (time.Time, bool) {
	switch {
	case l.round != nil && l.round.wave != nil:
		return l.nextWaveWake()
	case l.round != nil:
		return l.round.rec.Deadline, true
	case l.initial != "":
		return l.co.clock.Now(), true
	case len(l.requests) > 0:
		return l.due(), true
	}
	return time.Time{}, false
}

// step makes the decisions that depend on time and state: resume, answer
// failed acks, time out, finish, start.
func (l *leader) step(now time.Time) error {
	if l.needRewake {
		l.needRewake = false
		if err := l.rewake(); err != nil {
			return err
		}
	}
	if l.resume != nil {
		if err := l.resumeRound(); err != nil {
			return err
		}
	}
	if err := l.applyControls(now); err != nil {
		return err
	}
	if !l.swept {
		l.swept = true
		l.sweepFailedAcks()
	}
	if err := l.writeFailedAcks(now); err != nil {
		return err
	}
	if l.round != nil {
		if done, err := l.advance(now); err != nil || !done {
			return err
		}
	}
	if started, err := l.startNext(now); err != nil || !started {
		return err
	}
	// A round just started: it may be complete already (no participants,
	// or acks seen before).
	if l.round != nil && l.round.counts.Pending == 0 {
		return l.finish(now)
	}
	return nil
}

// resumeRound makes the round load found Started the running round, with
// the participants setResume fixed (the live registrations when etcd had
// compacted its start away), recorded first when its per-agent records
// were incomplete.
func (l *leader) resumeRound() error {
	rec, parts := *l.resume, l.resumeParts
	if l.rebuild {
		parts = l.participants(schema.AllScopes())
	}
	// Rewritten as pending, the records read no longer hold their
	// outcomes: the finish writes them all again.
	kept := !l.recordResume
	if l.recordResume {
		if err := l.recordParticipants(rec.Revision, parts); err != nil {
			return err
		}
	}
	recs, planLost := l.resumeRecs, l.planLost
	l.resume, l.resumeParts, l.resumeRecs, l.rebuild, l.recordResume, l.planLost = nil, nil, nil, false, false, false
	l.round = newRoundState(rec, parts)
	if rec.Wave != nil {
		if err := l.rebuildWave(recs); err != nil {
			return err
		}
		// The abort in etcd before any agent is skipped for it.
		if planLost {
			if err := l.writePlan(nil); err != nil {
				return err
			}
		}
	} else {
		l.presetDone(recs, kept)
	}
	l.log.WithField("revision", rec.Revision).WithField("participants", len(parts)).Info("coordinator: resuming the running round")
	l.co.hooks.RoundStarted(l.round.rec, true)
	l.reconcile()
	return nil
}

// presetDone takes the outcomes that a resumed plain round's records of
// done agents list (written early, writeEarly): they were final when
// written, though the acks may have gone since (an agent that acked and
// then left stays acked, as it would have with the leader that saw it).
// kept: the records are still in etcd as read, and are not written again.
func (l *leader) presetDone(recs []schema.RoundAgent, kept bool) {
	rs := l.round
	for _, r := range recs {
		ps, ok := rs.agentParts[r.Agent]
		if r.State != schema.NotActive || !ok {
			continue
		}
		rs.recorded[r.Agent] = rs.preset(r, ps) && kept
	}
	rs.doneQ = slices.DeleteFunc(rs.doneQ, func(a string) bool { return rs.recorded[a] })
}

// preset sets the outcome record r lists for each of its agent's
// participants ps still pending; all: r lists one for every one of ps.
func (rs *roundState) preset(r schema.RoundAgent, ps []schema.PluginID) (all bool) {
	all = true
	for _, p := range ps {
		switch o := r.Outcome(p.Plugin); {
		case o == schema.OutcomePending || o == "":
			all = false
		case rs.outcome[p] == schema.OutcomePending:
			rs.set(p, o, r.Errors[p.Plugin])
		}
	}
	return all
}

// advance times out the running round's pending participants once its
// deadline passed, reports its progress, and finishes it when none is
// pending. done: it finished.
func (l *leader) advance(now time.Time) (done bool, err error) {
	rs := l.round
	if rs.wave != nil {
		if err := l.advanceWave(now); err != nil {
			return false, err
		}
	} else if !now.Before(rs.rec.Deadline) && rs.counts.Pending > 0 {
		for p, o := range rs.outcome {
			if o == schema.OutcomePending {
				l.resolve(p, true)
			}
		}
	}
	c := rs.counts
	l.co.setStatus(func(s *Status) { s.Progress = &c })
	if rs.counts.Pending > 0 {
		return false, l.writeEarly()
	}
	return true, l.finish(now)
}

// earlyBatch is how many done agents of a running plain round wait before
// their outcome records are written (writeEarly): half a Txn, so that the
// fewer left at the finish share the summary's Txn (planFinish).
const earlyBatch = schema.MaxTxnOps / 2

// writeEarly writes the outcome records of the running plain round's
// agents done so far, once earlyBatch of them wait. An outcome never
// changes once resolved, so the record written now is the one the finish
// would write; the finish writes only the rest. Without this, a round of
// 1,000 agents spent 16 ms after its last ack encoding and writing 1,000
// records before its summary, every round. A successor that resumes the
// round takes the outcomes these records list (presetDone), as it does a
// wave round's done agents. Its error is only the end of leadership or a
// record that does not encode.
func (l *leader) writeEarly() error {
	rs := l.round
	if rs.wave != nil || len(rs.doneQ) < earlyBatch {
		return nil
	}
	puts := make([]put, 0, len(rs.doneQ))
	for _, a := range rs.doneQ {
		p, err := l.outcomeRecord(rs, a, rs.agentParts[a], nil)
		if err != nil {
			return err
		}
		puts = append(puts, p)
	}
	for _, a := range rs.doneQ {
		rs.recorded[a] = true
	}
	rs.doneQ = nil
	lost, err := l.writePuts(nil, puts)
	rs.lost += lost
	return err
}

// startNext starts the initial round, or a round for the pending requests
// once they are due (startRequested). started: start was called.
func (l *leader) startNext(now time.Time) (started bool, err error) {
	switch {
	case l.initial != "":
		return true, l.start(now, schema.CauseInitial, l.initial, schema.AllScopes(), nil, nil)
	case len(l.requests) > 0 && !now.Before(l.due()):
		return l.startRequested(now)
	}
	return false, nil
}

// participants are the live registrations in scope, by agent and order.
func (l *leader) participants(scope schema.ScopeSet) []schema.PluginID {
	if l.ordered == nil {
		regs := make([]schema.Registration, 0, len(l.regs)) // no regrowth: 10,000 at 1000x10
		for _, r := range l.regs {
			regs = append(regs, r)
		}
		slices.SortFunc(regs, schema.CompareRegistrations)
		l.ordered = make([]schema.PluginID, len(regs))
		for i, r := range regs {
			l.ordered[i] = r.ID()
		}
	}
	if scope.IsAll() {
		return slices.Clone(l.ordered)
	}
	// l.ordered is sorted by agent: each agent of the scope is a run of it,
	// found by binary search, so a round of 100 agents costs the same in a
	// fleet of 100 or of 10,000 (not a scan of every registration).
	var out []schema.PluginID
	for _, a := range scope.Agents() {
		i, _ := slices.BinarySearchFunc(l.ordered, a, func(id schema.PluginID, a string) int { return strings.Compare(id.Agent, a) })
		for ; i < len(l.ordered) && l.ordered[i].Agent == a; i++ {
			if id := l.ordered[i]; scope.Includes(id.Agent, id.Plugin) {
				out = append(out, id)
			}
		}
	}
	return out
}

// byAgent calls f for each agent's run of participants (parts are sorted by
// agent).
func byAgent(parts []schema.PluginID, f func(agent string, ps []schema.PluginID)) {
	for i := 0; i < len(parts); {
		j := i + 1
		for j < len(parts) && parts[j].Agent == parts[i].Agent {
			j++
		}
		f(parts[i].Agent, parts[i:j])
		i = j
	}
}

// agentRecords are round n's per-agent participation records of parts
// (sorted by agent): rounds/<N>/agents/<agent>, state Started.
func (l *leader) agentRecords(n uint64, parts []schema.PluginID) ([]put, error) {
	var puts []put
	var err error
	byAgent(parts, func(agent string, ps []schema.PluginID) {
		if err != nil {
			return
		}
		ra := schema.RoundAgent{Revision: n, Agent: agent, State: schema.Started, Plugins: make([]string, len(ps))}
		for i, p := range ps {
			ra.Plugins[i] = p.Plugin
		}
		var b []byte
		b, err = schema.Encode(ra)
		puts = append(puts, put{key: l.layout.RoundAgent(n, agent), val: b})
	})
	return puts, err
}

// recordParticipants writes the per-agent records of a resumed round n
// whose records were incomplete (its leader died between its start Txn and
// them): the set a successor fixed from etcd's history becomes durable,
// and a later successor resumes with it even after etcd compacted or was
// restored. The summary is not written again: it is its starter's record.
func (l *leader) recordParticipants(n uint64, parts []schema.PluginID) error {
	puts, err := l.agentRecords(n, parts)
	if err != nil {
		return err
	}
	lost, err := l.writePuts(nil, puts)
	if err != nil {
		return err
	}
	if lost > 0 {
		l.log.WithField("revision", n).WithField("records", lost).Error("coordinator: etcd refuses some records of the resumed round for good; a later successor may resume it with other participants")
	}
	return nil
}

// roundStart is a round being started: its records, built before its
// start Txn commits.
type roundStart struct {
	scope schema.ScopeSet
	parts []schema.PluginID // the live registrations in scope, fixed here
	rec   schema.Round      // the summary, rounds/<N>
	rev   schema.Revision   // the revision record
	lost  int               // records written before the start, degraded or skipped
	run   *waveRun          // a wave round's window (its plan in rec.Wave); nil otherwise
	// Set by placeRecords: recs are the records that go in the start Txn;
	// recsIn, that the records are in etcd once the start commits (in its
	// Txn or before it); wipeInTxn, that the start Txn wipes what an
	// earlier attempt left under rounds/<N>/ (around recs).
	recs      []put
	recsIn    bool
	wipeInTxn bool
	// Set by writeStart: the revision record encoded, and whether the
	// start Txn carried the first wake shard group.
	revVal    []byte
	wokeFirst bool
}

// start starts round lastN+1 with the live registrations in scope, and
// consumes the requests reqKeys that asked for it; waves are their wave
// knobs. Its error is only the end of leadership or a record that does
// not encode; a start etcd refuses for good drops the requests
// (dropStart).
func (l *leader) start(now time.Time, cause schema.Cause, reason string, scope schema.ScopeSet, reqKeys []string, waves []schema.Wave) error {
	s := l.planStart(now, cause, reason, scope, waves)
	if err := l.placeRecords(&s); err != nil {
		return err
	}
	inTxn, err := l.writeStart(&s, reqKeys)
	if errors.Is(err, errPermanent) && len(s.recs) > 0 {
		// Refused with the records in it (a small --max-request-bytes
		// or --max-txn-ops): the records first on their own, as for a
		// large round, then the start alone.
		if err := l.recordsBefore(&s); err != nil {
			return err
		}
		inTxn, err = l.writeStart(&s, reqKeys)
	}
	if errors.Is(err, errPermanent) {
		l.dropStart(s, reqKeys, err)
		return nil
	}
	if err != nil {
		return err
	}
	if err := l.consumeRequests(reqKeys[inTxn:], reqKeys); err != nil {
		return err
	}
	l.started(s)
	if s.run != nil {
		// A wave round wakes its agents as they enter the window.
		s.run.startVal = s.revVal
		l.round.wave = s.run
		l.reconcileStarted()
		return l.advanceWave(now)
	}
	if err := l.wake(s.revVal, true, scope.IsAll(), s.parts, s.wokeFirst); err != nil {
		return err
	}
	if !s.recsIn {
		if err := l.writeRecordsAfter(s); err != nil {
			return err
		}
	}
	l.reconcileStarted()
	return nil
}

// planStart builds round lastN+1's records: its participants are the live
// registrations in scope, chosen from the view at viewRev.
func (l *leader) planStart(now time.Time, cause schema.Cause, reason string, scope schema.ScopeSet, waves []schema.Wave) roundStart {
	n := l.lastN + 1
	parts := l.participants(scope)
	sum := scope.Summary()
	rec := schema.Round{
		Revision: n, State: schema.Started, Reason: reason, Cause: cause, Scope: sum,
		Counts:    schema.RoundCounts{Participants: len(parts), Pending: len(parts)},
		StartedAt: now.UTC(), Deadline: now.Add(l.cfg.RoundDeadline).UTC(), StartedBy: l.identity,
		ViewRevision: l.viewRev,
	}
	rev := schema.Revision{
		Revision: n, State: schema.Started, Reason: reason, Cause: cause, Scope: sum, Participants: len(parts),
		StartedAt: rec.StartedAt, Deadline: rec.Deadline, Leader: l.identity, Epoch: l.epoch,
	}
	byAgent(parts, func(string, []schema.PluginID) { rec.Agents++ })
	s := roundStart{scope: scope, parts: parts, rec: rec, rev: rev}
	if plan, canary := planWave(parts, l.waves(waves)); plan != nil {
		s.run = newWaveRun(*plan, parts, canary, now)
		p := s.run.plan
		s.rec.Wave = &p
	}
	return s
}

// startRecords are the per-agent records of round s and, for a set scope,
// its scope's chunks (rounds/<N>/scope/).
func (l *leader) startRecords(s roundStart) ([]put, error) {
	n := s.rec.Revision
	var puts []put
	var err error
	if s.run != nil {
		puts, err = l.waitingRecords(n, s.run)
	} else {
		puts, err = l.agentRecords(n, s.parts)
	}
	if err != nil || s.scope.IsAll() {
		return puts, err
	}
	t := s.scope.Targets()
	for i := 0; len(t) > 0; i++ {
		k := min(len(t), schema.MaxScopeChunk)
		b, err := schema.Encode(schema.RoundScope{Revision: n, Targets: t[:k]})
		if err != nil {
			return nil, err
		}
		puts = append(puts, put{key: l.layout.RoundScope(n, i), val: b})
		t = t[k:]
	}
	return puts, nil
}

// wipeRound deletes whatever an earlier attempt at round n left under
// rounds/<n>/.
func (l *leader) wipeRound(n uint64) clientv3.Op {
	return clientv3.OpDelete(l.layout.RoundDir(n), clientv3.WithPrefix())
}

// wipeAround is wipeRound in a Txn that also puts puts under rounds/<n>/:
// etcd refuses a Txn whose delete ranges hold one of its puts' keys, so
// it deletes the ranges between those keys (the puts overwrite the keys
// themselves).
func (l *leader) wipeAround(n uint64, puts []put) []clientv3.Op {
	if len(puts) == 0 {
		return []clientv3.Op{l.wipeRound(n)}
	}
	keys := make([]string, len(puts))
	for i, p := range puts {
		keys[i] = p.key
	}
	slices.Sort(keys)
	dir := l.layout.RoundDir(n)
	ops := make([]clientv3.Op, 0, len(keys)+1)
	from := dir
	for _, k := range keys {
		if from < k {
			ops = append(ops, clientv3.OpDelete(from, clientv3.WithRange(k)))
		}
		from = k + "\x00"
	}
	return append(ops, clientv3.OpDelete(from, clientv3.WithRange(clientv3.GetPrefixRangeEnd(dir))))
}

// placeRecords decides where round s's records (startRecords) go. An
// agent reads its rounds/<N>/agents/<agent> when it sees a set-scope or
// wave revision Started, so theirs are in etcd no later than the start;
// an all-scope round's agents need none to start. An earlier attempt's
// leftovers under rounds/<N>/ (records written before a start that never
// committed) are wiped first.
//   - Records that fit in the start Txn with the wipe around them
//     (wipeAround), whatever the scope, go in it: one Txn before Started,
//     and no read. A one-agent round wrote its record in a Txn of its own
//     after the start, which the leader's processing of the agent's ack
//     waited for (0.7 ms of a 4.2 ms round).
//   - Else an all-scope round's are written after its start
//     (writeRecordsAfter), whose Txn wipes the whole of rounds/<N>/: the
//     fixed cost before Started is one Txn whatever the fleet size.
//   - Else a set-scope or wave round's go after a read that finds
//     leftovers (wipeLeftovers: no fsync; there are leftovers only after
//     a failed start), in the start Txn when they fit without the wipe,
//     else before it.
//
// Records etcd refuses for good mark the summary truncated.
func (l *leader) placeRecords(s *roundStart) error {
	all := s.scope.IsAll() && s.run == nil
	fixed := startOps
	if all {
		fixed += l.firstShardOps()
	}
	// Two operations a record (its put, the range before it), one more
	// for the range after the last.
	fitAround := func(n int) bool { return 2*n+1+fixed <= schema.MaxTxnOps }
	if all && (!fitAround(s.rec.Agents) || l.co.faults.recordsAfter) {
		s.wipeInTxn = true
		return nil
	}
	puts, err := l.startRecords(*s)
	if err != nil {
		return err
	}
	small := putsSize(puts) <= l.cfg.WriteBudget/2
	switch {
	case small && fitAround(len(puts)):
		s.recs, s.recsIn, s.wipeInTxn = puts, true, true
		return nil
	case all:
		s.wipeInTxn = true
		return nil
	}
	if err := l.wipeLeftovers(s.rec.Revision); err != nil {
		return err
	}
	s.recsIn = true
	if small && len(puts)+fixed <= schema.MaxTxnOps {
		s.recs = puts
		return nil
	}
	return l.writeRecords(s, puts)
}

// startOps is how many operations of a start Txn are not records, wipes
// or wake shards: the summary and the revision record.
const startOps = 2

// recordsBefore takes round s's records out of its start Txn, which etcd
// refused for good with them: they are written on their own before it, as
// a large round's, after a wipe of their own if the start was to wipe
// around them.
func (l *leader) recordsBefore(s *roundStart) error {
	if s.wipeInTxn {
		if err := l.wipeLeftovers(s.rec.Revision); err != nil {
			return err
		}
		s.wipeInTxn = false
	}
	puts := s.recs
	s.recs, s.recsIn = nil, true
	return l.writeRecords(s, puts)
}

// writeRecords writes round s's records puts before its start; those
// etcd refuses for good mark the summary truncated.
func (l *leader) writeRecords(s *roundStart, puts []put) error {
	lost, err := l.writePuts(nil, puts)
	s.lost += lost
	s.rec.Truncated = s.lost > 0
	return err
}

// wipeLeftovers deletes what an earlier attempt at round n left under
// rounds/<n>/ (records written before a start that never committed), if a
// count of that prefix finds any, or if it cannot be read. No deposed
// leader writes there after the read: its writes are fenced by a leader
// key that is gone.
func (l *leader) wipeLeftovers(n uint64) error {
	found := int64(-1) // unknown: wipe
	err := l.retry(backoff.New(pauseMin, pauseMax), func(context.Context) error {
		ctx, cancel := context.WithTimeout(l.ctx, l.cfg.OpTimeout)
		defer cancel()
		resp, err := l.c.Get(ctx, l.layout.RoundDir(n), clientv3.WithPrefix(), clientv3.WithCountOnly())
		switch {
		case err == nil:
			found = resp.Count
		case etcderr.Permanent(err):
			return backoff.Permanent(err)
		}
		return err
	}, func(err error, pause time.Duration) {
		l.log.WithError(etcderr.Explain(err)).WithField("retry_in", pause).Warn("coordinator: reading a round's leftovers failed; retrying")
	})
	if err != nil && l.why() != nil {
		return err // leadership ended; a refused read (found -1) wipes
	}
	if found == 0 {
		return nil
	}
	if err := l.fencedTxn([]clientv3.Op{l.wipeRound(n)}); err != nil && !errors.Is(err, errPermanent) {
		return err
	}
	return nil
}

// writeStart commits round s's start Txn: the wipe of an earlier
// attempt's leftovers when placeRecords left it there (first: watchers see
// them go before the round starts), the records s.recs, the summary, the
// revision record,
// for an all-scope round of a small fleet its wake shards, and the deletes
// of as many of reqKeys as fit. When etcd refuses it for good it is tried
// once more without the deletes. inTxn is how many of reqKeys it deleted.
func (l *leader) writeStart(s *roundStart, reqKeys []string) (inTxn int, err error) {
	roundVal, err := schema.Encode(s.rec)
	if err != nil {
		return 0, err
	}
	if s.revVal, err = schema.Encode(s.rev); err != nil {
		return 0, err
	}
	var ops []clientv3.Op
	if s.wipeInTxn {
		ops = append(ops, l.wipeAround(s.rec.Revision, s.recs)...)
	}
	for _, p := range s.recs {
		ops = append(ops, p.op())
	}
	ops = append(ops, clientv3.OpPut(l.layout.Round(s.rec.Revision), string(roundVal)), clientv3.OpPut(l.layout.Revision(), string(s.revVal)))
	bare := len(ops)
	if s.scope.IsAll() && s.run == nil { // a wave round wakes its agents as they enter
		ops = append(ops, l.firstShardGroup(s.revVal, true, len(ops))...)
	}
	fixed := len(ops)
	inTxn = min(len(reqKeys), schema.MaxTxnOps-len(ops))
	for _, k := range reqKeys[:inTxn] {
		ops = append(ops, clientv3.OpDelete(k))
	}
	// Smaller and smaller while etcd refuses for good (a small
	// --max-txn-ops or --max-request-bytes): without the deletes, then
	// without the wake shards (written on their own after).
	sizes := []int{len(ops)}
	for _, n := range []int{fixed, bare} {
		if n < sizes[len(sizes)-1] {
			sizes = append(sizes, n)
		}
	}
	for _, n := range sizes {
		err = l.fencedTxn(ops[:n])
		if !errors.Is(err, errPermanent) {
			if n < len(ops) {
				inTxn = 0
			}
			s.wokeFirst = err == nil && n > bare
			return inTxn, err
		}
	}
	return 0, err
}

// dropStart gives up round s, whose start etcd refuses for good even
// without the requests' deletes: there is nothing smaller to write, so its
// requests are dropped rather than retried forever.
func (l *leader) dropStart(s roundStart, reqKeys []string, err error) {
	l.log.WithError(err).WithField("revision", s.rec.Revision).WithField("requests", len(reqKeys)).
		Error("coordinator: etcd refuses the round's start for good; dropping its requests (check etcd's --max-request-bytes and the coordinator's permissions)")
	for _, k := range reqKeys {
		delete(l.requests, k)
	}
	l.initial = ""
}

// consumeRequests deletes the started round's requests that its start Txn
// did not (rest), and forgets all of them (reqKeys). A delete that fails
// other than by the end of leadership is logged: those requests cause one
// more round.
func (l *leader) consumeRequests(rest, reqKeys []string) error {
	if err := l.fencedDelete(rest); err != nil {
		if errors.Is(err, ErrDeposed) || l.ctx.Err() != nil {
			return err
		}
		l.log.WithError(err).Warn("coordinator: could not delete some consumed requests; they will cause one more round")
	}
	for _, k := range reqKeys {
		delete(l.requests, k)
	}
	for _, k := range reqKeys {
		delete(l.errSeen, k)
	}
	return nil
}

// started makes the committed round s the running round, and tells the
// log, the status and the hooks.
func (l *leader) started(s roundStart) {
	n, rev := s.rec.Revision, s.rev
	l.initial = ""
	l.lastN, l.rev = n, &rev
	l.round = newRoundState(s.rec, s.parts)
	l.round.lost = s.lost
	l.log.WithField("revision", n).WithField("participants", len(s.parts)).WithField("agents", s.rec.Agents).WithField("scope", s.rec.Scope.String()).
		WithField("cause", s.rec.Cause).WithField("reason", s.rec.Reason).Info("coordinator: round started")
	l.co.setStatus(func(st *Status) { r := rev; st.Revision = &r })
	l.co.hooks.RoundStarted(l.round.rec, false)
	if f := l.co.faults.afterStart; f != nil {
		f(l.ctx, n, slices.Clone(s.parts)) // chaos only (testfaults.go)
	}
}

// writeRecordsAfter writes an all-scope round's records once its start is
// committed: agents need none to start (every plugin takes part), so they
// are written while agents already work, and the fixed cost before Started
// is one Txn whatever the fleet size. The participants are still fixed at
// the start Txn: a successor that finds fewer records than the summary's
// agents (the leader died in between) reads the registrations at the start
// Txn's etcd revision (setResume); no write is added to the round.
func (l *leader) writeRecordsAfter(s roundStart) error {
	puts, err := l.startRecords(s)
	if err != nil {
		return err
	}
	lost, err := l.writePuts(nil, puts)
	l.round.lost += lost
	return err
}

// agentOutcomes are round n's per-agent records with their outcomes (none
// for a wave round: each agent's was written when it was done or skipped).
func (l *leader) agentOutcomes(rs *roundState) ([]put, error) {
	if rs.wave != nil {
		return nil, nil
	}
	var puts []put
	var err error
	byAgent(rs.parts, func(agent string, ps []schema.PluginID) {
		if err != nil || rs.recorded[agent] {
			return
		}
		var p put
		p, err = l.outcomeRecord(rs, agent, ps, nil)
		puts = append(puts, p)
	})
	return puts, err
}

// outcomeRecord is agent's per-agent record with the outcomes of its
// participants ps, within half the write budget: error texts are cut,
// then dropped (the record marked truncated). extra, if set, adds to it.
func (l *leader) outcomeRecord(rs *roundState, agent string, ps []schema.PluginID, extra func(*schema.RoundAgent)) (put, error) {
	n := rs.rec.Revision
	budget := l.cfg.WriteBudget / 2
	ra := schema.RoundAgent{Revision: n, Agent: agent, State: schema.NotActive, Plugins: make([]string, len(ps))}
	for i, p := range ps {
		ra.Plugins[i] = p.Plugin
		switch rs.outcome[p] {
		case schema.OutcomeAcked:
			ra.Acked = append(ra.Acked, p.Plugin)
		case schema.OutcomeFailed:
			ra.Failed = append(ra.Failed, p.Plugin)
			if e, ok := rs.errs[p]; ok && e != "" {
				if ra.Errors == nil {
					ra.Errors = map[string]string{}
				}
				ra.Errors[p.Plugin] = e
			}
		case schema.OutcomeTimedOut:
			ra.TimedOut = append(ra.TimedOut, p.Plugin)
		case schema.OutcomeSkipped:
			ra.Skipped = append(ra.Skipped, p.Plugin)
		default:
			ra.Departed = append(ra.Departed, p.Plugin)
		}
	}
	if extra != nil {
		extra(&ra)
	}
	key := l.layout.RoundAgent(n, agent)
	b, err := schema.Encode(ra)
	if err != nil {
		return put{}, err
	}
	if len(key)+len(b) > budget && len(ra.Errors) > 0 {
		for p, e := range ra.Errors {
			ra.Errors[p] = schema.Cut(e, schema.MaxTrimmedErrorLen)
		}
		ra.Truncated = true
		if b, err = schema.Encode(ra); err != nil {
			return put{}, err
		}
	}
	bare := ra
	bare.Errors, bare.Truncated = nil, true
	if len(key)+len(b) > budget {
		if b, err = schema.Encode(bare); err != nil {
			return put{}, err
		}
	}
	if ra.Truncated {
		rs.lost++
		l.log.WithField("key", key).WithField("budget", budget).Warn("coordinator: a per-agent record exceeds its budget; its error texts are cut (marked truncated)")
	}
	// The degraded value is encoded only if etcd refuses this one: half
	// the encoding of every finish, for a write almost never refused.
	return put{key: key, val: b, degrade: func() []byte {
		small, err := schema.Encode(bare)
		if err != nil {
			return nil // bare holds less than ra, which encoded
		}
		return small
	}}, nil
}

// examples are the first few non-ok participants for the summary.
func examples(rs *roundState) *schema.RoundExamples {
	var ex schema.RoundExamples
	for _, p := range rs.parts {
		switch o := rs.outcome[p]; {
		case o == schema.OutcomeFailed && len(ex.Failed) < schema.MaxExamples:
			ex.Failed = append(ex.Failed, p)
			if e := rs.errs[p]; e != "" {
				if ex.Errors == nil {
					ex.Errors = map[string]string{}
				}
				ex.Errors[p.String()] = schema.Cut(e, schema.MaxExampleErrorLen)
			}
		case o == schema.OutcomeTimedOut && len(ex.TimedOut) < schema.MaxExamples:
			ex.TimedOut = append(ex.TimedOut, p)
		case o == schema.OutcomeDeparted && len(ex.Departed) < schema.MaxExamples:
			ex.Departed = append(ex.Departed, p)
		case o == schema.OutcomeSkipped && len(ex.Skipped) < schema.MaxExamples:
			ex.Skipped = append(ex.Skipped, p)
		}
	}
	if len(ex.Failed)+len(ex.TimedOut)+len(ex.Departed)+len(ex.Skipped) == 0 {
		return nil
	}
	return &ex
}

// retryOpsInSummary bounds the retry requests that share a round's
// summary Txn (and a quarter of the write budget their bytes); a larger
// retry's requests are written before it.
const retryOpsInSummary = 4

// detailPrune is how many rounds before the kept detail each finish
// deletes the per-agent records of: more than one, so that a finish whose
// summary Txn had to be degraded (without pruning) leaves nothing behind
// for long.
const detailPrune = 8

// finishing is the running round being finished: the records its finish
// writes, built in turn.
type finishing struct {
	rs       *roundState
	rec      schema.Round    // the summary, NotActive
	rev      schema.Revision // the revision record, NotActive
	revVal   []byte
	outcomes []put // the per-agent records with their outcomes
	// together: a small round's outcomes share the summary's Txn (one
	// write, one fsync fewer per round); a large round's go first.
	together        bool
	outcomesWritten bool
	extra           []clientv3.Op   // the pruning of old rounds, and a small retry
	retry           schema.ScopeSet // an unclean round's failed and timed-out participants
	retries         []put           // its retry's requests
	retryInTxn      bool            // they are in extra
	retryWritten    bool
	wokeFirst       bool // the summary's Txn carried the first wake shard group
	revWritten      bool // the NotActive revision record is in etcd
}

// finish completes the running round once every participant is resolved:
// it writes the per-agent outcomes, the summary and the revision record
// NotActive, prunes old rounds and plans an unclean round's retry. What
// etcd refuses for good is written smaller (writeSummary): the round
// completes. Its error is only the end of leadership or a record that
// does not encode.
func (l *leader) finish(now time.Time) error {
	if l.round.wave != nil {
		if err := l.writeDone(now); err != nil {
			return err
		}
	}
	f, err := l.planFinish(now)
	if err != nil {
		return err
	}
	if !f.together {
		if err := l.writeOutcomes(f); err != nil {
			return err
		}
	}
	if err := l.finishRevision(f); err != nil {
		return err
	}
	f.extra = l.pruneOps(f.rec.Revision)
	if err := l.planRetry(f, now); err != nil {
		return err
	}
	if !f.retryInTxn {
		if err := l.writeRetries(f); err != nil {
			return err
		}
	}
	if err := l.writeSummary(f); err != nil {
		return err
	}
	// A set-scope wave round's agents each had their NotActive when done.
	if f.revWritten && (f.rs.wave == nil || f.rev.Scope.IsAll()) {
		if err := l.wake(f.revVal, false, f.rev.Scope.IsAll(), f.rs.parts, f.wokeFirst); err != nil {
			return err
		}
	}
	l.finished(f, now)
	return nil
}

// planFinish builds the running round's NotActive summary and its
// per-agent outcome records.
func (l *leader) planFinish(now time.Time) (*finishing, error) {
	rs := l.round
	rec := rs.rec
	rec.State = schema.NotActive
	rec.Counts = rs.counts
	rec.Examples = examples(rs)
	rec.FinishedAt = now.UTC()
	rec.DurationMS = float64(now.Sub(rec.StartedAt).Microseconds()) / 1000
	rec.FinishedBy = l.identity
	if rs.wave != nil {
		plan := rs.wave.plan
		rec.Wave = &plan
	}
	puts, err := l.agentOutcomes(rs)
	if err != nil {
		return nil, err
	}
	rec.Truncated = rec.Truncated || rs.lost > 0
	together := len(puts) <= schema.MaxTxnOps/2 && putsSize(puts) <= l.cfg.WriteBudget/2
	return &finishing{rs: rs, rec: rec, outcomes: puts, together: together}, nil
}

// writeOutcomes writes the per-agent outcomes on their own, once: a large
// round's before its summary, a small round's when etcd refused them in
// the summary's Txn for good. Records refused even degraded mark the
// summary truncated.
func (l *leader) writeOutcomes(f *finishing) error {
	if f.outcomesWritten {
		return nil
	}
	f.outcomesWritten = true
	lost, err := l.writePuts(nil, f.outcomes)
	if err != nil {
		return err
	}
	f.rec.Truncated = f.rec.Truncated || lost > 0
	return nil
}

// finishRevision builds the NotActive revision record from the one the
// round started with, or from its summary when this leader resumed it.
func (l *leader) finishRevision(f *finishing) (err error) {
	rec := f.rec
	var rev schema.Revision
	if l.rev != nil && l.rev.Revision == rec.Revision {
		rev = *l.rev
	} else { // resumed from a round record
		rev = schema.Revision{Revision: rec.Revision, Reason: rec.Reason, Cause: rec.Cause, Scope: rec.Scope,
			Participants: rec.Counts.Participants, StartedAt: rec.StartedAt, Deadline: rec.Deadline}
	}
	rev.State, rev.FinishedAt, rev.Leader, rev.Epoch = schema.NotActive, rec.FinishedAt, l.identity, l.epoch
	f.rev = rev
	f.revVal, err = schema.Encode(rev)
	return err
}

// pruneOps delete, at round n's finish, the summaries beyond History and
// the per-agent records of detailPrune rounds beyond DetailHistory.
func (l *leader) pruneOps(n uint64) []clientv3.Op {
	var ops []clientv3.Op
	if keep := uint64(l.cfg.History); n > keep {
		ops = append(ops, clientv3.OpDelete(l.layout.Round(1), clientv3.WithRange(l.layout.Round(n-keep+1))))
	}
	for i := uint64(0); i < detailPrune; i++ {
		dk := uint64(l.cfg.DetailHistory) + i
		if n <= dk {
			break
		}
		ops = append(ops, clientv3.OpDelete(l.layout.RoundDir(n-dk), clientv3.WithPrefix()))
	}
	return ops
}

// planRetry plans an unclean round's retry: requests for its failed and
// timed-out participants. A retry is durable until its round runs
// (invariant 7): in the summary's Txn when it is small (a round's NotActive
// and its retry are then one write), else written before it (finish).
// Either way it survives the summary's smaller writes: a successor that
// finishes the round again after a crash in between plans it again, and
// the two merge into one round.
//
// A participant that an aborted wave round skipped is owed the retry too
// when its last ack in etcd is a failure: a failed join or an earlier
// round's error merged into this round, which never started it. The ack
// is in etcd, so a successor decides the same (chaos: an abort consumed
// such a retry 46 times in 5 minutes).
func (l *leader) planRetry(f *finishing, now time.Time) error {
	var failed []schema.PluginID
	for _, p := range f.rs.parts {
		switch o := f.rs.outcome[p]; {
		case o == schema.OutcomeFailed || o == schema.OutcomeTimedOut,
			o == schema.OutcomeSkipped && l.failedLast(p):
			f.retry.AddPlugin(p)
			failed = append(failed, p)
		}
	}
	if len(failed) > 0 {
		var err error
		if f.retries, err = l.retryRequests(f.rec, failed, now); err != nil {
			return err
		}
	}
	f.retryInTxn = len(f.retries) <= retryOpsInSummary && putsSize(f.retries) <= l.cfg.WriteBudget/4
	if f.retryInTxn {
		for _, p := range f.retries {
			f.extra = append(f.extra, clientv3.OpPut(p.key, string(p.val)))
		}
	}
	return nil
}

// writeRetries writes the retry's requests on their own, once.
func (l *leader) writeRetries(f *finishing) error {
	if f.retryWritten {
		return nil
	}
	f.retryWritten = true
	lost, err := l.writePuts(nil, f.retries)
	if lost > 0 {
		l.log.WithField("revision", f.rec.Revision).WithField("requests", lost).
			Error("coordinator: etcd refuses a retry request for good; its plugins get no retry round (check etcd's --max-request-bytes and the coordinator's permissions)")
	}
	return err
}

// summaryWrite is one Txn that may carry a finished round's summary; the
// revision record is in every one.
type summaryWrite struct {
	attempt  int  // 0: the summary as planned; 1, 2, 3: ever smaller (logged)
	outcomes bool // with the per-agent outcomes (a small round's)
	examples bool // the summary with its examples; without, it is marked truncated
	extra    bool // with the pruning and a small retry
	summary  bool // with the summary; without, the revision record alone
}

// summaryWrites are the Txns tried in turn for a finished round, each
// when etcd refused the one before for good: a small round's outcomes
// with its summary, the summary, the summary without examples, without
// the pruning and the retry, and the revision record alone.
func summaryWrites(together bool) []summaryWrite {
	ws := []summaryWrite{
		{attempt: 0, examples: true, extra: true, summary: true},
		{attempt: 1, extra: true, summary: true},
		{attempt: 2, summary: true},
		{attempt: 3},
	}
	if together {
		ws = slices.Insert(ws, 0, summaryWrite{outcomes: true, examples: true, extra: true, summary: true})
	}
	return ws
}

// writeSummary tries the summary writes in turn until etcd commits one.
// Nothing is retried forever: when etcd refuses even the revision record
// alone, the round is finished here without its NotActive recorded. Its
// error is only the end of leadership or a record that does not encode.
func (l *leader) writeSummary(f *finishing) error {
	var err error
	for _, w := range summaryWrites(f.together) {
		if err = l.trySummary(f, w); err == nil {
			if w.attempt > 0 {
				l.log.WithField("revision", f.rec.Revision).WithField("attempt", w.attempt).
					Error("coordinator: round summary written degraded (marked truncated) because etcd refused the full write for good")
			}
			return nil
		}
		if !errors.Is(err, errPermanent) {
			return err
		}
	}
	l.log.WithError(err).WithField("revision", f.rec.Revision).
		Error("coordinator: etcd refuses even the revision record for good; the round is finished here but its NotActive is not recorded (check etcd's --max-request-bytes and the coordinator's permissions)")
	return nil
}

// trySummary commits summary write w. What w leaves out and must survive
// (the outcomes, the retry) is written on its own first.
func (l *leader) trySummary(f *finishing, w summaryWrite) error {
	if !w.outcomes {
		if err := l.writeOutcomes(f); err != nil {
			return err
		}
	}
	if !w.examples {
		f.rec.Examples, f.rec.Truncated = nil, true
	}
	roundVal, err := schema.Encode(f.rec)
	if err != nil {
		return err
	}
	if !w.extra {
		if err := l.writeRetries(f); err != nil {
			return err
		}
	}
	var ops []clientv3.Op
	if w.outcomes {
		for _, p := range f.outcomes {
			ops = append(ops, clientv3.OpPut(p.key, string(p.val)))
		}
	}
	if w.summary {
		ops = append(ops, clientv3.OpPut(l.layout.Round(f.rec.Revision), string(roundVal)))
	}
	ops = append(ops, clientv3.OpPut(l.layout.Revision(), string(f.revVal)))
	if w.extra {
		ops = append(ops, f.extra...)
	}
	if w.attempt == 0 && f.rev.Scope.IsAll() {
		// With the first wake shards when etcd takes them (not counted
		// as a degraded write when it refuses them: they go after).
		if wake := l.firstShardGroup(f.revVal, false, len(ops)); len(wake) > 0 {
			err = l.fencedTxn(append(ops, wake...))
			if !errors.Is(err, errPermanent) {
				f.revWritten, f.wokeFirst = err == nil, err == nil
				return err
			}
		}
	}
	err = l.fencedTxn(ops)
	f.revWritten = err == nil
	return err
}

// failedLast reports whether plugin p's last ack in etcd is a failure
// (error or timeout): a resync it still owes.
func (l *leader) failedLast(p schema.PluginID) bool {
	a, ok := l.acks[p]
	return ok && a.Result != schema.ResultOK
}

// finished makes f's round the last one: it remembers an unclean round's
// retry set and ends its error streaks, and tells the log, the status and
// the hooks.
func (l *leader) finished(f *finishing, now time.Time) {
	rec, rev := f.rec, f.rev
	l.rev = &rev
	l.round = nil
	if !f.retry.Empty() {
		l.rememberRetry(rec.Revision, f.retry)
	}
	l.errorRoundFinished(now)
	l.log.WithField("revision", rec.Revision).WithField("acked", rec.Counts.Acked).WithField("failed", rec.Counts.Failed).
		WithField("timed_out", rec.Counts.TimedOut).WithField("departed", rec.Counts.Departed).WithField("truncated", rec.Truncated).
		WithField("duration_ms", rec.DurationMS).Info("coordinator: round finished")
	l.co.setStatus(func(s *Status) { r := rev; s.Revision = &r; s.Progress = nil; s.Wave = nil })
	if wh, ok := l.co.hooks.(WaveHooks); ok && f.rs.wave != nil {
		wh.WaveChanged(nil)
	}
	l.co.hooks.RoundFinished(rec)
}
