package coordinator

import (
	"context"
	"fmt"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

	"github.com/resyncd/resync/internal/testing/etcdtest"
	"github.com/resyncd/resync/schema"
)

// fleet is a light hand-written fleet for scale tests: every registration
// of many agents on one lease of one client, and acks written by the test
// (or by autoAck) in Txns, so that 10,000 participants cost a few hundred
// etcd requests, not 1,000 agent processes.
type fleet struct {
	t       *testing.T
	c       *clientv3.Client
	lease   clientv3.LeaseID
	ids     []schema.PluginID
	ctx     context.Context
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	stopped atomic.Bool
	batch   int // ops per Txn (default 64)
}

func fleetNames(n int, prefix string, width int) []string {
	out := make([]string, n)
	for i := range out {
		s := fmt.Sprintf("%s%05d", prefix, i)
		if len(s) < width {
			s = strings.Repeat("x", width-len(s)) + s
		}
		out[i] = s
	}
	return out
}

func startFleet(t *testing.T, c *clientv3.Client, agents, plugins []string) *fleet {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	lease, err := c.Grant(ctxT(t, 5*time.Second), 60)
	if err != nil {
		t.Fatal(err)
	}
	ka, err := c.KeepAlive(ctx, lease.ID)
	if err != nil {
		t.Fatal(err)
	}
	f := &fleet{t: t, c: c, lease: lease.ID, ctx: ctx, cancel: cancel}
	f.wg.Add(1)
	go func() {
		defer f.wg.Done()
		for range ka {
		}
	}()
	t.Cleanup(f.stop)
	now := time.Now().UTC()
	var ops []clientv3.Op
	for _, a := range agents {
		for i, p := range plugins {
			b, err := schema.Encode(schema.Registration{Agent: a, Plugin: p, Order: i, RegisteredAt: now})
			if err != nil {
				t.Fatal(err)
			}
			ops = append(ops, clientv3.OpPut(layout.Registration(a, p), string(b), clientv3.WithLease(lease.ID)))
			f.ids = append(f.ids, schema.PluginID{Agent: a, Plugin: p})
		}
	}
	f.txns(ops)
	return f
}

func (f *fleet) txns(ops []clientv3.Op) {
	f.t.Helper()
	batch := f.batch
	if batch == 0 {
		batch = 64
	}
	for len(ops) > 0 {
		n := min(len(ops), batch)
		if _, err := f.c.Txn(ctxT(f.t, 10*time.Second)).Then(ops[:n]...).Commit(); err != nil {
			f.t.Fatal(err)
		}
		ops = ops[n:]
	}
}

func (f *fleet) stop() {
	if f.stopped.Swap(true) {
		return
	}
	f.cancel()
	f.wg.Wait()
}

// ack writes the acks of ids for round n.
func (f *fleet) ack(n uint64, ids []schema.PluginID, result schema.Result, errText string) {
	f.t.Helper()
	ops := make([]clientv3.Op, 0, len(ids))
	for _, id := range ids {
		b, err := schema.Encode(schema.Ack{Revision: n, Result: result, Error: errText, AckedAt: time.Now().UTC()})
		if err != nil {
			f.t.Fatal(err)
		}
		ops = append(ops, clientv3.OpPut(layout.Ack(id.Agent, id.Plugin), string(b), clientv3.WithLease(f.lease)))
	}
	f.txns(ops)
}

// autoAck acks ok every participant of every round that starts, as an
// agent does: for a set scope it reads its agents' participation records.
// It records who got Started for which round.
func (f *fleet) autoAck(obs *clientv3.Client) *startLog {
	sl := &startLog{started: map[uint64]map[schema.PluginID]bool{}}
	ctx := f.ctx
	f.wg.Add(1)
	go func() {
		defer f.wg.Done()
		var last uint64
		wch := obs.Watch(ctx, layout.Revision())
		for resp := range wch {
			for _, e := range resp.Events {
				rev, err := schema.DecodeRevision(layout.Revision(), e.Kv.Value)
				if err != nil || rev.State != schema.Started || rev.Revision <= last {
					continue
				}
				last = rev.Revision
				var parts []schema.PluginID
				if rev.Scope.IsAll() {
					parts = f.ids
				} else {
					recs, _, err := ReadRoundAgents(ctx, obs, layout, rev.Revision, 0)
					if err != nil {
						return
					}
					for _, r := range recs {
						for _, p := range r.Plugins {
							parts = append(parts, schema.PluginID{Agent: r.Agent, Plugin: p})
						}
					}
				}
				sl.add(rev.Revision, parts)
				var ops []clientv3.Op
				for _, id := range parts {
					b, _ := schema.Encode(schema.Ack{Revision: rev.Revision, Result: schema.ResultOK, AckedAt: time.Now().UTC()})
					ops = append(ops, clientv3.OpPut(layout.Ack(id.Agent, id.Plugin), string(b), clientv3.WithLease(f.lease)))
				}
				for len(ops) > 0 {
					n := min(len(ops), 64)
					if _, err := f.c.Txn(ctx).Then(ops[:n]...).Commit(); err != nil {
						return
					}
					ops = ops[n:]
				}
			}
		}
	}()
	return sl
}

// startLog records which plugins a fleet delivered Started to, per round.
type startLog struct {
	mu      sync.Mutex
	started map[uint64]map[schema.PluginID]bool
}

func (s *startLog) add(n uint64, ids []schema.PluginID) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.started[n] == nil {
		s.started[n] = map[schema.PluginID]bool{}
	}
	for _, id := range ids {
		s.started[n][id] = true
	}
}

func (s *startLog) of(n uint64) map[schema.PluginID]bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[schema.PluginID]bool{}
	for k := range s.started[n] {
		out[k] = true
	}
	return out
}

// meter measures the size of every unary request a client sends (Txn, Put,
// ...), as encoded on the wire.
type meter struct{ max atomic.Int64 }

func (m *meter) intercept(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	if msg, ok := req.(proto.Message); ok {
		for n := int64(proto.Size(msg)); ; {
			cur := m.max.Load()
			if n <= cur || m.max.CompareAndSwap(cur, n) {
				break
			}
		}
	}
	return invoker(ctx, method, req, reply, cc, opts...)
}

// newMeteredCoord is newCoord with a client whose requests m measures, and
// an optional log buffer.
func newMeteredCoord(t *testing.T, endpoints []string, cfg Config, m *meter, logBuf *etcdtest.Buffer) *testCoord {
	t.Helper()
	c, err := etcdtest.NewClientWith(clientv3.Config{Endpoints: endpoints,
		DialOptions: []grpc.DialOption{grpc.WithChainUnaryInterceptor(m.intercept)}})
	if err != nil {
		t.Fatal(err)
	}
	var log logrus.FieldLogger = quietLogger(t).WithField("test_coord", cfg.ID)
	if logBuf != nil {
		l := logrus.New()
		l.SetOutput(logBuf)
		l.SetLevel(logrus.InfoLevel)
		log = l.WithField("test_coord", cfg.ID)
	}
	h := &recHooks{}
	co, err := New(c, cfg, WithLogger(log), WithHooks(h))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		co.Close()
		c.Close()
	})
	return &testCoord{Coordinator: co, c: c, hooks: h}
}

// startSmallEtcd starts a real etcd member that refuses requests larger
// than maxRequest bytes (etcd's --max-request-bytes).
func startSmallEtcd(t *testing.T, maxRequest uint) string {
	t.Helper()
	return startEtcdWith(t, func(cfg *embed.Config) { cfg.MaxRequestBytes = maxRequest })
}

// startEtcdWith starts a real etcd member with the limits set by limit.
func startEtcdWith(t *testing.T, limit func(*embed.Config)) string {
	t.Helper()
	cfg := embed.NewConfig()
	cfg.Dir = t.TempDir()
	cu, _ := url.Parse("http://" + etcdtest.FreeAddr(t))
	pu, _ := url.Parse("http://" + etcdtest.FreeAddr(t))
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{*cu}, []url.URL{*cu}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{*pu}, []url.URL{*pu}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	cfg.TickMs, cfg.ElectionMs = etcdtest.TickMs, etcdtest.ElectionMs
	limit(cfg)
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	select {
	case <-e.Server.ReadyNotify():
	case <-time.After(60 * time.Second):
		t.Fatal("etcd not ready")
	}
	return cu.Host
}
