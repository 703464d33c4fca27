package coordinator

import (
	"context"
	"fmt"
	"io"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/resyncd/resync/internal/listwatch"
	"github.com/resyncd/resync/schema"
)

// BenchmarkAckResolution is the leader's side of every ack: a watch
// response of acks (batches of 100, as etcd coalesces them) is decoded and
// each ack resolves its participant, until the round is complete. One op is
// one whole round of n participants; no etcd is involved.
func BenchmarkAckResolution(b *testing.B) {
	for _, n := range []int{100, 10000} {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			log := logrus.New()
			log.SetOutput(io.Discard)
			co := &Coordinator{hooks: NopHooks{}, log: log}
			parts := make([]schema.PluginID, n)
			for i := range parts {
				parts[i] = schema.PluginID{Agent: fmt.Sprintf("agent-%05d", i/10), Plugin: fmt.Sprintf("plugin-%03d", i%10)}
			}
			const rev = 7
			val, err := schema.Encode(schema.Ack{Revision: rev, Result: schema.ResultOK, AckedAt: time.Now().UTC()})
			if err != nil {
				b.Fatal(err)
			}
			var events []listwatch.Event
			for i := 0; i < n; i += 100 {
				var ev listwatch.Event
				for _, p := range parts[i:min(i+100, n)] {
					ev.Changes = append(ev.Changes, &clientv3.Event{Type: clientv3.EventTypePut,
						Kv: &mvccpb.KeyValue{Key: []byte(layout.Ack(p.Agent, p.Plugin)), Value: val}})
				}
				events = append(events, ev)
			}
			b.ReportAllocs()
			for b.Loop() {
				// swept: past its first step, as a running leader is, every
				// ack is also checked as a possible failed join (joinfail.go).
				l := &leader{co: co, layout: layout, log: log, ctx: context.Background(),
					acks: make(map[schema.PluginID]schema.Ack, n), regs: map[schema.PluginID]schema.Registration{},
					swept: true, failedAcks: map[schema.PluginID]schema.Ack{}, handled: map[schema.PluginID]uint64{}}
				l.round = newRoundState(schema.Round{Revision: rev}, parts)
				for _, ev := range events {
					l.onState(l.decodeState(ev))
				}
				if l.round.counts.Pending != 0 || l.round.counts.Acked != n {
					b.Fatalf("counts %+v", l.round.counts)
				}
			}
		})
	}
}
