package coordinator

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/sirupsen/logrus"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/resyncd/resync/internal/backoff"
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
	lost    int // detail records degraded or skipped (etcd refused them for good)
}

func newRoundState(rec schema.Round, parts []schema.PluginID) *roundState {
	rs := &roundState{rec: rec, parts: parts, outcome: make(map[schema.PluginID]schema.Outcome, len(parts))}
	for _, p := range parts {
		rs.outcome[p] = schema.OutcomePending
	}
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
		rs.errs[p] = schema.TruncateJSON(ack.Error, schema.MaxReasonLen)
	case schema.OutcomeTimedOut:
		rs.counts.TimedOut++
	case schema.OutcomeDeparted:
		rs.counts.Departed++
	}
	l.co.hooks.Resolved(p, outcome)
}

// reconcile resolves every pending participant from the current state.
func (l *leader) reconcile() {
	for p, o := range l.round.outcome {
		if o == schema.OutcomePending {
			l.resolve(p, false)
		}
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
			l.resolve(it.id, false)
			if l.swept {
				l.failedAck(it.id, *it.ack)
			}
		case it.deleted:
			delete(l.regs, it.id)
			delete(l.handled, it.id)
			delete(l.failedAcks, it.id)
			l.ordered = nil
			l.resolve(it.id, false)
		default:
			l.regs[it.id] = *it.reg
			l.ordered = nil
		}
	}
}

func (l *leader) onRequests(ev reqEvent) error {
	now := l.co.clock.Now()
	if ev.reset {
		l.requests = map[string]schema.Request{}
		l.errSeen = map[string]time.Time{}
		l.rejoins = map[string]rejoinWait{}
		l.reqsSynced = true
	}
	var garbage []string
	for _, it := range ev.items {
		switch {
		case it.deleted:
			delete(l.requests, it.key)
			delete(l.errSeen, it.key)
		case errors.Is(it.err, schema.ErrRefused):
			l.log.WithError(it.err).WithFields(logrus.Fields{"request": it.key, "writer": it.writer.String(),
				"scope": it.req.Scope.String(), "cause": it.req.Cause, "requested_by": it.req.RequestedBy}).
				Warn("coordinator: ignoring and deleting a request wider than its writer may ask for")
			l.co.hooks.Request(it.req, it.err)
			garbage = append(garbage, it.key)
		case it.err != nil:
			l.log.WithError(it.err).Warn("coordinator: deleting a malformed request")
			l.co.hooks.Request(schema.Request{}, it.err)
			garbage = append(garbage, it.key)
		default:
			if len(l.requests) == 0 {
				l.firstReq = now
			}
			if _, seen := l.requests[it.key]; !seen {
				l.co.hooks.Request(it.req, nil)
				l.log.WithField("request", it.key).WithField("writer", it.writer.String()).WithField("cause", it.req.Cause).WithField("scope", it.req.ScopeText()).
					WithField("reason", it.req.Reason).Info("coordinator: resync requested")
			}
			_, seen := l.requests[it.key]
			l.requests[it.key] = it.req
			if !seen && it.req.Cause == schema.CauseError {
				l.errorSeen(it.key, it.req, now)
			}
			if !seen && it.req.Cause == schema.CauseRejoin {
				l.rejoinSeen(it.key, it.req, now)
			}
		}
	}
	if len(garbage) > 0 {
		if err := l.fencedDelete(garbage); err != nil {
			if errors.Is(err, ErrDeposed) || l.ctx.Err() != nil {
				return err
			}
			l.log.WithError(err).Warn("coordinator: could not delete malformed requests")
		}
	}
	return nil
}

// due is when pending requests may start a round: after the coalescing
// window, and for error requests not before their backoff (backoff.go).
func (l *leader) due() time.Time {
	at := maxTime(l.firstReq.Add(l.cfg.CoalesceWindow), l.rejoinDue())
	var first time.Time
	for k, r := range l.requests {
		if r.Cause != schema.CauseError {
			return at
		}
		if d := l.errorDue(k); first.IsZero() || d.Before(first) {
			first = d
		}
	}
	return maxTime(at, first)
}

func (l *leader) nextWake() (time.Time, bool) {
	switch {
	case l.round != nil:
		return l.round.rec.Deadline, true
	case l.initial != "":
		return l.co.clock.Now(), true
	case len(l.requests) > 0:
		return l.due(), true
	}
	return time.Time{}, false
}

// step makes the decisions that depend on time and state: resume, time out,
// finish, start.
func (l *leader) step(now time.Time) error {
	if l.resume != nil {
		rec, parts := *l.resume, l.resumeParts
		if l.rebuild {
			parts = l.participants(schema.AllScopes())
		}
		if l.recordResume {
			if err := l.recordParticipants(rec.Revision, parts); err != nil {
				return err
			}
		}
		l.resume, l.resumeParts, l.rebuild, l.recordResume = nil, nil, false, false
		l.round = newRoundState(rec, parts)
		l.log.WithField("revision", rec.Revision).WithField("participants", len(parts)).Info("coordinator: resuming the running round")
		l.co.hooks.RoundStarted(l.round.rec, true)
		l.reconcile()
	}
	if !l.swept {
		l.swept = true
		l.sweepFailedAcks()
	}
	if err := l.writeFailedAcks(now); err != nil {
		return err
	}
	if l.round != nil {
		if !now.Before(l.round.rec.Deadline) && l.round.counts.Pending > 0 {
			for p, o := range l.round.outcome {
				if o == schema.OutcomePending {
					l.resolve(p, true)
				}
			}
		}
		c := l.round.counts
		l.co.setStatus(func(s *Status) { s.Progress = &c })
		if l.round.counts.Pending == 0 {
			if err := l.finish(now); err != nil {
				return err
			}
		} else {
			return nil
		}
	}
	switch {
	case l.initial != "":
		if err := l.start(now, schema.CauseInitial, l.initial, schema.AllScopes(), nil); err != nil {
			return err
		}
	case len(l.requests) > 0 && !now.Before(l.due()):
		ready := l.readyRequests(now)
		if len(ready) == 0 {
			return nil
		}
		scope, cause, reason, keys, err := mergeRequests(ready, l.retrySet)
		if err != nil {
			return err
		}
		if scope.Empty() {
			l.log.WithField("requests", len(keys)).Warn("coordinator: the pending requests select no participant (a retry whose round records are gone); consuming them without a round")
			for _, k := range keys {
				delete(l.requests, k)
			}
			if err := l.fencedDelete(keys); err != nil && (errors.Is(err, ErrDeposed) || l.ctx.Err() != nil) {
				return err
			}
			return nil
		}
		if err := l.start(now, cause, reason, scope, keys); err != nil {
			return err
		}
		l.errorRoundStarted(cause, scope, ready, now)
	default:
		return nil
	}
	// A round just started: it may be complete already (no participants,
	// or acks seen before).
	if l.round != nil && l.round.counts.Pending == 0 {
		return l.finish(now)
	}
	return nil
}

// mergeRequests coalesces pending requests into one round: the union of
// their scopes (never wider: all only if one of them asked for all), the
// first cause that is not an error, and their reasons. A retry request's
// scope (exactly the failed and timed-out participants of its round) comes
// from resolve.
func mergeRequests(reqs map[string]schema.Request, resolve func(uint64) (schema.ScopeSet, error)) (schema.ScopeSet, schema.Cause, string, []string, error) {
	keys := make([]string, 0, len(reqs))
	for k := range reqs {
		keys = append(keys, k)
	}
	sort.Strings(keys) // request ids sort by time
	cause := reqs[keys[0]].Cause
	var scope schema.ScopeSet
	seen := map[string]bool{}
	var reasons []string
	for _, k := range keys {
		r := reqs[k]
		if r.ByReference() {
			s, err := resolve(r.RetryOf)
			if err != nil {
				return schema.ScopeSet{}, "", "", nil, err
			}
			scope.Union(s)
		} else {
			scope.Union(r.ScopeSet())
		}
		if cause == schema.CauseError && r.Cause != schema.CauseError {
			cause = r.Cause
		}
		if !seen[r.Reason] {
			seen[r.Reason] = true
			reasons = append(reasons, r.Reason)
		}
	}
	reason := strings.Join(reasons, "; ")
	if len(keys) > 1 {
		reason = fmt.Sprintf("%d requests: %s", len(keys), reason)
	}
	return scope, cause, schema.Truncate(reason, schema.MaxReasonLen), keys, nil
}

// maxRetrySets bounds the unclean rounds whose retry sets a leader
// remembers. One is not enough: when two rounds in a row fail for an agent,
// the first one's retry may still be pending when the second finishes, and
// forgetting its set would pace it by the cluster-wide streak instead of
// its agent's (two retry rounds of one agent closer than the backoff).
const maxRetrySets = 64

// rememberRetry remembers round n's retry set, forgetting the oldest
// beyond maxRetrySets.
func (l *leader) rememberRetry(n uint64, s schema.ScopeSet) {
	if l.retries == nil {
		l.retries = map[uint64]schema.ScopeSet{}
	}
	l.retries[n] = s
	for len(l.retries) > maxRetrySets {
		oldest := n
		for k := range l.retries {
			oldest = min(oldest, k)
		}
		delete(l.retries, oldest)
	}
}

// retrySet is the set of failed and timed-out participants of round n:
// remembered from this term's finish, else read from rounds/<n>/agents/
// (after a failover), retried while etcd fails.
func (l *leader) retrySet(n uint64) (schema.ScopeSet, error) {
	if s, ok := l.retries[n]; ok {
		return s, nil
	}
	bo := backoff.New(retryMin, retryMax)
	for {
		ctx, cancel := context.WithTimeout(l.ctx, 4*l.cfg.OpTimeout)
		recs, bad, err := ReadRoundAgents(ctx, l.c, l.layout, n, 0)
		cancel()
		if err == nil {
			for _, b := range bad {
				l.log.WithError(b).Warn("coordinator: skipping a malformed round agent record")
			}
			var s schema.ScopeSet
			for _, r := range recs {
				for _, p := range append(append([]string(nil), r.Failed...), r.TimedOut...) {
					s.AddPlugin(schema.PluginID{Agent: r.Agent, Plugin: p})
				}
			}
			if len(recs) == 0 {
				l.log.WithField("round", n).Warn("coordinator: a retry names a round whose per-agent records are gone; it selects nobody")
			}
			l.rememberRetry(n, s)
			return s, nil
		}
		l.log.WithError(err).Warn("coordinator: reading a retried round's participants failed; retrying")
		if err := l.sleep(bo.Next()); err != nil {
			return schema.ScopeSet{}, err
		}
	}
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
	var out []schema.PluginID
	for _, id := range l.ordered {
		if scope.Includes(id.Agent, id.Plugin) {
			out = append(out, id)
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

func (l *leader) start(now time.Time, cause schema.Cause, reason string, scope schema.ScopeSet, reqKeys []string) error {
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
	// A set scope's participation goes first: an agent reads its
	// rounds/<N>/agents/<agent> when it sees such a revision Started.
	// Whatever an earlier attempt at round N left under rounds/<N>/ goes
	// before, in its own Txn (etcd refuses a Txn whose delete range
	// overlaps its puts). An all-scope round needs no record for agents
	// to start (every plugin takes part), so its records follow the start
	// Txn (which then carries the delete) and are written while agents
	// already work: the fixed cost before Started is one Txn whatever the
	// fleet size. The participants are still fixed at the start Txn: a
	// successor that finds fewer records than the summary's agents (the
	// leader died between) reads the registrations at the etcd revision
	// of the start Txn (setResume): no write is added to the round.
	//
	// records are the per-agent records (and a set scope's chunks); an
	// all-scope round encodes them only once its start is committed.
	records := func() ([]put, error) {
		puts, err := l.agentRecords(n, parts)
		if err != nil || scope.IsAll() {
			return puts, err
		}
		t := scope.Targets()
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
	byAgent(parts, func(string, []schema.PluginID) { rec.Agents++ })
	wipe := clientv3.OpDelete(l.layout.RoundDir(n), clientv3.WithPrefix())
	var lost int
	before := !scope.IsAll()
	if before {
		if err := l.fencedTxn([]clientv3.Op{wipe}); err != nil && !errors.Is(err, errPermanent) {
			return err
		}
		puts, err := records()
		if err != nil {
			return err
		}
		if lost, err = l.writePuts(nil, puts); err != nil {
			return err
		}
	}
	rec.Truncated = lost > 0
	roundVal, err := schema.Encode(rec)
	if err != nil {
		return err
	}
	revVal, err := schema.Encode(rev)
	if err != nil {
		return err
	}
	var ops []clientv3.Op
	if !before {
		ops = append(ops, wipe) // first: watchers see leftovers go before the round starts
	}
	ops = append(ops, clientv3.OpPut(l.layout.Round(n), string(roundVal)), clientv3.OpPut(l.layout.Revision(), string(revVal)))
	fixed := len(ops)
	inTxn := min(len(reqKeys), schema.MaxTxnOps-len(ops))
	for _, k := range reqKeys[:inTxn] {
		ops = append(ops, clientv3.OpDelete(k))
	}
	err = l.fencedTxn(ops)
	if errors.Is(err, errPermanent) && inTxn > 0 {
		inTxn = 0
		err = l.fencedTxn(ops[:fixed])
	}
	if errors.Is(err, errPermanent) {
		// Nothing smaller to write: drop the requests rather than retry
		// them forever.
		l.log.WithError(err).WithField("revision", n).WithField("requests", len(reqKeys)).
			Error("coordinator: etcd refuses the round's start for good; dropping its requests (check etcd's --max-request-bytes and the coordinator's permissions)")
		for _, k := range reqKeys {
			delete(l.requests, k)
		}
		l.initial = ""
		return nil
	}
	if err != nil {
		return err
	}
	if err := l.fencedDelete(reqKeys[inTxn:]); err != nil {
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
	l.initial = ""
	l.lastN, l.rev = n, &rev
	l.round = newRoundState(rec, parts)
	l.round.lost = lost
	l.log.WithField("revision", n).WithField("participants", len(parts)).WithField("agents", rec.Agents).WithField("scope", sum.String()).
		WithField("cause", cause).WithField("reason", reason).Info("coordinator: round started")
	l.co.setStatus(func(s *Status) { r := rev; s.Revision = &r })
	l.co.hooks.RoundStarted(l.round.rec, false)
	if f := l.co.faults.afterStart; f != nil {
		f(l.ctx, n, slices.Clone(parts)) // chaos only (testfaults.go)
	}
	if !before {
		puts, err := records()
		if err != nil {
			return err
		}
		lost, err := l.writePuts(nil, puts)
		l.round.lost += lost
		if err != nil {
			return err
		}
	}
	l.reconcile()
	return nil
}

// agentOutcomes are round n's per-agent records with their outcomes, each
// within half the write budget: error texts are cut, then dropped (the
// record marked truncated).
func (l *leader) agentOutcomes(rs *roundState) ([]put, error) {
	n := rs.rec.Revision
	budget := l.cfg.WriteBudget / 2
	var puts []put
	var err error
	byAgent(rs.parts, func(agent string, ps []schema.PluginID) {
		if err != nil {
			return
		}
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
			default:
				ra.Departed = append(ra.Departed, p.Plugin)
			}
		}
		key := l.layout.RoundAgent(n, agent)
		var b []byte
		if b, err = schema.Encode(ra); err != nil {
			return
		}
		if len(key)+len(b) > budget && len(ra.Errors) > 0 {
			for p, e := range ra.Errors {
				ra.Errors[p] = schema.TruncateJSON(e, 128)
			}
			ra.Truncated = true
			if b, err = schema.Encode(ra); err != nil {
				return
			}
		}
		bare := ra
		bare.Errors, bare.Truncated = nil, true
		if len(key)+len(b) > budget {
			if b, err = schema.Encode(bare); err != nil {
				return
			}
		}
		if ra.Truncated {
			rs.lost++
			l.log.WithField("key", key).WithField("budget", budget).Warn("coordinator: a per-agent record exceeds its budget; its error texts are cut (marked truncated)")
		}
		var small []byte
		if small, err = schema.Encode(bare); err != nil {
			return
		}
		puts = append(puts, put{key: key, val: b, degrade: func() []byte { return small }})
	})
	return puts, err
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
				ex.Errors[p.String()] = schema.TruncateJSON(e, 256)
			}
		case o == schema.OutcomeTimedOut && len(ex.TimedOut) < schema.MaxExamples:
			ex.TimedOut = append(ex.TimedOut, p)
		case o == schema.OutcomeDeparted && len(ex.Departed) < schema.MaxExamples:
			ex.Departed = append(ex.Departed, p)
		}
	}
	if len(ex.Failed)+len(ex.TimedOut)+len(ex.Departed) == 0 {
		return nil
	}
	return &ex
}

// retryOpsInSummary bounds the retry requests that share a round's
// summary Txn (and a quarter of the write budget their bytes); a larger
// retry's requests are written before it.
const retryOpsInSummary = 4

// retryRequests are the requests of round rec's retry: its failed and
// timed-out participants as Targets (at most MaxRequestTargets per
// request), each with RetryOf naming the round. They carry their targets
// so that the retry does not depend on the round's records (pruned after
// DetailHistory rounds, or refused for good) nor on this leader's memory.
func (l *leader) retryRequests(rec schema.Round, failed []schema.PluginID, now time.Time) ([]put, error) {
	var puts []put
	parts := (len(failed) + schema.MaxRequestTargets - 1) / schema.MaxRequestTargets
	for i := 0; len(failed) > 0; i++ {
		k := min(len(failed), schema.MaxRequestTargets)
		req := schema.Request{
			Reason: fmt.Sprintf("retry of round %d: %d failed, %d timed out", rec.Revision, rec.Counts.Failed, rec.Counts.TimedOut),
			Cause:  schema.CauseError, RetryOf: rec.Revision, RequestedBy: l.identity, RequestedAt: now.UTC(),
		}
		if parts > 1 {
			req.Reason += fmt.Sprintf(" (part %d of %d)", i+1, parts)
		}
		for _, p := range failed[:k] {
			req.Targets = append(req.Targets, schema.Scope{Agent: p.Agent, Plugin: p.Plugin})
		}
		b, err := schema.Encode(req)
		if err != nil {
			return nil, err
		}
		// The coordinator's own requests go where operators' do: a retry
		// may cover several agents.
		puts = append(puts, put{key: l.layout.OperatorRequest(schema.NewRequestID(now)), val: b})
		failed = failed[k:]
	}
	return puts, nil
}

// detailPrune is how many rounds before the kept detail each finish
// deletes the per-agent records of: more than one, so that a finish whose
// summary Txn had to be degraded (without pruning) leaves nothing behind
// for long.
const detailPrune = 8

func (l *leader) finish(now time.Time) error {
	rs := l.round
	rec := rs.rec
	rec.State = schema.NotActive
	rec.Counts = rs.counts
	rec.Examples = examples(rs)
	rec.FinishedAt = now.UTC()
	rec.DurationMS = float64(now.Sub(rec.StartedAt).Microseconds()) / 1000
	rec.FinishedBy = l.identity

	puts, err := l.agentOutcomes(rs)
	if err != nil {
		return err
	}
	// A small round's outcomes share the summary's Txn (below): one
	// write, one fsync fewer per round. Otherwise they go first.
	together := len(puts) <= schema.MaxTxnOps/2
	size := 0
	for _, p := range puts {
		size += p.size()
	}
	together = together && size <= l.cfg.WriteBudget/2
	var lost int
	if !together {
		if lost, err = l.writePuts(nil, puts); err != nil {
			return err
		}
	}
	rec.Truncated = rec.Truncated || rs.lost+lost > 0

	var rev schema.Revision
	if l.rev != nil && l.rev.Revision == rec.Revision {
		rev = *l.rev
	} else { // resumed from a round record
		rev = schema.Revision{Revision: rec.Revision, Reason: rec.Reason, Cause: rec.Cause, Scope: rec.Scope,
			Participants: rec.Counts.Participants, StartedAt: rec.StartedAt, Deadline: rec.Deadline}
	}
	rev.State, rev.FinishedAt, rev.Leader, rev.Epoch = schema.NotActive, rec.FinishedAt, l.identity, l.epoch
	revVal, err := schema.Encode(rev)
	if err != nil {
		return err
	}

	var extra []clientv3.Op
	if keep := uint64(l.cfg.History); rec.Revision > keep {
		extra = append(extra, clientv3.OpDelete(l.layout.Round(1), clientv3.WithRange(l.layout.Round(rec.Revision-keep+1))))
	}
	for i := uint64(0); i < detailPrune; i++ {
		dk := uint64(l.cfg.DetailHistory) + i
		if rec.Revision <= dk {
			break
		}
		extra = append(extra, clientv3.OpDelete(l.layout.RoundDir(rec.Revision-dk), clientv3.WithPrefix()))
	}
	clean := rec.Clean()
	var retry schema.ScopeSet
	var retries []put
	if !clean {
		var failed []schema.PluginID
		for _, p := range rs.parts {
			if o := rs.outcome[p]; o == schema.OutcomeFailed || o == schema.OutcomeTimedOut {
				retry.AddPlugin(p)
				failed = append(failed, p)
			}
		}
		if retries, err = l.retryRequests(rec, failed, now); err != nil {
			return err
		}
	}
	// A retry is durable until its round runs (invariant 7): in the
	// summary Txn when it is small (a round's NotActive and its retry are
	// then one write), else written before it. Either way it survives the
	// summary's smaller fallbacks below: a successor that finishes the
	// round again after a crash in between plans it again, and the two
	// merge into one round.
	retrySize := 0
	for _, p := range retries {
		retrySize += p.size()
	}
	retryInTxn := len(retries) <= retryOpsInSummary && retrySize <= l.cfg.WriteBudget/4
	retryWritten := false
	writeRetries := func() error {
		if retryWritten {
			return nil
		}
		retryWritten = true
		lost, err := l.writePuts(nil, retries)
		if lost > 0 {
			l.log.WithField("revision", rec.Revision).WithField("requests", lost).
				Error("coordinator: etcd refuses a retry request for good; its plugins get no retry round (check etcd's --max-request-bytes and the coordinator's permissions)")
		}
		return err
	}
	if retryInTxn {
		for _, p := range retries {
			extra = append(extra, clientv3.OpPut(p.key, string(p.val)))
		}
	} else if err := writeRetries(); err != nil {
		return err
	}
	// The summary Txn, smaller on each refusal for good: without examples,
	// without pruning and the retry (then written on its own), the
	// revision alone. Nothing is retried
	// forever: the round completes.
	for attempt := 0; ; attempt++ {
		if attempt > 0 {
			rec.Examples, rec.Truncated = nil, true
		}
		roundVal, err := schema.Encode(rec)
		if err != nil {
			return err
		}
		var ops []clientv3.Op
		if together && attempt == 0 {
			for _, p := range puts {
				ops = append(ops, clientv3.OpPut(p.key, string(p.val)))
			}
			ops = append(ops, clientv3.OpPut(l.layout.Round(rec.Revision), string(roundVal)), clientv3.OpPut(l.layout.Revision(), string(revVal)))
			if err = l.fencedTxn(append(ops, extra...)); err == nil {
				break
			}
			if !errors.Is(err, errPermanent) {
				return err
			}
			// Refused for good: the outcomes alone (degraded where
			// needed), then the summary as for a large round.
			together = false
			if lost, err = l.writePuts(nil, puts); err != nil {
				return err
			}
			rec.Truncated = rec.Truncated || lost > 0
			attempt = -1
			continue
		}
		if attempt >= 2 && retryInTxn {
			// The retry leaves the summary's Txn: written on its own.
			if err := writeRetries(); err != nil {
				return err
			}
		}
		switch attempt {
		case 0, 1:
			ops = append([]clientv3.Op{clientv3.OpPut(l.layout.Round(rec.Revision), string(roundVal)), clientv3.OpPut(l.layout.Revision(), string(revVal))}, extra...)
		case 2:
			ops = []clientv3.Op{clientv3.OpPut(l.layout.Round(rec.Revision), string(roundVal)), clientv3.OpPut(l.layout.Revision(), string(revVal))}
		case 3:
			ops = []clientv3.Op{clientv3.OpPut(l.layout.Revision(), string(revVal))}
		}
		err = l.fencedTxn(ops)
		if err == nil {
			if attempt > 0 {
				l.log.WithField("revision", rec.Revision).WithField("attempt", attempt).
					Error("coordinator: round summary written degraded (marked truncated) because etcd refused the full write for good")
			}
			break
		}
		if !errors.Is(err, errPermanent) {
			return err
		}
		if attempt == 3 {
			l.log.WithError(err).WithField("revision", rec.Revision).
				Error("coordinator: etcd refuses even the revision record for good; the round is finished here but its NotActive is not recorded (check etcd's --max-request-bytes and the coordinator's permissions)")
			break
		}
	}
	l.rev = &rev
	l.round = nil
	if !clean {
		l.rememberRetry(rec.Revision, retry)
	}
	l.errorRoundFinished(now)
	l.log.WithField("revision", rec.Revision).WithField("acked", rec.Counts.Acked).WithField("failed", rec.Counts.Failed).
		WithField("timed_out", rec.Counts.TimedOut).WithField("departed", rec.Counts.Departed).WithField("truncated", rec.Truncated).
		WithField("duration_ms", rec.DurationMS).Info("coordinator: round finished")
	l.co.setStatus(func(s *Status) { r := rev; s.Revision = &r; s.Progress = nil })
	l.co.hooks.RoundFinished(rec)
	return nil
}
