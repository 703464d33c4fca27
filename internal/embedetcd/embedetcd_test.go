package embedetcd

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
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

// NewConfig turns a Config into etcd's, validated as etcd validates it,
// without listening or creating the data dir.
func TestNewConfig(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "never-created")
	cfg, err := NewConfig(Config{Name: "m1", Dir: dir, ClientURL: "https://127.0.0.1:2379", TickMs: 10, ElectionMs: 50,
		QuotaBackendBytes: 1 << 20, AutoCompactionMode: "revision", AutoCompactionRetention: "10", BcryptCost: 4,
		TLS: TLS{CertFile: "c.pem", KeyFile: "k.pem", TrustedCAFile: "ca.pem", ClientCertAuth: true}})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Name != "m1" || cfg.Dir != dir || cfg.TickMs != 10 || cfg.ElectionMs != 50 || cfg.QuotaBackendBytes != 1<<20 ||
		cfg.AutoCompactionMode != "revision" || cfg.AutoCompactionRetention != "10" || cfg.InitialClusterToken != "resync" || cfg.BcryptCost != 4 {
		t.Errorf("fields not carried over: %+v", cfg)
	}
	if got := cfg.ListenClientUrls[0].String(); got != "https://127.0.0.1:2379" || cfg.AdvertiseClientUrls[0].String() != got {
		t.Errorf("client URLs %v %v", cfg.ListenClientUrls, cfg.AdvertiseClientUrls)
	}
	if got := cfg.ListenPeerUrls[0].String(); got != "http://127.0.0.1:0" {
		t.Errorf("default peer URL %s", got)
	}
	if cfg.InitialCluster != "m1=http://127.0.0.1:0" || cfg.ClusterState != embed.ClusterStateFlagNew {
		t.Errorf("bootstrap: %q %q", cfg.InitialCluster, cfg.ClusterState)
	}
	if ti := cfg.ClientTLSInfo; ti.CertFile != "c.pem" || ti.KeyFile != "k.pem" || ti.TrustedCAFile != "ca.pem" || !ti.ClientCertAuth {
		t.Errorf("TLS %+v", ti)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("NewConfig touched the data dir: %v", err)
	}

	// Front: etcd listens privately, on the scheme of ClientURL.
	cfg, err = NewConfig(Config{Dir: dir, ClientURL: "http://0.0.0.0:2379", Front: true, Existing: true, InitialCluster: "default=http://127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.ListenClientUrls[0].String() != "http://127.0.0.1:0" || cfg.AdvertiseClientUrls[0].String() != "http://0.0.0.0:2379" ||
		cfg.ClusterState != embed.ClusterStateFlagExisting {
		t.Errorf("front: listen %v advertise %v state %q", cfg.ListenClientUrls, cfg.AdvertiseClientUrls, cfg.ClusterState)
	}

	for _, tc := range []struct {
		cfg  Config
		want string
	}{
		{Config{ClientURL: "http://127.0.0.1:0"}, "data dir is required"},
		{Config{Dir: dir, ClientURL: "127.0.0.1"}, "is not a URL"},
		{Config{Dir: dir, ClientURL: "http://127.0.0.1:0", PeerURL: "::"}, "peer URL"},
		{Config{Dir: dir, ClientURL: "http://127.0.0.1:0", TickMs: 100, ElectionMs: 200}, "election-timeout"},       // etcd's own check
		{Config{Dir: dir, ClientURL: "http://example.com:0"}, "embedetcd: default: expected IP in URL for binding"}, // etcd binds IPs only
	} {
		if _, err := NewConfig(tc.cfg); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("NewConfig(%+v) = %v, want %q", tc.cfg, err, tc.want)
		}
	}
}

// waitReady returns once the member is ready, and otherwise an error
// naming the member: when it fails, when ctx ends, when the timeout passes.
func TestWaitReady(t *testing.T) {
	ready := make(chan struct{})
	close(ready)
	if err := waitReady(context.Background(), "m", ready, nil, time.Minute); err != nil {
		t.Fatalf("ready member: %v", err)
	}
	boom := errors.New("boom")
	errc := make(chan error, 1)
	errc <- boom
	if err := waitReady(context.Background(), "m", nil, errc, time.Minute); !errors.Is(err, boom) || !strings.Contains(err.Error(), "embedetcd: m failed while starting") {
		t.Errorf("failed member: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := waitReady(ctx, "m", nil, nil, time.Minute); !errors.Is(err, context.Canceled) || !strings.Contains(err.Error(), "embedetcd: m:") {
		t.Errorf("ended ctx: %v", err)
	}
	start := time.Now()
	err := waitReady(context.Background(), "m", nil, nil, 50*time.Millisecond)
	if err == nil || err.Error() != "embedetcd: m not ready after 50ms (is a quorum of its cluster up?)" {
		t.Errorf("never ready: %v", err)
	}
	if d := time.Since(start); d < 50*time.Millisecond {
		t.Errorf("gave up after %v, before its 50ms timeout", d)
	}
}
