package resync_test

// A cn-infra agent ported to resync the way the README says: only the import
// and the line that built the resync plugin change. The code below is shaped
// like real consumers of cn-infra's datasync/resync (a flavor that holds its
// plugins by value and injects their dependencies by field, plugins that
// select on their resync channel without checking ok, a kvdbsync-like layer
// that registers on behalf of its watchers, names with spaces, colons and
// slashes), written for this test.

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/sirupsen/logrus/hooks/test"

	"github.com/resyncd/resync"
	"github.com/resyncd/resync/internal/testing/etcdtest"
	"github.com/resyncd/resync/schema"
)

// resyncEventHandler is how a consumer's plugin handles one resync: reload,
// then report.
type resyncEventHandler func(status resync.Status) error

// watcherPlugin is a plugin with its own resync registration, read in a
// select loop that does not check ok (as real ones do).
type watcherPlugin struct {
	Deps struct { // injected by the flavor
		Log    logrus.FieldLogger
		Resync resync.Subscriber
	}
	name          string
	registerLater bool // registers in AfterInit (some real plugins do)

	reg    resync.Registration
	cancel context.CancelFunc
	wg     sync.WaitGroup
	events eventLog
}

func (p *watcherPlugin) Init() error {
	if !p.registerLater {
		p.reg = p.Deps.Resync.Register(p.name)
	}
	return nil
}

func (p *watcherPlugin) AfterInit() error {
	if p.registerLater {
		p.reg = p.Deps.Resync.Register(p.name)
	}
	var ctx context.Context
	ctx, p.cancel = context.WithCancel(context.Background())
	p.wg.Add(1)
	go p.watchEvents(ctx, p.reg.StatusChan())
	return nil
}

// watchEvents is typed chan, not <-chan, as real consumers are.
func (p *watcherPlugin) watchEvents(ctx context.Context, resyncChan chan resync.StatusEvent) {
	defer p.wg.Done()
	for {
		select {
		case resyncEv := <-resyncChan: // no ok: a closed channel would give nil
			p.events.add(p.name, resyncEv.ResyncStatus())
			resyncEv.Ack()
		case <-ctx.Done():
			return
		}
	}
}

func (p *watcherPlugin) Close() error {
	if p.cancel != nil {
		p.cancel()
	}
	p.wg.Wait()
	return nil
}

func (p *watcherPlugin) String() string { return p.name }

// kvdbSyncPlugin registers with the resync plugin on behalf of its
// watchers, as cn-infra's datasync/kvdbsync does: each Watch names a
// resync registration, and the layer forwards the resync to the watcher's
// handler and acks for it.
type kvdbSyncPlugin struct {
	Deps struct {
		ResyncOrch resync.Subscriber
	}

	mu     sync.Mutex
	subs   []kvdbSub
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

type kvdbSub struct {
	reg     resync.Registration
	handler resyncEventHandler
}

// Watch is called by the watchers in their Init.
func (k *kvdbSyncPlugin) Watch(resyncName string, handler resyncEventHandler) {
	reg := k.Deps.ResyncOrch.Register(resyncName)
	k.mu.Lock()
	k.subs = append(k.subs, kvdbSub{reg: reg, handler: handler})
	k.mu.Unlock()
}

func (k *kvdbSyncPlugin) Init() error { return nil }

func (k *kvdbSyncPlugin) AfterInit() error {
	var ctx context.Context
	ctx, k.cancel = context.WithCancel(context.Background())
	k.mu.Lock()
	defer k.mu.Unlock()
	for _, s := range k.subs {
		k.wg.Add(1)
		go k.watchResync(ctx, s)
	}
	return nil
}

func (k *kvdbSyncPlugin) watchResync(ctx context.Context, s kvdbSub) {
	defer k.wg.Done()
	for {
		select {
		case resyncStatus := <-s.reg.StatusChan():
			if err := s.handler(resyncStatus.ResyncStatus()); err != nil {
				if e, ok := resyncStatus.(*resync.Event); ok {
					e.AckError(err)
					continue
				}
			}
			resyncStatus.Ack()
		case <-ctx.Done():
			return
		}
	}
}

func (k *kvdbSyncPlugin) Close() error {
	if k.cancel != nil {
		k.cancel()
	}
	k.wg.Wait()
	return nil
}

func (k *kvdbSyncPlugin) String() string { return "kvdbsync" }

// k8sPlugin watches two kinds of resources through kvdbsync.
type k8sPlugin struct {
	Deps struct {
		Watcher *kvdbSyncPlugin
	}
	events eventLog
}

func (p *k8sPlugin) Init() error {
	for _, name := range []string{"K8s resources", "K8s policies"} {
		p.Deps.Watcher.Watch(name, func(s resync.Status) error {
			p.events.add(name, s)
			return nil
		})
	}
	return nil
}
func (p *k8sPlugin) AfterInit() error { return nil }
func (p *k8sPlugin) Close() error     { return nil }
func (p *k8sPlugin) String() string   { return "k8s" }

// eventLog records the statuses each registration received.
type eventLog struct {
	mu   sync.Mutex
	seen map[string][]resync.Status
}

func (l *eventLog) add(name string, s resync.Status) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.seen == nil {
		l.seen = map[string][]resync.Status{}
	}
	l.seen[name] = append(l.seen[name], s)
}

func (l *eventLog) started(name string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, s := range l.seen[name] {
		if s == resync.Started {
			n++
		}
	}
	return n
}

// portedFlavor holds every plugin by value, as cn-infra flavors do; the
// resync plugin is listed last. The port changed only the import of
// resync: the field was `ResyncOrch resync.Plugin` before too.
type portedFlavor struct {
	KVDB       kvdbSyncPlugin
	K8s        k8sPlugin
	Telemetry  watcherPlugin
	VPP        watcherPlugin
	ResyncOrch resync.Plugin
}

// Inject wires the dependencies by field. The resync plugin's own come
// from the environment (RESYNC_ENDPOINTS, MICROSERVICE_LABEL) unless the
// caller sets them (the in-process test injects its client and logger).
func (f *portedFlavor) Inject(log logrus.FieldLogger) {
	f.KVDB.Deps.ResyncOrch = &f.ResyncOrch
	f.K8s.Deps.Watcher = &f.KVDB
	f.Telemetry.name, f.Telemetry.registerLater = "ContivTelemetry Resources", true
	f.Telemetry.Deps.Log, f.Telemetry.Deps.Resync = log, &f.ResyncOrch
	f.VPP.name = "Config VPP default plug:IF/L2/L3"
	f.VPP.Deps.Log, f.VPP.Deps.Resync = log, &f.ResyncOrch
}

// Plugins lists the plugins in their order in the flavor.
func (f *portedFlavor) Plugins() []cnInfraPlugin {
	return []cnInfraPlugin{&f.KVDB, &f.K8s, &f.Telemetry, &f.VPP, &f.ResyncOrch}
}

// startAgent is cn-infra's agent start: every Init in order, then every
// AfterInit in order.
func startAgent(plugins []cnInfraPlugin) error {
	for _, p := range plugins {
		if err := p.Init(); err != nil {
			return fmt.Errorf("%s: init: %w", p, err)
		}
	}
	for _, p := range plugins {
		if err := p.AfterInit(); err != nil {
			return fmt.Errorf("%s: after init: %w", p, err)
		}
	}
	return nil
}

// stopAgent is cn-infra's agent stop: every Close in reverse order (the
// resync plugin, listed last, first).
func stopAgent(plugins []cnInfraPlugin) error {
	var errs []error
	for i := len(plugins) - 1; i >= 0; i-- {
		errs = append(errs, plugins[i].Close())
	}
	return errors.Join(errs...)
}

var portedNames = []string{"K8s resources", "K8s policies", "ContivTelemetry Resources", "Config VPP default plug:IF/L2/L3"}

// startedFor counts the Started events a flavor's registration received.
func (f *portedFlavor) startedFor(name string) int {
	if strings.HasPrefix(name, "K8s") {
		return f.K8s.events.started(name)
	}
	if name == f.Telemetry.name {
		return f.Telemetry.events.started(name)
	}
	return f.VPP.events.started(name)
}

// TestPortedCnInfraFlavor: the ported flavor starts (its plugins register
// through the zero-value resync plugin before its Init, under names with
// spaces, colons and slashes, one of them in AfterInit), every
// registration gets its join resync and a round triggered by DoResync,
// every one acks, no warning or error is logged on the way, and the
// reverse-order Close leaves the consumers reading channels that stay
// open and silent.
func TestPortedCnInfraFlavor(t *testing.T) {
	m := etcdtest.Start(t)
	c := m.Client(t)
	t.Setenv(resync.EnvServiceLabel, "node 1") // cn-infra's agent label names the agent
	log, hook := test.NewNullLogger()
	log.SetLevel(logrus.DebugLevel)

	var f portedFlavor
	f.Inject(log)
	f.ResyncOrch.Deps.Log = log.WithField("test", t.Name())
	f.ResyncOrch.Deps.Client = c
	startCoordinator(t, c, "co")
	plugins := f.Plugins()
	if err := startAgent(plugins); err != nil {
		t.Fatal(err)
	}
	stopped := false
	defer func() {
		if !stopped {
			stopAgent(plugins)
		}
	}()
	if a := f.ResyncOrch.Agent(); a != "node 1" {
		t.Fatalf("agent %q, want the MICROSERVICE_LABEL", a)
	}

	// The join resync of every registration, acked in etcd.
	for _, name := range portedNames {
		etcdtest.WaitFor(t, wait, "the join resync of "+name, func() bool { return f.startedFor(name) >= 1 })
	}
	rev, _ := readRevision(t, c)
	for _, name := range portedNames {
		waitAck(t, c, "node 1", name, rev.Revision)
	}

	// One round, asked for by the agent itself (DoResync returns at once).
	f.ResyncOrch.DoResync()
	var next schema.Revision
	etcdtest.WaitFor(t, wait, "the DoResync round", func() bool {
		var ok bool
		next, ok = readRevision(t, c)
		return ok && next.Revision > rev.Revision && next.State == schema.NotActive && next.Cause == schema.CauseManual
	})
	r := waitRound(t, c, next.Revision, wait)
	if r.Counts.Participants != len(portedNames) || r.Counts.Acked != len(portedNames) {
		t.Fatalf("round %d: %+v, want all %d registrations acked", next.Revision, r.Counts, len(portedNames))
	}
	for _, name := range portedNames {
		if n := f.startedFor(name); n < 2 {
			t.Errorf("%s got %d Started, want its join and the DoResync round", name, n)
		}
		ack, _ := waitAck(t, c, "node 1", name, next.Revision)
		if ack.Result != schema.ResultOK {
			t.Errorf("%s's ack: %+v", name, ack)
		}
	}
	if s := f.ResyncOrch.Stats(); s.Refused != 0 {
		t.Errorf("stats %+v: registrations refused", s)
	}
	// A clean start and round: nothing to warn about (in particular no
	// ack written before the agent name was claimed).
	for _, e := range hook.AllEntries() {
		if e.Level <= logrus.WarnLevel {
			t.Errorf("logged at %s on a clean start: %s %v", e.Level, e.Message, e.Data)
		}
	}

	// cn-infra's stop: resync first, its consumers after, still reading.
	resyncDone := f.ResyncOrch.Done()
	if err := f.ResyncOrch.Close(); err != nil {
		t.Fatal(err)
	}
	<-resyncDone
	silent(t, "VPP's channel after the resync plugin closed", f.VPP.reg.StatusChan())
	stopped = true
	if err := stopAgent(plugins[:len(plugins)-1]); err != nil {
		t.Fatal(err)
	}
}

// TestPortedFlavorZeroConfigErrors: a zero-value resync plugin with nothing
// set and nothing in the environment fails Init with an error naming the
// missing setting; no order of calls panics.
func TestPortedFlavorZeroConfigErrors(t *testing.T) {
	for _, v := range []string{resync.EnvEndpoints, resync.EnvAgent, resync.EnvServiceLabel, resync.EnvConfig, "RESYNC_PREFIX"} {
		t.Setenv(v, "")
		os.Unsetenv(v)
	}
	var p resync.Plugin
	reg := p.Register("K8s resources") // before Init: queued
	p.ReportError("K8s resources", errors.New("early"))
	p.DoResync()
	if err := p.Init(); err == nil || !strings.Contains(err.Error(), resync.EnvAgent) {
		t.Fatalf("Init without an agent name: %v, want an error naming %s", err, resync.EnvAgent)
	}
	t.Setenv(resync.EnvAgent, "node 1")
	if err := p.Init(); err == nil || !strings.Contains(err.Error(), resync.EnvEndpoints) {
		t.Fatalf("Init without endpoints: %v, want an error naming %s", err, resync.EnvEndpoints)
	}
	if err := p.AfterInit(); err == nil {
		t.Fatal("AfterInit without a working Init succeeded")
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if err := p.Init(); !errors.Is(err, resync.ErrClosed) {
		t.Fatalf("Init after Close: %v", err)
	}
	<-p.Done()
	silent(t, "a registration of a plugin that never ran", reg.StatusChan())

	// A config file gives what the environment does not.
	m := etcdtest.Start(t)
	file := t.TempDir() + "/resync.yaml"
	if err := os.WriteFile(file, []byte("endpoints: ["+m.Endpoint()+"]\nagent: from file\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	os.Unsetenv(resync.EnvAgent)
	t.Setenv(resync.EnvConfig, file)
	var q resync.Plugin
	q.Log = etcdtest.Logger(t, "debug")
	if err := q.Init(); err != nil {
		t.Fatal(err)
	}
	if err := q.Init(); err != nil { // Init twice is one Init
		t.Fatal(err)
	}
	q.Register("x")
	c := m.Client(t)
	waitRegistrations(t, c, "from file", 1)
	if err := q.Close(); err != nil { // closes the client it made
		t.Fatal(err)
	}
}

// portingChildEnv makes the test binary run the ported flavor as an agent
// process (TestPortedFlavorExitsZeroOnSIGTERM).
const portingChildEnv = "RESYNC_PORTING_CHILD"

// TestPortedFlavorExitsZeroOnSIGTERM runs the ported flavor as its own
// process, configured only by the environment (a zero-value resync plugin,
// no constructor), waits until its plugins took their join resync, sends
// SIGTERM and wants exit status 0: the reverse-order Close closes the
// resync plugin first and its consumers, still reading, must not get a nil
// event.
func TestPortedFlavorExitsZeroOnSIGTERM(t *testing.T) {
	if os.Getenv(portingChildEnv) != "" {
		runPortedAgent()
		return
	}
	m := etcdtest.Start(t)
	c := m.Client(t)
	writeRev(t, c, 1, resync.Started)
	cmd := exec.Command(os.Args[0], "-test.run=^TestPortedFlavorExitsZeroOnSIGTERM$", "-test.v=false")
	cmd.Env = append(os.Environ(), portingChildEnv+"=1", resync.EnvEndpoints+"="+m.Endpoint(), resync.EnvServiceLabel+"=node 2")
	var stderr etcdtest.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	ready := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if sc.Text() == "ready" {
				close(ready)
			}
		}
		exited <- cmd.Wait()
	}()
	select {
	case <-ready:
	case err := <-exited:
		t.Fatalf("the agent exited before it was ready: %v\n%s", err, stderr.String())
	case <-time.After(30 * time.Second):
		cmd.Process.Kill()
		<-exited
		t.Fatalf("the agent was not ready within 30 s\n%s", stderr.String())
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("the agent exited with %v on SIGTERM, want 0\n%s", err, stderr.String())
		}
	case <-time.After(30 * time.Second):
		cmd.Process.Kill()
		<-exited
		t.Fatalf("the agent did not exit within 30 s of SIGTERM\n%s", stderr.String())
	}
	if n := keys(t, c, layout.AgentRegistrations("node 2")); n != 0 {
		t.Errorf("%d registrations left after the agent exited", n)
	}
}

// runPortedAgent is the agent process: start, say "ready" once every
// registration took its join resync, stop on SIGTERM, exit 0.
func runPortedAgent() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	log := logrus.New()
	log.SetOutput(os.Stderr)
	var f portedFlavor
	f.Inject(log)
	plugins := f.Plugins()
	if err := startAgent(plugins); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	for _, name := range portedNames {
		for f.startedFor(name) == 0 {
			select {
			case <-ctx.Done():
				os.Exit(1)
			case <-time.After(10 * time.Millisecond): // polling the test's own counters
			}
		}
	}
	fmt.Println("ready")
	<-ctx.Done()
	if err := stopAgent(plugins); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	os.Exit(0)
}

// TestRegisterAfterSessionLogsNoWarning: a plugin that registers once the
// agent's session exists (a port that registers in AfterInit) takes its
// join resync and acks at once, while the registry is still claiming the
// agent name: the ack waits for the claim instead of failing the owner
// guard and logging "writing acks or requests failed; retrying".
func TestRegisterAfterSessionLogsNoWarning(t *testing.T) {
	m := etcdtest.Start(t)
	c := m.Client(t)
	writeRev(t, c, 1, resync.Started)
	log, hook := test.NewNullLogger()
	log.SetLevel(logrus.DebugLevel)
	var p resync.Plugin
	p.Log, p.Deps.Client, p.Config.Agent = log, c, "late registrant"
	if err := p.Init(); err != nil {
		t.Fatal(err)
	}
	if err := p.AfterInit(); err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	etcdtest.WaitFor(t, wait, "the agent's session", func() bool {
		resp, err := c.Leases(ctxT(t, 5*time.Second))
		return err == nil && len(resp.Leases) == 1
	})
	for i := range 5 {
		name := fmt.Sprintf("plugin %d", i)
		recv(t, p.Register(name), resync.Started, 1).Ack()
		waitAck(t, c, "late registrant", name, 1)
	}
	for _, e := range hook.AllEntries() {
		if e.Level <= logrus.WarnLevel {
			t.Errorf("logged at %s: %s %v", e.Level, e.Message, e.Data)
		}
	}
}

// The three breakages of issue 23, each alone, written so that they also
// compile against the code before it (where all three fail: a closed
// channel for the name, a nil-pointer panic in AfterInit, a nil event
// after Close).

func TestIssue23NameNotRefused(t *testing.T) {
	m := etcdtest.Start(t)
	p, err := resync.NewPlugin(resync.Deps{Client: m.Client(t)}, resync.DefaultConfig("node 1"))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	reg := p.Register("Config VPP default plug:IF/L2/L3")
	select {
	case ev, ok := <-reg.StatusChan():
		if !ok {
			t.Fatal("name refused: Register returned a closed channel")
		}
		_ = ev
	default:
	}
}

func TestIssue23ZeroValueNoPanic(t *testing.T) {
	defer func() {
		if r := recover(); r != nil {
			t.Fatalf("zero-value Plugin panicked: %v", r)
		}
	}()
	var p resync.Plugin
	p.Register("ifplugin")
	p.Init()
	p.AfterInit()
}

func TestIssue23NoNilEventAfterClose(t *testing.T) {
	m := etcdtest.Start(t)
	p, err := resync.NewPlugin(resync.Deps{Client: m.Client(t)}, resync.DefaultConfig("node 1"))
	if err != nil {
		t.Fatal(err)
	}
	reg := p.Register("ifplugin")
	p.AfterInit()
	ctx, cancel := context.WithCancel(context.Background())
	panicked := make(chan any, 1)
	go func() {
		defer func() { panicked <- recover() }()
		for {
			select {
			case ev := <-reg.StatusChan(): // no ok, as real consumers
				ev.ResyncStatus()
				ev.Ack()
			case <-ctx.Done():
				return
			}
		}
	}()
	p.Close() // cn-infra closes resync first; the consumer still reads
	select {
	case r := <-panicked:
		cancel()
		if r != nil {
			t.Fatalf("the consumer got a nil event after Close and panicked: %v", r)
		}
	case <-time.After(2 * time.Second):
		cancel()
		<-panicked
	}
}
