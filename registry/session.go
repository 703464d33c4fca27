package registry

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"

	"github.com/resyncd/resync/internal/backoff"
	"github.com/resyncd/resync/internal/etcderr"
	"github.com/resyncd/resync/schema"
)

// loop owns the session: create it, write registrations on it, re-create it
// when it is lost, revoke it on Close.
func (r *Registry) loop() {
	defer func() {
		r.ownerWG.Wait() // the owner watch ends with r.ctx, done whenever loop returns
		r.mu.Lock()
		r.state.Connected = false
		close(r.changed)
		r.final = true
		r.mu.Unlock()
		close(r.donec)
	}()
	var gen uint64
	for r.ctx.Err() == nil {
		var sess *concurrency.Session
		if backoff.Retry(r.ctx, nil, r.backoff(), func(ctx context.Context) (err error) {
			sess, err = r.newSession(ctx)
			return err
		}, r.logRetry("registry: cannot create an etcd session; retrying")) != nil {
			return
		}
		gen++
		r.mu.Lock()
		r.state = State{Lease: sess.Lease(), Generation: gen}
		r.notifyLocked()
		r.mu.Unlock()
		log := r.log.WithField("lease", fmt.Sprintf("%x", int64(sess.Lease()))).WithField("generation", gen)
		log.Info("registry: session created")

		r.serve(sess, gen)
		sess.Orphan()
		r.mu.Lock()
		r.ownedGen = 0
		r.mu.Unlock()
		if r.ctx.Err() != nil {
			ctx, cancel := context.WithTimeout(context.Background(), r.cfg.OpTimeout)
			_, err := r.c.Revoke(ctx, sess.Lease())
			cancel()
			if err != nil && !errors.Is(err, rpctypes.ErrLeaseNotFound) {
				r.revokeErr = fmt.Errorf("registry: revoke lease on close (keys vanish within the TTL instead): %w", err)
				log.WithError(err).Warn("registry: revoke on close failed")
			}
			return
		}
		log.Warn("registry: session lost (lease expired); creating a new one and registering again")
		r.mu.Lock()
		r.state = State{Generation: gen}
		r.notifyLocked()
		r.mu.Unlock()
	}
}

// newSession grants a lease (within ctx) and starts a session on it that
// lasts until r.ctx ends or the lease is lost.
func (r *Registry) newSession(ctx context.Context) (*concurrency.Session, error) {
	ctx, cancel := context.WithTimeout(ctx, r.cfg.OpTimeout)
	defer cancel()
	ttl := int64((r.cfg.TTL + time.Second - 1) / time.Second)
	lease, err := r.c.Grant(ctx, ttl)
	if err != nil {
		return nil, err
	}
	r.mu.Lock()
	if r.born == 0 {
		r.born = lease.ResponseHeader.Revision
	}
	r.mu.Unlock()
	return concurrency.NewSession(r.c, concurrency.WithLease(lease.ID), concurrency.WithTTL(int(ttl)), concurrency.WithContext(r.ctx))
}

// serve writes registrations on sess until it is lost or ctx ends: after
// each kick, it syncs until a sync succeeds. sess.Ctx() ends with r.ctx or
// when the session is lost, so that either also ends a pause.
func (r *Registry) serve(sess *concurrency.Session, gen uint64) {
	for {
		if backoff.Retry(sess.Ctx(), nil, r.backoff(), func(context.Context) error { return r.trySync(sess.Lease(), gen) },
			r.logRetry("registry: writing registrations failed; retrying")) != nil {
			return
		}
		select {
		case <-r.kick:
		case <-sess.Done():
			return
		case <-r.ctx.Done():
			return
		}
	}
}

// trySync is one attempt of serve: sync, again at once after a lost or
// refused claim (claim again, or find out we are displaced) or a rewrite
// (write all again). A lost lease and a displaced process are permanent.
func (r *Registry) trySync(lease clientv3.LeaseID, gen uint64) error {
	for {
		err := r.sync(lease, gen)
		switch {
		case errors.Is(err, rpctypes.ErrLeaseNotFound), errors.Is(err, ErrDisplaced):
			return backoff.Permanent(err)
		case errors.Is(err, errNotOwner), errors.Is(err, errRewrite):
			continue
		}
		return err
	}
}

// sync writes every registration not yet on this generation's lease and
// deletes removed ones, in registration order, a Txn per schema.MaxTxnOps.
func (r *Registry) sync(lease clientv3.LeaseID, gen uint64) error {
	r.mu.Lock()
	owned, want := r.ownedGen == gen, r.wantOwner
	var todo []schema.Registration
	for _, e := range r.entries {
		if e.written != gen {
			todo = append(todo, e.reg)
		}
	}
	var removed []schema.PluginID
	for _, id := range r.removed {
		if !slices.ContainsFunc(r.entries, func(e *entry) bool { return e.reg.Plugin == id.Plugin }) {
			removed = append(removed, id)
		}
	}
	wasConnected := r.state.Connected
	refused := r.refused
	r.mu.Unlock()

	var ops []clientv3.Op
	var last int64 // etcd revision of the last write
	for _, id := range removed {
		ops = append(ops, clientv3.OpDelete(r.layout.Registration(id.Agent, id.Plugin)))
	}
	for _, reg := range todo {
		b, err := schema.Encode(reg)
		if err != nil {
			return err // cannot happen: names were validated by Add
		}
		ops = append(ops, clientv3.OpPut(r.layout.Registration(reg.Agent, reg.Plugin), string(b), clientv3.WithLease(lease)))
	}
	if !owned && (len(ops) > 0 || want || refused != r.writtenRefused()) {
		// Own the agent name first (owner.go); acks wait for the claim
		// (State.Owned). The first registrations go in the claim's Txn
		// when nobody owned it.
		n, err := r.claim(lease, gen, ops[:min(len(ops), schema.MaxTxnOps-1)])
		if err != nil {
			return err
		}
		ops = ops[n:]
		r.mu.Lock()
		last = r.claimRev
		r.mu.Unlock()
	}
	for len(ops) > 0 {
		n := min(len(ops), schema.MaxTxnOps)
		rev, err := r.writeOwned(lease, ops[:n]...)
		if err != nil {
			return err
		}
		last = rev
		ops = ops[n:]
	}
	if err := r.writeRefused(lease, refused); err != nil {
		return err
	}

	r.mu.Lock()
	defer r.mu.Unlock()
	for _, e := range r.entries {
		for _, reg := range todo {
			if e.reg == reg {
				e.written, e.rev = gen, last
			}
		}
	}
	r.removed = slices.DeleteFunc(r.removed, func(id schema.PluginID) bool { return slices.Contains(removed, id) })
	all := true
	for _, e := range r.entries {
		all = all && e.written == gen
	}
	if all && r.state.Generation == gen {
		r.state.Connected = true
	}
	if len(todo) > 0 || len(removed) > 0 || r.state.Connected != wasConnected || owned != (r.ownedGen == gen) {
		r.notifyLocked()
	}
	return nil
}

func (r *Registry) writtenRefused() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.refusedWritten
}

// writeRefused rewrites the owner key (guarded by owner) when refused
// registrations were added since it was last written, so that the owner
// record lists them.
func (r *Registry) writeRefused(lease clientv3.LeaseID, refused int) error {
	if refused == r.writtenRefused() {
		return nil
	}
	if _, err := r.writeOwned(lease, clientv3.OpPut(r.layout.Owner(r.cfg.Agent), r.ownerValue(lease), clientv3.WithLease(lease))); err != nil {
		return err
	}
	r.mu.Lock()
	r.refusedWritten = refused
	r.mu.Unlock()
	return nil
}

// writeOwned writes ops in one Txn guarded by the agent name's owner key being
// on lease, so that a displaced process never writes over the new owner,
// and returns the Txn's etcd revision. A failed guard disowns the
// registry (the loop claims again, or finds it is displaced): errNotOwner.
func (r *Registry) writeOwned(lease clientv3.LeaseID, ops ...clientv3.Op) (int64, error) {
	ctx, cancel := context.WithTimeout(r.ctx, r.cfg.OpTimeout)
	defer cancel()
	resp, err := r.c.Txn(ctx).If(clientv3.Compare(clientv3.LeaseValue(r.layout.Owner(r.cfg.Agent)), "=", int64(lease))).
		Then(ops...).Commit()
	if err != nil {
		return 0, err
	}
	if !resp.Succeeded {
		r.disowned()
		return 0, errNotOwner
	}
	return resp.Header.Revision, nil
}

// backoff paces one of the Registry's retry loops (RetryMin to RetryMax)
// on the real clock (the Registry's clock stamps times for people only).
func (r *Registry) backoff() *backoff.Backoff { return backoff.New(r.cfg.RetryMin, r.cfg.RetryMax) }

// logRetry logs a failure that backoff.Retry retries after pause.
func (r *Registry) logRetry(msg string) func(err error, pause time.Duration) {
	return func(err error, pause time.Duration) {
		r.log.WithError(etcderr.Explain(err)).WithField("retry_in", pause).Warn(msg)
	}
}
