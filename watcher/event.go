package watcher

import (
	"sync"

	"github.com/resyncd/resync/schema"
)

// StatusEvent is what a plugin receives on its status channel: the seed's
// interface, kept. The concrete type is *Event, which offers more.
type StatusEvent interface {
	// ResyncStatus is Started (reload your state, then Ack) or NotActive
	// (the round finished).
	ResyncStatus() schema.Status
	// Ack acknowledges that the plugin processed the event. It never blocks.
	Ack()
}

// Event is the concrete StatusEvent delivered by a Watcher. Its methods are
// safe for concurrent use.
type Event struct {
	plugin   string
	status   schema.Status
	revision uint64
	epoch    string
	reason   string
	cause    schema.Cause
	join     bool

	w    *Watcher      // nil for NotActive events: nothing to ack
	ackc chan struct{} // closed when the event is finished (acked or timed out)

	mu   sync.Mutex
	done bool
}

func (w *Watcher) newEvent(plugin string, status schema.Status, rec schema.Revision, join bool) *Event {
	e := &Event{plugin: plugin, status: status, revision: rec.Revision, epoch: rec.Epoch, reason: rec.Reason, cause: rec.Cause, join: join}
	if status == schema.Started {
		e.w = w
		e.ackc = make(chan struct{})
	}
	return e
}

// ResyncStatus is Started or NotActive.
func (e *Event) ResyncStatus() schema.Status { return e.status }

// Revision is the resync revision N the event belongs to.
func (e *Event) Revision() uint64 { return e.revision }

// Epoch names the history the revision belongs to. Revision numbers only
// grow within one; a new epoch (a wiped prefix, a revision record lost or
// unreadable, which the coordinator recovers from the round records) may
// repeat numbers of the last, and the watcher then delivers them again.
func (e *Event) Epoch() string { return e.epoch }

// Reason is the revision record's reason (why the resync was started).
func (e *Event) Reason() string { return e.reason }

// Cause is the revision record's cause (initial, manual, error, rejoin).
func (e *Event) Cause() schema.Cause { return e.cause }

// Plugin is the name of the plugin the event was delivered to.
func (e *Event) Plugin() string { return e.plugin }

// Join reports whether this Started is the plugin's join resync (its first
// event in this process), delivered whatever the record's scope and state.
func (e *Event) Join() bool { return e.join }

// Ack acknowledges a Started event: acks/<agent>/<plugin> is written with
// result ok, on the agent's lease, in the background. It never blocks. Only
// the first Ack or AckError of an event counts; after the ack timeout (when
// the watcher already wrote a timeout ack) and on NotActive events it does
// nothing.
func (e *Event) Ack() { e.finish(schema.ResultOK, "") }

// AckError acknowledges a Started event with result error and err's text
// (cut to schema.MaxAckErrorLen); the coordinator then plans a new resync.
// AckError(nil) is Ack(). Like Ack, it never blocks and only the first call
// counts.
func (e *Event) AckError(err error) {
	if err == nil {
		e.Ack()
		return
	}
	e.finish(schema.ResultError, schema.Cut(err.Error(), schema.MaxAckErrorLen))
}

// finish records the outcome if the event is not finished yet; it reports
// whether it did.
func (e *Event) finish(res schema.Result, text string) bool {
	if e.w == nil {
		return false
	}
	e.mu.Lock()
	if e.done {
		e.mu.Unlock()
		return false
	}
	e.done = true
	e.mu.Unlock()
	e.w.enqueueAck(e.plugin, schema.Ack{Revision: e.revision, Result: res, Error: text, AckedAt: e.w.clock.Now().UTC()})
	close(e.ackc)
	return true
}
