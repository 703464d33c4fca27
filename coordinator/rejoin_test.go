package coordinator

import (
	"fmt"
	"io"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	clientv3 "go.etcd.io/etcd/client/v3"

	resync "github.com/resyncd/resync"
	"github.com/resyncd/resync/internal/testing/etcdtest"
	"github.com/resyncd/resync/schema"
)

// TestRejoinRoundIncludesEveryReRegisteredPlugin: an agent whose lease
// expired during a partition re-registers its plugins and asks for a
// rejoin round; that round has every one of them as participant.
func TestRejoinRoundIncludesEveryReRegisteredPlugin(t *testing.T) {
	m := etcdtest.Start(t)
	obs := m.Client(t)
	ccfg := testConfig("c0")
	ccfg.CoalesceWindow = time.Nanosecond // a request starts its round at once: no slack for the watches
	newCoord(t, []string{m.Endpoint()}, ccfg)
	waitFinished(t, obs, 1, 10*time.Second)

	proxy := etcdtest.NewProxy(t, m.Endpoint())
	log := logrus.New()
	log.SetOutput(io.Discard)
	cfg := resync.DefaultConfig("rj")
	cfg.TTL = 2 * time.Second
	p, err := resync.New(resync.Deps{Client: etcdtest.Client(t, proxy.Endpoint), Log: log}, cfg)
	if err != nil {
		t.Fatal(err)
	}
	const plugins = 40
	done := make(chan struct{})
	var regs []resync.Registration
	for i := range plugins {
		regs = append(regs, p.Register(fmt.Sprintf("p%02d", i)))
	}
	for _, r := range regs {
		go func() {
			defer func() { done <- struct{}{} }()
			for {
				select {
				case ev := <-r.StatusChan():
					ev.Ack()
				case <-p.Done(): // status channels are never closed
					return
				}
			}
		}()
	}
	defer func() {
		p.Close()
		for range regs {
			<-done
		}
	}()
	countRegs := func() int64 { return countPrefix(t, obs, layout.AgentRegistrations("rj")) }
	etcdtest.WaitFor(t, 20*time.Second, "the registrations", func() bool { return countRegs() == plugins })
	proxy.Blackhole()
	etcdtest.WaitFor(t, 20*time.Second, "the lease to expire", func() bool { return countRegs() == 0 })
	proxy.HealReset()
	var rejoin RoundView
	etcdtest.WaitFor(t, 60*time.Second, "a finished rejoin round", func() bool {
		for n := uint64(2); ; n++ {
			r, ok := readRound(t, obs, n)
			if !ok {
				return false
			}
			if r.Cause == schema.CauseRejoin && r.State == schema.NotActive {
				rejoin = r
				return true
			}
		}
	})
	if len(rejoin.Participants) != plugins || rejoin.Counts.Acked != plugins {
		t.Fatalf("rejoin round %d: %d participants, %+v; want all %d re-registered plugins acked", rejoin.Revision, len(rejoin.Participants), rejoin.Counts, plugins)
	}
}

func countPrefix(t *testing.T, c *clientv3.Client, prefix string) int64 {
	t.Helper()
	resp, err := c.Get(ctxT(t, 5*time.Second), prefix, clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		t.Fatal(err)
	}
	return resp.Count
}
