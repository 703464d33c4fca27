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
	Agents       int     `json:"agents"`
	Plugins      int     `json:"plugins_per_agent"`
	// Crash: the leader's client closed (no resign; its lease expires) ->
	// the successor's RoundStarted hook for the pending request's round.
	Crash Dist `json:"crash"`
	// Graceful: the leader's Close (resign) -> the same point.
	Graceful Dist `json:"graceful"`
	// Discarded counts samples thrown away because the old leader took the
	// request before it stopped (the successor then resumed a round).
	Discarded int `json:"discarded"`
}

var failoverSize = size{10, 10}

func measureFailover(ctx context.Context, e *env, o options, log logrus.FieldLogger) (*FailoverResult, error) {
	res := &FailoverResult{SessionTTLMs: ms(o.sessionTTL), Agents: failoverSize.Agents, Plugins: failoverSize.Plugins}
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

	var crash, graceful []time.Duration
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
			old := leader
			closed := make(chan struct{})
			t0 := time.Now()
			if kind == "crash" {
				old.c.Close() // no resign, no revoke: its lease expires after the TTL
				close(closed)
			} else {
				go func() { old.co.Close(); close(closed) }()
			}
			if err := request(ctx, e.kv, f.layout, "failover "+kind); err != nil {
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
			old.Close() // after a crash: stops its goroutines (its client is closed)
			leader = standby
			if st.resumed {
				res.Discarded++
				continue
			}
			*samples = append(*samples, d)
			progress("failover %s %d: %.1f ms", kind, len(*samples), ms(d))
		}
	}
	res.Crash, res.Graceful = dist(crash), dist(graceful)
	return res, nil
}
