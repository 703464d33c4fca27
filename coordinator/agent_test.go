package coordinator

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/resyncd/resync/internal/etcdtest"
	"github.com/resyncd/resync/internal/listwatch"
	"github.com/resyncd/resync/registry"
	"github.com/resyncd/resync/schema"
)

// handAgent is an agent written by hand over real etcd (the agent-side
// library is tested in its own package): a registry, a watch of the
// revision key, and acks written on the agent's lease, per plugin behaviour.
type handAgent struct {
	t       *testing.T
	name    string
	plugins []string
	c       *clientv3.Client
	reg     *registry.Registry
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	release chan struct{} // closed: held plugins ack

	mu      sync.Mutex
	behave  map[string]string         // plugin -> ok | error | hold | never
	started map[string]map[uint64]int // plugin -> revision -> Started count
	seen    uint64                    // last revision handled
}

func startHandAgent(t *testing.T, endpoints []string, name string, plugins []string, behave map[string]string) *handAgent {
	t.Helper()
	c, err := etcdtest.NewClient(endpoints...)
	if err != nil {
		t.Fatal(err)
	}
	cfg := registry.DefaultConfig(name)
	cfg.TTL = 2 * time.Second
	cfg.OpTimeout = time.Second
	reg, err := registry.New(c, cfg, registry.WithLogger(quietLogger(t)))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	a := &handAgent{t: t, name: name, plugins: plugins, c: c, reg: reg, cancel: cancel, release: make(chan struct{}),
		behave: map[string]string{}, started: map[string]map[uint64]int{}}
	for k, v := range behave {
		a.behave[k] = v
	}
	for _, p := range plugins {
		if _, err := reg.Register(ctxT(t, 10*time.Second), p); err != nil {
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
			if err != nil || rev.State != schema.Started {
				return nil
			}
			a.onStarted(ctx, rev)
			return nil
		})
	}()
	t.Cleanup(a.stop)
	return a
}

func (a *handAgent) onStarted(ctx context.Context, rev schema.Revision) {
	a.mu.Lock()
	if rev.Revision <= a.seen {
		a.mu.Unlock()
		return
	}
	a.seen = rev.Revision
	a.mu.Unlock()
	for _, p := range a.plugins {
		if !rev.Scope.Includes(a.name, p) {
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
		case "never":
		case "hold":
			a.wg.Add(1)
			go func() {
				defer a.wg.Done()
				select {
				case <-a.release:
					a.ack(ctx, p, rev.Revision, schema.ResultOK, "")
				case <-ctx.Done():
				}
			}()
		case "error":
			a.ack(ctx, p, rev.Revision, schema.ResultError, "reload failed: boom")
		default:
			a.ack(ctx, p, rev.Revision, schema.ResultOK, "")
		}
	}
}

func (a *handAgent) ack(ctx context.Context, plugin string, n uint64, res schema.Result, errText string) {
	b, _ := schema.Encode(schema.Ack{Revision: n, Result: res, Error: errText, AckedAt: time.Now().UTC()})
	for ctx.Err() == nil {
		wctx, cancel := context.WithTimeout(ctx, time.Second)
		_, err := a.c.Put(wctx, layout.Ack(a.name, plugin), string(b), clientv3.WithLease(a.reg.State().Lease))
		cancel()
		if err == nil {
			return
		}
	}
}

func (a *handAgent) setBehaviour(plugin, b string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.behave[plugin] = b
}

// startedCount is how many Started the plugin got for revision n.
func (a *handAgent) startedCount(plugin string, n uint64) int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.started[plugin][n]
}

// crash closes the agent's client without revoking its lease.
func (a *handAgent) crash() {
	a.cancel()
	a.c.Close()
	a.wg.Wait()
	a.reg.Close()
}

func (a *handAgent) stop() {
	a.cancel()
	a.wg.Wait()
	a.reg.Close()
	a.c.Close()
}

var layout = schema.MustLayout(schema.DefaultPrefix)

func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func testLogger(t *testing.T) logrus.FieldLogger {
	l := logrus.New()
	l.SetOutput(tWriter{t})
	l.SetLevel(logrus.InfoLevel)
	return l
}

func quietLogger(t *testing.T) logrus.FieldLogger {
	l := logrus.New()
	l.SetOutput(tWriter{t})
	l.SetLevel(logrus.ErrorLevel)
	return l
}

func clientv3WithPrefix() clientv3.OpOption { return clientv3.WithPrefix() }
