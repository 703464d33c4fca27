package integration

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jonboulle/clockwork"
	"github.com/sirupsen/logrus"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/resyncd/resync"
	"github.com/resyncd/resync/coordinator"
	"github.com/resyncd/resync/internal/testing/etcdtest"
	"github.com/resyncd/resync/schema"
)

// Shape and timing of a chaos run.
const (
	chaosAgents        = 20
	chaosCoordinators  = 3
	chaosSessionTTL    = 2 * time.Second
	chaosRoundDeadline = 10 * time.Second
	chaosAgentTTL      = 2 * time.Second
	// chaosAllowance is how long after its deadline a round may finish: a
	// leader that crashed at the deadline is replaced after the session TTL,
	// the successor may need etcd retries while a member restarts, and the
	// race detector on two shared cores is slow.
	chaosAllowance = chaosSessionTTL + 8*time.Second
	// The coordinators' pacing of error-triggered rounds, and their
	// coalescing window (the checker's slack).
	chaosBackoffMin = 200 * time.Millisecond
	chaosBackoffMax = 2 * time.Second
	chaosCoalesce   = 100 * time.Millisecond
	chaosOpTimeout  = 2 * time.Second
	// chaosWriteBudget is the coordinators' WriteBudget: small, so that
	// rounds with 1 KiB error texts press against it.
	chaosWriteBudget = 32 << 10
	// dupBound is how soon a process displaced by a newer one with its
	// agent name must be told (Done).
	dupBound = 10 * time.Second
	// closeSlack is what a Close may take beyond its documented bound on a
	// loaded machine with the race detector.
	closeSlack = 3 * time.Second
	// pluginCloseBound is resync.Plugin.Close's documented bound.
	pluginCloseBound = 5 * time.Second
	// defaultChaosDuration is the fault schedule's length per seed in
	// `go test` (the whole run takes about twice that).
	defaultChaosDuration = 20 * time.Second
	// chaosRetrySlack is how long after its backoff bound (and the rounds
	// running then) a round including a failed plugin may start: the
	// coalescing window, and etcd slowed by a restarting member.
	chaosRetrySlack = chaosCoalesce + 2*time.Second
	// chaosOwnerSlack is how long beyond the agent TTL a name may stay
	// unowned while its live process reaches etcd: the observer's delay
	// and a new session's grant under the race detector.
	chaosOwnerSlack = 2 * time.Second
	// chaosReconnectGrace is how much longer a name may stay unowned after
	// its agent could not reach etcd: the agents' etcd clients reconnect
	// with gRPC's backoff, which grows while a proxy blackholes them or
	// their member is down (16 s seen after a 15 s member restart).
	chaosReconnectGrace = 20 * time.Second
	// chaosRestoreTTL is the lease TTL of the process whose owner key an
	// etcd restore brings back: long enough to outlive the restore, so that
	// the live process finds it when it claims its name again.
	chaosRestoreTTL = 15 * time.Second
	// chaosSkew is the clock-skew fault's offset of an agent's clock.
	chaosSkew = 30 * time.Second
)

var chaosPlugins = []string{"ifplugin", "l3plugin", "aclplugin"}

// TestChaos runs the chaos schedule for three seeds (two fixed, one from the
// clock), or, with CHAOS_SEED and/or CHAOS_DURATION set, one run with that
// seed and schedule length (make chaos SEED=... DURATION=10m).
func TestChaos(t *testing.T) {
	if testing.Short() {
		t.Skip("chaos runs take a minute per seed")
	}
	seedEnv, durEnv := os.Getenv("CHAOS_SEED"), os.Getenv("CHAOS_DURATION")
	if seedEnv != "" || durEnv != "" {
		seed := uint64(time.Now().UnixNano())
		if seedEnv != "" {
			s, err := strconv.ParseUint(seedEnv, 10, 64)
			if err != nil {
				t.Fatalf("CHAOS_SEED=%q: %v", seedEnv, err)
			}
			seed = s
		}
		d := defaultChaosDuration
		if durEnv != "" {
			v, err := time.ParseDuration(durEnv)
			if err != nil {
				t.Fatalf("CHAOS_DURATION=%q: %v", durEnv, err)
			}
			d = v
		}
		runChaos(t, chaosOptions{seed: seed, duration: d})
		return
	}
	for _, seed := range []uint64{1, 20261125, uint64(time.Now().UnixNano())} {
		t.Run(fmt.Sprintf("seed=%d", seed), func(t *testing.T) {
			runChaos(t, chaosOptions{seed: seed, duration: defaultChaosDuration})
		})
	}
}

type chaosOptions struct {
	seed     uint64
	duration time.Duration
}

// chaosEnv is one run: the cluster, the coordinators, the agents and the
// recording.
type chaosEnv struct {
	t        *testing.T
	seed     uint64
	opts     chaosOptions
	cluster  *etcdtest.Cluster
	admin    *clientv3.Client
	obs      *observer
	h        *History
	sink     *logSink
	log      *logrus.Logger
	rng      *rand.Rand
	calm     atomic.Bool // final phase: plugins always ack at once
	incSeq   atomic.Int64
	coords   []*chaosCoord
	agents   []*chaosAgent
	faults   map[string]int
	long     *chaosAgent  // the agent with 128-character names
	triggers atomic.Int64 // the pacer's requests
	// waveTriggers: of those, the requests with wave knobs.
	waveTriggers atomic.Int64
	undo         []pendingUndo
	memberUp     []bool
	loops        sync.WaitGroup // ReportError loops
	op           *waveOperator  // resumes paused wave rounds (chaoswaves_test.go)
}

type pendingUndo struct {
	at   time.Time
	what string
	do   func()
}

type chaosCoord struct {
	env       *chaosEnv
	slot, gen int
	c         *clientv3.Client
	co        *coordinator.Coordinator
	kill      *startKill
}

// startKill holds a leader between a round's start Txn and its per-agent
// records once armed (leader-kill-after-start; the coordinator's test hook,
// resync_chaos builds only): it reports the round and waits until the
// leader's context ends (the test crashes the coordinator meanwhile).
type startKill struct {
	armed atomic.Bool
	held  chan uint64
}

func newStartKill() *startKill { return &startKill{held: make(chan uint64, 1)} }

func (k *startKill) hold(ctx context.Context, n uint64) {
	if !k.armed.CompareAndSwap(true, false) {
		return
	}
	k.held <- n
	<-ctx.Done()
}

type chaosAgent struct {
	env     *chaosEnv
	name    string
	plugins []string // nil: chaosPlugins
	member  int
	proxy   *etcdtest.Proxy
	faulted bool // blackholed or cut: not restarted until healed
	// lateNext: the next incarnation's first plugin reads its channel only
	// this long after registering (then reset).
	lateNext time.Duration
	// failJoinNext: the next incarnation's plugin of that name AckErrors
	// its join resync (then reset).
	failJoinNext string
	// skew offsets the clock of its incarnations (clock-skew).
	skew time.Duration
	// ttlNext: the next incarnation's lease TTL (0: chaosAgentTTL; then
	// reset).
	ttlNext time.Duration

	cur *agentProc // the running incarnation (nil after teardown)
}

// agentProc is one process (incarnation) of an agent: its own etcd client
// and resync.Plugin.
type agentProc struct {
	c    *clientv3.Client
	p    *resync.Plugin
	inc  int
	wg   sync.WaitGroup
	stop chan struct{}
	// late[plugin] makes the plugin stop reading its channel for a while.
	late map[string]chan time.Duration
	// bigErrUntil (unix ns): until then its plugins ack with 1 KiB errors.
	bigErrUntil atomic.Int64
	// extra counts the plugins registered after the start (scheduler only).
	extra int
}

func (a *chaosAgent) pluginNames() []string {
	if a.plugins == nil {
		return chaosPlugins
	}
	return a.plugins
}

func (a *chaosAgent) somePlugin() string {
	ps := a.pluginNames()
	return ps[a.env.pick(len(ps))]
}

func runChaos(t *testing.T, o chaosOptions) {
	t.Logf("chaos seed=%d duration=%v (replay: make chaos SEED=%d DURATION=%v)", o.seed, o.duration, o.seed, o.duration)
	sink := &logSink{limit: 64 << 20}
	env := &chaosEnv{
		t: t, seed: o.seed, opts: o, sink: sink, log: newSinkLogger(sink, logrus.InfoLevel),
		h:      NewHistory(chaosAllowance),
		rng:    rand.New(rand.NewPCG(o.seed, o.seed^0x5eed)),
		faults: map[string]int{},
	}
	failed := true
	defer func() {
		if os.Getenv("CHAOS_LOGS") != "" && !failed {
			t.Logf("chaos logs: %s", sink.dump(fmt.Sprintf("resync-chaos-%d.log", o.seed)))
		}
		if failed || t.Failed() {
			t.Logf("chaos seed=%d FAILED; logs: %s; replay: make chaos SEED=%d DURATION=%v", o.seed, sink.dump(fmt.Sprintf("resync-chaos-%d.log", o.seed)), o.seed, o.duration)
		}
	}()
	env.h.Backoff = BackoffConfig{Min: chaosBackoffMin, Max: chaosBackoffMax, Slack: chaosCoalesce + 10*time.Millisecond}
	env.h.WriteBudget = chaosWriteBudget
	env.h.RetrySlack = chaosRetrySlack
	env.h.AgentTTL, env.h.OwnerSlack, env.h.ReconnectGrace = chaosAgentTTL, chaosOwnerSlack, chaosReconnectGrace
	env.cluster = etcdtest.StartCluster(t, 3)
	env.memberUp = []bool{true, true, true}
	eps := env.cluster.Endpoints()
	env.admin = etcdtest.Client(t, eps...)
	env.obs = startObserverLog(t, env.h, env.log, eps...)

	for i := range chaosAgents {
		a := &chaosAgent{env: env, name: fmt.Sprintf("agent-%02d", i), member: i % 3}
		if i == chaosAgents-1 {
			// The longest legal names: a 128-character agent with a
			// 128-character plugin besides the usual ones.
			a.name = longName(a.name + "-")
			a.plugins = append(slices.Clone(chaosPlugins), longName("plugin-"))
			env.long = a
		}
		a.proxy = etcdtest.NewProxy(t, env.cluster.Members[a.member].Endpoint())
		a.start()
		env.agents = append(env.agents, a)
	}
	// Stray keys under election/ before any coordinator campaigns: a
	// leader must still be elected.
	env.faults[env.electionGarbage()+"-before"]++
	for i := range chaosCoordinators {
		env.startCoord(i, 0)
	}
	env.op = env.startWaveOperator()
	defer env.teardown()

	// The initial round, then the fault schedule.
	env.waitRoundAfter(0, 60*time.Second, "the initial round")
	env.schedule(o.duration)
	env.finalPhase()
	rewatches := env.obs.rewatches.Load() // teardown stops the observer
	resumes := env.op.resumes.Load()
	env.teardown()

	rep := env.h.Check()
	kinds := make([]string, 0, len(env.faults))
	total := 0
	for k, n := range env.faults {
		kinds = append(kinds, fmt.Sprintf("%s=%d", k, n))
		total += n
	}
	sort.Strings(kinds)
	t.Logf("chaos seed=%d faults=%d [%s] triggers=%d wave_triggers=%d wave_resumes=%d observer_rewatches=%d %s", o.seed, total, strings.Join(kinds, " "),
		env.triggers.Load(), env.waveTriggers.Load(), resumes, rewatches, rep.Summary())
	for i, v := range rep.Violations {
		if i == 50 {
			t.Errorf("... %d more violations", len(rep.Violations)-50)
			break
		}
		t.Errorf("violation: %s", v)
	}
	if rep.RoundsCompleted < 2 || rep.Events == 0 || rep.FinalAcks < chaosAgents*len(chaosPlugins)+1 || rep.FinalAcks != env.livePlugins() || rep.LongNames == 0 {
		t.Errorf("the run checked too little (%d live plugins): %s", env.livePlugins(), rep.Summary())
	}
	// The new fault classes were checked, not only injected.
	late := env.faults["late-take"] + env.faults["late-join"]
	switch {
	case rep.Takeovers != env.faults["agent-duplicate"]:
		t.Errorf("%d duplicate agents started, %d take-overs checked", env.faults["agent-duplicate"], rep.Takeovers)
	case late >= 5 && rep.LateTimeouts == 0:
		t.Errorf("%d late takers, but no round timed one out: the fault did not bite", late)
	case env.faults["error-1k"] > 0 && rep.TextsChecked == 0:
		t.Errorf("%d 1 KiB error faults, but no error text checked", env.faults["error-1k"])
	case env.faults["leader-kill-after-start"] > 0 && rep.Resumes == 0:
		t.Errorf("%d leaders killed after a start, but no resumed round checked against its Started set", env.faults["leader-kill-after-start"])
	case env.faults["join-ack-error"] > 0 && rep.RetriesChecked == 0:
		t.Errorf("%d failed join resyncs, but no retry checked", env.faults["join-ack-error"])
	case env.faults["wave-round"] > 0 && rep.WaveRounds == 0:
		t.Errorf("%d wave requests, but no wave round checked", env.faults["wave-round"])
	}
	failed = t.Failed()
}

// --- coordinators ---

func (env *chaosEnv) startCoord(slot, gen int) {
	c, err := etcdtest.NewClient(env.cluster.Endpoints()...)
	if err != nil {
		env.t.Fatal(err)
	}
	env.setCoord(env.newCoord(c, slot, gen, ""))
}

// newCoord starts a coordinator on client c (closed with it).
func (env *chaosEnv) newCoord(c *clientv3.Client, slot, gen int, suffix string) *chaosCoord {
	cfg := coordinator.Config{
		ID: fmt.Sprintf("c%d-%d%s", slot, gen, suffix), SessionTTL: chaosSessionTTL, RoundDeadline: chaosRoundDeadline,
		CoalesceWindow: chaosCoalesce, BackoffMin: chaosBackoffMin, BackoffMax: chaosBackoffMax, History: 10000, OpTimeout: chaosOpTimeout,
		WriteBudget: chaosWriteBudget,
	}
	kill := newStartKill()
	opts := append([]coordinator.Option{coordinator.WithLogger(env.log.WithField("test_coord", cfg.ID))}, env.testOptions(kill, (slot+gen)%2 == 1)...)
	co, err := coordinator.New(c, cfg, opts...)
	if err != nil {
		env.t.Fatal(err)
	}
	return &chaosCoord{env: env, slot: slot, gen: gen, c: c, co: co, kill: kill}
}

func (env *chaosEnv) setCoord(cc *chaosCoord) {
	slot := cc.slot
	if slot < len(env.coords) {
		env.coords[slot] = cc
	} else {
		env.coords = append(env.coords, cc)
	}
}

func (env *chaosEnv) leaderSlot() int {
	for i, cc := range env.coords {
		if cc != nil && cc.co.Status().Leading {
			return i
		}
	}
	return -1
}

// crash closes the coordinator's client first (no resign), then stops it.
func (cc *chaosCoord) crash() {
	cc.c.Close()
	cc.closeTimed("crashed")
}

func (cc *chaosCoord) close() {
	cc.closeTimed("closed")
	cc.c.Close()
}

// closeTimed closes the coordinator and records how long Close took
// against its bound (OpTimeout).
func (cc *chaosCoord) closeTimed(how string) {
	began := time.Now()
	cc.co.Close()
	cc.env.h.RecordClose(fmt.Sprintf("coordinator %s (%s)", cc.co.ID(), how), time.Since(began), chaosOpTimeout+closeSlack)
}

// --- agents ---

func (a *chaosAgent) start() {
	env := a.env
	c, err := etcdtest.NewClient(a.proxy.Endpoint)
	if err != nil {
		env.t.Fatal(err)
	}
	inc := int(env.incSeq.Add(1))
	log := env.log.WithField("incarnation", inc)
	ttl := chaosAgentTTL
	if a.ttlNext > 0 {
		ttl, a.ttlNext = a.ttlNext, 0
	}
	var clock resync.Clock
	if a.skew != 0 {
		clock = skewedClock{Clock: clockwork.NewRealClock(), skew: a.skew}
	}
	p, err := resync.New(resync.Deps{Log: log, Client: c, Clock: clock}, resync.Config{
		Agent: a.name, TTL: ttl, AcceptTimeout: 300 * time.Millisecond, AckTimeout: 2 * time.Second,
	})
	if err != nil {
		env.t.Fatal(err)
	}
	ap := &agentProc{c: c, p: p, inc: inc, stop: make(chan struct{}), late: map[string]chan time.Duration{}}
	a.cur = ap
	env.h.AddIncarnation(inc, a.name, a.pluginNames())
	for i, name := range a.pluginNames() {
		reg := p.Register(name)
		rng := rand.New(rand.NewPCG(env.seed, uint64(inc)<<8|uint64(i)))
		late := make(chan time.Duration, 1)
		ap.late[name] = late
		if i == 0 && a.lateNext > 0 {
			late <- a.lateNext // read before the first event
			a.lateNext = 0
		}
		ap.wg.Add(1)
		go a.runPlugin(ap, name, reg.StatusChan(), late, rng, name == a.failJoinNext)
	}
	a.failJoinNext = ""
}

// registerExtra registers one more plugin on the running incarnation (at
// most two per incarnation); with failJoin it AckErrors its join resync.
func (a *chaosAgent) registerExtra(failJoin bool) bool {
	ap := a.cur
	if ap == nil || ap.extra >= 2 {
		return false
	}
	ap.extra++
	name := fmt.Sprintf("mid-%d-%d", ap.inc, ap.extra)
	a.env.h.AddPlugin(ap.inc, name)
	reg := ap.p.Register(name)
	late := make(chan time.Duration, 1)
	ap.late[name] = late
	rng := rand.New(rand.NewPCG(a.env.seed, uint64(ap.inc)<<8|uint64(0x80+ap.extra)))
	ap.wg.Add(1)
	go a.runPlugin(ap, name, reg.StatusChan(), late, rng, failJoin)
	return true
}

// skewedClock is a system clock set skew ahead (or behind): timestamps
// move, the timers' durations do not.
type skewedClock struct {
	clockwork.Clock
	skew time.Duration
}

func (c skewedClock) Now() time.Time                  { return c.Clock.Now().Add(c.skew) }
func (c skewedClock) Since(t time.Time) time.Duration { return c.Now().Sub(t) }
func (c skewedClock) Until(t time.Time) time.Duration { return t.Sub(c.Now()) }

// runPlugin is one plugin: it records every event, "reloads" for 0-50 ms
// and acks; now and then it fails (AckError), reports an error
// (ReportError) or never acks, until the final phase calms it down. With
// failJoin it AckErrors its join resync (a dependency not ready yet).
func (a *chaosAgent) runPlugin(ap *agentProc, name string, ch <-chan resync.StatusEvent, late <-chan time.Duration, rng *rand.Rand, failJoin bool) {
	defer ap.wg.Done()
	h := a.env.h
	p, inc, stop := ap.p, ap.inc, ap.stop
	for {
		var sev resync.StatusEvent
		select {
		case d := <-late: // a pending pause comes before any event
			a.takeLate(ap, name, d)
			continue
		default:
		}
		waitFrom := time.Now()
		select {
		case d := <-late:
			a.takeLate(ap, name, d)
			continue
		case e := <-ch:
			sev = e
		case <-stop: // status channels are never closed
			return
		case <-p.Done(): // closed or displaced
			return
		}
		ev := sev.(*resync.Event)
		h.RecordEvent(Event{Agent: a.name, Plugin: name, Incarnation: inc, Revision: ev.Revision(), Epoch: ev.Epoch(),
			Status: ev.ResyncStatus(), Join: ev.Join(), At: time.Now(), WaitFrom: waitFrom})
		if ev.ResyncStatus() != resync.Started {
			continue
		}
		reload := time.NewTimer(time.Duration(rng.IntN(51)) * time.Millisecond) // the workload, not synchronisation
		select {
		case <-reload.C:
		case <-stop:
		}
		reload.Stop()
		ack := AckSent{Agent: a.name, Plugin: name, Incarnation: inc, Revision: ev.Revision(), Result: schema.ResultOK, At: time.Now()}
		x := rng.IntN(1000)
		big := time.Now().UnixNano() < ap.bigErrUntil.Load()
		if a.env.calm.Load() {
			x, big, failJoin = 1000, false, false
		}
		switch {
		case failJoin && ev.Join():
			failJoin = false
			ack.Result = schema.ResultError
			h.RecordAck(ack)
			ev.AckError(fmt.Errorf("chaos: %s/%s cannot load yet (join resync %d)", a.name, name, ev.Revision()))
		case big || (x < 10):
			// A 1 KiB error text, full of what JSON escapes.
			ack.Result = schema.ResultError
			h.RecordAck(ack)
			ev.AckError(errors.New(bigErrorText(a.name, name, ev.Revision(), rng)))
		case x < 20:
			ack.Result = schema.ResultError
			h.RecordAck(ack)
			ev.AckError(fmt.Errorf("chaos: %s/%s failed to reload revision %d", a.name, name, ev.Revision()))
		case x < 25:
			// Never acks: the watcher writes a timeout ack after AckTimeout.
		case x < 35:
			p.ReportError(name, errors.New("chaos: lost a southbound connection"))
			h.RecordAck(ack)
			ev.Ack()
		default:
			h.RecordAck(ack)
			ev.Ack()
		}
	}
}

// takeLate is a plugin that does not read its channel for d (or until
// its incarnation stops): its events' accept times out meanwhile.
func (a *chaosAgent) takeLate(ap *agentProc, plugin string, d time.Duration) {
	from := time.Now()
	timer := time.NewTimer(d) // the fault: a plugin busy elsewhere
	select {
	case <-timer.C:
	case <-ap.stop:
	}
	timer.Stop()
	a.env.h.RecordLate(LateWindow{Agent: a.name, Plugin: plugin, Incarnation: ap.inc, From: from, Until: time.Now()})
}

// bigErrorText is an error text of about 1 KiB (sometimes a little more,
// to be cut) with characters JSON escapes (< > & " \ control characters)
// and multi-byte UTF-8.
func bigErrorText(agent, plugin string, rev uint64, rng *rand.Rand) string {
	var b strings.Builder
	fmt.Fprintf(&b, "chaos: %s/%s failed to reload revision %d: ", agent, plugin, rev)
	parts := []string{"<vpp-error code=\"-1\">", "a & b", "</vpp-error>", "\\path\\to", "\t", "\n", "ümläut ☃", "plain text "}
	want := 1024 + rng.IntN(2)*rng.IntN(512)
	for b.Len() < want {
		b.WriteString(parts[rng.IntN(len(parts))])
	}
	return b.String()
}

// closeIncarnation stops the current incarnation.
func (a *chaosAgent) closeIncarnation(crash bool) { a.cur.close(a, crash) }

// close stops an incarnation: gracefully (Close revokes the lease) or as a
// crash (the client goes first, the lease expires by itself).
func (ap *agentProc) close(a *chaosAgent, crash bool) {
	close(ap.stop)
	closePlugin := func() {
		began := time.Now()
		ap.p.Close()
		a.env.h.RecordClose(fmt.Sprintf("plugin of %s incarnation %d", a.name, ap.inc), time.Since(began), pluginCloseBound+closeSlack)
	}
	if crash {
		ap.c.Close()
		closePlugin()
	} else {
		closePlugin()
		ap.c.Close()
	}
	ap.wg.Wait()
}

// --- the schedule ---

func (env *chaosEnv) addUndo(after time.Duration, what string, do func()) {
	env.undo = append(env.undo, pendingUndo{at: time.Now().Add(after), what: what, do: do})
}

func (env *chaosEnv) runUndos(all bool) {
	now := time.Now()
	keep := env.undo[:0]
	var due []pendingUndo
	for _, u := range env.undo {
		if all || !u.at.After(now) {
			due = append(due, u)
		} else {
			keep = append(keep, u)
		}
	}
	env.undo = keep
	for _, u := range due {
		env.log.WithField("undo", u.what).Info("chaos: undo")
		u.do()
	}
}

func (env *chaosEnv) pick(n int) int { return env.rng.IntN(n) }

func (env *chaosEnv) between(lo, hi time.Duration) time.Duration {
	return lo + time.Duration(env.rng.Int64N(int64(hi-lo)+1))
}

func (env *chaosEnv) upAgents() []*chaosAgent {
	var out []*chaosAgent
	for _, a := range env.agents {
		if !a.faulted {
			out = append(out, a)
		}
	}
	return out
}

// schedule injects faults for d, one every 150-600 ms, each chosen by the
// seeded generator; faults with a duration (partitions, stopped members)
// are undone by timers. An etcd restore (15 s or more each, every agent
// and coordinator out meanwhile) comes 48-60 s after the last one (or
// a second after one that could not be injected) instead of being
// drawn: drawn at weight 1 of 77 it came 18 to 23 times in 30 minutes,
// around the 20 a long run is to show, and a higher weight would draw
// too many outages for the run to complete its rounds. At 40-56 s a
// 30-minute run had 26 restores and 1,487 rounds; 48-60 s gives about
// 24 and back the 20 s of rounds each restore costs.
func (env *chaosEnv) schedule(d time.Duration) {
	end := time.Now().Add(d)
	stopPacer := env.pacer()
	defer stopPacer()
	restoreDue := time.Now().Add(env.between(48*time.Second, 60*time.Second))
	// A wave round first, so that even a short run checks one.
	env.injectKind("wave-round")
	for time.Now().Before(end) {
		env.runUndos(false)
		if time.Now().After(restoreDue) {
			// Not injected (a member down, no agent up): try again soon.
			restoreDue = time.Now().Add(time.Second)
			if env.injectKind("etcd-restore") != "" {
				restoreDue = time.Now().Add(env.between(48*time.Second, 60*time.Second))
			}
		} else {
			env.fault()
		}
		wait := env.between(150*time.Millisecond, 600*time.Millisecond)
		for _, u := range env.undo {
			wait = min(wait, max(time.Until(u.at), 0))
		}
		timer := time.NewTimer(wait) // pacing of the workload
		<-timer.C
	}
	env.runUndos(true)
}

// pacer asks for a round every 0.15-0.4 s (all agents, one agent or one
// plugin: 1/8, 1/2, 3/8, from its own seeded generator) until it is stopped: a steady
// operator's trigger, so that a long run completes rounds at least ~0.85/s
// whatever faults (some synchronous, some holding rounds up, restores
// stopping them for 15 s and more) are drawn.
func (env *chaosEnv) pacer() (stop func()) {
	quit, done := make(chan struct{}), make(chan struct{})
	rng := rand.New(rand.NewPCG(env.seed, 0xface))
	names := make([]*chaosAgent, len(env.agents))
	copy(names, env.agents)
	go func() {
		defer close(done)
		for {
			timer := time.NewTimer(time.Duration(150+rng.IntN(251)) * time.Millisecond) // the trigger's pace
			select {
			case <-quit:
				timer.Stop()
				return
			case <-timer.C:
			}
			// All agents one time in eight: the requests that come while a
			// round runs merge into the next one, which takes in all agents
			// if any of them asks for all (at one in four, two rounds in
			// three did, and 30 minutes gave 1,379 rounds).
			scope := schema.Scope{}
			if x := rng.IntN(8); x > 0 {
				a := names[rng.IntN(len(names))]
				scope.Agent = a.name
				if x >= 5 {
					ps := a.pluginNames()
					scope.Plugin = ps[rng.IntN(len(ps))]
				}
			}
			// Now and then with wave knobs (most rounds stay plain).
			var wave *schema.Wave
			if rng.IntN(pacerWaveShare) == 0 {
				wave = randomWave(rng, agentNames(names))
			}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			var err error
			if wave == nil {
				_, err = putRequest(ctx, env.admin, schema.CauseManual, scope, "chaos: steady trigger "+scope.String())
			} else {
				_, err = putWaveRequest(ctx, env.admin, []schema.Scope{scope}, wave, "chaos: steady trigger with waves "+scope.String())
			}
			cancel()
			if err == nil {
				env.triggers.Add(1)
				if wave != nil {
					env.waveTriggers.Add(1)
				}
			}
		}
	}()
	return func() {
		close(quit)
		<-done
	}
}

var faultKinds = []struct {
	name   string
	weight int
}{
	{"coord-kill-leader", 3}, {"coord-restart", 3},
	{"agent-blackhole", 5}, {"agent-cut", 4}, {"agent-restart", 3}, {"agent-crash", 3},
	{"member-restart", 3}, {"compact", 3}, {"garbage", 6}, {"request", 6},
	{"coord-standby-partition", 2}, {"report-error-loop", 2},
	{"scoped-burst", 4}, {"report-burst", 4},
	{"late-take", 4}, {"late-join", 2}, {"agent-duplicate", 3}, {"error-1k", 3}, {"name-128", 2},
	{"leader-kill-after-start", 3}, {"join-ack-error", 3}, {"register-mid-round", 3}, {"clock-skew", 2},
	{"wave-round", 4},
	{"etcd-restore", 0}, // on a timer instead: see schedule
}

func (env *chaosEnv) fault() {
	total := 0
	for _, k := range faultKinds {
		total += k.weight
	}
	x := env.pick(total)
	kind := faultKinds[len(faultKinds)-1].name
	for _, k := range faultKinds {
		if x < k.weight {
			kind = k.name
			break
		}
		x -= k.weight
	}
	env.injectKind(kind)
}

// injectKind injects a fault of kind and counts and logs what it did,
// which it returns ("" if nothing applied).
func (env *chaosEnv) injectKind(kind string) string {
	start := time.Now()
	done := env.inject(kind)
	if done != "" {
		env.faults[done]++
		env.log.WithField("fault", done).WithField("took", time.Since(start).Round(time.Millisecond)).Info("chaos: fault injected")
	}
	return done
}

// inject applies one fault; it returns the kind actually injected ("" if
// none applied).
func (env *chaosEnv) inject(kind string) string {
	t := env.t
	switch kind {
	case "coord-kill-leader":
		slot := env.leaderSlot()
		if slot < 0 {
			slot = env.pick(len(env.coords))
		}
		old := env.coords[slot]
		old.crash()
		env.startCoord(slot, old.gen+1)
	case "coord-restart":
		slot := env.pick(len(env.coords))
		old := env.coords[slot]
		old.close()
		env.startCoord(slot, old.gen+1)
	case "agent-blackhole", "agent-cut":
		up := env.upAgents()
		if len(up) == 0 {
			return ""
		}
		a := up[env.pick(len(up))]
		a.faulted = true
		// Mostly past the lease TTL (the session is lost and re-created),
		// sometimes shorter (it survives).
		d := env.between(chaosAgentTTL+500*time.Millisecond, chaosAgentTTL+3*time.Second)
		if env.pick(4) == 0 {
			d = env.between(300*time.Millisecond, chaosAgentTTL/2)
		}
		switch {
		case kind == "agent-blackhole" && env.pick(5) == 0:
			// Longer than gRPC's keepalive (10 s ping + 1 s timeout): the
			// client tears its connection down itself; a plain heal.
			kind = "agent-blackhole-long"
			a.proxy.Blackhole()
			began := time.Now()
			env.addUndo(env.between(12500*time.Millisecond, 14*time.Second), "heal "+a.name, func() {
				a.proxy.Heal()
				if time.Since(began) < 12*time.Second { // healed early (end of the run): see below
					a.proxy.Cut()
					a.proxy.Restore()
				}
				a.faulted = false
				env.h.RecordUnreachable(a.name, began, time.Now())
			})
		case kind == "agent-blackhole":
			// The proxy drops bytes, where a real partition delays them (TCP
			// retransmits): a connection that lived through a short
			// blackhole has lost frames mid-stream, and its HTTP/2 state is
			// corrupt for good (every new stream fails with PROTOCOL_ERROR
			// while pings still pass). A real partition that outlives the
			// lease ends with the connections reset, so the heal drops them.
			a.proxy.Blackhole()
			began := time.Now()
			env.addUndo(d, "heal "+a.name, func() {
				a.proxy.Heal()
				a.proxy.Cut()
				a.proxy.Restore()
				a.faulted = false
				env.h.RecordUnreachable(a.name, began, time.Now())
			})
		default:
			a.proxy.Cut()
			began := time.Now()
			env.addUndo(d, "restore "+a.name, func() {
				a.proxy.Restore()
				a.faulted = false
				env.h.RecordUnreachable(a.name, began, time.Now())
			})
		}
	case "agent-restart", "agent-crash", "late-join", "join-ack-error", "clock-skew":
		up := env.upAgents()
		if len(up) == 0 {
			return ""
		}
		a := up[env.pick(len(up))]
		old := a.cur.inc
		crash := kind == "agent-crash" || (kind != "agent-restart" && kind != "late-join" && env.pick(2) == 0)
		a.closeIncarnation(crash)
		env.h.EndIncarnation(old)
		switch kind {
		case "late-join":
			// Its first plugin reads its channel only 1-3 s after
			// registering: its join is parked, never lost.
			a.lateNext = env.between(time.Second, 3*time.Second)
		case "join-ack-error":
			// One plugin cannot load at start-up: it AckErrors its join
			// resync, and must be retried (invariant 7).
			a.failJoinNext = a.somePlugin()
		case "clock-skew":
			// The next incarnations' clocks run 30 s ahead or behind.
			a.skew = chaosSkew
			if env.pick(2) == 0 {
				a.skew = -chaosSkew
			}
		}
		a.start()
	case "register-mid-round":
		return env.registerMidRound()
	case "wave-round":
		return env.waveRound()
	case "leader-kill-after-start":
		return env.leaderKillAfterStart()
	case "etcd-restore":
		return env.etcdRestore()
	case "member-restart":
		for _, up := range env.memberUp {
			if !up {
				return "" // one member down at a time: the cluster keeps its quorum
			}
		}
		i := env.pick(3)
		if env.pick(2) == 0 {
			for j, m := range env.cluster.Members {
				if m.IsLeader() {
					i = j
					kind = "member-restart-leader"
				}
			}
		}
		m := env.cluster.Members[i]
		env.memberUp[i] = false
		// The agents behind this member cannot reach etcd meanwhile.
		var cut []string
		for _, a := range env.agents {
			if a.member == i {
				cut = append(cut, a.name)
			}
		}
		began := time.Now()
		// A member's shutdown can take seconds (a leader transfers its
		// leadership first): stop it in the background, so that the
		// schedule goes on meanwhile; the restart waits for it.
		stopped := make(chan struct{})
		go func() {
			defer close(stopped)
			m.Stop()
		}()
		env.addUndo(env.between(time.Second, 4*time.Second), "restart "+m.Name, func() {
			<-stopped
			m.Restart()
			env.memberUp[i] = true
			for _, name := range cut {
				env.h.RecordUnreachable(name, began, time.Now())
			}
		})
	case "compact":
		// Only up to what the observer has recorded, so that its own
		// history stays complete.
		rev := env.obs.Last()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err := env.admin.Compact(ctx, rev, clientv3.WithCompactPhysical())
		cancel()
		if err != nil {
			env.log.WithError(err).Warn("chaos: compact failed")
			return ""
		}
		env.h.RecordCompaction(rev)
	case "garbage":
		return env.garbage()
	case "coord-standby-partition":
		return env.partitionStandby()
	case "report-error-loop":
		return env.reportErrorLoop()
	case "late-take":
		return env.lateTake()
	case "agent-duplicate":
		return env.duplicate()
	case "error-1k":
		a := env.someUpAgent()
		if a == nil {
			return ""
		}
		a.cur.bigErrUntil.Store(time.Now().Add(env.between(time.Second, 4*time.Second)).UnixNano())
		if !env.request(schema.Scope{Agent: a.name}, "chaos: 1 KiB errors of "+a.name) {
			return ""
		}
	case "name-128":
		a := env.long
		targets := []schema.Scope{{Agent: a.name, Plugin: a.plugins[len(a.plugins)-1]}}
		if env.pick(2) == 0 {
			targets = append(targets, schema.Scope{Agent: env.agents[env.pick(len(env.agents)-1)].name})
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err := putTargets(ctx, env.admin, schema.CauseManual, targets, "chaos: 128-character names")
		cancel()
		if err != nil {
			env.log.WithError(err).Warn("chaos: request failed")
			return ""
		}
	case "request":
		scope := schema.Scope{}
		switch env.pick(3) {
		case 1:
			scope.Agent = env.agents[env.pick(len(env.agents))].name
		case 2:
			a := env.agents[env.pick(len(env.agents))]
			scope.Agent, scope.Plugin = a.name, a.somePlugin()
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err := putRequest(ctx, env.admin, schema.CauseManual, scope, "chaos: manual request "+scope.String())
		cancel()
		if err != nil {
			env.log.WithError(err).Warn("chaos: request failed")
			return ""
		}
	case "scoped-burst":
		// Overlapping scoped requests at once: each names 1-3 agents or
		// agent/plugin pairs; the checker verifies that the rounds serving
		// them reach no participant outside their union.
		var reqs [][]schema.Scope
		for range 2 + env.pick(3) {
			var targets []schema.Scope
			for range 1 + env.pick(3) {
				a := env.agents[env.pick(len(env.agents))]
				sc := schema.Scope{Agent: a.name}
				if env.pick(2) == 0 {
					sc.Plugin = a.somePlugin()
				}
				targets = append(targets, sc)
			}
			reqs = append(reqs, targets)
		}
		var wg sync.WaitGroup
		for _, targets := range reqs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				if _, err := putTargets(ctx, env.admin, schema.CauseManual, targets, "chaos: scoped burst"); err != nil {
					env.log.WithError(err).Warn("chaos: scoped request failed")
				}
			}()
		}
		wg.Wait()
	case "report-burst":
		// ReportError from several agents at once.
		up := env.upAgents()
		if len(up) < 2 {
			return ""
		}
		var wg sync.WaitGroup
		for range 2 + env.pick(min(3, len(up)-1)) {
			a := up[env.pick(len(up))]
			p, plugin := a.cur.p, a.somePlugin()
			wg.Add(1)
			go func() {
				defer wg.Done()
				p.ReportError(plugin, errors.New("chaos: report burst"))
			}()
		}
		wg.Wait()
	default:
		t.Fatalf("unknown fault %q", kind)
	}
	return kind
}

var garbageValues = []string{
	"not json {",
	`{"revision":0}`,
	`{"unknown_field":true}`,
	`{"revision":7,"state":"Bogus"}`,
	`{"agent":"x"} trailing`,
	strings.Repeat("x", 20000),
	"\xff\xfe",
	"",
}

// garbage writes a malformed value under one key family of the prefix.
func (env *chaosEnv) garbage() string {
	val := garbageValues[env.pick(len(garbageValues))]
	a := env.agents[env.pick(len(env.agents))]
	plugin := chaosPlugins[env.pick(len(chaosPlugins))]
	var key, kind string
	switch env.pick(8) {
	case 0:
		key, kind = layout.Revision(), "garbage-revision"
		if env.pick(2) == 0 {
			// What agents follow: an agent's wake shard or its own key.
			key, kind = layout.WakeShard(schema.WakeShardOf(a.name)), "garbage-wake"
			if env.pick(2) == 0 {
				key = layout.WakeAgent(a.name)
			}
		}
	case 1:
		key, kind = layout.Registration(fmt.Sprintf("ghost-%d", env.pick(5)), plugin), "garbage-registration"
		if env.pick(2) == 0 {
			key = layout.Registrations() + "not a valid/name!"
		}
	case 2:
		// A live agent's ack key: its real ack is lost (the leader keeps
		// what it saw; a successor times the plugin out and retries).
		key, kind = layout.Ack(a.name, plugin), "garbage-ack"
	case 3:
		key, kind = layout.LegacyRequest(schema.NewRequestID(time.Now())), "garbage-request"
		if env.pick(2) == 0 {
			key = layout.Requests() + "bad id!"
		}
	case 4:
		// The record of the running (or last) round.
		key, kind = layout.Round(env.currentRevision()), "garbage-round-current"
	case 5:
		// A round far in the future.
		key, kind = layout.Round(env.currentRevision()+1000), "garbage-round-future"
	case 6:
		key, kind = layout.Prefix()+"no-such-family/"+strconv.Itoa(env.pick(100)), "garbage-unknown-family"
	case 7:
		return env.electionGarbage()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := env.admin.Put(ctx, key, val)
	if err != nil {
		env.log.WithError(err).Warn("chaos: garbage write failed")
		return ""
	}
	env.h.RecordGarbage(resp.Header.Revision, key)
	return kind
}

// currentRevision is the last valid revision the observer saw (at least 1).
func (env *chaosEnv) currentRevision() uint64 {
	env.h.mu.Lock()
	defer env.h.mu.Unlock()
	for i := len(env.h.RevWrites) - 1; i >= 0; i-- {
		if w := env.h.RevWrites[i]; !w.Malformed && !w.Deleted {
			return w.Rec.Revision
		}
	}
	return 1
}

// completedRoundAfter returns the first round whose Started record was
// written after etcd revision after and that has completed.
func (env *chaosEnv) completedRoundAfter(after int64) (coordinator.RoundView, bool) {
	env.h.mu.Lock()
	defer env.h.mu.Unlock()
	startedAt := map[uint64]int64{}
	for _, w := range env.h.RoundWrites {
		if w.Malformed {
			continue
		}
		if _, ok := startedAt[w.Key]; !ok && w.Round.State == schema.Started {
			startedAt[w.Key] = w.ModRev
		}
		if w.Round.State == schema.NotActive && startedAt[w.Key] > after {
			return w.Round, true
		}
	}
	return coordinator.RoundView{}, false
}

func (env *chaosEnv) waitRoundAfter(after int64, within time.Duration, what string) coordinator.RoundView {
	var r coordinator.RoundView
	etcdtest.WaitFor(env.t, within, what, func() bool {
		var ok bool
		r, ok = env.completedRoundAfter(after)
		return ok
	})
	return r
}

// finalPhase heals everything, calms the plugins and asks for rounds until
// one completes with every live plugin acked: every alive agent resyncs
// after its last fault.
func (env *chaosEnv) finalPhase() {
	t := env.t
	env.runUndos(true)
	env.calm.Store(true)
	etcdtest.WaitFor(t, 30*time.Second, "a coordinator leader after the faults", func() bool { return env.leaderSlot() >= 0 })
	want := map[schema.PluginID]bool{}
	for _, a := range env.agents {
		for _, p := range a.pluginNames() {
			want[schema.PluginID{Agent: a.name, Plugin: p}] = true
		}
	}
	deadline := time.Now().Add(90 * time.Second)
	for attempt := 1; ; attempt++ {
		if time.Now().After(deadline) {
			// Not fatal: the checker still runs and says why (a name
			// locked out, a plugin never retried).
			t.Errorf("no round acked by every live plugin within 90 s of healing")
			return
		}
		rev, err := putRequest(ctxT(t, 10*time.Second), env.admin, schema.CauseManual, schema.Scope{}, fmt.Sprintf("chaos: final round, attempt %d", attempt))
		if err != nil {
			t.Fatalf("final request: %v", err)
		}
		r := env.waitRoundAfter(rev, 60*time.Second, "the final round")
		acked := 0
		for _, p := range r.Acked {
			if want[p] {
				acked++
			}
		}
		if r.Scope.IsAll() && acked == len(want) && env.liveAcked(r.Revision) {
			env.h.mu.Lock()
			env.h.FinalRevision = r.Revision
			env.h.mu.Unlock()
			t.Logf("final round %d: all %d live plugins acked (attempt %d)", r.Revision, acked, attempt)
			return
		}
		env.log.WithField("round", r.Revision).WithField("acked", acked).Info("chaos: final round not complete yet; asking again")
		// Pace the next attempt: agents may still be re-creating sessions.
		timer := time.NewTimer(time.Second)
		<-timer.C
	}
}

// liveAcked reports whether every live incarnation recorded an ok ack for n.
func (env *chaosEnv) liveAcked(n uint64) bool {
	env.h.mu.Lock()
	defer env.h.mu.Unlock()
	got := map[int]int{}
	for _, a := range env.h.Acks {
		if a.Revision == n && a.Result == schema.ResultOK {
			got[a.Incarnation]++
		}
	}
	for _, inc := range env.h.Incarnations {
		if inc.Alive && got[inc.ID] < len(inc.Plugins) {
			return false
		}
	}
	return true
}

// teardown stops agents, coordinators and the observer (idempotent). Agents
// are closed without marking their incarnations dead: the history says who
// was alive at the end of the run.
func (env *chaosEnv) teardown() {
	env.runUndos(true)
	env.loops.Wait()
	if env.obs != nil && len(env.coords) > 0 {
		env.quiesce()
	}
	env.op.stop() // after the quiesce: a paused wave round is resumed
	env.op = nil
	if env.h.End.IsZero() {
		env.h.SetEnd(time.Now()) // agents and coordinators close from here
	}
	var wg sync.WaitGroup
	for _, a := range env.agents {
		if a.cur == nil {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			a.closeIncarnation(false)
			a.cur = nil
		}()
	}
	wg.Wait()
	for _, cc := range env.coords {
		cc.close()
	}
	env.coords = nil
	if env.obs != nil {
		// Let the observer catch up with the last writes: a marker under
		// the prefix (in no key family) that it must see.
		if resp, err := env.admin.Put(ctxT(env.t, 10*time.Second), layout.Prefix()+"chaos-test/observer-sync", "end"); err == nil {
			env.obs.waitFor(env.t, resp.Header.Revision, 20*time.Second)
		}
		env.obs.stop()
		env.obs = nil
	}
}

// quiesce waits (at most 30 s) until no round runs and no request is
// pending, then records the etcd revision from which the coordinators are
// closed: a round that starts later may be cut short by the teardown.
func (env *chaosEnv) quiesce() {
	quiet := func() bool {
		env.h.mu.Lock()
		defer env.h.mu.Unlock()
		for i := len(env.h.RevWrites) - 1; i >= 0; i-- {
			if w := env.h.RevWrites[i]; !w.Malformed && !w.Deleted {
				if w.Rec.State != schema.NotActive {
					return false
				}
				break
			}
		}
		for _, l := range env.h.Requests {
			if l.Deleted == 0 {
				return false
			}
		}
		return true
	}
	deadline := time.Now().Add(30 * time.Second)
	for calm := 0; calm < 3 && time.Now().Before(deadline); {
		if quiet() {
			calm++
		} else {
			calm = 0
		}
		timer := time.NewTimer(200 * time.Millisecond) // polling the observer's record
		<-timer.C
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if resp, err := env.admin.Get(ctx, layout.Revision()); err == nil {
		env.h.mu.Lock()
		env.h.TeardownRev = resp.Header.Revision
		env.h.mu.Unlock()
	}
}

// electionGarbage writes a key under election/ that is not a coordinator's:
// without a lease, or on a lease whose id is not its name. Coordinators
// must ignore it (neither wait for it nor take it for a leader).
func (env *chaosEnv) electionGarbage() string {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	key := fmt.Sprintf("%s/garbage-%d", layout.Election(), env.pick(1000))
	var opts []clientv3.OpOption
	if env.pick(2) == 0 {
		lease, err := env.admin.Grant(ctx, 3600)
		if err != nil {
			env.log.WithError(err).Warn("chaos: election garbage lease failed")
			return ""
		}
		key = fmt.Sprintf("%s/%x", layout.Election(), int64(lease.ID)+1) // a lease id, not its own
		opts = append(opts, clientv3.WithLease(lease.ID))
	}
	val := []string{"x", "", "not an id!", "c9-9"}[env.pick(4)]
	resp, err := env.admin.Put(ctx, key, val, opts...)
	if err != nil {
		env.log.WithError(err).Warn("chaos: election garbage write failed")
		return ""
	}
	env.h.RecordGarbage(resp.Header.Revision, key)
	return "garbage-election"
}

// partitionStandby replaces a standby coordinator by one that reaches etcd
// through a proxy; a little later the proxy blackholes it and it is closed
// while partitioned: Close must return within its bound (it may have become
// leader meanwhile: then a leader's Close is checked).
func (env *chaosEnv) partitionStandby() string {
	lead := env.leaderSlot()
	slot := env.pick(len(env.coords))
	if slot == lead {
		slot = (slot + 1) % len(env.coords)
	}
	member := env.pick(3)
	if !env.memberUp[member] {
		return ""
	}
	old := env.coords[slot]
	old.close()
	proxy := etcdtest.NewProxy(env.t, env.cluster.Members[member].Endpoint())
	c, err := etcdtest.NewClient(proxy.Endpoint)
	if err != nil {
		env.t.Fatal(err)
	}
	cc := env.newCoord(c, slot, old.gen+1, "p")
	env.setCoord(cc)
	env.addUndo(env.between(300*time.Millisecond, 2*time.Second), "partition and close "+cc.co.ID(), func() {
		proxy.Blackhole()
		role := "standby"
		if cc.co.Status().Leading {
			role = "leader"
		}
		if env.coords[slot] != cc {
			proxy.Heal() // replaced (closed) by another fault meanwhile
			return
		}
		cc.closeTimed(role + ", blackholed")
		c.Close()
		proxy.Heal()
		env.startCoord(slot, cc.gen+1)
	})
	return "coord-standby-partition"
}

// reportErrorLoop makes a plugin of a live agent call ReportError in a loop
// (every 5 ms) for 2-6 s: the leader must pace its rounds by the backoff.
func (env *chaosEnv) reportErrorLoop() string {
	up := env.upAgents()
	if len(up) == 0 {
		return ""
	}
	a := up[env.pick(len(up))]
	p, plugin := a.cur.p, a.somePlugin()
	stop := make(chan struct{})
	env.loops.Add(1)
	go func() {
		defer env.loops.Done()
		tick := time.NewTicker(5 * time.Millisecond) // the workload's pace
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
				p.ReportError(plugin, errors.New("chaos: error reported in a loop"))
			}
		}
	}()
	env.addUndo(env.between(2*time.Second, 6*time.Second), "stop the ReportError loop of "+a.name, func() { close(stop) })
	return "report-error-loop"
}

// longName pads prefix to schema.MaxNameLen legal characters.
func longName(prefix string) string {
	const pad = "0123456789abcdefghijklmnopqrstuvwxyz._-ABCDEFGHIJKLMNOPQRSTUVWXYZ"
	b := []byte(prefix)
	for i := 0; len(b) < schema.MaxNameLen; i++ {
		b = append(b, pad[i%len(pad)])
	}
	return string(b)
}

// request writes a manual request for scope; false if it failed.
func (env *chaosEnv) request(scope schema.Scope, reason string) bool {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := putRequest(ctx, env.admin, schema.CauseManual, scope, reason); err != nil {
		env.log.WithError(err).Warn("chaos: request failed")
		return false
	}
	return true
}

// someUpAgent picks an agent that is not partitioned (nil if none is).
func (env *chaosEnv) someUpAgent() *chaosAgent {
	up := env.upAgents()
	if len(up) == 0 {
		return nil
	}
	return up[env.pick(len(up))]
}

// lateTake makes a plugin of a live agent stop reading its channel for
// 1.5-4 s and asks for a round that includes it: its accept times out, the
// round records it timed_out, and a retry round must deliver it later.
func (env *chaosEnv) lateTake() string {
	a := env.someUpAgent()
	if a == nil {
		return ""
	}
	plugin := a.somePlugin()
	select {
	case a.cur.late[plugin] <- env.between(1500*time.Millisecond, 4*time.Second):
	default:
		return "" // already late
	}
	scope := schema.Scope{Agent: a.name}
	if env.pick(2) == 0 {
		scope.Plugin = plugin
	}
	if !env.request(scope, "chaos: late taker "+a.name+"/"+plugin) {
		return ""
	}
	return "late-take"
}

// duplicate starts a second process with a live agent's name, on its own
// etcd client (through a new proxy): it must take the name over, and the
// first one must be told (Done) and stop; then the first is closed and the
// second goes on as the agent.
func (env *chaosEnv) duplicate() string {
	a := env.someUpAgent()
	if a == nil {
		return ""
	}
	member := env.pick(3)
	// Both processes must reach etcd: the old one learns it is displaced
	// only from etcd, and this fault holds the schedule (and so the undo
	// that would restart a stopped member) until its Done fires or the
	// bound passes. Behind a stopped member it could never fire in time.
	if !env.memberUp[member] || !env.memberUp[a.member] {
		return ""
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	resp, err := env.admin.Get(ctx, layout.Owner(a.name))
	cancel()
	if err != nil {
		env.log.WithError(err).Warn("chaos: duplicate: reading the owner key failed")
		return ""
	}
	// Nor may the old one be between sessions (its lease lost, its owner
	// key gone with it): it hears of the take-over only once it reaches
	// etcd again, which its session retries bound, not this fault (seed
	// 20261214: 10.6 s, its member just restarted).
	if len(resp.Kvs) == 0 {
		return ""
	}
	old := a.cur
	a.proxy, a.member = etcdtest.NewProxy(env.t, env.cluster.Members[member].Endpoint()), member
	d := &Duplicate{Agent: a.name, Old: old.inc, StartRev: resp.Header.Revision, Started: time.Now(), Bound: dupBound}
	a.start()
	d.New = a.cur.inc
	env.h.AddDuplicate(d)
	timer := time.NewTimer(dupBound + closeSlack) // a bound, not synchronisation
	select {
	case <-old.p.Done():
		env.h.Displaced(d, time.Now())
		if !errors.Is(old.p.Err(), resync.ErrDisplaced) {
			env.h.HarnessError("duplicate %s: Done fired, but Err is %v, not ErrDisplaced", a.name, old.p.Err())
		}
		// Its plugins' loops end on Done (status channels are never
		// closed; one taking an event late ends its pause first).
		exited := make(chan struct{})
		go func() {
			old.wg.Wait()
			close(exited)
		}()
		select {
		case <-exited:
			env.h.ChannelsClosed(d)
		case <-timer.C:
		}
	case <-timer.C:
	}
	timer.Stop()
	env.h.EndIncarnation(old.inc)
	old.close(a, false)
	return "agent-duplicate"
}

// livePlugins is how many plugins the live incarnations registered (those
// registered mid-round included): each must ack the final round.
func (env *chaosEnv) livePlugins() int {
	env.h.mu.Lock()
	defer env.h.mu.Unlock()
	n := 0
	for _, inc := range env.h.Incarnations {
		if inc.Alive {
			n += len(inc.Plugins)
		}
	}
	return n
}

// roundRunning reports whether the last valid revision the observer saw is
// Started.
func (env *chaosEnv) roundRunning() bool {
	env.h.mu.Lock()
	defer env.h.mu.Unlock()
	for i := len(env.h.RevWrites) - 1; i >= 0; i-- {
		if w := env.h.RevWrites[i]; !w.Malformed && !w.Deleted {
			return w.Rec.State == schema.Started
		}
	}
	return false
}

// waitRoundRunning waits (at most within) until a round runs.
func (env *chaosEnv) waitRoundRunning(within time.Duration) bool {
	deadline := time.Now().Add(within)
	for !env.roundRunning() {
		if time.Now().After(deadline) {
			return false
		}
		timer := time.NewTimer(20 * time.Millisecond) // polling the observer's record
		<-timer.C
	}
	return true
}

// registerMidRound registers a plugin on a live agent while a round runs
// (after its start): it gets its join resync and is no participant of that
// round; half of them AckError their join, which must be retried.
func (env *chaosEnv) registerMidRound() string {
	a := env.someUpAgent()
	if a == nil || !env.waitRoundRunning(3*time.Second) || !a.registerExtra(env.pick(2) == 0) {
		return ""
	}
	return "register-mid-round"
}

// leaderKillAfterStart holds the leader between a round's start Txn and its
// per-agent records, changes the fleet while it is held (a plugin
// registers, or an agent leaves for a few seconds), then crashes it: the
// successor must resume the round with exactly its Started participants
// (the leaver departed, the newcomer no participant).
func (env *chaosEnv) leaderKillAfterStart() string {
	slot := env.leaderSlot()
	if !afterStartHooks || slot < 0 {
		return ""
	}
	cc := env.coords[slot]
	cc.kill.armed.Store(true)
	if !env.request(schema.Scope{}, "chaos: a round whose leader dies after its start") {
		cc.kill.armed.Store(false)
		return ""
	}
	timer := time.NewTimer(5 * time.Second) // a bound, not synchronisation
	defer timer.Stop()
	select {
	case <-cc.kill.held:
	case <-timer.C:
		if cc.kill.armed.CompareAndSwap(true, false) {
			return "" // no round started meanwhile (deposed, etcd slow)
		}
		<-cc.kill.held
	}
	if a := env.someUpAgent(); a != nil {
		if env.pick(2) == 0 {
			a.registerExtra(env.pick(2) == 0)
		} else {
			// It leaves (its lease revoked) and comes back after the
			// successor took over.
			old := a.cur.inc
			a.faulted = true
			a.closeIncarnation(false)
			env.h.EndIncarnation(old)
			a.cur = nil
			env.addUndo(env.between(3*time.Second, 5*time.Second), "restart "+a.name+" after the leader kill", func() {
				a.start()
				a.faulted = false
			})
		}
	}
	cc.crash()
	env.startCoord(slot, cc.gen+1)
	return "leader-kill-after-start"
}

// etcdRestore restores the whole etcd cluster from a snapshot taken earlier
// in the fault (etcdtest.Cluster.Restore: etcdutl's restore into new data
// dirs, the revision bumped and marked compacted, the members restarted on
// their URLs), in the sequence of issue 24's point 3. The coordinators
// stop first, so that no round is written between the snapshot and the
// restore (the checker's round history stays linear). A process Z with a
// 15 s lease takes an agent's name over and crashes (its lease alive),
// the snapshot is taken, a new process A takes the name over, and the
// snapshot is restored: A's lease is gone and Z's owner key is back until
// its lease expires. A must keep its name (checkUnowned); every agent
// whose lease is gone registers again.
func (env *chaosEnv) etcdRestore() string {
	t := env.t
	for _, up := range env.memberUp {
		if !up {
			return ""
		}
	}
	a := env.someUpAgent()
	if a == nil {
		return ""
	}
	// From here to the coordinators' restart, no leader and (during the
	// restore) no etcd: an outage for every agent.
	began := time.Now()
	gens := make([]int, len(env.coords))
	for i, cc := range env.coords {
		gens[i] = cc.gen
		cc.close()
	}
	defer func() {
		for i := range gens {
			env.startCoord(i, gens[i]+1)
		}
		env.h.RecordUnreachable("", began, time.Now())
	}()
	// Z: a process with a long lease takes the name over.
	after := env.obs.Last()
	old := a.cur.inc
	a.closeIncarnation(true)
	env.h.EndIncarnation(old)
	a.ttlNext = chaosRestoreTTL
	a.start()
	deadline := time.Now().Add(10 * time.Second)
	for !env.ownedAfter(a.name, after) && time.Now().Before(deadline) {
		timer := time.NewTimer(20 * time.Millisecond) // polling the observer's record
		<-timer.C
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	z := a.cur.inc
	a.closeIncarnation(true) // Z crashes, its lease alive
	env.h.EndIncarnation(z)
	// The revision record's mod revision: a write of a closed leader
	// that was in flight may still land; the restore is called off if
	// one did after this.
	revMod := func() int64 {
		resp, err := env.admin.Get(ctx, layout.Revision())
		if err != nil || len(resp.Kvs) == 0 {
			return -1
		}
		return resp.Kvs[0].ModRevision
	}
	before := revMod()
	path, snapRev, err := etcdtest.SaveSnapshot(ctx, env.admin, t.TempDir())
	if err != nil {
		env.log.WithError(err).Warn("chaos: snapshot failed")
		a.start()
		return ""
	}
	// A: a new process takes the name over (an owner write after the
	// snapshot).
	a.start()
	deadline = time.Now().Add(10 * time.Second)
	for !env.ownedAfter(a.name, snapRev) && time.Now().Before(deadline) {
		timer := time.NewTimer(20 * time.Millisecond) // polling the observer's record
		<-timer.C
	}
	if m := revMod(); m != before || m < 0 {
		env.log.WithField("before", before).WithField("now", m).Warn("chaos: the revision record changed after the snapshot (a closed leader's write in flight); no restore")
		return ""
	}
	// The observer has seen everything before the restore: what it
	// compares the restored keys with.
	resp, err := env.admin.Get(ctx, "chaos-restore-probe")
	if err != nil {
		env.log.WithError(err).Warn("chaos: reading the revision before the restore failed; no restore")
		return ""
	}
	env.obs.waitFor(t, resp.Header.Revision, 20*time.Second)
	last := env.obs.Last()
	env.obs.resetOK.Store(true)
	from := time.Now()
	bump := last - snapRev + 100000
	if err := env.cluster.Restore(path, uint64(bump)); err != nil {
		t.Fatalf("chaos: %v", err)
	}
	// --mark-compacted: everything before the restored revision is gone.
	env.h.RecordCompaction(snapRev + bump)
	env.log.WithField("agent", a.name).WithField("snapshot_rev", snapRev).WithField("took", time.Since(from).Round(time.Millisecond)).
		Info("chaos: etcd restored from a snapshot")
	// The coordinators start again (deferred) only once the observer has
	// read the restored state: their first writes must come after it.
	etcdtest.WaitFor(t, 30*time.Second, "the observer to read the restored state", func() bool { return !env.obs.resetOK.Load() })
	return "etcd-restore"
}

// ownedAfter reports whether the observer saw agent's owner key written
// after etcd revision after.
func (env *chaosEnv) ownedAfter(agent string, after int64) bool {
	env.h.mu.Lock()
	defer env.h.mu.Unlock()
	for _, o := range env.h.Owners {
		if o.Agent == agent && o.ModRev > after && !o.Deleted {
			return true
		}
	}
	return false
}
