package coordinator

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"sort"
	"strings"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/resyncd/resync/internal/backoff"
	"github.com/resyncd/resync/schema"
)

// Requests under requests/ ask for rounds: the leader follows them
// (onRequests), waits until they are due (due, readyRequests), merges the
// ready ones into one round (startRequested, mergeRequests) and deletes
// them with the round's start. An unclean round's retry is a request too
// (retryRequests), and its scope is the round's retry set (retrySet).

// onRequests applies a change of the pending requests: new ones are
// reported and paced, and those malformed or wider than their writer may
// ask for are deleted. Its error is only the end of leadership.
func (l *leader) onRequests(ev reqEvent) error {
	now := l.co.clock.Now()
	if ev.reset {
		l.requests = map[string]schema.Request{}
		l.errSeen = map[string]time.Time{}
		l.rejoins = map[string]rejoinWait{}
		l.controls = map[string]schema.Request{}
		l.reqsSynced = true
	}
	var garbage []string
	for _, it := range ev.items {
		switch {
		case it.deleted:
			delete(l.requests, it.key)
			delete(l.errSeen, it.key)
			delete(l.controls, it.key)
		case it.err == nil && it.req.Control != nil:
			l.controlSeen(it)
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
// window, and for error requests not before their backoff (streaks.go).
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

// readyRequests are the pending requests a round started now takes: all of
// them when one is not an error (that round covers their scopes anyway),
// else the error requests due within the coalescing window, and every
// other error request of their agents (the round answers them too); the
// others wait for their backoff.
func (l *leader) readyRequests(now time.Time) map[string]schema.Request {
	ready := make(map[string]schema.Request, len(l.requests))
	agents := map[string]bool{}
	for k, r := range l.requests {
		if r.Cause != schema.CauseError {
			maps.Copy(ready, l.requests)
			return ready
		}
		if !now.Add(l.cfg.CoalesceWindow).Before(l.errorDue(k)) {
			ready[k] = r
			for _, a := range l.requestKeys(r) {
				agents[a] = true
			}
		}
	}
	for k, r := range l.requests {
		keys := l.requestKeys(r)
		if len(keys) == 1 && agents[keys[0]] {
			ready[k] = r
		}
	}
	return ready
}

// startRequested starts one round for the ready requests (readyRequests),
// merged (mergeRequests). Requests that select no participant are
// consumed without a round. started: start was called.
func (l *leader) startRequested(now time.Time) (started bool, err error) {
	ready := l.readyRequests(now)
	if len(ready) == 0 {
		return false, nil
	}
	scope, cause, reason, keys, err := mergeRequests(ready, l.retrySet)
	if err != nil {
		return false, err
	}
	if scope.Empty() {
		return false, l.consumeWithoutRound(keys)
	}
	var waves []schema.Wave
	for _, r := range ready {
		if r.Wave != nil {
			waves = append(waves, *r.Wave)
		}
	}
	if err := l.start(now, cause, reason, scope, keys, waves); err != nil {
		return true, err
	}
	l.errorRoundStarted(cause, scope, ready, now)
	return true, nil
}

// consumeWithoutRound deletes requests that select no participant (a
// retry whose round records are gone). Its error is only the end of
// leadership.
func (l *leader) consumeWithoutRound(keys []string) error {
	l.log.WithField("requests", len(keys)).Warn("coordinator: the pending requests select no participant (a retry whose round records are gone); consuming them without a round")
	for _, k := range keys {
		delete(l.requests, k)
	}
	if err := l.fencedDelete(keys); err != nil && (errors.Is(err, ErrDeposed) || l.ctx.Err() != nil) {
		return err
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
	return scope, cause, schema.Cut(reason, schema.MaxReasonLen), keys, nil
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
	var s schema.ScopeSet
	err := l.retry(backoff.New(retryMin, retryMax), func(context.Context) error {
		ctx, cancel := context.WithTimeout(l.ctx, 4*l.cfg.OpTimeout)
		defer cancel()
		recs, bad, err := ReadRoundAgents(ctx, l.c, l.layout, n, 0)
		if err != nil {
			return err
		}
		for _, b := range bad {
			l.log.WithError(b).Warn("coordinator: skipping a malformed round agent record")
		}
		for _, r := range recs {
			for _, p := range append(append([]string(nil), r.Failed...), r.TimedOut...) {
				s.AddPlugin(schema.PluginID{Agent: r.Agent, Plugin: p})
			}
		}
		if len(recs) == 0 {
			l.log.WithField("round", n).Warn("coordinator: a retry names a round whose per-agent records are gone; it selects nobody")
		}
		return nil
	}, func(err error, _ time.Duration) {
		l.log.WithError(err).Warn("coordinator: reading a retried round's participants failed; retrying")
	})
	if err != nil {
		return schema.ScopeSet{}, err
	}
	l.rememberRetry(n, s)
	return s, nil
}

// retryReason is the reason of a retry of n plugins; it counts the
// skipped ones that still owe a resync (planRetry) when there are any.
func retryReason(rec schema.Round, n int) string {
	r := fmt.Sprintf("retry of round %d: %d failed, %d timed out", rec.Revision, rec.Counts.Failed, rec.Counts.TimedOut)
	if owed := n - rec.Counts.Failed - rec.Counts.TimedOut; owed > 0 {
		r += fmt.Sprintf(", %d skipped with a failure unanswered", owed)
	}
	return r
}

// retryRequests are the requests of round rec's retry: its failed and
// timed-out participants as Targets (at most MaxRequestTargets per
// request), each with RetryOf naming the round. They carry their targets
// so that the retry does not depend on the round's records (pruned after
// DetailHistory rounds, or refused for good) nor on this leader's memory.
func (l *leader) retryRequests(rec schema.Round, failed []schema.PluginID, now time.Time) ([]put, error) {
	var puts []put
	reason := retryReason(rec, len(failed))
	parts := (len(failed) + schema.MaxRequestTargets - 1) / schema.MaxRequestTargets
	for i := 0; len(failed) > 0; i++ {
		k := min(len(failed), schema.MaxRequestTargets)
		req := schema.Request{
			Reason: reason,
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
