// Command resyncd is the resync service: it runs a coordinator (leader
// election, resync rounds, ack collection, retries). With --endpoints it
// joins an existing etcd cluster; without, it starts an embedded
// single-member etcd that agents, resyncctl and etcdctl can use.
//
// Every flag can also be set by the environment variable RESYNC_<FLAG>,
// upper-cased with '-' as '_' (RESYNC_ENDPOINTS, RESYNC_HTTP_ADDR, ...); the
// command line wins. Flags, exit statuses and logging are internal/cli's
// (pflag flags; Go flag's -name spelling still works).
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/sirupsen/logrus"
	"github.com/spf13/pflag"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/resyncd/resync/cmd/resyncd/internal/metrics"
	"github.com/resyncd/resync/coordinator"
	"github.com/resyncd/resync/internal/cli"
	"github.com/resyncd/resync/internal/embedetcd"
	"github.com/resyncd/resync/internal/etcdflags"
	"github.com/resyncd/resync/internal/etcdspace"
	"github.com/resyncd/resync/registry"
	"github.com/resyncd/resync/schema"
)

func main() { cli.Main(run) }

type options struct {
	etcd           *etcdflags.Flags
	dataDir        string
	clientURL      string
	peerURL        string
	httpAddr       string
	httpPublic     bool
	coord          coordinator.Config
	log            cli.LogFlags
	embedCert      string
	embedKey       string
	embedCA        string
	embedClientTLS bool
	probe          string
	shutdown       time.Duration
	storage        storageOptions
	// set lists the flags given on the command line or the environment.
	set map[string]bool
}

// storageOptions are the compaction and quota flags (docs/storage.md: Storage and
// compaction).
type storageOptions struct {
	compactionMode      string
	compactionRetention string
	quota               int64
	compactionInterval  time.Duration
}

func parse(args []string, stderr io.Writer) (*options, bool, error) {
	fs := pflag.NewFlagSet("resyncd", pflag.ContinueOnError)
	fs.SetOutput(stderr)
	ef := etcdflags.Default()
	ef.Endpoints = "" // unset: the embedded etcd (--help shows no default)
	o := &options{etcd: &ef, coord: coordinator.DefaultConfig(), storage: storageOptions{
		compactionMode: etcdspace.DefaultAutoCompactionMode, compactionRetention: etcdspace.DefaultAutoCompactionRetention,
		quota: etcdspace.DefaultQuotaBackendBytes,
	}}
	o.etcd.Register(fs)
	fs.Lookup("endpoints").Usage = "etcd client endpoints of an existing cluster (comma-separated host:port); unset: resyncd starts an embedded etcd"
	embedFlags(fs, o)
	fs.StringVar(&o.httpAddr, "http-addr", "127.0.0.1:9090", "address of /metrics, /healthz, /readyz, /status")
	fs.BoolVar(&o.httpPublic, "http-public", false, "allow --http-addr on a non-loopback address (it has no authentication)")
	defaultID := coordFlags(fs, &o.coord)
	fs.DurationVar(&o.shutdown, "shutdown-timeout", 5*time.Second, "bound on SIGINT/SIGTERM shutdown (resign, HTTP, etcd client), also while etcd is unreachable; the embedded etcd's own stop comes after it")
	fs.StringVar(&o.probe, "probe", "", "probe mode: GET this URL, exit 0 on 200 (a healthcheck for images without a shell)")
	o.log.Register(fs)
	cli.SetUsage(fs, "resyncd [flags]")
	if err := cli.Parse(fs, "resyncd", args); err != nil {
		return nil, false, err
	}
	if o.coord.ID == "" {
		o.coord.ID = defaultID
	}
	// Changed includes the flags set from the environment.
	o.set = map[string]bool{}
	fs.Visit(func(fl *pflag.Flag) { o.set[fl.Name] = true })
	return o, o.set["endpoints"], nil
}

// embedFlags registers the embedded etcd's flags: data dir, URLs, TLS,
// compaction and quota.
func embedFlags(fs *pflag.FlagSet, o *options) {
	fs.StringVar(&o.dataDir, "data-dir", "resyncd.etcd", "data dir of the embedded etcd (used when --endpoints is not set)")
	fs.StringVar(&o.clientURL, "listen-client-url", "http://127.0.0.1:2379", "client URL the embedded etcd serves (https:// with --embed-cert-file)")
	fs.StringVar(&o.peerURL, "listen-peer-url", "http://127.0.0.1:2380", "peer URL of the embedded etcd")
	fs.StringVar(&o.embedCert, "embed-cert-file", "", "serve the embedded etcd's clients over TLS with this certificate")
	fs.StringVar(&o.embedKey, "embed-key-file", "", "key of --embed-cert-file")
	fs.StringVar(&o.embedCA, "embed-trusted-ca-file", "", "CA that signs client certificates of the embedded etcd")
	fs.BoolVar(&o.embedClientTLS, "embed-client-cert-auth", false, "require client certificates signed by --embed-trusted-ca-file")
	fs.StringVar(&o.storage.compactionMode, "auto-compaction-mode", o.storage.compactionMode, "embedded etcd: compact history by age (periodic) or by count (revision)")
	fs.StringVar(&o.storage.compactionRetention, "auto-compaction-retention", o.storage.compactionRetention, "embedded etcd: history kept: a duration with periodic (a bare integer is hours), a revision count with revision; 0 turns compaction off")
	fs.Int64Var(&o.storage.quota, "quota-backend-bytes", o.storage.quota, "embedded etcd: database quota in bytes; past it etcd raises NOSPACE and refuses writes")
	fs.DurationVar(&o.storage.compactionInterval, "compaction-interval", 0, "external etcd (--endpoints): the leader compacts every interval to the revision seen one interval earlier; 0 (default) never compacts")
}

// coordFlags registers the coordinator's flags on cfg, with cfg's values as
// defaults, and returns the default id (shown by --help as unset).
func coordFlags(fs *pflag.FlagSet, cfg *coordinator.Config) (defaultID string) {
	defaultID = cfg.ID
	cfg.ID = "" // --help shows no per-process default
	fs.StringVar(&cfg.ID, "id", "", "coordinator id, written in every record it makes; unset: <hostname>-<pid>")
	fs.StringVar(&cfg.Prefix, "prefix", cfg.Prefix, "etcd key prefix")
	fs.DurationVar(&cfg.SessionTTL, "session-ttl", cfg.SessionTTL, "election session TTL: crash failover bound")
	fs.DurationVar(&cfg.RoundDeadline, "round-deadline", cfg.RoundDeadline, "participants still pending then are timed out")
	fs.DurationVar(&cfg.CoalesceWindow, "coalesce-window", cfg.CoalesceWindow, "wait this long after a request for more to merge")
	fs.DurationVar(&cfg.BackoffMin, "backoff-min", cfg.BackoffMin, "first retry delay after a failed round or a reported error, per agent")
	fs.DurationVar(&cfg.BackoffMax, "backoff-max", cfg.BackoffMax, "retry delay cap (the delay doubles per error-triggered round of an agent's streak; the streak ends after 2 x backoff-max without errors)")
	fs.IntVar(&cfg.History, "history", cfg.History, "round summaries kept under rounds/")
	fs.StringVar((*string)(&cfg.Wave.MaxInFlight), "max-in-flight", string(cfg.Wave.MaxInFlight),
		"every round's bound on agents resyncing at once, a count or a percentage of its agents (10%): its write budget; a request may only tighten it; unset: unbounded")
	return defaultID
}

// run is resyncd; it returns the exit code. Errors are one line on stderr.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	o, external, err := parse(args, stderr)
	if errors.Is(err, pflag.ErrHelp) {
		return cli.ExitOK
	}
	if err != nil {
		fmt.Fprintln(stderr, "resyncd:", err)
		return cli.ExitUsage
	}
	if o.probe != "" {
		return probe(ctx, o.probe, stdout, stderr)
	}
	log, err := o.log.Logger(stderr)
	if err == nil {
		err = check(o, external)
	}
	if err != nil {
		fmt.Fprintln(stderr, "resyncd:", err)
		return cli.ExitUsage
	}
	if err := serve(ctx, o, external, log); err != nil {
		fmt.Fprintln(stderr, "resyncd:", err)
		return cli.ExitFailure
	}
	return cli.ExitOK
}

// check checks the options that parsing cannot: the coordinator's config,
// the shutdown budget, the HTTP address, storage and the embedded etcd's
// TLS.
func check(o *options, external bool) error {
	if err := o.coord.Validate(); err != nil {
		return err
	}
	if o.shutdown <= 0 {
		return fmt.Errorf("--shutdown-timeout %v must be positive (for example 5s)", o.shutdown)
	}
	if err := checkHTTPAddr(o.httpAddr, o.httpPublic); err != nil {
		return err
	}
	if err := checkStorage(o, external); err != nil {
		return err
	}
	if external {
		return nil
	}
	return checkEmbedTLS(o)
}

// checkHTTPAddr keeps the unauthenticated HTTP endpoints on loopback unless
// the operator says otherwise.
func checkHTTPAddr(addr string, public bool) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("--http-addr %q: %v", addr, err)
	}
	ip := net.ParseIP(host)
	loop := host == "localhost" || (ip != nil && ip.IsLoopback())
	if !loop && !public {
		return fmt.Errorf("--http-addr %q is not a loopback address: /status and /metrics have no authentication; add --http-public to bind it anyway", addr)
	}
	return nil
}

// The storage monitor's timing (tests shorten it; storageMaintain false
// lets a test observe NOSPACE before recovering by hand).
var (
	storageCheckInterval     = etcdspace.DefaultCheckInterval
	storageDefragMinInterval = etcdspace.DefaultDefragMinInterval
	storageMaintain          = true
)

// checkStorage checks the compaction and quota flags: the embedded etcd's
// (named as etcd names them) apply only without --endpoints, and
// --compaction-interval only with it (an external cluster may be shared:
// resyncd compacts it only when asked).
func checkStorage(o *options, external bool) error {
	s := o.storage
	if external {
		for _, f := range []string{"auto-compaction-mode", "auto-compaction-retention", "quota-backend-bytes"} {
			if o.set[f] {
				return fmt.Errorf("--%s configures the embedded etcd; with --endpoints set it on the etcd cluster itself (or use --compaction-interval)", f)
			}
		}
		if s.compactionInterval < 0 {
			return fmt.Errorf("--compaction-interval %v: must not be negative (0 turns it off)", s.compactionInterval)
		}
		if s.compactionInterval > 0 && s.compactionInterval < time.Second {
			return fmt.Errorf("--compaction-interval %v: use at least 1s (kube-apiserver uses 5m), or 0 to turn it off", s.compactionInterval)
		}
		return nil
	}
	if o.set["compaction-interval"] {
		return errors.New("--compaction-interval applies to an external etcd (--endpoints); the embedded etcd compacts itself: use --auto-compaction-mode and --auto-compaction-retention")
	}
	if err := etcdspace.ValidateAutoCompaction(s.compactionMode, s.compactionRetention); err != nil {
		return err
	}
	return etcdspace.ValidateQuota(s.quota)
}

// checkEmbedTLS checks the embedded etcd's TLS flags together: etcd itself
// would serve plain HTTP on an http:// URL despite a certificate, and
// resyncd's own client must present a certificate when etcd requires one.
func checkEmbedTLS(o *options) error {
	https := strings.HasPrefix(o.clientURL, "https://")
	switch {
	case (o.embedCert == "") != (o.embedKey == ""):
		return errors.New("--embed-cert-file and --embed-key-file go together: give both or neither")
	case o.embedCert != "" && !https:
		return fmt.Errorf("--listen-client-url %q must be https:// with --embed-cert-file", o.clientURL)
	case https && o.embedCert == "":
		return fmt.Errorf("--listen-client-url %q needs --embed-cert-file and --embed-key-file", o.clientURL)
	case o.embedClientTLS && o.embedCA == "":
		return errors.New("--embed-client-cert-auth needs --embed-trusted-ca-file: the CA of the client certificates")
	case o.embedClientTLS && o.etcd.Cert == "":
		return errors.New("--embed-client-cert-auth: resyncd's own client needs a certificate too: give --cert and --key (and --cacert)")
	}
	return nil
}

// serve runs resyncd until ctx ends or the embedded etcd or the HTTP
// server fails: the embedded etcd (without --endpoints), the client, the
// coordinator, the storage monitor (and compactor), the HTTP server; then
// it shuts them down in the reverse order.
func serve(ctx context.Context, o *options, external bool, log *logrus.Logger) error {
	var etcdErr <-chan error
	if !external {
		stop, errc, err := startEmbeddedEtcd(ctx, o, log)
		if err != nil {
			return err
		}
		defer stop()
		etcdErr = errc
	}
	c, err := o.etcd.Dial(ctx)
	if err != nil {
		return err
	}
	defer c.Close()
	co, m, reg, err := newCoordinator(c, o, log)
	if err != nil {
		return err
	}
	layout, _ := schema.NewLayout(o.coord.Prefix)
	mctx, mstop := context.WithCancel(context.Background())
	var mwg sync.WaitGroup
	defer func() {
		mstop()
		mwg.Wait()
	}()
	mon := startStorage(mctx, &mwg, o, external, c, co, m, layout, log)
	h := &handlers{co: co, c: c, layout: layout, reg: reg, timeout: 2 * time.Second, storage: mon, fatal: embeddedFailed(etcdErr)}
	ln, err := net.Listen("tcp", o.httpAddr)
	if err != nil {
		return errors.Join(fmt.Errorf("--http-addr %s: %w", o.httpAddr, err), co.Close())
	}
	hs := &http.Server{Handler: h.mux(), ReadHeaderTimeout: 5 * time.Second}
	httpErr := make(chan error, 1)
	go func() { httpErr <- hs.Serve(ln) }()
	log.WithField("http", ln.Addr().String()).WithField("id", co.ID()).Info("resyncd: running")

	runErr := waitEnd(ctx, etcdErr, httpErr, log)
	shutdown(co, hs, o.shutdown, log)
	return runErr
}

// startEmbeddedEtcd starts the embedded etcd and points o.etcd at it. stop
// stops it; errc reports its failure.
func startEmbeddedEtcd(ctx context.Context, o *options, log *logrus.Logger) (stop func(), errc <-chan error, err error) {
	dir, _ := filepath.Abs(o.dataDir)
	etcdLog := newEtcdLog(log.WithField("component", "etcd"))
	srv, err := embedetcd.Start(ctx, embedetcd.Config{
		Name: "resyncd", Dir: dir, ClientURL: o.clientURL, PeerURL: o.peerURL, Front: true,
		Logger: etcdLog.Logger(),
		TLS:    embedetcd.TLS{CertFile: o.embedCert, KeyFile: o.embedKey, TrustedCAFile: o.embedCA, ClientCertAuth: o.embedClientTLS},

		// Compaction and quota: docs/storage.md, Storage and compaction.
		AutoCompactionMode: o.storage.compactionMode, AutoCompactionRetention: o.storage.compactionRetention, QuotaBackendBytes: o.storage.quota,
	})
	if err != nil {
		return nil, nil, err
	}
	stop = func() {
		etcdLog.Closing()
		srv.Close()
		log.Info("resyncd: embedded etcd stopped")
	}
	scheme := "http://"
	if o.embedCert != "" {
		scheme = "https://"
	}
	o.etcd.Endpoints = scheme + selfEndpoint(srv.Endpoint())
	log.WithField("endpoint", srv.Endpoint()).WithField("data_dir", dir).Info("resyncd: embedded etcd serving")
	return stop, srv.Err(), nil
}

// newCoordinator makes the coordinator with its metrics, registered in a
// new Prometheus registry beside Go's and the process's collectors.
func newCoordinator(c *clientv3.Client, o *options, log *logrus.Logger) (*coordinator.Coordinator, *metrics.Metrics, *prometheus.Registry, error) {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	m, err := metrics.New(reg)
	if err != nil {
		return nil, nil, nil, err
	}
	co, err := coordinator.New(c, o.coord, coordinator.WithLogger(log), coordinator.WithHooks(m))
	if err != nil {
		return nil, nil, nil, err
	}
	if err := metrics.RegisterTerm(reg, func() int64 { return co.Status().Term }); err != nil {
		return nil, nil, nil, errors.Join(err, co.Close())
	}
	return co, m, reg, nil
}

// startStorage starts, in wg, the storage monitor and, on an external etcd
// with --compaction-interval, the compactor, both until ctx ends; it logs
// how storage is kept.
func startStorage(ctx context.Context, wg *sync.WaitGroup, o *options, external bool, c *clientv3.Client,
	co *coordinator.Coordinator, m *metrics.Metrics, layout schema.Layout, log *logrus.Logger) *etcdspace.Monitor {
	slog := log.WithField("component", "storage")
	// Automatic defragmentation must not outlast the shortest session it
	// blocks: the coordinator's, or the agents' (their default; an agent
	// with a shorter TTL is the operator's choice to document).
	sessionTTL := min(o.coord.SessionTTL, registry.DefaultConfig("").TTL)
	mon := &etcdspace.Monitor{Client: c, Maintain: !external && storageMaintain, Log: slog,
		Interval: storageCheckInterval, DefragMinInterval: storageDefragMinInterval, SessionTTL: sessionTTL,
		Published: func(u etcdspace.Usage) { m.EtcdDB(u.Size, u.InUse, u.Quota, u.Exhausted) }}
	wg.Add(1)
	go func() {
		defer wg.Done()
		mon.Run(ctx)
	}()
	if external && o.storage.compactionInterval > 0 {
		k := &etcdspace.Compactor{Client: c, Interval: o.storage.compactionInterval, Key: layout.Revision(), Log: slog,
			Leading: func() bool { return co.Status().Leading }}
		wg.Add(1)
		go func() {
			defer wg.Done()
			k.Run(ctx)
		}()
	}
	if external {
		slog.WithField("compaction_interval", o.storage.compactionInterval).Info("resyncd: external etcd: compaction by resyncd is " + onOff(o.storage.compactionInterval > 0))
		return mon
	}
	limit, pause := mon.DefragLimit()
	slog.WithFields(logrus.Fields{"auto_compaction_mode": o.storage.compactionMode, "auto_compaction_retention": o.storage.compactionRetention,
		"quota_backend_bytes": o.storage.quota, "defrag_max_in_use": etcdspace.Bytes(limit), "defrag_max_pause": pause, "session_ttl": sessionTTL}).
		Info("resyncd: embedded etcd compacts, defragments and recovers from NOSPACE by itself (defragmenting only within 1/4 of the shortest session TTL)")
	return mon
}

// embeddedFailed is /readyz's check of the embedded etcd: the error it
// reported on etcdErr, if any (nil etcdErr: an external etcd).
func embeddedFailed(etcdErr <-chan error) func() error {
	return func() error {
		select {
		case err := <-etcdErr:
			return fmt.Errorf("embedded etcd failed: %w", err)
		default:
			return nil
		}
	}
}

// waitEnd waits for a signal (ctx), the embedded etcd's failure or the
// HTTP server's, and returns the failure.
func waitEnd(ctx context.Context, etcdErr <-chan error, httpErr <-chan error, log logrus.FieldLogger) error {
	select {
	case <-ctx.Done():
		log.Info("resyncd: signal received; shutting down")
		return nil
	case err := <-etcdErr:
		return fmt.Errorf("embedded etcd failed: %w", err)
	case err := <-httpErr:
		return fmt.Errorf("http server: %w", err)
	}
}

// shutdown stops the coordinator (its revoke resigns: a standby takes over at
// once) and the HTTP server, together within one budget: while etcd is
// unreachable the revoke gives up when the budget is spent. The client and
// the embedded etcd close after it (deferred by serve).
func shutdown(co *coordinator.Coordinator, hs *http.Server, budget time.Duration, log logrus.FieldLogger) {
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), budget)
	defer cancel()
	httpDone := make(chan error, 1)
	go func() { httpDone <- hs.Shutdown(ctx) }()
	if err := co.Shutdown(ctx); err != nil {
		log.WithError(err).Warn("resyncd: coordinator closed without resigning; a standby takes over after the session TTL")
	} else {
		log.Info("resyncd: coordinator closed (resigned if leading)")
	}
	if err := <-httpDone; err != nil {
		log.WithError(err).Warn("resyncd: HTTP server shutdown cut short")
	}
	log.WithField("took", time.Since(start).Round(time.Millisecond)).Info("resyncd: shut down")
}

func onOff(b bool) string {
	if b {
		return "on"
	}
	return "off"
}

// selfEndpoint is how resyncd's own client reaches its embedded etcd
// listening on addr: through loopback when addr is a wildcard (0.0.0.0,
// ::), so that the server certificate needs to name 127.0.0.1, not the
// wildcard.
func selfEndpoint(addr string) string {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return addr
	}
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		return net.JoinHostPort("127.0.0.1", port)
	}
	return addr
}

// probe GETs url and returns 0 on 200 OK.
func probe(ctx context.Context, url string, stdout, stderr io.Writer) int {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		fmt.Fprintln(stderr, "resyncd: --probe:", err)
		return cli.ExitUsage
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		fmt.Fprintln(stderr, "resyncd: --probe:", err)
		return cli.ExitFailure
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	fmt.Fprintf(stdout, "%s %s", resp.Status, body)
	if resp.StatusCode != http.StatusOK {
		return cli.ExitFailure
	}
	return cli.ExitOK
}
