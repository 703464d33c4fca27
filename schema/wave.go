package schema

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Waves (rollout control, docs/architecture.md "Waves"). A round may run in
// waves: its participants are fixed at Started as in any round, but the
// leader starts its agents a few at a time, waking each by its own wake key
// only when it enters the window. The knobs come from a request (Wave) and
// from the coordinator's defaults, which a request may only tighten; the
// leader resolves them against the round's agents into a WavePlan, kept in
// the round's summary with the plan's state (paused, aborted, the canary
// phase). Each agent's part is in its rounds/<N>/agents/<agent> record
// (RoundAgent.Wave): waiting, started, done or skipped.

// MaxCanaryAgents bounds an explicit canary list (Wave.CanaryAgents), so
// that the round summary that records it keeps a fixed size.
const MaxCanaryAgents = 16

// CanaryPauseManual is Wave.CanaryPause's value for "wait for an
// operator's resume".
const CanaryPauseManual = "manual"

// Limit is a bound given as a count ("3") or a percentage of a round's
// agents ("10%"). The empty Limit is unset.
type Limit string

// parse returns the limit's number and whether it is a percentage.
func (l Limit) parse() (n int, pct bool, err error) {
	s := string(l)
	if rest, ok := strings.CutSuffix(s, "%"); ok {
		s, pct = rest, true
	}
	n, err = strconv.Atoi(s)
	switch {
	case err != nil || n < 0:
		return 0, false, fmt.Errorf("%q is not a count (3) or a percentage (10%%)", string(l))
	case pct && n > 100:
		return 0, false, fmt.Errorf("%q is above 100%%", string(l))
	}
	return n, pct, nil
}

// Validate checks the limit (the empty limit is valid: unset).
func (l Limit) Validate() error {
	if l == "" {
		return nil
	}
	_, _, err := l.parse()
	return err
}

// Of resolves the limit against total agents: a count as is, a
// percentage rounded down. ok is false for the empty limit.
func (l Limit) Of(total int) (n int, ok bool) {
	if l == "" {
		return 0, false
	}
	n, pct, err := l.parse()
	if err != nil {
		return 0, false
	}
	if pct {
		n = n * total / 100
	}
	return n, true
}

// Wave is a request's rollout knobs (and a coordinator's defaults); every
// field is optional, and a Wave with none set is no wave.
type Wave struct {
	// MaxInFlight bounds the agents in flight at once: from an agent's
	// first Started until each of its participating plugins resolved. A
	// percentage is of the round's agents, at least 1.
	MaxInFlight Limit `json:"max_in_flight,omitempty"`
	// Canary is how many agents go first, alone (the round's first ones in
	// agent order), unless CanaryAgents names them.
	Canary       Limit    `json:"canary,omitempty"`
	CanaryAgents []string `json:"canary_agents,omitempty"`
	// CanaryPause is how long to wait after the canaries resolved clean (a
	// Go duration, "30s"), or CanaryPauseManual: until an operator resumes.
	CanaryPause string `json:"canary_pause,omitempty"`
	// MaxFailed: once more agents than this have a failed or timed-out
	// plugin, no new agent starts and the round ends aborted.
	MaxFailed Limit `json:"max_failed,omitempty"`
	// ProgressDeadline: when no agent completes within it (a Go duration),
	// the round aborts the same way.
	ProgressDeadline string `json:"progress_deadline,omitempty"`
}

// IsZero reports whether no knob is set.
func (w Wave) IsZero() bool {
	return w.MaxInFlight == "" && w.Canary == "" && len(w.CanaryAgents) == 0 && w.CanaryPause == "" &&
		w.MaxFailed == "" && w.ProgressDeadline == ""
}

// Validate checks every knob.
func (w Wave) Validate() error {
	for _, l := range []struct {
		name string
		l    Limit
	}{{"max_in_flight", w.MaxInFlight}, {"canary", w.Canary}, {"max_failed", w.MaxFailed}} {
		if err := l.l.Validate(); err != nil {
			return fmt.Errorf("wave: %s: %w", l.name, err)
		}
	}
	if n, ok := w.MaxInFlight.Of(100); ok && n == 0 {
		return errors.New("wave: max_in_flight must be above 0")
	}
	if len(w.CanaryAgents) > MaxCanaryAgents {
		return fmt.Errorf("wave: %d canary agents: the limit is %d", len(w.CanaryAgents), MaxCanaryAgents)
	}
	if w.Canary != "" && len(w.CanaryAgents) > 0 {
		return errors.New("wave: canary and canary_agents are exclusive: give a count or a list")
	}
	for _, a := range w.CanaryAgents {
		if err := ValidateName("canary agent", a); err != nil {
			return fmt.Errorf("wave: %w", err)
		}
	}
	if _, _, err := w.canaryPause(); err != nil {
		return err
	}
	if _, err := optDuration("progress_deadline", w.ProgressDeadline); err != nil {
		return err
	}
	return nil
}

// canaryPause parses CanaryPause.
func (w Wave) canaryPause() (d time.Duration, manual bool, err error) {
	if w.CanaryPause == CanaryPauseManual {
		return 0, true, nil
	}
	d, err = optDuration("canary_pause", w.CanaryPause)
	return d, false, err
}

func optDuration(name, s string) (time.Duration, error) {
	if s == "" {
		return 0, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d < 0 {
		return 0, fmt.Errorf("wave: %s %q is not a duration (30s, 5m)", name, s)
	}
	return d, nil
}

// Wave phases (WavePlan.Phase).
const (
	// PhaseCanary: only the canaries may start.
	PhaseCanary = "canary"
	// PhaseCanaryPause: the canaries resolved clean; the rest waits until
	// WavePlan.ResumeAt, or an operator's resume when it is zero.
	PhaseCanaryPause = "canary_pause"
	// PhaseRolling: every agent may start, within the window.
	PhaseRolling = "rolling"
)

// WavePlan is a wave round's plan in its summary (Round.Wave): the knobs
// resolved against the round's agents, and the state an operator or the
// leader changed (a successor continues from it). Fixed size.
type WavePlan struct {
	// MaxInFlight is the window in agents; 0: unbounded.
	MaxInFlight int `json:"max_in_flight,omitempty"`
	// Canaries is how many agents are canaries (their records say which).
	Canaries int `json:"canaries,omitempty"`
	// CanaryPauseMS is the pause after clean canaries; CanaryManual: wait
	// for a resume instead.
	CanaryPauseMS int64 `json:"canary_pause_ms,omitempty"`
	CanaryManual  bool  `json:"canary_manual,omitempty"`
	// MaxFailed: abort once more agents than this failed; nil: never.
	MaxFailed *int `json:"max_failed,omitempty"`
	// ProgressDeadlineMS: abort when no agent completes within it; 0: never.
	ProgressDeadlineMS int64 `json:"progress_deadline_ms,omitempty"`

	Phase    string    `json:"phase"`
	ResumeAt time.Time `json:"resume_at,omitzero"` // PhaseCanaryPause's end, zero while manual
	// Paused: an operator paused the round: no agent starts until resumed.
	Paused bool `json:"paused,omitempty"`
	// Aborted says why the round aborted (empty: it did not): no agent
	// starts any more, and those never started are skipped.
	Aborted   string    `json:"aborted,omitempty"`
	AbortedAt time.Time `json:"aborted_at,omitzero"`
	// WrittenBy is the leader (ID@term) that last wrote the plan: the
	// round's starter, or a successor that changed its phase, paused,
	// resumed or aborted it. The summary's started_by stays the
	// starter's; this names the writer that its fence admitted.
	WrittenBy string `json:"written_by,omitempty"`
}

// Validate checks the plan.
func (p WavePlan) Validate() error {
	switch {
	case p.MaxInFlight < 0 || p.Canaries < 0 || p.CanaryPauseMS < 0 || p.ProgressDeadlineMS < 0:
		return errors.New("wave: counts and durations must be >= 0")
	case p.MaxFailed != nil && *p.MaxFailed < 0:
		return errors.New("wave: max_failed must be >= 0")
	}
	switch p.Phase {
	case PhaseCanary, PhaseCanaryPause, PhaseRolling:
	default:
		return fmt.Errorf("wave: phase %q is not one of canary, canary_pause, rolling", p.Phase)
	}
	return checkText("aborted", p.Aborted, acceptLen(MaxReasonLen), "written_by", p.WrittenBy)
}

// Plan resolves the knobs of ws (a request's and the coordinator's, in any
// order) against a round of agents: each knob takes the tightest value
// given (the smallest window and failure bound and progress deadline, the
// most canaries, the longest canary pause, manual above any). canaries
// names the agents of an explicit canary list (the first list given). ok is
// false when no knob is set: the round is no wave round.
func Plan(agents int, ws ...Wave) (plan WavePlan, canaries []string, ok bool) {
	for _, w := range ws {
		if w.IsZero() || w.Validate() != nil {
			continue
		}
		ok = true
		if n, set := w.MaxInFlight.Of(agents); set {
			n = max(n, 1)
			if plan.MaxInFlight == 0 || n < plan.MaxInFlight {
				plan.MaxInFlight = n
			}
		}
		if n, set := w.Canary.Of(agents); set {
			plan.Canaries = max(plan.Canaries, n)
		}
		if len(w.CanaryAgents) > 0 && canaries == nil {
			canaries = w.CanaryAgents
		}
		d, manual, _ := w.canaryPause()
		plan.CanaryManual = plan.CanaryManual || manual
		plan.CanaryPauseMS = max(plan.CanaryPauseMS, d.Milliseconds())
		if n, set := w.MaxFailed.Of(agents); set && (plan.MaxFailed == nil || n < *plan.MaxFailed) {
			plan.MaxFailed = &n
		}
		if d, _ := optDuration("", w.ProgressDeadline); d > 0 && (plan.ProgressDeadlineMS == 0 || d.Milliseconds() < plan.ProgressDeadlineMS) {
			plan.ProgressDeadlineMS = d.Milliseconds()
		}
	}
	plan.Phase = PhaseRolling
	return plan, canaries, ok
}

// Control actions (Control.Action) on a running wave round.
const (
	ActionPause  = "pause"
	ActionResume = "resume"
	ActionAbort  = "abort"
)

// Control is an operator's action on wave round Round, carried by a
// request (Request.Control) under requests/operator/: the leader applies
// it to the round's plan (fenced) and deletes the request in one Txn. A
// control of a round that is not running (or no wave round) is logged and
// deleted.
type Control struct {
	Round  uint64 `json:"round"`
	Action string `json:"action"`
}

// Validate checks the control.
func (c Control) Validate() error {
	if c.Round == 0 {
		return errors.New("control: round must be > 0")
	}
	switch c.Action {
	case ActionPause, ActionResume, ActionAbort:
		return nil
	}
	return fmt.Errorf("control: action %q is not one of pause, resume, abort", c.Action)
}

// Per-agent wave states (RoundAgent.Wave).
const (
	// AgentWaiting: the agent has not been started yet.
	AgentWaiting = "waiting"
	// AgentStarted: its wake key said Started (in the same Txn).
	AgentStarted = "started"
	// AgentDone: each of its plugins resolved; its wake key says NotActive.
	AgentDone = "done"
	// AgentSkipped: the round aborted before it started; never woken.
	AgentSkipped = "skipped"
)

func validAgentWave(s string) error {
	switch s {
	case "", AgentWaiting, AgentStarted, AgentDone, AgentSkipped:
		return nil
	}
	return fmt.Errorf("wave %q is not one of waiting, started, done, skipped", s)
}
