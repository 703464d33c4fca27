package etcdtest

import (
	"net/url"
	"sync"
	"testing"
	"time"

	"go.etcd.io/etcd/pkg/v3/proxy"
	"go.uber.org/zap"
)

// Proxy is etcd's fault-injecting TCP proxy in front of one member. Give
// Endpoint to the client under test; Blackhole drops its traffic both ways.
//
// Blackholed bytes are dropped, not delayed: unlike a real partition (where
// TCP retransmits after healing) a stream that was blackholed only briefly may
// have lost data for good. Tests that need the client to notice a cut
// connection use Cut and Restore, or blackhole for longer than gRPC's
// keepalive detection (10 s minimum ping interval).
type Proxy struct {
	// Endpoint is the proxy's client address (host:port).
	Endpoint string
	target   string
	t        testing.TB

	mu  sync.Mutex
	srv proxy.Server
}

// NewProxy starts a proxy to target (host:port), closed in t.Cleanup.
func NewProxy(t testing.TB, target string) *Proxy {
	t.Helper()
	p := &Proxy{Endpoint: FreeAddr(t), target: target, t: t}
	p.srv = p.start()
	t.Cleanup(func() {
		p.mu.Lock()
		defer p.mu.Unlock()
		if p.srv != nil {
			p.srv.Close()
		}
	})
	return p
}

func (p *Proxy) start() proxy.Server {
	p.t.Helper()
	from, target := p.Endpoint, p.target
	srv := proxy.NewServer(proxy.ServerConfig{
		Logger:        zap.NewNop(),
		From:          url.URL{Scheme: "tcp", Host: from},
		To:            url.URL{Scheme: "tcp", Host: target},
		DialTimeout:   time.Second,
		RetryInterval: 50 * time.Millisecond,
	})
	select {
	case <-srv.Ready():
	case err := <-srv.Error():
		p.t.Fatalf("etcdtest: proxy: %v", err)
	}
	// The proxy reports every failed dial to the member and every broken
	// copy on a 16-slot channel, and its accept loop blocks on a full one:
	// unread, the 17th error (a long chaos run of member restarts and cuts
	// reaches it) stops it accepting for good, and its client never
	// reconnects. Drain it until the proxy closes.
	go func() {
		for {
			select {
			case <-srv.Error():
			case <-srv.Done():
				return
			}
		}
	}()
	return srv
}

// Cut closes the proxy: every connection through it is dropped at once and
// new ones are refused until Restore.
func (p *Proxy) Cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.srv != nil {
		p.srv.Close()
		p.srv = nil
	}
}

// Restore accepts connections again after Cut, on the same address.
func (p *Proxy) Restore() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.srv == nil {
		p.srv = p.start()
	}
}

// Blackhole drops every byte in both directions until Heal.
func (p *Proxy) Blackhole() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.srv.BlackholeTx()
	p.srv.BlackholeRx()
}

// Heal forwards traffic again.
func (p *Proxy) Heal() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.srv.UnblackholeTx()
	p.srv.UnblackholeRx()
}

// HealReset ends a partition that outlived a lease the way a real one ends:
// traffic flows again and the connections that lived through it are reset
// (Heal, then Cut and Restore). A connection healed after a short blackhole
// has lost frames mid-stream, and its HTTP/2 state can stay corrupt for
// good: every new stream fails with PROTOCOL_ERROR while pings still pass,
// so a client never re-grants its lease. Use Heal alone only where the
// test needs the old connection to carry on.
func (p *Proxy) HealReset() {
	p.Heal()
	p.Cut()
	p.Restore()
}
