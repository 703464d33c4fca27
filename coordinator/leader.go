package coordinator

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/sirupsen/logrus"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"

	"github.com/resyncd/resync/internal/backoff"
	"github.com/resyncd/resync/internal/listwatch"
	"github.com/resyncd/resync/schema"
)

// stateItem is one change of a registration or an ack.
type stateItem struct {
	id      schema.PluginID
	reg     *schema.Registration // registration put
	lease   clientv3.LeaseID     // a registration's lease: its agent's session
	ack     *schema.Ack          // ack put
	deleted bool
	isAck   bool
}

// stateEvent comes from the one watch over acks/ and registrations/: one
// watch, so that changes arrive in etcd's revision order (an ack put before
// its lease expired is seen before its registration vanishes).
type stateEvent struct {
	// rev: the etcd revision the leader's view is exactly etcd's state
	// at, once this event is applied (the listing's revision, or the last
	// change's); 0 for an event that changes nothing.
	rev    int64
	reset  bool // regs and acks are the whole state
	regs   map[schema.PluginID]schema.Registration
	leases map[string]clientv3.LeaseID // with reset: each agent's session lease
	acks   map[schema.PluginID]schema.Ack
	items  []stateItem
	bad    []error
}

type reqItem struct {
	key     string
	writer  schema.Writer // from the key
	req     schema.Request
	deleted bool
	// err: malformed, or (wrapping schema.ErrRefused) wider than its
	// writer may ask for; either way logged, counted and deleted.
	err error
}

type reqEvent struct {
	reset bool // items is the whole set
	items []reqItem
}

// leader is one term of leadership. All its state is owned by run's
// goroutine; feeders only send on channels.
type leader struct {
	co       *Coordinator
	cfg      Config
	layout   schema.Layout
	c        *clientv3.Client
	sess     *concurrency.Session
	key      string // our leader key
	term     int64  // its create revision: the fencing token
	identity string // id@term, written in every record
	log      logrus.FieldLogger

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	stateC chan stateEvent
	reqC   chan reqEvent
	// ended ends when leadership does (deposed, session expired, closed);
	// its cause says how (the first end wins). The leader's loop, its
	// retries and their etcd calls stop with it.
	ended context.Context
	end   context.CancelCauseFunc

	stateSynced, reqsSynced bool
	// viewRev: the etcd revision l.regs and l.acks are exactly etcd's
	// state at (see stateEvent.rev); a round's participants are chosen
	// from that view, and its summary records it (Round.ViewRevision).
	viewRev int64

	// refused is each agent's refused registrations from its owner
	// record, and refusedSum their last reported sum; both belong to the
	// state watch's goroutine (decodeState).
	refused     map[string]int
	refusedSum  int
	refusedSent bool

	regs map[schema.PluginID]schema.Registration
	// agentLeases is the session lease of every agent with registrations
	// (the lease its wake key is written on: wake.go), and agentRegs how
	// many registrations each has.
	agentLeases map[string]clientv3.LeaseID
	agentRegs   map[string]int
	// shardAgents counts the agents with registrations per wake shard,
	// kept with agentRegs so that packing a round's wake writes does not
	// hash the whole fleet twice per record.
	shardAgents [schema.WakeShards]int
	// needRewake: the term has not yet written the wake keys of the
	// record it found (rewake).
	needRewake bool
	// shards is which wake shards may still hold an all-scope Started
	// record, and shardsKnown whether this term wrote every shard once
	// (wake.go, shardsFor).
	shards      shardSet
	shardsKnown bool
	// ordered is regs' keys in registration order (participants), kept
	// until regs changes: a stable fleet's rounds skip the sort (3.7 ms
	// at 10,000 registrations).
	ordered []schema.PluginID
	acks    map[schema.PluginID]schema.Ack
	// topAck is at least the highest revision any ack in acks is for
	// (kept on updates, recomputed on a listing; a deleted ack does not
	// lower it): a round started above it has no ack to reconcile.
	topAck   uint64
	requests map[string]schema.Request // pending, not yet consumed
	controls map[string]schema.Request // pending pause, resume and abort requests (control.go)
	firstReq time.Time                 // when the oldest pending request was seen
	errSeen  map[string]time.Time      // error requests: when each was seen (streaks.go)
	rejoins  map[string]rejoinWait     // rejoin requests: the registrations they wait for (rejoin.go)
	streaks  *errorStreaks             // pacing of error-triggered rounds per agent

	epoch       string              // the history's epoch, written in every revision record
	lastN       uint64              // highest round number written
	rev         *schema.Revision    // last revision record (nil: none)
	initial     string              // non-empty: start a round at once with this reason
	resume      *schema.Round       // a Started round to resume once synced
	resumeParts []schema.PluginID   // its participants, from rounds/<N>/agents/
	resumeRecs  []schema.RoundAgent // its per-agent records: a wave round's plan, done agents' outcomes
	rebuild     bool                // resume has no participant list: use the live registrations
	// recordResume: the resumed round's per-agent records were incomplete;
	// the successor writes them for the set it resumes with, so that the
	// set stays durable whatever etcd compacts or restores next.
	recordResume bool
	// planLost: the resumed round is a wave round whose plan went with an
	// unreadable summary (setResume); it continues aborted, the plan
	// written first.
	planLost bool
	round    *roundState                // the running round
	retries  map[uint64]schema.ScopeSet // failed and timed-out participants of recent unclean rounds
	errKeys  []string                   // streak keys of the running round if error-triggered (streaks.go)

	// Failed acks no round answers yet (joinfail.go): planned, in order
	// seen, until step writes their requests; handled is the revision of
	// each plugin's last failed ack answered or planned; swept is false
	// until every ack of a (re-)listed state has been checked.
	failedAcks     map[schema.PluginID]schema.Ack
	failedAckOrder []schema.PluginID
	handled        map[schema.PluginID]uint64
	swept          bool
}

func newLeader(co *Coordinator, sess *concurrency.Session, key string, term int64, log logrus.FieldLogger) *leader {
	ctx, cancel := context.WithCancel(co.ctx)
	ended, end := context.WithCancelCause(ctx)
	return &leader{
		co: co, cfg: co.cfg, layout: co.layout, c: co.c, sess: sess, key: key, term: term,
		identity: fmt.Sprintf("%s@%d", co.cfg.ID, term), log: log,
		ctx: ctx, cancel: cancel,
		stateC: make(chan stateEvent, 1024), reqC: make(chan reqEvent, 64),
		ended: ended, end: end,
		regs:        map[schema.PluginID]schema.Registration{},
		agentLeases: map[string]clientv3.LeaseID{},
		agentRegs:   map[string]int{},
		acks:        map[schema.PluginID]schema.Ack{},
		requests:    map[string]schema.Request{},
		controls:    map[string]schema.Request{},
		errSeen:     map[string]time.Time{},
		rejoins:     map[string]rejoinWait{},
		streaks:     newErrorStreaks(co.cfg.BackoffMin, co.cfg.BackoffMax),

		failedAcks: map[schema.PluginID]schema.Ack{},
		handled:    map[schema.PluginID]uint64{},
	}
}

// run leads until deposed or closed. Leader work stops at once when it
// returns: the feeders are cancelled and waited for.
func (l *leader) run() error {
	defer func() {
		l.cancel()
		l.wg.Wait()
	}()
	l.startFeeders()
	l.spawn(func() {
		select {
		case <-l.sess.Done():
			l.end(fmt.Errorf("%w: session expired", ErrDeposed))
		case <-l.ctx.Done():
			l.end(l.ctx.Err())
		}
	})
	if err := l.load(); err != nil {
		return err
	}
	l.needRewake = true
	// Armed only by nextWake: on a fake clock, the leader's one waiter is
	// the wake-up it needs.
	timer := l.co.clock.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	for {
		if l.stateSynced && l.reqsSynced {
			if err := l.step(l.co.clock.Now()); err != nil {
				return err
			}
		}
		if wake, ok := l.nextWake(); ok {
			timer.Reset(max(l.co.clock.Until(wake), 0))
			// A clock that passed wake between Until and Reset (a test's
			// fake clock advanced just then) would fire the timer a whole
			// pause late: step again now instead.
			if l.stateSynced && l.reqsSynced && !l.co.clock.Now().Before(wake) {
				continue
			}
		} else {
			timer.Stop()
		}
		select {
		case <-l.ended.Done():
			return l.why()
		case ev := <-l.stateC:
			l.onState(ev)
			l.drainState()
		case ev := <-l.reqC:
			if err := l.onRequests(ev); err != nil {
				return err
			}
		case <-timer.Chan():
		}
	}
}

// drainState takes the state events already queued, without waiting, so
// that the next step answers them all at once: a step's writes (a wave's
// done and started agents, join-failure requests) are one Txn for every ack
// that arrived while the last one was in flight, not one Txn per watch
// response. Bounded by the queue's size, so requests are not starved.
func (l *leader) drainState() {
	for range cap(l.stateC) {
		select {
		case ev := <-l.stateC:
			l.onState(ev)
		default:
			return
		}
	}
}

// why says how leadership ended (nil while it lasts).
func (l *leader) why() error { return context.Cause(l.ended) }

// retry is backoff.Retry for leader work: try's attempts, paced by b on
// the coordinator's clock, stop when leadership ends, and then retry
// returns why it ended.
func (l *leader) retry(b *backoff.Backoff, try func(context.Context) error, notify func(error, time.Duration)) error {
	err := backoff.Retry(l.ended, l.co.clock, b, try, notify)
	if stopped := (*backoff.StoppedError)(nil); errors.As(err, &stopped) {
		return l.why()
	}
	return err
}

func (l *leader) spawn(f func()) {
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		f()
	}()
}

func send[T any](ctx context.Context, ch chan<- T, v T) error {
	select {
	case ch <- v:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (l *leader) deposed(why string) { l.end(fmt.Errorf("%w: %s", ErrDeposed, why)) }

func (l *leader) startFeeders() {
	wlog := l.log.WithField("role", "leader")
	// One range watch over acks, owners, registrations: schema.Layout.StateRange.
	start, end := l.layout.StateRange()
	l.spawn(func() {
		listwatch.Run(l.ctx, l.c, start, listwatch.Options{End: end, Log: wlog}, func(ev listwatch.Event) error {
			return send(l.ctx, l.stateC, l.decodeState(ev))
		})
	})
	l.spawn(func() {
		listwatch.Run(l.ctx, l.c, l.layout.Requests(), listwatch.Options{Prefix: true, Log: wlog}, func(ev listwatch.Event) error {
			return send(l.ctx, l.reqC, l.decodeRequests(ev))
		})
	})
	// Our own leader key: deleted by hand or expired means deposed, even if
	// the session's keepalive has not noticed yet.
	l.spawn(func() {
		listwatch.Run(l.ctx, l.c, l.key, listwatch.Options{Log: wlog}, func(ev listwatch.Event) error {
			if ev.Reset && (len(ev.Kvs) == 0 || ev.Kvs[0].CreateRevision != l.term) {
				l.deposed("leader key " + l.key + " is gone")
			}
			for _, e := range ev.Changes {
				if e.Type == clientv3.EventTypeDelete || e.Kv.CreateRevision != l.term {
					l.deposed("leader key " + l.key + " was deleted")
				}
			}
			return nil
		})
	})
}

func (l *leader) decodeState(ev listwatch.Event) stateEvent {
	defer l.reportRefused()
	var out stateEvent
	if ev.Reset {
		l.refused = map[string]int{}
		out.reset, out.rev = true, ev.Revision
		out.regs = map[schema.PluginID]schema.Registration{}
		out.leases = map[string]clientv3.LeaseID{}
		out.acks = map[schema.PluginID]schema.Ack{}
		for _, kv := range ev.Kvs {
			if l.noteOwner(kv, false) {
				continue
			}
			it, err := l.decodeStateKV(kv)
			switch {
			case err != nil:
				out.bad = append(out.bad, err)
			case it.reg != nil:
				out.regs[it.id] = *it.reg
				out.leases[it.id.Agent] = it.lease
			case it.ack != nil:
				out.acks[it.id] = *it.ack
			}
		}
		return out
	}
	out.items = make([]stateItem, 0, len(ev.Changes))
	for _, e := range ev.Changes {
		// Not the response's header revision: a watch catching up may
		// send a header past the events it has delivered so far.
		out.rev = max(out.rev, e.Kv.ModRevision)
		if l.noteOwner(e.Kv, e.Type == clientv3.EventTypeDelete) {
			continue
		}
		if e.Type == clientv3.EventTypeDelete {
			k, err := l.layout.Parse(string(e.Kv.Key))
			if err == nil && (k.Kind == schema.KindAck || k.Kind == schema.KindRegistration) {
				out.items = append(out.items, stateItem{id: schema.PluginID{Agent: k.Agent, Plugin: k.Plugin}, deleted: true, isAck: k.Kind == schema.KindAck})
			}
			continue
		}
		it, err := l.decodeStateKV(e.Kv)
		if err != nil {
			out.bad = append(out.bad, err)
			continue
		}
		if it.reg != nil || it.ack != nil {
			out.items = append(out.items, it)
		}
	}
	return out
}

// noteOwner records the refused registrations of an owner key (false: kv
// is not one). A malformed owner record counts as none refused.
func (l *leader) noteOwner(kv *mvccpb.KeyValue, deleted bool) bool {
	key := string(kv.Key)
	if !strings.HasPrefix(key, l.layout.Owners()) {
		return false
	}
	if l.refused == nil {
		l.refused = map[string]int{}
	}
	if deleted {
		if k, err := l.layout.Parse(key); err == nil {
			delete(l.refused, k.Agent)
		}
		return true
	}
	if o, err := l.layout.DecodeOwner(key, kv.Value); err == nil {
		l.refused[o.Agent] = o.Refused
	}
	return true
}

// reportRefused tells RefusalHooks the sum of refused registrations when
// it changed (always once, at the first state read of a leadership).
func (l *leader) reportRefused() {
	rh, ok := l.co.hooks.(RefusalHooks)
	if !ok {
		return
	}
	sum := 0
	for _, n := range l.refused {
		sum += n
	}
	if sum != l.refusedSum || !l.refusedSent {
		l.refusedSum, l.refusedSent = sum, true
		rh.RefusedRegistrations(sum)
	}
}

// decodeStateKV decodes an ack or a registration; election keys in the
// watched range give an empty item.
func (l *leader) decodeStateKV(kv *mvccpb.KeyValue) (stateItem, error) {
	key := string(kv.Key)
	switch {
	case strings.HasPrefix(key, l.layout.Registrations()):
		reg, err := l.layout.DecodeRegistration(key, kv.Value)
		if err != nil {
			return stateItem{}, err
		}
		return stateItem{id: reg.ID(), reg: &reg, lease: clientv3.LeaseID(kv.Lease)}, nil
	case strings.HasPrefix(key, l.layout.Acks()):
		id, ack, err := l.layout.DecodeAck(key, kv.Value)
		if err != nil {
			return stateItem{}, err
		}
		return stateItem{id: id, ack: &ack, isAck: true}, nil
	}
	return stateItem{}, nil
}

func (l *leader) decodeRequests(ev listwatch.Event) reqEvent {
	decode := func(key string, value []byte) reqItem {
		w, req, err := l.layout.DecodeRequest(key, value)
		if err == nil {
			err = req.AllowedFor(w)
		}
		return reqItem{key: key, writer: w, req: req, err: err}
	}
	var out reqEvent
	if ev.Reset {
		out.reset = true
		for _, kv := range ev.Kvs {
			out.items = append(out.items, decode(string(kv.Key), kv.Value))
		}
		return out
	}
	for _, e := range ev.Changes {
		if e.Type == clientv3.EventTypeDelete {
			out.items = append(out.items, reqItem{key: string(e.Kv.Key), deleted: true})
			continue
		}
		out.items = append(out.items, decode(string(e.Kv.Key), e.Kv.Value))
	}
	return out
}

// load reads the revision record (retrying while etcd fails) and decides
// what this term starts with: round 1, a resumed round, or idling.
func (l *leader) load() error {
	return l.retry(backoff.New(retryMin, retryMax), func(context.Context) error { return l.tryLoad() },
		func(err error, _ time.Duration) {
			l.log.WithError(err).Warn("coordinator: reading the revision failed; retrying")
		})
}

func (l *leader) tryLoad() (err error) {
	ctx, cancel := context.WithTimeout(l.ctx, l.cfg.OpTimeout)
	defer cancel()
	resp, err := l.c.Get(ctx, l.layout.Revision())
	if err != nil {
		return err
	}
	// A new epoch whenever the record is missing or unreadable (a new
	// cluster, a wiped prefix, a restore that lost it) or has none (an
	// older version wrote it): the cluster id and the etcd revision of this
	// read name the history uniquely within the cluster.
	newEpoch := fmt.Sprintf("%x-%d", resp.Header.ClusterId, resp.Header.Revision)
	l.epoch = newEpoch
	defer func() {
		// The error streaks survive failover: rebuilt from the history.
		if err == nil {
			l.streaks = newErrorStreaks(l.cfg.BackoffMin, l.cfg.BackoffMax)
			err = l.streaks.replayHistory(ctx, l.c, l.layout, l.lastN)
		}
	}()
	if len(resp.Kvs) == 1 {
		rev, err := l.layout.DecodeRevision(string(resp.Kvs[0].Key), resp.Kvs[0].Value)
		if err == nil {
			if rev.Epoch != "" {
				l.epoch = rev.Epoch
			}
			return l.loadRevision(ctx, rev, resp.Kvs[0].ModRevision)
		}
		l.log.WithError(err).WithField("epoch", l.epoch).Error("coordinator: the revision record is malformed; recovering from the round records in a new epoch")
		return l.loadRounds(ctx, revisionUnreadable)
	}
	l.log.WithField("epoch", l.epoch).Info("coordinator: no revision record: a new history (epoch) starts")
	return l.loadRounds(ctx, revisionMissing)
}

// loadRevision continues from a readable revision record: it is the truth
// about N (rounds/ keys are not consulted for N: a garbage key with a higher
// number must not make N skip).
func (l *leader) loadRevision(ctx context.Context, rev schema.Revision, revModRev int64) error {
	l.rev = &rev
	l.lastN = rev.Revision
	l.co.setStatus(func(s *Status) { r := rev; s.Revision = &r })
	if rev.State != schema.Started {
		return nil
	}
	rr, err := l.c.Get(ctx, l.layout.Round(rev.Revision))
	if err != nil {
		return err
	}
	resume := schema.Round{Revision: rev.Revision, State: schema.Started, Reason: rev.Reason, Cause: rev.Cause,
		Scope: rev.Scope, StartedAt: rev.StartedAt, Deadline: rev.Deadline, StartedBy: rev.Leader,
		Counts: schema.RoundCounts{Participants: rev.Participants, Pending: rev.Participants}}
	// The start Txn wrote the summary and the revision record at one etcd
	// revision; the summary is not written again before the round
	// finishes (the revision record may be, by hand).
	startRev := revModRev
	if len(rr.Kvs) == 1 {
		round, err := l.layout.DecodeRound(string(rr.Kvs[0].Key), rr.Kvs[0].Value)
		if err == nil && round.State == schema.Started {
			resume = round
			// The participants were chosen from the leader's view at
			// ViewRevision, which may lag the start Txn: read there.
			startRev = rr.Kvs[0].ModRevision
			if round.ViewRevision > 0 && round.ViewRevision <= startRev {
				startRev = round.ViewRevision
			}
		} else {
			l.log.WithError(err).WithField("revision", rev.Revision).Error("coordinator: the running round's summary is malformed; resuming from the revision record")
		}
	} else {
		l.log.WithField("revision", rev.Revision).Error("coordinator: the running round's summary is missing; resuming from the revision record")
	}
	return l.setResume(ctx, resume, startRev)
}

// setResume makes round the one to resume, with exactly the participants
// fixed when it said Started (invariant 8). A set scope's participants are
// its records under rounds/<N>/agents/, in etcd no later than its start
// Txn (placeRecords). An all-scope round's records are in its start Txn in
// a small fleet, else follow it (writeRecordsAfter): when they are all
// there they are the participants;
// otherwise (the leader died in between) they are the registrations at the
// start Txn's etcd revision startRev, read from etcd's history, so that a
// plugin that left since is departed and one registered since is no
// participant (it has its join resync). Only when etcd compacted that
// revision away does the round resume with the live registrations, logged as
// an error and counted (Status.ResumeFallbacks).
func (l *leader) setResume(_ context.Context, round schema.Round, startRev int64) error {
	// Paged: thousands of agents take longer than one etcd call's timeout.
	ctx, cancel := context.WithTimeout(l.ctx, 10*l.cfg.OpTimeout)
	defer cancel()
	recs, bad, err := ReadRoundAgents(ctx, l.c, l.layout, round.Revision, 0)
	if err != nil {
		return err
	}
	for _, b := range bad {
		l.log.WithError(b).Warn("coordinator: skipping a malformed round agent record of the running round")
	}
	var parts []schema.PluginID
	for _, r := range recs {
		for _, p := range r.Plugins {
			parts = append(parts, schema.PluginID{Agent: r.Agent, Plugin: p})
		}
	}
	l.resume, l.resumeParts, l.rebuild, l.recordResume = &round, parts, false, false
	l.resumeRecs, l.planLost = recs, false
	if round.Wave == nil && slices.ContainsFunc(recs, func(r schema.RoundAgent) bool { return r.Wave != "" }) {
		// A wave round (its records say so) whose summary, which held
		// its plan, is unreadable or missing. Resumed as a plain round,
		// its agents the window never let in would get Started (an
		// all-scope round's wake shards) and the skipped ones would be
		// listed skipped in a round that is no wave round. Its knobs are
		// lost, so it continues aborted: the agents started complete,
		// none starts any more, those never started are skipped.
		l.log.WithField("revision", round.Revision).Error("coordinator: the running round is a wave round whose plan was lost with its summary; continuing it aborted: no more agents start")
		round.Wave = &schema.WavePlan{Phase: schema.PhaseRolling, Aborted: "the round's summary was unreadable: its wave plan is lost",
			AbortedAt: l.co.clock.Now().UTC()}
		l.planLost = true
	}
	switch {
	case round.Counts.Participants == 0 || (len(bad) == 0 && len(recs) > 0 && len(recs) >= round.Agents):
		// Complete (a summary without its agents count, from the revision
		// record or an older version, trusts the records it has).
	case !round.Scope.IsAll():
		if len(recs) == 0 {
			l.log.WithField("revision", round.Revision).Error("coordinator: the running round's participant records are missing; it has no participant left to wait for")
		}
	default:
		log := l.log.WithField("revision", round.Revision).WithField("records", len(recs)).WithField("agents", round.Agents).WithField("start_revision", startRev)
		parts, err := l.registrationsAt(ctx, startRev)
		if err == nil {
			log.WithField("participants", len(parts)).Warn("coordinator: the running round's participant records are incomplete (its leader died writing them); resuming with the registrations at its start")
			l.resumeParts, l.recordResume = parts, true
			return nil
		}
		if !errors.Is(err, rpctypes.ErrCompacted) && !errors.Is(err, rpctypes.ErrGRPCCompacted) {
			return err
		}
		log.WithError(err).Error("coordinator: the running round's participant records are incomplete and etcd compacted its start revision; resuming with the current registrations (a plugin that left since is no participant, one registered since is)")
		l.rebuild, l.recordResume = true, true
		l.co.setStatus(func(s *Status) { s.ResumeFallbacks++ })
	}
	return nil
}

// registrationsAt reads the registrations at etcd revision rev, in pages,
// in registration order. Malformed ones are logged and skipped.
func (l *leader) registrationsAt(ctx context.Context, rev int64) ([]schema.PluginID, error) {
	if rev <= 0 {
		return nil, fmt.Errorf("coordinator: no start revision known: %w", rpctypes.ErrCompacted)
	}
	prefix := l.layout.Registrations()
	end := clientv3.GetPrefixRangeEnd(prefix)
	var regs []schema.Registration
	for from := prefix; ; {
		resp, err := l.c.Get(ctx, from, clientv3.WithRange(end), clientv3.WithRev(rev), clientv3.WithLimit(1000),
			clientv3.WithSort(clientv3.SortByKey, clientv3.SortAscend))
		if err != nil {
			return nil, fmt.Errorf("coordinator: read the registrations at revision %d: %w", rev, err)
		}
		for _, kv := range resp.Kvs {
			r, err := l.layout.DecodeRegistration(string(kv.Key), kv.Value)
			if err != nil {
				l.log.WithError(err).Warn("coordinator: skipping a malformed registration of the running round's start")
				continue
			}
			regs = append(regs, r)
		}
		if !resp.More || len(resp.Kvs) == 0 {
			break
		}
		from = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	}
	slices.SortFunc(regs, schema.CompareRegistrations)
	out := make([]schema.PluginID, len(regs))
	for i, r := range regs {
		out[i] = r.ID()
	}
	return out, nil
}

// lostRevision says why the revision record cannot be continued from.
type lostRevision int

const (
	revisionMissing    lostRevision = iota // no revision key: a new cluster or a wiped prefix
	revisionUnreadable                     // the revision key does not decode
)

func (w lostRevision) String() string {
	if w == revisionMissing {
		return "revision key missing"
	}
	return "revision record unreadable"
}

// roundScan bounds how many round summaries loadRounds considers, newest
// first, looking for one that decodes.
const roundScan = 100

// loadRounds continues when the revision key is missing or unreadable
// (why): the newest round summary that decodes says where the rounds stand.
// A Started one is resumed, as after any failover; otherwise a new round
// starts at once to recover. Malformed round records are logged and
// skipped, so that garbage under rounds/ neither makes N skip nor abandons
// a running round. Keys are scanned without values, in pages, so the
// per-agent records under rounds/<N>/ cost little.
func (l *leader) loadRounds(ctx context.Context, why lostRevision) error {
	var cands []uint64
	var highest uint64 // highest round number of any rounds/ key, decodable or not
	from, end := l.layout.Rounds(), clientv3.GetPrefixRangeEnd(l.layout.Rounds())
	for len(cands) < roundScan {
		resp, err := l.c.Get(ctx, from, clientv3.WithRange(end), clientv3.WithKeysOnly(),
			clientv3.WithSort(clientv3.SortByKey, clientv3.SortDescend), clientv3.WithLimit(1000))
		if err != nil {
			return err
		}
		for _, kv := range resp.Kvs {
			k, err := l.layout.Parse(string(kv.Key))
			if err != nil {
				continue
			}
			highest = max(highest, k.Round)
			if k.Kind == schema.KindRound && len(cands) < roundScan {
				cands = append(cands, k.Round)
			}
		}
		if !resp.More || len(resp.Kvs) == 0 {
			break
		}
		end = string(resp.Kvs[len(resp.Kvs)-1].Key)
	}
	var last *schema.Round
	var lastRev int64 // the etcd revision of last's write
	for _, n := range cands {
		key := l.layout.Round(n)
		resp, err := l.c.Get(ctx, key)
		if err != nil {
			return err
		}
		if len(resp.Kvs) == 0 {
			continue
		}
		r, err := l.layout.DecodeRound(key, resp.Kvs[0].Value)
		if err != nil {
			l.log.WithError(err).WithField("key", key).Warn("coordinator: skipping a malformed round record")
			continue
		}
		last, lastRev = &r, resp.Kvs[0].ModRevision
		break
	}
	switch {
	case last == nil && highest == 0 && why == revisionMissing:
		l.initial = "initial resync: first coordinator leader"
	case last == nil:
		// Nothing readable: never reuse a round number.
		l.lastN = highest
		l.initial = fmt.Sprintf("%s and no readable round record; resync to recover", why)
	case last.State == schema.Started:
		l.lastN = last.Revision
		rev := schema.Revision{Revision: last.Revision, State: schema.Started, Reason: last.Reason, Cause: last.Cause,
			Scope: last.Scope, Participants: last.Counts.Participants, StartedAt: last.StartedAt, Deadline: last.Deadline,
			Leader: last.StartedBy, Epoch: l.epoch}
		l.rev = &rev
		l.co.setStatus(func(s *Status) { r := rev; s.Revision = &r })
		l.log.WithField("revision", last.Revision).Warn("coordinator: " + why.String() + "; resuming the running round from its record")
		return l.setResume(ctx, *last, lastRev)
	default:
		l.lastN = last.Revision
		l.initial = fmt.Sprintf("%s (last round %d); resync to recover", why, last.Revision)
	}
	return nil
}
