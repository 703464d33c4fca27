package main

import (
	"context"
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/spf13/pflag"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/resyncd/resync/coordinator"
	"github.com/resyncd/resync/internal/etcdspace"
	"github.com/resyncd/resync/schema"
)

// statusDoc is the JSON document of `status -o json`.
type statusDoc struct {
	// Revision is 0 when no round ever ran.
	Revision uint64              `json:"revision"`
	State    schema.Status       `json:"state,omitempty"`
	Cause    schema.Cause        `json:"cause,omitempty"`
	Reason   string              `json:"reason,omitempty"`
	Scope    schema.ScopeSummary `json:"scope"`
	// ScopeTargets lists every target of a set scope (-o json only).
	ScopeTargets []string  `json:"scope_targets,omitempty"`
	Leader       string    `json:"leader"` // "<id>@<term>", "" when none leads
	StartedAt    time.Time `json:"started_at,omitzero"`
	Deadline     time.Time `json:"deadline,omitzero"`
	FinishedAt   time.Time `json:"finished_at,omitzero"`
	// AgeSeconds is the time since the round started.
	AgeSeconds float64 `json:"age_seconds,omitempty"`
	// RoundLeader wrote the revision record.
	RoundLeader string `json:"round_leader,omitempty"`
	// Progress counts the round's participants (nil when its record is
	// missing); while it runs they are computed from acks and
	// registrations.
	Progress *progress `json:"progress,omitempty"`
	// Storage is etcd's database size against its quota (nil when etcd
	// did not say, e.g. a user without the right); Storage.Warning is set
	// past 80% of the quota or with a NOSPACE alarm.
	Storage *etcdspace.Usage `json:"storage,omitempty"`
	// Wave is a wave round's plan and where its agents stand (nil: no
	// wave round).
	Wave *waveDoc `json:"wave,omitempty"`
}

func setupStatus(fs *pflag.FlagSet) func(context.Context, *env) error {
	return runStatus
}

// runStatus is the status command: read the state, then print it.
func runStatus(ctx context.Context, e *env) error {
	c, ctx, cancel, err := e.connect(ctx)
	if err != nil {
		return err
	}
	defer cancel()
	doc, now, err := e.readStatus(ctx, c)
	if err != nil {
		return err
	}
	if e.json {
		return writeJSON(e.stdout, doc)
	}
	printStatus(e, doc, now)
	return nil
}

// readStatus reads the leader, the last round and its progress, and
// etcd's storage use; now is when it read the round.
func (e *env) readStatus(ctx context.Context, c *clientv3.Client) (doc statusDoc, now time.Time, err error) {
	if doc.Leader, err = e.leader(ctx, c); err != nil {
		return doc, now, err
	}
	rev, _, err := e.readRevision(ctx, c)
	if err != nil {
		return doc, now, err
	}
	now = time.Now()
	if rev != nil {
		if err := e.readRoundStatus(ctx, c, rev, now, &doc); err != nil {
			return doc, now, err
		}
	}
	doc.Storage = e.readStorage(ctx, c)
	return doc, now, nil
}

// readRoundStatus fills doc with the revision record rev and the progress
// of its round.
func (e *env) readRoundStatus(ctx context.Context, c *clientv3.Client, rev *schema.Revision, now time.Time, doc *statusDoc) error {
	doc.Revision, doc.State, doc.Cause, doc.Reason, doc.Scope = rev.Revision, rev.State, rev.Cause, rev.Reason, rev.Scope
	doc.StartedAt, doc.Deadline, doc.FinishedAt, doc.RoundLeader = rev.StartedAt, rev.Deadline, rev.FinishedAt, rev.Leader
	doc.AgeSeconds = now.Sub(rev.StartedAt).Seconds()
	round, err := e.readRound(ctx, c, rev.Revision)
	if err != nil {
		return err
	}
	if e.json {
		if doc.ScopeTargets, err = e.readScopeTargets(ctx, c, round); err != nil {
			return err
		}
	}
	if round == nil {
		e.warn("round %d has no readable record %s: progress unknown", rev.Revision, e.layout.Round(rev.Revision))
		return nil
	}
	if doc.Progress, err = e.readProgress(ctx, c, round); err != nil {
		return err
	}
	doc.Wave, err = e.readWave(ctx, c, round)
	return err
}

// readProgress counts round's participants: from its summary when it
// completed clean, from the per-agent records (every failed, timed-out and
// departed participant) when it finished otherwise, and from acks and
// registrations while it runs.
func (e *env) readProgress(ctx context.Context, c *clientv3.Client, round *schema.Round) (*progress, error) {
	switch {
	case round.State == schema.NotActive && round.Clean():
		p := summaryProgress(round)
		return &p, nil
	case round.State == schema.NotActive:
		recs, _, err := e.readParticipants(ctx, c, round.Revision)
		if err != nil {
			return nil, err
		}
		p := summaryProgress(round)
		if len(recs) > 0 {
			v := coordinator.NewRoundView(*round, recs)
			p = viewProgress(&v)
		}
		return &p, nil
	}
	recs, parts, err := e.readParticipants(ctx, c, round.Revision)
	if err != nil {
		return nil, err
	}
	acks, live, err := e.readLive(ctx, c)
	if err != nil {
		return nil, err
	}
	p := computeProgress(round, parts, acks, live)
	skipWave(&p, recs)
	return &p, nil
}

// readLive reads the acks and which registrations are live: what a
// running round's participants are resolved against.
func (e *env) readLive(ctx context.Context, c *clientv3.Client) (map[schema.PluginID]schema.Ack, map[schema.PluginID]bool, error) {
	regs, err := e.readRegistrations(ctx, c, 0)
	if err != nil {
		return nil, nil, err
	}
	acks, err := e.readAcks(ctx, c, 0)
	if err != nil {
		return nil, nil, err
	}
	return acks, liveSet(regs), nil
}

// readStorage reads etcd's database size against its quota, warning when
// it is unknown or past its warning level.
func (e *env) readStorage(ctx context.Context, c *clientv3.Client) *etcdspace.Usage {
	u, err := etcdspace.Read(ctx, c)
	if err != nil {
		e.warn("etcd's database size is unknown: %v", err)
		return nil
	}
	if u.Warning != "" {
		e.warn("%s", u.Warning)
	}
	return &u
}

func printStatus(e *env, d statusDoc, now time.Time) {
	tw := newTable(e.stdout)
	defer tw.Flush()
	leader := d.Leader
	if leader == "" {
		leader = "none (no coordinator is running: requests wait until one leads)"
	}
	defer printStorage(tw, d.Storage)
	if d.Revision == 0 {
		row(tw, "revision", "none yet")
		row(tw, "leader", leader)
		return
	}
	row(tw, "revision", d.Revision)
	row(tw, "state", d.State)
	row(tw, "cause", d.Cause)
	row(tw, "reason", d.Reason)
	row(tw, "scope", scopeText(d.Scope))
	row(tw, "leader", leader)
	row(tw, "started", timestamp(d.StartedAt)+" ("+ago(d.StartedAt, now)+")")
	switch {
	case d.State == schema.Started && d.Wave != nil: // each agent's deadline runs from its start
		row(tw, "deadline", "each agent's, "+roundDuration(d.Deadline.Sub(d.StartedAt)).String()+" after its start")
	case d.State == schema.Started:
		row(tw, "deadline", timestamp(d.Deadline)+" ("+ago(d.Deadline, now)+")")
	default:
		row(tw, "finished", timestamp(d.FinishedAt)+" ("+ago(d.FinishedAt, now)+", took "+roundDuration(d.FinishedAt.Sub(d.StartedAt)).String()+")")
	}
	if d.Wave != nil {
		row(tw, "wave", d.Wave.String())
	}
	if d.Progress != nil {
		printProgress(tw, d.Progress)
	}
}

// printProgress prints a round's counts, the participants of each outcome
// but acked, and each failure's error text.
func printProgress(tw *tabwriter.Writer, p *progress) {
	row(tw, "participants", p.Counts.Participants)
	row(tw, "acked", p.Counts.Acked)
	row(tw, "pending", withNames(p.Counts.Pending, p.Pending))
	row(tw, "failed", withNames(p.Counts.Failed, p.Failed))
	row(tw, "timed_out", withNames(p.Counts.TimedOut, p.TimedOut))
	row(tw, "departed", withNames(p.Counts.Departed, p.Departed))
	if p.Counts.Skipped > 0 { // a wave round's agents never started
		row(tw, "skipped", p.Counts.Skipped)
	}
	for _, id := range p.Failed {
		if msg := p.Errors[id.String()]; msg != "" {
			row(tw, "error "+id.String(), msg)
		}
	}
}

// printStorage adds the etcd database line (and its warning).
func printStorage(tw *tabwriter.Writer, u *etcdspace.Usage) {
	if u == nil {
		return
	}
	line := etcdspace.Bytes(u.Size) + " (" + etcdspace.Bytes(u.InUse) + " in use)"
	if u.Quota > 0 {
		line += fmt.Sprintf(" of %s quota, %.0f%%", etcdspace.Bytes(u.Quota), 100*u.Fraction())
	}
	row(tw, "etcd db", line)
	if u.Warning != "" {
		row(tw, "etcd warning", u.Warning)
	}
}

// withNames is a count followed by up to 10 names.
func withNames(n int, l []schema.PluginID) string {
	if n == 0 || len(l) == 0 {
		return itoa(n)
	}
	names := make([]string, len(l))
	for i, id := range l {
		names[i] = id.String()
	}
	return itoa(n) + " (" + listFirst(names, 10) + ")"
}
