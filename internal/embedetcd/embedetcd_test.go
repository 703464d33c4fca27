package embedetcd

import (
	"context"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/goleak"
	"go.uber.org/zap"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// With Front, Close does not wait for clients' open streams: a client with
// a live watch and lease keepalive is cut, and the member stops at once
// (without Front, etcd waits up to its request timeout, 7 s by default).
func TestFrontCloseCutsOpenStreams(t *testing.T) {
	dir := t.TempDir()
	s, err := Start(context.Background(), Config{Dir: dir, ClientURL: "http://127.0.0.1:0", Front: true})
	if err != nil {
		t.Fatal(err)
	}
	c, err := clientv3.New(clientv3.Config{Endpoints: []string{s.Endpoint()}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	wch := c.Watch(ctx, "k")
	if _, err := c.Put(ctx, "k", "v"); err != nil {
		t.Fatal(err)
	}
	<-wch
	lease, err := c.Grant(ctx, 5)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.KeepAlive(ctx, lease.ID); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		s.Close()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Close waited for the client's streams")
	}
	// The data dir is reusable.
	s2, err := Start(context.Background(), Config{Dir: dir, ClientURL: "http://127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	c2, err := clientv3.New(clientv3.Config{Endpoints: []string{s2.Endpoint()}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	resp, err := c2.Get(ctx, "k")
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("data after restart: %v %v", resp, err)
	}
}

func TestStartRejectsBadConfig(t *testing.T) {
	for _, tc := range []struct {
		cfg  Config
		want string
	}{
		{Config{ClientURL: "http://127.0.0.1:0"}, "data dir is required"},
		{Config{Dir: t.TempDir(), ClientURL: "127.0.0.1"}, "is not a URL"},
	} {
		if _, err := Start(context.Background(), tc.cfg); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Start(%+v) = %v, want %q", tc.cfg, err, tc.want)
		}
	}
}
