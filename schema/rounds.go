package schema

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Bounds of the round layout. Every value the leader writes for a round is
// bounded whatever the fleet size:
//
//	revision                       fixed size (ScopeSummary, counts)
//	rounds/<N>                     fixed size (Round: counts, MaxExamples names per outcome)
//	rounds/<N>/agents/<agent>      one agent's plugins (and at the end their outcomes,
//	                               errors cut to MaxAckErrorLen after JSON escaping);
//	                               the writer's per-record budget drops error texts first
//	rounds/<N>/scope/<i>           at most MaxScopeChunk targets of a set scope
//
// The number of keys grows with the fleet (one per participating agent), never the
// size of one value; the leader writes them in fenced Txns of at most 128 operations
// and a configured byte budget.
const (
	// MaxRequestTargets bounds Request.Targets.
	MaxRequestTargets = 100
	// MaxExamples bounds the names per outcome in a round summary and the
	// first targets in a ScopeSummary.
	MaxExamples = 5
	// MaxScopeChunk bounds the targets in one rounds/<N>/scope/<i> value.
	MaxScopeChunk = 200

	maxRoundAgentValue = 1 << 20
	maxRoundScopeValue = 64 << 10
)

// ScopeSet is a round's scope: all registrations, or a set of agents and
// agent/plugin pairs. The zero value is the empty set; Add(Scope{}) makes it
// all. Union never widens beyond its members.
type ScopeSet struct {
	all     bool
	agents  map[string]bool
	plugins map[PluginID]bool
}

// AllScopes is the set of every registration.
func AllScopes() ScopeSet { return ScopeSet{all: true} }

// Add adds one target: an agent, one plugin, or (empty Scope) all.
func (s *ScopeSet) Add(sc Scope) {
	switch {
	case s.all:
	case sc.All():
		*s = ScopeSet{all: true}
	case sc.Plugin == "":
		if s.agents == nil {
			s.agents = map[string]bool{}
		}
		s.agents[sc.Agent] = true
	default:
		s.AddPlugin(PluginID{sc.Agent, sc.Plugin})
	}
}

// AddPlugin adds one plugin.
func (s *ScopeSet) AddPlugin(id PluginID) {
	if s.all {
		return
	}
	if s.plugins == nil {
		s.plugins = map[PluginID]bool{}
	}
	s.plugins[id] = true
}

// Union adds every member of o.
func (s *ScopeSet) Union(o ScopeSet) {
	if o.all {
		*s = ScopeSet{all: true}
		return
	}
	for a := range o.agents {
		s.Add(Scope{Agent: a})
	}
	for p := range o.plugins {
		s.AddPlugin(p)
	}
}

// IsAll reports whether the set is every registration.
func (s ScopeSet) IsAll() bool { return s.all }

// Empty reports whether the set selects nothing.
func (s ScopeSet) Empty() bool { return !s.all && len(s.agents) == 0 && len(s.plugins) == 0 }

// Includes reports whether the plugin is in the set.
func (s ScopeSet) Includes(agent, plugin string) bool {
	return s.all || s.agents[agent] || s.plugins[PluginID{agent, plugin}]
}

// Agents lists, sorted, the agents the set has members of: the agents it
// holds whole and those of the plugins it holds; nil for all.
func (s ScopeSet) Agents() []string {
	if s.all {
		return nil
	}
	out := make([]string, 0, len(s.agents)+len(s.plugins))
	for a := range s.agents {
		out = append(out, a)
	}
	for p := range s.plugins {
		if !s.agents[p.Agent] {
			out = append(out, p.Agent)
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// Targets lists the set's members in their escaped form (EscapeName, and
// PluginID.Key: reversible by ParseTarget whatever the names, with no ","
// in them), agents first, then the plugins whose agent is not a member
// itself, each sorted; nil for all.
func (s ScopeSet) Targets() []string {
	var agents, plugins []string
	for a := range s.agents {
		agents = append(agents, EscapeName(a))
	}
	for p := range s.plugins {
		if !s.agents[p.Agent] {
			plugins = append(plugins, p.Key())
		}
	}
	slices.Sort(agents)
	slices.Sort(plugins)
	return append(agents, plugins...)
}

// Summary is the set's fixed-size summary.
func (s ScopeSet) Summary() ScopeSummary {
	if s.all {
		return ScopeSummary{All: true}
	}
	t := s.Targets()
	sum := ScopeSummary{Agents: len(s.agents), Plugins: len(t) - len(s.agents)}
	sum.First = strings.Join(t[:min(len(t), MaxExamples)], ",")
	return sum
}

// ParseTargets turns "agent" and "agent/plugin" strings of escaped names
// (as in Targets and RoundScope) back into a set.
func ParseTargets(targets []string) (ScopeSet, error) {
	var s ScopeSet
	for _, t := range targets {
		sc, err := ParseTarget(t)
		if err != nil {
			return ScopeSet{}, err
		}
		s.Add(sc)
	}
	return s, nil
}

// ParseTarget parses "agent" or "agent/plugin", each name in its escaped
// form (EscapeName: a name of [A-Za-z0-9._-] is itself, "node 1" is
// "node%201").
func ParseTarget(t string) (Scope, error) {
	if t == "" {
		return Scope{}, errors.New("empty target: name an agent or agent/plugin")
	}
	ea, ep, hasPlugin := strings.Cut(t, "/")
	if hasPlugin && ep == "" {
		return Scope{}, fmt.Errorf("target %q: the plugin name after \"/\" is empty", t)
	}
	a, err := UnescapeName("agent", ea)
	if err != nil {
		return Scope{}, fmt.Errorf("target %q: %w", t, err)
	}
	sc := Scope{Agent: a}
	if hasPlugin {
		if sc.Plugin, err = UnescapeName("plugin", ep); err != nil {
			return Scope{}, fmt.Errorf("target %q: %w", t, err)
		}
	}
	return sc, nil
}

// ScopeSummary describes a round's scope in a fixed size: all, or the
// numbers of agents and of single plugins targeted and the first few
// targets (at most MaxExamples, comma-separated, so that the record stays
// comparable with ==). The zero value means all.
type ScopeSummary struct {
	All     bool   `json:"all,omitempty"`
	Agents  int    `json:"agents,omitempty"`
	Plugins int    `json:"plugins,omitempty"`
	First   string `json:"first,omitempty"`
}

// FirstTargets splits First.
func (s ScopeSummary) FirstTargets() []string {
	if s.First == "" {
		return nil
	}
	return strings.Split(s.First, ",")
}

// TargetAgents are the distinct agents (real names) of "agent" and
// "agent/plugin" targets (as FirstTargets and ScopeSet.Targets give them),
// in order. A target that does not parse is skipped.
func TargetAgents(targets []string) []string {
	var out []string
	for _, t := range targets {
		ea, _, _ := strings.Cut(t, "/")
		a, err := UnescapeName("agent", ea)
		if err != nil {
			continue
		}
		if !slices.Contains(out, a) {
			out = append(out, a)
		}
	}
	return out
}

// IsAll reports whether the scope is every registration.
func (s ScopeSummary) IsAll() bool { return s.Agents == 0 && s.Plugins == 0 }

// Validate checks the summary.
func (s ScopeSummary) Validate() error {
	if s.Agents < 0 || s.Plugins < 0 {
		return errors.New("scope: counts must be >= 0")
	}
	if s.All && !s.IsAll() {
		return errors.New("scope: all with agents or plugins")
	}
	first := s.FirstTargets()
	if len(first) > MaxExamples || len(first) > s.Agents+s.Plugins {
		return fmt.Errorf("scope: first lists %d targets: at most %d and no more than the scope counts", len(first), MaxExamples)
	}
	for _, t := range first {
		if _, err := ParseTarget(t); err != nil {
			return fmt.Errorf("scope: %w", err)
		}
	}
	return nil
}

// String is "all", or the targets' count and the first few names:
// "3 targets (2 agents, 1 plugin): a1, a2, a3/p1".
func (s ScopeSummary) String() string {
	if s.IsAll() {
		return "all"
	}
	n := s.Agents + s.Plugins
	first := s.FirstTargets()
	for i, t := range first { // real names, for people
		if sc, err := ParseTarget(t); err == nil {
			first[i] = sc.Agent
			if sc.Plugin != "" {
				first[i] += "/" + sc.Plugin
			}
		}
	}
	if n == 1 && len(first) == 1 {
		if s.Agents == 1 {
			return "agent " + first[0]
		}
		return "plugin " + first[0]
	}
	out := fmt.Sprintf("%d targets (%s, %s): %s", n, plural(s.Agents, "agent"), plural(s.Plugins, "plugin"), strings.Join(first, ", "))
	if more := n - len(first); more > 0 {
		out += fmt.Sprintf(", +%d more", more)
	}
	return out
}

func plural(n int, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return strconv.Itoa(n) + " " + what + "s"
}

// RoundAgent is the value of rounds/<N>/agents/<agent>: which plugins of
// the agent take part in round N (for a set scope written before the
// revision says Started, so an agent learns its participation with one Get
// of its own key; for all, right after), and, once the round completed
// (State NotActive), their outcomes.
type RoundAgent struct {
	Revision uint64   `json:"revision"`
	Agent    string   `json:"agent"`
	State    Status   `json:"state"`
	Plugins  []string `json:"plugins"`
	Acked    []string `json:"acked,omitempty"`
	Failed   []string `json:"failed,omitempty"`
	TimedOut []string `json:"timed_out,omitempty"`
	Departed []string `json:"departed,omitempty"`
	// Skipped: the plugins of an agent a wave round never started.
	Skipped []string `json:"skipped,omitempty"`
	// Wave is the agent's part in a wave round (AgentWaiting, ...; empty
	// in other rounds); Canary marks a canary; StartedAt and DoneAt are
	// the leader's times of its start and completion.
	Wave      string    `json:"wave,omitempty"`
	Canary    bool      `json:"canary,omitempty"`
	StartedAt time.Time `json:"started_at,omitzero"`
	DoneAt    time.Time `json:"done_at,omitzero"`
	// Errors maps a failed plugin to its error text, cut (see Cut) to
	// MaxAckErrorLen, or to MaxTrimmedErrorLen when Truncated.
	Errors map[string]string `json:"errors,omitempty"`
	// Truncated: error texts were dropped to keep the value within the
	// writer's budget.
	Truncated bool `json:"truncated,omitempty"`
}

// outcomeList is one outcome's list of plugins in a RoundAgent.
type outcomeList struct {
	name  Outcome
	names []string
}

func (r RoundAgent) outcomeLists() []outcomeList {
	return []outcomeList{{OutcomeAcked, r.Acked}, {OutcomeFailed, r.Failed}, {OutcomeTimedOut, r.TimedOut}, {OutcomeDeparted, r.Departed}, {OutcomeSkipped, r.Skipped}}
}

// Outcome returns the plugin's outcome: OutcomePending while the round
// runs (or if the record lists none for it), "" if it is no participant.
func (r RoundAgent) Outcome(plugin string) Outcome {
	for _, l := range r.outcomeLists() {
		if slices.Contains(l.names, plugin) {
			return l.name
		}
	}
	if slices.Contains(r.Plugins, plugin) {
		return OutcomePending
	}
	return ""
}

// Validate checks the record: valid unique names, and for a completed
// round every plugin in exactly one outcome.
func (r RoundAgent) Validate() error {
	if r.Revision == 0 {
		return errors.New("revision must be > 0")
	}
	if err := r.State.validate(); err != nil {
		return err
	}
	if err := ValidateName("agent", r.Agent); err != nil {
		return err
	}
	if err := validAgentWave(r.Wave); err != nil {
		return err
	}
	seen := make(map[string]Outcome, len(r.Plugins))
	for _, p := range r.Plugins {
		if err := ValidateName("plugin", p); err != nil {
			return err
		}
		if _, dup := seen[p]; dup {
			return fmt.Errorf("plugin %s is listed twice", p)
		}
		seen[p] = OutcomePending
	}
	for _, l := range r.outcomeLists() {
		for _, p := range l.names {
			prev, ok := seen[p]
			if !ok {
				return fmt.Errorf("%s lists %s, which is not a participant", l.name, p)
			}
			if prev != OutcomePending {
				return fmt.Errorf("%s is both %s and %s", p, prev, l.name)
			}
			seen[p] = l.name
		}
	}
	if r.State == NotActive {
		for p, o := range seen {
			if o == OutcomePending {
				return fmt.Errorf("participant %s has no outcome in a completed round", p)
			}
		}
	}
	for p, e := range r.Errors {
		if seen[p] != OutcomeFailed {
			return fmt.Errorf("errors names %s, which did not fail", p)
		}
		if err := checkText("error of "+p, e, acceptLen(MaxAckErrorLen)); err != nil {
			return err
		}
	}
	return nil
}

// RoundScope is the value of rounds/<N>/scope/<i>: the i-th chunk (at most
// MaxScopeChunk) of a set scope's targets, "agent" or "agent/plugin" of
// escaped names (ScopeSet.Targets).
type RoundScope struct {
	Revision uint64   `json:"revision"`
	Targets  []string `json:"targets"`
}

// Validate checks the record.
func (r RoundScope) Validate() error {
	if r.Revision == 0 {
		return errors.New("revision must be > 0")
	}
	if len(r.Targets) > MaxScopeChunk {
		return fmt.Errorf("%d targets in one chunk: the limit is %d", len(r.Targets), MaxScopeChunk)
	}
	for _, t := range r.Targets {
		if _, err := ParseTarget(t); err != nil {
			return err
		}
	}
	return nil
}

// DecodeRoundAgent decodes a rounds/<N>/agents/<agent> value.
func DecodeRoundAgent(key string, value []byte) (RoundAgent, error) {
	return decodeAs[RoundAgent](key, value, maxRoundAgentValue, "round agent")
}

// DecodeRoundScope decodes a rounds/<N>/scope/<i> value.
func DecodeRoundScope(key string, value []byte) (RoundScope, error) {
	return decodeAs[RoundScope](key, value, maxRoundScopeValue, "round scope")
}
