package resync

import (
	"fmt"

	"github.com/resyncd/resync/schema"
	"github.com/resyncd/resync/watcher"
)

// Status is the status of a resync carried by a StatusEvent.
type Status = schema.Status

const (
	// Started means that a resync has started: reload your state, then Ack.
	Started = schema.Started
	// NotActive means that no resync runs: none started yet, or it finished.
	NotActive = schema.NotActive
)

// StatusEvent is the event a plugin receives on its status channel:
// ResyncStatus() is Started or NotActive, and Ack() acknowledges that the
// plugin processed it (after applying its configuration). Ack never blocks;
// a late Ack, after the ack timeout, does nothing.
//
// Events delivered by a Plugin are *Event, which also has Revision, Reason
// and AckError.
type StatusEvent = watcher.StatusEvent

// Event is the concrete StatusEvent delivered by a Plugin.
type Event = watcher.Event

// Clock is the time source of a Plugin: timestamps, the accept and ack
// timeouts, retry pauses (not the timeouts of etcd calls). It is clockwork's
// Clock (github.com/jonboulle/clockwork), as watcher.Clock and the
// coordinator's WithClock: tests pass clockwork.NewFakeClock(). Who owns
// the agent name never depends on it (registry.WithClock): a host whose
// clock is off keeps its name.
type Clock = watcher.Clock

// Stats are a Plugin's delivery counters.
type Stats = watcher.Stats

// Registration is returned by Register: the plugin's status channel.
type Registration interface {
	// StatusChan is the channel of the plugin's StatusEvents, typed
	// exactly as the seed's (chan, not <-chan, so that consumer code typed
	// func(chan resync.StatusEvent) compiles). Only the resync Plugin sends
	// on it; a plugin only receives. It is never closed, as the seed's was
	// not: after the resync Plugin is closed or displaced it stays open and
	// silent (a consumer that wants to end its loop selects on
	// Plugin.Done).
	StatusChan() chan StatusEvent
	fmt.Stringer
}

// Subscriber is the API of plugins that want resync notifications.
type Subscriber interface {
	// Register is called in Init by a plugin that wants resync events; the
	// plugin reads Registration.StatusChan(), reloads its state on
	// Started and acks each event.
	Register(resyncName string) Registration
}

// Reporter is the API of plugins that report errors to resync; an error
// triggers a new resync.
type Reporter interface {
	// ReportError asks for a resync of this agent because name (a plugin
	// name; the seed used core.PluginName, a string type) failed with err.
	ReportError(name string, err error)
}

type registration struct {
	name string
	ch   chan StatusEvent
}

// NewRegistration returns a Registration of the channel, for example to feed
// a plugin with events in its own tests.
func NewRegistration(resyncName string, statusChan chan StatusEvent) Registration {
	return &registration{name: resyncName, ch: statusChan}
}

func (r *registration) StatusChan() chan StatusEvent { return r.ch }
func (r *registration) String() string               { return r.name }
