package coordinator

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sirupsen/logrus"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"

	"github.com/resyncd/resync/internal/etcdspace"
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
	// LastError is the last etcd error of the campaign loop ("" if none).
	LastError string `json:"last_error,omitempty"`
}

// Coordinator campaigns for leadership and, while leading, runs rounds. It
// is safe for concurrent use.
type Coordinator struct {
	cfg    Config
	layout schema.Layout
	c      *clientv3.Client
	log    logrus.FieldLogger
	hooks  Hooks
	faults testFaults // zero unless built with the resync_chaos tag (testfaults.go)

	largestWrite atomic.Int64 // bytes of the largest request written (Status.LargestWrite)

	ctx       context.Context
	cancel    context.CancelFunc
	donec     chan struct{}
	closeOnce sync.Once

	mu     sync.Mutex
	status Status
}

// New validates cfg and starts campaigning in the background. It does not
// wait for etcd.
func New(c *clientv3.Client, cfg Config, opts ...Option) (*Coordinator, error) {
	if c == nil {
		return nil, errors.New("coordinator: nil etcd client")
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	layout, _ := schema.NewLayout(cfg.Prefix)
	ctx, cancel := context.WithCancel(context.Background())
	co := &Coordinator{
		cfg: cfg, layout: layout, c: c, log: logrus.StandardLogger(), hooks: NopHooks{},
		ctx: ctx, cancel: cancel, donec: make(chan struct{}),
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
	return s
}

func (co *Coordinator) setStatus(f func(*Status)) {
	co.mu.Lock()
	f(&co.status)
	co.mu.Unlock()
}

// Done is closed when the coordinator has stopped (after Close).
func (co *Coordinator) Done() <-chan struct{} { return co.donec }

// Close stops leader work at once, resigns (a standby takes over in one
// round trip), revokes the session and waits for every goroutine. It is
// idempotent and bounded by OpTimeout.
func (co *Coordinator) Close() error {
	co.closeOnce.Do(func() {
		co.cancel()
		<-co.donec
	})
	return nil
}

// run is the campaign loop: session, campaign, lead until deposed, repeat.
func (co *Coordinator) run() {
	defer close(co.donec)
	pause := 100 * time.Millisecond
	for co.ctx.Err() == nil {
		err := co.term()
		if co.ctx.Err() != nil {
			return
		}
		if err != nil {
			err = etcdspace.Explain(err)
			co.setStatus(func(s *Status) { s.LastError = err.Error() })
			co.log.WithError(err).WithField("retry_in", pause).Warn("coordinator: campaign ended; campaigning again")
			t := time.NewTimer(pause)
			select {
			case <-co.ctx.Done():
				t.Stop()
				return
			case <-t.C:
			}
			pause = min(2*pause, co.cfg.SessionTTL)
			continue
		}
		pause = 100 * time.Millisecond
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
	sess, err := concurrency.NewSession(co.c, concurrency.WithLease(lease.ID), concurrency.WithTTL(ttl), concurrency.WithContext(co.ctx))
	if err != nil {
		return fmt.Errorf("coordinator: create session: %w", err)
	}
	log := co.log.WithField("lease", fmt.Sprintf("%x", int64(lease.ID)))
	defer func() {
		// Revoke with a fresh ctx: the session's own ctx may be cancelled.
		sess.Orphan()
		ctx, cancel := context.WithTimeout(context.Background(), co.cfg.OpTimeout)
		defer cancel()
		if _, err := co.c.Revoke(ctx, lease.ID); err != nil {
			log.WithError(err).Debug("coordinator: revoke session")
		}
		co.setStatus(func(s *Status) { s.Campaigning = false })
	}()
	co.setStatus(func(s *Status) { s.Campaigning = true; s.LastError = "" })

	elec := concurrency.NewElection(sess, co.layout.Election())
	if err := co.campaign(sess, elec); err != nil {
		return err
	}
	term := elec.Rev()
	log = log.WithField("term", term)
	log.Info("coordinator: elected leader")
	co.setStatus(func(s *Status) { s.Leading = true; s.Term = term })
	co.hooks.Leading(true)

	l := newLeader(co, sess, elec.Key(), term, log)
	err = l.run()

	co.setStatus(func(s *Status) { s.Leading = false; s.Term = 0; s.Progress = nil })
	co.hooks.Leading(false)
	if co.ctx.Err() != nil {
		// Graceful: resign so a standby takes over in one round trip.
		ctx, cancel := context.WithTimeout(context.Background(), co.cfg.OpTimeout)
		defer cancel()
		if rerr := elec.Resign(ctx); rerr != nil {
			log.WithError(rerr).Warn("coordinator: resign failed; the standby takes over after the session TTL")
		} else {
			log.Info("coordinator: resigned")
		}
		return nil
	}
	log.WithError(err).Warn("coordinator: stopped leading")
	if errors.Is(err, ErrDeposed) {
		return nil
	}
	return err
}

// campaign waits until elected. Campaign does not return when its session
// expires, so it is raced against the session's Done: a candidate whose
// session is gone never believes it leads.
func (co *Coordinator) campaign(sess *concurrency.Session, elec *concurrency.Election) error {
	ctx, cancel := context.WithCancel(co.ctx)
	defer cancel()
	errc := make(chan error, 1)
	go func() { errc <- elec.Campaign(ctx, co.cfg.ID) }()
	select {
	case err := <-errc:
		if err != nil {
			return fmt.Errorf("coordinator: campaign: %w", err)
		}
	case <-sess.Done():
		cancel()
		<-errc
		return fmt.Errorf("coordinator: campaign: %w: session expired while campaigning", ErrDeposed)
	}
	// Elected as far as Campaign knows; the session may have expired in the
	// same instant. Check it and the key before claiming leadership.
	select {
	case <-sess.Done():
		return fmt.Errorf("coordinator: campaign: %w: session expired", ErrDeposed)
	default:
	}
	return nil
}

// Leader returns the current leader's id and the leader key's create
// revision, read from etcd ("" if none leads).
func Leader(ctx context.Context, c *clientv3.Client, layout schema.Layout) (id string, term int64, err error) {
	resp, err := c.Get(ctx, layout.Election()+"/", clientv3.WithFirstCreate()...)
	if err != nil {
		return "", 0, fmt.Errorf("coordinator: read leader: %w", err)
	}
	if len(resp.Kvs) == 0 {
		return "", 0, nil
	}
	return string(resp.Kvs[0].Value), resp.Kvs[0].CreateRevision, nil
}
