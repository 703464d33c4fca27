package resync_test

import (
	"testing"
	"time"

	"github.com/resyncd/resync/internal/testing/etcdtest"
)

// TestPluginCloseBoundedWhileBlackholed: Close returns within its
// documented 5 s while etcd is blackholed, closes Done (status channels
// stay open and silent) and returns the revoke's error.
func TestPluginCloseBoundedWhileBlackholed(t *testing.T) {
	m := etcdtest.Start(t)
	proxy := etcdtest.NewProxy(t, m.Endpoint())
	c := etcdtest.Client(t, proxy.Endpoint)
	p := newPlugin(t, c, "a1")
	reg := p.Register("p1")
	obs := m.Client(t)
	etcdtest.WaitFor(t, wait, "the registration", func() bool {
		resp, err := obs.Get(ctxT(t, 5*time.Second), layout.Registration("a1", "p1"))
		return err == nil && len(resp.Kvs) == 1
	})
	proxy.Blackhole()
	defer proxy.Heal()
	errc := make(chan error, 1)
	began := time.Now()
	go func() { errc <- p.Close() }()
	select {
	case err := <-errc:
		t.Logf("Close returned in %v: %v", time.Since(began).Round(time.Millisecond), err)
		if err == nil {
			t.Errorf("Close returned nil although the revoke could not reach etcd")
		}
	case <-time.After(5*time.Second + 3*time.Second):
		t.Fatal("Close did not return within its 5 s bound (+3 s)")
	}
	<-p.Done()
	silent(t, "after Close", reg.StatusChan()) // never closed: consumers may not check ok
}
