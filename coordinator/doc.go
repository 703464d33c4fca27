// Package coordinator runs resync rounds across a cluster of agents.
//
// Any number of Coordinators campaign for leadership under <prefix>election,
// as etcd's concurrency.Election does but ignoring keys that are not a
// coordinator's (election.go). The leader alone writes the
// resync revision and the round records, each write one Txn guarded by its
// leader key's create revision (fencing): a deposed leader's write is refused
// and it steps down at once, without retrying.
//
// A round N is written as rounds/<N> (state Started, with its participants:
// the live registrations in the round's scope) and the revision record
// {N, Started}. Agents' watchers deliver Started to their plugins and write
// acks. The leader follows acks/ and registrations/ and resolves every
// participant exactly once as acked, failed (error ack), timed_out (timeout
// ack, or still pending at the round deadline) or departed (registration
// gone). Then it writes the round's summary and {N, NotActive}, fenced.
//
// Triggers: the first leader ever starts round 1 (cause initial); requests
// under requests/ (from ReportError, resyncctl, re-registered agents) are
// consumed by the leader, coalesced within a window and while a round runs
// (one follow-up round, not one per request). A round that did not complete
// clean, and every error request, plan a new round after a backoff per
// agent that doubles with each error-triggered round of the agent's streak
// and resets only after a quiet period (streaks.go). A request
// wider than its writer may ask for (an agent's, under
// requests/agent/<agent>/, for all or for another agent; see
// schema.Request.AllowedFor) is ignored: logged with its key and writer,
// deleted, and reported to Hooks.Request with an error wrapping
// schema.ErrRefused.
//
// A round may run in waves (wave.go, control.go): its agents are started
// a few at a time by their own wake keys, canaries first, each getting
// NotActive when its own part is done; pause, resume and abort come as
// control requests, and past a failure threshold or a progress deadline the
// round aborts, its never-started agents skipped.
//
// A new leader that finds the revision Started resumes that round (same N,
// same participants, same deadline; a wave round's plan and window). Close resigns (revokes its session), so
// a standby takes over in one round trip instead of a session TTL; it is
// bounded by OpTimeout even while etcd is unreachable.
package coordinator
