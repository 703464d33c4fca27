package resync_test

import (
	"context"
	"fmt"
	"io"
	"net/url"
	"os"
	"time"

	"github.com/sirupsen/logrus"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"

	"github.com/resyncd/resync"
	"github.com/resyncd/resync/internal/testing/etcdtest"
	"github.com/resyncd/resync/schema"
)

// IfPlugin is a plugin written against cn-infra's resync API. Porting it
// changed only the import path: it registers in Init, starts reading in
// AfterInit, reloads its state on Started and acks every event.
type IfPlugin struct {
	Resync resync.Subscriber // injected

	reg  resync.Registration
	stop chan struct{}
	done chan struct{}
}

// Init registers for resync events, as in the seed.
func (p *IfPlugin) Init() error {
	p.reg = p.Resync.Register("ifplugin")
	return nil
}

// AfterInit starts reading the status channel, as in the seed.
func (p *IfPlugin) AfterInit() error {
	p.stop, p.done = make(chan struct{}), make(chan struct{})
	go p.watchResync(p.reg.StatusChan())
	return nil
}

// Close stops the reader and waits for it. The resync plugin never closes
// the status channel (nor did the seed's).
func (p *IfPlugin) Close() error {
	close(p.stop)
	<-p.done
	return nil
}

func (p *IfPlugin) String() string { return "ifplugin" }

// watchResync is typed as seed consumers are: chan, not <-chan.
func (p *IfPlugin) watchResync(ch chan resync.StatusEvent) {
	defer close(p.done)
	for {
		select {
		case ev := <-ch:
			switch ev.ResyncStatus() {
			case resync.Started:
				fmt.Println("ifplugin: resync started: reloading interfaces")
			case resync.NotActive:
				fmt.Println("ifplugin: resync finished")
			}
			ev.Ack()
		case <-p.stop:
			fmt.Println("ifplugin: closed")
			return
		}
	}
}

// The agent side of resync with a seed-style plugin, driven as a cn-infra
// agent drives its plugins: every Init in order, then every AfterInit, and
// Close in reverse order. resync.NewPlugin delivers nothing before its
// AfterInit; a program without such a lifecycle uses resync.New, which
// delivers at once. The example starts an embedded etcd and plays the
// coordinator itself by writing the resync revision; in a cluster,
// cmd/resyncd does that.
func Example() {
	etcd, client, err := startEtcd()
	if err != nil {
		fmt.Println(err)
		return
	}
	defer stopEtcd(etcd, client)

	// The only lines that differ from a cn-infra agent: build the plugin.
	log := logrus.New()
	log.SetOutput(io.Discard)
	rs, err := resync.NewPlugin(resync.Deps{Log: log, Client: client}, resync.DefaultConfig("agent-1"))
	if err != nil {
		fmt.Println(err)
		return
	}
	ifp := &IfPlugin{Resync: rs}
	plugins := []interface {
		Init() error
		AfterInit() error
		Close() error
		String() string
	}{rs, ifp}
	for _, p := range plugins {
		if err := p.Init(); err != nil {
			fmt.Println(p, err)
			return
		}
	}
	for _, p := range plugins {
		if err := p.AfterInit(); err != nil {
			fmt.Println(p, err)
			return
		}
	}

	// The coordinator starts round 1, waits for the plugin's ack, finishes
	// the round.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	layout := schema.MustLayout(schema.DefaultPrefix)
	acks := client.Watch(ctx, layout.Ack("agent-1", "ifplugin"))
	writeRevision(ctx, client, layout, schema.Started)
	<-acks
	writeRevision(ctx, client, layout, schema.NotActive)
	for rs.Stats().NotActive == 0 && ctx.Err() == nil {
		time.Sleep(10 * time.Millisecond) // wait for the plugin to take NotActive
	}

	// The agent closes its plugins in reverse order.
	ifp.Close()
	rs.Close()
	// Output:
	// ifplugin: resync started: reloading interfaces
	// ifplugin: resync finished
	// ifplugin: closed
}

func writeRevision(ctx context.Context, c *clientv3.Client, layout schema.Layout, state schema.Status) {
	now := time.Now().UTC()
	rec := schema.Revision{Revision: 1, State: state, Reason: "example", Cause: schema.CauseInitial, StartedAt: now, Deadline: now.Add(2 * time.Minute), Leader: "example"}
	if state == schema.NotActive {
		rec.FinishedAt = now
	}
	// As the coordinator writes it: with the wake keys agents watch.
	if err := etcdtest.PutRecord(ctx, c, layout, rec); err != nil {
		fmt.Println(err)
	}
}

// startEtcd starts a single-member etcd on loopback in a temporary directory.
func startEtcd() (*embed.Etcd, *clientv3.Client, error) {
	dir, err := os.MkdirTemp("", "resync-example-")
	if err != nil {
		return nil, nil, err
	}
	cfg := embed.NewConfig()
	cfg.Dir = dir
	local, _ := url.Parse("http://127.0.0.1:0")
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{*local}, []url.URL{*local}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{*local}, []url.URL{*local}
	cfg.InitialCluster = cfg.Name + "=" + local.String()
	cfg.TickMs, cfg.ElectionMs = 10, 100
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		os.RemoveAll(dir)
		return nil, nil, err
	}
	select {
	case <-e.Server.ReadyNotify():
	case <-time.After(30 * time.Second):
		stopEtcd(e, nil)
		return nil, nil, fmt.Errorf("etcd not ready")
	}
	c, err := clientv3.New(clientv3.Config{Endpoints: []string{e.Clients[0].Addr().String()}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		stopEtcd(e, nil)
		return nil, nil, err
	}
	return e, c, nil
}

func stopEtcd(e *embed.Etcd, c *clientv3.Client) {
	if c != nil {
		c.Close()
	}
	dir := e.Config().Dir
	e.Close()
	os.RemoveAll(dir)
}

// Flavor is a cn-infra style flavor: it holds its plugins, the resync
// plugin included, by value, and injects dependencies by field.
type Flavor struct {
	IfPlugin   IfPlugin
	ResyncOrch resync.Plugin // the zero value works; listed last
}

// Inject wires the flavor. Without Deps.Client the resync plugin would
// read RESYNC_ENDPOINTS; without Config.Agent, RESYNC_AGENT or
// MICROSERVICE_LABEL.
func (f *Flavor) Inject(log logrus.FieldLogger, client *clientv3.Client) {
	f.IfPlugin.Resync = &f.ResyncOrch
	f.ResyncOrch.Deps.Log = log
	f.ResyncOrch.Deps.Client = client
	f.ResyncOrch.Config.Agent = "node 1"
}

// A flavor holding a zero-value resync.Plugin, as cn-infra flavors do: the
// plugin that uses it registers in its Init, before the resync plugin's
// own Init (it is listed last), and the agent closes the plugins in
// reverse order.
func Example_flavor() {
	etcd, client, err := startEtcd()
	if err != nil {
		fmt.Println(err)
		return
	}
	defer stopEtcd(etcd, client)
	log := logrus.New()
	log.SetOutput(io.Discard)

	var f Flavor
	f.Inject(log, client)
	plugins := []interface {
		Init() error
		AfterInit() error
		Close() error
	}{&f.IfPlugin, &f.ResyncOrch}
	for _, p := range plugins {
		if err := p.Init(); err != nil {
			fmt.Println(err)
			return
		}
	}
	for _, p := range plugins {
		if err := p.AfterInit(); err != nil {
			fmt.Println(err)
			return
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	layout := schema.MustLayout(schema.DefaultPrefix)
	acks := client.Watch(ctx, layout.Ack("node 1", "ifplugin"))
	writeRevision(ctx, client, layout, schema.Started)
	<-acks
	for i := len(plugins) - 1; i >= 0; i-- {
		plugins[i].Close()
	}
	// Output:
	// ifplugin: resync started: reloading interfaces
	// ifplugin: closed
}
