package coordinator

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/sirupsen/logrus"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/resyncd/resync/registry"
	"github.com/resyncd/resync/schema"
)

// Outcomes of a participant.
const (
	OutcomeAcked    = "acked"
	OutcomeFailed   = "failed"
	OutcomeTimedOut = "timed_out"
	OutcomeDeparted = "departed"
)

// roundState tracks one running round incrementally: every event resolves at
// most one participant, and completion is a counter reaching zero.
type roundState struct {
	rec     schema.Round
	outcome map[schema.PluginID]string // "" while pending
	errs    map[string]string
	counts  schema.RoundCounts
}

func newRoundState(rec schema.Round) *roundState {
	rs := &roundState{rec: rec, outcome: make(map[schema.PluginID]string, len(rec.Participants))}
	for _, p := range rec.Participants {
		rs.outcome[p] = ""
	}
	rs.counts = schema.RoundCounts{Participants: len(rs.outcome), Pending: len(rs.outcome)}
	return rs
}

// resolve sets p's outcome once; later calls for p do nothing.
func (l *leader) resolve(p schema.PluginID, outcome, errText string) {
	rs := l.round
	if rs == nil {
		return
	}
	if o, ok := rs.outcome[p]; !ok || o != "" {
		return
	}
	rs.outcome[p] = outcome
	rs.counts.Pending--
	switch outcome {
	case OutcomeAcked:
		rs.counts.Acked++
	case OutcomeFailed:
		rs.counts.Failed++
		if rs.errs == nil {
			rs.errs = map[string]string{}
		}
		rs.errs[p.String()] = schema.Truncate(errText, schema.MaxReasonLen)
	case OutcomeTimedOut:
		rs.counts.TimedOut++
	case OutcomeDeparted:
		rs.counts.Departed++
	}
	l.co.hooks.Resolved(p, outcome)
}

// resolveAck resolves p from its ack if the ack is for the running round.
func (l *leader) resolveAck(p schema.PluginID, a schema.Ack) {
	if l.round == nil || a.Revision != l.round.rec.Revision {
		return
	}
	switch a.Result {
	case schema.ResultOK:
		l.resolve(p, OutcomeAcked, "")
	case schema.ResultError:
		l.resolve(p, OutcomeFailed, a.Error)
	case schema.ResultTimeout:
		l.resolve(p, OutcomeTimedOut, "")
	}
}

// reconcile resolves every pending participant from the current state: gone
// registrations depart, acks for this round count.
func (l *leader) reconcile() {
	for p, o := range l.round.outcome {
		if o != "" {
			continue
		}
		if a, ok := l.acks[p]; ok && a.Revision == l.round.rec.Revision {
			l.resolveAck(p, a)
		} else if _, ok := l.regs[p]; !ok {
			l.resolve(p, OutcomeDeparted, "")
		}
	}
}

func (l *leader) onState(ev stateEvent) {
	for _, err := range ev.bad {
		l.log.WithError(err).Warn("coordinator: skipping a malformed record")
	}
	if ev.reset {
		l.regs, l.acks = ev.regs, ev.acks
		l.stateSynced = true
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
			l.resolveAck(it.id, *it.ack)
		case it.deleted:
			delete(l.regs, it.id)
			l.resolve(it.id, OutcomeDeparted, "")
		default:
			l.regs[it.id] = *it.reg
		}
	}
}

func (l *leader) onRequests(ev reqEvent) error {
	now := time.Now()
	if ev.reset {
		l.requests = map[string]schema.Request{}
		l.reqsSynced = true
	}
	var garbage []string
	for _, it := range ev.items {
		switch {
		case it.deleted:
			delete(l.requests, it.key)
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
				l.log.WithField("request", it.key).WithField("writer", it.writer.String()).WithField("cause", it.req.Cause).WithField("scope", it.req.Scope.String()).
					WithField("reason", it.req.Reason).Info("coordinator: resync requested")
			}
			l.requests[it.key] = it.req
			if it.req.Cause == schema.CauseError && l.errorDue.IsZero() {
				d := l.backoff()
				l.errorDue = now.Add(d)
				l.co.hooks.Backoff(d)
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

// backoff is the delay before an error-caused round.
func (l *leader) backoff() time.Duration {
	d := l.cfg.BackoffMin
	for i := 1; i < l.streak && d < l.cfg.BackoffMax; i++ {
		d *= 2
	}
	return min(d, l.cfg.BackoffMax)
}

// due is when pending requests may start a round.
func (l *leader) due() time.Time {
	at := l.firstReq.Add(l.cfg.CoalesceWindow)
	for _, r := range l.requests {
		if r.Cause != schema.CauseError {
			return at
		}
	}
	if l.errorDue.After(at) {
		return l.errorDue
	}
	return at
}

func (l *leader) nextWake() (time.Time, bool) {
	switch {
	case l.round != nil:
		return l.round.rec.Deadline, true
	case l.initial != "":
		return time.Now(), true
	case len(l.requests) > 0:
		return l.due(), true
	}
	return time.Time{}, false
}

// step makes the decisions that depend on time and state: resume, time out,
// finish, start.
func (l *leader) step(now time.Time) error {
	if l.resume != nil {
		rec := *l.resume
		if l.rebuild {
			rec.Participants = l.participants(rec.Scope)
			rec.Counts = schema.RoundCounts{Participants: len(rec.Participants)}
		}
		l.resume, l.rebuild = nil, false
		l.round = newRoundState(rec)
		l.log.WithField("revision", rec.Revision).WithField("participants", len(rec.Participants)).Info("coordinator: resuming the running round")
		l.co.hooks.RoundStarted(rec, true)
		l.reconcile()
	}
	if l.round != nil {
		if !now.Before(l.round.rec.Deadline) && l.round.counts.Pending > 0 {
			for p, o := range l.round.outcome {
				if o == "" {
					l.resolve(p, OutcomeTimedOut, "")
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
		if err := l.start(now, schema.CauseInitial, l.initial, schema.Scope{}, nil); err != nil {
			return err
		}
	case len(l.requests) > 0 && !now.Before(l.due()):
		scope, cause, reason, keys := mergeRequests(l.requests)
		if err := l.start(now, cause, reason, scope, keys); err != nil {
			return err
		}
	default:
		return nil
	}
	// A round just started: it may be complete already (no participants,
	// or acks seen before).
	if l.round.counts.Pending == 0 {
		return l.finish(now)
	}
	return nil
}

// mergeRequests coalesces pending requests into one round: the narrowest
// scope covering all of them, the first cause, and their reasons.
func mergeRequests(reqs map[string]schema.Request) (schema.Scope, schema.Cause, string, []string) {
	keys := make([]string, 0, len(reqs))
	for k := range reqs {
		keys = append(keys, k)
	}
	sort.Strings(keys) // request ids sort by time
	first := reqs[keys[0]]
	scope, cause := first.Scope, first.Cause
	seen := map[string]bool{}
	var reasons []string
	for _, k := range keys {
		r := reqs[k]
		switch {
		case scope == r.Scope:
		case scope.Agent != "" && scope.Agent == r.Scope.Agent:
			scope = schema.Scope{Agent: scope.Agent}
		default:
			scope = schema.Scope{}
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
	return scope, cause, schema.Truncate(reason, schema.MaxReasonLen), keys
}

// participants are the live registrations in scope, by agent and order.
func (l *leader) participants(scope schema.Scope) []schema.PluginID {
	var regs []schema.Registration
	for id, r := range l.regs {
		if scope.Includes(id.Agent, id.Plugin) {
			regs = append(regs, r)
		}
	}
	registry.SortRegistrations(regs)
	out := make([]schema.PluginID, len(regs))
	for i, r := range regs {
		out[i] = r.ID()
	}
	return out
}

func (l *leader) start(now time.Time, cause schema.Cause, reason string, scope schema.Scope, reqKeys []string) error {
	n := l.lastN + 1
	parts := l.participants(scope)
	rec := schema.Round{
		Revision: n, State: schema.Started, Reason: reason, Cause: cause, Scope: scope,
		Counts: schema.RoundCounts{Participants: len(parts), Pending: len(parts)}, Participants: parts,
		StartedAt: now.UTC(), Deadline: now.Add(l.cfg.RoundDeadline).UTC(), StartedBy: l.identity,
	}
	rev := schema.Revision{
		Revision: n, State: schema.Started, Reason: reason, Cause: cause, Scope: scope, Participants: len(parts),
		StartedAt: rec.StartedAt, Deadline: rec.Deadline, Leader: l.identity, Epoch: l.epoch,
	}
	roundVal, err := schema.Encode(rec)
	if err != nil {
		return err
	}
	revVal, err := schema.Encode(rev)
	if err != nil {
		return err
	}
	ops := []clientv3.Op{clientv3.OpPut(l.layout.Round(n), string(roundVal)), clientv3.OpPut(l.layout.Revision(), string(revVal))}
	inTxn := min(len(reqKeys), maxTxnOps-len(ops))
	for _, k := range reqKeys[:inTxn] {
		ops = append(ops, clientv3.OpDelete(k))
	}
	if err := l.fencedTxn(ops); err != nil {
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
	l.errorDue = time.Time{}
	l.initial = ""
	l.lastN, l.rev = n, &rev
	l.round = newRoundState(rec)
	l.log.WithField("revision", n).WithField("participants", len(parts)).WithField("scope", scope.String()).
		WithField("cause", cause).WithField("reason", reason).Info("coordinator: round started")
	l.co.setStatus(func(s *Status) { r := rev; s.Revision = &r })
	l.co.hooks.RoundStarted(rec, false)
	l.reconcile()
	return nil
}

func (l *leader) finish(now time.Time) error {
	rs := l.round
	rec := rs.rec
	rec.State = schema.NotActive
	rec.Acked, rec.Failed, rec.TimedOut, rec.Departed = nil, nil, nil, nil
	for _, p := range rec.Participants {
		switch rs.outcome[p] {
		case OutcomeAcked:
			rec.Acked = append(rec.Acked, p)
		case OutcomeFailed:
			rec.Failed = append(rec.Failed, p)
		case OutcomeTimedOut:
			rec.TimedOut = append(rec.TimedOut, p)
		case OutcomeDeparted:
			rec.Departed = append(rec.Departed, p)
		}
	}
	rec.Counts = rs.counts
	rec.Errors = rs.errs
	rec.FinishedAt = now.UTC()
	rec.DurationMS = float64(now.Sub(rec.StartedAt).Microseconds()) / 1000
	rec.FinishedBy = l.identity
	var rev schema.Revision
	if l.rev != nil && l.rev.Revision == rec.Revision {
		rev = *l.rev
	} else { // resumed from a round record
		rev = schema.Revision{Revision: rec.Revision, Reason: rec.Reason, Cause: rec.Cause, Scope: rec.Scope,
			Participants: len(rec.Participants), StartedAt: rec.StartedAt, Deadline: rec.Deadline}
	}
	rev.State, rev.FinishedAt, rev.Leader, rev.Epoch = schema.NotActive, rec.FinishedAt, l.identity, l.epoch

	roundVal, err := schema.Encode(rec)
	if err != nil {
		return err
	}
	revVal, err := schema.Encode(rev)
	if err != nil {
		return err
	}
	ops := []clientv3.Op{clientv3.OpPut(l.layout.Round(rec.Revision), string(roundVal)), clientv3.OpPut(l.layout.Revision(), string(revVal))}
	if keep := uint64(l.cfg.History); rec.Revision > keep {
		ops = append(ops, clientv3.OpDelete(l.layout.Round(1), clientv3.WithRange(l.layout.Round(rec.Revision-keep+1))))
	}
	clean := rec.Clean()
	if !clean {
		retry := schema.Request{
			Reason: fmt.Sprintf("retry of round %d: %d failed, %d timed out", rec.Revision, len(rec.Failed), len(rec.TimedOut)),
			Cause:  schema.CauseError, Scope: retryScope(rec), RequestedBy: l.identity, RequestedAt: now.UTC(),
		}
		b, err := schema.Encode(retry)
		if err != nil {
			return err
		}
		// The coordinator's own requests go where operators' do: a retry
		// may cover several agents.
		ops = append(ops, clientv3.OpPut(l.layout.OperatorRequest(schema.NewRequestID(now)), string(b)))
	}
	if err := l.fencedTxn(ops); err != nil {
		return err
	}
	l.rev = &rev
	l.round = nil
	if clean {
		l.streak = 0
	} else {
		l.streak++
		d := l.backoff()
		l.errorDue = now.Add(d)
		l.co.hooks.Backoff(d)
	}
	l.log.WithField("revision", rec.Revision).WithField("acked", len(rec.Acked)).WithField("failed", len(rec.Failed)).
		WithField("timed_out", len(rec.TimedOut)).WithField("departed", len(rec.Departed)).
		WithField("duration_ms", rec.DurationMS).Info("coordinator: round finished")
	l.co.setStatus(func(s *Status) { r := rev; s.Revision = &r; s.Progress = nil })
	l.co.hooks.RoundFinished(rec)
	return nil
}

// retryScope covers the failed and timed-out participants of rec.
func retryScope(rec schema.Round) schema.Scope {
	bad := append(append([]schema.PluginID(nil), rec.Failed...), rec.TimedOut...)
	if len(bad) == 0 {
		return rec.Scope
	}
	scope := schema.Scope{Agent: bad[0].Agent, Plugin: bad[0].Plugin}
	for _, p := range bad[1:] {
		switch {
		case p.Agent != scope.Agent:
			return schema.Scope{}
		case p.Plugin != scope.Plugin:
			scope.Plugin = ""
		}
	}
	return scope
}

// fencedTxn applies ops only while our leader key still has our create
// revision. A refused guard means deposed (no retry); an etcd error is
// retried (the ops are idempotent) until leadership is lost.
func (l *leader) fencedTxn(ops []clientv3.Op) error {
	pause := 50 * time.Millisecond
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
		l.log.WithError(err).WithField("retry_in", pause).Warn("coordinator: fenced write failed; retrying")
		if err := l.sleep(pause); err != nil {
			return err
		}
		pause = min(2*pause, time.Second)
	}
}

// fencedDelete deletes keys in fenced batches.
func (l *leader) fencedDelete(keys []string) error {
	for len(keys) > 0 {
		n := min(len(keys), maxTxnOps)
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
