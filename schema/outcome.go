package schema

// Outcome is what became of one participant of a round. Its spelling is
// the one of the round records' lists and counts (RoundAgent, RoundCounts,
// RoundExamples) and of resyncctl's output.
type Outcome string

const (
	// OutcomePending: the participant has not resolved yet.
	OutcomePending Outcome = "pending"
	// OutcomeAcked: the participant acked the round ok.
	OutcomeAcked Outcome = "acked"
	// OutcomeFailed: the participant acked the round with an error.
	OutcomeFailed Outcome = "failed"
	// OutcomeTimedOut: the participant's watcher acked a timeout, or the
	// round's deadline passed first.
	OutcomeTimedOut Outcome = "timed_out"
	// OutcomeDeparted: the participant's registration vanished before it
	// acked (its agent died or deregistered it).
	OutcomeDeparted Outcome = "departed"
	// OutcomeSkipped: a participant of a wave round that aborted before
	// its agent started; it was never woken, and no retry is planned. It
	// is not among Outcomes: only wave rounds have it.
	OutcomeSkipped Outcome = "skipped"
)

// Outcomes are the final outcomes, in the order of the round records.
var Outcomes = [...]Outcome{OutcomeAcked, OutcomeFailed, OutcomeTimedOut, OutcomeDeparted}

func (o Outcome) String() string { return string(o) }

// Resolve is the one rule that resolves a participant of round: the ack it
// wrote for the round decides (ok, error, timeout); without one, a
// participant that is no longer registered departed, and one still
// registered times out when the round's deadline passed (expired), else it
// is pending. ack is the participant's latest ack, the zero Ack when it has
// none: an ack for another round does not count. The coordinator resolves
// with it as events arrive (the first outcome other than pending sticks);
// resyncctl shows a running round's progress with it (expired false: only
// the coordinator times participants out).
func Resolve(round uint64, ack Ack, registered, expired bool) Outcome {
	if round != 0 && ack.Revision == round {
		switch ack.Result {
		case ResultOK:
			return OutcomeAcked
		case ResultError:
			return OutcomeFailed
		case ResultTimeout:
			return OutcomeTimedOut
		}
	}
	switch {
	case !registered:
		return OutcomeDeparted
	case expired:
		return OutcomeTimedOut
	}
	return OutcomePending
}
