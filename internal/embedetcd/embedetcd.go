// Package embedetcd starts an etcd member inside the process
// (go.etcd.io/etcd/server/v3/embed): resyncd's single-machine default, and
// the members of the test harness.
package embedetcd

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
)

// Config describes one member. Zero fields take etcd's defaults unless said
// otherwise.
type Config struct {
	// Name of the member (default "default").
	Name string
	// Dir is the data dir. Required: a restart on the same Dir keeps the data.
	Dir string
	// ClientURL is where clients connect, e.g. http://127.0.0.1:2379. Use
	// port 0 for a free port; read the real one from Server.Endpoint.
	ClientURL string
	// PeerURL is where other members connect (default http://127.0.0.1:0).
	PeerURL string
	// InitialCluster is name=peerURL,... (default: this member alone).
	InitialCluster string
	// Existing joins an existing cluster instead of bootstrapping a new one
	// (ignored when Dir already holds data).
	Existing bool
	// TickMs and ElectionMs tune raft timing (defaults 100 and 1000).
	TickMs, ElectionMs uint
	// QuotaBackendBytes bounds the backend (default etcd's 2 GiB).
	QuotaBackendBytes int64
	// AutoCompactionMode ("periodic" or "revision") and
	// AutoCompactionRetention are etcd's --auto-compaction-mode and
	// --auto-compaction-retention (default: no compaction, as etcd's).
	AutoCompactionMode, AutoCompactionRetention string
	// BcryptCost is etcd's --bcrypt-cost for the passwords of its users
	// (0: etcd's default, bcrypt's 10). Each login pays it.
	BcryptCost uint
	// Logger receives etcd's logs (default: none).
	Logger *zap.Logger
	// TLS, when CertFile and KeyFile are set, serves clients over TLS; with
	// TrustedCAFile and ClientCertAuth it requires client certificates.
	TLS TLS
	// ReadyTimeout bounds the wait for the member to serve (default
	// DefaultReadyTimeout, 60 s).
	ReadyTimeout time.Duration
	// Front serves clients through an in-process TCP front on ClientURL
	// (etcd itself listens on a private loopback port). Close cuts the
	// front's connections first, so it does not wait for clients' open
	// watch and keepalive streams: etcd's own Close waits for them up to
	// its request timeout (7 s with default raft timing). Use it when other
	// processes stay connected while this member stops (resyncd).
	Front bool
}

// TLS holds file paths for client-facing TLS.
type TLS struct {
	CertFile, KeyFile, TrustedCAFile string
	ClientCertAuth                   bool
}

// Server is a running member.
type Server struct {
	etcd  *embed.Etcd
	front *front
}

// Start starts the member (StartEtcd on NewConfig's configuration, with
// the front when asked) and waits until it serves clients, the ctx ends, or
// ReadyTimeout passes (waitReady).
func Start(ctx context.Context, c Config) (*Server, error) {
	cfg, err := NewConfig(c)
	if err != nil {
		return nil, err
	}
	var fr *front
	if c.Front {
		adv := cfg.AdvertiseClientUrls[0]
		fr, err = listenFront(adv.Host)
		if err != nil {
			return nil, fmt.Errorf("embedetcd: client URL %s: %w", c.ClientURL, err)
		}
		adv.Host = fr.ln.Addr().String()
		cfg.AdvertiseClientUrls = []url.URL{adv}
	}
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		if fr != nil {
			fr.close()
		}
		return nil, fmt.Errorf("embedetcd: start %s (data dir %s): %w", cfg.Name, c.Dir, err)
	}
	if err := waitReady(ctx, cfg.Name, e.Server.ReadyNotify(), e.Err(), c.ReadyTimeout); err != nil {
		e.Close()
		if fr != nil {
			fr.close()
		}
		return nil, err
	}
	if fr != nil {
		fr.start(e.Clients[0].Addr().String())
	}
	return &Server{etcd: e, front: fr}, nil
}

// NewConfig builds etcd's configuration of member c and validates it as
// etcd will (embed.Config.Validate, logging nowhere), without listening or
// touching the data dir. With Front, etcd listens on a private loopback port
// of ClientURL's scheme and advertises ClientURL; Start replaces the
// advertised host with the front's real address.
func NewConfig(c Config) (*embed.Config, error) {
	if c.Dir == "" {
		return nil, errors.New("embedetcd: a data dir is required")
	}
	cfg := embed.NewConfig()
	if c.Name != "" {
		cfg.Name = c.Name
	}
	cfg.Dir = c.Dir
	if c.TickMs != 0 {
		cfg.TickMs = c.TickMs
	}
	if c.ElectionMs != 0 {
		cfg.ElectionMs = c.ElectionMs
	}
	if c.QuotaBackendBytes != 0 {
		cfg.QuotaBackendBytes = c.QuotaBackendBytes
	}
	if c.AutoCompactionMode != "" {
		cfg.AutoCompactionMode = c.AutoCompactionMode
	}
	if c.BcryptCost != 0 {
		cfg.BcryptCost = c.BcryptCost
	}
	if c.AutoCompactionRetention != "" {
		cfg.AutoCompactionRetention = c.AutoCompactionRetention
	}
	cu, err := url.Parse(c.ClientURL)
	if err != nil || cu.Host == "" {
		return nil, fmt.Errorf("embedetcd: client URL %q is not a URL like http://127.0.0.1:2379", c.ClientURL)
	}
	peer := c.PeerURL
	if peer == "" {
		peer = "http://127.0.0.1:0"
	}
	pu, err := url.Parse(peer)
	if err != nil || pu.Host == "" {
		return nil, fmt.Errorf("embedetcd: peer URL %q is not a URL like http://127.0.0.1:2380", peer)
	}
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{*cu}, []url.URL{*cu}
	if c.Front {
		private := *cu
		private.Host = "127.0.0.1:0"
		cfg.ListenClientUrls = []url.URL{private}
	}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{*pu}, []url.URL{*pu}
	if c.InitialCluster != "" {
		cfg.InitialCluster = c.InitialCluster
	} else {
		cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	}
	if c.Existing {
		cfg.ClusterState = embed.ClusterStateFlagExisting
	}
	cfg.InitialClusterToken = "resync"
	if c.TLS.CertFile != "" || c.TLS.KeyFile != "" {
		cfg.ClientTLSInfo.CertFile = c.TLS.CertFile
		cfg.ClientTLSInfo.KeyFile = c.TLS.KeyFile
		cfg.ClientTLSInfo.TrustedCAFile = c.TLS.TrustedCAFile
		cfg.ClientTLSInfo.ClientCertAuth = c.TLS.ClientCertAuth
	}
	// Validate a copy that logs nowhere: StartEtcd validates again, and
	// its notes must reach c.Logger once.
	check := *cfg
	check.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
	if err := check.Validate(); err != nil {
		return nil, fmt.Errorf("embedetcd: %s: %w", cfg.Name, err)
	}
	lg := c.Logger
	if lg == nil {
		lg = zap.NewNop()
	}
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(lg)
	return cfg, nil
}

// DefaultReadyTimeout bounds waitReady when Config.ReadyTimeout is 0.
const DefaultReadyTimeout = 60 * time.Second

// waitReady waits until member name serves clients (ready, etcd's
// ReadyNotify, closes); it returns an error naming the member when the
// member fails (errc, etcd's Err), ctx ends or timeout (0:
// DefaultReadyTimeout) passes first. The caller closes the member on error.
func waitReady(ctx context.Context, name string, ready <-chan struct{}, errc <-chan error, timeout time.Duration) error {
	if timeout == 0 {
		timeout = DefaultReadyTimeout
	}
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-ready:
		return nil
	case err := <-errc:
		return fmt.Errorf("embedetcd: %s failed while starting: %w", name, err)
	case <-ctx.Done():
		return fmt.Errorf("embedetcd: %s: %w", name, ctx.Err())
	case <-t.C:
		return fmt.Errorf("embedetcd: %s not ready after %v (is a quorum of its cluster up?)", name, timeout)
	}
}

// Endpoint is the client address (host:port) the member really listens on.
func (s *Server) Endpoint() string {
	if s.front != nil {
		return s.front.ln.Addr().String()
	}
	return s.etcd.Clients[0].Addr().String()
}

// Err reports a fatal serving error.
func (s *Server) Err() <-chan error { return s.etcd.Err() }

// IsLeader reports whether this member leads raft.
func (s *Server) IsLeader() bool { return s.etcd.Server.Leader() == s.etcd.Server.MemberID() }

// Close stops the member: it cuts the front's client connections (with
// Front), then etcd stops accepting clients, closes their connections, stops
// raft and flushes the backend, in that order (embed's Close). The data dir
// stays valid for a restart.
func (s *Server) Close() {
	if s.front != nil {
		s.front.close()
	}
	s.etcd.Close()
}
