package integration

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strconv"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/resyncd/resync/schema"
)

// Wave rounds in the chaos run (issue 27): the wave-round fault and a share
// of the steady trigger's requests carry random rollout knobs; the fault
// sometimes pauses or aborts the wave round running a little later, and an
// operator goroutine resumes every paused round and every manual canary
// pause, so that no round waits for ever.

// pacerWaveShare: one steady trigger request in this many carries wave
// knobs. With the wave-round fault, about one round in ten is a wave round
// (at one in 30, 44 of 341 in 5 minutes, 2 s long on average against 0.6 s
// for the others): most rounds stay short, so that a 30-minute run keeps
// its pace.
const pacerWaveShare = 40

// randomWave draws rollout knobs for a fleet of agents (names): a window
// of one agent to half the fleet (a count or a percentage), sometimes
// canaries (a count or a list) with a short or manual pause, a failure
// bound low enough that the plugins' random AckErrors abort some rounds,
// and a progress deadline that a slow or blackholed agent trips.
func randomWave(rng *rand.Rand, names []string) *schema.Wave {
	w := &schema.Wave{}
	switch x := rng.IntN(8); x {
	case 0:
		w.MaxInFlight = "1"
	case 1, 2, 3:
		w.MaxInFlight = schema.Limit(strconv.Itoa(2 + rng.IntN(7)))
	default:
		w.MaxInFlight = []schema.Limit{"10%", "25%", "50%", "50%"}[x-4]
	}
	if rng.IntN(3) == 0 {
		if rng.IntN(2) == 0 {
			w.Canary = schema.Limit(strconv.Itoa(1 + rng.IntN(2)))
		} else {
			for range 1 + rng.IntN(2) {
				w.CanaryAgents = append(w.CanaryAgents, names[rng.IntN(len(names))])
			}
		}
		switch rng.IntN(3) {
		case 0:
			w.CanaryPause = schema.CanaryPauseManual // the operator resumes it
		case 1:
			w.CanaryPause = fmt.Sprintf("%dms", 50+rng.IntN(251))
		}
	}
	if rng.IntN(3) == 0 {
		w.MaxFailed = []schema.Limit{"0", "1", "5%"}[rng.IntN(3)]
	}
	if rng.IntN(4) == 0 {
		w.ProgressDeadline = fmt.Sprintf("%dms", 300+rng.IntN(1701))
	}
	return w
}

func agentNames(as []*chaosAgent) []string {
	names := make([]string, len(as))
	for i, a := range as {
		names[i] = a.name
	}
	return names
}

// waveRound is the wave-round fault: a wave request for all agents, or for
// 2-8 of them, with random knobs; one time in three, 0.15-1.2 s later, a
// pause (resumed by the operator) or an abort of the wave round running
// then.
func (env *chaosEnv) waveRound() string {
	names := agentNames(env.agents)
	w := randomWave(env.rng, names)
	var targets []schema.Scope
	if env.pick(3) == 0 {
		env.rng.Shuffle(len(names), func(i, j int) { names[i], names[j] = names[j], names[i] })
		for _, a := range names[:2+env.pick(7)] {
			targets = append(targets, schema.Scope{Agent: a})
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	_, err := putWaveRequest(ctx, env.admin, targets, w, "chaos: wave round")
	cancel()
	if err != nil {
		env.log.WithError(err).Warn("chaos: wave request failed")
		return ""
	}
	if env.pick(3) == 0 {
		action := schema.ActionPause
		if env.pick(3) == 0 {
			action = schema.ActionAbort
		}
		env.addUndo(env.between(150*time.Millisecond, 1200*time.Millisecond), action+" the running wave round", func() {
			n, _, ok := env.runningWave()
			if !ok {
				return
			}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if _, err := putControl(ctx, env.admin, n, action); err != nil {
				env.log.WithError(err).Warn("chaos: wave control failed")
				return
			}
			env.faults["wave-"+action]++
		})
	}
	return "wave-round"
}

// runningWave is the wave round running as the observer last saw it: the
// last valid round summary written, if it is a wave round's and Started.
func (env *chaosEnv) runningWave() (n uint64, plan schema.WavePlan, ok bool) {
	env.h.mu.Lock()
	defer env.h.mu.Unlock()
	for i := len(env.h.RoundWrites) - 1; i >= 0; i-- {
		w := env.h.RoundWrites[i]
		if w.Malformed || w.Round.Revision != w.Key {
			continue
		}
		if w.Round.State != schema.Started || w.Round.Wave == nil {
			return 0, schema.WavePlan{}, false
		}
		return w.Key, *w.Round.Wave, true
	}
	return 0, schema.WavePlan{}, false
}

// waveOperator resumes wave rounds: a round paused by an operator, or in a
// manual canary pause, gets a resume 0.1-0.5 s after the observer saw it
// so (again after 3 s if it is still held). It runs from the start of the
// coordinators until the teardown has quiesced, so that no wave round
// waits for ever; resumes counts its resumes.
type waveOperator struct {
	env     *chaosEnv
	quit    chan struct{}
	done    chan struct{}
	resumes atomic.Int64
}

func (env *chaosEnv) startWaveOperator() *waveOperator {
	op := &waveOperator{env: env, quit: make(chan struct{}), done: make(chan struct{})}
	rng := rand.New(rand.NewPCG(env.seed, 0x0be7))
	go func() {
		defer close(op.done)
		var held uint64 // the round seen held
		var due time.Time
		for {
			timer := time.NewTimer(50 * time.Millisecond) // polling the observer's record
			select {
			case <-op.quit:
				timer.Stop()
				return
			case <-timer.C:
			}
			n, plan, ok := env.runningWave()
			if !ok || (!plan.Paused && !(plan.Phase == schema.PhaseCanaryPause && plan.ResumeAt.IsZero())) {
				held = 0
				continue
			}
			if held != n {
				held, due = n, time.Now().Add(time.Duration(100+rng.IntN(401))*time.Millisecond)
			}
			if time.Now().Before(due) {
				continue
			}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			_, err := putControl(ctx, env.admin, n, schema.ActionResume)
			cancel()
			if err == nil {
				op.resumes.Add(1)
			}
			due = time.Now().Add(3 * time.Second)
		}
	}()
	return op
}

// stop ends the operator (idempotent: nil does nothing).
func (op *waveOperator) stop() {
	if op == nil {
		return
	}
	select {
	case <-op.quit:
	default:
		close(op.quit)
	}
	<-op.done
}

// putWaveRequest writes a manual request with wave knobs w for targets
// (none: all agents).
func putWaveRequest(ctx context.Context, c *clientv3.Client, targets []schema.Scope, w *schema.Wave, reason string) (int64, error) {
	now := time.Now()
	req := schema.Request{Reason: reason, Cause: schema.CauseManual, Wave: w, RequestedBy: "chaos-test", RequestedAt: now.UTC()}
	if len(targets) == 1 {
		req.Scope = targets[0]
	} else {
		req.Targets = targets
	}
	return putOperatorRequest(ctx, c, req, now)
}

// putControl writes an operator's pause, resume or abort of round n.
func putControl(ctx context.Context, c *clientv3.Client, n uint64, action string) (int64, error) {
	now := time.Now()
	req := schema.Request{Reason: "chaos: " + action, Cause: schema.CauseManual, Control: &schema.Control{Round: n, Action: action},
		RequestedBy: "chaos-test", RequestedAt: now.UTC()}
	return putOperatorRequest(ctx, c, req, now)
}
