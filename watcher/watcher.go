package watcher

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jonboulle/clockwork"
	"github.com/sirupsen/logrus"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/resyncd/resync/internal/backoff"
	"github.com/resyncd/resync/internal/defaults"
	"github.com/resyncd/resync/internal/listwatch"
	"github.com/resyncd/resync/registry"
	"github.com/resyncd/resync/schema"
)

// Errors returned by a Watcher.
var (
	// ErrClosed is returned by Register and Request after Close.
	ErrClosed = errors.New("watcher: closed")
	// ErrQueueFull is returned by Request when Config.MaxPendingRequests
	// requests are already waiting to be written (etcd is unreachable).
	ErrQueueFull = errors.New("watcher: too many requests waiting to be written")
)

// Config configures a Watcher. Zero durations and counts mean their defaults.
type Config struct {
	// AcceptTimeout is how long a plugin has to take an event from its
	// status channel. A Started event not taken in time gets a "timeout"
	// ack and the next plugin proceeds; a NotActive event not taken in
	// time is dropped and counted. Default 1 s (the seed's value).
	AcceptTimeout time.Duration
	// AckTimeout is how long a plugin has to ack a Started event it took.
	// Then the watcher writes a "timeout" ack and the next plugin
	// proceeds; a later Ack is a no-op. Default 10 s (the seed's value).
	AckTimeout time.Duration
	// OpTimeout bounds each etcd write. Default 5 s.
	OpTimeout time.Duration
	// RetryMin and RetryMax bound the pause between attempts to write acks
	// and requests while etcd is unreachable. Defaults 100 ms and 5 s.
	RetryMin, RetryMax time.Duration
	// MaxPendingRequests bounds the requests waiting to be written; Request
	// returns ErrQueueFull beyond it. Default 64.
	MaxPendingRequests int
	// AckBatchWindow is how long an ack (or request) may wait to be written
	// so that the acks of the agent's next plugins, which get Started as
	// soon as the previous one acked locally, go to etcd in the same Txn:
	// the outbox writes when the oldest queued item is this old, when no
	// other plugin of the agent is expected to ack the current revision
	// (the agent's last ack of a round, or the only one, goes at once), or
	// when a full Txn (128 ops) is queued. So it delays only the acks of
	// plugins followed by a slow one, by at most this much; an agent whose
	// plugins all ack within it costs etcd one Txn per round instead of one
	// per plugin. A negative value writes at once (what piles up during a
	// write still shares the next Txn). Measured by wall time, not Clock.
	// Default 2 ms.
	AckBatchWindow time.Duration
}

// DefaultConfig returns the defaults; New fills every zero field of a Config
// from it, and Validate checks the result.
func DefaultConfig() Config {
	return Config{
		// The seed's values: a plugin that neither takes nor acks its event
		// holds up the agent's next plugins no longer than this.
		AcceptTimeout: time.Second,
		AckTimeout:    10 * time.Second,
		// An etcd call slower than this is treated as failed and retried.
		OpTimeout: 5 * time.Second,
		// As registry.DefaultConfig: the first retry rides out an etcd
		// leader election, and a fleet retries at most every 5 s per agent.
		RetryMin: 100 * time.Millisecond,
		RetryMax: 5 * time.Second,
		// Requests are rare (errors, rejoins); 64 waiting means etcd is
		// down, and more would only be merged into one round anyway.
		MaxPendingRequests: 64,
		// Plugins that ack at once share a Txn; a slow one's predecessor
		// waits 2 ms at most.
		AckBatchWindow: 2 * time.Millisecond,
	}
}

// withDefaults is c with its zero fields from DefaultConfig: the
// configuration New runs and Validate checks.
func (c Config) withDefaults() Config { return defaults.Fill(c, DefaultConfig()) }

// Validate checks the configuration that runs: c with its zero fields from
// DefaultConfig.
func (c Config) Validate() error {
	c = c.withDefaults()
	switch {
	case c.AcceptTimeout < 0 || c.AckTimeout < 0 || c.OpTimeout < 0 || c.RetryMin < 0 || c.RetryMax < 0:
		return errors.New("watcher: config: durations must not be negative")
	case c.MaxPendingRequests < 0:
		return errors.New("watcher: config: MaxPendingRequests must not be negative")
	case c.AckBatchWindow > maxAckBatchWindow:
		return fmt.Errorf("watcher: config: AckBatchWindow %v is above %v: it delays every ack that long; use a few milliseconds", c.AckBatchWindow, maxAckBatchWindow)
	case c.RetryMax < c.RetryMin:
		return fmt.Errorf("watcher: config: RetryMax %v is below RetryMin %v", c.RetryMax, c.RetryMin)
	}
	return nil
}

// Clock is the time source of a Watcher: timestamps of acks and requests,
// the accept and ack timeouts, and the pauses between retries (not the
// timeouts of etcd calls, nor AckBatchWindow). It is clockwork's Clock, the
// one the coordinator takes too (coordinator.WithClock): tests drive both
// with clockwork.NewFakeClock. The default is the system clock.
type Clock = clockwork.Clock

// SystemClock returns the system clock.
func SystemClock() Clock { return clockwork.NewRealClock() }

// Option sets an optional collaborator.
type Option func(*Watcher)

// WithLogger sets the logger (default: logrus.StandardLogger()).
func WithLogger(l logrus.FieldLogger) Option {
	return func(w *Watcher) {
		if l != nil {
			w.log = l
		}
	}
}

// Held makes New start without delivering: the Watcher reads the revision
// and registers plugins, but no event reaches a status channel until Start.
// It is how a cn-infra style agent holds delivery until AfterInit, once every
// plugin registered in its Init.
func Held() Option { return func(w *Watcher) { w.held = true } }

// WithClock sets the clock (default: the system clock).
func WithClock(c Clock) Option {
	return func(w *Watcher) {
		if c != nil {
			w.clock = c
		}
	}
}

// Stats are a Watcher's counters since New.
type Stats struct {
	// Started counts Started events taken by plugins.
	Started uint64
	// AcceptTimeouts counts Started events not taken within AcceptTimeout
	// (a timeout ack was written for them). Join resyncs are not among
	// them: see JoinsParked.
	AcceptTimeouts uint64
	// JoinsParked counts join Started events not taken within
	// AcceptTimeout: they stay offered until the plugin takes them.
	JoinsParked uint64
	// AckTimeouts counts Started events taken but not acked within
	// AckTimeout.
	AckTimeouts uint64
	// Withdrawn counts Started events withdrawn before a plugin took them,
	// because the revision record changed (a newer round overtook them).
	Withdrawn uint64
	// NotActive counts NotActive events taken by plugins.
	NotActive uint64
	// NotActiveDropped counts NotActive events not taken within
	// AcceptTimeout or overtaken by a newer revision.
	NotActiveDropped uint64
	// AcksWritten counts ack keys written (including rewrites on rejoin).
	AcksWritten uint64
	// RequestsWritten counts request keys written.
	RequestsWritten uint64
	// AckTxns counts the etcd Txns that wrote acks and requests (one Txn
	// carries up to 128 of them: the acks given within AckBatchWindow).
	AckTxns uint64
	// WritesDropped counts acks and requests given up because etcd refused
	// them for good (permission denied, too large): logged with the key;
	// and those still queued when another process took the agent name
	// over (registry.ErrDisplaced).
	WritesDropped uint64
	// Rejoins counts sessions re-created by the registry after a loss.
	Rejoins uint64
	// Malformed counts revision records skipped because they did not decode.
	Malformed uint64
	// Refused counts registrations refused: an invalid name, or Register
	// after Close (each got an open channel that never delivers).
	Refused uint64
}

type counters struct {
	started, acceptTimeouts, ackTimeouts, withdrawn           atomic.Uint64
	notActive, notActiveDropped, acksWritten, requestsWritten atomic.Uint64
	rejoins, malformed, ackTxns, writesDropped, joinsParked   atomic.Uint64
	refused                                                   atomic.Uint64
}

// plugin is the dispatcher's state of one registered plugin. name and ch are
// immutable; the other fields belong to the dispatcher goroutine.
type plugin struct {
	name string
	ch   chan StatusEvent
	// handled is the last revision whose Started was delivered to the
	// plugin or timed out for it; 0 = none yet, so the next one is its join
	// resync.
	handled uint64
	// taken is the last revision whose Started the plugin took.
	taken uint64
	// notActive is the last revision whose NotActive was handled.
	notActive uint64
	// joined: the plugin's join resync is done (its first Started was
	// taken, or timed out after being taken). Until then every record is
	// owed to it as its join resync. It survives a history reset.
	joined bool
	// parked: the join Started was not taken within the accept timeout.
	// It is not timed out (a join resync is never lost): the dispatcher
	// offers it again, for the current record, whenever it is idle, and
	// meanwhile the agent's later plugins proceed.
	parked bool
}

// Watcher delivers resync events to the plugins of one agent and writes their
// acks. It is safe for concurrent use.
type Watcher struct {
	cfg    Config
	reg    *registry.Registry
	c      *clientv3.Client
	layout schema.Layout
	agent  string
	log    logrus.FieldLogger
	clock  Clock
	stats  counters

	ctx       context.Context
	cancel    context.CancelFunc
	wg        sync.WaitGroup
	closeOnce sync.Once
	kick      chan struct{} // cap 1: the dispatcher has work
	outKick   chan struct{} // cap 1: the outbox has work
	held      bool          // New with Held: startc stays open until Start
	startc    chan struct{} // closed when delivery may start
	startOnce sync.Once

	// wmu orders the two wake watches' hand-offs to setRecord (wake.go).
	wmu sync.Mutex

	mu        sync.Mutex
	plugins   []*plugin // registration order
	closed    bool      // channels closed; no more Register
	rec       *schema.Revision
	recCtx    context.Context // cancelled when rec changes (revision or state)
	recCancel context.CancelFunc
	// resets counts history resets seen (a new epoch, or a revision lower
	// than the current one): the dispatcher then forgets what its plugins
	// handled.
	resets uint64
	// part names this agent's plugins that take part in rec when rec has a
	// set scope (nil: rec's scope is all), read from
	// rounds/<N>/agents/<agent>.
	part map[string]bool

	omu         sync.Mutex
	seq         uint64
	pendingAcks map[string]pendingAck // plugin -> ack to write
	lastAcks    map[string]schema.Ack // plugin -> last ack given
	pendingReqs []pendingRequest

	// Scratch of the outbox goroutine (flush and write), reused across
	// writes: one Txn per agent and round would otherwise allocate them
	// each time, thousands of times per round in a fleet.
	outItems []outItem
	outOps   []clientv3.Op
	outSent  []outItem
}

type pendingAck struct {
	ack    schema.Ack
	seq    uint64
	queued time.Time // wall time, for AckBatchWindow
}

type pendingRequest struct {
	id     string
	req    schema.Request
	queued time.Time
}

// New starts a Watcher for the agent of reg. It does not wait for etcd: the
// revision is read and watched in the background, retried while etcd is
// unreachable. The Watcher does not own reg: close the Watcher first, then
// reg.
func New(reg *registry.Registry, cfg Config, opts ...Option) (*Watcher, error) {
	if reg == nil {
		return nil, errors.New("watcher: nil registry")
	}
	cfg = cfg.withDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	w := &Watcher{
		cfg: cfg, reg: reg, c: reg.Client(), layout: reg.Layout(), agent: reg.Agent(),
		log: logrus.StandardLogger(), clock: SystemClock(),
		ctx: ctx, cancel: cancel,
		kick: make(chan struct{}, 1), outKick: make(chan struct{}, 1), startc: make(chan struct{}),
		pendingAcks: map[string]pendingAck{}, lastAcks: map[string]schema.Ack{},
	}
	for _, o := range opts {
		o(w)
	}
	w.log = w.log.WithField("agent", w.agent)
	if !w.held {
		w.Start()
	}
	w.goTracked(w.watch)
	w.goTracked(w.dispatch)
	w.goTracked(w.outbox)
	return w, nil
}

func (w *Watcher) goTracked(f func()) {
	w.wg.Add(1)
	go func() {
		defer w.wg.Done()
		f()
	}()
}

// Agent is the agent's name.
func (w *Watcher) Agent() string { return w.agent }

// Start lets events reach the status channels of a Watcher made with Held;
// without Held, New already started it. It is idempotent and never blocks.
func (w *Watcher) Start() { w.startOnce.Do(func() { close(w.startc) }) }

// Register adds plugin to the agent's registry (see registry.Registry.Add:
// it does not wait for etcd) and returns the channel on which the plugin
// receives its events. The channel is unbuffered; the Watcher is its only
// sender and never closes it (after Close it stays open and silent). It is
// a bidirectional channel only so that it fits the seed's
// Registration.StatusChan() type: never send on it. The plugin receives its
// join resync as soon as the revision record is read (and, with Held, Start
// was called).
//
// It returns an error wrapping registry.ErrDuplicate (and no channel), or
// one wrapping schema.ErrInvalidName or ErrClosed with an open channel that
// never delivers (Stats.Refused counts these; the registry lists a refused
// name in the agent's owner record).
func (w *Watcher) Register(name string) (chan StatusEvent, error) {
	ch := make(chan StatusEvent)
	if err := w.RegisterOn(name, ch); err != nil {
		if errors.Is(err, registry.ErrDuplicate) {
			return nil, err
		}
		return ch, err
	}
	return ch, nil
}

// RegisterOn is Register delivering on ch, a channel the caller made
// (unbuffered, so that taking an event is the accept step): resync.Plugin
// hands out channels before it has a Watcher. It returns Register's errors;
// on an error nothing is ever sent on ch.
func (w *Watcher) RegisterOn(name string, ch chan StatusEvent) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed || w.ctx.Err() != nil {
		w.stats.refused.Add(1)
		return ErrClosed
	}
	// Held under w.mu so that the dispatcher's order is the registry's.
	if _, err := w.reg.Add(name); err != nil {
		if !errors.Is(err, registry.ErrDuplicate) {
			w.stats.refused.Add(1)
		}
		return fmt.Errorf("watcher: register: %w", err)
	}
	w.plugins = append(w.plugins, &plugin{name: name, ch: ch})
	w.poke(w.kick)
	return nil
}

// Done is closed when Close is called: no event is delivered after it.
// Status channels are never closed; a plugin's loop that wants to end
// selects on Done.
func (w *Watcher) Done() <-chan struct{} { return w.ctx.Done() }

// Request asks the coordinator for a resync: req is written under the
// agent's own requests/agent/<agent>/<id> in the background (with the acks
// queued meanwhile, in one Txn), retried until written or the Watcher is
// closed (a request still waiting then is lost). Like acks, it is written
// only while the agent owns its name on a live session (the registry
// claims the name for it): it waits while the agent has no lease, and is
// dropped if another process took the name over. RequestedAt is set when
// zero. An agent may request a resync only of itself (schema.Request.
// AllowedFor): a wider scope is an error wrapping schema.ErrRefused. It does
// not wait for etcd; it returns the error of an invalid or refused request,
// ErrQueueFull or ErrClosed.
func (w *Watcher) Request(req schema.Request) (id string, err error) {
	now := w.clock.Now().UTC()
	if req.RequestedAt.IsZero() {
		req.RequestedAt = now
	}
	if _, err := schema.Encode(req); err != nil {
		return "", err
	}
	if err := req.AllowedFor(schema.Writer{Kind: schema.WriterAgent, Agent: w.agent}); err != nil {
		return "", fmt.Errorf("watcher: %w", err)
	}
	if w.ctx.Err() != nil {
		return "", ErrClosed
	}
	id = schema.NewRequestID(now)
	w.omu.Lock()
	if len(w.pendingReqs) >= w.cfg.MaxPendingRequests {
		w.omu.Unlock()
		return "", ErrQueueFull
	}
	w.pendingReqs = append(w.pendingReqs, pendingRequest{id: id, req: req, queued: time.Now()})
	w.omu.Unlock()
	w.reg.Claim() // requests are fenced by the owner key (outbox.go)
	w.poke(w.outKick)
	return id, nil
}

// Stats returns the counters.
func (w *Watcher) Stats() Stats {
	s := &w.stats
	return Stats{
		Started: s.started.Load(), AcceptTimeouts: s.acceptTimeouts.Load(), JoinsParked: s.joinsParked.Load(), AckTimeouts: s.ackTimeouts.Load(),
		Withdrawn: s.withdrawn.Load(), NotActive: s.notActive.Load(), NotActiveDropped: s.notActiveDropped.Load(),
		AcksWritten: s.acksWritten.Load(), RequestsWritten: s.requestsWritten.Load(),
		Rejoins: s.rejoins.Load(), Malformed: s.malformed.Load(),
		AckTxns: s.ackTxns.Load(), WritesDropped: s.writesDropped.Load(),
		Refused: s.refused.Load(),
	}
}

// Close stops the Watcher: no new event is delivered, pending timeouts are
// cancelled, writes still waiting are abandoned, and every goroutine has
// ended when it returns. The status channels stay open and silent (never
// closed: a consumer that does not check ok would get nil events). It does not close the registry. It is idempotent;
// it returns once the goroutines end, which takes at most one etcd call
// cancelled in flight. It returns nil: it writes nothing on the way out
// (the registry's Close revokes the lease, and its error is the one to
// check).
func (w *Watcher) Close() error {
	w.closeOnce.Do(func() {
		w.cancel()
		w.wg.Wait()
	})
	return nil
}

func (w *Watcher) poke(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// watchRevision follows the revision key and hands each new record to
// the dispatcher: the legacy mode (wake.go), for a coordinator older than
// wake keys.
func (w *Watcher) watchRevision() {
	key := w.layout.Revision()
	err := listwatch.Run(w.ctx, w.c, key, listwatch.Options{Log: w.log}, func(ev listwatch.Event) error {
		if ev.Reset {
			if len(ev.Kvs) == 0 {
				w.log.Debug("watcher: no resync revision yet")
			}
			for _, kv := range ev.Kvs {
				if rec, ok := w.decode(string(kv.Key), kv.Value); ok {
					w.setRecord(rec)
				}
			}
			return nil
		}
		// Only the last valid record of a batch counts: revisions written
		// back to back while the watch was away coalesce into the latest.
		var last *schema.Revision
		for _, e := range ev.Changes {
			if e.Type == clientv3.EventTypeDelete {
				w.log.WithField("key", key).Warn("watcher: revision key deleted; keeping the last record seen")
				continue
			}
			if rec, ok := w.decode(string(e.Kv.Key), e.Kv.Value); ok {
				last = &rec
			}
		}
		if last != nil {
			w.setRecord(*last)
		}
		return nil
	})
	if err != nil && !errors.Is(err, context.Canceled) {
		w.log.WithError(err).Error("watcher: revision watch ended")
	}
}

// decode decodes a revision record; a malformed one is logged with its key,
// counted and skipped.
func (w *Watcher) decode(key string, value []byte) (schema.Revision, bool) {
	rec, err := schema.DecodeRevision(key, value)
	if err != nil {
		w.stats.malformed.Add(1)
		w.log.WithError(err).WithField("key", key).Warn("watcher: skipping a malformed revision record")
		return rec, false
	}
	return rec, true
}

// setRecord makes rec the current record. A change of revision or state
// withdraws events not yet taken. A record of another epoch, or with a lower
// revision than the current one, means the history was reset (an etcd
// restore, a wiped prefix): it is taken, and the dispatcher forgets the
// revisions its plugins handled, so that the new rounds are delivered.
func (w *Watcher) setRecord(rec schema.Revision) {
	var part map[string]bool
	if rec.State == schema.Started && !rec.Scope.IsAll() {
		w.mu.Lock()
		same := w.rec != nil && w.rec.Revision == rec.Revision && w.rec.State == rec.State && w.rec.Epoch == rec.Epoch
		part = w.part
		w.mu.Unlock()
		if !same {
			var ok bool
			if part, ok = w.readParticipation(rec.Revision); !ok {
				return // closing
			}
		}
	}
	w.mu.Lock()
	cur := w.rec
	reset := cur != nil && (rec.Revision < cur.Revision ||
		(cur.Epoch != "" && rec.Epoch != "" && cur.Epoch != rec.Epoch))
	w.rec = &rec
	w.part = part
	if !reset && cur != nil && cur.Revision == rec.Revision && cur.State == rec.State {
		w.mu.Unlock()
		return
	}
	if reset {
		w.resets++
		// An etcd restore may have lost the agent's claim or its
		// registrations with the history: the registry checks.
		w.reg.Recheck()
	}
	if w.recCancel != nil {
		w.recCancel()
	}
	w.recCtx, w.recCancel = context.WithCancel(w.ctx)
	w.mu.Unlock()
	// The fields are built only when logged: every agent runs this twice a
	// round.
	if reset || w.debug() {
		log := w.log.WithFields(logrus.Fields{"revision": rec.Revision, "state": rec.State, "scope": rec.Scope.String(), "epoch": rec.Epoch})
		if reset {
			log.WithFields(logrus.Fields{"previous_revision": cur.Revision, "previous_epoch": cur.Epoch}).
				Warn("watcher: the resync history was reset (new epoch or lower revision); forgetting the revisions handled and taking the new rounds")
		} else {
			log.Debug("watcher: revision record")
		}
	}
	w.poke(w.kick)
}

// readParticipation reads which of this agent's plugins take part in
// round n, a round with a set scope: one Get of rounds/<N>/agents/<agent>,
// written by the leader before the revision said Started (no key: none of
// them). It retries while etcd fails; ok is false when the Watcher closes.
func (w *Watcher) readParticipation(n uint64) (part map[string]bool, ok bool) {
	key := w.layout.RoundAgent(n, w.agent)
	var resp *clientv3.GetResponse
	err := backoff.Retry(w.ctx, w.clock, backoff.New(w.cfg.RetryMin, w.cfg.RetryMax), func(ctx context.Context) (err error) {
		ctx, cancel := context.WithTimeout(ctx, w.cfg.OpTimeout)
		defer cancel()
		resp, err = w.c.Get(ctx, key)
		return err
	}, func(err error, pause time.Duration) {
		w.log.WithError(err).WithField("key", key).WithField("retry_in", pause).Warn("watcher: reading this agent's participation failed; retrying")
	})
	if err != nil {
		return nil, false
	}
	part = map[string]bool{}
	if len(resp.Kvs) == 0 {
		return part, true
	}
	rec, err := w.layout.DecodeRoundAgent(key, resp.Kvs[0].Value)
	if err != nil {
		w.stats.malformed.Add(1)
		w.log.WithError(err).WithField("key", key).Warn("watcher: skipping a malformed participation record: no plugin takes part")
		return part, true
	}
	for _, p := range rec.Plugins {
		part[p] = true
	}
	return part, true
}

// participates reports whether the plugin takes part in rec (Started).
func (w *Watcher) participates(rec schema.Revision, plugin string) bool {
	if rec.Scope.IsAll() {
		return true
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.rec != nil && w.rec.Revision == rec.Revision && w.part[plugin]
}

// current returns the current record's revision (0 if none).
func (w *Watcher) current() uint64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.rec == nil {
		return 0
	}
	return w.rec.Revision
}
