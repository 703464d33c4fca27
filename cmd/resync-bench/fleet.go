package main

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sirupsen/logrus"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/resyncd/resync"
	"github.com/resyncd/resync/coordinator"
	"github.com/resyncd/resync/schema"
)

// fleet is agents x plugins real resync.Plugin agents (each its own lease
// and its own revision watch) on a bounded number of shared clients, and
// the coordinators that run their rounds.
type fleet struct {
	env     *env
	size    size
	prefix  string
	layout  schema.Layout
	log     logrus.FieldLogger
	clients []*clientv3.Client
	agents  []*resync.Plugin
	spans   []*agentSpan   // each agent's latest round, agents[i]'s at i
	io      *wakeIO        // what the clients receive and read
	wg      sync.WaitGroup // the plugins' event loops

	started   atomic.Int64 // Started events taken (and acked at once)
	notActive atomic.Int64 // NotActive events taken
}

// The bench's plugins take and ack every event at once, so these timeouts
// never fire on a machine with CPU to spare. They are wider than the
// defaults (1 s, 10 s) because with 50,000 plugin goroutines on 2 busy
// cores a goroutine that is ready can wait over a second for a CPU: with
// the default accept timeout 1 to 10 of 50,000 plugins timed out in most
// 5000x10 rounds, each adding a retry round.
const (
	benchAcceptTimeout = 10 * time.Second
	benchAckTimeout    = 30 * time.Second
)

// startFleet starts the agents and waits until every registration is in
// etcd. Agents are spread over ceil(agents/perClient) clients, agent i on
// client i/perClient; the clients count what they receive and read
// (wakeIO), the plugins when each agent is in flight (agentSpan).
func startFleet(ctx context.Context, e *env, sz size, prefix string, perClient int, log logrus.FieldLogger) (*fleet, error) {
	f := &fleet{env: e, size: sz, prefix: prefix, layout: schema.MustLayout(prefix), log: log}
	f.io = newWakeIO(f.layout, sz.Target)
	f.io.onAck = f.ackWritten
	f.spans = make([]*agentSpan, sz.Agents) // before any client: ackWritten reads it
	for a := range f.spans {
		f.spans[a] = &agentSpan{}
	}
	var err error
	if f.clients, err = e.clients(sz.clients(perClient), f.io.dialOptions()...); err != nil {
		return nil, err
	}
	for a := range sz.Agents {
		cfg := resync.DefaultConfig(fmt.Sprintf("agent-%05d", a))
		cfg.Prefix = prefix
		cfg.AcceptTimeout, cfg.AckTimeout = benchAcceptTimeout, benchAckTimeout
		p, err := resync.New(resync.Deps{Log: log, Client: f.clients[a/perClient]}, cfg)
		if err != nil {
			f.Close()
			return nil, err
		}
		f.agents = append(f.agents, p)
		span := f.spans[a]
		for k := range sz.Plugins {
			reg, err := p.RegisterE(fmt.Sprintf("plugin-%03d", k))
			if err != nil {
				f.Close()
				return nil, err
			}
			f.wg.Add(1)
			go f.plugin(reg.StatusChan(), p.Done(), span, sz.Reload)
		}
	}
	want := int64(sz.participants())
	err = waitFor(ctx, 5*time.Minute, "registrations", func() (bool, error) {
		n, err := e.count(ctx, f.layout.Registrations())
		return n == want, err
	})
	if err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// agentFleet is the agents a size's rounds run with: a fleet in this
// process, or an apartFleet. Used by one goroutine.
type agentFleet interface {
	// counts reports the agents' totals so far.
	counts(ctx context.Context) (fleetCounts, error)
	// round reports round rev's agents in flight (only while it is the
	// agents' latest round) and the watch events and reads counted for it.
	round(ctx context.Context, rev uint64) (fleetRound, error)
	Close()
}

// fleetRound is what an agentFleet reports of one round.
type fleetRound struct {
	Span RoundSpan `json:"span"`
	IO   RoundIO   `json:"io"`
}

// fleetCounts are an agentFleet's totals: what the round driver needs of
// the agents.
type fleetCounts struct {
	NotActive int64  `json:"not_active"` // NotActive events taken
	AckTxns   uint64 `json:"ack_txns"`
	// CPU is the agents' process's CPU time (user+sys) when it is not the
	// bench's own, else 0.
	CPU time.Duration `json:"cpu_ns"`
	// Events is every watch event the agents' clients received; Other
	// what no round claims of them and of their reads (wakeIO).
	Events int64   `json:"events"`
	Other  otherIO `json:"other"`
}

func (f *fleet) counts(context.Context) (fleetCounts, error) {
	c := fleetCounts{NotActive: f.notActive.Load(), AckTxns: txnsOf(f)}
	c.Events, c.Other = f.io.totals()
	return c, nil
}

// ackWritten notes an agent's ack Txn in its span (wakeIO.onAck).
func (f *fleet) ackWritten(agent string, rev uint64, sent, done time.Time) {
	if i, err := strconv.Atoi(strings.TrimPrefix(agent, "agent-")); err == nil && i >= 0 && i < len(f.spans) {
		f.spans[i].ackWritten(rev, sent, done)
	}
}

func (f *fleet) round(_ context.Context, rev uint64) (fleetRound, error) {
	return fleetRound{Span: spanOf(f.spans, rev), IO: f.io.of(rev)}, nil
}

// plugin is a plugin that reloads for reload (0: not at all) and acks
// every Started, noting in its agent's span when it took it and when it
// acked. The wait is the reload's stand-in, work and not a
// synchronisation: its plugin's agent holds the next plugin's Started
// meanwhile, as the seed's in-order hand-off does.
func (f *fleet) plugin(ch <-chan resync.StatusEvent, done <-chan struct{}, span *agentSpan, reload time.Duration) {
	defer f.wg.Done()
	for {
		var ev resync.StatusEvent
		select {
		case ev = <-ch:
		case <-done:
			return
		}
		if ev.ResyncStatus() == resync.Started {
			rev := revisionOf(ev)
			span.started(rev, time.Now())
			if reload > 0 {
				t := time.NewTimer(reload)
				select {
				case <-t.C:
				case <-done:
					t.Stop()
					return
				}
			}
			ev.Ack()
			span.acked(rev, time.Now())
			f.started.Add(1)
		} else {
			f.notActive.Add(1)
		}
	}
}

// Close stops the agents, a bounded number at a time: each one cancels its
// single watch and revokes its lease, so no client ever sees thousands of
// watches cancelled at once.
func (f *fleet) Close() {
	sem := make(chan struct{}, 16)
	var wg sync.WaitGroup
	for _, p := range f.agents {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			p.Close()
			<-sem
		}()
	}
	wg.Wait()
	f.wg.Wait()
	closeClients(f.clients)
	f.env.wipe(context.Background(), f.prefix)
}

// roundHooks timestamps rounds as the coordinator reports them. The hooks
// never block: a full channel drops (the driver waits for one round at a
// time, so it never fills).
type roundHooks struct {
	coordinator.NopHooks
	started  chan roundEvent
	finished chan roundEvent
	leading  atomic.Bool
	// leadingAt is when Leading(true) was last called (unix ns).
	leadingAt atomic.Int64
	// lastResolved is when the last participant was resolved (unix ns).
	lastResolved atomic.Int64
}

func (h *roundHooks) Resolved(schema.PluginID, schema.Outcome) {
	h.lastResolved.Store(time.Now().UnixNano())
}

type roundEvent struct {
	at      time.Time
	round   schema.Round
	resumed bool
}

func newRoundHooks() *roundHooks {
	return &roundHooks{started: make(chan roundEvent, 64), finished: make(chan roundEvent, 64)}
}

func (h *roundHooks) Leading(b bool) {
	if b {
		h.leadingAt.Store(time.Now().UnixNano())
	}
	h.leading.Store(b)
}

func (h *roundHooks) RoundStarted(r schema.Round, resumed bool) {
	select {
	case h.started <- roundEvent{at: time.Now(), round: r, resumed: resumed}:
	default:
	}
}

func (h *roundHooks) RoundFinished(r schema.Round) {
	select {
	case h.finished <- roundEvent{at: time.Now(), round: r}:
	default:
	}
}

// coord is one coordinator on its own client.
type coord struct {
	c     *clientv3.Client
	co    *coordinator.Coordinator
	hooks *roundHooks
}

func startCoord(e *env, cfg coordinator.Config, log logrus.FieldLogger) (*coord, error) {
	c, err := e.client()
	if err != nil {
		return nil, err
	}
	h := newRoundHooks()
	co, err := coordinator.New(c, cfg, coordinator.WithLogger(log), coordinator.WithHooks(h))
	if err != nil {
		c.Close()
		return nil, err
	}
	return &coord{c: c, co: co, hooks: h}, nil
}

// Close closes the coordinator and its client; a Close error (the
// coordinator did not stop within its bound) is printed, not fatal: the
// experiment's numbers are already taken.
func (k *coord) Close() {
	if err := k.co.Close(); err != nil {
		progress("coordinator %s: Close: %v", k.co.ID(), err)
	}
	k.c.Close()
}

// request writes requests/operator/<id> (cause manual, scope all, or the
// first target agents agent-00000... when target > 0).
func request(ctx context.Context, c *clientv3.Client, layout schema.Layout, reason string, target int) error {
	return requestWave(ctx, c, layout, reason, target, nil)
}

// requestWave is request with the round's wave knobs (nil: none).
func requestWave(ctx context.Context, c *clientv3.Client, layout schema.Layout, reason string, target int, wave *schema.Wave) error {
	now := time.Now().UTC()
	req := schema.Request{Reason: reason, Cause: schema.CauseManual, RequestedBy: "resync-bench", RequestedAt: now, Wave: wave}
	for a := range target {
		req.Targets = append(req.Targets, schema.Scope{Agent: fmt.Sprintf("agent-%05d", a)})
	}
	b, err := schema.Encode(req)
	if err != nil {
		return err
	}
	_, err = c.Put(ctx, layout.OperatorRequest(schema.NewRequestID(now)), string(b))
	return err
}

var errRound = errors.New("round")

// benchReason is the reason of the bench's requests: a round whose reason
// holds it is a measured one (requests that coalesce keep every reason).
const benchReason = "resync-bench"

// ours reports whether r was started by a bench request.
func ours(r schema.Round) bool { return strings.Contains(r.Reason, benchReason) }

func describe(r schema.Round) string {
	c := r.Counts
	return fmt.Sprintf("round %d (%s: %s): %d participants, %d acked, %d failed, %d timed out, %d departed",
		r.Revision, r.Cause, r.Reason, c.Participants, c.Acked, c.Failed, c.TimedOut, c.Departed)
}

// drainExtra records rounds already reported that the bench did not ask
// for.
func (h *roundHooks) drainExtra(row *RoundRow) {
	for {
		select {
		case ev := <-h.finished:
			h.extra(row, ev.round)
		case <-h.started:
		default:
			return
		}
	}
}

func (h *roundHooks) extra(row *RoundRow, r schema.Round) {
	d := describe(r)
	row.Extra = append(row.Extra, d)
	progress("extra %s", d)
}

// waitOurs waits for the round that takes the bench's request: its start
// and its finish. Rounds in between that are not ours (a retry, a rejoin)
// are recorded in row.Extra.
func (h *roundHooks) waitOurs(ctx context.Context, row *RoundRow) (s, fin roundEvent, err error) {
	for {
		if s, err = waitRound(ctx, h.started, time.Minute, "RoundStarted"); err != nil {
			return s, fin, err
		}
		if ours(s.round) {
			break
		}
		if _, err := h.waitFinish(ctx, row, s.round.Revision); err != nil {
			return s, fin, err
		}
	}
	fin, err = h.waitFinish(ctx, row, s.round.Revision)
	return s, fin, err
}

// waitFinish waits for round n's finish, recording other rounds' finishes
// as extra.
func (h *roundHooks) waitFinish(ctx context.Context, row *RoundRow, n uint64) (roundEvent, error) {
	for {
		fin, err := waitRound(ctx, h.finished, 5*time.Minute, "RoundFinished")
		if err != nil || fin.round.Revision == n {
			if err == nil && !ours(fin.round) {
				h.extra(row, fin.round)
			}
			return fin, err
		}
		h.extra(row, fin.round)
	}
}

// waitExtra waits for the next round (the retry of an unclean one) to
// finish, at most d.
func (h *roundHooks) waitExtra(ctx context.Context, row *RoundRow, d time.Duration) (roundEvent, error) {
	s, err := waitRound(ctx, h.started, d, "retry RoundStarted")
	if err != nil {
		return s, err
	}
	return h.waitFinish(ctx, row, s.round.Revision)
}

// waitRound waits for the next event on ch, at most d.
func waitRound(ctx context.Context, ch <-chan roundEvent, d time.Duration, what string) (roundEvent, error) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case ev := <-ch:
		return ev, nil
	case <-t.C:
		return roundEvent{}, fmt.Errorf("%w: no %s within %v", errRound, what, d)
	case <-ctx.Done():
		return roundEvent{}, ctx.Err()
	}
}

// checkClean verifies that every participant of r acked.
func checkClean(r schema.Round, want int) error {
	c := r.Counts
	if c.Participants != want || c.Acked != want {
		return fmt.Errorf("%w %d: %d participants (want %d), %d acked, %d failed, %d timed out, %d departed",
			errRound, r.Revision, c.Participants, want, c.Acked, c.Failed, c.TimedOut, c.Departed)
	}
	return nil
}
