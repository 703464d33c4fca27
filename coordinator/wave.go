package coordinator

import (
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/resyncd/resync/schema"
)

// Wave rounds (docs/architecture.md, "Waves"). A wave round's participants
// are fixed at Started and recorded before it, one waiting record per
// agent (rounds/<N>/agents/<agent>); its start wakes nobody: no wake shard
// is written. The leader then starts agents a few at a time: one Txn puts
// an agent's record (started) and its own wake key (the Started record, on
// its session lease), so an agent is started exactly when etcd says so,
// and a successor reads from the records who was. When each of an agent's
// plugins resolved, one Txn puts its record (done, with its outcomes) and
// its wake key (the round's record NotActive): its plugins get NotActive
// then, not at the round's end, and the next agent may start. Agents
// outside the window get no event and read nothing: nothing they watch
// changes until the round finishes (an all-scope round then writes its
// NotActive to the shards, as any round; an agent never started sees a
// NotActive of a revision it had no Started for, which delivers nothing).
// Every step costs O(agents it starts or finishes), never O(fleet).

// waveAgent is one agent's part in the running wave round.
type waveAgent struct {
	parts     []schema.PluginID
	state     string // schema.AgentWaiting, ...
	canary    bool
	startedAt time.Time
	pending   int  // participants not resolved yet
	failed    bool // one of its plugins failed or timed out
}

// waveRun is the running wave round's window.
type waveRun struct {
	plan    schema.WavePlan
	agents  map[string]*waveAgent
	order   []string // admission order: canaries first
	next    int      // order[next:] may still be waiting
	started []string // started agents in start order: their deadlines
	head    int      // started[head:] may still be in flight
	doneQ   []string // resolved agents whose done record is not written yet
	// inFlight: started, not done; canaryLeft: canaries not done.
	inFlight, canaryLeft, failedAgents, skipped, done int
	canaryFailed                                      bool
	lastProgress                                      time.Time // the start, a completion, or a resume
	startVal                                          []byte    // the round's revision record, Started
}

// newWaveRun builds the window of a round just planned: every agent
// waiting, canaries (the set canary, or the plan's first Canaries agents)
// first.
func newWaveRun(plan schema.WavePlan, parts []schema.PluginID, canary map[string]bool, now time.Time) *waveRun {
	w := &waveRun{plan: plan, agents: map[string]*waveAgent{}, lastProgress: now}
	var rest []string
	byAgent(parts, func(agent string, ps []schema.PluginID) {
		wa := &waveAgent{parts: ps, state: schema.AgentWaiting, pending: len(ps)}
		w.agents[agent] = wa
		if canary[agent] || (canary == nil && len(w.order) < plan.Canaries) {
			wa.canary = true
			w.order = append(w.order, agent)
			w.canaryLeft++
			return
		}
		rest = append(rest, agent)
	})
	w.order = append(w.order, rest...)
	w.plan.Canaries = w.canaryLeft
	if w.canaryLeft > 0 {
		w.plan.Phase = schema.PhaseCanary
	}
	return w
}

// waves are the wave knobs of a round started now: the coordinator's
// defaults and the requests'.
func (l *leader) waves(reqs []schema.Wave) []schema.Wave {
	return append([]schema.Wave{l.cfg.Wave}, reqs...)
}

// planWave resolves the knobs ws for the participants parts: nil when no
// knob is set (no wave round). An explicit canary list keeps the agents
// that take part.
func planWave(parts []schema.PluginID, ws []schema.Wave) (*schema.WavePlan, map[string]bool) {
	agents := 0
	in := map[string]bool{}
	byAgent(parts, func(a string, _ []schema.PluginID) { agents++; in[a] = true })
	plan, list, ok := schema.Plan(agents, ws...)
	if !ok {
		return nil, nil
	}
	var canary map[string]bool
	if list != nil {
		canary = map[string]bool{}
		for _, a := range list {
			if in[a] {
				canary[a] = true
			}
		}
	}
	return &plan, canary
}

// waveResolved counts participant p's outcome o in the window: an agent
// whose plugins all resolved is queued for its done record.
func (rs *roundState) waveResolved(p schema.PluginID, o schema.Outcome) {
	w := rs.wave
	wa := w.agents[p.Agent]
	if wa == nil {
		return
	}
	if (o == schema.OutcomeFailed || o == schema.OutcomeTimedOut) && !wa.failed {
		wa.failed = true
		w.failedAgents++
		if wa.canary {
			w.canaryFailed = true
		}
	}
	if wa.pending--; wa.pending == 0 && o != schema.OutcomeSkipped {
		w.doneQ = append(w.doneQ, p.Agent)
	}
}

// advanceWave moves the running wave round's window: it times out agents
// past their deadline, records the agents done, applies the failure
// threshold, the progress deadline and the canary phase, skips the
// never-started agents of an aborted round, and starts agents while the
// window has room. Its error is only the end of leadership or a record
// that does not encode.
func (l *leader) advanceWave(now time.Time) error {
	w := l.round.wave
	l.expireAgents(now)
	freed, unstarted := l.markDone(now)
	// The plan first: once it says aborted, no agent starts (a successor
	// reads it), and the skipped records follow it. A successor that finds
	// the plan but not the done records that led to it takes those agents
	// for in flight and resolves them from their acks.
	if l.wavePhase(now) {
		if err := l.writePlan(nil); err != nil {
			return err
		}
	}
	if w.plan.Aborted != "" && w.next < len(w.order) {
		if err := l.skipRest(); err != nil {
			return err
		}
	}
	// The agents done and those that take their places in one Txn: a
	// step of the window is one write, not two.
	if err := l.writeAgents(pairUp(unstarted, freed, l.admit(now)), now); err != nil {
		return err
	}
	l.waveStatus()
	return nil
}

// expireAgents times out the pending plugins of started agents whose own
// deadline (their start plus RoundDeadline) passed: in a wave round the
// deadline is each agent's, not the round's.
func (l *leader) expireAgents(now time.Time) {
	w := l.round.wave
	for w.head < len(w.started) {
		wa := w.agents[w.started[w.head]]
		if wa.state != schema.AgentStarted || wa.pending == 0 {
			w.head++
			continue
		}
		if now.Before(wa.startedAt.Add(l.cfg.RoundDeadline)) {
			return
		}
		for _, p := range wa.parts {
			l.resolve(p, true)
		}
		w.head++
	}
}

// wavePhase applies the failure threshold, the progress deadline and the
// canary phase at now. changed: the plan changed (to be written).
func (l *leader) wavePhase(now time.Time) (changed bool) {
	w := l.round.wave
	p := &w.plan
	if p.Aborted != "" {
		return false
	}
	switch {
	case p.MaxFailed != nil && w.failedAgents > *p.MaxFailed:
		return l.abortWave(now, fmt.Sprintf("%d agents failed, above max_failed %d", w.failedAgents, *p.MaxFailed))
	case p.Phase == schema.PhaseCanary && w.canaryFailed:
		return l.abortWave(now, "a canary failed")
	case p.ProgressDeadlineMS > 0 && !p.Paused && p.Phase != schema.PhaseCanaryPause &&
		!now.Before(w.lastProgress.Add(time.Duration(p.ProgressDeadlineMS)*time.Millisecond)):
		return l.abortWave(now, fmt.Sprintf("no agent completed within the progress deadline of %v", time.Duration(p.ProgressDeadlineMS)*time.Millisecond))
	case p.Phase == schema.PhaseCanary && w.canaryLeft == 0:
		p.Phase = schema.PhaseRolling
		if p.CanaryManual || p.CanaryPauseMS > 0 {
			p.Phase = schema.PhaseCanaryPause
			if !p.CanaryManual {
				p.ResumeAt = now.Add(time.Duration(p.CanaryPauseMS) * time.Millisecond).UTC()
			}
		}
		l.log.WithField("revision", l.round.rec.Revision).WithField("phase", p.Phase).Info("coordinator: the canaries resolved clean")
		return true
	case p.Phase == schema.PhaseCanaryPause && !p.ResumeAt.IsZero() && !now.Before(p.ResumeAt):
		p.Phase, p.ResumeAt, w.lastProgress = schema.PhaseRolling, time.Time{}, now
		return true
	}
	return false
}

// abortWave marks the running round aborted: no agent starts any more.
func (l *leader) abortWave(now time.Time, why string) bool {
	p := &l.round.wave.plan
	p.Aborted, p.AbortedAt = schema.Cut(why, schema.MaxReasonLen), now.UTC()
	l.log.WithField("revision", l.round.rec.Revision).WithField("reason", why).Warn("coordinator: wave round aborted: no more agents start; those never started are skipped")
	return true
}

// room is how many more agents the window takes now.
func (w *waveRun) room() int {
	p := w.plan
	if p.Aborted != "" || p.Paused || p.Phase == schema.PhaseCanaryPause {
		return 0
	}
	if p.MaxInFlight == 0 {
		return len(w.order)
	}
	return max(p.MaxInFlight-w.inFlight, 0)
}

// admit starts waiting agents, in order, while the window has room (in the
// canary phase only canaries): the agents to write started.
func (l *leader) admit(now time.Time) []string {
	w := l.round.wave
	var batch []string
	for room := w.room(); room > 0 && w.next < len(w.order); {
		a := w.order[w.next]
		wa := w.agents[a]
		if wa.state != schema.AgentWaiting {
			w.next++
			continue
		}
		if w.plan.Phase == schema.PhaseCanary && !wa.canary {
			break
		}
		wa.state, wa.startedAt = schema.AgentStarted, now
		w.inFlight++
		w.started = append(w.started, a)
		batch = append(batch, a)
		w.next++
		room--
	}
	return batch
}

// agentPart is agent a's record in the running wave round, as its state
// says (with its outcomes once done or skipped).
func (l *leader) agentPart(a string, now time.Time) (put, error) {
	rs := l.round
	wa := rs.wave.agents[a]
	extra := func(ra *schema.RoundAgent) {
		ra.Wave, ra.Canary = wa.state, wa.canary
		ra.StartedAt = wa.startedAt.UTC()
		if wa.state == schema.AgentDone {
			ra.DoneAt = now.UTC()
		}
	}
	if wa.state == schema.AgentStarted || wa.state == schema.AgentWaiting {
		ra := schema.RoundAgent{Revision: rs.rec.Revision, Agent: a, State: schema.Started}
		for _, p := range wa.parts {
			ra.Plugins = append(ra.Plugins, p.Plugin)
		}
		extra(&ra)
		b, err := schema.Encode(ra)
		return put{key: l.layout.RoundAgent(rs.rec.Revision, a), val: b}, err
	}
	return l.outcomeRecord(rs, a, wa.parts, extra)
}

// stepWrites is how many of a wave step's Txns are in flight at once.
// etcd commits concurrent Txns in one raft batch and one fsync, so a step
// of many agents costs about one write's latency instead of one per Txn.
const stepWrites = 8

// pairUp orders a step's agents so that each agent done that frees a
// place in the window (it was in flight) goes with the one that takes
// its place: first the agents done that were never started (they free
// nothing), each alone, then (freed, started) pairs, the freed agent
// first, then the agents freed or started left over. A unit is written
// whole in one Txn, in this order, so neither a Txn nor the order of its
// writes ever puts more agents in flight than it frees, whatever order a
// step's Txns commit in; the starts left over use room that earlier steps
// freed, which etcd holds already.
func pairUp(unstarted, freed, started []string) [][]string {
	units := make([][]string, 0, len(unstarted)+max(len(freed), len(started)))
	for _, a := range unstarted {
		units = append(units, []string{a})
	}
	for i := range max(len(freed), len(started)) {
		var u []string
		if i < len(freed) {
			u = append(u, freed[i])
		}
		if i < len(started) {
			u = append(u, started[i])
		}
		units = append(units, u)
	}
	return units
}

// writeAgents writes the records of a step's agents (started or done)
// with their wake keys, two operations an agent, in Txns of at most
// schema.MaxTxnOps and WriteBudget bytes that never split a unit of
// pairUp, stepWrites of them at once: Started for a started agent,
// NotActive for a done one that had been started. An agent whose lease is
// gone gets its record alone (its plugins are departed).
func (l *leader) writeAgents(units [][]string, now time.Time) error {
	w := l.round.wave
	var notActive []byte
	type chunk struct{ recs, wakes []put }
	var chunks []chunk
	var cur chunk
	size := 0
	for _, u := range units {
		if len(cur.recs)+len(u) > schema.MaxTxnOps/2 || size >= l.cfg.WriteBudget/2 {
			chunks, cur, size = append(chunks, cur), chunk{}, 0
		}
		for _, a := range u {
			rec, err := l.agentPart(a, now)
			if err != nil {
				return err
			}
			val := w.startVal
			if w.agents[a].state == schema.AgentDone {
				if notActive == nil {
					if notActive, err = l.agentNotActive(now); err != nil {
						return err
					}
				}
				val = notActive
			}
			cur.recs, size = append(cur.recs, rec), size+rec.size()
			if lease, ok := l.agentLeases[a]; ok && !w.agents[a].startedAt.IsZero() {
				wp := put{key: l.layout.WakeAgent(a), val: val, lease: lease}
				cur.wakes, size = append(cur.wakes, wp), size+wp.size()
			}
		}
	}
	if len(cur.recs) > 0 {
		chunks = append(chunks, cur)
	}
	lost := make([]int, len(chunks))
	errs := make([]error, len(chunks))
	sem := make(chan struct{}, stepWrites)
	var wg sync.WaitGroup
	for i, c := range chunks {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			lost[i], errs[i] = l.writeWithWakes(c.recs, c.wakes)
		})
	}
	wg.Wait()
	for _, n := range lost {
		l.round.lost += n
	}
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// writeWithWakes writes records and wake keys in one Txn; when etcd
// refuses it (a lease gone, too large), each record goes with its wake key
// on its own, and without it when its lease is gone. lost: the records
// etcd refused for good. Safe to call concurrently.
func (l *leader) writeWithWakes(recs, wakes []put) (lost int, err error) {
	ops := make([]clientv3.Op, 0, len(recs)+len(wakes))
	for _, p := range recs {
		ops = append(ops, p.op())
	}
	for _, p := range wakes {
		ops = append(ops, p.op())
	}
	l.noteWake(len(wakes))
	err = l.fencedTxn(ops)
	if err == nil || (!errors.Is(err, errPermanent) && !errors.Is(err, errLeaseGone)) {
		return 0, err
	}
	wakeOf := map[string]put{}
	for _, p := range wakes {
		wakeOf[p.key] = p
	}
	for _, p := range recs {
		k, _ := l.layout.Parse(p.key)
		ops := []clientv3.Op{p.op()}
		if wp, ok := wakeOf[l.layout.WakeAgent(k.Agent)]; ok {
			ops = append(ops, wp.op())
		}
		err := l.fencedTxn(ops)
		if errors.Is(err, errLeaseGone) || (errors.Is(err, errPermanent) && len(ops) > 1) {
			err = l.fencedTxn(ops[:1])
		}
		if errors.Is(err, errPermanent) {
			lost++
			l.log.WithError(err).WithField("key", p.key).Error("coordinator: etcd refuses a wave agent's record for good")
			continue
		}
		if err != nil {
			return lost, err
		}
	}
	return lost, nil
}

// agentNotActive is the running round's revision record, NotActive at now:
// what a done agent's wake key says.
func (l *leader) agentNotActive(now time.Time) ([]byte, error) {
	rev, err := schema.DecodeRevision(l.layout.Revision(), l.round.wave.startVal)
	if err != nil {
		return nil, err
	}
	rev.State, rev.FinishedAt, rev.Leader = schema.NotActive, now.UTC(), l.identity
	return schema.Encode(rev)
}

// writeDone records the agents whose plugins all resolved: done, and for
// those that were started their wake key NotActive, which frees their
// place in the window.
func (l *leader) writeDone(now time.Time) error {
	freed, unstarted := l.markDone(now)
	return l.writeAgents(pairUp(unstarted, freed, nil), now)
}

// markDone marks the agents whose plugins all resolved done, freeing
// their places in the window: the agents to write done, those that were
// in flight (freed) and those never started (unstarted: their plugins
// departed while they waited), each in the order they resolved.
func (l *leader) markDone(now time.Time) (freed, unstarted []string) {
	w := l.round.wave
	done := w.doneQ
	w.doneQ = nil
	for _, a := range done {
		wa := w.agents[a]
		if wa.state == schema.AgentStarted {
			w.inFlight--
			w.lastProgress = now
			freed = append(freed, a)
		} else {
			unstarted = append(unstarted, a)
		}
		if wa.canary {
			w.canaryLeft--
		}
		wa.state = schema.AgentDone
		w.done++
	}
	return freed, unstarted
}

// skipRest skips every agent of an aborted round not started yet: its
// pending plugins are skipped (no retry), and its record says so. It is
// never woken.
func (l *leader) skipRest() error {
	w := l.round.wave
	var puts []put
	for ; w.next < len(w.order); w.next++ {
		a := w.order[w.next]
		wa := w.agents[a]
		if wa.state != schema.AgentWaiting {
			continue
		}
		wa.state = schema.AgentSkipped
		w.skipped++
		if wa.canary {
			w.canaryLeft--
		}
		for _, p := range wa.parts {
			if l.round.outcome[p] == schema.OutcomePending {
				l.round.set(p, schema.OutcomeSkipped, "")
				l.co.hooks.Resolved(p, schema.OutcomeSkipped)
			}
		}
		rec, err := l.agentPart(a, time.Time{})
		if err != nil {
			return err
		}
		puts = append(puts, rec)
	}
	lost, err := l.writePuts(nil, puts)
	l.round.lost += lost
	return err
}

// writePlan writes the running round's summary with its plan (Started:
// the counts are the start's), and the ops of first (a control request's
// delete) in the same Txn.
func (l *leader) writePlan(first []clientv3.Op) error {
	rs := l.round
	plan := rs.wave.plan
	plan.WrittenBy = l.identity
	rs.rec.Wave = &plan
	b, err := schema.Encode(rs.rec)
	if err != nil {
		return err
	}
	err = l.fencedTxn(append(slices.Clone(first), clientv3.OpPut(l.layout.Round(rs.rec.Revision), string(b))))
	if errors.Is(err, errPermanent) {
		l.log.WithError(err).WithField("revision", rs.rec.Revision).Error("coordinator: etcd refuses the wave round's plan for good; a successor continues from the last one written")
		return nil
	}
	return err
}

// nextWaveWake is when the running wave round needs a step without an
// event: the first started agent's deadline, the end of a canary pause,
// the progress deadline.
func (l *leader) nextWaveWake() (time.Time, bool) {
	w := l.round.wave
	var at time.Time
	earlier := func(t time.Time) {
		if at.IsZero() || t.Before(at) {
			at = t
		}
	}
	for i := w.head; i < len(w.started); i++ {
		if wa := w.agents[w.started[i]]; wa.state == schema.AgentStarted && wa.pending > 0 {
			earlier(wa.startedAt.Add(l.cfg.RoundDeadline))
			break
		}
	}
	p := w.plan
	if p.Phase == schema.PhaseCanaryPause && !p.ResumeAt.IsZero() {
		earlier(p.ResumeAt)
	}
	if p.ProgressDeadlineMS > 0 && p.Aborted == "" && !p.Paused && p.Phase != schema.PhaseCanaryPause {
		earlier(w.lastProgress.Add(time.Duration(p.ProgressDeadlineMS) * time.Millisecond))
	}
	return at, !at.IsZero()
}

// waveStatus reports the window in the coordinator's status.
func (l *leader) waveStatus() {
	w := l.round.wave
	ws := WaveStatus{Revision: l.round.rec.Revision, InFlight: w.inFlight, FailedAgents: w.failedAgents, Skipped: w.skipped,
		Done: w.done, Waiting: len(w.order) - w.next, Phase: w.plan.Phase, Paused: w.plan.Paused, Aborted: w.plan.Aborted}
	l.co.setStatus(func(s *Status) { s.Wave = &ws })
	if wh, ok := l.co.hooks.(WaveHooks); ok {
		wh.WaveChanged(&ws)
	}
}

// WaveStatus is the running wave round's window (Status.Wave).
type WaveStatus struct {
	Revision     uint64 `json:"revision"`
	InFlight     int    `json:"in_flight"`
	Done         int    `json:"done"`
	Waiting      int    `json:"waiting"`
	Skipped      int    `json:"skipped"`
	FailedAgents int    `json:"failed_agents"`
	Phase        string `json:"phase"`
	Paused       bool   `json:"paused,omitempty"`
	Aborted      string `json:"aborted,omitempty"`
}

// waitingRecords are the per-agent records of a wave round being started,
// every agent waiting: written before its start Txn, they fix its
// participants and canaries.
func (l *leader) waitingRecords(n uint64, w *waveRun) ([]put, error) {
	puts := make([]put, 0, len(w.order))
	for _, a := range w.order {
		wa := w.agents[a]
		ra := schema.RoundAgent{Revision: n, Agent: a, State: schema.Started, Wave: schema.AgentWaiting, Canary: wa.canary}
		for _, p := range wa.parts {
			ra.Plugins = append(ra.Plugins, p.Plugin)
		}
		b, err := schema.Encode(ra)
		if err != nil {
			return nil, err
		}
		puts = append(puts, put{key: l.layout.RoundAgent(n, a), val: b})
	}
	return puts, nil
}

// rebuildWave continues the running wave round a successor resumes, from
// its summary's plan and its per-agent records: started agents are in
// flight (they were woken in the Txn that recorded them: not started
// again), done and skipped ones keep their recorded outcomes, and waiting
// ones start as the window allows, canaries first. The progress deadline
// counts from the last recorded completion.
func (l *leader) rebuildWave(recs []schema.RoundAgent) error {
	rs := l.round
	w := &waveRun{plan: *rs.rec.Wave, agents: map[string]*waveAgent{}, lastProgress: rs.rec.StartedAt}
	val, err := l.resumedStartVal()
	if err != nil {
		return err
	}
	w.startVal = val
	rs.wave = w
	var waiting []string
	for _, r := range recs {
		wa := &waveAgent{state: r.Wave, canary: r.Canary, startedAt: r.StartedAt, pending: len(r.Plugins)}
		for _, p := range r.Plugins {
			wa.parts = append(wa.parts, schema.PluginID{Agent: r.Agent, Plugin: p})
		}
		w.agents[r.Agent] = wa
		switch r.Wave {
		case schema.AgentWaiting, "":
			wa.state = schema.AgentWaiting
			if wa.canary {
				w.order = append(w.order, r.Agent)
			} else {
				waiting = append(waiting, r.Agent)
			}
		case schema.AgentStarted:
			w.inFlight++
			w.started = append(w.started, r.Agent)
		}
		if wa.canary && (wa.state == schema.AgentWaiting || wa.state == schema.AgentStarted) {
			w.canaryLeft++
		}
		if r.State == schema.NotActive {
			l.presetOutcomes(r, wa)
		}
	}
	w.order = append(w.order, waiting...)
	slices.SortFunc(w.started, func(a, b string) int { return w.agents[a].startedAt.Compare(w.agents[b].startedAt) })
	l.log.WithField("revision", rs.rec.Revision).WithField("in_flight", w.inFlight).WithField("waiting", len(w.order)).
		WithField("phase", w.plan.Phase).WithField("paused", w.plan.Paused).WithField("aborted", w.plan.Aborted).Info("coordinator: continuing the wave round's plan")
	return nil
}

// presetOutcomes takes the outcomes a done or skipped agent's record
// lists: they were final when written (the ack keys may have gone since).
func (l *leader) presetOutcomes(r schema.RoundAgent, wa *waveAgent) {
	rs, w := l.round, l.round.wave
	if r.Wave == schema.AgentSkipped {
		w.skipped++
	} else {
		w.done++
	}
	if r.DoneAt.After(w.lastProgress) {
		w.lastProgress = r.DoneAt
	}
	rs.preset(r, wa.parts)
	w.doneQ = nil // set queued them: their records are written already
}

// resumedStartVal is the resumed round's revision record, Started, as its
// agents' wake keys say it.
func (l *leader) resumedStartVal() ([]byte, error) {
	rec := l.round.rec
	if l.rev != nil && l.rev.Revision == rec.Revision && l.rev.State == schema.Started {
		return schema.Encode(*l.rev)
	}
	return schema.Encode(schema.Revision{Revision: rec.Revision, State: schema.Started, Reason: rec.Reason, Cause: rec.Cause,
		Scope: rec.Scope, Participants: rec.Counts.Participants, StartedAt: rec.StartedAt, Deadline: rec.Deadline,
		Leader: rec.StartedBy, Epoch: l.epoch})
}
