package watcher

import (
	"context"
	"slices"

	"github.com/sirupsen/logrus"

	"github.com/resyncd/resync/schema"
)

// dispatch is the only sender on the plugins' status channels. It looks for
// the next thing to deliver (first Started, in registration order, then
// NotActive), delivers it, and otherwise waits for a new record or plugin.
// When the Watcher closes it closes every status channel.
func (w *Watcher) dispatch() {
	defer w.closeChannels()
	for w.ctx.Err() == nil {
		w.mu.Lock()
		rec, recCtx, plugins := w.rec, w.recCtx, slices.Clone(w.plugins)
		w.mu.Unlock()
		if rec != nil {
			if p, join := w.nextStarted(*rec, plugins); p != nil {
				w.deliverStarted(p, *rec, recCtx, join)
				continue
			}
			if p := w.nextNotActive(*rec, plugins); p != nil {
				w.deliverNotActive(p, *rec, recCtx)
				continue
			}
		}
		select {
		case <-w.ctx.Done():
		case <-w.kick:
		}
	}
}

func (w *Watcher) closeChannels() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.closed = true
	for _, p := range w.plugins {
		close(p.ch)
	}
}

// nextStarted is the first plugin, in registration order, that is owed
// Started for rec: one in its scope while it is Started, or one that never
// had any revision (its join resync, whatever the scope and state).
func (w *Watcher) nextStarted(rec schema.Revision, plugins []*plugin) (p *plugin, join bool) {
	for _, p := range plugins {
		if p.handled >= rec.Revision {
			continue
		}
		if p.handled == 0 {
			return p, true
		}
		if rec.State == schema.Started && w.participates(rec, p.name) {
			return p, false
		}
	}
	return nil, false
}

// nextNotActive is the first plugin that took Started for rec, now
// NotActive, and has not been told yet.
func (w *Watcher) nextNotActive(rec schema.Revision, plugins []*plugin) *plugin {
	if rec.State != schema.NotActive {
		return nil
	}
	for _, p := range plugins {
		if p.taken == rec.Revision && p.notActive < rec.Revision {
			return p
		}
	}
	return nil
}

// deliverStarted offers Started to p and waits until it is acked or timed
// out. If the record changes before p takes the event, the event is
// withdrawn and the dispatcher looks again. Once taken, the wait is not cut
// short by a newer record: one plugin of an agent reloads at a time.
func (w *Watcher) deliverStarted(p *plugin, rec schema.Revision, recCtx context.Context, join bool) {
	log := w.log.WithFields(logrus.Fields{"plugin": p.name, "revision": rec.Revision, "join": join})
	if recCtx.Err() != nil {
		return // the record changed since it was read
	}
	ev := w.newEvent(p.name, schema.Started, rec, join)
	start := w.clock.Now()
	select {
	case p.ch <- ev:
	case <-w.clock.After(w.cfg.AcceptTimeout):
		p.handled = rec.Revision
		w.stats.acceptTimeouts.Add(1)
		ev.finish(schema.ResultTimeout, "event not taken from the status channel within the accept timeout of "+w.cfg.AcceptTimeout.String())
		log.WithField("accept_timeout", w.cfg.AcceptTimeout).Warn("watcher: plugin did not take Started; timeout ack written, next plugin proceeds")
		return
	case <-recCtx.Done():
		if w.ctx.Err() == nil {
			w.stats.withdrawn.Add(1)
			log.Info("watcher: Started withdrawn before the plugin took it: the revision record changed")
		}
		return
	}
	p.handled, p.taken = rec.Revision, rec.Revision
	w.stats.started.Add(1)
	log.WithField("accepted_in", w.clock.Now().Sub(start)).Debug("watcher: plugin took Started")
	select {
	case <-ev.ackc:
		log.WithField("acked_in", w.clock.Now().Sub(start)).Debug("watcher: plugin acked")
	case <-w.clock.After(w.cfg.AckTimeout):
		if ev.finish(schema.ResultTimeout, "not acked within the ack timeout of "+w.cfg.AckTimeout.String()) {
			w.stats.ackTimeouts.Add(1)
			log.WithField("ack_timeout", w.cfg.AckTimeout).Warn("watcher: plugin did not ack; timeout ack written, next plugin proceeds")
		}
	case <-w.ctx.Done():
	}
}

// deliverNotActive offers NotActive to p; dropped and counted if not taken
// within the accept timeout or overtaken by a newer record.
func (w *Watcher) deliverNotActive(p *plugin, rec schema.Revision, recCtx context.Context) {
	p.notActive = rec.Revision
	log := w.log.WithFields(logrus.Fields{"plugin": p.name, "revision": rec.Revision})
	if recCtx.Err() != nil {
		if w.ctx.Err() == nil {
			w.stats.notActiveDropped.Add(1)
		}
		return
	}
	ev := w.newEvent(p.name, schema.NotActive, rec, false)
	select {
	case p.ch <- ev:
		w.stats.notActive.Add(1)
	case <-w.clock.After(w.cfg.AcceptTimeout):
		w.stats.notActiveDropped.Add(1)
		log.Warn("watcher: plugin did not take NotActive within the accept timeout; dropped")
	case <-recCtx.Done():
		if w.ctx.Err() == nil {
			w.stats.notActiveDropped.Add(1)
			log.Info("watcher: NotActive dropped: a newer revision arrived")
		}
	}
}
