package watcher

import (
	"context"
	"fmt"
	"io"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/resyncd/resync/internal/testing/etcdtest"
	"github.com/resyncd/resync/registry"
	"github.com/resyncd/resync/schema"
)

// BenchmarkEventDelivery is one agent's path of a round on a real embedded
// etcd (the test harness's member: fsync on, short raft ticks): one op
// writes the revision record {N, Started} and waits until every plugin's
// ack for N is in etcd (seen on a watch of the agent's acks), so it covers
// the revision watch, the in-order dispatch to the plugins, their Acks and
// the outbox's writes. window=off writes at once (AckBatchWindow < 0),
// window=default waits DefaultConfig's AckBatchWindow; txns/round is the
// number of etcd revisions (Txns) that carried the agent's acks of a round.
func BenchmarkEventDelivery(b *testing.B) {
	for _, plugins := range []int{1, 10} {
		for _, window := range []struct {
			name string
			d    time.Duration
		}{{"off", -1}, {"default", 0}} {
			b.Run(fmt.Sprintf("plugins=%d/window=%s", plugins, window.name), func(b *testing.B) {
				benchDelivery(b, plugins, window.d)
			})
		}
	}
}

func benchDelivery(b *testing.B, plugins int, window time.Duration) {
	m := etcdtest.Start(b)
	c := etcdtest.Client(b, m.Endpoint())
	log := logrus.New()
	log.SetOutput(io.Discard)
	reg, err := registry.New(c, registry.DefaultConfig("agent-1"), registry.WithLogger(log))
	if err != nil {
		b.Fatal(err)
	}
	cfg := DefaultConfig()
	cfg.AckBatchWindow = window
	w, err := New(reg, cfg, WithLogger(log))
	if err != nil {
		b.Fatal(err)
	}
	defer func() { w.Close(); reg.Close() }()
	for k := range plugins {
		ch, err := w.Register(fmt.Sprintf("plugin-%03d", k))
		if err != nil {
			b.Fatal(err)
		}
		go func() {
			for {
				select {
				case ev := <-ch:
					ev.Ack()
				case <-w.Done():
					return
				}
			}
		}()
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	wch := c.Watch(ctx, layout.AgentAcks("agent-1"), clientv3.WithPrefix(), clientv3.WithCreatedNotify())
	<-wch
	var n uint64
	txns := 0
	round := func() {
		n++
		now := time.Now().UTC()
		v, err := schema.Encode(schema.Revision{Revision: n, State: schema.Started, Reason: "bench", Cause: schema.CauseManual,
			StartedAt: now, Deadline: now.Add(time.Minute), Leader: "bench"})
		if err != nil {
			b.Fatal(err)
		}
		if _, err := c.Put(ctx, layout.Revision(), string(v)); err != nil {
			b.Fatal(err)
		}
		seen := 0
		revs := map[int64]bool{}
		for seen < plugins {
			resp, ok := <-wch
			if !ok {
				b.Fatal("ack watch closed")
			}
			for _, e := range resp.Events {
				if a, err := schema.DecodeAck(string(e.Kv.Key), e.Kv.Value); err == nil && a.Revision == n {
					seen++
					revs[e.Kv.ModRevision] = true
				}
			}
		}
		txns += len(revs)
	}
	round() // the join resync of every plugin
	txns = 0
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		round()
	}
	b.ReportMetric(float64(txns)/float64(b.N), "txns/round")
}
