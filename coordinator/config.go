package coordinator

import (
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/resyncd/resync/internal/defaults"
	"github.com/resyncd/resync/schema"
)

// Config configures a Coordinator. Zero fields take their defaults.
type Config struct {
	// ID identifies this coordinator in the election and in every record it
	// writes (default: <hostname>-<pid>). 1-128 characters [A-Za-z0-9._-].
	ID string
	// Prefix is the etcd key prefix (default schema.DefaultPrefix).
	Prefix string
	// SessionTTL is the lease TTL of the election session: how long after a
	// crashed leader a standby takes over (default 5 s; at least 1 s).
	SessionTTL time.Duration
	// RoundDeadline bounds a round: participants still pending then are
	// timed_out (default 2 min).
	RoundDeadline time.Duration
	// CoalesceWindow is how long the leader waits after a first request for
	// more to merge into the same round (default 100 ms).
	CoalesceWindow time.Duration
	// BackoffMin and BackoffMax pace error-triggered rounds per agent (a
	// ReportError, or a retry of failed or timed-out participants): the
	// first comes BackoffMin after the error, each further one of the
	// agent's streak twice as long after the previous one, up to
	// BackoffMax. The streak ends after a quiet period of 2 x BackoffMax
	// without a new error from the agent (not after a clean round), and
	// survives failover (defaults 1 s and 1 min). See streaks.go.
	BackoffMin, BackoffMax time.Duration
	// History is how many round summaries are kept under rounds/ (default 100).
	History int
	// DetailHistory is how many rounds keep their per-agent records
	// (rounds/<N>/agents/, rounds/<N>/scope/): older rounds keep only their
	// summary rounds/<N>, so that etcd holds about DetailHistory x agents
	// such keys, not History x agents (default 10; larger than History acts as
	// History; at least 1: a retry reads the last round's failures).
	DetailHistory int
	// WriteBudget bounds the bytes of one etcd request the leader writes
	// (keys plus values of a Txn's operations, default 512 KiB, at least
	// 16 KiB): well below etcd's --max-request-bytes (1.5 MiB by default).
	// A per-agent record gets at most half of it; beyond that its error
	// texts are cut, then dropped, and the record marked truncated.
	WriteBudget int
	// OpTimeout bounds each etcd call (default 5 s).
	OpTimeout time.Duration
	// Wave is the rollout knobs every round takes (schema.Wave): a
	// request may only tighten them. Its MaxInFlight is also the write
	// budget of a round: at most that many agents reload and write their
	// acks at once. Default: none (no knob set: rounds run all at once).
	Wave schema.Wave
}

// DefaultConfig returns the defaults; New fills every zero field of a Config
// from it (withDefaults), and Validate checks the result.
func DefaultConfig() Config {
	host, _ := os.Hostname()
	id := fmt.Sprintf("%s-%d", host, os.Getpid())
	if schema.ValidateToken("coordinator id", id) != nil {
		id = fmt.Sprintf("coordinator-%d", os.Getpid())
	}
	return Config{
		// Unique enough per process; logged and written in every record.
		ID: id,
		// The prefix agents and resyncctl use by default.
		Prefix: schema.DefaultPrefix,
		// A crashed leader is replaced within 5 s; the keepalive runs every
		// TTL/3, so a loaded etcd does not depose a live leader.
		SessionTTL: 5 * time.Second,
		// Twelve of the agents' default ack timeouts (10 s): only alive but
		// unresponsive agents reach it.
		RoundDeadline: 2 * time.Minute,
		// Long enough to merge a burst of requests into one round, short
		// beside a resync.
		CoalesceWindow: 100 * time.Millisecond,
		// An agent in trouble is resynced within a second, then at most
		// once a minute while its errors go on.
		BackoffMin: time.Second,
		BackoffMax: time.Minute,
		// More than the 64 recent rounds a new leader replays to rebuild
		// the backoff streaks (historyScan); each summary is bounded in size.
		History: 100,
		// Per-agent records cost a key per agent and round: keep 10 rounds.
		DetailHistory: 10,
		// A third of etcd's default --max-request-bytes (1.5 MiB).
		WriteBudget: 512 << 10,
		// An etcd call slower than this is treated as failed and retried.
		OpTimeout: 5 * time.Second,
	}
}

// withDefaults is c with its zero fields from DefaultConfig, and DetailHistory
// capped at History: the configuration New runs and Validate checks.
func (c Config) withDefaults() Config {
	c = defaults.Fill(c, DefaultConfig())
	c.DetailHistory = min(c.DetailHistory, max(c.History, 1))
	return c
}

// Validate checks ranges and cross-field rules of the configuration that
// runs: c with its zero fields from DefaultConfig.
func (c Config) Validate() error {
	c = c.withDefaults()
	if err := schema.ValidateToken("coordinator id", c.ID); err != nil {
		return fmt.Errorf("coordinator: config: %w", err)
	}
	if _, err := schema.NewLayout(c.Prefix); err != nil {
		return fmt.Errorf("coordinator: config: %w", err)
	}
	switch {
	case c.SessionTTL < time.Second:
		return fmt.Errorf("coordinator: config: SessionTTL %v is below the 1s minimum of etcd leases", c.SessionTTL)
	case c.RoundDeadline < 0, c.CoalesceWindow < 0, c.BackoffMin < 0, c.BackoffMax < 0, c.OpTimeout < 0, c.History < 0:
		return errors.New("coordinator: config: durations and History must not be negative")
	case c.DetailHistory < 0:
		return errors.New("coordinator: config: DetailHistory must not be negative")
	case c.WriteBudget < 16<<10:
		return fmt.Errorf("coordinator: config: WriteBudget %d is below 16 KiB", c.WriteBudget)
	case c.BackoffMax < c.BackoffMin:
		return fmt.Errorf("coordinator: config: BackoffMax %v is below BackoffMin %v", c.BackoffMax, c.BackoffMin)
	case c.RoundDeadline < c.CoalesceWindow:
		return fmt.Errorf("coordinator: config: RoundDeadline %v is below CoalesceWindow %v", c.RoundDeadline, c.CoalesceWindow)
	}
	if err := c.Wave.Validate(); err != nil {
		return fmt.Errorf("coordinator: config: %w", err)
	}
	return nil
}
