package watcher

import (
	"context"
	"reflect"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/resyncd/resync/schema"
)

// dispatch is the only sender on the plugins' status channels. It looks for
// the next thing to deliver (first Started, in registration order, then
// NotActive), delivers it, and otherwise waits for a new record or plugin,
// meanwhile offering parked join resyncs. When the Watcher closes it closes
// every status channel. Nothing is delivered before Start.
func (w *Watcher) dispatch() {
	defer w.markClosed()
	select {
	case <-w.startc:
	case <-w.ctx.Done():
		return
	}
	var resets uint64
	for w.ctx.Err() == nil {
		w.mu.Lock()
		// w.plugins only grows by append, which never writes the
		// elements below its length: a capped view is a snapshot.
		rec, recCtx, plugins, r := w.rec, w.recCtx, w.plugins[:len(w.plugins):len(w.plugins)], w.resets
		w.mu.Unlock()
		if r != resets {
			resets = r
			for _, p := range plugins {
				p.handled, p.taken, p.notActive = 0, 0, 0
			}
		}
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
		w.idle(rec, recCtx, plugins)
	}
}

// idle waits for a new record, a new plugin or the end, offering meanwhile
// the current record's Started to every parked plugin (its join resync). A
// plugin that takes it is served like any Started: the dispatcher waits for
// its ack or the ack timeout.
func (w *Watcher) idle(rec *schema.Revision, recCtx context.Context, plugins []*plugin) {
	var recDone <-chan struct{} // nil: blocks for ever
	if recCtx != nil {
		recDone = recCtx.Done()
	}
	select { // a change already there wins over a late offer
	case <-w.ctx.Done():
		return
	case <-recDone:
		return
	default:
	}
	const fixed = 3
	cases := []reflect.SelectCase{
		{Dir: reflect.SelectRecv, Chan: reflect.ValueOf(w.ctx.Done())},
		{Dir: reflect.SelectRecv, Chan: reflect.ValueOf(w.kick)},
		{Dir: reflect.SelectRecv, Chan: reflect.ValueOf(recDone)},
	}
	var parked []*plugin
	var events []*Event
	if rec != nil && recCtx.Err() == nil {
		for _, p := range plugins {
			if p.parked {
				ev := w.newEvent(p.name, schema.Started, *rec, true)
				parked, events = append(parked, p), append(events, ev)
				cases = append(cases, reflect.SelectCase{Dir: reflect.SelectSend, Chan: reflect.ValueOf(p.ch), Send: reflect.ValueOf(StatusEvent(ev))})
			}
		}
	}
	i, _, _ := reflect.Select(cases)
	if i < fixed {
		return
	}
	p, ev := parked[i-fixed], events[i-fixed]
	log := func() logrus.FieldLogger {
		return w.log.WithFields(logrus.Fields{"plugin": p.name, "revision": rec.Revision, "join": true})
	}
	log().Info("watcher: plugin took its join Started late (it was parked after the accept timeout)")
	w.took(p, ev, *rec, w.clock.Now(), log)
}

// debug reports whether debug lines would be logged, so that the hot path
// builds none that are discarded (an unknown logger: assume yes).
func (w *Watcher) debug() bool {
	if e, ok := w.log.(*logrus.Entry); ok && e.Logger != nil {
		return e.Logger.IsLevelEnabled(logrus.DebugLevel)
	}
	return true
}

// markClosed ends delivery for good. The status channels are not closed:
// real cn-infra consumers read them with `ev := <-ch` without checking ok,
// and a closed channel would hand them a nil event (see package doc).
func (w *Watcher) markClosed() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.closed = true
}

// nextStarted is the first plugin, in registration order, that is owed
// Started for rec: one in its scope while it is Started, or one that has not
// had its join resync yet (whatever the scope and state). A parked plugin is
// offered its join here only as a participant of a Started round (it then
// gets a timeout ack like any participant); otherwise idle offers it.
func (w *Watcher) nextStarted(rec schema.Revision, plugins []*plugin) (p *plugin, join bool) {
	for _, p := range plugins {
		if p.handled >= rec.Revision {
			continue
		}
		participant := rec.State == schema.Started && w.participates(rec, p.name)
		switch {
		case p.parked && participant:
			return p, true // its join, offered in order to a round it is part of
		case p.parked:
			continue // idle offers it
		case !p.joined:
			return p, true
		case participant:
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
	// Built only when something is logged: this runs once per plugin and
	// round, thousands of times per round in a fleet.
	log := func() logrus.FieldLogger {
		return w.log.WithFields(logrus.Fields{"plugin": p.name, "revision": rec.Revision, "join": join})
	}
	if recCtx.Err() != nil {
		return // the record changed since it was read
	}
	ev := w.newEvent(p.name, schema.Started, rec, join)
	start := w.clock.Now()
	// A plugin that is already waiting takes the event without an accept
	// timer (one timer less per plugin and round).
	select {
	case p.ch <- ev:
		w.took(p, ev, rec, start, log)
		return
	default:
	}
	// Timers are stopped as soon as they are not needed, so that a fake
	// clock's waiters are exactly the timeouts running.
	accept := w.clock.NewTimer(w.cfg.AcceptTimeout)
	select {
	case p.ch <- ev:
		accept.Stop()
	case <-accept.Chan():
		if join {
			// A join resync is never lost: it stays offered (idle),
			// and the next plugin proceeds. If the plugin is a
			// participant of the round, the round gets its timeout ack
			// (below), so it does not wait for a plugin that is not
			// reading; the retry round, or the late join, covers it.
			if !p.parked {
				p.parked = true
				w.stats.joinsParked.Add(1)
			}
			log().WithField("accept_timeout", w.cfg.AcceptTimeout).Warn("watcher: plugin did not take its join Started; it stays offered, next plugin proceeds")
			if rec.State != schema.Started || !w.participates(rec, p.name) {
				return
			}
		}
		p.handled = rec.Revision
		w.stats.acceptTimeouts.Add(1)
		ev.finish(schema.ResultTimeout, "event not taken from the status channel within the accept timeout of "+w.cfg.AcceptTimeout.String())
		log().WithField("accept_timeout", w.cfg.AcceptTimeout).Warn("watcher: plugin did not take Started; timeout ack written, next plugin proceeds")
		return
	case <-recCtx.Done():
		accept.Stop()
		if w.ctx.Err() == nil {
			w.stats.withdrawn.Add(1)
			log().Info("watcher: Started withdrawn before the plugin took it: the revision record changed")
		}
		return
	}
	w.took(p, ev, rec, start, log)
}

// took records that p took Started ev for rec and waits for its ack or the
// ack timeout. The wait is not cut short by a newer record: one plugin of an
// agent reloads at a time.
func (w *Watcher) took(p *plugin, ev *Event, rec schema.Revision, start time.Time, log func() logrus.FieldLogger) {
	p.handled, p.taken, p.joined, p.parked = rec.Revision, rec.Revision, true, false
	w.stats.started.Add(1)
	debug := w.debug()
	if debug {
		log().WithField("accepted_in", w.clock.Now().Sub(start)).Debug("watcher: plugin took Started")
	}
	timeout := w.clock.NewTimer(w.cfg.AckTimeout)
	defer timeout.Stop()
	select {
	case <-ev.ackc:
		if debug {
			log().WithField("acked_in", w.clock.Now().Sub(start)).Debug("watcher: plugin acked")
		}
	case <-timeout.Chan():
		if ev.finish(schema.ResultTimeout, "not acked within the ack timeout of "+w.cfg.AckTimeout.String()) {
			w.stats.ackTimeouts.Add(1)
			log().WithField("ack_timeout", w.cfg.AckTimeout).Warn("watcher: plugin did not ack; timeout ack written, next plugin proceeds")
		}
	case <-w.ctx.Done():
	}
}

// deliverNotActive offers NotActive to p; dropped and counted if not taken
// within the accept timeout or overtaken by a newer record.
func (w *Watcher) deliverNotActive(p *plugin, rec schema.Revision, recCtx context.Context) {
	p.notActive = rec.Revision
	log := func() logrus.FieldLogger {
		return w.log.WithFields(logrus.Fields{"plugin": p.name, "revision": rec.Revision})
	}
	if recCtx.Err() != nil {
		if w.ctx.Err() == nil {
			w.stats.notActiveDropped.Add(1)
		}
		return
	}
	ev := w.newEvent(p.name, schema.NotActive, rec, false)
	select {
	case p.ch <- ev: // the plugin was waiting: no accept timer needed
		w.stats.notActive.Add(1)
		return
	default:
	}
	accept := w.clock.NewTimer(w.cfg.AcceptTimeout)
	defer accept.Stop()
	select {
	case p.ch <- ev:
		w.stats.notActive.Add(1)
	case <-accept.Chan():
		w.stats.notActiveDropped.Add(1)
		log().Warn("watcher: plugin did not take NotActive within the accept timeout; dropped")
	case <-recCtx.Done():
		if w.ctx.Err() == nil {
			w.stats.notActiveDropped.Add(1)
			log().Info("watcher: NotActive dropped: a newer revision arrived")
		}
	}
}
