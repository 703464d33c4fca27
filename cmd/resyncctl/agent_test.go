package main

import (
	"bytes"
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/resyncd/resync/coordinator"
	"github.com/resyncd/resync/internal/etcdtest"
	"github.com/resyncd/resync/internal/listwatch"
	"github.com/resyncd/resync/registry"
	"github.com/resyncd/resync/schema"
)

var layout = schema.MustLayout(schema.DefaultPrefix)

// handAgent is an agent written by hand over real etcd (the agent library
// is tested in its own package): a registry, a watch of the revision key,
// and acks written on the agent's lease, per plugin behaviour: "ok"
// (default), "error", or "hold" (acks ok once release is closed).
type handAgent struct {
	name    string
	plugins []string
	c       *clientv3.Client
	reg     *registry.Registry
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	release chan struct{}
	behave  map[string]string // read-only after start

	mu   sync.Mutex
	seen uint64
}

func startHandAgent(t *testing.T, endpoint, name string, plugins []string, behave map[string]string) *handAgent {
	t.Helper()
	c, err := etcdtest.NewClient(endpoint)
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
	a := &handAgent{name: name, plugins: plugins, c: c, reg: reg, cancel: cancel, release: make(chan struct{}), behave: behave}
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
		switch a.behave[p] {
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

func (a *handAgent) stop() {
	a.cancel()
	a.wg.Wait()
	a.reg.Close()
	a.c.Close()
}

// startCoordinator runs a real coordinator with short timings.
func startCoordinator(t *testing.T, endpoint, id string) *coordinator.Coordinator {
	t.Helper()
	c, err := etcdtest.NewClient(endpoint)
	if err != nil {
		t.Fatal(err)
	}
	cfg := coordinator.DefaultConfig()
	cfg.ID = id
	cfg.SessionTTL = 2 * time.Second
	cfg.RoundDeadline = 30 * time.Second
	cfg.BackoffMin = 200 * time.Millisecond
	cfg.BackoffMax = time.Second
	cfg.OpTimeout = 2 * time.Second
	co, err := coordinator.New(c, cfg, coordinator.WithLogger(quietLogger(t)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		co.Close()
		c.Close()
	})
	return co
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func quietLogger(t *testing.T) logrus.FieldLogger {
	l := logrus.New()
	l.SetOutput(tWriter{t})
	l.SetLevel(logrus.WarnLevel)
	return l
}

// syncBuffer is a bytes.Buffer safe for a writer and a reader at once.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
