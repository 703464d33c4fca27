package etcdtest

import (
	"context"
	"errors"
	"net"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m, LeakOptions()...) }

func TestSingleMemberServes(t *testing.T) {
	m := Start(t)
	c := m.Client(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := c.Put(ctx, "k", "v"); err != nil {
		t.Fatal(err)
	}
	resp, err := c.Get(ctx, "k")
	if err != nil || len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != "v" {
		t.Fatalf("get: %v %v", resp, err)
	}
}

func TestClusterSurvivesLeaderRestart(t *testing.T) {
	cl := StartCluster(t, 3)
	c := Client(t, cl.Endpoints()...)
	WaitFor(t, 10*time.Second, "a raft leader", func() bool { return cl.Leader() != nil })
	old := cl.Leader()
	old.Stop()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := c.Put(ctx, "k", "after-stop"); err != nil {
		t.Fatalf("put with the leader stopped: %v", err)
	}
	old.Restart()
	oc := old.Client(t)
	WaitFor(t, 10*time.Second, "the restarted member to catch up", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		r, err := oc.Get(ctx, "k")
		return err == nil && len(r.Kvs) == 1 && string(r.Kvs[0].Value) == "after-stop"
	})
}

func TestProxyBlackholeCutsTheClient(t *testing.T) {
	m := Start(t)
	p := NewProxy(t, m.Endpoint())
	c := Client(t, p.Endpoint)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := c.Put(ctx, "k", "v"); err != nil {
		t.Fatal(err)
	}
	p.Blackhole()
	short, cancel2 := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel2()
	if _, err := c.Put(short, "k", "v2"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("put through a blackholed proxy: %v, want deadline exceeded", err)
	}
	p.Heal()
	WaitFor(t, 10*time.Second, "the healed proxy to carry a put", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_, err := c.Put(ctx, "k", "v3")
		return err == nil
	})
}

// A single member whose port another process took between FreeAddr and
// etcd's bind starts on other ports (two make test runs side by side lost
// a test to "address already in use").
func TestStartFreshMovesOffATakenPort(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	m := &Member{t: t, Name: "m0", ClientURL: "http://" + taken.Addr().String(), PeerURL: "http://" + FreeAddr(t), dir: t.TempDir()}
	m.cluster = m.Name + "=" + m.PeerURL
	if err := m.startFresh("http://"); err != nil {
		t.Fatalf("start with the client port taken: %v", err)
	}
	t.Cleanup(m.Stop)
	if m.Endpoint() == taken.Addr().String() {
		t.Fatalf("the member claims the taken address %s", m.Endpoint())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := m.Client(t).Put(ctx, "k", "v"); err != nil {
		t.Fatalf("put to the moved member: %v", err)
	}
}
