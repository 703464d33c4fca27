package main

import (
	"context"
	"fmt"
	"os"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"

	"github.com/resyncd/resync/internal/embedetcd"
	"github.com/resyncd/resync/internal/etcdspace"
)

// env is the embedded etcd member of the run: production settings (default
// raft ticks, fsync on: embed has no switch to turn it off and none is
// used), its data dir removed on Close.
type env struct {
	dir  string
	etcd *embedetcd.Server
	ep   string
	kv   *clientv3.Client // the driver's own client (requests, counts)
}

func startEnv(ctx context.Context, parent string) (*env, error) {
	dir, err := os.MkdirTemp(parent, "resync-bench-")
	if err != nil {
		return nil, err
	}
	e, err := embedetcd.Start(ctx, embedetcd.Config{Name: "bench", Dir: dir, ClientURL: "http://127.0.0.1:0",
		// resyncd's defaults for its embedded etcd.
		AutoCompactionMode: etcdspace.DefaultAutoCompactionMode, AutoCompactionRetention: etcdspace.DefaultAutoCompactionRetention,
		QuotaBackendBytes: etcdspace.DefaultQuotaBackendBytes})
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	en := &env{dir: dir, etcd: e, ep: e.Endpoint()}
	if en.kv, err = en.client(); err != nil {
		en.Close()
		return nil, err
	}
	return en, nil
}

func (e *env) client() (*clientv3.Client, error) { return e.clientWith() }

// clientWith is client with extra gRPC dial options (the fleet's
// interceptors, wakeio.go).
func (e *env) clientWith(opts ...grpc.DialOption) (*clientv3.Client, error) {
	c, err := clientv3.New(clientv3.Config{
		DialOptions: opts,
		Endpoints:   []string{e.ep},
		DialTimeout: 10 * time.Second,
		Logger:      zap.NewNop(),
		// The default 2 MiB would refuse a round record of a few
		// ten thousand participants on read; etcd itself bounds requests.
		MaxCallRecvMsgSize: 64 << 20,
	})
	if err != nil {
		return nil, fmt.Errorf("etcd client: %w", err)
	}
	return c, nil
}

func (e *env) clients(n int, opts ...grpc.DialOption) ([]*clientv3.Client, error) {
	out := make([]*clientv3.Client, 0, n)
	for range n {
		c, err := e.clientWith(opts...)
		if err != nil {
			closeClients(out)
			return nil, err
		}
		out = append(out, c)
	}
	return out, nil
}

func closeClients(cs []*clientv3.Client) {
	for _, c := range cs {
		c.Close()
	}
}

// count is the number of keys under prefix.
func (e *env) count(ctx context.Context, prefix string) (int64, error) {
	resp, err := e.kv.Get(ctx, prefix, clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		return 0, err
	}
	return resp.Count, nil
}

// wipe deletes everything under prefix, so that one experiment's keys do
// not weigh on the next.
func (e *env) wipe(ctx context.Context, prefix string) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	e.kv.Delete(ctx, prefix, clientv3.WithPrefix())
}

func (e *env) Close() {
	if e.kv != nil {
		e.kv.Close()
	}
	e.etcd.Close()
	os.RemoveAll(e.dir)
}

// waitFor polls cond every 20 ms until it holds, ctx ends or d passes.
func waitFor(ctx context.Context, d time.Duration, what string, cond func() (bool, error)) error {
	deadline := time.Now().Add(d)
	for {
		ok, err := cond()
		if ok {
			return nil
		}
		if time.Now().After(deadline) {
			if err != nil {
				return fmt.Errorf("timed out after %v waiting for %s: %w", d, what, err)
			}
			return fmt.Errorf("timed out after %v waiting for %s", d, what)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}
