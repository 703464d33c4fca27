package coordinator

import (
	"time"

	"github.com/resyncd/resync/schema"
)

// Hooks observe a Coordinator (for metrics and logs). Methods are called from
// the coordinator's goroutines, never under its locks; they must not block.
// Embed NopHooks to implement only some.
type Hooks interface {
	// Leading is called when this coordinator becomes leader (true) and
	// when it stops leading (false).
	Leading(leading bool)
	// RoundStarted is called when the leader starts a round, or resumes one
	// it found Started (resumed true).
	RoundStarted(round schema.Round, resumed bool)
	// RoundFinished is called after the leader wrote a round's summary.
	RoundFinished(round schema.Round)
	// Resolved is called once per participant of a round with its final
	// outcome (never schema.OutcomePending).
	Resolved(id schema.PluginID, outcome schema.Outcome)
	// Request is called for every request the leader consumes: malformed
	// ones with a zero Request and the decode error; refused ones (wider
	// than their writer may ask for, see schema.Request.AllowedFor) with
	// the request and an error wrapping schema.ErrRefused.
	Request(req schema.Request, err error)
	// Backoff is called for each new error request (a ReportError, a
	// retry of failed participants) with its agent's current backoff d:
	// the pause before the error-triggered round it asks for.
	Backoff(d time.Duration)
}

// RefusalHooks is optional: a Hooks that implements it is told, while this
// coordinator leads, how many registrations the agents refused (names that
// cannot be stored: schema.Owner.Refused, summed over the live owner
// records), at the start of leadership and whenever the sum changes.
type RefusalHooks interface {
	RefusedRegistrations(total int)
}

// WaveHooks is optional: a Hooks that implements it is told where the
// running wave round stands (WaveStatus) after each step that moved it,
// and nil when the round finished.
type WaveHooks interface {
	WaveChanged(s *WaveStatus)
}

// NopHooks does nothing.
type NopHooks struct{}

func (NopHooks) Leading(bool)                             {}
func (NopHooks) RoundStarted(schema.Round, bool)          {}
func (NopHooks) RoundFinished(schema.Round)               {}
func (NopHooks) Resolved(schema.PluginID, schema.Outcome) {}
func (NopHooks) Request(schema.Request, error)            {}
func (NopHooks) Backoff(time.Duration)                    {}
