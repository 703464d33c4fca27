package main

import (
	"context"
	"fmt"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/resyncd/resync/coordinator"
)

// FailoverResult holds both kinds of failover.
type FailoverResult struct {
	SessionTTLMs float64 `json:"session_ttl_ms"`
	// StandbySettleMs: the standby campaigned this long before the leader
	// stopped.
	StandbySettleMs float64 `json:"standby_settle_ms"`
	Agents          int     `json:"agents"`
	Plugins         int     `json:"plugins_per_agent"`
	// Crash: the leader's client closed (no resign; its lease expires) ->
	// the successor's RoundStarted hook for the pending request's round.
	Crash Dist `json:"crash"`
	// Graceful: the leader's Close (resign) -> the same point.
	Graceful Dist `json:"graceful"`
	// CrashLeading and GracefulLeading: the leader stops -> the successor's
	// Leading(true) hook (elected; it then reads the state and starts the
	// round).
	CrashLeading    Dist `json:"crash_to_leading"`
	GracefulLeading Dist `json:"graceful_to_leading"`
	// GracefulClose: how long the old leader's Close took (resign, revoke,
	// goroutines ended).
	GracefulClose Dist `json:"graceful_close"`
	// Discarded counts samples thrown away because the old leader took the
	// request before it stopped (the successor then resumed a round).
	Discarded int `json:"discarded"`
	// CloseFailed counts graceful samples thrown away because the old
	// leader's Close failed: its lease was not revoked, so the handover
	// waited for the session TTL and was no graceful one.
	CloseFailed int `json:"graceful_close_failed"`
	// NotLeading counts attempts thrown away because the leader to be
	// stopped had lost its leadership before (none should).
	NotLeading int `json:"not_leading"`
}

var failoverSize = size{Agents: 10, Plugins: 10}

func measureFailover(ctx context.Context, e *env, o options, log logrus.FieldLogger) (*FailoverResult, error) {
	res := &FailoverResult{SessionTTLMs: ms(o.sessionTTL), StandbySettleMs: ms(o.standbySettle), Agents: failoverSize.Agents, Plugins: failoverSize.Plugins}
	prefix := "/bench/failover/"
	f, err := startFleet(ctx, e, failoverSize, prefix, o.agentsPerClient, log)
	if err != nil {
		return res, err
	}
	defer f.Close()
	want := failoverSize.participants()
	cfg := func(i int) coordinator.Config {
		return coordinator.Config{ID: fmt.Sprintf("c%d", i), Prefix: prefix, SessionTTL: o.sessionTTL, CoalesceWindow: o.coalesce}
	}
	id := 0
	leader, err := startCoord(e, cfg(id), log)
	if err != nil {
		return res, err
	}
	defer func() { leader.Close() }()
	fin, err := waitRound(ctx, leader.hooks.finished, 2*time.Minute, "initial RoundFinished")
	if err != nil {
		return res, err
	}
	if err := checkClean(fin.round, want); err != nil {
		return res, err
	}

	var crash, graceful, crashLead, gracefulLead, closeDur []time.Duration
	for _, kind := range []string{"crash", "graceful"} {
		samples := &crash
		if kind == "graceful" {
			samples = &graceful
		}
		for attempt := 0; len(*samples) < o.failovers && attempt < 3*o.failovers; attempt++ {
			id++
			standby, err := startCoord(e, cfg(id), log)
			if err != nil {
				return res, err
			}
			err = waitFor(ctx, 30*time.Second, "the standby's campaign", func() (bool, error) {
				n, err := e.count(ctx, f.layout.Election()+"/")
				return n == 2, err
			})
			if err != nil {
				standby.Close()
				return res, err
			}
			// A standby that has just campaigned waits on a watch that etcd
			// serves from its "unsynced" group, caught up every 100 ms
			// (watchResyncPeriod): stopping the leader within that time
			// adds up to 100 ms that a long-standing standby does not pay.
			select {
			case <-time.After(o.standbySettle):
			case <-ctx.Done():
				standby.Close()
				return res, ctx.Err()
			}
			if !leader.hooks.leading.Load() || standby.hooks.leading.Load() {
				// Leadership moved before the stop (a lost session on the
				// busy machine): whatever followed would be no failover.
				progress("failover %s: %s was no longer the leader before it was stopped; not a sample", kind, leader.co.ID())
				res.NotLeading++
				leader.Close()
				leader = standby
				continue
			}
			old := leader
			closed := make(chan struct{})
			var closeTook time.Duration
			var closeErr error // read after closed
			t0 := time.Now()
			if kind == "crash" {
				old.c.Close() // no resign, no revoke: its lease expires after the TTL
				close(closed)
			} else {
				go func() { closeErr = old.co.Close(); closeTook = time.Since(t0); close(closed) }()
			}
			if err := request(ctx, e.kv, f.layout, "failover "+kind, 0); err != nil {
				standby.Close()
				return res, err
			}
			st, err := waitRound(ctx, standby.hooks.started, 5*o.sessionTTL+30*time.Second, "the successor's RoundStarted")
			if err != nil {
				standby.Close()
				return res, err
			}
			d := st.at.Sub(t0)
			fin, err := waitRound(ctx, standby.hooks.finished, 2*time.Minute, "the successor's RoundFinished")
			if err != nil {
				standby.Close()
				return res, err
			}
			if err := checkClean(fin.round, want); err != nil {
				standby.Close()
				return res, err
			}
			<-closed
			if closeErr != nil {
				// The revoke failed: the old leader's election key stayed
				// until its session TTL, which this handover then waited for.
				progress("failover %s: closing the old leader %s: %v (its election key vanished only after the session TTL; not a sample)", kind, old.co.ID(), closeErr)
			}
			if kind == "crash" {
				// Stops its goroutines; the revoke fails on the closed
				// client, as a crashed leader's would: nothing to report.
				_ = old.co.Close()
			}
			old.c.Close()
			leader = standby
			if st.resumed {
				res.Discarded++
				continue
			}
			if closeErr != nil {
				res.CloseFailed++
				continue
			}
			*samples = append(*samples, d)
			lead := time.Unix(0, standby.hooks.leadingAt.Load()).Sub(t0)
			if kind == "crash" {
				crashLead = append(crashLead, lead)
			} else {
				gracefulLead = append(gracefulLead, lead)
				closeDur = append(closeDur, closeTook)
			}
			progress("failover %s %d: %.1f ms (successor leading after %.1f ms)", kind, len(*samples), ms(d), ms(lead))
		}
	}
	res.Crash, res.Graceful = dist(crash), dist(graceful)
	res.CrashLeading, res.GracefulLeading, res.GracefulClose = dist(crashLead), dist(gracefulLead), dist(closeDur)
	return res, nil
}
