package main

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/pflag"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/resyncd/resync/internal/rbac"
	"github.com/resyncd/resync/schema"
)

// waveFlags registers trigger's rollout knobs on fs (schema.Wave).
func waveFlags(fs *pflag.FlagSet, o *triggerOpts) {
	fs.StringVar((*string)(&o.wave.MaxInFlight), "max-in-flight", "", "run the round in waves: at most this many agents at once, a count or a percentage of its agents (10%)")
	fs.StringVar(&o.canary, "canary", "", "these agents go first, alone: a count (3) or a comma-separated list of agent names")
	fs.StringVar(&o.wave.CanaryPause, "canary-pause", "", "after the canaries resolved clean, wait this long (30s) or until `resyncctl resume` (manual)")
	fs.StringVar((*string)(&o.wave.MaxFailed), "max-failed", "", "abort once more agents than this failed, a count or a percentage (2%): agents not started yet are skipped")
	fs.StringVar(&o.wave.ProgressDeadline, "progress-deadline", "", "abort when no agent completes within this long (5m)")
}

// waveKnobs are the request's wave knobs from the flags; a bad one is a
// usage error.
func (o triggerOpts) waveKnobs() (schema.Wave, error) {
	w := o.wave
	if err := canaryKnob(&w, o.canary); err != nil {
		return w, err
	}
	if err := w.Validate(); err != nil {
		return w, usagef("%v", err)
	}
	return w, nil
}

// checkWaveRound checks that round n runs in waves and has not finished.
func (e *env) checkWaveRound(ctx context.Context, cl *clientv3.Client, n uint64) error {
	resp, err := cl.Get(ctx, e.layout.Round(n))
	if err != nil {
		return fmt.Errorf("read round %d: %w", n, err)
	}
	if len(resp.Kvs) == 0 {
		return usagef("round %d: no such round (resyncctl history lists them)", n)
	}
	r, err := e.layout.DecodeRound(string(resp.Kvs[0].Key), resp.Kvs[0].Value)
	switch {
	case err != nil:
		return fmt.Errorf("round %d: %w", n, err)
	case r.Wave == nil:
		return usagef("round %d does not run in waves: only a round triggered with --max-in-flight, --canary, ... (or under resyncd --max-in-flight) can be paused, resumed or aborted", n)
	case r.State != schema.Started:
		return usagef("round %d has finished", n)
	}
	return nil
}

// canaryKnob sets w's canaries from --canary: a count or percentage, or a
// comma-separated list of agent names (as typed or escaped).
func canaryKnob(w *schema.Wave, canary string) error {
	switch {
	case canary == "":
	case isLimit(canary):
		w.Canary = schema.Limit(canary)
	default:
		for _, a := range strings.Split(canary, ",") {
			name, err := cliName("agent", strings.TrimSpace(a))
			if err != nil {
				return usagef("--canary: %v", err)
			}
			w.CanaryAgents = append(w.CanaryAgents, name)
		}
	}
	return nil
}

// isLimit reports whether s is a count or a percentage, not a name list.
func isLimit(s string) bool {
	_, err := strconv.Atoi(strings.TrimSuffix(s, "%"))
	return err == nil
}

// setupControl is pause, resume or abort of a running wave round.
func setupControl(action string) func(fs *pflag.FlagSet) func(context.Context, *env) error {
	return func(fs *pflag.FlagSet) func(context.Context, *env) error {
		round := fs.Uint64("round", 0, "the running wave round (required; status shows it)")
		who := fs.String("who", "", "requested_by of the request (default resyncctl@<hostname>)")
		return func(ctx context.Context, e *env) error {
			if *round == 0 {
				return usagef("--round is required: the running wave round (resyncctl status shows it)")
			}
			return control(ctx, e, schema.Control{Round: *round, Action: action}, triggerOpts{who: *who}.requester())
		}
	}
}

// controlDoc is the JSON document of pause, resume and abort.
type controlDoc struct {
	Request string `json:"request"`
	Key     string `json:"key"`
	Round   uint64 `json:"round"`
	Action  string `json:"action"`
}

// control writes a control request for a round that is running in waves:
// the leader applies it to the round's plan and deletes it.
func control(ctx context.Context, e *env, c schema.Control, who string) error {
	cl, cctx, cancel, err := e.connect(ctx)
	if err != nil {
		return err
	}
	defer cancel()
	if err := e.checkWaveRound(cctx, cl, c.Round); err != nil {
		return err
	}
	req := schema.Request{Reason: c.Action + " round " + strconv.FormatUint(c.Round, 10), Cause: schema.CauseManual,
		Control: &c, RequestedBy: who, RequestedAt: time.Now().UTC()}
	val, err := schema.Encode(req)
	if err != nil {
		return usagef("%v", err)
	}
	writer := schema.Writer{Kind: schema.WriterOperator}
	id := schema.NewRequestID(time.Now())
	key := e.layout.RequestOf(writer, id)
	if _, err := e.writeRequest(cctx, cl, key, string(val)); err != nil {
		if errors.Is(err, rpctypes.ErrPermissionDenied) {
			return permissionHint(fmt.Errorf("write request %s: %w: %s needs an operator's credentials (root, or a user with the role %s)", key, err, c.Action, rbac.OperatorRole))
		}
		return fmt.Errorf("write request %s: %w", key, err)
	}
	if e.json {
		return writeJSON(e.stdout, controlDoc{Request: id, Key: key, Round: c.Round, Action: c.Action})
	}
	fmt.Fprintf(e.stdout, "requested %s of round %d (%s)\n", c.Action, c.Round, id)
	return nil
}

// waveDoc is a wave round's plan and its agents by state (status).
type waveDoc struct {
	schema.WavePlan
	InFlight     int `json:"in_flight"`
	Done         int `json:"done"`
	Waiting      int `json:"waiting"`
	Skipped      int `json:"skipped"`
	FailedAgents int `json:"failed_agents"`
}

// readWave reads where a wave round's agents stand (nil for another
// round).
func (e *env) readWave(ctx context.Context, c *clientv3.Client, round *schema.Round) (*waveDoc, error) {
	if round.Wave == nil {
		return nil, nil
	}
	recs, _, err := e.readParticipants(ctx, c, round.Revision)
	if err != nil {
		return nil, err
	}
	d := &waveDoc{WavePlan: *round.Wave}
	for _, r := range recs {
		switch r.Wave {
		case schema.AgentStarted:
			d.InFlight++
		case schema.AgentDone:
			d.Done++
		case schema.AgentSkipped:
			d.Skipped++
		default:
			d.Waiting++
		}
		if len(r.Failed) > 0 || len(r.TimedOut) > 0 {
			d.FailedAgents++
		}
	}
	return d, nil
}

// String is status's wave line: "rolling: 3 in flight (max 5), 12 done,
// 25 waiting, 0 skipped, 1 failed", then paused or aborted with why.
func (d waveDoc) String() string {
	limit := "unbounded"
	if d.MaxInFlight > 0 {
		limit = "max " + strconv.Itoa(d.MaxInFlight)
	}
	s := fmt.Sprintf("%s: %d in flight (%s), %d done, %d waiting, %d skipped, %d failed", d.Phase, d.InFlight, limit, d.Done, d.Waiting, d.Skipped, d.FailedAgents)
	if d.MaxFailed != nil {
		s += fmt.Sprintf(" (abort above %d)", *d.MaxFailed)
	}
	switch {
	case d.Aborted != "" || d.Paused:
		s += d.halted(" (resyncctl resume)")
	case d.Phase == schema.PhaseCanaryPause && d.ResumeAt.IsZero():
		s += "; canaries done, waiting for resyncctl resume"
	case d.Phase == schema.PhaseCanaryPause:
		s += "; canaries done, the rest starts at " + d.ResumeAt.Local().Format(time.TimeOnly)
	}
	return s
}

// planString is the plan alone, for history --round: its knobs, phase,
// and whether it was paused or aborted.
func (d waveDoc) planString() string {
	s := d.Phase
	if d.MaxInFlight > 0 {
		s += fmt.Sprintf(", max %d in flight", d.MaxInFlight)
	}
	if d.Canaries > 0 {
		s += fmt.Sprintf(", %d canaries", d.Canaries)
	}
	if d.MaxFailed != nil {
		s += fmt.Sprintf(", abort above %d failed", *d.MaxFailed)
	}
	return s + d.halted("")
}

// halted says whether the round was aborted (and why) or is paused (with
// hint after it), or nothing.
func (d waveDoc) halted(hint string) string {
	switch {
	case d.Aborted != "":
		return "; aborted: " + d.Aborted
	case d.Paused:
		return "; paused" + hint
	}
	return ""
}

// skipWave counts the plugins a running wave round skipped (its agents'
// records say so; acks know nothing of them) as skipped, not pending.
func skipWave(p *progress, recs []schema.RoundAgent) {
	skipped := map[schema.PluginID]bool{}
	for _, r := range recs {
		for _, pl := range r.Skipped {
			skipped[schema.PluginID{Agent: r.Agent, Plugin: pl}] = true
		}
	}
	if len(skipped) == 0 {
		return
	}
	pending := p.Pending[:0]
	for _, id := range p.Pending {
		if !skipped[id] {
			pending = append(pending, id)
		}
	}
	p.Counts.Skipped += len(p.Pending) - len(pending)
	p.Counts.Pending, p.Pending = len(pending), pending
}
