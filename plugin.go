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
	// [A-Za-z0-9._-] or 1-128 characters.
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
// configuration as in the seed. They are given to New or NewPlugin and fixed
// then: unlike the seed's Plugin, which embedded Deps, a Plugin has no
// exported fields, so that no assignment after New (p.Log = ...) can be
// silently ignored.
type Deps struct {
	// Log receives the plugin's logs, with fields agent, plugin, revision.
	// Default logrus.StandardLogger().
	Log logrus.FieldLogger
	// Client is the etcd client. Required. The Plugin does not close it.
	Client *clientv3.Client
	// Clock is the time source of timestamps and timeouts. Default: the
	// system clock.
	Clock Clock
}

// Config configures a Plugin. Zero durations mean their defaults.
type Config struct {
	// Agent is this agent process's name ([A-Za-z0-9._-], 1-128), unique in
	// the cluster. Required. A restarted agent uses the same name.
	Agent string
	// Prefix is the etcd key prefix. Default schema.DefaultPrefix
	// ("/resync/").
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
// for concurrent use. Its dependencies (Deps) and Config are given to New or
// NewPlugin.
type Plugin struct {
	cfg     Config
	log     logrus.FieldLogger
	reg     *registry.Registry
	w       *watcher.Watcher
	once    sync.Once
	stopc   chan struct{} // closed by Close: the supervisor ends
	donec   chan struct{} // closed when the Plugin stops delivering
	supdone chan struct{} // closed when the supervisor ended

	mu     sync.Mutex
	regs   map[string]Registration
	closed bool
	err    error
}

var (
	_ Subscriber = (*Plugin)(nil)
	_ Reporter   = (*Plugin)(nil)
)

// New starts the resync plugin of agent cfg.Agent for a program that does
// not drive a plugin lifecycle: events are delivered as soon as plugins
// register (it is NewPlugin followed by Init and AfterInit). It does not
// wait for etcd: the agent's session, its registrations and the watch of
// the resync revision are set up in the background and retried while etcd
// is unreachable. It returns an error only for invalid deps or config.
func New(deps Deps, cfg Config) (*Plugin, error) {
	p, err := NewPlugin(deps, cfg)
	if err != nil {
		return nil, err
	}
	p.w.Start()
	return p, nil
}

// NewPlugin makes the resync plugin of agent cfg.Agent for a cn-infra style
// agent, which calls Init on every plugin in order, then AfterInit on every
// plugin: plugins Register in their Init and may start reading their
// channels in their AfterInit, so no event is delivered before this
// Plugin's AfterInit. The agent's session and registrations are set up at
// once, in the background (Register works before Init). It returns an
// error only for invalid deps or config.
func NewPlugin(deps Deps, cfg Config) (*Plugin, error) {
	if deps.Client == nil {
		return nil, errors.New("resync: Deps.Client is nil: give the etcd client (clientv3.New)")
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if deps.Log == nil {
		deps.Log = logrus.StandardLogger()
	}
	if deps.Clock == nil {
		deps.Clock = watcher.SystemClock()
	}
	reg, err := registry.New(deps.Client, cfg.registryConfig(), registry.WithLogger(deps.Log), registry.WithClock(deps.Clock), registry.WithOwnerWatch())
	if err != nil {
		return nil, fmt.Errorf("resync: %w", err)
	}
	w, err := watcher.New(reg, cfg.watcherConfig(), watcher.WithLogger(deps.Log), watcher.WithClock(deps.Clock), watcher.Held())
	if err != nil {
		reg.Close()
		return nil, fmt.Errorf("resync: %w", err)
	}
	p := &Plugin{
		cfg: cfg, reg: reg, w: w,
		log:   deps.Log.WithField("agent", cfg.Agent),
		regs:  map[string]Registration{},
		stopc: make(chan struct{}), donec: make(chan struct{}), supdone: make(chan struct{}),
	}
	go p.supervise()
	return p, nil
}

// supervise waits for Close or a displacement. Displaced: stop delivering
// (the watcher closes every status channel) and tell the owner (Done, Err).
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
	p.log.WithError(err).Error("resync: another process took over this agent name; status channels closed, no more resync events")
	close(p.donec)
}

// Init is the first step of the cn-infra lifecycle. Nothing to do: the
// Plugin was set up by NewPlugin, and plugins may Register before and
// after it. It returns ErrClosed after Close.
func (p *Plugin) Init() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return ErrClosed
	}
	return nil
}

// AfterInit is the second step of the cn-infra lifecycle: events start to
// be delivered (first each plugin's join resync, in registration order). A
// plugin that reads its channel only later still gets its join resync when
// it does (see package watcher: a join resync is never lost). It is
// idempotent and never blocks.
func (p *Plugin) AfterInit() error {
	p.w.Start()
	return nil
}

// String is the plugin's name in a cn-infra agent: "resync".
func (p *Plugin) String() string { return "resync" }

// Done is closed when the Plugin stops delivering events: after Close, or
// when a newer process with the same agent name took the name over (then
// Err wraps ErrDisplaced). Its status channels are closed by then.
func (p *Plugin) Done() <-chan struct{} { return p.donec }

// Err is nil while the Plugin runs and after Close; an error wrapping
// ErrDisplaced (naming the process and lease that now own the agent name)
// once it was displaced.
func (p *Plugin) Err() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.err
}

// Agent is the agent's name.
func (p *Plugin) Agent() string { return p.cfg.Agent }

// Register registers a plugin for resync events, in the seed's shape: it is
// meant to be called in Init and returns at once, even while etcd is
// unreachable. The plugin's first event is its join resync (Started for the
// current revision), delivered once etcd can be read.
//
// It never panics: a duplicate name is logged and the existing Registration
// returned; an invalid name, or a call after Close, is logged and a
// Registration with a closed channel returned. Use RegisterE to get these
// errors.
func (p *Plugin) Register(resyncName string) Registration {
	r, err := p.RegisterE(resyncName)
	if err != nil {
		p.log.WithError(err).WithField("plugin", resyncName).Error("resync: register")
	}
	return r
}

// RegisterE is Register returning its error: one wrapping ErrDuplicate
// (with the existing Registration), one wrapping ErrInvalidName, or
// ErrClosed (both with a Registration whose channel is closed).
func (p *Plugin) RegisterE(resyncName string) (Registration, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return closedRegistration(resyncName), ErrClosed
	}
	if r, ok := p.regs[resyncName]; ok {
		return r, fmt.Errorf("resync: register %q: %w", resyncName, registry.ErrDuplicate)
	}
	ch, err := p.w.Register(resyncName)
	if err != nil {
		return closedRegistration(resyncName), fmt.Errorf("resync: register %q: %w", resyncName, err)
	}
	r := &registration{name: resyncName, ch: ch}
	p.regs[resyncName] = r
	return r, nil
}

func closedRegistration(name string) Registration {
	ch := make(chan StatusEvent)
	close(ch)
	return &registration{name: name, ch: ch}
}

// ReportError asks the coordinator for a resync of this agent because plugin
// name failed with err: it writes requests/agent/<agent>/<id> (cause error, reason
// "<name>: <error text>" cut to schema.MaxReasonLen) in the background,
// retried until written or the Plugin is closed. It never waits for etcd.
func (p *Plugin) ReportError(name string, err error) {
	text := "unknown error (nil)"
	if err != nil {
		text = err.Error()
	}
	log := p.log.WithField("plugin", name).WithField("error", text)
	req := schema.Request{
		Reason:      schema.Truncate(name+": "+text, schema.MaxReasonLen),
		Cause:       schema.CauseError,
		Scope:       schema.Scope{Agent: p.cfg.Agent},
		RequestedBy: p.cfg.Agent,
	}
	id, qerr := p.w.Request(req)
	if qerr != nil {
		log.WithError(qerr).Error("resync: error reported, but no resync can be requested")
		return
	}
	log.WithField("request", id).Warn("resync: error reported; requesting a resync of this agent")
}

// Stats returns the delivery counters of this agent's watcher.
func (p *Plugin) Stats() Stats { return p.w.Stats() }

// Close shuts the plugin down, in this order: no new Register succeeds;
// the watcher stops (no new resync is delivered, pending accept and ack
// timeouts are cancelled, queued writes are abandoned) and closes every
// status channel; the agent's lease is revoked, so its registrations and
// acks vanish at once. Every goroutine has ended when it returns. It is
// idempotent and bounded (the revoke by 5 s; if it fails the keys vanish
// within the TTL and its error is returned).
//
// After a displacement the Plugin has already stopped; Close then only
// waits for it and returns nil (Err says why it stopped).
func (p *Plugin) Close() error {
	var err error
	p.once.Do(func() {
		p.mu.Lock()
		p.closed = true
		p.mu.Unlock()
		close(p.stopc)
		<-p.supdone
		p.w.Close()
		err = p.reg.Close()
		select {
		case <-p.donec: // displaced: already closed
		default:
			close(p.donec)
		}
	})
	return err
}
