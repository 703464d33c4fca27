package etcdtest

import (
	"context"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"

	"github.com/resyncd/resync/internal/dialopt"

	"github.com/resyncd/resync/internal/embedetcd"
)

// Raft timing of test members.
const (
	TickMs     = 25
	ElectionMs = 250
)

// Member is one embedded etcd member. Its methods are safe for concurrent use.
type Member struct {
	t         testing.TB
	Name      string
	ClientURL string // http://127.0.0.1:port
	PeerURL   string
	dir       string
	cluster   string // initial-cluster string
	restarted bool
	tls       embedetcd.TLS

	mu   sync.Mutex
	etcd *embedetcd.Server
}

// Endpoint is the member's client address (host:port) for clientv3.
func (m *Member) Endpoint() string {
	return strings.TrimPrefix(strings.TrimPrefix(m.ClientURL, "http://"), "https://")
}

// Start starts a single-member etcd for the test.
func Start(t testing.TB) *Member {
	t.Helper()
	c := StartCluster(t, 1)
	return c.Members[0]
}

// Cluster is a set of members started together.
type Cluster struct {
	Members []*Member
}

// Endpoints are the members' client addresses.
func (c *Cluster) Endpoints() []string {
	eps := make([]string, len(c.Members))
	for i, m := range c.Members {
		eps[i] = m.Endpoint()
	}
	return eps
}

// StartCluster starts n members that form one cluster and waits until all
// are ready.
func StartCluster(t testing.TB, n int) *Cluster {
	t.Helper()
	c := &Cluster{}
	var initial []string
	for i := 0; i < n; i++ {
		m := &Member{
			t:         t,
			Name:      fmt.Sprintf("m%d", i),
			ClientURL: "http://" + FreeAddr(t),
			PeerURL:   "http://" + FreeAddr(t),
			dir:       t.TempDir(),
		}
		initial = append(initial, m.Name+"="+m.PeerURL)
		c.Members = append(c.Members, m)
	}
	for _, m := range c.Members {
		m.cluster = strings.Join(initial, ",")
	}
	if n == 1 {
		if err := c.Members[0].startFresh("http://"); err != nil {
			t.Fatalf("etcdtest: %v", err)
		}
		t.Cleanup(c.Members[0].Stop)
		return c
	}
	// Members of a new cluster wait for each other: start them all, then wait.
	errc := make(chan error, n)
	for _, m := range c.Members {
		go func() { errc <- m.start() }()
	}
	for range c.Members {
		if err := <-errc; err != nil {
			t.Fatalf("etcdtest: %v", err)
		}
	}
	for _, m := range c.Members {
		t.Cleanup(m.Stop)
	}
	return c
}

// StartTLS starts a single-member etcd that serves clients only over TLS
// (https://127.0.0.1:port) with pki's server certificate; with
// clientCertAuth it also requires a client certificate signed by pki's CA.
// Connect with ClientWith and pki.ClientTLS.
func StartTLS(t testing.TB, pki *PKI, clientCertAuth bool) *Member {
	t.Helper()
	m := &Member{
		t:         t,
		Name:      "m0",
		ClientURL: "https://" + FreeAddr(t),
		PeerURL:   "http://" + FreeAddr(t),
		dir:       t.TempDir(),
		tls:       embedetcd.TLS{CertFile: pki.ServerCert, KeyFile: pki.ServerKey, TrustedCAFile: pki.CAFile, ClientCertAuth: clientCertAuth},
	}
	m.cluster = m.Name + "=" + m.PeerURL
	if err := m.startFresh("https://"); err != nil {
		t.Fatalf("etcdtest: %v", err)
	}
	t.Cleanup(m.Stop)
	return m
}

// startFresh starts a new single member, on other free ports (and a new
// data dir) when one that FreeAddr found was taken before etcd bound it:
// by another test process's member, with two make test runs side by side
// ("bind: address already in use", once in two such runs). A member of a
// larger cluster cannot move alone: its peers know its address.
func (m *Member) startFresh(clientScheme string) error {
	for attempt := 1; ; attempt++ {
		err := m.start()
		if err == nil || attempt == 5 || !strings.Contains(err.Error(), "address already in use") {
			return err
		}
		m.ClientURL, m.PeerURL, m.dir = clientScheme+FreeAddr(m.t), "http://"+FreeAddr(m.t), m.t.TempDir()
		m.cluster = m.Name + "=" + m.PeerURL
	}
}

func (m *Member) start() error {
	e, err := embedetcd.Start(context.Background(), embedetcd.Config{
		Name:              m.Name,
		Dir:               m.dir,
		ClientURL:         m.ClientURL,
		PeerURL:           m.PeerURL,
		InitialCluster:    m.cluster,
		Existing:          m.restarted,
		TickMs:            TickMs,
		ElectionMs:        ElectionMs,
		QuotaBackendBytes: 256 << 20,
		// bcrypt's least cost: a login costs a test member 64x less than
		// at etcd's default, which under -race on two loaded cores took
		// over 5 s and timed out the dial of auth tests.
		BcryptCost: 4,
		TLS:        m.tls,
	})
	if err != nil {
		return err
	}
	m.mu.Lock()
	m.etcd = e
	m.restarted = true
	m.mu.Unlock()
	return nil
}

// Stop stops the member (a clean shutdown; its data dir is kept for
// Restart). Stopping a stopped member does nothing.
func (m *Member) Stop() {
	m.mu.Lock()
	e := m.etcd
	m.etcd = nil
	m.mu.Unlock()
	if e != nil {
		e.Close()
	}
}

// Restart starts a stopped member again on the same addresses and data.
func (m *Member) Restart() {
	m.t.Helper()
	if err := m.start(); err != nil {
		m.t.Fatalf("etcdtest: %v", err)
	}
}

// Running reports whether the member is started.
func (m *Member) Running() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.etcd != nil
}

// IsLeader reports whether the member is running and is the raft leader.
func (m *Member) IsLeader() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.etcd != nil && m.etcd.IsLeader()
}

// Leader returns the running member that leads raft, or nil.
func (c *Cluster) Leader() *Member {
	for _, m := range c.Members {
		if m.IsLeader() {
			return m
		}
	}
	return nil
}

// Client returns a client of the given endpoints, closed in t.Cleanup.
func Client(t testing.TB, endpoints ...string) *clientv3.Client {
	t.Helper()
	c, err := NewClient(endpoints...)
	if err != nil {
		t.Fatalf("etcdtest: client: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// NewClient returns a quiet client of the endpoints that the caller closes.
// Closing twice is harmless.
func NewClient(endpoints ...string) (*clientv3.Client, error) {
	return clientv3.New(clientv3.Config{
		Endpoints:            endpoints,
		DialTimeout:          5 * time.Second,
		DialKeepAliveTime:    time.Second,
		DialKeepAliveTimeout: time.Second,
		Logger:               zap.NewNop(),
		DialOptions:          []grpc.DialOption{dialopt.Reconnect()},
	})
}

// ClientWith returns a client made from cfg, closed in t.Cleanup. Unset
// timeouts and the logger take NewClient's quiet test values; cfg carries
// the endpoints, TLS and credentials. It fails the test if the client
// cannot be made (with credentials: if etcd rejects them).
func ClientWith(t testing.TB, cfg clientv3.Config) *clientv3.Client {
	t.Helper()
	c, err := NewClientWith(cfg)
	if err != nil {
		t.Fatalf("etcdtest: client: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// NewClientWith is ClientWith for a client the caller closes.
func NewClientWith(cfg clientv3.Config) (*clientv3.Client, error) {
	if cfg.DialTimeout == 0 {
		cfg.DialTimeout = 5 * time.Second
	}
	if cfg.DialKeepAliveTime == 0 {
		cfg.DialKeepAliveTime, cfg.DialKeepAliveTimeout = time.Second, time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	cfg.DialOptions = append([]grpc.DialOption{dialopt.Reconnect()}, cfg.DialOptions...)
	return clientv3.New(cfg)
}

// Client is a client of this member, closed in t.Cleanup.
func (m *Member) Client(t testing.TB) *clientv3.Client { return Client(t, m.Endpoint()) }

// Compact compacts the member's history up to its current revision.
func Compact(t testing.TB, c *clientv3.Client) int64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := c.Get(ctx, "etcdtest-compact-probe")
	if err != nil {
		t.Fatalf("etcdtest: compact: %v", err)
	}
	if _, err := c.Compact(ctx, resp.Header.Revision, clientv3.WithCompactPhysical()); err != nil {
		t.Fatalf("etcdtest: compact: %v", err)
	}
	return resp.Header.Revision
}

// FreeAddr returns a loopback host:port that was free a moment ago.
func FreeAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("etcdtest: free port: %v", err)
	}
	defer l.Close()
	return l.Addr().String()
}

// DeadAddr returns a loopback host:port that no etcd answers on for the
// rest of the test: it is held by a listener that closes every connection
// at once. A port FreeAddr found free may be taken meanwhile by another
// test process's etcd (two make test runs side by side), and an
// "unreachable" etcd then answers.
func DeadAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("etcdtest: dead port: %v", err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	t.Cleanup(func() {
		l.Close()
		<-done
	})
	return l.Addr().String()
}

// WaitFor polls cond every 10 ms until it is true, and fails the test with
// what when the timeout passes first.
func WaitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
