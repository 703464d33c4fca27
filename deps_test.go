package resync_test

import (
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/jonboulle/clockwork"
	"github.com/sirupsen/logrus/hooks/test"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/resyncd/resync"
	"github.com/resyncd/resync/internal/etcdtest"
	"github.com/resyncd/resync/schema"
)

// TestDepsAreFixedAtNew: the seed's Plugin embedded Deps, so p.Log = x
// after New compiled and was silently ignored. A Plugin has no exported
// field: its dependencies are the Deps given to New, and those are used:
// its logs go to Deps.Log, its timestamps come from Deps.Clock.
func TestDepsAreFixedAtNew(t *testing.T) {
	typ := reflect.TypeOf((*resync.Plugin)(nil)).Elem()
	for i := 0; i < typ.NumField(); i++ {
		if f := typ.Field(i); f.IsExported() {
			t.Errorf("Plugin has the exported field %s: an assignment after New would be ignored", f.Name)
		}
	}

	m := etcdtest.Start(t)
	c := m.Client(t)
	log, hook := test.NewNullLogger()
	fc := clockwork.NewFakeClockAt(time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC))
	p, err := resync.New(resync.Deps{Log: log, Client: c, Clock: fc}, resync.DefaultConfig("deps"))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
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
	if !req.RequestedAt.Equal(fc.Now()) {
		t.Errorf("the request is stamped %v, want Deps.Clock's %v", req.RequestedAt, fc.Now())
	}
}
