// Package handagent is an agent written by hand over real etcd, for tests of
// the coordinator and of the operator tools: a registry, a watch of the
// revision key, and acks written on the agent's lease according to a
// per-plugin behaviour. It deliberately does not use the agent library
// (root package and watcher), which is tested on its own, so that
// coordinator tests do not depend on it.
package handagent

import (
	"context"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/resyncd/resync/internal/listwatch"
	"github.com/resyncd/resync/internal/testing/etcdtest"
	"github.com/resyncd/resync/registry"
	"github.com/resyncd/resync/schema"
)

// Behaviours of a plugin when it gets Started.
const (
	OK    = "ok"    // ack ok at once (the default)
	Error = "error" // ack with an error
	Hold  = "hold"  // ack ok once Release is called
	Never = "never" // never ack
)

var layout = schema.MustLayout(schema.DefaultPrefix)

// Agent is one hand-written agent. Its methods are safe for concurrent use.
type Agent struct {
	Name    string
	plugins []string
	c       *clientv3.Client
	reg     *registry.Registry
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	release chan struct{}
	once    sync.Once

	mu      sync.Mutex
	behave  map[string]string
	started map[string]map[uint64]int // plugin -> revision -> Started count
	seen    uint64
}

// Start registers plugins (in order) for agent name with its own client of
// endpoints and a 2 s lease, and handles rounds until the test ends.
func Start(t *testing.T, endpoints []string, name string, plugins []string, behave map[string]string) *Agent {
	t.Helper()
	c, err := etcdtest.NewClient(endpoints...)
	if err != nil {
		t.Fatal(err)
	}
	cfg := registry.DefaultConfig(name)
	cfg.TTL = 2 * time.Second
	cfg.OpTimeout = time.Second
	reg, err := registry.New(c, cfg, registry.WithLogger(etcdtest.Logger(t, "error")))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	a := &Agent{Name: name, plugins: plugins, c: c, reg: reg, cancel: cancel, release: make(chan struct{}),
		behave: map[string]string{}, started: map[string]map[uint64]int{}}
	for k, v := range behave {
		a.behave[k] = v
	}
	t.Cleanup(a.stop)
	for _, p := range plugins {
		rctx, rcancel := context.WithTimeout(context.Background(), 10*time.Second)
		_, err := reg.Register(rctx, p)
		rcancel()
		if err != nil {
			t.Fatal(err)
		}
	}
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		listwatch.Run(ctx, c, layout.Revision(), listwatch.Options{}, func(ev listwatch.Event) error {
			var val []byte
			if ev.Reset && len(ev.Kvs) == 1 {
				val = ev.Kvs[0].Value
			}
			for _, e := range ev.Changes {
				if e.Type == clientv3.EventTypePut {
					val = e.Kv.Value
				}
			}
			if val == nil {
				return nil
			}
			rev, err := schema.DecodeRevision(layout.Revision(), val)
			if err == nil && rev.State == schema.Started {
				a.onStarted(ctx, rev)
			}
			return nil
		})
	}()
	return a
}

func (a *Agent) onStarted(ctx context.Context, rev schema.Revision) {
	a.mu.Lock()
	if rev.Revision <= a.seen {
		a.mu.Unlock()
		return
	}
	a.seen = rev.Revision
	a.mu.Unlock()
	var part map[string]bool // nil: all
	if !rev.Scope.IsAll() {
		part = map[string]bool{}
		resp, err := a.c.Get(ctx, layout.RoundAgent(rev.Revision, a.Name))
		if err != nil {
			return
		}
		if len(resp.Kvs) == 1 {
			ra, err := layout.DecodeRoundAgent(string(resp.Kvs[0].Key), resp.Kvs[0].Value)
			if err != nil {
				return
			}
			for _, p := range ra.Plugins {
				part[p] = true
			}
		}
	}
	for _, p := range a.plugins {
		if part != nil && !part[p] {
			continue
		}
		a.mu.Lock()
		if a.started[p] == nil {
			a.started[p] = map[uint64]int{}
		}
		a.started[p][rev.Revision]++
		b := a.behave[p]
		a.mu.Unlock()
		switch b {
		case Never:
		case Hold:
			a.wg.Add(1)
			go func() {
				defer a.wg.Done()
				select {
				case <-a.release:
					a.ack(ctx, p, rev.Revision, schema.ResultOK, "")
				case <-ctx.Done():
				}
			}()
		case Error:
			a.ack(ctx, p, rev.Revision, schema.ResultError, "reload failed: boom")
		default:
			a.ack(ctx, p, rev.Revision, schema.ResultOK, "")
		}
	}
}

func (a *Agent) ack(ctx context.Context, plugin string, n uint64, res schema.Result, errText string) {
	b, _ := schema.Encode(schema.Ack{Revision: n, Result: res, Error: errText, AckedAt: time.Now().UTC()})
	for ctx.Err() == nil {
		wctx, cancel := context.WithTimeout(ctx, time.Second)
		_, err := a.c.Put(wctx, layout.Ack(a.Name, plugin), string(b), clientv3.WithLease(a.reg.State().Lease))
		cancel()
		if err == nil {
			return
		}
	}
}

// Release lets held plugins ack.
func (a *Agent) Release() { a.once.Do(func() { close(a.release) }) }

// SetBehaviour changes a plugin's behaviour for later rounds.
func (a *Agent) SetBehaviour(plugin, b string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.behave[plugin] = b
}

// StartedCount is how many Started the plugin got for revision n.
func (a *Agent) StartedCount(plugin string, n uint64) int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.started[plugin][n]
}

// Crash closes the agent's client without revoking its lease: its keys
// vanish when the lease expires.
func (a *Agent) Crash() {
	a.cancel()
	a.c.Close()
	a.wg.Wait()
	a.reg.Close()
}

func (a *Agent) stop() {
	a.cancel()
	a.wg.Wait()
	a.reg.Close()
	a.c.Close()
}
