//go:build resync_chaos

package integration

import (
	"fmt"
	"math/rand/v2"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/resyncd/resync/coordinator"
	"github.com/resyncd/resync/internal/testing/etcdtest"
	"github.com/resyncd/resync/schema"
)

// TestChaosPausedLeaderFencing is the checker's proof on a real run (build
// tag resync_chaos, run by make chaos): a leader pauses just before a write
// (as in a GC pause or a SIGSTOP), is deposed meanwhile, a successor runs
// the next round, and then the paused leader's write goes out. With fencing
// (production behaviour) the write is refused and the checker finds
// nothing; with fencing disabled through coordinator.WithTestFaults the
// stale write lands and the checker must report it.
func TestChaosPausedLeaderFencing(t *testing.T) {
	for _, fenced := range []bool{true, false} {
		t.Run(fmt.Sprintf("fenced=%v", fenced), func(t *testing.T) {
			rep := pausedLeaderRun(t, fenced)
			t.Logf("fenced=%v: %s", fenced, rep.Summary())
			stale := 0
			for _, v := range rep.Violations {
				t.Logf("violation: %s", v)
				if strings.Contains(v, "a deposed leader wrote") || strings.Contains(v, "led") {
					stale++
				}
			}
			switch {
			case fenced && len(rep.Violations) != 0:
				t.Errorf("fenced run: %d violations, want none", len(rep.Violations))
			case !fenced && stale == 0:
				t.Errorf("unfenced run: the deposed leader's write was not reported")
			}
		})
	}
}

func pausedLeaderRun(t *testing.T, fenced bool) *Report {
	sink := &logSink{limit: 16 << 20}
	env := &chaosEnv{t: t, seed: 7, sink: sink, log: newSinkLogger(sink, logrus.InfoLevel), h: NewHistory(chaosAllowance),
		rng: rand.New(rand.NewPCG(7, 7)), faults: map[string]int{}}
	defer func() {
		if t.Failed() {
			t.Logf("logs: %s", sink.dump(fmt.Sprintf("resync-fencing-%v.log", fenced)))
		}
	}()
	env.cluster = etcdtest.StartCluster(t, 1)
	eps := env.cluster.Endpoints()
	env.admin = etcdtest.Client(t, eps...)
	env.obs = startObserver(t, env.h, eps...)
	env.calm.Store(true)
	for i := range 2 {
		a := &chaosAgent{env: env, name: fmt.Sprintf("agent-%02d", i)}
		a.proxy = etcdtest.NewProxy(t, eps[0])
		a.start()
		env.agents = append(env.agents, a)
	}

	var armed atomic.Bool
	paused, release := make(chan struct{}), make(chan struct{})
	pause := func() {
		if armed.CompareAndSwap(true, false) {
			close(paused)
			<-release
		}
	}
	start := func(id string, opts ...coordinator.Option) *chaosCoord {
		c, err := etcdtest.NewClient(eps...)
		if err != nil {
			t.Fatal(err)
		}
		cfg := coordinator.Config{ID: id, SessionTTL: chaosSessionTTL, RoundDeadline: chaosRoundDeadline, History: 10000, OpTimeout: 2 * time.Second}
		co, err := coordinator.New(c, cfg, append(opts, coordinator.WithLogger(env.log.WithField("test_coord", id)))...)
		if err != nil {
			t.Fatal(err)
		}
		cc := &chaosCoord{env: env, c: c, co: co}
		env.coords = append(env.coords, cc)
		return cc
	}
	a := start("paused", coordinator.WithTestFaults(!fenced, pause))
	etcdtest.WaitFor(t, 10*time.Second, "the first leader", func() bool { return a.co.Status().Leading })
	env.waitRoundAfter(0, 20*time.Second, "round 1")
	start("successor")

	// The leader decides round 2 and pauses before writing it.
	armed.Store(true)
	if _, err := putRequest(ctxT(t, 5*time.Second), env.admin, schema.CauseManual, schema.Scope{}, "round 2"); err != nil {
		t.Fatal(err)
	}
	select {
	case <-paused:
	case <-time.After(10 * time.Second):
		t.Fatal("the leader did not reach its write of round 2")
	}
	// Deposed while paused: its election key is deleted (as when its lease
	// expires); the successor is elected and runs round 2.
	term := a.co.Status().Term
	resp, err := env.admin.Get(ctxT(t, 5*time.Second), layout.Election()+"/", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	var deposedAt int64
	for _, kv := range resp.Kvs {
		if kv.CreateRevision == term {
			d, err := env.admin.Delete(ctxT(t, 5*time.Second), string(kv.Key))
			if err != nil {
				t.Fatal(err)
			}
			deposedAt = d.Header.Revision
		}
	}
	if deposedAt == 0 {
		t.Fatalf("no election key with create revision %d", term)
	}
	r2 := env.waitRoundAfter(deposedAt, 20*time.Second, "the successor's round 2")
	if r2.Revision != 2 || !strings.HasPrefix(r2.FinishedBy, "successor@") {
		t.Fatalf("round after the deposition: %d finished by %s", r2.Revision, r2.FinishedBy)
	}
	// The paused leader wakes up and writes (or is refused).
	close(release)
	etcdtest.WaitFor(t, 10*time.Second, "the paused leader to stop leading", func() bool { return a.co.Status().Term != term })
	if rev, err := putRequest(ctxT(t, 5*time.Second), env.admin, schema.CauseManual, schema.Scope{}, "after the pause"); err == nil {
		env.waitRoundAfter(rev, 30*time.Second, "a round after the pause")
	}
	env.teardown()
	return env.h.Check()
}
