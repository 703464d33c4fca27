package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/proxy/grpcproxy"
	"go.uber.org/zap"
	"google.golang.org/grpc"

	"github.com/resyncd/resync/internal/backoff"
)

// The wake-up shapes issue #26 weighed, measured with raw clientv3 and no
// resync code (-only shapes): W watchers, 50 per client, woken once a
// second, while the tenant probe puts every 5 ms:
//
//   - one key: every watcher watches one key and one put wakes them all
//     (the fleet watching `revision`, before wake keys);
//   - shards: 64 keys, watcher i on shard i mod 64, a wake is the shards
//     in Txns of at most 512 watchers, one after another (what the
//     coordinator writes for an all-scope round);
//   - gRPC proxy: one key, the watchers connected to etcd's gRPC proxy
//     (go.etcd.io/etcd/server/v3/proxy/grpcproxy, run in this process),
//     which coalesces identical watches into one etcd watch and fans
//     events out itself; the wake is one put to etcd.
const (
	shapeOneKey = "one key"
	shapeShards = "64 shards"
	shapeProxy  = "gRPC proxy"

	shapeShardCount   = 64
	shapeMaxWake      = 512 // watchers one shard Txn may wake
	shapePerClient    = 50
	shapeWakeInterval = time.Second
	shapeIdle         = 2 * time.Second
	shapePrefix       = "/bench-shapes/"
)

// ShapeRow is one shape at one watcher count.
type ShapeRow struct {
	Shape    string `json:"shape"`
	Watchers int    `json:"watchers"`
	// EtcdWatchers is how many watchers etcd itself held once they were
	// all created (etcd_debugging_mvcc_watcher_total): W, but what the
	// proxy coalesced them to behind it.
	EtcdWatchers int `json:"etcd_watchers"`
	Wakes        int `json:"wakes"`
	// WritesPerWake is the etcd writes of one wake.
	WritesPerWake int `json:"writes_per_wake"`
	// Write: a wake's first write sent to its last answered; Delivered:
	// its first write sent to the last watcher's event.
	Write     Dist `json:"write"`
	Delivered Dist `json:"delivered"`
	// The tenant probe, idle (watchers set, no wake) and for its puts in
	// flight within 100 ms of a wake's first or last write.
	TenantIdle Dist `json:"tenant_idle"`
	TenantNear Dist `json:"tenant_near"`
}

// measureShapes runs every shape at every watcher count.
func measureShapes(ctx context.Context, e *env, counts []int, wakes int) ([]ShapeRow, error) {
	g := etcdGauge("watcher_total", "Total number of watchers.")
	if g == nil {
		return nil, fmt.Errorf("etcd's watcher gauge (etcd_debugging_mvcc_watcher_total) is not registered")
	}
	base := gaugeInt(g) // watchers of anything else
	var rows []ShapeRow
	for _, w := range counts {
		for _, shape := range []string{shapeOneKey, shapeShards, shapeProxy} {
			progress("wake shapes: %s, %d watchers", shape, w)
			// The last shape's watches end with their streams, a
			// little after their clients close.
			if err := waitGauge(ctx, g, base); err != nil {
				return rows, err
			}
			row, err := measureShape(ctx, e, shape, w, wakes, func() int { return gaugeInt(g) - base })
			if err != nil {
				return rows, fmt.Errorf("%s, %d watchers: %w", shape, w, err)
			}
			rows = append(rows, row)
		}
	}
	return rows, nil
}

// shapeKey is watcher i's key in shape.
func shapeKey(shape string, i int) string {
	if shape == shapeShards {
		return fmt.Sprintf("%sshard/%02d", shapePrefix, i%shapeShardCount)
	}
	return shapePrefix + "one"
}

// shardWakes groups the shard keys into Txns of at most shapeMaxWake
// watchers (at least one shard a Txn).
func shardWakes(watchers int) [][]string {
	per := (watchers + shapeShardCount - 1) / shapeShardCount
	k := max(1, shapeMaxWake/max(per, 1))
	var groups [][]string
	for s := 0; s < shapeShardCount; s += k {
		var g []string
		for i := s; i < min(s+k, shapeShardCount); i++ {
			g = append(g, shapeKey(shapeShards, i))
		}
		groups = append(groups, g)
	}
	return groups
}

// waitGauge waits until g is at most n.
func waitGauge(ctx context.Context, g prometheus.Gauge, n int) error {
	deadline := time.Now().Add(30 * time.Second)
	for gaugeInt(g) > n {
		if time.Now().After(deadline) {
			return fmt.Errorf("etcd still holds %d watchers of the last shape after 30 s (want %d)", gaugeInt(g), n)
		}
		if err := backoff.Sleep(ctx, nil, 10*time.Millisecond); err != nil {
			return err
		}
	}
	return nil
}

// measureShape measures one shape; etcdWatchers counts the watchers etcd
// holds for it.
func measureShape(ctx context.Context, e *env, shape string, watchers, wakes int, etcdWatchers func() int) (ShapeRow, error) {
	row := ShapeRow{Shape: shape, Watchers: watchers, Wakes: wakes, WritesPerWake: 1}
	ep := e.ep
	if shape == shapeProxy {
		addr, stop, err := startWatchProxy(ctx, e)
		if err != nil {
			return row, err
		}
		defer stop()
		ep = addr
	}
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	fl, err := startShapeWatchers(wctx, ep, shape, watchers)
	if err != nil {
		return row, err
	}
	defer fl.close()
	row.EtcdWatchers = etcdWatchers()
	pr, err := startProbe(e)
	if err != nil {
		return row, err
	}
	defer pr.Close()
	idleFrom := time.Now()
	if err := backoff.Sleep(ctx, nil, shapeIdle); err != nil {
		return row, err
	}
	row.TenantIdle = tenantDist(pr.between(idleFrom, time.Now()))
	groups := [][]string{{shapeKey(shape, 0)}}
	if shape == shapeShards {
		groups = shardWakes(watchers)
	}
	row.WritesPerWake = len(groups)
	var writes, delivered []time.Duration
	var at []time.Time
	tick := time.NewTicker(shapeWakeInterval)
	defer tick.Stop()
	for k := 1; k <= wakes; k++ {
		select {
		case <-ctx.Done():
			return row, ctx.Err()
		case <-tick.C:
		}
		val := fmt.Sprintf("wake %d", k)
		start := time.Now()
		for _, g := range groups {
			ops := make([]clientv3.Op, len(g))
			for i, key := range g {
				ops[i] = clientv3.OpPut(key, val)
			}
			if _, err := e.kv.Txn(ctx).Then(ops...).Commit(); err != nil {
				return row, err
			}
		}
		end := time.Now()
		if err := fl.waitEvents(ctx, int64(k*watchers)); err != nil {
			return row, fmt.Errorf("wake %d: %w", k, err)
		}
		writes, delivered = append(writes, end.Sub(start)), append(delivered, fl.lastAt().Sub(start))
		at = append(at, start, end)
	}
	row.Write, row.Delivered = dist(writes), dist(delivered)
	row.TenantNear = tenantDist(pr.near(at))
	return row, nil
}

// shapeFleet is the watchers of one shape: events counted, the last one
// timed.
type shapeFleet struct {
	clients []*clientv3.Client
	wg      sync.WaitGroup
	events  atomic.Int64
	last    atomic.Int64 // UnixNano of the latest event
	signal  chan struct{}
}

// startShapeWatchers opens watchers watches on ep, 50 per client, and
// returns once etcd (or the proxy) has created every one.
func startShapeWatchers(ctx context.Context, ep, shape string, watchers int) (*shapeFleet, error) {
	fl := &shapeFleet{signal: make(chan struct{}, 1)}
	var created sync.WaitGroup
	for i := 0; i < watchers; i += shapePerClient {
		c, err := clientv3.New(clientv3.Config{Endpoints: []string{ep}, DialTimeout: 10 * time.Second, Logger: zap.NewNop()})
		if err != nil {
			fl.close()
			return nil, fmt.Errorf("watcher client: %w", err)
		}
		fl.clients = append(fl.clients, c)
		for j := i; j < min(i+shapePerClient, watchers); j++ {
			wch := c.Watch(ctx, shapeKey(shape, j), clientv3.WithCreatedNotify())
			created.Add(1)
			fl.wg.Go(func() { fl.follow(wch, created.Done) })
		}
	}
	done := make(chan struct{})
	go func() { created.Wait(); close(done) }()
	select {
	case <-done:
		return fl, nil
	case <-time.After(time.Minute):
		fl.close()
		return nil, fmt.Errorf("%d watches not all created within a minute", watchers)
	}
}

// follow counts one watch's events; createdDone is called once, at its
// created notice (or its end).
func (fl *shapeFleet) follow(wch clientv3.WatchChan, createdDone func()) {
	once := sync.OnceFunc(createdDone)
	defer once()
	for resp := range wch {
		if resp.Created {
			once()
		}
		if n := len(resp.Events); n > 0 {
			fl.last.Store(time.Now().UnixNano())
			fl.events.Add(int64(n))
			select {
			case fl.signal <- struct{}{}:
			default:
			}
		}
	}
}

// waitEvents waits until the watchers have counted want events in all.
func (fl *shapeFleet) waitEvents(ctx context.Context, want int64) error {
	deadline := time.After(time.Minute)
	for fl.events.Load() < want {
		select {
		case <-fl.signal:
		case <-deadline:
			return fmt.Errorf("%d of %d events within a minute", fl.events.Load(), want)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

func (fl *shapeFleet) lastAt() time.Time { return time.Unix(0, fl.last.Load()) }

// close closes the clients, which ends every watch, and waits for them.
func (fl *shapeFleet) close() {
	for _, c := range fl.clients {
		c.Close()
	}
	fl.wg.Wait()
}

// startWatchProxy serves etcd's watch proxy, on its own client to e, on a
// loopback port: the address, and how to stop it.
func startWatchProxy(ctx context.Context, e *env) (string, func(), error) {
	c, err := e.client()
	if err != nil {
		return "", nil, err
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		c.Close()
		return "", nil, err
	}
	pctx, cancel := context.WithCancel(ctx)
	wp, wpDone := grpcproxy.NewWatchProxy(pctx, zap.NewNop(), c)
	srv := grpc.NewServer()
	pb.RegisterWatchServer(srv, wp)
	served := make(chan struct{})
	go func() {
		defer close(served)
		_ = srv.Serve(lis) // ends with Stop
	}()
	stop := func() {
		srv.Stop()
		<-served
		cancel()
		c.Close()
		<-wpDone
	}
	return lis.Addr().String(), stop, nil
}

// printShapes prints the wake-up shapes' table.
func printShapes(w io.Writer, rows []ShapeRow) {
	fmt.Fprintln(w, "\nWake-up shapes (issue #26's options; raw clientv3, no resync code; watchers 50 per client, one wake a second, the tenant as above;")
	fmt.Fprintln(w, "write: the wake's writes, first sent to last answered; delivered: to the last watcher's event; etcd watchers: those etcd held), ms")
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "shape\twatchers\tetcd watchers\twrites/wake\twrite p50\twrite max\tdelivered p50\tdelivered max\ttenant idle p99\tnear p99\tnear max\tnear max/idle p99\t")
	for _, r := range rows {
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%.2f\t\n", r.Shape, r.Watchers, r.EtcdWatchers, r.WritesPerWake,
			f1(r.Write.P50), f1(r.Write.Max), f1(r.Delivered.P50), f1(r.Delivered.Max),
			f1(r.TenantIdle.P99), f1(r.TenantNear.P99), f1(r.TenantNear.Max), ratio(r.TenantNear.Max, r.TenantIdle.P99))
	}
	tw.Flush()
}
