package resync_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/jonboulle/clockwork"
	"github.com/sirupsen/logrus/hooks/test"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/resyncd/resync"
	"github.com/resyncd/resync/internal/testing/etcdtest"
	"github.com/resyncd/resync/schema"
)

// TestDepsAreReadAtInit: as the seed's, a Plugin embeds Deps, so a cn-infra
// flavor injects them by field before Init (a Plugin held by value, no
// constructor). Init reads them once and uses them: its logs go to that Log,
// its timestamps come from that Clock. This reverses the earlier rule that
// a Plugin has no exported field (so that p.Log = x after New could not be
// silently ignored): real flavors set the fields, so the zero value must
// work; an assignment after Init is documented as ignored, and this test
// checks that it is (no log reaches a logger set after Init).
func TestDepsAreReadAtInit(t *testing.T) {
	m := etcdtest.Start(t)
	c := m.Client(t)
	log, hook := test.NewNullLogger()
	fc := clockwork.NewFakeClockAt(time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC))
	var p resync.Plugin
	p.Log = log // the embedded Deps, as cn-infra flavors set them
	p.Deps.Client = c
	p.Clock = fc
	p.Config = resync.DefaultConfig("deps")
	if err := p.Init(); err != nil {
		t.Fatal(err)
	}
	if err := p.AfterInit(); err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	late, lateHook := test.NewNullLogger()
	p.Log = late // after Init: ignored
	p.ReportError("p1", errors.New("boom"))

	etcdtest.WaitFor(t, wait, "the report logged on Deps.Log", func() bool {
		for _, e := range hook.AllEntries() {
			if strings.Contains(e.Message, "error reported") && e.Data["agent"] == "deps" {
				return true
			}
		}
		return false
	})
	var req schema.Request
	etcdtest.WaitFor(t, wait, "the request written", func() bool {
		resp, err := c.Get(ctxT(t, 5*time.Second), layout.AgentRequests("deps"), clientv3.WithPrefix())
		if err != nil || len(resp.Kvs) != 1 {
			return false
		}
		req, err = schema.DecodeRequest(string(resp.Kvs[0].Key), resp.Kvs[0].Value)
		return err == nil
	})
	if n := len(lateHook.AllEntries()); n != 0 {
		t.Errorf("%d lines logged on a logger set after Init", n)
	}
	if !req.RequestedAt.Equal(fc.Now()) {
		t.Errorf("the request is stamped %v, want Deps.Clock's %v", req.RequestedAt, fc.Now())
	}
}
