package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"runtime/pprof"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/sirupsen/logrus"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
	recipe "go.etcd.io/etcd/client/v3/experimental/recipes"

	"github.com/resyncd/resync/internal/backoff"
	"github.com/resyncd/resync/schema"
)

// RoundRow is one size of the round-latency table.
type RoundRow struct {
	// Mode is where the agents ran: modeInProcess (with the coordinator
	// and etcd, sharing every CPU) or modeApart (a child process on a CPU
	// of its own, Apart says which; etcd, the coordinator and the tenant
	// probe on the others). An agents-apart row has no floors and no
	// barrier: those run in process only.
	Mode         string     `json:"mode"`
	Apart        *ApartInfo `json:"agents_apart,omitempty"`
	Agents       int        `json:"agents"`
	Plugins      int        `json:"plugins_per_agent"`
	Participants int        `json:"participants"`
	// Targeted: the measured rounds were requested for this many agents
	// only (their plugins are the rounds' participants); 0: all.
	Targeted int `json:"targeted_agents,omitempty"`
	Clients  int `json:"etcd_clients"`
	// LargestWrite is the largest etcd request (bytes of keys and values)
	// the coordinator wrote, from coordinator.Status.
	LargestWrite int `json:"largest_write_bytes"`
	// Round: request written -> the coordinator's RoundFinished hook (the
	// revision NotActive committed), every participant acked.
	Round Dist `json:"round"`
	// ToStarted: request written -> RoundStarted hook (revision Started
	// committed).
	ToStarted Dist `json:"to_started"`
	// AllAcked: request written -> the coordinator resolved the last
	// participant (its Resolved hook); the rest of Round is writing the
	// round's summary and the revision NotActive.
	AllAcked Dist `json:"to_all_acked"`
	// AckTxnsPerAgent is the agents' ack Txns per agent per measured
	// round (1.0: each agent's acks in one Txn, as in the batched floor).
	AckTxnsPerAgent float64 `json:"ack_txns_per_agent_round"`
	// CPUPerRound is the bench process's CPU time (user+sys: agents,
	// coordinator and etcd together) per measured round, ms; FloorTxnCPU
	// the same per batched floor sample. Less sensitive than wall time to
	// other load on the machine.
	CPUPerRound float64 `json:"cpu_ms_per_round"`
	FloorTxnCPU float64 `json:"floor_txn_cpu_ms"`
	// AgentsCPUPerRound is the agents' child's share of CPUPerRound
	// (agents-apart rows only; CPUPerRound is both processes').
	AgentsCPUPerRound float64 `json:"agents_cpu_ms_per_round,omitempty"`
	// Unclean lists measured rounds that were not clean (a participant
	// timed out, failed or departed): not samples; each was followed by its
	// retry round before the next request.
	Unclean []string `json:"unclean_rounds,omitempty"`
	// Extra lists rounds the bench did not request (retries, rejoins)
	// that ran between measured ones: not samples, never hidden.
	Extra []string `json:"extra_rounds,omitempty"`
	// NotActiveMissing counts plugins that had not taken NotActive 30 s
	// after a round finished (should be 0).
	NotActiveMissing int64 `json:"notactive_missing"`
	// InitialDeparted counts the participants of the unmeasured initial
	// round that departed (their agents' leases lapsed while the fleet
	// started on a saturated machine); the bench waited for them to
	// register again (should be 0).
	InitialDeparted int `json:"initial_departed,omitempty"`
	// Floor: the same ack writes, uncoordinated (see floor).
	Floor Dist `json:"etcd_floor"`
	// FloorTxn: the same, each agent writing its plugins' acks in one Txn
	// (as the watcher's outbox batches the acks that piled up).
	FloorTxn Dist `json:"etcd_floor_txn"`
	// WatchedFloor: the batched floor plus the notification of every agent
	// and the collection of every ack by one watcher (see
	// measureWatchedFloor): etcd's price of the protocol, without resync.
	WatchedFloor Dist `json:"etcd_watched_floor"`
	// DeliveredFloor: the watched floor with each agent handing the round
	// to its plugins' goroutines in order before writing (the seed's
	// channel API at its barest).
	DeliveredFloor Dist `json:"delivered_floor"`
	// ProtocolFloor: the delivered floor with a round's two other writes,
	// the request before and the finish after (protocolHops).
	ProtocolFloor Dist `json:"protocol_floor"`
	// Barrier: recipes.DoubleBarrier, Enter+Leave, same participants.
	Barrier         Dist    `json:"double_barrier"`
	BarrierTimedOut bool    `json:"double_barrier_timed_out,omitempty"`
	BarrierTimeout  float64 `json:"double_barrier_timeout_ms,omitempty"`
	BarrierError    string  `json:"double_barrier_error,omitempty"`
	// BarrierSkipped says why the barrier was not run (-barrier-max).
	BarrierSkipped string `json:"double_barrier_skipped,omitempty"`
	// Ratios of p50s.
	OursOverFloor     float64 `json:"ours_over_floor_p50"`
	OursOverFloorTxn  float64 `json:"ours_over_floor_txn_p50"`
	OursOverWatched   float64 `json:"ours_over_watched_floor_p50"`
	OursOverDelivered float64 `json:"ours_over_delivered_floor_p50"`
	OursOverProtocol  float64 `json:"ours_over_protocol_floor_p50"`
	WatchedOverTxn    float64 `json:"watched_floor_over_floor_txn_p50"`
	OursOverBarrier   float64 `json:"ours_over_barrier_p50,omitempty"`
	// The tenant probe (tenant.go): another client putting a small key
	// outside the prefix every 5 ms. TenantIdle: for 2 s with the fleet
	// registered and no round running; TenantRounds: puts sent while the
	// measured rounds ran (request to NotActive); TenantNearWrites: puts
	// in flight within 100 ms of a measured round's start or finish
	// write (the writes that wake the fleet's watchers).
	TenantIdle       Dist `json:"tenant_idle"`
	TenantRounds     Dist `json:"tenant_during_rounds"`
	TenantNearWrites Dist `json:"tenant_near_start_finish"`
	// SlowWatchers: the tenant's puts during the measured rounds, and
	// those answered while etcd had a slow watcher (tenant.go).
	SlowWatchers SlowWatchers `json:"etcd_slow_watchers"`
	// WakeFanout is the most agents one coordinator write woke
	// (coordinator.Status.LargestWake): agents watch their wake shard and
	// their own wake key, not the revision key (coordinator/wake.go).
	WakeFanout int `json:"wake_fanout"`

	// Waves (waves.go). Wave is the size's window as written (~500,
	// ~10%, ~budget; "" for none), Window the window in agents the
	// coordinator resolved it to, WindowSetOn where it was set: on each
	// request, or on the coordinator for every round (resyncd
	// --max-in-flight, the write budget).
	Wave string `json:"wave,omitempty"`
	// ReloadMS is each plugin's reload time before it acks (size +RELOAD).
	ReloadMS    float64 `json:"plugin_reload_ms,omitempty"`
	Window      int     `json:"wave_window_agents,omitempty"`
	WindowSetOn string  `json:"wave_window_set_on,omitempty"`
	// From the fleet's own timestamps, every row: an agent is in flight
	// from its first plugin's Started to its last plugin's ack.
	// PeakInFlight is the most agents in flight at once in any measured
	// round (an exact sweep over each round); SpanAgents the most agents
	// that took part in one; AgentResync each round's mean of an agent's
	// own resync time.
	PeakInFlight int  `json:"peak_agents_in_flight"`
	SpanAgents   int  `json:"agents_in_round"`
	AgentResync  Dist `json:"agent_resync"`
	// Ideal is, per round, the sum of its agents' own resync times divided
	// by the window: the round's length if the window were always full
	// and nothing else took time; RoundOverIdeal is Round's p50 over its.
	Ideal          Dist    `json:"ideal_window,omitzero"`
	RoundOverIdeal float64 `json:"round_over_ideal_p50,omitempty"`
	// CPUFloor is CPUPerRound spread over the CPUs the bench had (CPUs):
	// no round can take less wall time, however its work is scheduled.
	// When it is above the ideal window, the round is CPU-bound: the
	// agents' own resync times are themselves stretched by the CPU the
	// whole fleet, coordinator and etcd share.
	CPUs     int     `json:"cpus"`
	CPUFloor float64 `json:"cpu_floor_ms"`
	// IO is the watch events the fleet's clients received and the Range
	// RPCs they sent for the measured rounds, summed over them (wakeio.go);
	// OtherIO what no round claims, over the same stretch.
	IO      RoundIO `json:"wake_io"`
	OtherIO otherIO `json:"other_io"`
}

func measureSize(ctx context.Context, e *env, o options, sz size, log logrus.FieldLogger) (RoundRow, error) {
	row := RoundRow{Mode: modeInProcess, Agents: sz.Agents, Plugins: sz.Plugins, Participants: sz.measured().participants(), Targeted: sz.Target, Wave: sz.Wave, Clients: sz.clients(o.agentsPerClient), ReloadMS: ms(sz.Reload)}
	var err error
	progress("%s: starting %d agents on %d clients", sz, sz.Agents, row.Clients)
	if err = measureRounds(ctx, e, o, sz, log, &row, false); err != nil {
		return row, err
	}
	progress("%s: round p50 %.1f ms (largest write %d B, %.2f ack Txns per agent, peak %d agents in flight)", sz, row.Round.P50, row.LargestWrite, row.AckTxnsPerAgent, row.PeakInFlight)
	if sz.Wave != "" || sz.Reload > 0 {
		// No floors: a wave size's are those of the size without waves
		// (waves.go), and the floors' plugins reload nothing.
		return row, ctx.Err()
	}
	// The floors and the barrier: the participants a measured round has.
	sz = sz.measured()
	if row.Floor, err = measureFloor(ctx, e, o, sz, false); err != nil {
		return row, err
	}
	c0 := cpuTime()
	if row.FloorTxn, err = measureFloor(ctx, e, o, sz, true); err != nil {
		return row, err
	}
	row.FloorTxnCPU = ms(cpuTime()-c0) / float64(o.rounds+1)
	if row.WatchedFloor, err = measureWatchedFloor(ctx, e, o, sz, floorWatched); err != nil {
		return row, err
	}
	if row.DeliveredFloor, err = measureWatchedFloor(ctx, e, o, sz, floorDelivered); err != nil {
		return row, err
	}
	if row.ProtocolFloor, err = measureWatchedFloor(ctx, e, o, sz, floorProtocol); err != nil {
		return row, err
	}
	row.OursOverFloor = ratio(row.Round.P50, row.Floor.P50)
	row.OursOverFloorTxn = ratio(row.Round.P50, row.FloorTxn.P50)
	row.OursOverWatched = ratio(row.Round.P50, row.WatchedFloor.P50)
	row.WatchedOverTxn = ratio(row.WatchedFloor.P50, row.FloorTxn.P50)
	row.OursOverDelivered = ratio(row.Round.P50, row.DeliveredFloor.P50)
	row.OursOverProtocol = ratio(row.Round.P50, row.ProtocolFloor.P50)
	progress("%s: floor p50 %.1f ms, batched %.1f ms, watched %.1f ms, delivered %.1f ms, protocol %.1f ms; DoubleBarrier", sz, row.Floor.P50, row.FloorTxn.P50, row.WatchedFloor.P50, row.DeliveredFloor.P50, row.ProtocolFloor.P50)
	if o.barrierMax > 0 && sz.participants() > o.barrierMax {
		row.BarrierSkipped = fmt.Sprintf("%d participants, above -barrier-max %d", sz.participants(), o.barrierMax)
		progress("%s: DoubleBarrier skipped: %s", sz, row.BarrierSkipped)
		return row, ctx.Err()
	}
	row.Barrier, row.BarrierTimedOut, err = measureBarrier(ctx, e, o, sz)
	if err != nil {
		row.BarrierError = err.Error()
		progress("%s: DoubleBarrier: %v", sz, err)
	}
	if row.BarrierTimedOut {
		row.BarrierTimeout = ms(o.barrierTimeout)
	}
	if row.Barrier.N > 0 {
		row.OursOverBarrier = ratio(row.Round.P50, row.Barrier.P50)
	} else if row.BarrierTimedOut {
		row.OursOverBarrier = ratio(row.Round.P50, row.BarrierTimeout)
	}
	return row, ctx.Err()
}

// measureApart runs sz's rounds with the agents apart: this process
// (etcd, the coordinator, the tenant probe) pinned to o.apart.bench, the
// agents' child to o.apart.agents; this process's CPUs are restored after.
func measureApart(ctx context.Context, e *env, o options, sz size, log logrus.FieldLogger) (RoundRow, error) {
	row := RoundRow{Mode: modeApart, Agents: sz.Agents, Plugins: sz.Plugins, Participants: sz.measured().participants(), Targeted: sz.Target, Wave: sz.Wave, Clients: sz.clients(o.agentsPerClient), ReloadMS: ms(sz.Reload)}
	progress("%s, agents apart: this process on CPUs %s, %d agents on CPU %d", sz, formatCPUs(o.apart.bench), sz.Agents, o.apart.agents)
	defer func() {
		if err := pinProcess(o.apart.all); err != nil {
			progress("restoring CPUs %s: %v", formatCPUs(o.apart.all), err)
		}
	}()
	if err := pinProcess(o.apart.bench); err != nil {
		return row, err
	}
	err := measureRounds(ctx, e, o, sz, log, &row, true)
	if err == nil {
		progress("%s, agents apart: round p50 %.1f ms (%.2f ack Txns per agent)", sz, row.Round.P50, row.AckTxnsPerAgent)
	}
	return row, err
}

// cpuTime is the process's user and system CPU time so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// txnsOf sums the fleet's ack Txns.
func txnsOf(f *fleet) uint64 {
	var n uint64
	for _, p := range f.agents {
		n += p.Stats().AckTxns
	}
	return n
}

// measureFloor is the etcd floor of a round: the same number of ack writes
// (an encoded schema.Ack, on a lease) from the same number of clients, with
// no coordination: one writer per agent, each putting its plugins' acks one
// after another (an agent acks its plugins in registration order), all
// agents at once; from the start to the last write acknowledged. One lease
// per agent, granted before. One unmeasured sample first. With batched, each
// agent writes its plugins' acks in one Txn (at most 128 puts) instead.
func measureFloor(ctx context.Context, e *env, o options, sz size, batched bool) (Dist, error) {
	prefix := fmt.Sprintf("/bench/floor-%s/", sz)
	layout := schema.MustLayout(prefix)
	defer e.wipe(ctx, prefix)
	clients, err := e.clients(sz.clients(o.agentsPerClient))
	if err != nil {
		return Dist{}, err
	}
	defer closeClients(clients)
	leases, err := grantLeases(ctx, clients, sz.Agents, o.agentsPerClient)
	if err != nil {
		return Dist{}, err
	}
	defer revokeLeases(clients, leases, o.agentsPerClient)
	val, err := schema.Encode(schema.Ack{Revision: 1000, Result: schema.ResultOK, AckedAt: time.Now().UTC()})
	if err != nil {
		return Dist{}, err
	}
	var samples []time.Duration
	for i := range o.rounds + 1 {
		var wg sync.WaitGroup
		errc := make(chan error, sz.Agents)
		start := time.Now()
		for a := range sz.Agents {
			c := clients[a/o.agentsPerClient]
			agent := fmt.Sprintf("agent-%05d", a)
			wg.Add(1)
			go func() {
				defer wg.Done()
				if batched {
					var ops []clientv3.Op
					for p := range sz.Plugins {
						ops = append(ops, clientv3.OpPut(layout.Ack(agent, fmt.Sprintf("plugin-%03d", p)), string(val), clientv3.WithLease(leases[a])))
					}
					if err := putInTxns(ctx, c, ops); err != nil {
						errc <- err
					}
					return
				}
				for p := range sz.Plugins {
					key := layout.Ack(agent, fmt.Sprintf("plugin-%03d", p))
					if err := busyRetry(ctx, func() error { _, err := c.Put(ctx, key, string(val), clientv3.WithLease(leases[a])); return err }); err != nil {
						errc <- err
						return
					}
				}
			}()
		}
		wg.Wait()
		d := time.Since(start)
		close(errc)
		if err := <-errc; err != nil {
			return Dist{}, fmt.Errorf("floor: %w", err)
		}
		if i > 0 {
			samples = append(samples, d)
		}
	}
	return dist(samples), nil
}

// measureWatchedFloor is the etcd floor of a round's whole protocol, with
// none of resync's code: one put of a key that every agent watches (its own
// watch; agents share clients as the fleet's do), each agent writing its
// plugins' acks (an encoded schema.Ack, on its lease) in one Txn when the
// put reaches it, and one watcher on the acks' prefix counting them; from
// the put to the last ack event received. What a round adds to the
// batched floor is the notification of every agent and the collection of
// every ack: this floor pays both, at etcd's price, on the same CPUs. No
// coordinator, no fencing, no order among an agent's plugins, no records.
// With floorDelivered, each agent first hands the round to its plugins,
// one goroutine each, through a channel, in order, each plugin signalling
// back before the next gets it (the seed's StatusChan and Ack, and DESIGN
// invariant 4, at their barest), then writes. floorProtocol adds a round's
// two other writes (protocolHops). One unmeasured sample first.
func measureWatchedFloor(ctx context.Context, e *env, o options, sz size, kind floorKind) (Dist, error) {
	deliver, protocol := kind >= floorDelivered, kind == floorProtocol
	prefix := fmt.Sprintf("/bench/watched-floor-%s/", sz)
	layout := schema.MustLayout(prefix)
	defer e.wipe(ctx, prefix)
	clients, err := e.clients(sz.clients(o.agentsPerClient) + 2)
	if err != nil {
		return Dist{}, err
	}
	defer closeClients(clients)
	collector, starter := clients[len(clients)-1], clients[len(clients)-2]
	leases, err := grantLeases(ctx, clients, sz.Agents, o.agentsPerClient)
	if err != nil {
		return Dist{}, err
	}
	defer revokeLeases(clients, leases, o.agentsPerClient)
	samples := o.rounds + 1
	vals := make([]string, samples)
	for i := range vals {
		v, err := schema.Encode(schema.Ack{Revision: uint64(i + 1), Result: schema.ResultOK, AckedAt: time.Now().UTC()})
		if err != nil {
			return Dist{}, err
		}
		vals[i] = string(v)
	}
	wctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	ready := make(chan struct{}, sz.Agents+2)
	errc := make(chan error, sz.Agents+2)
	trigger := layout.Revision()
	hops := protocolHops{on: protocol, request: prefix + "request", trigger: trigger, finish: prefix + "finish"}
	if protocol {
		wg.Add(1)
		go func() {
			defer wg.Done()
			hops.start(wctx, starter, ready, errc)
		}()
	}
	for a := range sz.Agents {
		c := clients[a/o.agentsPerClient]
		agent := fmt.Sprintf("agent-%05d", a)
		keys := make([]string, sz.Plugins)
		for p := range keys {
			keys[p] = layout.Ack(agent, fmt.Sprintf("plugin-%03d", p))
		}
		var plugins []chan int
		acked := make(chan int)
		if deliver {
			plugins = make([]chan int, sz.Plugins)
			for p := range plugins {
				plugins[p] = make(chan int)
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i := range plugins[p] {
						acked <- i
					}
				}()
			}
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() {
				for _, ch := range plugins {
					close(ch)
				}
			}()
			for resp := range c.Watch(wctx, trigger, clientv3.WithCreatedNotify()) {
				if resp.Created {
					ready <- struct{}{}
				}
				for _, ev := range resp.Events {
					i, err := strconv.Atoi(string(ev.Kv.Value))
					if err != nil || i < 0 || i >= samples {
						errc <- fmt.Errorf("watched floor: trigger value %q", ev.Kv.Value)
						return
					}
					for _, ch := range plugins {
						ch <- i
						<-acked
					}
					ops := make([]clientv3.Op, 0, len(keys))
					for _, k := range keys {
						ops = append(ops, clientv3.OpPut(k, vals[i], clientv3.WithLease(leases[a])))
					}
					if err := putInTxns(wctx, c, ops); err != nil {
						if wctx.Err() == nil {
							errc <- fmt.Errorf("watched floor: %w", err)
						}
						return
					}
				}
			}
		}()
	}
	// The collector: every sample puts each ack key once, so sample i is
	// complete when (i+1) x participants events have arrived.
	want := sz.participants()
	complete := make(chan int, samples)
	wg.Add(1)
	go func() {
		defer wg.Done()
		n := 0
		for resp := range collector.Watch(wctx, layout.Acks(), clientv3.WithPrefix(), clientv3.WithCreatedNotify()) {
			if resp.Created {
				ready <- struct{}{}
			}
			if err := resp.Err(); err != nil {
				if wctx.Err() == nil {
					errc <- fmt.Errorf("watched floor: collector: %w", err)
				}
				return
			}
			for range resp.Events {
				if n++; n%want == 0 {
					if err := hops.finished(wctx, collector, n/want-1); err != nil {
						errc <- err
						return
					}
					complete <- n / want
				}
			}
		}
	}()
	for range sz.Agents + 1 + hops.starters() {
		select {
		case <-ready:
		case err := <-errc:
			return Dist{}, err
		case <-ctx.Done():
			return Dist{}, ctx.Err()
		}
	}
	var out []time.Duration
	for i := range samples {
		start := time.Now()
		if _, err := e.kv.Put(ctx, hops.first(), strconv.Itoa(i)); err != nil {
			return Dist{}, fmt.Errorf("watched floor: %w", err)
		}
		select {
		case <-complete:
		case err := <-errc:
			return Dist{}, err
		case <-time.After(5 * time.Minute):
			return Dist{}, fmt.Errorf("watched floor %s: sample %d incomplete after 5 minutes", sz, i)
		case <-ctx.Done():
			return Dist{}, ctx.Err()
		}
		if i > 0 {
			out = append(out, time.Since(start))
		}
	}
	return dist(out), nil
}

// floorKind is what measureWatchedFloor adds to the batched floor.
type floorKind int

const (
	floorWatched   floorKind = iota // every agent notified, every ack collected
	floorDelivered                  // and each agent's in-order hand-off to its plugins
	floorProtocol                   // and a round's request and finish writes
)

// protocolHops are the two writes a round has that the delivered floor has
// not, when on: the sample writes a request key, a starter watching it
// writes the trigger (a coordinator's start), and the collector writes a
// finish key once every ack arrived (a coordinator's NotActive), the sample
// ending when that put returns, as a round ends at its NotActive. Four
// fsynced writes and three watch hops: what any round of resync's protocol
// pays, with none of its code. Off, the sample writes the trigger itself
// and ends at the last ack seen.
type protocolHops struct {
	on                       bool
	request, trigger, finish string
}

// first is the key a sample writes.
func (h protocolHops) first() string {
	if h.on {
		return h.request
	}
	return h.trigger
}

// starters is how many watchers besides the agents and the collector the
// floor waits for.
func (h protocolHops) starters() int {
	if h.on {
		return 1
	}
	return 0
}

// start copies every request to the trigger until ctx ends.
func (h protocolHops) start(ctx context.Context, c *clientv3.Client, ready chan<- struct{}, errc chan<- error) {
	for resp := range c.Watch(ctx, h.request, clientv3.WithCreatedNotify()) {
		if resp.Created {
			ready <- struct{}{}
		}
		for _, ev := range resp.Events {
			if _, err := c.Put(ctx, h.trigger, string(ev.Kv.Value)); err != nil {
				if ctx.Err() == nil {
					errc <- fmt.Errorf("protocol floor: starter: %w", err)
				}
				return
			}
		}
	}
}

// finished writes sample i's finish, when on.
func (h protocolHops) finished(ctx context.Context, c *clientv3.Client, i int) error {
	if !h.on {
		return nil
	}
	if _, err := c.Put(ctx, h.finish, strconv.Itoa(i)); err != nil && ctx.Err() == nil {
		return fmt.Errorf("protocol floor: finish: %w", err)
	}
	return nil
}

// floorLeaseTTL is the floors' lease TTL, in seconds. Nothing keeps the
// leases alive, so it must outlast every sample: at 5000x10 the per-put
// floor's 21 samples take over a minute after the 5,000 grants. They are
// revoked at the end.
const floorLeaseTTL = 3600

// grantLeases grants one lease per agent, agent a's on client a/perClient,
// as the fleet's agents have theirs.
func grantLeases(ctx context.Context, clients []*clientv3.Client, agents, perClient int) ([]clientv3.LeaseID, error) {
	leases := make([]clientv3.LeaseID, 0, agents)
	for a := range agents {
		l, err := clients[a/perClient].Grant(ctx, floorLeaseTTL)
		if err != nil {
			revokeLeases(clients, leases, perClient)
			return nil, err
		}
		leases = append(leases, l.ID)
	}
	return leases, nil
}

// revokeLeases revokes what grantLeases granted.
func revokeLeases(clients []*clientv3.Client, leases []clientv3.LeaseID, perClient int) {
	for a, l := range leases {
		clients[a/perClient].Revoke(context.Background(), l)
	}
}

// putInTxns writes ops in Txns of at most schema.MaxTxnOps, one after
// another, each retried while etcd is busy (busyRetry).
func putInTxns(ctx context.Context, c *clientv3.Client, ops []clientv3.Op) error {
	for len(ops) > 0 {
		n := min(len(ops), schema.MaxTxnOps)
		if err := busyRetry(ctx, func() error { _, err := c.Txn(ctx).Then(ops[:n]...).Commit(); return err }); err != nil {
			return err
		}
		ops = ops[n:]
	}
	return nil
}

// busyRetry calls f until it returns anything but etcd's "too many
// requests" (its apply backlog is full: 10,000 writers at once reach it),
// pausing 10 ms between attempts, as the watcher's outbox retries.
func busyRetry(ctx context.Context, f func() error) error {
	err := backoff.Retry(ctx, nil, backoff.New(10*time.Millisecond, 10*time.Millisecond), func(context.Context) error {
		err := f()
		if !errors.Is(err, rpctypes.ErrTooManyRequests) && !errors.Is(err, rpctypes.ErrGRPCRequestTooManyRequests) {
			return backoff.Permanent(err)
		}
		return err
	}, nil)
	if _, stopped := err.(*backoff.StoppedError); stopped {
		return ctx.Err()
	}
	return err
}

// measureBarrier runs etcd's recipes.DoubleBarrier with agents x plugins
// participants: one session (lease) per agent shared by its plugins, the
// clients shared as the agents share theirs; a sample is from the start of
// every Enter to the return of the last Leave. The recipes take no ctx and
// Enter returns nil when its client is closed, so a sample that overruns
// -barrier-timeout is abandoned by closing its clients, counted as timed out,
// and none of its results is trusted; the size's later samples are skipped.
func measureBarrier(ctx context.Context, e *env, o options, sz size) (Dist, bool, error) {
	prefix := fmt.Sprintf("/bench/barrier-%s/", sz)
	defer e.wipe(ctx, prefix)
	clients, err := e.clients(sz.clients(o.agentsPerClient))
	if err != nil {
		return Dist{}, false, err
	}
	defer closeClients(clients)
	sessions := make([]*concurrency.Session, sz.Agents)
	for a := range sessions {
		if sessions[a], err = concurrency.NewSession(clients[a/o.agentsPerClient], concurrency.WithTTL(60)); err != nil {
			return Dist{}, false, err
		}
	}
	closed := false
	defer func() {
		for _, s := range sessions {
			if closed {
				s.Orphan()
			} else {
				s.Close()
			}
		}
	}()
	n := sz.participants()
	var samples []time.Duration
	for i := range o.barrierRounds {
		key := fmt.Sprintf("%sb%d", prefix, i)
		var wg sync.WaitGroup
		errc := make(chan error, n)
		start := time.Now()
		for a := range sz.Agents {
			for range sz.Plugins {
				wg.Add(1)
				go func() {
					defer wg.Done()
					b := recipe.NewDoubleBarrier(sessions[a], key, n)
					if err := b.Enter(); err != nil {
						errc <- fmt.Errorf("enter: %w", err)
						return
					}
					if err := b.Leave(); err != nil {
						errc <- fmt.Errorf("leave: %w", err)
					}
				}()
			}
		}
		done := make(chan struct{})
		go func() { wg.Wait(); close(done) }()
		t := time.NewTimer(o.barrierTimeout)
		select {
		case <-done:
			t.Stop()
		case <-t.C:
			// Abandon: closing the clients unblocks the recipes (with
			// nil errors that mean nothing).
			closed = true
			closeClients(clients)
			<-done
			return dist(samples), true, nil
		case <-ctx.Done():
			closed = true
			closeClients(clients)
			<-done
			return dist(samples), false, ctx.Err()
		}
		d := time.Since(start)
		close(errc)
		if err := <-errc; err != nil {
			return dist(samples), false, fmt.Errorf("double barrier %s: %w", sz, err)
		}
		left, err := e.count(ctx, key+"/waiters")
		if err != nil {
			return dist(samples), false, err
		}
		if left != 0 {
			return dist(samples), false, fmt.Errorf("double barrier %s: %d waiters left after every Leave returned", sz, left)
		}
		samples = append(samples, d)
	}
	return dist(samples), false, nil
}

// writeAllocs writes the allocation profile to path.
func writeAllocs(path string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	return pprof.Lookup("allocs").WriteTo(f, 0)
}

// startProfile starts a CPU profile into path; stop ends it.
func startProfile(path string) (stop func(), err error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, err
	}
	return func() { pprof.StopCPUProfile(); f.Close() }, nil
}
