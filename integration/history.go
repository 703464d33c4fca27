package integration

import (
	"encoding/json"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/resyncd/resync/coordinator"
	"github.com/resyncd/resync/schema"
)

// Event is one status event a plugin incarnation received.
type Event struct {
	Seq         uint64 // global order of recording
	Agent       string
	Plugin      string
	Incarnation int // one resync.Plugin object
	Revision    uint64
	Epoch       string // a new epoch may repeat revision numbers
	Status      schema.Status
	Join        bool
	At          time.Time
	// WaitFrom is when the plugin loop began the wait that this event
	// ended: before the receive, so a lower bound of it that the checker
	// can compare with Done without the race of At (taken after it).
	WaitFrom time.Time
}

// AckSent is one Ack or AckError a plugin incarnation sent.
type AckSent struct {
	Seq         uint64
	Agent       string
	Plugin      string
	Incarnation int
	Revision    uint64
	Result      schema.Result
	At          time.Time
}

// Incarnation is one resync.Plugin object of an agent: its plugins in
// registration order.
type Incarnation struct {
	ID      int
	Agent   string
	Plugins []string
	Alive   bool // still running when the history was closed
	// Began and Ended (zero while alive) bound the time it wanted its
	// agent name.
	Began, Ended time.Time
}

// RevWrite is one write of the revision key seen by the observer. Rec is
// valid unless Malformed.
type RevWrite struct {
	ModRev    int64
	Rec       schema.Revision
	Malformed bool
	Deleted   bool
}

// RoundWrite is one write of the summary rounds/<N> seen by the observer
// (deletions of old rounds are not recorded), joined with the per-agent
// records rounds/<N>/agents/ as they stood then (the leader writes them
// before the summary).
type RoundWrite struct {
	ModRev    int64
	Key       uint64 // N in the key
	Round     coordinator.RoundView
	Malformed bool
}

// RequestLog is one request seen by the observer: written at Put, deleted
// (consumed) at Deleted (0 while it exists).
type RequestLog struct {
	Key     string
	Req     schema.Request
	Put     int64
	Deleted int64
}

// ElectionKey is one candidate key under election/: created at Create,
// deleted at Deleted (0 while it exists).
type ElectionKey struct {
	Key     string
	ID      string
	Create  int64
	Deleted int64
}

// History is everything recorded in one run. Its recording methods are safe
// for concurrent use; Check reads it after recording ended.
type History struct {
	mu           sync.Mutex
	seq          uint64
	Events       []Event
	Acks         []AckSent
	Incarnations map[int]*Incarnation
	RevWrites    []RevWrite
	RoundWrites  []RoundWrite
	Requests     map[string]*RequestLog  // by key+put revision
	Elections    map[string]*ElectionKey // by key+create revision
	// Garbage are the mod revisions of values the test wrote on purpose
	// (malformed records), with their keys.
	Garbage map[int64]string
	// FinalRevision is the round the final phase waited for: every live
	// incarnation's plugins must have acked it (0: not checked).
	FinalRevision uint64
	// DeadlineAllowance is how long after its deadline a round may finish
	// (leader failover and etcd retries).
	DeadlineAllowance time.Duration
	// HarnessErrors are failures of the recording itself (the observer
	// compacted away, for example): they make the history untrustworthy.
	HarnessErrors []string
	// Backoff is the coordinators' pacing of error-triggered rounds (zero:
	// not checked).
	Backoff BackoffConfig
	// Closes are the measured Close calls.
	Closes []CloseCall
	// Owners are the writes of owners/<agent>; KeyWrites the puts of
	// registration and ack keys; Sizes the sizes of the round records.
	Owners    []OwnerWrite
	KeyWrites []KeyWrite
	Sizes     []RecordSize
	// RevTimes are probes of etcd's revision against the clock, in order:
	// they date the owner writes for checkUnowned by etcd's commit, where
	// the observer's own times lag as far as its watch does (100,000
	// revisions behind for seconds, seed 20261215).
	RevTimes []RevTime
	// WriteBudget is the coordinators' WriteBudget (0: sizes not checked).
	WriteBudget int
	// TeardownRev is the etcd revision from which the coordinators were
	// closed (0: none): a revision started after it may stay incomplete.
	TeardownRev int64
	// Late are the windows plugins did not read their channels;
	// Duplicates the second processes started with a live agent's name.
	Late       []LateWindow
	Duplicates []*Duplicate
	// StartSets are the participants each round had when its start was
	// committed, as its leader reported them (the coordinator's test hook):
	// by round, the first report.
	StartSets map[uint64][]schema.PluginID
	// RetrySlack is how long after its backoff bound (Backoff.Max) a
	// round including a failed or timed-out plugin may start, beyond the
	// rounds running then (0: the retry rule is not checked).
	RetrySlack time.Duration
	// AgentTTL and OwnerSlack: no agent name may stay unowned for longer
	// than AgentTTL + OwnerSlack while a live process of it reaches etcd
	// (AgentTTL 0: not checked).
	AgentTTL, OwnerSlack time.Duration
	// ReconnectGrace is how much longer a process may take after an
	// Unreachable window ends: its etcd client reconnects with gRPC's
	// backoff, which grew while it could not connect.
	ReconnectGrace time.Duration
	// Unreachable are the windows agents could not reach etcd (partitions,
	// their member stopped, a restore).
	Unreachable []Unreachable
	// Compactions are the etcd revisions the history was compacted to
	// (by a compact fault, or by a restore that marked everything before
	// its bumped revision compacted), in order.
	Compactions []int64
	// End is when the recording ended (agents are closed after it): a
	// bound that runs past it is not checked (zero: never).
	End time.Time
	// WaveAgents are the writes of wave rounds' per-agent records
	// (waves.go), in the order the observer saw them.
	WaveAgents []WaveAgentWrite
}

// Unreachable is a window in which an agent (Agent "": every agent) could
// not reach etcd.
type Unreachable struct {
	Agent       string
	From, Until time.Time
}

// BackoffConfig is the coordinators' BackoffMin and BackoffMax, and the
// slack a round may start early (the coalescing window: due requests of
// other agents join a round).
type BackoffConfig struct {
	Min, Max, Slack time.Duration
}

// CloseCall is one Close (of a coordinator or a plugin) and how long it
// took, against its documented bound.
type CloseCall struct {
	What        string
	Took, Bound time.Duration
}

// NewHistory returns an empty history.
func NewHistory(allowance time.Duration) *History {
	return &History{Incarnations: map[int]*Incarnation{}, Elections: map[string]*ElectionKey{}, Requests: map[string]*RequestLog{},
		Garbage: map[int64]string{}, DeadlineAllowance: allowance}
}

// AddIncarnation records a new plugin object of agent with its plugins in
// registration order.
func (h *History) AddIncarnation(id int, agent string, plugins []string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.Incarnations[id] = &Incarnation{ID: id, Agent: agent, Plugins: slices.Clone(plugins), Alive: true, Began: time.Now()}
}

// AddPlugin records a plugin an incarnation registered after it started.
func (h *History) AddPlugin(id int, plugin string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if inc := h.Incarnations[id]; inc != nil {
		inc.Plugins = append(inc.Plugins, plugin)
	}
}

// RecordStartSet records round n's participants at its start (the first
// report per round counts: a leader that resumes does not report).
func (h *History) RecordStartSet(n uint64, parts []schema.PluginID) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.StartSets == nil {
		h.StartSets = map[uint64][]schema.PluginID{}
	}
	if _, ok := h.StartSets[n]; !ok {
		h.StartSets[n] = slices.Clone(parts)
	}
}

// RecordCompaction records that etcd's history was compacted to rev.
func (h *History) RecordCompaction(rev int64) { appendLocked(h, &h.Compactions, rev) }

// RecordUnreachable records that agent ("" for all) could not reach etcd
// from from to until.
func (h *History) RecordUnreachable(agent string, from, until time.Time) {
	appendLocked(h, &h.Unreachable, Unreachable{Agent: agent, From: from, Until: until})
}

// SetEnd records the end of the recording.
func (h *History) SetEnd(at time.Time) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.End = at
}

// EndIncarnation marks an incarnation closed or crashed.
func (h *History) EndIncarnation(id int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if inc := h.Incarnations[id]; inc != nil && inc.Alive {
		inc.Alive, inc.Ended = false, time.Now()
	}
}

// RecordEvent records an event received by a plugin.
func (h *History) RecordEvent(e Event) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.seq++
	e.Seq = h.seq
	h.Events = append(h.Events, e)
}

// RecordAck records an ack a plugin is about to send.
func (h *History) RecordAck(a AckSent) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.seq++
	a.Seq = h.seq
	h.Acks = append(h.Acks, a)
}

// RecordGarbage records a malformed value the test wrote at modRev.
func (h *History) RecordGarbage(modRev int64, key string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.Garbage[modRev] = key
}

// RecordRevWrite, RecordRoundWrite and RecordElection are called by the
// observer in etcd revision order.
func (h *History) RecordRevWrite(w RevWrite) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.RevWrites = append(h.RevWrites, w)
}

func (h *History) RecordRoundWrite(w RoundWrite) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.RoundWrites = append(h.RoundWrites, w)
}

// RecordRequest records a request written (deleted false) or consumed.
func (h *History) RecordRequest(key string, req schema.Request, modRev int64, deleted bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if deleted {
		for _, l := range h.Requests {
			if l.Key == key && l.Deleted == 0 {
				l.Deleted = modRev
			}
		}
		return
	}
	h.Requests[key+"@"+strconv.FormatInt(modRev, 10)] = &RequestLog{Key: key, Req: req, Put: modRev}
}

// RecordElection records the creation (deleted false) or deletion of a
// candidate key.
func (h *History) RecordElection(key, id string, create, modRev int64, deleted bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	k := key + "@" + strconv.FormatInt(create, 10)
	if deleted {
		if e := h.Elections[k]; e != nil && e.Deleted == 0 {
			e.Deleted = modRev
		}
		return
	}
	if _, ok := h.Elections[k]; !ok {
		h.Elections[k] = &ElectionKey{Key: key, ID: id, Create: create}
	}
}

// ReviveElection undoes the deletion of candidate key key created at
// create: an etcd restore brought it back (the test restores only while
// no coordinator runs, so no write fell between its deletion and then).
func (h *History) ReviveElection(key string, create int64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if e := h.Elections[key+"@"+strconv.FormatInt(create, 10)]; e != nil {
		e.Deleted = 0
	}
}

// RecordClose records a Close call that took took against its bound.
func (h *History) RecordClose(what string, took, bound time.Duration) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.Closes = append(h.Closes, CloseCall{What: what, Took: took, Bound: bound})
}

// HarnessError records a failure of the recording.
func (h *History) HarnessError(format string, a ...any) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.HarnessErrors = append(h.HarnessErrors, fmt.Sprintf(format, a...))
}

// Report is the checker's result: what was checked, and every violation.
type Report struct {
	RevisionWrites  int // valid revision writes checked
	RoundsCompleted int
	FencedWrites    int
	Events          int // status events checked
	AcksMatched     int // acked/failed participants matched to a recorded ack
	FinalAcks       int // live plugins that acked the final round
	GarbageSkipped  int
	ErrorRounds     int // error-triggered rounds checked against the backoff
	Closes          int // Close calls checked against their bound
	ScopesChecked   int // rounds whose participants were checked against their requests
	OwnedWrites     int // registration writes checked against the agent's owner key
	Takeovers       int // duplicate agent names checked
	InflightAcks    int // acks a displaced process wrote after the take-over for a round started before it
	LateTimeouts    int // rounds that timed a late taker out, checked for its retry
	TextsChecked    int // error texts checked against their cap
	LongNames       int // participants with a 128-character agent or plugin name
	StartSets       int // completed rounds checked against their participants at Started
	Resumes         int // of those, rounds finished by another leader than started them
	ResumeFallbacks int // of those, resumed with the live registrations: records incomplete and the start compacted away
	RetriesChecked  int // failed or timed-out acks and outcomes checked for their retry round
	OwnerGaps       int // times an agent name was unowned while a live process of it ran
	WaveRounds      int // wave rounds checked (waves.go)
	WaveAborted     int // of those, rounds that aborted
	WaveSkipped     int // agents those skipped
	WaveAgents      int // started agents of completed wave rounds checked against their own deadline
	RetriesSkipped  int // retries owed whose round skipped the plugin (an aborted wave round)
	Violations      []string
}

func (r *Report) violate(format string, a ...any) {
	r.Violations = append(r.Violations, fmt.Sprintf(format, a...))
}

// Summary is the one-line result.
func (r *Report) Summary() string {
	return fmt.Sprintf("revision_writes=%d rounds_completed=%d fenced_writes=%d events_checked=%d acks_matched=%d final_acks=%d garbage_skipped=%d scopes_checked=%d error_rounds=%d closes=%d owned_writes=%d takeovers=%d inflight_acks=%d late_timeouts=%d texts_checked=%d long_names=%d start_sets=%d resumes=%d resume_fallbacks=%d retries_checked=%d owner_gaps=%d wave_rounds=%d wave_aborted=%d wave_skipped=%d wave_agents=%d retries_skipped=%d violations=%d",
		r.RevisionWrites, r.RoundsCompleted, r.FencedWrites, r.Events, r.AcksMatched, r.FinalAcks, r.GarbageSkipped, r.ScopesChecked, r.ErrorRounds, r.Closes,
		r.OwnedWrites, r.Takeovers, r.InflightAcks, r.LateTimeouts, r.TextsChecked, r.LongNames, r.StartSets, r.Resumes, r.ResumeFallbacks, r.RetriesChecked, r.OwnerGaps, r.WaveRounds, r.WaveAborted, r.WaveSkipped, r.WaveAgents, r.RetriesSkipped, len(r.Violations))
}

// termOf parses the term out of a leader identity <id>@<term>.
func termOf(identity string) (int64, bool) {
	i := strings.LastIndexByte(identity, '@')
	if i < 0 {
		return 0, false
	}
	t, err := strconv.ParseInt(identity[i+1:], 10, 64)
	return t, err == nil && t > 0
}

// Check checks the invariants of the design ("Semantics and invariants")
// over a recorded history:
//
//   - revisions step by exactly +1; each N is first written Started, then
//     NotActive, never Started again, and N+1 starts only after N finished;
//     the first is 1; malformed writes are only the test's own garbage;
//   - every completed round's participants are partitioned into acked,
//     failed, timed_out and departed exactly once; a round record is first
//     written Started, then NotActive, never back; no round finishes later
//     than its deadline plus DeadlineAllowance; every revision that started
//     has a completed round record;
//   - fencing: the terms of successive revision and round writes never go
//     back, and each write's term is the create revision of the election key
//     that led (lowest create revision alive) at the write's revision;
//   - no plugin incarnation got two Started for one revision; within one
//     incarnation and revision, Started was delivered in registration order;
//     an incarnation's first Started for a plugin is its join resync;
//   - every acked participant's ok ack, and every failed participant's error
//     ack, for that revision is in the agents' records;
//   - every live incarnation's plugins acked FinalRevision (when set);
//   - scopes: a round's participants are within the union of the scopes of
//     the requests it consumed (a retry: the failed and timed-out
//     participants of its round), and in a round with a set scope no plugin
//     outside its participants got a Started that was not its join resync.
//   - error-triggered rounds of one agent (of one scope's agent, or of
//     scope all) started by one leader are no closer than the backoff
//     allows: once a streak runs (rounds less than Backoff.Max apart) the
//     k-th waits min(Backoff.Min x 2^k, Backoff.Max) after the previous;
//   - every Close returned within its bound;
//   - one process per agent name, late takers and record sizes: see
//     checkOwners, checkLate and checkTexts;
//   - a round's participants at its end are those it had at Started,
//     also when another leader resumed it (checkStartSets); every failed
//     or timed-out ack or outcome is followed by a round including that
//     plugin within its backoff bound (checkRetries); no agent name stays
//     unowned for longer than a TTL while a live process wants it
//     (checkUnowned);
//   - wave rounds: the in-flight bound, no start after the abort, skipped
//     agents never started, no agent started twice or lost across
//     failovers (checkWaves, waves.go); each agent done within its own
//     deadline (its start plus RoundDeadline), the round finished soon
//     after its last agent (checkWaveDeadlines); skipped only in an
//     aborted wave round (checkPartition).
func (h *History) Check() *Report {
	h.mu.Lock()
	defer h.mu.Unlock()
	r := &Report{}
	for _, e := range h.HarnessErrors {
		r.violate("harness: %s", e)
	}
	h.checkRevisions(r)
	h.checkRounds(r)
	h.checkScopes(r)
	h.checkFencing(r)
	h.checkEvents(r)
	h.checkAcks(r)
	h.checkFinal(r)
	h.checkBackoff(r)
	h.checkCloses(r)
	h.checkOwners(r)
	h.checkLate(r)
	h.checkTexts(r)
	h.checkStartSets(r)
	h.checkRetries(r)
	h.checkUnowned(r)
	h.checkWaves(r)
	return r
}

// checkBackoff checks the pacing of error-triggered rounds per agent
// (coordinator/streaks.go). A new leader's first error round is not
// checked against its predecessor's (the streak is replayed from history,
// which garbage may have hidden); a gap of Backoff.Max or more may be a new
// streak, so the check restarts from the shortest delay there.
func (h *History) checkBackoff(r *Report) {
	if h.Backoff.Min <= 0 {
		return
	}
	type start struct {
		n  uint64
		at time.Time
		by string
	}
	seen := map[uint64]bool{}
	byAgent := map[string][]start{}
	for _, w := range h.RoundWrites {
		if w.Malformed || w.Round.State != schema.Started || seen[w.Key] {
			continue
		}
		seen[w.Key] = true
		// Rounds of one agent (or all): a round of several agents counts
		// in each one's streak, but its summary may not name them all, so
		// it is not checked (gaps between the others only grow).
		sum := w.Round.Scope
		agent := ""
		switch {
		case w.Round.Cause != schema.CauseError:
			continue
		case sum.All:
		case sum.Agents+sum.Plugins >= 1 && len(schema.TargetAgents(sum.FirstTargets())) == 1 && (sum.Agents+sum.Plugins) == len(sum.FirstTargets()):
			agent = schema.TargetAgents(sum.FirstTargets())[0]
		default:
			continue
		}
		byAgent[agent] = append(byAgent[agent], start{w.Key, w.Round.StartedAt, w.Round.StartedBy})
	}
	for agent, ss := range byAgent {
		sort.Slice(ss, func(i, j int) bool { return ss[i].n < ss[j].n })
		if agent == "" {
			agent = "(all agents)"
		}
		streak := 0
		for i, s := range ss {
			r.ErrorRounds++
			if i == 0 || s.by != ss[i-1].by {
				streak = 1
				continue
			}
			gap := s.at.Sub(ss[i-1].at)
			if gap >= h.Backoff.Max {
				streak = 1
				continue
			}
			need := h.Backoff.Min
			for k := 0; k < streak && need < h.Backoff.Max; k++ {
				need *= 2
			}
			need = min(need, h.Backoff.Max)
			if gap < need-h.Backoff.Slack {
				r.violate("error-triggered rounds %d and %d of %s started %v apart by %s: the backoff allows %v (streak of %d)",
					ss[i-1].n, s.n, agent, gap, s.by, need, streak)
			}
			streak++
		}
	}
}

// checkCloses checks that every Close returned within its bound.
func (h *History) checkCloses(r *Report) {
	for _, c := range h.Closes {
		r.Closes++
		if c.Took > c.Bound {
			r.violate("Close of %s took %v: its bound is %v", c.What, c.Took, c.Bound)
		}
	}
}

func (h *History) checkRevisions(r *Report) {
	var prev *schema.Revision
	var prevMod int64
	for i := range h.RevWrites {
		w := &h.RevWrites[i]
		switch {
		case w.Deleted:
			r.violate("revision key deleted at %d", w.ModRev)
			continue
		case w.Malformed:
			if _, ok := h.Garbage[w.ModRev]; ok {
				r.GarbageSkipped++
			} else {
				r.violate("malformed revision record at %d was not written by the test", w.ModRev)
			}
			continue
		}
		r.RevisionWrites++
		cur := w.Rec
		if prev == nil {
			if cur.Revision != 1 || cur.State != schema.Started {
				r.violate("first revision write at %d is %d %s, want 1 Started", w.ModRev, cur.Revision, cur.State)
			}
			prev, prevMod = &w.Rec, w.ModRev
			continue
		}
		switch {
		case cur.Revision == prev.Revision:
			if prev.State == schema.NotActive && cur.State == schema.Started {
				r.violate("revision %d Started again at %d after it finished at %d", cur.Revision, w.ModRev, prevMod)
			}
		case cur.Revision == prev.Revision+1:
			if cur.State != schema.Started {
				r.violate("revision %d first written as %s at %d", cur.Revision, cur.State, w.ModRev)
			}
			if prev.State != schema.NotActive {
				r.violate("revision %d started at %d while revision %d was still Started (never finished)", cur.Revision, w.ModRev, prev.Revision)
			}
		default:
			r.violate("revision went from %d to %d at %d (want +1)", prev.Revision, cur.Revision, w.ModRev)
		}
		prev, prevMod = &w.Rec, w.ModRev
	}
}

func (h *History) checkRounds(r *Report) {
	type roundLog struct {
		started, finished bool
		final             coordinator.RoundView
	}
	rounds := map[uint64]*roundLog{}
	for _, w := range h.RoundWrites {
		if w.Malformed {
			if _, ok := h.Garbage[w.ModRev]; ok {
				r.GarbageSkipped++
			} else {
				r.violate("malformed round record rounds/%d at %d was not written by the test", w.Key, w.ModRev)
			}
			continue
		}
		rd := w.Round
		if rd.Revision != w.Key {
			r.violate("rounds/%d holds revision %d (at %d)", w.Key, rd.Revision, w.ModRev)
		}
		lg := rounds[rd.Revision]
		if lg == nil {
			lg = &roundLog{}
			rounds[rd.Revision] = lg
		}
		switch rd.State {
		case schema.Started:
			if lg.finished {
				r.violate("round %d written Started at %d after it completed", rd.Revision, w.ModRev)
			}
			lg.started = true
		case schema.NotActive:
			if !lg.started {
				r.violate("round %d written NotActive at %d before any Started record", rd.Revision, w.ModRev)
			}
			if lg.finished {
				if !sameOutcome(lg.final, rd) {
					r.violate("round %d completed twice with different outcomes (second at %d)", rd.Revision, w.ModRev)
				}
				continue
			}
			lg.finished, lg.final = true, rd
			r.RoundsCompleted++
			checkPartition(r, rd)
			if rd.Wave != nil {
				// A wave round's deadlines are its agents' own.
				h.checkWaveDeadlines(r, rd)
				continue
			}
			// An outage of every agent and coordinator (an etcd restore)
			// while the round ran delays it by its length.
			if late := rd.FinishedAt.Sub(rd.Deadline) - h.outage(rd.StartedAt, rd.FinishedAt); late > h.DeadlineAllowance {
				r.violate("round %d finished %v after its deadline (allowance %v)", rd.Revision, late.Round(time.Millisecond), h.DeadlineAllowance)
			}
		}
	}
	// Every revision that started (before the teardown) has a completed
	// round record.
	seen := map[uint64]bool{}
	for _, w := range h.RevWrites {
		if w.Malformed || w.Deleted || seen[w.Rec.Revision] {
			continue
		}
		seen[w.Rec.Revision] = true
		if h.TeardownRev != 0 && w.ModRev > h.TeardownRev {
			continue // cut short by the teardown
		}
		if lg := rounds[w.Rec.Revision]; lg == nil || !lg.finished {
			r.violate("revision %d has no completed round record", w.Rec.Revision)
		}
	}
}

// checkScopes checks that no round reaches beyond what was requested.
func (h *History) checkScopes(r *Report) {
	final := map[uint64]coordinator.RoundView{}
	for _, w := range h.RoundWrites {
		if !w.Malformed && w.Round.State == schema.NotActive {
			if _, ok := final[w.Round.Revision]; !ok {
				final[w.Round.Revision] = w.Round
			}
		}
	}
	// The requests a round consumed: deleted in the Txn that wrote its
	// revision Started, or after it, before the next round started.
	var starts []RevWrite
	for _, w := range h.RevWrites {
		if !w.Malformed && !w.Deleted && w.Rec.State == schema.Started {
			starts = append(starts, w)
		}
	}
	for i, st := range starts {
		rd, ok := final[st.Rec.Revision]
		if !ok || rd.Cause == schema.CauseInitial {
			continue
		}
		next := int64(1 << 62)
		if i+1 < len(starts) {
			next = starts[i+1].ModRev
		}
		var union schema.ScopeSet
		consumed := 0
		for _, l := range h.Requests {
			// A round that consumes more requests than one Txn holds deletes
			// the rest after it started; if its leader dies in between, the
			// next round deletes them: so a request pending at the start
			// counts whenever it was deleted afterwards.
			if l.Deleted < st.ModRev || l.Put > st.ModRev || (l.Deleted >= next && !pendingAt(*l, st.ModRev)) {
				continue
			}
			if l.Req.Control != nil {
				continue // a pause, resume or abort: it asks for no round
			}
			consumed++
			if l.Req.RetryOf == 0 {
				union.Union(l.Req.ScopeSet())
				continue
			}
			if len(l.Req.Targets) > 0 {
				// A retry carries its targets: its round's failed and
				// timed-out participants, and those an aborted wave round
				// skipped whose last resync had failed. None acked in it.
				union.Union(l.Req.ScopeSet())
				if prev, ok := final[l.Req.RetryOf]; ok {
					for _, tg := range l.Req.Targets {
						p := schema.PluginID{Agent: tg.Agent, Plugin: tg.Plugin}
						if !slices.Contains(prev.Failed, p) && !slices.Contains(prev.TimedOut, p) && !slices.Contains(prev.Skipped, p) {
							r.violate("the retry of round %d names %s, which neither failed, timed out nor was skipped in it", l.Req.RetryOf, p)
						}
					}
				}
				continue
			}
			if prev, ok := final[l.Req.RetryOf]; ok {
				for _, p := range append(slices.Clone(prev.Failed), prev.TimedOut...) {
					union.AddPlugin(p)
				}
			} else {
				union = schema.AllScopes() // its round is unknown here: cannot check
			}
		}
		if consumed == 0 || union.IsAll() {
			continue
		}
		r.ScopesChecked++
		for _, p := range rd.Participants {
			if !union.Includes(p.Agent, p.Plugin) {
				r.violate("round %d: participant %s is outside the union of the %d requests it consumed", rd.Revision, p, consumed)
			}
		}
	}
	for _, e := range h.Events {
		if e.Status != schema.Started || e.Join {
			continue
		}
		rd, ok := final[e.Revision]
		if !ok || rd.Scope.IsAll() {
			continue
		}
		if !slices.Contains(rd.Participants, schema.PluginID{Agent: e.Agent, Plugin: e.Plugin}) {
			r.violate("round %d (scope %s): %s/%s got Started but is no participant", e.Revision, rd.Scope, e.Agent, e.Plugin)
		}
	}
}

func sameOutcome(a, b coordinator.RoundView) bool {
	return slices.Equal(a.Acked, b.Acked) && slices.Equal(a.Failed, b.Failed) &&
		slices.Equal(a.TimedOut, b.TimedOut) && slices.Equal(a.Departed, b.Departed) && slices.Equal(a.Skipped, b.Skipped)
}

// checkPartition checks that every participant is in exactly one outcome
// list (the schema validates records on decode; this checks again so that
// a doctored history is caught too).
func checkPartition(r *Report, rd coordinator.RoundView) {
	if !rd.Truncated && len(rd.Participants) != rd.Counts.Participants {
		r.violate("round %d counts %d participants, its per-agent records list %d", rd.Revision, rd.Counts.Participants, len(rd.Participants))
	}
	outcome := map[schema.PluginID]string{}
	for _, p := range rd.Participants {
		if _, dup := outcome[p]; dup {
			r.violate("round %d lists participant %s twice", rd.Revision, p)
		}
		outcome[p] = ""
	}
	for _, l := range []struct {
		name string
		ids  []schema.PluginID
	}{{"acked", rd.Acked}, {"failed", rd.Failed}, {"timed_out", rd.TimedOut}, {"departed", rd.Departed}, {"skipped", rd.Skipped}} {
		for _, p := range l.ids {
			prev, ok := outcome[p]
			switch {
			case !ok:
				r.violate("round %d: %s lists %s, not a participant", rd.Revision, l.name, p)
			case prev != "":
				r.violate("round %d: %s is both %s and %s", rd.Revision, p, prev, l.name)
			default:
				outcome[p] = l.name
			}
		}
	}
	for p, o := range outcome {
		if o == "" {
			r.violate("round %d: participant %s has no outcome", rd.Revision, p)
		}
	}
	// Skipped is the outcome of an aborted wave round's agents that never
	// started, and of nothing else.
	if len(rd.Skipped) > 0 && (rd.Wave == nil || rd.Wave.Aborted == "") {
		r.violate("round %d lists %s skipped, but it is no aborted wave round", rd.Revision, rd.Skipped[0])
	}
}

func (h *History) checkFencing(r *Report) {
	type write struct {
		modRev int64
		who    string
		what   string
		// planRewrite: a wave round's summary rewritten while it runs
		// (its plan changed: a phase, a pause, an abort), by the leader
		// its plan names (written_by), which may be a successor of the
		// round's starter. A plan that names no writer (a doctored
		// history) is checked only not to go back in term.
		planRewrite bool
	}
	var ws []write
	for _, w := range h.RevWrites {
		if !w.Malformed && !w.Deleted {
			ws = append(ws, write{w.ModRev, w.Rec.Leader, fmt.Sprintf("revision %d %s", w.Rec.Revision, w.Rec.State), false})
		}
	}
	startedOnce := map[uint64]bool{}
	for _, w := range h.RoundWrites {
		if w.Malformed {
			continue
		}
		who := w.Round.StartedBy
		if w.Round.State == schema.NotActive {
			who = w.Round.FinishedBy
		}
		rewrite := w.Round.State == schema.Started && startedOnce[w.Key]
		startedOnce[w.Key] = startedOnce[w.Key] || w.Round.State == schema.Started
		what := fmt.Sprintf("rounds/%d %s", w.Key, w.Round.State)
		if rewrite && w.Round.Wave != nil && w.Round.Wave.WrittenBy != "" {
			who, rewrite, what = w.Round.Wave.WrittenBy, false, what+" (its wave plan rewritten)"
		}
		ws = append(ws, write{w.ModRev, who, what, rewrite})
	}
	sort.SliceStable(ws, func(i, j int) bool { return ws[i].modRev < ws[j].modRev })
	var keys []*ElectionKey
	for _, e := range h.Elections {
		keys = append(keys, e)
	}
	var last int64
	for _, w := range ws {
		r.FencedWrites++
		term, ok := termOf(w.who)
		if !ok {
			r.violate("%s at %d carries no leader term (%q)", w.what, w.modRev, w.who)
			continue
		}
		if term < last {
			r.violate("%s at %d written by term %d after a write by term %d: a deposed leader wrote", w.what, w.modRev, term, last)
		}
		last = max(last, term)
		if len(keys) == 0 || w.planRewrite {
			continue // no election record (a doctored history), or no writer named
		}
		// The leader at w.modRev: the live candidate key created first.
		var leader *ElectionKey
		for _, e := range keys {
			if e.Create <= w.modRev && (e.Deleted == 0 || e.Deleted > w.modRev) && (leader == nil || e.Create < leader.Create) {
				leader = e
			}
		}
		switch {
		case leader == nil:
			r.violate("%s at %d by term %d while no coordinator led", w.what, w.modRev, term)
		case leader.Create != term:
			r.violate("%s at %d by term %d while term %d (%s) led", w.what, w.modRev, term, leader.Create, leader.ID)
		}
	}
}

func (h *History) checkEvents(r *Report) {
	type key struct {
		inc   int
		epoch string
		rev   uint64
	}
	type pkey struct {
		inc    int
		plugin string
	}
	started := map[key][]Event{}
	first := map[pkey]bool{}
	events := slices.Clone(h.Events)
	sort.Slice(events, func(i, j int) bool { return events[i].Seq < events[j].Seq })
	for _, e := range events {
		r.Events++
		if e.Status != schema.Started {
			continue
		}
		k := key{e.Incarnation, e.Epoch, e.Revision}
		for _, o := range started[k] {
			if o.Plugin == e.Plugin {
				r.violate("incarnation %d (%s) plugin %s got Started %d twice", e.Incarnation, e.Agent, e.Plugin, e.Revision)
			}
		}
		started[k] = append(started[k], e)
		pk := pkey{e.Incarnation, e.Plugin}
		if !first[pk] {
			first[pk] = true
			if !e.Join {
				r.violate("incarnation %d (%s) plugin %s: first Started (%d) is not a join resync", e.Incarnation, e.Agent, e.Plugin, e.Revision)
			}
		} else if e.Join {
			r.violate("incarnation %d (%s) plugin %s: Started %d is a second join resync", e.Incarnation, e.Agent, e.Plugin, e.Revision)
		}
	}
	for k, evs := range started {
		inc := h.Incarnations[k.inc]
		if inc == nil {
			r.violate("events of unknown incarnation %d", k.inc)
			continue
		}
		prev := -1
		for _, e := range evs {
			if h.tookLate(e) {
				// A parked join taken late: the agent's next plugins
				// went ahead meanwhile (package watcher).
				continue
			}
			idx := slices.Index(inc.Plugins, e.Plugin)
			if idx < prev {
				r.violate("incarnation %d (%s) revision %d: %s got Started before %s, against registration order",
					k.inc, inc.Agent, k.rev, inc.Plugins[prev], e.Plugin)
			}
			prev = max(prev, idx)
		}
	}
}

func (h *History) checkAcks(r *Report) {
	type key struct {
		id  schema.PluginID
		rev uint64
	}
	sent := map[key]map[schema.Result]bool{}
	for _, a := range h.Acks {
		k := key{schema.PluginID{Agent: a.Agent, Plugin: a.Plugin}, a.Revision}
		if sent[k] == nil {
			sent[k] = map[schema.Result]bool{}
		}
		sent[k][a.Result] = true
	}
	done := map[uint64]bool{}
	for _, w := range h.RoundWrites {
		if w.Malformed || w.Round.State != schema.NotActive || done[w.Round.Revision] {
			continue
		}
		done[w.Round.Revision] = true
		for _, p := range w.Round.Acked {
			if sent[key{p, w.Round.Revision}][schema.ResultOK] {
				r.AcksMatched++
			} else {
				r.violate("round %d lists %s as acked, but no incarnation of it sent an ok ack for %d", w.Round.Revision, p, w.Round.Revision)
			}
		}
		for _, p := range w.Round.Failed {
			if sent[key{p, w.Round.Revision}][schema.ResultError] {
				r.AcksMatched++
			} else {
				r.violate("round %d lists %s as failed, but no incarnation of it sent an error ack for %d", w.Round.Revision, p, w.Round.Revision)
			}
		}
	}
}

func (h *History) checkFinal(r *Report) {
	if h.FinalRevision == 0 {
		return
	}
	acked := map[int]map[string]bool{}
	for _, a := range h.Acks {
		if a.Revision == h.FinalRevision && a.Result == schema.ResultOK {
			if acked[a.Incarnation] == nil {
				acked[a.Incarnation] = map[string]bool{}
			}
			acked[a.Incarnation][a.Plugin] = true
		}
	}
	for _, inc := range h.Incarnations {
		if !inc.Alive {
			continue
		}
		for _, p := range inc.Plugins {
			if acked[inc.ID][p] {
				r.FinalAcks++
			} else {
				r.violate("live incarnation %d (%s) plugin %s did not ack the final revision %d", inc.ID, inc.Agent, p, h.FinalRevision)
			}
		}
	}
}

// pendingAt reports whether request l was pending at etcd revision rev.
func pendingAt(l RequestLog, rev int64) bool { return l.Put <= rev && l.Deleted > rev }

// --- the fault classes of issue 17: late takers, duplicate agent names,
// 1 KiB error texts, 128-character names ---

// OwnerWrite is one write or deletion of owners/<agent> seen by the
// observer, with the lease the key is on.
type OwnerWrite struct {
	Agent   string
	ModRev  int64
	Lease   int64
	Process string
	Deleted bool
	At      time.Time // when the observer saw it
}

// KeyWrite is one put of a registration or an ack key seen by the
// observer: the lease it is on, and for an ack its revision and error text.
type KeyWrite struct {
	Ack      bool // else a registration
	Agent    string
	Plugin   string
	ModRev   int64
	Lease    int64
	Revision uint64
	Result   schema.Result // an ack's ("" if unreadable)
	Error    string
	Bytes    int // key and value
	// Deleted: a registration's deletion (its lease ended or revoked).
	Deleted bool
	At      time.Time // when the observer saw it
}

// RecordSize is the size (key and value) of one round record the leader
// wrote: the summary rounds/<N> (Agent "") or a per-agent record.
type RecordSize struct {
	Key    string
	Agent  string
	ModRev int64
	Bytes  int
}

// LateWindow is a time a plugin of an incarnation did not read its status
// channel.
type LateWindow struct {
	Agent, Plugin string
	Incarnation   int
	From, Until   time.Time
}

// Duplicate is a second process started with a live agent's name: New must
// take the name over from Old, whose Done must fire within Bound.
type Duplicate struct {
	Agent    string
	Old, New int
	// StartRev is an etcd revision read before New was created: the
	// take-over is the first write of the owner key after it by another
	// process than the one that owned the name then.
	StartRev int64
	Started  time.Time
	DoneAt   time.Time // zero: Old's Done never fired
	Bound    time.Duration
	// Closed: Old's plugin loops ended after Done fired (status channels
	// are never closed: the loops select on Done, as resync-agent's do).
	Closed bool
}

// appendLocked appends v to the history's list *to.
func appendLocked[T any](h *History, to *[]T, v T) {
	h.mu.Lock()
	defer h.mu.Unlock()
	*to = append(*to, v)
}

// RecordOwner, RecordKeyWrite and RecordSize are called by the observer.
func (h *History) RecordOwner(w OwnerWrite)  { appendLocked(h, &h.Owners, w) }
func (h *History) RecordKeyWrite(w KeyWrite) { appendLocked(h, &h.KeyWrites, w) }
func (h *History) RecordSize(s RecordSize)   { appendLocked(h, &h.Sizes, s) }

// RevTime is one probe of etcd's revision: every revision up to Rev was
// committed by Recv, and none above it before Sent.
type RevTime struct {
	Rev        int64
	Sent, Recv time.Time
}

// RecordRevTime records a probe; one that does not move the revision
// forward (a restore without --bump-revision) is dropped, so that
// RevTimes stays sorted by Rev.
func (h *History) RecordRevTime(p RevTime) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if n := len(h.RevTimes); n > 0 && p.Rev < h.RevTimes[n-1].Rev {
		return
	}
	h.RevTimes = append(h.RevTimes, p)
}

// committed bounds when etcd committed revision mod, from the probes: not
// before lo, not after hi. ok is false when no probes bracket it.
func (h *History) committed(mod int64) (lo, hi time.Time, ok bool) {
	ps := h.RevTimes
	i := sort.Search(len(ps), func(i int) bool { return ps[i].Rev >= mod })
	if i == 0 || i == len(ps) {
		return time.Time{}, time.Time{}, false
	}
	return ps[i-1].Sent, ps[i].Recv, true
}

// RecordLate records that a plugin did not read its channel from From to
// Until.
func (h *History) RecordLate(w LateWindow) { appendLocked(h, &h.Late, w) }

// AddDuplicate records a duplicate start.
func (h *History) AddDuplicate(d *Duplicate) { appendLocked(h, &h.Duplicates, d) }

// Displaced records when Old's Done fired; ChannelsClosed that its plugin
// loops ended after that (on Done: status channels are never closed).
func (h *History) Displaced(d *Duplicate, at time.Time) {
	h.mu.Lock()
	defer h.mu.Unlock()
	d.DoneAt = at
}

func (h *History) ChannelsClosed(d *Duplicate) {
	h.mu.Lock()
	defer h.mu.Unlock()
	d.Closed = true
}

// checkOwners checks one process per agent name: every registration is
// written on the lease of the agent's owner key as it stands at that
// revision (never by a process that does not own the name); for every
// duplicate start, the newer process took the name over, the displaced one
// was told (Done) within its bound, received no event after that, and wrote
// on its lease after the take-over no registration and no ack of a round
// that started after the take-over (an ack of a round it took part in,
// written before it noticed, is counted as in flight).
func (h *History) checkOwners(r *Report) {
	byAgent := map[string][]OwnerWrite{}
	for _, o := range h.Owners {
		byAgent[o.Agent] = append(byAgent[o.Agent], o)
	}
	ownerAt := func(agent string, rev int64) (OwnerWrite, bool) {
		ws := byAgent[agent]
		i := sort.Search(len(ws), func(i int) bool { return ws[i].ModRev > rev })
		if i == 0 || ws[i-1].Deleted {
			return OwnerWrite{}, false
		}
		return ws[i-1], true
	}
	for _, w := range h.KeyWrites {
		if w.Ack || w.Deleted {
			continue
		}
		if _, ok := h.Garbage[w.ModRev]; ok {
			continue
		}
		r.OwnedWrites++
		o, ok := ownerAt(w.Agent, w.ModRev)
		switch {
		case !ok:
			r.violate("registration %s/%s written at %d on lease %x while nobody owned the agent name", w.Agent, w.Plugin, w.ModRev, w.Lease)
		case o.Lease != w.Lease:
			r.violate("registration %s/%s written at %d on lease %x, but the agent name is owned by process %s on lease %x: two live owners",
				w.Agent, w.Plugin, w.ModRev, w.Lease, o.Process, o.Lease)
		}
	}
	startRev := map[uint64]int64{} // etcd revision at which each round started
	for _, w := range h.RevWrites {
		if _, ok := startRev[w.Rec.Revision]; !ok && !w.Malformed && !w.Deleted && w.Rec.State == schema.Started {
			startRev[w.Rec.Revision] = w.ModRev
		}
	}
	for _, d := range h.Duplicates {
		r.Takeovers++
		what := fmt.Sprintf("duplicate %s (incarnation %d displaced by %d)", d.Agent, d.Old, d.New)
		if d.DoneAt.IsZero() {
			r.violate("%s: the displaced incarnation's Done never fired: two live owners", what)
		} else if took := d.DoneAt.Sub(d.Started); took > d.Bound {
			r.violate("%s: the displaced incarnation's Done fired %v after the newer one started (bound %v)", what, took.Round(time.Millisecond), d.Bound)
		} else if !d.Closed {
			r.violate("%s: the displaced incarnation's Done fired, but its plugin loops did not end", what)
		}
		for _, e := range h.Events {
			// A delivery after Done is one whose wait began after Done
			// had fired: At is taken after the receive, so an event
			// received just before Done fired may be stamped after it.
			if e.Incarnation == d.Old && !d.DoneAt.IsZero() && e.WaitFrom.After(d.DoneAt) {
				r.violate("%s: the displaced incarnation received %s %d after its Done fired", what, e.Status, e.Revision)
			}
		}
		old, ok := ownerAt(d.Agent, d.StartRev)
		if !ok {
			continue // nobody owned the name then (the agent was cut off): no take-over to check
		}
		var take *OwnerWrite
		for i, o := range byAgent[d.Agent] {
			if o.ModRev > d.StartRev && !o.Deleted && o.Process != old.Process {
				take = &byAgent[d.Agent][i]
				break
			}
		}
		if take == nil {
			r.violate("%s: the newer process never took the owner key over from process %s", what, old.Process)
			continue
		}
		for _, w := range h.KeyWrites {
			if w.Agent == d.Agent && !w.Deleted && w.Lease == old.Lease && w.ModRev > take.ModRev {
				kind := "registration"
				if w.Ack {
					if st, ok := startRev[w.Revision]; ok && st < take.ModRev {
						// The ack of a round it took part in, written
						// before it noticed the take-over: acks are not
						// fenced by the owner key (only registrations).
						r.InflightAcks++
						continue
					}
					kind = fmt.Sprintf("ack (revision %d)", w.Revision)
				}
				r.violate("%s: the displaced process wrote the %s of %s at %d on its lease %x after the take-over at %d",
					what, kind, w.Plugin, w.ModRev, w.Lease, take.ModRev)
			}
		}
	}
}

// tookLate reports whether e was taken at the end of a window in which its
// plugin did not read its channel, or is a join taken any time after such
// a window began: a parked join stays offered until taken, but only when
// the dispatcher is idle, which may be an ack timeout after the plugin
// reads again (it served the agent's next plugins meanwhile).
func (h *History) tookLate(e Event) bool {
	for _, lw := range h.Late {
		if lw.Incarnation != e.Incarnation || lw.Plugin != e.Plugin || e.At.Before(lw.From) {
			continue
		}
		if e.Join || !e.At.After(lw.Until.Add(time.Second)) {
			return true
		}
	}
	return false
}

// checkLate checks plugins that took events late: every round that
// recorded such a plugin timed_out while it was not reading asked for a
// retry (a request with RetryOf set to it), and a later round delivered the
// plugin its Started and recorded it acked or failed: nothing is lost.
func (h *History) checkLate(r *Report) {
	if len(h.Late) == 0 {
		return
	}
	final := map[uint64]coordinator.RoundView{}
	var ns []uint64
	for _, w := range h.RoundWrites {
		if !w.Malformed && w.Round.State == schema.NotActive {
			if _, ok := final[w.Key]; !ok {
				final[w.Key] = w.Round
				ns = append(ns, w.Key)
			}
		}
	}
	slices.Sort(ns)
	retried := map[uint64]bool{}
	for _, l := range h.Requests {
		if l.Req.RetryOf != 0 {
			retried[l.Req.RetryOf] = true
		}
	}
	got := map[schema.PluginID]map[uint64]bool{} // Started events received
	for _, e := range h.Events {
		if e.Status == schema.Started {
			id := schema.PluginID{Agent: e.Agent, Plugin: e.Plugin}
			if got[id] == nil {
				got[id] = map[uint64]bool{}
			}
			got[id][e.Revision] = true
		}
	}
	checked := map[uint64]map[schema.PluginID]bool{}
	for _, lw := range h.Late {
		id := schema.PluginID{Agent: lw.Agent, Plugin: lw.Plugin}
		for _, n := range ns {
			rd := final[n]
			if rd.StartedAt.Before(lw.From) || rd.StartedAt.After(lw.Until) || !slices.Contains(rd.TimedOut, id) || checked[n][id] {
				continue
			}
			if checked[n] == nil {
				checked[n] = map[schema.PluginID]bool{}
			}
			checked[n][id] = true
			r.LateTimeouts++
			if !retried[n] {
				r.violate("round %d recorded late taker %s timed_out but asked for no retry", n, id)
			}
			delivered := false
			for _, m := range ns[sort.Search(len(ns), func(i int) bool { return ns[i] > n }):] {
				later := final[m]
				if (slices.Contains(later.Acked, id) || slices.Contains(later.Failed, id)) && got[id][m] {
					delivered = true
					break
				}
			}
			if !delivered {
				r.violate("round %d recorded late taker %s timed_out, and no later round delivered it and recorded its answer: lost", n, id)
			}
		}
	}
}

// checkTexts checks the records' sizes and texts: every round record within
// the write budget (a per-agent record within half of it), every error
// text of a round record at most schema.MaxAckErrorLen bytes after JSON
// escaping (plus the truncation marker; the summary's examples at most
// schema.MaxExampleErrorLen), every ack's error at most
// schema.MaxAckErrorLen bytes (plus the marker), and every
// participant a name that some incarnation registered (128-character names
// intact).
func (h *History) checkTexts(r *Report) {
	const marker = len(schema.CutMarker)
	if h.WriteBudget > 0 {
		for _, s := range h.Sizes {
			limit := h.WriteBudget
			if s.Agent != "" {
				limit /= 2
			}
			if s.Bytes > limit {
				r.violate("record %s written at %d is %d bytes: its budget is %d", s.Key, s.ModRev, s.Bytes, limit)
			}
		}
	}
	checkText := func(what string, text string, max int) {
		r.TextsChecked++
		if n := jsonTextLen(text); n > max+marker {
			r.violate("%s is %d bytes after JSON escaping: the cap is %d", what, n, max+marker)
		}
	}
	for _, w := range h.KeyWrites {
		// An ack's error is cut by the watcher (schema.Cut, after
		// escaping); it is checked here in bytes, as the decoder does, so
		// that an ack cut in bytes by an older writer passes too. The
		// leader's Cut of it for its records changes nothing then.
		if w.Ack && w.Error != "" {
			r.TextsChecked++
			if n := len(w.Error); n > schema.MaxAckErrorLen+marker {
				r.violate("the error of ack %s/%s at %d is %d bytes: the cap is %d", w.Agent, w.Plugin, w.ModRev, n, schema.MaxAckErrorLen+marker)
			}
		}
	}
	known := map[schema.PluginID]bool{}
	for _, inc := range h.Incarnations {
		for _, p := range inc.Plugins {
			known[schema.PluginID{Agent: inc.Agent, Plugin: p}] = true
		}
	}
	for _, w := range h.RoundWrites {
		if w.Malformed || w.Round.State != schema.NotActive {
			continue
		}
		for id, e := range w.Round.Errors {
			checkText(fmt.Sprintf("round %d's error of %s", w.Key, id), e, schema.MaxAckErrorLen)
		}
		if ex := w.Round.Examples; ex != nil {
			for id, e := range ex.Errors {
				checkText(fmt.Sprintf("round %d's example error of %s", w.Key, id), e, schema.MaxExampleErrorLen)
			}
		}
		for _, p := range w.Round.Participants {
			if !known[p] {
				r.violate("round %d lists participant %s (%d+%d bytes), a name no incarnation registered", w.Key, p, len(p.Agent), len(p.Plugin))
			} else if len(p.Agent) == schema.MaxNameLen || len(p.Plugin) == schema.MaxNameLen {
				r.LongNames++
			}
		}
	}
}

// jsonTextLen is the length of s's JSON encoding, quotes excluded (as the
// coordinator's encoder escapes it: < > & too).
func jsonTextLen(s string) int {
	b, _ := json.Marshal(s)
	return len(b) - 2
}

// --- the seams of issue 24: participants fixed at Started, retries of
// failed joins and late registrations, names never left unowned ---

// roundSpan is one round as the checker sees it: its first Started write
// and its completed record.
type roundSpan struct {
	n         uint64
	startMod  int64
	viewRev   int64 // the start's view revision (0: not recorded)
	finishMod int64
	final     coordinator.RoundView
	done      bool
}

// roundSpans are the rounds with a Started record, by the etcd revision of
// their first Started write.
func (h *History) roundSpans() []*roundSpan {
	by := map[uint64]*roundSpan{}
	var out []*roundSpan
	for _, w := range h.RoundWrites {
		if w.Malformed {
			continue
		}
		s := by[w.Key]
		if s == nil {
			if w.Round.State != schema.Started {
				continue
			}
			s = &roundSpan{n: w.Key, startMod: w.ModRev, viewRev: w.Round.ViewRevision, final: w.Round}
			by[w.Key] = s
			out = append(out, s)
			continue
		}
		if w.Round.State == schema.NotActive && !s.done {
			s.final, s.done, s.finishMod = w.Round, true, w.ModRev
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].startMod < out[j].startMod })
	return out
}

// includes reports whether round s reached plugin id: a participant in its
// records, or in the set its leader reported at Started.
func (h *History) includes(s *roundSpan, id schema.PluginID) bool {
	return slices.Contains(s.final.Participants, id) || slices.Contains(h.StartSets[s.n], id)
}

// checkStartSets checks that every completed round's participants are
// exactly the set its leader started it with (reported by the
// coordinator's test hook right after the start Txn): a successor that
// resumes the round resumes that set, those that left are departed, and
// those that registered later are no participants. A round whose records
// were cut (Truncated) may list fewer, never others.
//
// One exception is the documented fallback (coordinator's setResume): an
// all-scope round whose leader died between its start Txn and its records,
// and whose start etcd compacted away (a compaction past its view
// revision, or a restore) before a successor read it, is resumed with the
// live registrations. It is counted (ResumeFallbacks), not a violation,
// only when such a compaction happened before the round finished.
func (h *History) checkStartSets(r *Report) {
	if len(h.StartSets) == 0 {
		return
	}
	for _, s := range h.roundSpans() {
		want, ok := h.StartSets[s.n]
		if !ok || !s.done {
			continue
		}
		r.StartSets++
		rd := s.final
		resumed := rd.StartedBy != rd.FinishedBy
		if resumed {
			r.Resumes++
		}
		how := "its leader"
		if resumed {
			how = fmt.Sprintf("%s after %s started it", rd.FinishedBy, rd.StartedBy)
		}
		var extra, missing []string
		for _, p := range rd.Participants {
			if !slices.Contains(want, p) {
				extra = append(extra, p.String())
			}
		}
		if !rd.Truncated {
			for _, p := range want {
				if !slices.Contains(rd.Participants, p) {
					missing = append(missing, p.String())
				}
			}
		}
		if (len(extra) > 0 || len(missing) > 0) && resumed && rd.Scope.IsAll() && h.compactedAway(s) {
			r.ResumeFallbacks++
			continue
		}
		if len(extra) > 0 {
			r.violate("round %d was finished by %s with participants it did not have at Started: %s", s.n, how, clip(extra))
		}
		if len(missing) > 0 {
			r.violate("round %d was finished by %s without participants it had at Started (not even departed): %s", s.n, how, clip(missing))
		}
	}
}

// compactedAway reports whether etcd compacted round s's view revision
// away while it ran: a compaction to a revision c past it, made before the
// round's finish was written (a compaction to c comes after etcd reached
// c, so a finish at or below c was there before it; a restore compacts to
// the revision it restored to, which every later write is above). An
// unknown view revision is taken as the start's.
func (h *History) compactedAway(s *roundSpan) bool {
	view := s.viewRev
	if view <= 0 {
		view = s.startMod
	}
	for _, c := range h.Compactions {
		if c > view && s.done && c < s.finishMod {
			return true
		}
	}
	return false
}

// clip joins names, at most 5 of them.
func clip(names []string) string {
	if len(names) > 5 {
		return fmt.Sprintf("%s and %d more", strings.Join(names[:5], ", "), len(names)-5)
	}
	return strings.Join(names, ", ")
}

// checkRetries checks that every failed or timed-out ack a plugin wrote
// (of a round or of its join resync, also one it wrote after registering
// mid-round) and every participant a round recorded failed or timed_out is
// followed by a round that includes that plugin. The round must start
// within the backoff bound (Backoff.Max) plus RetrySlack after the ack,
// or, if a round was running when that bound passed, within RetrySlack
// after that round finished (the next round merges every due request);
// a leader change in between adds DeadlineAllowance, an outage of every
// agent (Unreachable with Agent "") its length.
// A round of a later revision that was running when an ack of an older one
// came, and includes the plugin, counts too (it resyncs the plugin).
// Exempt: a plugin whose registration changed meanwhile (deleted with its
// lease, or registered again: its join resync is the next word), and a
// bound that runs past the end of the recording or an ack after the
// teardown began.
func (h *History) checkRetries(r *Report) {
	if h.RetrySlack <= 0 || h.Backoff.Max <= 0 {
		return
	}
	spans := h.roundSpans()
	type notice struct {
		id     schema.PluginID
		what   string
		modRev int64
		at     time.Time
		rev    uint64 // an ack's revision (0: a round's outcome)
	}
	var ns []notice
	for _, w := range h.KeyWrites {
		if !w.Ack || w.Deleted || (w.Result != schema.ResultError && w.Result != schema.ResultTimeout) {
			continue
		}
		if _, ok := h.Garbage[w.ModRev]; ok {
			continue
		}
		ns = append(ns, notice{schema.PluginID{Agent: w.Agent, Plugin: w.Plugin}, fmt.Sprintf("%s ack for revision %d", w.Result, w.Revision), w.ModRev, w.At, w.Revision})
	}
	for _, w := range h.RoundWrites {
		if w.Malformed || w.Round.State != schema.NotActive {
			continue
		}
		for _, l := range []struct {
			what string
			ids  []schema.PluginID
		}{{"failed", w.Round.Failed}, {"timed_out", w.Round.TimedOut}} {
			for _, id := range l.ids {
				ns = append(ns, notice{id, fmt.Sprintf("%s in round %d", l.what, w.Key), w.ModRev, w.Round.FinishedAt, 0})
			}
		}
	}
	regs := map[schema.PluginID][]KeyWrite{}
	for _, w := range h.KeyWrites {
		if !w.Ack {
			id := schema.PluginID{Agent: w.Agent, Plugin: w.Plugin}
			regs[id] = append(regs[id], w)
		}
	}
	// byTime: the completed rounds by start time, to find those running.
	var byTime []coordinator.RoundView
	for _, s := range spans {
		if s.done {
			byTime = append(byTime, s.final)
		}
	}
	sort.Slice(byTime, func(i, j int) bool { return byTime[i].StartedAt.Before(byTime[j].StartedAt) })
	done := map[string]bool{}      // one check per plugin and etcd revision
	for i := 0; i < len(ns); i++ { // the loop appends the retries of aborted rounds
		nt := ns[i]
		k := fmt.Sprintf("%s@%d", nt.id, nt.modRev)
		if done[k] || nt.at.IsZero() || (h.TeardownRev != 0 && nt.modRev > h.TeardownRev) {
			continue
		}
		done[k] = true
		// When the retry is due, or when the round running then ends: the
		// next round takes every due request in (not a chain of rounds:
		// that would let a steady trigger hide a lost retry).
		t := nt.at.Add(h.Backoff.Max)
		for _, rd := range byTime {
			if !rd.StartedAt.After(t) && rd.FinishedAt.After(t) {
				t = maxTime(t, rd.FinishedAt)
			}
		}
		limit := t.Add(h.RetrySlack)
		// An outage of etcd or of every coordinator (an etcd restore)
		// delays the retry by its length.
		for _, u := range h.Unreachable {
			if u.Agent == "" && u.Until.After(nt.at) && u.From.Before(limit) {
				limit = limit.Add(u.Until.Sub(maxTime(u.From, nt.at)))
			}
		}

		// The next round including the plugin: one started after the
		// notice, or a later revision's round running then (a late ack
		// of an older revision: that round resyncs the plugin anyway).
		var next *roundSpan
		for _, s := range spans {
			running := nt.rev != 0 && s.n > nt.rev && (!s.done || s.finishMod > nt.modRev)
			if (s.startMod > nt.modRev || running) && (h.includes(s, nt.id) || (s.final.Scope.IsAll() && registeredAt(regs[nt.id], s.startMod))) {
				next = s
				break
			}
		}
		if next != nil && next.done && slices.Contains(next.final.Skipped, nt.id) {
			// The round that took the retry in was an aborted wave round
			// that skipped the plugin: while its last ack is still a
			// failure, that round's own retry names it (planRetry), due
			// from its finish as if it had failed there.
			r.RetriesSkipped++
			if lastAckFailed(h.KeyWrites, nt.id, next.finishMod) {
				ns = append(ns, notice{nt.id, fmt.Sprintf("skipped by aborted wave round %d, its last ack a failure", next.n),
					next.finishMod, next.final.FinishedAt, 0})
			}
		}
		if next != nil && (next.startMod < nt.modRev || !next.final.StartedAt.After(limit)) {
			r.RetriesChecked++
			continue
		}
		// A leader change after the notice: one failover more.
		for _, e := range h.Elections {
			if e.Deleted > nt.modRev && (next == nil || e.Deleted < next.startMod) {
				limit = limit.Add(h.DeadlineAllowance)
				break
			}
		}
		if next != nil && !next.final.StartedAt.After(limit) {
			r.RetriesChecked++
			continue
		}
		if !h.End.IsZero() && limit.After(h.End) {
			continue // the recording ended first
		}
		changed := false
		for _, w := range regs[nt.id] {
			if w.ModRev > nt.modRev && !w.At.After(limit) {
				changed = true
			}
		}
		if changed || goneAt(regs[nt.id], nt.modRev) {
			// Registered again (its join resync covers it), or gone
			// before the notice (a round outcome written after its lease
			// expired): no round can include it until it registers.
			continue
		}
		r.RetriesChecked++
		if next == nil {
			r.violate("%s: %s was never included in a later round (due by %s)", nt.id, nt.what, limit.Format("15:04:05.000"))
		} else {
			r.violate("%s: %s was included in no round until round %d, %v after it (due by %s)", nt.id, nt.what, next.n,
				next.final.StartedAt.Sub(nt.at).Round(time.Millisecond), limit.Format("15:04:05.000"))
		}
	}
}

// lastAckFailed says whether id's last ack written before etcd revision
// before is a failure (error or timeout), as the leader sees it then.
func lastAckFailed(ws []KeyWrite, id schema.PluginID, before int64) bool {
	failed := false
	for _, w := range ws {
		if w.Ack && w.ModRev < before && w.Agent == id.Agent && w.Plugin == id.Plugin {
			failed = !w.Deleted && (w.Result == schema.ResultError || w.Result == schema.ResultTimeout)
		}
	}
	return failed
}

// outage is how much of [from, to] fell in outages of every agent
// (Unreachable windows with Agent "").
func (h *History) outage(from, to time.Time) time.Duration {
	var d time.Duration
	for _, u := range h.Unreachable {
		if u.Agent == "" && u.Until.After(from) && u.From.Before(to) {
			lo, hi := maxTime(u.From, from), u.Until
			if hi.After(to) {
				hi = to
			}
			d += hi.Sub(lo)
		}
	}
	return d
}

// registeredAt reports whether the last of a plugin's registration writes
// (in etcd order) at or before rev is a put: an all-scope round started at
// rev includes it.
// goneAt reports whether the last registration write of ws at or before
// etcd revision rev deleted it (false when none was seen).
func goneAt(ws []KeyWrite, rev int64) bool {
	gone := false
	for _, w := range ws {
		if w.ModRev > rev {
			break
		}
		gone = w.Deleted
	}
	return gone
}

func registeredAt(ws []KeyWrite, rev int64) bool {
	on := false
	for _, w := range ws {
		if w.ModRev > rev {
			break
		}
		on = !w.Deleted
	}
	return on
}

// checkUnowned checks that no agent name stays unowned (owners/<agent>
// absent) for longer than AgentTTL + OwnerSlack while a live process of
// that agent wants it and can reach etcd: time in an Unreachable window
// does not count, and after one the process has the full bound again,
// plus ReconnectGrace.
// Time without an owner is counted from the observer's clock, up to End.
func (h *History) checkUnowned(r *Report) {
	if h.AgentTTL <= 0 {
		return
	}
	bound := h.AgentTTL + h.OwnerSlack
	byAgent := map[string][]OwnerWrite{}
	for _, o := range h.Owners {
		byAgent[o.Agent] = append(byAgent[o.Agent], o)
	}
	incs := map[string][]*Incarnation{}
	for _, inc := range h.Incarnations {
		incs[inc.Agent] = append(incs[inc.Agent], inc)
	}
	end := h.End
	for agent, is := range incs {
		ws := byAgent[agent]
		sort.Slice(ws, func(i, j int) bool { return ws[i].ModRev < ws[j].ModRev })
		// Dated by etcd's commit where the probes bracket it, on the
		// side that makes a gap shorter (a delete at the latest, a put
		// at the earliest): never longer than it was.
		for i := range ws {
			if lo, hi, ok := h.committed(ws[i].ModRev); ok {
				ws[i].At = lo
				if ws[i].Deleted {
					ws[i].At = hi
				}
			}
		}
		// The unowned intervals: from the agent's first incarnation (or a
		// deletion) to the next put.
		type gap struct{ from, until time.Time }
		var gaps []gap
		from := time.Time{}
		for _, is := range is {
			if from.IsZero() || is.Began.Before(from) {
				from = is.Began
			}
		}
		owned := false
		for _, w := range ws {
			switch {
			case w.Deleted && owned:
				owned, from = false, w.At
			case !w.Deleted && !owned:
				if !from.IsZero() {
					gaps = append(gaps, gap{from, w.At})
				}
				owned = true
			}
		}
		if !owned && !from.IsZero() && !end.IsZero() {
			gaps = append(gaps, gap{from, end})
		}
		for _, g := range gaps {
			if !end.IsZero() && g.until.After(end) {
				g.until = end
			}
			// The parts of g in which a live process wanted the name
			// and reached etcd, each checked against the bound.
			for _, inc := range is {
				lo, hi := maxTime(g.from, inc.Began), g.until
				if !inc.Ended.IsZero() && inc.Ended.Before(hi) {
					hi = inc.Ended
				}
				if !hi.After(lo) {
					continue
				}
				r.OwnerGaps++
				if longest, at := h.reachableStretch(agent, lo, hi); longest > bound {
					r.violate("agent %s had no owner for %v from %s while its live incarnation %d reached etcd (bound %v)",
						agent, longest.Round(time.Millisecond), at.Format("15:04:05.000"), inc.ID, bound)
				}
			}
		}
	}
}

// reachableStretch is the longest stretch of [lo, hi) outside agent's
// Unreachable windows (each extended by ReconnectGrace), and where it
// begins.
func (h *History) reachableStretch(agent string, lo, hi time.Time) (time.Duration, time.Time) {
	var ws []Unreachable
	for _, u := range h.Unreachable {
		if (u.Agent == "" || u.Agent == agent) && u.Until.Add(h.ReconnectGrace).After(lo) && u.From.Before(hi) {
			ws = append(ws, u)
		}
	}
	sort.Slice(ws, func(i, j int) bool { return ws[i].From.Before(ws[j].From) })
	var longest time.Duration
	var at time.Time
	cur := lo // counting from here
	stretch := func(until time.Time) {
		if d := until.Sub(cur); d > longest {
			longest, at = d, cur
		}
	}
	for _, u := range ws {
		stretch(u.From)
		cur = maxTime(cur, u.Until.Add(h.ReconnectGrace))
	}
	stretch(hi)
	return longest, at
}

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}
