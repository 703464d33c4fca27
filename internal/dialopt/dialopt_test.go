package dialopt_test

import (
	"context"
	"testing"
	"time"

	"github.com/resyncd/resync/internal/dialopt"
	"github.com/resyncd/resync/internal/testing/etcdtest"
)

// A client whose connection died in a partition (its keepalive tore it
// down, and a connection attempt begun in the partition hangs) is back on
// etcd within Reconnect's bounds after the partition heals. With gRPC's
// defaults the hanging attempt alone holds it for 20 s.
func TestClientIsBackSoonAfterAPartitionHeals(t *testing.T) {
	m := etcdtest.Start(t)
	px := etcdtest.NewProxy(t, m.Endpoint())
	c, err := etcdtest.NewClient(px.Endpoint) // keepalive 1 s, Reconnect
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	get := func(d time.Duration) error {
		ctx, cancel := context.WithTimeout(context.Background(), d)
		defer cancel()
		_, err := c.Get(ctx, "k")
		return err
	}
	if err := get(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	px.Blackhole()
	// Partitioned past the keepalive's teardown (gRPC pings no more often
	// than every 10 s, and waits 1 s more): gRPC dials again into the
	// partition, and that attempt hangs.
	if err := get(13 * time.Second); err == nil {
		t.Fatal("a Get went through the blackhole")
	}
	px.Heal()
	bound := dialopt.ReconnectTimeout + dialopt.ReconnectMaxDelay + 2*time.Second
	etcdtest.WaitFor(t, bound, "the client back on etcd after the heal", func() bool { return get(time.Second) == nil })
}
