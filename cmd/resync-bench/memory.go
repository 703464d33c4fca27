package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/sirupsen/logrus"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/resyncd/resync/coordinator"
	"github.com/resyncd/resync/schema"
)

// MemoryResult is the coordinator's heap per participant.
//
// Method: the coordinator runs alone in a child process (this binary, run
// with childMemoryArg) against the run's etcd, so that neither etcd's memory
// nor the agents' is counted. The parent writes agents' registrations
// directly as leased keys (10 plugins per agent, one lease per agent) and
// answers each Started revision by writing every participant's ack, so no
// agent library runs either. The child forces two GCs and reads
// runtime.MemStats.HeapAlloc (live heap) with its etcd client connected and
// no coordinator, then starts the coordinator, waits until it has led the
// initial round and Rounds-1 more (every participant acked), forces GCs
// again and reads HeapAlloc: the difference, divided by the participants, is
// the coordinator's heap per participant while idle between rounds. Peak is
// the largest HeapAlloc sampled (without GC) when a round starts and ends.
type MemoryResult struct {
	Participants   int     `json:"participants"`
	Agents         int     `json:"agents"`
	Rounds         int     `json:"rounds"`
	HeapBefore     uint64  `json:"heap_before_bytes"`
	HeapAfter      uint64  `json:"heap_after_bytes"`
	PerParticipant float64 `json:"heap_per_participant_bytes"`
	PeakHeap       uint64  `json:"peak_heap_alloc_bytes"`
	Goroutines     int     `json:"goroutines_after"`
	Method         string  `json:"method"`
}

const childMemoryArg = "internal-child-memory"

const memoryMethod = "coordinator alone in a child process; registrations and acks written directly as leased keys by the parent; " +
	"live heap (HeapAlloc after 2 GCs) after the rounds minus before the coordinator started, divided by participants"

// memCounts parses -mem-participants: a list, or "sizes" for the distinct
// participant counts of the sizes' measured rounds, at least 1000 (below
// that the coordinator's fixed heap, not the per-participant one, shows).
func memCounts(flagValue string, sizes []size) ([]int, error) {
	if flagValue != "sizes" {
		return parseInts(flagValue)
	}
	var out []int
	for _, sz := range sizes {
		if n := sz.measured().participants(); n >= 1000 && !slices.Contains(out, n) {
			out = append(out, n)
		}
	}
	if len(out) == 0 {
		out = []int{10000}
	}
	return out, nil
}

func measureMemory(ctx context.Context, e *env, n int) (*MemoryResult, error) {
	const plugins = 10
	agents := (n + plugins - 1) / plugins
	prefix := "/bench/memory/"
	layout := schema.MustLayout(prefix)
	defer e.wipe(ctx, prefix)
	clients, err := e.clients(8)
	if err != nil {
		return nil, err
	}
	defer closeClients(clients)

	ids := make([]schema.PluginID, 0, n)
	for i := range n {
		ids = append(ids, schema.PluginID{Agent: fmt.Sprintf("agent-%05d", i/plugins), Plugin: fmt.Sprintf("plugin-%03d", i%plugins)})
	}
	leases := make([]clientv3.LeaseID, agents)
	for a := range leases {
		l, err := clients[a%len(clients)].Grant(ctx, 600)
		if err != nil {
			return nil, err
		}
		leases[a] = l.ID
	}
	defer func() {
		for a, l := range leases {
			clients[a%len(clients)].Revoke(context.Background(), l)
		}
	}()
	now := time.Now().UTC()
	var ops []clientv3.Op
	for i, id := range ids {
		b, err := schema.Encode(schema.Registration{Agent: id.Agent, Plugin: id.Plugin, Order: i % plugins, RegisteredAt: now})
		if err != nil {
			return nil, err
		}
		ops = append(ops, clientv3.OpPut(layout.Registration(id.Agent, id.Plugin), string(b), clientv3.WithLease(leases[i/plugins])))
		if len(ops) == 100 || i == len(ids)-1 {
			if _, err := e.kv.Txn(ctx).Then(ops...).Commit(); err != nil {
				return nil, err
			}
			ops = ops[:0]
		}
	}

	// The ack responder: every participant acks each Started revision.
	rctx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() { stop(); wg.Wait() }()
	wch := e.kv.Watch(rctx, layout.Revision(), clientv3.WithCreatedNotify())
	if resp, ok := <-wch; !ok || !resp.Created {
		return nil, fmt.Errorf("memory: the revision watch was not created: %v", resp.Err())
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for resp := range wch {
			for _, ev := range resp.Events {
				rev, err := schema.DecodeRevision(layout.Revision(), ev.Kv.Value)
				if err != nil || rev.State != schema.Started {
					continue
				}
				ackAll(rctx, clients, layout, ids, leases, plugins, rev.Revision)
			}
		}
	}()

	rounds := 2
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(cctx, exe, childMemoryArg, "-endpoint", e.ep, "-prefix", prefix,
		"-participants", fmt.Sprint(n), "-rounds", fmt.Sprint(rounds))
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("memory child: %w: %s", err, errb.String())
	}
	if msg := strings.TrimSpace(errb.String()); msg != "" {
		progress("memory child: %s", msg)
	}
	var res MemoryResult
	if err := json.Unmarshal(out.Bytes(), &res); err != nil {
		return nil, fmt.Errorf("memory child: %w: %q", err, out.String())
	}
	res.Agents = agents
	res.Method = memoryMethod
	return &res, nil
}

func ackAll(ctx context.Context, clients []*clientv3.Client, layout schema.Layout, ids []schema.PluginID, leases []clientv3.LeaseID, plugins int, n uint64) {
	b, _ := schema.Encode(schema.Ack{Revision: n, Result: schema.ResultOK, AckedAt: time.Now().UTC()})
	work := make(chan int)
	var wg sync.WaitGroup
	for w := range 64 {
		c := clients[w%len(clients)]
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				id := ids[i]
				for ctx.Err() == nil {
					if _, err := c.Put(ctx, layout.Ack(id.Agent, id.Plugin), string(b), clientv3.WithLease(leases[i/plugins])); err == nil {
						break
					}
				}
			}
		}()
	}
	for i := range ids {
		select {
		case work <- i:
		case <-ctx.Done():
		}
	}
	close(work)
	wg.Wait()
}

// childMemory is the child process of measureMemory: it prints a
// MemoryResult as JSON on stdout.
func childMemory(args []string) int {
	fs := flag.NewFlagSet(childMemoryArg, flag.ContinueOnError)
	ep := fs.String("endpoint", "", "etcd endpoint")
	prefix := fs.String("prefix", "", "key prefix")
	n := fs.Int("participants", 0, "participants expected")
	rounds := fs.Int("rounds", 2, "rounds to lead")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	res, err := childMemoryRun(*ep, *prefix, *n, *rounds)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	json.NewEncoder(os.Stdout).Encode(res)
	return 0
}

type peakHooks struct {
	*roundHooks
	mu   sync.Mutex
	peak uint64
}

func (h *peakHooks) sample() {
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	h.mu.Lock()
	h.peak = max(h.peak, m.HeapAlloc)
	h.mu.Unlock()
}

func (h *peakHooks) RoundStarted(r schema.Round, resumed bool) {
	h.sample()
	h.roundHooks.RoundStarted(r, resumed)
}

func (h *peakHooks) RoundFinished(r schema.Round) {
	h.sample()
	h.roundHooks.RoundFinished(r)
}

func childMemoryRun(ep, prefix string, n, rounds int) (*MemoryResult, error) {
	ctx := context.Background()
	e := &env{ep: ep}
	c, err := e.client()
	if err != nil {
		return nil, err
	}
	defer c.Close()
	if _, err := c.Get(ctx, "/bench/probe"); err != nil { // connected
		return nil, err
	}
	log := logrus.New()
	log.SetOutput(io.Discard)
	log.SetLevel(logrus.WarnLevel)
	layout := schema.MustLayout(prefix)

	heap := func() uint64 {
		runtime.GC()
		runtime.GC()
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return m.HeapAlloc
	}
	before := heap()
	h := &peakHooks{roundHooks: newRoundHooks()}
	co, err := coordinator.New(c, coordinator.Config{ID: "memory", Prefix: prefix, CoalesceWindow: time.Millisecond},
		coordinator.WithLogger(log), coordinator.WithHooks(h))
	if err != nil {
		return nil, err
	}
	defer func() {
		// After the measurement: reported on stderr, which measureMemory
		// passes on, without failing the run.
		if err := co.Close(); err != nil {
			fmt.Fprintf(os.Stderr, "closing the coordinator: %v\n", err)
		}
	}()
	for r := range rounds {
		if r > 0 {
			if err := request(ctx, c, layout, "memory", 0); err != nil {
				return nil, err
			}
		}
		fin, err := waitRound(ctx, h.finished, 3*time.Minute, "RoundFinished")
		if err != nil {
			return nil, err
		}
		if err := checkClean(fin.round, n); err != nil {
			return nil, err
		}
	}
	after := heap()
	res := &MemoryResult{Participants: n, Rounds: rounds, HeapBefore: before, HeapAfter: after,
		PerParticipant: (float64(after) - float64(before)) / float64(n), Goroutines: runtime.NumGoroutine()}
	h.mu.Lock()
	res.PeakHeap = h.peak
	h.mu.Unlock()
	return res, nil
}
