package coordinator

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jonboulle/clockwork"
	"github.com/sirupsen/logrus"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"

	"github.com/resyncd/resync/internal/backoff"
	"github.com/resyncd/resync/internal/etcderr"
	"github.com/resyncd/resync/schema"
)

// ErrDeposed is why a leader stopped leading: a fenced write was refused,
// its leader key vanished, or its session expired. It is logged, and the
// coordinator campaigns again.
var ErrDeposed = errors.New("coordinator: deposed")

// Option sets an optional collaborator.
type Option func(*Coordinator)

// WithLogger sets the logger (default logrus.StandardLogger()).
func WithLogger(l logrus.FieldLogger) Option { return func(c *Coordinator) { c.log = l } }

// WithHooks sets the hooks (default NopHooks).
func WithHooks(h Hooks) Option { return func(c *Coordinator) { c.hooks = h } }

// WithClock sets the clock (default: the real clock) of every time the
// coordinator decides on: round start, deadline and finish times, the
// coalescing window, the per-agent error backoff and its quiet period, and
// the pauses between retries. The timeouts of etcd calls (OpTimeout, the
// session TTL) stay on real time: they bound network calls to a real etcd.
// A test with a fake clock (clockwork.NewFakeClock) advances it past each of
// these exactly; watcher.Clock is the same interface.
func WithClock(c clockwork.Clock) Option {
	return func(co *Coordinator) {
		if c != nil {
			co.clock = c
		}
	}
}

// Status is a Coordinator's view, for /status and readiness.
type Status struct {
	ID string `json:"id"`
	// Leading: this coordinator is the leader.
	Leading bool `json:"leading"`
	// Campaigning: it has a session and is leader or standing by.
	Campaigning bool `json:"campaigning"`
	// Term is the leader key's create revision while leading.
	Term int64 `json:"term,omitempty"`
	// Revision is the last revision record this leader wrote or resumed.
	Revision *schema.Revision `json:"revision,omitempty"`
	// Progress counts the current round's outcomes while leading.
	Progress *schema.RoundCounts `json:"progress,omitempty"`
	// LargestWrite is the largest etcd request (keys plus values of its
	// operations, in bytes) this coordinator wrote since it started.
	LargestWrite int `json:"largest_write_bytes,omitempty"`
	// LargestWake is the most agents that one write of this coordinator
	// woke (by its own count of the agents behind the wake keys it
	// wrote): at most 512 for an all-scope round's shards, 128 for the
	// agent keys of a set-scope round (coordinator/wake.go).
	LargestWake int `json:"largest_wake,omitempty"`
	// LastError is the last etcd error of the campaign loop ("" if none).
	LastError string `json:"last_error,omitempty"`
	// ResumeFallbacks counts the rounds this coordinator resumed with the
	// live registrations because their participants could not be read:
	// the round's records were incomplete and etcd had compacted its
	// start revision. Such a round may include a plugin registered after
	// it started and miss one that left meanwhile (logged as an error).
	ResumeFallbacks int `json:"resume_fallbacks,omitempty"`
	// Wave is the window of the running wave round (nil: none).
	Wave *WaveStatus `json:"wave,omitempty"`
}

// Coordinator campaigns for leadership and, while leading, runs rounds. It
// is safe for concurrent use.
type Coordinator struct {
	cfg    Config
	layout schema.Layout
	c      *clientv3.Client
	log    logrus.FieldLogger
	hooks  Hooks
	clock  clockwork.Clock
	faults testFaults // zero unless built with the resync_chaos tag (testfaults.go)

	largestWrite atomic.Int64 // bytes of the largest request written (Status.LargestWrite)

	ctx       context.Context
	cancel    context.CancelFunc
	donec     chan struct{}
	closeOnce sync.Once
	// hardCtx ends when a Shutdown's budget is spent: the revoke on the way
	// out gives up then.
	hardCtx    context.Context
	hardCancel context.CancelCauseFunc

	mu       sync.Mutex
	status   Status
	closeErr error // the revoke's error on close
}

// New validates cfg and starts campaigning in the background. It does not
// wait for etcd.
func New(c *clientv3.Client, cfg Config, opts ...Option) (*Coordinator, error) {
	if c == nil {
		return nil, errors.New("coordinator: nil etcd client")
	}
	cfg = cfg.withDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	layout, _ := schema.NewLayout(cfg.Prefix)
	ctx, cancel := context.WithCancel(context.Background())
	hardCtx, hardCancel := context.WithCancelCause(context.Background())
	co := &Coordinator{
		cfg: cfg, layout: layout, c: c, log: logrus.StandardLogger(), hooks: NopHooks{}, clock: clockwork.NewRealClock(),
		ctx: ctx, cancel: cancel, donec: make(chan struct{}), hardCtx: hardCtx, hardCancel: hardCancel,
	}
	for _, o := range opts {
		o(co)
	}
	co.log = co.log.WithField("coordinator", cfg.ID)
	co.status.ID = cfg.ID
	go co.run()
	return co, nil
}

// ID is this coordinator's id.
func (co *Coordinator) ID() string { return co.cfg.ID }

// Status returns a copy of the current status.
func (co *Coordinator) Status() Status {
	co.mu.Lock()
	defer co.mu.Unlock()
	s := co.status
	if s.Revision != nil {
		r := *s.Revision
		s.Revision = &r
	}
	if s.Progress != nil {
		p := *s.Progress
		s.Progress = &p
	}
	if s.Wave != nil {
		w := *s.Wave
		s.Wave = &w
	}
	return s
}

func (co *Coordinator) setStatus(f func(*Status)) {
	co.mu.Lock()
	f(&co.status)
	co.mu.Unlock()
}

// Done is closed when the coordinator has stopped (after Close).
func (co *Coordinator) Done() <-chan struct{} { return co.donec }

// Close is Shutdown with a budget of OpTimeout (the steps are Shutdown's):
// the revoke is the only step that waits for etcd, and it is cut at the
// budget, so Close returns within about OpTimeout, also while etcd is
// unreachable. It returns the revoke's error (the election key then
// vanishes within the session TTL), or nil, as etcd's Session.Close does.
func (co *Coordinator) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), co.cfg.OpTimeout)
	defer cancel()
	return co.Shutdown(ctx)
}

// Shutdown stops the coordinator within the budget of ctx, in this order:
// leader work or the campaign stops at once (nothing waits for etcd); the
// session's lease is revoked, which deletes the election key, so a standby
// takes over in one round trip; every goroutine has ended when it returns.
// The revoke is bounded by ctx and by OpTimeout: while etcd is unreachable
// Shutdown returns when ctx ends, and the key then vanishes within the
// session TTL. The error is the revoke's (nil if the key was deleted).
// Shutdown and Close are idempotent: later calls wait for the first and
// return its error.
func (co *Coordinator) Shutdown(ctx context.Context) error {
	co.closeOnce.Do(co.cancel)
	stop := context.AfterFunc(ctx, func() {
		co.hardCancel(fmt.Errorf("shutdown budget spent: %w", context.Cause(ctx)))
	})
	<-co.donec
	stop()
	co.mu.Lock()
	defer co.mu.Unlock()
	return co.closeErr
}

// run is the campaign loop: session, campaign, lead until deposed, repeat.
func (co *Coordinator) run() {
	defer close(co.donec)
	defer co.hardCancel(nil)
	// A standby takes over within SessionTTL: campaigning again less often
	// than that gains nothing.
	bo := backoff.New(retryMin, co.cfg.SessionTTL)
	// A term that ends cleanly (deposed, resigned) campaigns again at
	// once; one that fails, after a pause.
	for co.ctx.Err() == nil {
		err := backoff.Retry(co.ctx, co.clock, bo, func(context.Context) error { return co.term() }, func(err error, pause time.Duration) {
			err = etcderr.Explain(err)
			co.setStatus(func(s *Status) { s.LastError = err.Error() })
			co.log.WithError(err).WithField("retry_in", pause).Warn("coordinator: campaign ended; campaigning again")
		})
		if err != nil {
			return
		}
	}
}

// term is one session: campaign, and lead if elected. It returns nil after a
// normal end of leadership (deposed), an error when etcd failed.
func (co *Coordinator) term() error {
	ttl := int((co.cfg.SessionTTL + time.Second - 1) / time.Second)
	gctx, cancel := context.WithTimeout(co.ctx, co.cfg.OpTimeout)
	lease, err := co.c.Grant(gctx, int64(ttl))
	cancel()
	if err != nil {
		return fmt.Errorf("coordinator: create session: %w", err)
	}
	log := co.log.WithField("lease", fmt.Sprintf("%x", int64(lease.ID)))
	sess, err := concurrency.NewSession(co.c, concurrency.WithLease(lease.ID), concurrency.WithTTL(ttl), concurrency.WithContext(co.ctx))
	if err != nil {
		co.revoke(lease.ID, log)
		return fmt.Errorf("coordinator: create session: %w", err)
	}
	defer func() {
		// The revoke deletes our election key: on Close that is the
		// resignation, and a standby takes over in one round trip.
		sess.Orphan()
		co.revoke(lease.ID, log)
		co.setStatus(func(s *Status) { s.Campaigning = false })
	}()
	co.setStatus(func(s *Status) { s.Campaigning = true; s.LastError = "" })

	cd := newCandidate(co.c, co.layout, co.cfg.ID, lease.ID, log)
	if err := co.campaign(sess, cd); err != nil {
		return err
	}
	term := cd.term
	log = log.WithField("term", term)
	log.Info("coordinator: elected leader")
	co.setStatus(func(s *Status) { s.Leading = true; s.Term = term })
	co.hooks.Leading(true)

	l := newLeader(co, sess, cd.key, term, log)
	err = l.run()

	co.setStatus(func(s *Status) { s.Leading = false; s.Term = 0; s.Progress = nil; s.Wave = nil })
	co.hooks.Leading(false)
	if co.ctx.Err() != nil {
		return nil
	}
	log.WithError(err).Warn("coordinator: stopped leading")
	if errors.Is(err, ErrDeposed) {
		return nil
	}
	return err
}

// revoke ends a session's lease, deleting its election key. It is bounded
// by OpTimeout and by a Shutdown's budget; on Close its error is kept for
// Close to return.
func (co *Coordinator) revoke(id clientv3.LeaseID, log logrus.FieldLogger) {
	ctx, cancel := context.WithTimeout(co.hardCtx, co.cfg.OpTimeout)
	defer cancel()
	_, err := co.c.Revoke(ctx, id)
	switch {
	case err != nil && errors.Is(err, rpctypes.ErrLeaseNotFound):
		err = nil // expired already: the key is gone
	case err != nil && co.hardCtx.Err() != nil:
		err = context.Cause(co.hardCtx)
	}
	closing := co.ctx.Err() != nil
	switch {
	case err != nil && closing:
		log.WithError(err).Warn("coordinator: revoking the session on close failed; a standby takes over after the session TTL")
		co.setStatus(func(*Status) {
			co.closeErr = fmt.Errorf("coordinator: close: revoke session (the election key vanishes within the session TTL instead): %w", err)
		})
	case err != nil:
		log.WithError(err).Debug("coordinator: revoke session")
	case closing:
		log.Info("coordinator: session revoked (resigned)")
	}
}

// campaign waits until elected. The campaign's etcd calls are each bounded
// by OpTimeout, its wait ends with the session (a candidate whose session is
// gone never believes it leads) or with Close.
func (co *Coordinator) campaign(sess *concurrency.Session, cd *candidate) error {
	if err := cd.campaign(co.ctx, sess.Done(), co.cfg.OpTimeout); err != nil {
		return fmt.Errorf("coordinator: campaign: %w", err)
	}
	// Elected as far as the keys say; the session may have expired in the
	// same instant. Check it before claiming leadership.
	select {
	case <-sess.Done():
		return fmt.Errorf("coordinator: campaign: %w: session expired", ErrDeposed)
	default:
	}
	return nil
}
