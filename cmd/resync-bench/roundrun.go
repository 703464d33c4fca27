package main

import (
	"context"
	"fmt"
	"runtime"
	"time"

	"github.com/sirupsen/logrus"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/resyncd/resync/coordinator"
	"github.com/resyncd/resync/schema"
)

// roundRun is one size's rounds in one mode: the agents, the coordinator
// and the tenant probe, and the samples taken so far. Used by one
// goroutine.
type roundRun struct {
	ctx    context.Context
	o      options
	sz     size
	row    *RoundRow
	prefix string
	layout schema.Layout
	e      *env
	kv     *clientv3.Client

	agents agentFleet
	apart  *apartFleet // agents, when they run apart
	k      *coord
	pr     *probe

	lat, st, acked, tenant []time.Duration
	writes                 []time.Time // the measured rounds' start and finish commits
	txns                   uint64
	cpu, agentsCPU         time.Duration
	revs                   []uint64     // the measured rounds
	spans                  []RoundSpan  // their agents in flight
	first                  *fleetCounts // the agents' counts before the first measured request
}

// measureRounds runs sz's rounds into row: the agents in this process, or
// in a child process when apart (the caller has pinned this process).
func measureRounds(ctx context.Context, e *env, o options, sz size, log logrus.FieldLogger, row *RoundRow, apart bool) error {
	prefix := fmt.Sprintf("/bench/rounds-%s/", sz)
	if apart {
		prefix = fmt.Sprintf("/bench/rounds-apart-%s/", sz)
	}
	r := &roundRun{ctx: ctx, o: o, sz: sz, row: row, prefix: prefix, layout: schema.MustLayout(prefix), e: e, kv: e.kv}
	err := r.run(e, log, apart)
	r.finish()
	return err
}

// run starts the agents and the coordinator, waits out the initial round,
// measures the tenant probe idle, then runs the rounds.
func (r *roundRun) run(e *env, log logrus.FieldLogger, apart bool) error {
	var err error
	if apart {
		r.apart, err = startApartFleet(r.ctx, e, r.o, r.sz, r.prefix)
		if r.apart != nil {
			r.agents = r.apart
		}
	} else {
		var f *fleet
		if f, err = startFleet(r.ctx, e, r.sz, r.prefix, r.o.agentsPerClient, log); f != nil {
			r.agents = f
		}
	}
	if err != nil {
		return err
	}
	// Round 1 is the first leader's initial round (with the agents' join
	// resyncs); it is not measured.
	c0, err := r.agents.counts(r.ctx)
	if err != nil {
		return err
	}
	_, budget := r.sz.waves(r.o.budgetWindow)
	if r.k, err = startCoord(e, coordinator.Config{ID: "bench", Prefix: r.prefix, CoalesceWindow: r.o.coalesce, Wave: budget}, log); err != nil {
		return err
	}
	if err := r.initialRound(c0); err != nil {
		return err
	}
	if r.pr, err = startProbe(e); err != nil {
		return err
	}
	idle, err := r.pr.idle(r.ctx, 2*time.Second)
	if err != nil {
		return err
	}
	r.row.TenantIdle = tenantDist(idle)
	return r.rounds()
}

func (r *roundRun) initialRound(c0 fleetCounts) error {
	want := r.sz.participants()
	if _, err := waitRound(r.ctx, r.k.hooks.started, 2*time.Minute, "initial RoundStarted"); err != nil {
		return err
	}
	fin, err := waitRound(r.ctx, r.k.hooks.finished, 5*time.Minute, "initial RoundFinished")
	if err != nil {
		return err
	}
	// Only departures are forgiven, and only here: an agent whose lease
	// lapsed while 10,000 agents started on two busy cores registers
	// again and gets its join resync; the measured rounds then find the
	// whole fleet.
	if c := fin.round.Counts; c.Departed > 0 && c.Participants == want && c.Acked+c.Departed == want {
		r.row.InitialDeparted = c.Departed
		progress("%s: initial round: %d of %d participants departed (their leases lapsed while the fleet started); waiting for them to register again", r.sz, c.Departed, want)
		err := waitFor(r.ctx, 2*time.Minute, "the departed registrations back", func() (bool, error) {
			n, err := r.e.count(r.ctx, r.layout.Registrations())
			return n == int64(want), err
		})
		if err != nil {
			return err
		}
		return r.waitNotActive(c0.NotActive, c.Acked)
	}
	if err := checkClean(fin.round, want); err != nil {
		return err
	}
	return r.waitNotActive(c0.NotActive, want)
}

// rounds runs the warm-up rounds, then the measured ones (profiled when
// asked), each after the previous one's NotActive reached every agent.
func (r *roundRun) rounds() error {
	profiling := false
	for i := 0; i < r.o.warmup+r.o.rounds; {
		if i == r.o.warmup && !profiling {
			profiling = true
			stop, err := r.startProfiles()
			if err != nil {
				return err
			}
			defer stop()
		}
		clean, err := r.round(i >= r.o.warmup)
		if err != nil {
			return err
		}
		if clean {
			i++
		}
	}
	if r.o.memProfile != "" {
		return writeAllocs(fmt.Sprintf("%s.%s", r.o.memProfile, r.sz))
	}
	return nil
}

// startProfiles writes the base allocation profile and starts the CPU
// profile of the measured rounds, as the flags ask.
func (r *roundRun) startProfiles() (stop func(), err error) {
	if r.o.memProfile != "" {
		if err := writeAllocs(fmt.Sprintf("%s.%s.base", r.o.memProfile, r.sz)); err != nil {
			return nil, err
		}
	}
	if r.o.cpuProfile == "" {
		return func() {}, nil
	}
	return startProfile(fmt.Sprintf("%s.%s", r.o.cpuProfile, r.sz))
}

// round requests one round and waits for it, sampling it when measured;
// clean reports whether it counts (an unclean round is recorded and its
// retry waited for).
func (r *roundRun) round(measured bool) (clean bool, err error) {
	r.k.hooks.drainExtra(r.row)
	c0, err := r.agents.counts(r.ctx)
	if err != nil {
		return false, err
	}
	if measured && r.first == nil {
		r.first = &c0
	}
	wave, _ := r.sz.waves(r.o.budgetWindow)
	cpu0 := cpuTime()
	start := time.Now()
	if err := requestWave(r.ctx, r.kv, r.layout, benchReason, r.sz.Target, wave); err != nil {
		return false, err
	}
	s, fin, err := r.k.hooks.waitOurs(r.ctx, r.row)
	if err != nil {
		return false, err
	}
	want := r.sz.measured().participants()
	if cerr := checkClean(fin.round, want); cerr != nil {
		return false, r.unclean(fin, cerr)
	}
	if measured {
		cpu := cpuTime() - cpu0
		c1, err := r.agents.counts(r.ctx)
		if err != nil {
			return false, err
		}
		r.txns += c1.AckTxns - c0.AckTxns
		r.cpu += cpu + c1.CPU - c0.CPU
		r.agentsCPU += c1.CPU - c0.CPU
		r.lat = append(r.lat, fin.at.Sub(start))
		r.st = append(r.st, s.at.Sub(start))
		r.acked = append(r.acked, time.Unix(0, r.k.hooks.lastResolved.Load()).Sub(start))
		r.tenant = append(r.tenant, r.pr.between(start, fin.at)...)
		r.row.SlowWatchers = r.row.SlowWatchers.add(r.pr.slowBetween(start, fin.at))
		r.writes = append(r.writes, s.at, fin.at)
	}
	if err := r.waitNotActive(c0.NotActive, want); err != nil || !measured {
		return true, err
	}
	return true, r.noteRound(s.round.Revision)
}

// unclean records a measured round that was not clean (reported, never
// silently: it is no sample) and waits for its retry round, if any,
// before the next request.
func (r *roundRun) unclean(fin roundEvent, cerr error) error {
	r.row.Unclean = append(r.row.Unclean, cerr.Error())
	progress("%s: %v; waiting for its retry", r.sz, cerr)
	if !fin.round.Clean() {
		if _, err := r.k.hooks.waitExtra(r.ctx, r.row, 3*time.Minute); err != nil {
			return err
		}
	}
	if len(r.row.Unclean) > r.o.rounds {
		return fmt.Errorf("%w: %d unclean rounds", errRound, len(r.row.Unclean))
	}
	return nil
}

// waitNotActive waits up to 30 s until want more plugins than base took
// NotActive; those that did not are counted in the row, not failed.
func (r *roundRun) waitNotActive(base int64, want int) error {
	last := base
	var cerr error
	err := waitFor(r.ctx, 30*time.Second, "NotActive", func() (bool, error) {
		c, err := r.agents.counts(r.ctx)
		if err != nil {
			cerr = err
			return true, nil
		}
		last = c.NotActive
		return last-base >= int64(want), nil
	})
	if cerr != nil {
		return cerr
	}
	if err != nil {
		r.row.NotActiveMissing += int64(want) - (last - base)
	}
	return r.ctx.Err()
}

// finish fills the row from the samples and stops, in order, the agents,
// the tenant probe and the coordinator.
func (r *roundRun) finish() {
	row := r.row
	row.Round, row.ToStarted, row.AllAcked = dist(r.lat), dist(r.st), dist(r.acked)
	if r.apart != nil {
		row.Apart = r.apart.info()
	}
	if r.agents != nil {
		if err := r.fillWaves(); err != nil {
			progress("%s: agents in flight, events and reads: %v", r.sz, err)
		}
		r.agents.Close()
	}
	if r.apart != nil {
		row.Apart.AgentsExitCode = r.apart.exitCode
	}
	if r.pr != nil {
		row.TenantRounds, row.TenantNearWrites = tenantDist(r.tenant), tenantDist(r.pr.near(r.writes))
		r.pr.Close()
	}
	if r.k != nil {
		row.LargestWrite = r.k.co.Status().LargestWrite
		row.WakeFanout = r.k.co.Status().LargestWake
		r.k.Close()
	}
	if n := len(r.lat); n > 0 {
		row.AckTxnsPerAgent = float64(r.txns) / float64(r.sz.measured().Agents*n)
		row.CPUPerRound = ms(r.cpu) / float64(n)
		// Every CPU the bench started with: agents-apart, both
		// processes together have them all.
		row.CPUs = runtime.NumCPU()
		row.CPUFloor = row.CPUPerRound / float64(row.CPUs)
		if r.apart != nil {
			row.AgentsCPUPerRound = ms(r.agentsCPU) / float64(n)
		}
	}
}
