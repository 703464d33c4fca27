package coordinator

import (
	"context"
	"fmt"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/resyncd/resync/internal/backoff"
	"github.com/resyncd/resync/schema"
)

// Error-triggered rounds are paced per agent by a streak (invariant 7):
//
//   - The first error from an agent gets a round BackoffMin after it was
//     seen. While the streak lasts, each error gets its round twice as long
//     after it as the previous one did, up to BackoffMax: an agent that
//     reports errors again and again gets a round every BackoffMax.
//   - The streak ends only after a quiet period, twice BackoffMax without a
//     new error from that agent nor an error-triggered round of it. A clean round does not end it: a plugin that
//     calls ReportError in a loop while acking every round ok would
//     otherwise get a resync every BackoffMin for ever.
//   - A round of every agent (scope all, e.g. a retry of failures on
//     several agents) counts in the cluster-wide streak (key allAgents),
//     which paces every agent's errors while it lasts.
//   - The streak survives failover: the new leader replays the error-caused
//     rounds of the recent history under rounds/ (replayHistory).
//
// The rounds helper's set scopes call Reported, Due and Started once per
// agent of a scope.

// allAgents is the streak key of rounds of every agent.
const allAgents = ""

// streak is one agent's run of error-triggered rounds.
type streak struct {
	rounds    int       // error-triggered rounds in the streak
	lastRound time.Time // when the last of them started, or finished once it did
	lastError time.Time // when the last error was seen
}

// errorStreaks paces error-triggered rounds per agent. It is owned by one
// leader's goroutine (not safe for concurrent use).
type errorStreaks struct {
	min, max time.Duration
	by       map[string]*streak
}

func newErrorStreaks(min, max time.Duration) *errorStreaks {
	return &errorStreaks{min: min, max: max, by: map[string]*streak{}}
}

// quiet is how long an agent must report no error for its streak to end:
// twice BackoffMax, so that a streak's rounds (BackoffMax apart at most)
// never look quiet, also when replayed from their start times.
func (b *errorStreaks) quiet() time.Duration { return 2 * b.max }

func (b *errorStreaks) get(agent string) *streak {
	s := b.by[agent]
	if s == nil {
		s = &streak{}
		b.by[agent] = s
	}
	return s
}

// Reported notes an error from agent (allAgents for scope all) seen at now:
// a ReportError, or the retry request of a round in which the agent failed
// or timed out. A streak whose last error is a quiet period old ends first.
func (b *errorStreaks) Reported(agent string, now time.Time) {
	s := b.get(agent)
	if s.rounds > 0 && now.Sub(s.lastError) >= b.quiet() {
		*s = streak{}
	}
	s.lastError = maxTime(s.lastError, now)
	if agent != allAgents {
		if all := b.by[allAgents]; all != nil && all.rounds > 0 && now.After(all.lastError) {
			all.lastError = now // errors of any agent keep the cluster-wide streak going
		}
	}
}

// Delay is the pause the agent's next error-triggered round waits: after
// its error (no streak) or after the streak's last round.
func (b *errorStreaks) Delay(agent string) time.Duration {
	s := b.by[agent]
	if s == nil {
		return b.min
	}
	return backoff.Delay(b.min, b.max, s.rounds)
}

// Due is the earliest start of an error-triggered round for an error of
// agent seen at seen: BackoffMin after it without a streak, else Delay
// after it or after the end of the streak's last round, whichever is
// later (errors seen while a round runs are answered together, Delay after
// it); a cluster-wide streak applies to every agent.
func (b *errorStreaks) Due(agent string, seen time.Time) time.Time {
	due := b.dueOf(agent, seen)
	if agent != allAgents {
		if all := b.by[allAgents]; all != nil && all.rounds > 0 && seen.Sub(all.lastError) < b.quiet() {
			due = maxTime(due, b.dueOf(allAgents, seen))
		}
	}
	return due
}

func (b *errorStreaks) dueOf(agent string, seen time.Time) time.Time {
	s := b.by[agent]
	if s == nil || s.rounds == 0 || seen.Sub(s.lastError) >= b.quiet() {
		return seen.Add(b.min)
	}
	return maxTime(seen, s.lastRound).Add(b.Delay(agent))
}

// Started notes an error-triggered round covering agent, started at now.
func (b *errorStreaks) Started(agent string, now time.Time) {
	s := b.get(agent)
	if s.rounds > 0 && now.Sub(s.lastError) >= b.quiet() {
		*s = streak{lastError: now}
	}
	// A round of the streak is not quiet: the period counts from it too.
	s.lastError = maxTime(s.lastError, now)
	s.rounds++
	s.lastRound = now
}

// Finished notes the end of an error-triggered round covering agent: the
// streak's next round waits Delay after it (a retry waits its backoff after
// the failure), and the agent is not quiet before.
func (b *errorStreaks) Finished(agent string, now time.Time) {
	s := b.get(agent)
	s.lastRound = maxTime(s.lastRound, now)
	s.lastError = maxTime(s.lastError, now)
}

// setKeys are the streak keys of a scope set: its agents, or allAgents.
func setKeys(set schema.ScopeSet) []string {
	if set.IsAll() || set.Empty() {
		return []string{allAgents}
	}
	return schema.TargetAgents(set.Targets())
}

// summaryKeys are the streak keys of a round record's scope summary: its
// first targets' agents (all of them for small scopes), or allAgents.
func summaryKeys(sum schema.ScopeSummary) []string {
	if sum.All || sum.First == "" {
		return []string{allAgents}
	}
	return schema.TargetAgents(sum.FirstTargets())
}

// requestKeys are the streak keys of a request: its scope's agents (a
// retry's targets are its failed and timed-out participants); a retry by
// reference (RetryOf without targets, from older versions), those of the
// participants it retries when this leader knows them, else allAgents.
func (l *leader) requestKeys(req schema.Request) []string {
	if req.ByReference() {
		if set, ok := l.retries[req.RetryOf]; ok {
			return setKeys(set)
		}
		return []string{allAgents}
	}
	return setKeys(req.ScopeSet())
}

// replay rebuilds the streaks from round records, oldest first: each
// error-caused round counts for its scope's agent, its start time standing
// for the error's. The agent is not quiet until the round finished (errors
// reported meanwhile wait for the next round): on a loaded machine rounds of
// a streak are further apart than their backoff.
func (b *errorStreaks) replay(rounds []schema.Round) {
	for _, r := range rounds {
		if r.Cause != schema.CauseError {
			continue
		}
		for _, k := range summaryKeys(r.Scope) {
			b.Reported(k, r.StartedAt)
			b.Started(k, r.StartedAt)
			if !r.FinishedAt.IsZero() {
				b.Finished(k, r.FinishedAt)
			}
		}
	}
}

// historyScan bounds how many recent round records a new leader reads to
// rebuild the streaks: enough to cover a streak's ramp (log2(max/min)
// doublings) many times over.
const historyScan = 64

// replayHistory reads the round records up to last (one Txn of Gets:
// exact keys, so keys under rounds/<N>/ are not read) and replays them.
// Unreadable records are skipped: the streak is then shorter, never wrong
// about who is in it.
func (b *errorStreaks) replayHistory(ctx context.Context, c *clientv3.Client, layout schema.Layout, last uint64) error {
	n := min(last, historyScan)
	if n == 0 {
		return nil
	}
	ops := make([]clientv3.Op, 0, n)
	for i := last - n + 1; i <= last; i++ {
		ops = append(ops, clientv3.OpGet(layout.Round(i)))
	}
	resp, err := c.Txn(ctx).Then(ops...).Commit()
	if err != nil {
		return fmt.Errorf("coordinator: read recent rounds for the backoff: %w", err)
	}
	rounds := make([]schema.Round, 0, n)
	for _, r := range resp.Responses {
		for _, kv := range r.GetResponseRange().Kvs {
			if rec, err := layout.DecodeRound(string(kv.Key), kv.Value); err == nil {
				rounds = append(rounds, rec)
			}
		}
	}
	b.replay(rounds)
	return nil
}

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// errorSeen paces a new error request: its agents' streaks go on (from
// when it was requested: requests that waited through a failover keep the
// streak going), and the request may start a round at errorDue.
func (l *leader) errorSeen(key string, req schema.Request, now time.Time) {
	at := now
	if !req.RequestedAt.IsZero() && req.RequestedAt.Before(now) {
		at = req.RequestedAt
	}
	var d time.Duration
	for _, k := range l.requestKeys(req) {
		l.streaks.Reported(k, at)
		d = max(d, l.streaks.Delay(k))
	}
	l.errSeen[key] = now
	l.co.hooks.Backoff(d)
	l.log.WithField("request", key).WithField("due_in", l.errorDue(key).Sub(now).Round(time.Millisecond)).Debug("coordinator: error-triggered round planned")
}

// errorDue is when the pending error request key may start a round: the
// latest Due of its agents. It is computed afresh from the streaks: a round
// started meanwhile pushes it on.
func (l *leader) errorDue(key string) time.Time {
	var due time.Time
	for _, k := range l.requestKeys(l.requests[key]) {
		due = maxTime(due, l.streaks.Due(k, l.errSeen[key]))
	}
	return due
}

// errorRoundStarted counts an error-triggered round in the streak of every
// agent whose error it answers, and of allAgents for a round of every agent.
func (l *leader) errorRoundStarted(cause schema.Cause, scope schema.ScopeSet, reqs map[string]schema.Request, now time.Time) {
	if cause != schema.CauseError {
		return
	}
	done := map[string]bool{}
	mark := func(k string) {
		if !done[k] {
			done[k] = true
			l.streaks.Started(k, now)
			l.errKeys = append(l.errKeys, k)
		}
	}
	for _, r := range reqs {
		for _, k := range l.requestKeys(r) {
			mark(k)
		}
	}
	if scope.IsAll() {
		mark(allAgents)
	}
}

// errorRoundFinished ends the running error-triggered round in its agents'
// streaks (after a failover the resumed round is not known here: its
// successor paces from its start).
func (l *leader) errorRoundFinished(now time.Time) {
	for _, k := range l.errKeys {
		l.streaks.Finished(k, now)
	}
	l.errKeys = nil
}
