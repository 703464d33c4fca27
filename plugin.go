package resync

import (
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/sirupsen/logrus"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/resyncd/resync/registry"
	"github.com/resyncd/resync/schema"
	"github.com/resyncd/resync/watcher"
)

// Errors returned by a Plugin. The sentinels of the packages underneath are
// re-exported, so that errors.Is works without importing them.
var (
	// ErrClosed is returned by RegisterE after Close (or after the Plugin
	// was displaced), and by Init after Close.
	ErrClosed = errors.New("resync: closed")
	// ErrDuplicate is wrapped by RegisterE for a plugin name registered
	// before on this Plugin.
	ErrDuplicate = registry.ErrDuplicate
	// ErrInvalidName is wrapped by RegisterE and New for a name outside
	// what schema.ValidateName accepts (empty, invalid UTF-8, a control
	// character, over 128 bytes).
	ErrInvalidName = schema.ErrInvalidName
	// ErrDisplaced is wrapped by Err when a newer process with the same
	// agent name took the name over: this Plugin stopped delivering and
	// closed every status channel (see Done).
	ErrDisplaced = registry.ErrDisplaced
	// ErrQueueFull is the error ReportError logs when too many resync
	// requests wait to be written (etcd unreachable).
	ErrQueueFull = watcher.ErrQueueFull
)

// Deps are the dependencies injected into a Plugin, grouped apart from its
// configuration as in the seed. Plugin embeds them, as the seed's did, so a
// cn-infra flavor sets them by field before Init (f.Resync.Deps.Log = ...
// or f.Resync.Log = ...); New and NewPlugin take them as an argument. Init
// reads them once: an assignment after Init has run is ignored (the
// dependencies of a running plugin never change under it).
type Deps struct {
	// Log receives the plugin's logs, with fields agent, plugin, revision.
	// Default logrus.StandardLogger().
	Log logrus.FieldLogger
	// Client is the etcd client; the Plugin does not close it. If nil,
	// Init makes one from the environment (RESYNC_ENDPOINTS and the other
	// RESYNC_ variables of the binaries, or the file RESYNC_CONFIG names)
	// and closes it on Close.
	Client *clientv3.Client
	// Clock is the time source of timestamps and timeouts. Default: the
	// system clock.
	Clock Clock
}

// Config configures a Plugin. Zero durations mean their defaults.
type Config struct {
	// Agent is this agent process's name (any UTF-8 of 1-128 bytes without
	// control characters: schema.ValidateName), unique in the cluster. A
	// restarted agent uses the same name. If empty, Init reads it from
	// RESYNC_AGENT, else MICROSERVICE_LABEL (cn-infra's service label),
	// else the file RESYNC_CONFIG names; none is an Init error.
	Agent string
	// Prefix is the etcd key prefix. If empty, Init reads RESYNC_PREFIX
	// (or the config file); default schema.DefaultPrefix ("/resync/").
	Prefix string
	// TTL is the agent's session lease TTL: how long after the agent's
	// death its registrations and acks vanish. Default 10 s, at least 1 s.
	TTL time.Duration
	// AcceptTimeout is how long a plugin has to take an event from its
	// status channel; then a "timeout" ack is written for it (Started) or
	// the event is dropped (NotActive), and the next plugin proceeds.
	// Default 1 s.
	AcceptTimeout time.Duration
	// AckTimeout is how long a plugin has to Ack a Started event it took;
	// then a "timeout" ack is written for it and the next plugin proceeds.
	// Default 10 s.
	AckTimeout time.Duration
}

// DefaultConfig returns the defaults for agent: those of the registry and
// the watcher underneath, which fill a zero field the same way.
func DefaultConfig(agent string) Config {
	rc, wc := registry.DefaultConfig(agent), watcher.DefaultConfig()
	return Config{Agent: agent, Prefix: rc.Prefix, TTL: rc.TTL, AcceptTimeout: wc.AcceptTimeout, AckTimeout: wc.AckTimeout}
}

// Validate checks the configuration that runs: zero fields take their
// defaults first.
func (c Config) Validate() error {
	if err := c.registryConfig().Validate(); err != nil {
		return fmt.Errorf("resync: %w", err)
	}
	if err := c.watcherConfig().Validate(); err != nil {
		return fmt.Errorf("resync: %w", err)
	}
	return nil
}

// registryConfig and watcherConfig hand c's fields down; the packages fill
// the zero ones from their DefaultConfig.
func (c Config) registryConfig() registry.Config {
	return registry.Config{Agent: c.Agent, Prefix: c.Prefix, TTL: c.TTL}
}

func (c Config) watcherConfig() watcher.Config {
	return watcher.Config{AcceptTimeout: c.AcceptTimeout, AckTimeout: c.AckTimeout}
}

// Plugin is the resync plugin of one agent process: it implements Subscriber
// and Reporter, and a cn-infra plugin's lifecycle (Init, AfterInit, Close,
// String), so it can be listed with the agent's other plugins. It is safe
// for concurrent use.
//
// The zero value is a working plugin, as cn-infra's was: a flavor holds it
// by value, sets Deps and Config by field (or not), and the agent calls
// Init, AfterInit and Close. Init fills what is not set from the
// environment (see Deps.Client and Config.Agent); a missing setting is an
// error from Init, never a panic. No order of calls panics: Register,
// ReportError and DoResync before Init are queued and applied by Init (in
// cn-infra the resync plugin is listed last, so the Init of the plugins
// that Register runs before its own); AfterInit without Init runs Init;
// Close before Init only marks it closed; Init twice is one Init. New and
// NewPlugin build and Init one for code that prefers constructors.
type Plugin struct {
	// Deps are the dependencies; set them before Init.
	Deps
	// Config configures the plugin; set it before Init. Zero fields take
	// their defaults, an empty Agent comes from the environment.
	Config Config

	chanOnce  sync.Once
	stopc     chan struct{} // closed by Close: the supervisor ends
	donec     chan struct{} // closed when the Plugin stops delivering
	supdone   chan struct{} // closed when the supervisor ended
	closeOnce sync.Once

	mu        sync.Mutex
	inited    bool
	closed    bool
	err       error
	cfg       Config // the configuration running, from Init on
	log       logrus.FieldLogger
	ownClient *clientv3.Client // made by Init from the environment: closed by Close
	reg       *registry.Registry
	w         *watcher.Watcher
	regs      map[string]*registration
	queue     []*registration  // registered before Init, in order (refused ones too)
	early     []schema.Request // ReportError and DoResync before Init
	refused   uint64           // refused after Close (the watcher counts the others)
}

var (
	_ Subscriber = (*Plugin)(nil)
	_ Reporter   = (*Plugin)(nil)
)

// maxEarlyRequests bounds the ReportError and DoResync calls kept before
// Init; more are merged by the coordinator into the same round anyway.
const maxEarlyRequests = 16

// New starts the resync plugin of agent cfg.Agent for a program that does
// not drive a plugin lifecycle: events are delivered as soon as plugins
// register (it is NewPlugin followed by AfterInit). It does not wait for
// etcd: the agent's session, its registrations and the watch of the resync
// revision are set up in the background and retried while etcd is
// unreachable. It returns Init's errors.
func New(deps Deps, cfg Config) (*Plugin, error) {
	p, err := NewPlugin(deps, cfg)
	if err != nil {
		return nil, err
	}
	if err := p.AfterInit(); err != nil {
		return nil, err
	}
	return p, nil
}

// NewPlugin makes and Inits the resync plugin of agent cfg.Agent for a
// cn-infra style agent, which calls Init on every plugin in order (Init
// again is a no-op), then AfterInit on every plugin: plugins Register in
// their Init and may start reading their channels in their AfterInit, so
// no event is delivered before this Plugin's AfterInit. The agent's session
// and registrations are set up at once, in the background. It returns
// Init's errors.
func NewPlugin(deps Deps, cfg Config) (*Plugin, error) {
	p := &Plugin{Deps: deps, Config: cfg}
	if err := p.Init(); err != nil {
		return nil, err
	}
	return p, nil
}

// chans makes the lifecycle channels once: the zero Plugin has none.
func (p *Plugin) chans() {
	p.chanOnce.Do(func() {
		p.stopc, p.donec, p.supdone = make(chan struct{}), make(chan struct{}), make(chan struct{})
	})
}

// logger is the plugin's logger, also before Init.
func (p *Plugin) logger() logrus.FieldLogger {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.loggerLocked()
}

func (p *Plugin) loggerLocked() logrus.FieldLogger {
	if p.log != nil {
		return p.log
	}
	l := p.Deps.Log
	if l == nil {
		l = logrus.StandardLogger()
	}
	if p.Config.Agent != "" {
		return l.WithField("agent", p.Config.Agent)
	}
	return l
}

// Init is the first step of the cn-infra lifecycle: it reads Deps and
// Config (filling what is not set from the environment: see Deps.Client
// and Config.Agent), starts the agent's session and registrations in the
// background (it does not wait for etcd), and registers the plugins that
// called Register before it, in their order. Delivery waits for AfterInit.
// An invalid or missing setting is an error naming it. Init after a
// successful Init returns nil and changes nothing; after Close it returns
// ErrClosed.
func (p *Plugin) Init() error {
	p.chans()
	p.mu.Lock()
	defer p.mu.Unlock()
	switch {
	case p.closed:
		return ErrClosed
	case p.inited:
		return nil
	}
	deps, cfg, own, err := resolve(p.Deps, p.Config)
	if err != nil {
		return err
	}
	if err := p.startLocked(deps, cfg); err != nil {
		if own != nil {
			own.Close()
		}
		return err
	}
	p.ownClient, p.inited = own, true
	for _, r := range p.queue {
		if err := p.w.RegisterOn(r.name, r.ch); err == nil {
			p.regs[r.name] = r
		}
		// A refused one was logged by Register; the watcher counts it and
		// the registry lists it in the owner record.
	}
	p.queue = nil
	for _, req := range p.early {
		p.requestLocked(req)
	}
	p.early = nil
	go p.supervise()
	return nil
}

// startLocked makes the registry and the (held) watcher of the resolved
// deps and cfg.
func (p *Plugin) startLocked(deps Deps, cfg Config) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	if deps.Log == nil {
		deps.Log = logrus.StandardLogger()
	}
	if deps.Clock == nil {
		deps.Clock = watcher.SystemClock()
	}
	reg, err := registry.New(deps.Client, cfg.registryConfig(), registry.WithLogger(deps.Log), registry.WithClock(deps.Clock), registry.WithOwnerWatch())
	if err != nil {
		return fmt.Errorf("resync: %w", err)
	}
	w, err := watcher.New(reg, cfg.watcherConfig(), watcher.WithLogger(deps.Log), watcher.WithClock(deps.Clock), watcher.Held())
	if err != nil {
		reg.Close()
		return fmt.Errorf("resync: %w", err)
	}
	p.cfg, p.reg, p.w = cfg, reg, w
	p.log = deps.Log.WithField("agent", cfg.Agent)
	if p.regs == nil {
		p.regs = map[string]*registration{}
	}
	return nil
}

// supervise waits for Close or a displacement. Displaced: stop delivering
// (the status channels stay open and silent) and tell the owner (Done,
// Err).
func (p *Plugin) supervise() {
	defer close(p.supdone)
	select {
	case <-p.stopc:
		return
	case <-p.reg.Displaced():
	}
	err := p.reg.Err()
	p.mu.Lock()
	p.closed = true
	p.err = err
	p.mu.Unlock()
	p.w.Close()
	p.log.WithError(err).Error("resync: another process took over this agent name; no more resync events (status channels stay open; see Done and Err)")
	close(p.donec)
}

// AfterInit is the second step of the cn-infra lifecycle: events start to
// be delivered (first each plugin's join resync, in registration order). A
// plugin that reads its channel only later still gets its join resync when
// it does (see package watcher: a join resync is never lost). Without a
// successful Init before, it runs Init first and returns its error. It is
// idempotent and never blocks.
func (p *Plugin) AfterInit() error {
	if err := p.Init(); err != nil {
		return err
	}
	p.mu.Lock()
	w := p.w
	p.mu.Unlock()
	w.Start()
	return nil
}

// String is the plugin's name in a cn-infra agent: "resync".
func (p *Plugin) String() string { return "resync" }

// Done is closed when the Plugin stops delivering events: after Close, or
// when a newer process with the same agent name took the name over (then
// Err wraps ErrDisplaced). Status channels are never closed: a consumer
// that wants to end its loop selects on Done too.
func (p *Plugin) Done() <-chan struct{} {
	p.chans()
	return p.donec
}

// Err is nil while the Plugin runs and after Close; an error wrapping
// ErrDisplaced (naming the process and lease that now own the agent name)
// once it was displaced.
func (p *Plugin) Err() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.err
}

// Agent is the agent's name: the one running from Init on, Config.Agent
// before.
func (p *Plugin) Agent() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.inited {
		return p.cfg.Agent
	}
	return p.Config.Agent
}

// Register registers a plugin for resync events, in the seed's shape: it is
// meant to be called in Init (before or after this Plugin's Init) and
// returns at once, even while etcd is unreachable. The plugin's first event
// is its join resync (Started for the current revision), delivered once
// etcd can be read and AfterInit ran.
//
// It never panics and never returns a closed channel (a consumer that reads
// `ev := <-ch` without checking ok would get a nil event): a duplicate name
// is logged and the existing Registration returned; a name that cannot be
// stored (schema.ValidateName) or a call after Close is logged at error
// level, counted (Stats.Refused; the agent's owner record lists the name,
// see resyncctl agents) and gets a Registration whose channel stays open and
// never delivers. Use RegisterE to get these errors.
func (p *Plugin) Register(resyncName string) Registration {
	r, err := p.RegisterE(resyncName)
	if err != nil {
		log := p.logger().WithError(err).WithField("plugin", resyncName)
		if errors.Is(err, ErrDuplicate) {
			log.Error("resync: register: a duplicate name; returning its existing registration")
		} else {
			log.Error("resync: register refused: this plugin will never receive a resync event")
		}
	}
	return r
}

// RegisterE is Register returning its error: one wrapping ErrDuplicate
// (with the existing Registration), one wrapping ErrInvalidName, or
// ErrClosed (both with a Registration whose channel never delivers).
func (p *Plugin) RegisterE(resyncName string) (Registration, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if r, ok := p.regs[resyncName]; ok {
		return r, fmt.Errorf("resync: register %q: %w", resyncName, registry.ErrDuplicate)
	}
	r := &registration{name: resyncName, ch: make(chan StatusEvent)}
	if p.regs == nil {
		p.regs = map[string]*registration{}
	}
	if p.closed {
		p.refused++
		return r, ErrClosed
	}
	if !p.inited {
		p.queue = append(p.queue, r)
		if err := schema.ValidateName("plugin", resyncName); err != nil {
			return r, fmt.Errorf("resync: register: %w", err)
		}
		p.regs[resyncName] = r
		return r, nil
	}
	if err := p.w.RegisterOn(resyncName, r.ch); err != nil {
		if errors.Is(err, watcher.ErrClosed) {
			err = ErrClosed
		}
		return r, fmt.Errorf("resync: register %q: %w", resyncName, err)
	}
	p.regs[resyncName] = r
	return r, nil
}

// ReportError asks the coordinator for a resync of this agent because plugin
// name failed with err: it writes requests/agent/<agent>/<id> (cause error, reason
// "<name>: <error text>" cut to schema.MaxReasonLen) in the background,
// retried until written or the Plugin is closed. It never waits for etcd.
// Before Init the request is kept and written from Init on.
func (p *Plugin) ReportError(name string, err error) {
	text := "unknown error (nil)"
	if err != nil {
		text = err.Error()
	}
	p.logger().WithField("plugin", name).WithField("error", text).Warn("resync: error reported; requesting a resync of this agent")
	p.request(schema.Request{Reason: schema.Cut(name+": "+text, schema.MaxReasonLen), Cause: schema.CauseError})
}

// DoResync asks for a resync of this agent's plugins (cn-infra v1.3's
// DoResync): it queues the agent-scoped request requests/agent/<agent>/<id>
// (cause manual) and returns at once; it never blocks on etcd, and before
// Init the request is kept and written from Init on. Unlike cn-infra's,
// which ran the resync of every plugin synchronously before returning,
// the round happens later, when the coordinator starts it (after its
// coalescing window, merged with other requests): the plugins get Started
// on their channels as usual. Use `resyncctl trigger --wait` or the round
// history to see it complete. Errors (a full queue, Close) are logged.
func (p *Plugin) DoResync() {
	p.logger().Info("resync: DoResync: requesting a resync of this agent")
	p.request(schema.Request{Reason: "DoResync: the agent asked for a resync of its plugins", Cause: schema.CauseManual})
}

// request writes req (its scope and writer set here) through the watcher,
// or keeps it until Init.
func (p *Plugin) request(req schema.Request) {
	p.mu.Lock()
	defer p.mu.Unlock()
	switch {
	case p.closed:
		p.loggerLocked().WithField("reason", req.Reason).Error("resync: closed: no resync can be requested")
	case !p.inited:
		if len(p.early) < maxEarlyRequests {
			p.early = append(p.early, req)
		}
	default:
		p.requestLocked(req)
	}
}

func (p *Plugin) requestLocked(req schema.Request) {
	req.Scope = schema.Scope{Agent: p.cfg.Agent}
	req.RequestedBy = p.cfg.Agent
	id, err := p.w.Request(req)
	log := p.log.WithField("reason", req.Reason)
	if err != nil {
		log.WithError(err).Error("resync: no resync can be requested")
		return
	}
	log.WithField("request", id).Debug("resync: resync request queued")
}

// Stats returns the delivery counters of this agent's watcher (zero before
// Init, but for Refused).
func (p *Plugin) Stats() Stats {
	p.mu.Lock()
	w, refused := p.w, p.refused
	for _, r := range p.queue {
		if schema.ValidateName("plugin", r.name) != nil {
			refused++
		}
	}
	p.mu.Unlock()
	var s Stats
	if w != nil {
		s = w.Stats()
	}
	s.Refused += refused
	return s
}

// Close shuts the plugin down, in this order: no new Register succeeds;
// the watcher stops (no new resync is delivered, pending accept and ack
// timeouts are cancelled, queued writes are abandoned); the agent's lease
// is revoked, so its registrations and acks vanish at once; an etcd client
// Init made is closed. Status channels are never closed: they stay open
// and silent (cn-infra closes plugins in reverse order, so resync, listed
// last, is closed first while its consumers still read; a closed channel
// would hand them nil events). Done is closed. Every goroutine has ended
// when it returns. It is idempotent and bounded (the revoke by 5 s; if it
// fails the keys vanish within the TTL and its error is returned). Before
// Init it only marks the Plugin closed.
//
// After a displacement the Plugin has already stopped; Close then only
// waits for it and returns nil (Err says why it stopped).
func (p *Plugin) Close() error {
	p.chans()
	var err error
	p.closeOnce.Do(func() {
		p.mu.Lock()
		p.closed = true
		inited := p.inited
		p.mu.Unlock()
		close(p.stopc)
		if inited {
			<-p.supdone
			p.w.Close()
			err = p.reg.Close()
			if p.ownClient != nil {
				if cerr := p.ownClient.Close(); cerr != nil && err == nil {
					err = fmt.Errorf("resync: close the etcd client: %w", cerr)
				}
			}
		}
		select {
		case <-p.donec: // displaced: already closed
		default:
			close(p.donec)
		}
	})
	return err
}
