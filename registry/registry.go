package registry

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/jonboulle/clockwork"
	"github.com/sirupsen/logrus"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/resyncd/resync/internal/defaults"
	"github.com/resyncd/resync/schema"
)

// Errors returned by a Registry.
var (
	// ErrDuplicate is returned by Add and Register for a plugin name that is
	// already registered with this Registry.
	ErrDuplicate = errors.New("registry: plugin already registered")
	// ErrNotRegistered is returned by Deregister for an unknown plugin.
	ErrNotRegistered = errors.New("registry: plugin not registered")
	// ErrClosed is returned by every method after Close.
	ErrClosed = errors.New("registry: closed")
	// ErrDisplaced is wrapped by Err when a newer process with the same
	// agent name took the name over: this Registry stopped and writes
	// nothing more.
	ErrDisplaced = errors.New("registry: displaced by another process with the same agent name")
)

// Config configures a Registry.
type Config struct {
	// Agent is this agent's name (schema.ValidateName: any UTF-8 of 1-128
	// bytes without control characters). Required.
	Agent string
	// Prefix is the key prefix (default schema.DefaultPrefix).
	Prefix string
	// TTL is the session lease TTL: how long after the agent's death its
	// registrations vanish. Default 10 s; at least 1 s. etcd raises TTLs
	// below 1.5 x its election timeout.
	TTL time.Duration
	// OpTimeout bounds each etcd call of the session loop (default 5 s).
	OpTimeout time.Duration
	// RetryMin and RetryMax bound the pause between attempts to create a
	// session or write registrations while etcd is unreachable (defaults
	// 100 ms and 5 s).
	RetryMin, RetryMax time.Duration
}

// DefaultConfig returns the defaults for agent; New fills every zero field
// of a Config from it, and Validate checks the result.
func DefaultConfig(agent string) Config {
	return Config{
		Agent: agent,
		// The prefix the coordinator and resyncctl use by default.
		Prefix: schema.DefaultPrefix,
		// A dead agent's registrations vanish within 10 s; the keepalive
		// runs every TTL/3, so a busy etcd does not expire a live agent.
		TTL: 10 * time.Second,
		// An etcd call slower than this is treated as failed and retried.
		OpTimeout: 5 * time.Second,
		// First retry soon enough to ride out an etcd leader election;
		// at most one attempt per agent every 5 s while etcd is down, so a
		// fleet does not hammer it.
		RetryMin: 100 * time.Millisecond,
		RetryMax: 5 * time.Second,
	}
}

// withDefaults is c with its zero fields from DefaultConfig: the
// configuration New runs and Validate checks.
func (c Config) withDefaults() Config { return defaults.Fill(c, DefaultConfig(c.Agent)) }

// Validate checks the configuration that runs: c with its zero fields from
// DefaultConfig.
func (c Config) Validate() error {
	c = c.withDefaults()
	if err := schema.ValidateName("agent", c.Agent); err != nil {
		return fmt.Errorf("registry: config: %w", err)
	}
	if _, err := schema.NewLayout(c.Prefix); err != nil {
		return fmt.Errorf("registry: config: %w", err)
	}
	switch {
	case c.TTL < time.Second:
		return fmt.Errorf("registry: config: TTL %v is below the 1s minimum of etcd leases", c.TTL)
	case c.RetryMin < 0 || c.RetryMax < 0 || c.OpTimeout < 0:
		return errors.New("registry: config: durations must not be negative")
	case c.RetryMax < c.RetryMin:
		return fmt.Errorf("registry: config: RetryMax %v is below RetryMin %v", c.RetryMax, c.RetryMin)
	}
	return nil
}

// Option sets an optional collaborator.
type Option func(*Registry)

// WithOwnerWatch makes the Registry watch its owner key (owners/<agent>)
// from its first claim on, so that it notices within about a second when a
// newer process takes the agent name over (resync.Plugin uses it). Without
// it, a displaced Registry notices at its next write or new session. It
// costs one watch per Registry: leave it off where one client serves many
// Registries (tests, simulators).
func WithOwnerWatch() Option { return func(r *Registry) { r.ownerWatch = true } }

// WithClock sets the clock of the times the Registry writes for people
// (Registration.RegisteredAt, Owner.Started and ClaimedAt; default: the
// system clock). No decision of the Registry depends on it: which process
// owns the agent name is decided by etcd's order (owner.go), so a host
// whose clock is off neither loses its name nor takes it wrongly.
func WithClock(c clockwork.Clock) Option { return func(r *Registry) { r.clock = c } }

// WithLogger sets the logger (default: logrus.StandardLogger()).
func WithLogger(l logrus.FieldLogger) Option { return func(r *Registry) { r.log = l } }

// State is a Registry's view of its session.
type State struct {
	// Connected: a session is alive and every registration is written on it.
	Connected bool
	// Lease is the current session's lease (0 when none).
	Lease clientv3.LeaseID
	// Generation counts sessions: 1 for the first, more after each loss.
	Generation uint64
	// Owned: the agent name's owner key is on Lease (this process claimed
	// the name on this session). Writes fenced by the owner key (acks)
	// wait for it instead of failing.
	Owned bool
}

type entry struct {
	reg     schema.Registration
	written uint64 // generation whose session holds the key; 0 = not written
	rev     int64  // etcd revision by which it was written (for ownerState)
}

// Registry is one agent's set of registrations over one etcd session. It is
// safe for concurrent use.
type Registry struct {
	cfg    Config
	layout schema.Layout
	c      *clientv3.Client
	log    logrus.FieldLogger

	ctx       context.Context
	cancel    context.CancelFunc
	donec     chan struct{}
	kick      chan struct{} // cap 1: the loop has work
	closeOnce sync.Once

	mu        sync.Mutex
	entries   []*entry // in registration order
	removed   []schema.PluginID
	nextOrder int
	state     State
	closed    bool
	final     bool          // loop ended: changed stays closed
	changed   chan struct{} // closed and replaced on every change
	revokeErr error

	// One process per agent name (owner.go).
	clock      clockwork.Clock
	process    string        // random id of this Registry
	started    time.Time     // when New ran (r.clock; for people only)
	born       int64         // header revision of the first lease grant: birth in etcd's order
	claimed    bool          // this process has owned the name
	ownedGen   uint64        // generation whose lease is on the owner key; 0 = none
	claimRev   int64         // etcd revision of the last claim
	claims     uint64        // claims made: a read before the last one is stale
	wantOwner  bool          // Claim: own the name even without registrations
	rewatch    chan struct{} // cap 1: a claim happened; the owner watch starts again
	displaced  error
	dispc      chan struct{}  // closed when displaced
	ownerWG    sync.WaitGroup // the owner watch, started at the first claim
	ownerWatch bool           // WithOwnerWatch

	// Refused registrations, listed in the owner key (Refused).
	refused        int
	refusedNames   []string
	refusedWritten int // refused when sync last wrote the owner key
}

// New starts a Registry for cfg.Agent. It does not wait for etcd: the
// session is created in the background, retried while etcd is unreachable,
// and registrations are written as soon as it exists.
func New(c *clientv3.Client, cfg Config, opts ...Option) (*Registry, error) {
	if c == nil {
		return nil, errors.New("registry: nil etcd client")
	}
	cfg = cfg.withDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	layout, _ := schema.NewLayout(cfg.Prefix)
	ctx, cancel := context.WithCancel(context.Background())
	r := &Registry{
		cfg: cfg, layout: layout, c: c, log: logrus.StandardLogger(),
		ctx: ctx, cancel: cancel, donec: make(chan struct{}), kick: make(chan struct{}, 1),
		changed: make(chan struct{}),
		process: newProcessID(), dispc: make(chan struct{}), rewatch: make(chan struct{}, 1),
		clock: clockwork.NewRealClock(),
	}
	for _, o := range opts {
		o(r)
	}
	r.started = r.clock.Now().UTC()
	r.log = r.log.WithField("agent", cfg.Agent)
	go r.loop()
	return r, nil
}

// Agent is the agent's name.
func (r *Registry) Agent() string { return r.cfg.Agent }

// Process is this Registry's process id, as written in the owner key.
func (r *Registry) Process() string { return r.process }

// Layout is the key layout in use.
func (r *Registry) Layout() schema.Layout { return r.layout }

// Client is the etcd client the registry writes with.
func (r *Registry) Client() *clientv3.Client { return r.c }

// Add registers plugin without waiting for etcd: it is validated, given the
// next order, and written by the session loop as soon as a session exists
// (and again after every session loss). It returns ErrDuplicate,
// schema.ErrInvalidName or ErrClosed without writing anything.
//
// A name refused as invalid is counted and listed in the agent's owner key
// (schema.Owner.Refused), so that operators see it (resyncctl agents).
func (r *Registry) Add(plugin string) (schema.Registration, error) {
	if err := schema.ValidateName("plugin", plugin); err != nil {
		r.noteRefused(plugin)
		return schema.Registration{}, fmt.Errorf("registry: register: %w", err)
	}
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return schema.Registration{}, ErrClosed
	}
	for _, e := range r.entries {
		if e.reg.Plugin == plugin {
			r.mu.Unlock()
			return e.reg, fmt.Errorf("%w: %q on agent %q", ErrDuplicate, plugin, r.cfg.Agent)
		}
	}
	reg := schema.Registration{Agent: r.cfg.Agent, Plugin: plugin, Order: r.nextOrder, RegisteredAt: r.clock.Now().UTC()}
	r.nextOrder++
	r.entries = append(r.entries, &entry{reg: reg})
	r.removed = slices.DeleteFunc(r.removed, func(id schema.PluginID) bool { return id.Plugin == plugin })
	r.notifyLocked()
	r.mu.Unlock()
	r.poke()
	return reg, nil
}

// Register is Add, then waits until the registration is written in etcd or
// ctx ends. If ctx ends first the plugin stays registered and is written
// when etcd is reachable; the ctx error is returned.
func (r *Registry) Register(ctx context.Context, plugin string) (schema.Registration, error) {
	reg, err := r.Add(plugin)
	if err != nil {
		return reg, err
	}
	for {
		r.mu.Lock()
		written, closed, ch := false, r.closed, r.changed
		for _, e := range r.entries {
			if e.reg.Plugin == plugin {
				written = e.written != 0 && e.written == r.state.Generation
			}
		}
		r.mu.Unlock()
		switch {
		case written:
			return reg, nil
		case closed:
			return reg, ErrClosed
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return reg, fmt.Errorf("registry: register %q: not yet written to etcd (it will be when etcd is reachable): %w", plugin, ctx.Err())
		}
	}
}

// Claim makes the Registry own the agent name as soon as it has a session,
// even while it holds no registration (otherwise it claims the name with
// its first registration). A Watcher calls it before it writes a request:
// like acks, requests are written only while the owner key is on the
// writer's lease, so that a displaced or lease-less process writes none.
// It does not wait; it is idempotent.
func (r *Registry) Claim() {
	r.mu.Lock()
	r.wantOwner = true
	r.mu.Unlock()
	r.poke()
}

// Deregister removes plugin; its key is deleted by the session loop. It does
// not wait for etcd.
func (r *Registry) Deregister(plugin string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return ErrClosed
	}
	i := slices.IndexFunc(r.entries, func(e *entry) bool { return e.reg.Plugin == plugin })
	if i < 0 {
		return fmt.Errorf("%w: %q on agent %q", ErrNotRegistered, plugin, r.cfg.Agent)
	}
	r.entries = slices.Delete(r.entries, i, i+1)
	r.removed = append(r.removed, schema.PluginID{Agent: r.cfg.Agent, Plugin: plugin})
	r.notifyLocked()
	r.poke()
	return nil
}

// Plugins returns the registrations in registration order.
func (r *Registry) Plugins() []schema.Registration {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]schema.Registration, len(r.entries))
	for i, e := range r.entries {
		out[i] = e.reg
	}
	return out
}

// noteRefused records a refused plugin name for the owner key; the session
// loop writes it.
func (r *Registry) noteRefused(plugin string) {
	r.mu.Lock()
	r.refused++
	if len(r.refusedNames) < schema.MaxRefusedNames {
		r.refusedNames = append(r.refusedNames, schema.RefusedName(plugin))
	}
	r.mu.Unlock()
	r.poke()
}

// Refused returns how many registrations were refused as invalid, and the
// first schema.MaxRefusedNames of their names (quoted by
// schema.RefusedName), as the owner key lists them.
func (r *Registry) Refused() (n int, names []string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.refused, slices.Clone(r.refusedNames)
}

// State returns the current session state.
func (r *Registry) State() State {
	r.mu.Lock()
	defer r.mu.Unlock()
	st := r.state
	st.Owned = st.Lease != 0 && r.ownedGen == st.Generation
	return st
}

// Changed returns a channel that is closed at the next change of State or
// of the registrations (a new one is made each time): wait on it, then read
// State and Plugins. It is closed for good after Close.
func (r *Registry) Changed() <-chan struct{} {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.changed
}

// Done is closed when the Registry is closed and its loop has ended.
func (r *Registry) Done() <-chan struct{} { return r.donec }

// Close stops the session loop and revokes the lease, so every registration
// (and every other key on the lease) vanishes at once. It is idempotent and
// bounded by the OpTimeout; the error is that of the revoke (the keys then
// vanish within the TTL). After a displacement the loop has already stopped
// and revoked; Close then returns nil (Err says why it stopped).
func (r *Registry) Close() error {
	var err error
	r.closeOnce.Do(func() {
		r.mu.Lock()
		r.closed = true
		r.mu.Unlock()
		r.cancel()
		<-r.donec
		err = r.revokeErr
	})
	return err
}

func (r *Registry) poke() {
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

func (r *Registry) notifyLocked() {
	if r.final {
		return
	}
	close(r.changed)
	r.changed = make(chan struct{})
}
