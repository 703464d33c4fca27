package coordinator

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/resyncd/resync/internal/testing/etcdtest"
	"github.com/resyncd/resync/schema"
)

// wakeWrite is one put of a wake key, as a watcher of wake/ saw it.
type wakeWrite struct {
	key   string
	mod   int64
	lease int64
	rec   schema.Revision
}

// wakeLog records every wake key put from now on.
type wakeLog struct {
	mu     sync.Mutex
	writes []wakeWrite
}

func watchWakes(t *testing.T, c *clientv3.Client) *wakeLog {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	w := &wakeLog{}
	wch := c.Watch(ctx, layout.Wakes(), clientv3.WithPrefix(), clientv3.WithCreatedNotify())
	<-wch
	go func() {
		for resp := range wch {
			for _, e := range resp.Events {
				if e.Type != clientv3.EventTypePut {
					continue
				}
				rec, err := layout.DecodeWake(string(e.Kv.Key), e.Kv.Value)
				if err != nil {
					t.Errorf("a malformed wake key: %v", err)
					continue
				}
				w.mu.Lock()
				w.writes = append(w.writes, wakeWrite{key: string(e.Kv.Key), mod: e.Kv.ModRevision, lease: e.Kv.Lease, rec: rec})
				w.mu.Unlock()
			}
		}
	}()
	return w
}

// of returns the writes of round n in state st.
func (w *wakeLog) of(n uint64, st schema.Status) []wakeWrite {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []wakeWrite
	for _, x := range w.writes {
		if x.rec.Revision == n && x.rec.State == st {
			out = append(out, x)
		}
	}
	return out
}

func fleetAgents(n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("node-%04d", i)
	}
	return out
}

// checkShardWrites checks that record (n, st) reached every wake shard,
// and that no single etcd write (one mod revision) woke more than
// wakeFanout of agents. It returns how many writes it took.
func checkShardWrites(t *testing.T, w *wakeLog, agents []string, n uint64, st schema.Status) int {
	t.Helper()
	perShard := map[string]int{}
	for _, a := range agents {
		perShard[layout.WakeShard(schema.WakeShardOf(a))]++
	}
	shards := map[string]bool{}
	woken := map[int64]int{}
	for _, x := range w.of(n, st) {
		if k, err := layout.Parse(x.key); err != nil || k.Kind != schema.KindWakeShard {
			t.Errorf("round %d %s wrote %s: an all-scope round writes only wake shards", n, st, x.key)
			continue
		}
		shards[x.key] = true
		woken[x.mod] += perShard[x.key]
	}
	if len(shards) != schema.WakeShards {
		t.Errorf("round %d %s reached %d wake shards, want all %d", n, st, len(shards), schema.WakeShards)
	}
	for mod, k := range woken {
		if k > wakeFanout {
			t.Errorf("round %d %s: the write at etcd revision %d woke %d agents, above the bound of %d", n, st, mod, k, wakeFanout)
		}
	}
	return len(woken)
}

// A fleet of 1,200 agents: an all-scope round wakes every agent through
// the 64 wake shards, in writes of at most wakeFanout (512) agents each;
// a round of one agent writes that agent's own wake key only, on its
// session lease: the other 1,199 get no event.
func TestRoundsWakeOnlyTheirAgentsInBoundedWrites(t *testing.T) {
	m := etcdtest.Start(t)
	obs := m.Client(t)
	agents := fleetAgents(1200)
	f := startFleet(t, obs, agents, []string{"p"})
	wakes := watchWakes(t, obs)
	co := newCoord(t, []string{m.Endpoint()}, testConfig("c0"))
	waitRevision(t, co, 1, schema.Started)
	f.ack(1, f.ids, schema.ResultOK, "")
	waitFinished(t, obs, 1, 30*time.Second)
	etcdtest.WaitFor(t, 10*time.Second, "round 1's NotActive in every shard", func() bool {
		return len(wakes.of(1, schema.NotActive)) >= schema.WakeShards
	})
	for _, st := range []schema.Status{schema.Started, schema.NotActive} {
		if writes := checkShardWrites(t, wakes, agents, 1, st); writes < 3 {
			t.Errorf("round 1 %s woke 1,200 agents in %d writes: at most 512 each needs 3 or more", st, writes)
		}
	}

	one := schema.PluginID{Agent: "node-0007", Plugin: "p"}
	request(t, obs, schema.CauseManual, schema.Scope{Agent: one.Agent}, "one agent")
	waitRevision(t, co, 2, schema.Started)
	f.ack(2, []schema.PluginID{one}, schema.ResultOK, "")
	waitFinished(t, obs, 2, 10*time.Second)
	etcdtest.WaitFor(t, 10*time.Second, "round 2's NotActive in node-0007's wake key", func() bool {
		return len(wakes.of(2, schema.NotActive)) > 0
	})
	for _, st := range []schema.Status{schema.Started, schema.NotActive} {
		ws := wakes.of(2, st)
		if len(ws) != 1 || ws[0].key != layout.WakeAgent(one.Agent) {
			t.Fatalf("round 2 %s wrote %+v; want node-0007's wake key alone", st, ws)
		}
		if ws[0].lease != int64(f.lease) {
			t.Errorf("node-0007's wake key is on lease %x, want its session lease %x", ws[0].lease, f.lease)
		}
	}
}

// The leader dies between a round's start Txn and the rest of its wake
// writes (an all-scope round of 600 agents: the first shard group is in
// the start Txn, the others follow; a set-scope round: its agent's key
// follows). The successor writes them again for the round it resumes, so
// every agent hears of it, and the round completes.
func TestSuccessorWakesTheRoundItResumes(t *testing.T) {
	m := etcdtest.Start(t)
	obs := m.Client(t)
	eps := []string{m.Endpoint()}
	agents := fleetAgents(600)
	f := startFleet(t, obs, agents, []string{"p"})
	wakes := watchWakes(t, obs)
	frozen, release := make(chan uint64, 2), make(chan struct{})
	var releaseOnce sync.Once
	first := newCoord(t, eps, testConfig("first"), withFaults(testFaults{afterStart: func(_ context.Context, n uint64, _ []schema.PluginID) {
		if n >= 2 {
			frozen <- n
			<-release
		}
	}}))
	// Cleanups run last first: a failed check lets the frozen leader go
	// before its coordinator is closed.
	t.Cleanup(func() { releaseOnce.Do(func() { close(release) }) })
	waitRevision(t, first, 1, schema.Started)
	f.ack(1, f.ids, schema.ResultOK, "")
	waitFinished(t, obs, 1, 30*time.Second)

	request(t, obs, schema.CauseManual, schema.Scope{}, "everyone")
	if n := recvFrozen(t, frozen); n != 2 {
		t.Fatalf("round %d froze, want 2", n)
	}
	// The start Txn's writes reach the watch as one response: once one
	// is seen, all are; the frozen leader writes nothing more.
	got := map[string]bool{}
	etcdtest.WaitFor(t, 10*time.Second, "round 2's start Txn in the wake watch", func() bool {
		for _, x := range wakes.of(2, schema.Started) {
			got[x.key] = true
		}
		return len(got) > 0
	})
	if len(got) == schema.WakeShards {
		t.Fatalf("round 2's start Txn reached %d of %d shards: want its first group only (600 agents, groups of at most %d)", len(got), schema.WakeShards, wakeFanout)
	}
	second := newCoord(t, eps, testConfig("second"))
	first.c.Close()
	releaseOnce.Do(func() { close(release) })
	first.Close()
	etcdtest.WaitFor(t, 15*time.Second, "round 2's Started in every shard", func() bool {
		got := map[string]bool{}
		for _, x := range wakes.of(2, schema.Started) {
			got[x.key] = true
		}
		return len(got) == schema.WakeShards
	})
	checkShardWrites(t, wakes, agents, 2, schema.Started)
	f.ack(2, f.ids, schema.ResultOK, "")
	waitFinished(t, obs, 2, 30*time.Second)

	// Now a set-scope round whose leader dies before its agent's key.
	release3 := make(chan struct{})
	var release3Once sync.Once
	third := newCoord(t, eps, testConfig("third"), withFaults(testFaults{afterStart: func(_ context.Context, n uint64, _ []schema.PluginID) {
		if n == 3 {
			frozen <- n
			<-release3
		}
	}}))
	t.Cleanup(func() { release3Once.Do(func() { close(release3) }) })
	second.Close()
	waitLeader(t, []*testCoord{third}, 15*time.Second)
	one := schema.PluginID{Agent: "node-0042", Plugin: "p"}
	request(t, obs, schema.CauseManual, schema.Scope{Agent: one.Agent}, "one agent")
	if n := recvFrozen(t, frozen); n != 3 {
		t.Fatalf("round %d froze, want 3", n)
	}
	if ws := wakes.of(3, schema.Started); len(ws) != 0 {
		t.Fatalf("round 3's agent key written before the fault: %+v", ws)
	}
	fourth := newCoord(t, eps, testConfig("fourth"))
	third.c.Close()
	release3Once.Do(func() { close(release3) })
	third.Close()
	etcdtest.WaitFor(t, 15*time.Second, "round 3's Started in node-0042's wake key", func() bool {
		ws := wakes.of(3, schema.Started)
		return len(ws) > 0 && ws[0].key == layout.WakeAgent(one.Agent)
	})
	waitLeader(t, []*testCoord{fourth}, 15*time.Second)
	f.ack(3, []schema.PluginID{one}, schema.ResultOK, "")
	waitFinished(t, obs, 3, 15*time.Second)
}

// recvFrozen waits for a leader to report the round it froze in.
func recvFrozen(t *testing.T, frozen <-chan uint64) uint64 {
	t.Helper()
	select {
	case n := <-frozen:
		return n
	case <-time.After(15 * time.Second):
		t.Fatal("no round started within 15s")
		return 0
	}
}

// After a term's first write to every shard, an all-scope record goes
// only where it changes something: Started to the shards with agents (a
// one-agent fleet's start Txn carried 64 copies), NotActive to those and
// to every shard its Started reached; an agent that came to an empty
// shard mid-round hears the NotActive. A successor's first write goes to
// every shard again: what its predecessor left there is unknown.
func TestAllScopeRecordsGoOnlyToShardsWithAgents(t *testing.T) {
	m := etcdtest.Start(t)
	obs := m.Client(t)
	eps := []string{m.Endpoint()}
	var agents []string // four agents, each alone in its shard
	seen := map[int]bool{}
	for _, a := range fleetAgents(100) {
		if s := schema.WakeShardOf(a); !seen[s] && len(agents) < 4 {
			seen[s] = true
			agents = append(agents, a)
		}
	}
	shardsOf := func(as ...string) map[string]bool {
		out := map[string]bool{}
		for _, a := range as {
			out[layout.WakeShard(schema.WakeShardOf(a))] = true
		}
		return out
	}
	wakes := watchWakes(t, obs)
	written := func(n uint64, st schema.Status) map[string]bool {
		out := map[string]bool{}
		for _, x := range wakes.of(n, st) {
			out[x.key] = true
		}
		return out
	}
	f := startFleet(t, obs, agents[:3], []string{"p"})
	first := newCoord(t, eps, testConfig("first"))
	waitRevision(t, first, 1, schema.Started)
	f.ack(1, f.ids, schema.ResultOK, "")
	waitFinished(t, obs, 1, 10*time.Second)
	etcdtest.WaitFor(t, 10*time.Second, "round 1's NotActive in every shard", func() bool {
		return len(written(1, schema.NotActive)) == schema.WakeShards
	})
	if got := len(written(1, schema.Started)); got != schema.WakeShards {
		t.Fatalf("the term's first record went to %d shards, want all %d", got, schema.WakeShards)
	}

	request(t, obs, schema.CauseManual, schema.Scope{}, "everyone")
	waitRevision(t, first, 2, schema.Started)
	// Registered before the acks: the leader's one watch of the state
	// hands it the registration before the last ack, so before the finish.
	startFleet(t, obs, agents[3:], []string{"p"})
	f.ack(2, f.ids, schema.ResultOK, "")
	waitFinished(t, obs, 2, 10*time.Second)
	want := shardsOf(agents...)
	etcdtest.WaitFor(t, 10*time.Second, "round 2's NotActive in the four agents' shards", func() bool {
		return len(written(2, schema.NotActive)) >= len(want)
	})
	if got, want := written(2, schema.Started), shardsOf(agents[:3]...); !maps.Equal(got, want) {
		t.Errorf("round 2's Started went to %v, want the shards with agents %v", slices.Sorted(maps.Keys(got)), slices.Sorted(maps.Keys(want)))
	}
	if got := written(2, schema.NotActive); !maps.Equal(got, want) {
		t.Errorf("round 2's NotActive went to %v, want its Started's shards and the late agent's %v", slices.Sorted(maps.Keys(got)), slices.Sorted(maps.Keys(want)))
	}

	if err := first.Close(); err != nil {
		t.Fatal(err)
	}
	before := len(wakes.of(2, schema.NotActive))
	newCoord(t, eps, testConfig("successor"))
	etcdtest.WaitFor(t, 10*time.Second, "the successor's first write in every shard", func() bool {
		return len(wakes.of(2, schema.NotActive))-before >= schema.WakeShards
	})
}
