package coordinator

import (
	"errors"
	"sort"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/resyncd/resync/schema"
)

// Operators pause, resume and abort a running wave round with a request
// under requests/operator/ that carries a schema.Control (resyncctl pause,
// resume, abort). The request is durable until the leader applies it: one
// fenced Txn writes the round's plan with the change and deletes the
// request, so a failover neither loses nor repeats it.

// controlSeen keeps a control request until step applies it.
func (l *leader) controlSeen(it reqItem) {
	if _, seen := l.controls[it.key]; !seen {
		l.log.WithField("request", it.key).WithField("round", it.req.Control.Round).WithField("action", it.req.Control.Action).
			WithField("requested_by", it.req.RequestedBy).Info("coordinator: wave control requested")
	}
	l.controls[it.key] = it.req
}

// applyControls applies the pending control requests, oldest first, to the
// running wave round; one naming another round (or no wave round) is
// logged and deleted. Its error is only the end of leadership.
func (l *leader) applyControls(now time.Time) error {
	if len(l.controls) == 0 || l.resume != nil {
		return nil
	}
	keys := make([]string, 0, len(l.controls))
	for k := range l.controls {
		keys = append(keys, k)
	}
	sort.Strings(keys) // request ids sort by time
	for _, k := range keys {
		req := l.controls[k]
		delete(l.controls, k)
		c := *req.Control
		del := []clientv3.Op{clientv3.OpDelete(k)}
		rs := l.round
		if rs == nil || rs.wave == nil || rs.rec.Revision != c.Round {
			l.log.WithField("request", k).WithField("round", c.Round).WithField("action", c.Action).
				Warn("coordinator: a wave control names no running wave round; deleting it")
			if err := l.fencedTxn(del); err != nil && !errors.Is(err, errPermanent) {
				return err
			}
			continue
		}
		l.control(c.Action, req.RequestedBy, now)
		if err := l.writePlan(del); err != nil {
			return err
		}
	}
	return nil
}

// control changes the running wave round's plan by action.
func (l *leader) control(action, by string, now time.Time) {
	w := l.round.wave
	p := &w.plan
	switch action {
	case schema.ActionPause:
		p.Paused = true
	case schema.ActionResume:
		p.Paused = false
		if p.Phase == schema.PhaseCanaryPause {
			p.Phase, p.ResumeAt = schema.PhaseRolling, time.Time{}
		}
		w.lastProgress = now // the progress deadline counts from here
	case schema.ActionAbort:
		if p.Aborted == "" {
			l.abortWave(now, "aborted by "+by)
		}
	}
	l.log.WithField("revision", l.round.rec.Revision).WithField("action", action).WithField("by", by).
		WithField("paused", p.Paused).WithField("phase", p.Phase).Info("coordinator: wave control applied")
}
