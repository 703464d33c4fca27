package registry

import (
	"testing"
	"time"

	"github.com/resyncd/resync/internal/testing/etcdtest"
)

// TestCloseBoundedWhileBlackholed: Close returns within OpTimeout (plus
// slack for a loaded machine) while etcd is blackholed, with the revoke's
// error; also when the session was never created.
func TestCloseBoundedWhileBlackholed(t *testing.T) {
	for _, when := range []string{"connected", "never connected"} {
		t.Run(when, func(t *testing.T) {
			m := etcdtest.Start(t)
			proxy := etcdtest.NewProxy(t, m.Endpoint())
			c := etcdtest.Client(t, proxy.Endpoint)
			if when == "never connected" {
				proxy.Blackhole()
				defer proxy.Heal()
			}
			r := newRegistry(t, c, "a1", 30*time.Second)
			if _, err := r.Add("p1"); err != nil {
				t.Fatal(err)
			}
			if when == "connected" {
				etcdtest.WaitFor(t, 10*time.Second, "registration written", func() bool { return r.State().Connected })
				proxy.Blackhole()
				defer proxy.Heal()
			}
			errc := make(chan error, 1)
			began := time.Now()
			go func() { errc <- r.Close() }()
			select {
			case err := <-errc:
				t.Logf("Close returned in %v: %v", time.Since(began).Round(time.Millisecond), err)
				if when == "connected" && err == nil {
					t.Errorf("Close returned nil although the revoke could not reach etcd")
				}
			case <-time.After(r.cfg.OpTimeout + 3*time.Second):
				t.Fatalf("Close did not return within OpTimeout %v (+3 s)", r.cfg.OpTimeout)
			}
		})
	}
}
