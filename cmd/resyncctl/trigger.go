package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/spf13/pflag"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/resyncd/resync/coordinator"
	rcli "github.com/resyncd/resync/internal/cli"
	"github.com/resyncd/resync/internal/etcderr"
	"github.com/resyncd/resync/internal/listwatch"
	"github.com/resyncd/resync/internal/rbac"
	"github.com/resyncd/resync/schema"
)

// heartbeat is how often --wait repeats its state when nothing changed.
const heartbeat = 5 * time.Second

// triggerDoc is the JSON document of `trigger -o json`.
type triggerDoc struct {
	Request string       `json:"request"`
	Key     string       `json:"key"`
	Reason  string       `json:"reason"`
	Scope   schema.Scope `json:"scope"`
	// Targets are the request's targets when it has more than one.
	Targets     []schema.Scope `json:"targets,omitempty"`
	RequestedBy string         `json:"requested_by"`
	// With --wait: the round that consumed the request, its summary with
	// every participant's outcome, and whether it completed clean.
	Revision uint64                 `json:"revision,omitempty"`
	Clean    *bool                  `json:"clean,omitempty"`
	Round    *coordinator.RoundView `json:"round,omitempty"`
}

type triggerOpts struct {
	agents, plugins listFlag
	reason, who     string
	wait            bool
	timeout         time.Duration
	wave            schema.Wave // --max-in-flight, --canary, ...
	canary          string
}

// listFlag is a flag that takes comma-separated lists and may repeat.
type listFlag []string

func (l *listFlag) String() string { return strings.Join(*l, ",") }

// Type names the value in --help (pflag.Value).
func (l *listFlag) Type() string { return "list" }

func (l *listFlag) Set(v string) error {
	for _, s := range strings.Split(v, ",") {
		if s != "" {
			*l = append(*l, s)
		}
	}
	return nil
}

// targets turns --agent and --plugin into the request's targets. A name is
// taken as typed ("node 1", "plug:IF/L2/L3") or in its escaped key form
// ("node%201": see cliName). With exactly one --agent, every --plugin is a
// plugin of that agent, so a "/" in a plugin name needs no escape. Without
// --agent, a --plugin is agent/plugin, split at the first "/" (a "/" in an
// agent's name is then written %2F). With several --agent values, each is
// a target and each --plugin is agent/plugin. None means all.
func (o triggerOpts) targets() ([]schema.Scope, error) {
	var out []schema.Scope
	if len(o.agents) == 1 && len(o.plugins) > 0 {
		agent, err := cliName("agent", o.agents[0])
		if err != nil {
			return nil, fmt.Errorf("--agent: %w", err)
		}
		for _, p := range o.plugins {
			plugin, err := cliName("plugin", p)
			if err != nil {
				return nil, fmt.Errorf("--plugin: %w", err)
			}
			out = append(out, schema.Scope{Agent: agent, Plugin: plugin})
		}
		return dedupTargets(out), nil
	}
	for _, a := range o.agents {
		name, err := cliName("agent", a)
		if err != nil {
			return nil, fmt.Errorf("--agent: %w", err)
		}
		out = append(out, schema.Scope{Agent: name})
	}
	for _, p := range o.plugins {
		ea, ep, ok := strings.Cut(p, "/")
		if !ok || ep == "" {
			return nil, fmt.Errorf("--plugin needs --agent: %q is named within its one agent (--agent A --plugin P), or as agent/plugin", p)
		}
		sc, err := target(ea, ep)
		if err != nil {
			return nil, fmt.Errorf("--plugin: %w", err)
		}
		out = append(out, sc)
	}
	return dedupTargets(out), nil
}

func target(agent, plugin string) (schema.Scope, error) {
	a, err := cliName("agent", agent)
	if err != nil {
		return schema.Scope{}, err
	}
	p, err := cliName("plugin", plugin)
	if err != nil {
		return schema.Scope{}, err
	}
	return schema.Scope{Agent: a, Plugin: p}, nil
}

// cliName reads a name given on the command line: its escaped key form
// when it is one and holds an escape ("node%201" is "node 1", as
// registrations and keys show it), else the name as typed. A name that
// itself looks like an escape, or holds a ",", is given escaped (%25, %2C).
func cliName(kind, s string) (string, error) {
	if strings.Contains(s, "%") {
		if name, err := schema.UnescapeName(kind, s); err == nil {
			return name, nil
		}
	}
	if err := schema.ValidateName(kind, s); err != nil {
		return "", err
	}
	return s, nil
}

func dedupTargets(in []schema.Scope) []schema.Scope {
	seen := map[schema.Scope]bool{}
	var out []schema.Scope
	for _, t := range in {
		if !seen[t] {
			seen[t] = true
			out = append(out, t)
		}
	}
	return out
}

func setupTrigger(fs *pflag.FlagSet) func(context.Context, *env) error {
	var o triggerOpts
	fs.Var(&o.agents, "agent", "resync only these agents' plugins: a comma-separated list, or repeat the flag (each must have live registrations); a name as typed (\"node 1\") or escaped as in keys (node%201)")
	fs.Var(&o.plugins, "plugin", "resync only these plugins: plugins of the one --agent, or agent/plugin; comma-separated or repeated; names as typed or escaped as in keys")
	fs.StringVar(&o.reason, "reason", "", "why (required; shown by status and history)")
	fs.BoolVar(&o.wait, "wait", false, "wait for the round that serves the request; exit 0 only if it completes clean")
	fs.DurationVar(&o.timeout, "timeout", 3*time.Minute, "bound of --wait")
	fs.StringVar(&o.who, "who", "", "requested_by of the request (default resyncctl@<hostname>)")
	waveFlags(fs, &o)
	return func(ctx context.Context, e *env) error { return trigger(ctx, e, o) }
}

// trigger is the trigger command in its four steps: build the request
// from the flags, write it, and without --wait report it; with --wait,
// wait for the round that serves it and report that round.
func trigger(ctx context.Context, e *env, o triggerOpts) error {
	req, val, err := o.request()
	if err != nil {
		return err
	}
	c, cctx, cancel, err := e.connect(ctx)
	if err != nil {
		return err
	}
	defer cancel()
	doc, wrote, err := e.submit(cctx, c, req, val)
	if err != nil {
		return err
	}
	if !o.wait {
		return e.reportRequested(doc, req)
	}
	final, err := e.awaitRound(ctx, cctx, c, req, doc, wrote, o.timeout)
	if err != nil {
		return err
	}
	return e.reportRound(doc, final)
}

// request builds the request from trigger's flags and encodes it; every
// error is a usage error, found before resyncctl connects.
func (o triggerOpts) request() (schema.Request, string, error) {
	o.reason = strings.TrimSpace(o.reason)
	switch {
	case o.reason == "":
		return schema.Request{}, "", usagef("--reason is required: say why (it is shown by status and history)")
	case o.wait && o.timeout <= 0:
		return schema.Request{}, "", usagef("--timeout %v must be positive", o.timeout)
	}
	targets, err := o.targets()
	if err != nil {
		return schema.Request{}, "", usagef("%v", err)
	}
	if len(targets) > schema.MaxRequestTargets {
		return schema.Request{}, "", usagef("%d targets: at most %d per request; trigger several times", len(targets), schema.MaxRequestTargets)
	}
	var scope schema.Scope
	if len(targets) == 1 {
		scope, targets = targets[0], nil
	}
	req := schema.Request{
		Reason: schema.Cut(o.reason, schema.MaxReasonLen), Cause: schema.CauseManual, Scope: scope, Targets: targets,
		RequestedBy: o.requester(), RequestedAt: time.Now().UTC(),
	}
	if w, err := o.waveKnobs(); err != nil {
		return schema.Request{}, "", err
	} else if !w.IsZero() {
		req.Wave = &w
	}
	val, err := schema.Encode(req)
	if err != nil {
		return schema.Request{}, "", usagef("%v", err)
	}
	return req, string(val), nil
}

// requester is the request's requested_by: --who, or resyncctl@<hostname>,
// cut to fit schema.MaxIDLen.
func (o triggerOpts) requester() string {
	who := o.who
	if who == "" {
		host, err := os.Hostname()
		if err != nil || host == "" {
			host = "unknown"
		}
		who = "resyncctl@" + host
	}
	if len(who) > schema.MaxIDLen {
		who = schema.Cut(who, schema.MaxIDLen-20)
	}
	return who
}

// submit checks that the request's targets have live registrations and
// writes it as an operator. It returns the document that reports the
// request and where its write landed (writeRequest).
func (e *env) submit(ctx context.Context, c *clientv3.Client, req schema.Request, val string) (triggerDoc, written, error) {
	if len(req.Targets) > 0 || !req.Scope.All() {
		if err := e.checkScope(ctx, c, append([]schema.Scope{req.Scope}, req.Targets...)); err != nil {
			return triggerDoc{}, written{}, err
		}
	}
	// resyncctl writes as an operator: the one rule of who may ask for
	// what (schema.Request.AllowedFor) lets it ask for any scope; etcd's
	// roles decide whether these credentials are an operator's.
	writer := schema.Writer{Kind: schema.WriterOperator}
	if err := req.AllowedFor(writer); err != nil {
		return triggerDoc{}, written{}, usagef("%v", err)
	}
	id := schema.NewRequestID(time.Now())
	key := e.layout.RequestOf(writer, id)
	wrote, err := e.writeRequest(ctx, c, key, val)
	if errors.Is(err, rpctypes.ErrPermissionDenied) {
		return triggerDoc{}, written{}, permissionHint(fmt.Errorf("write request %s: %w: trigger needs an operator's credentials (root, or a user with the role %s: resyncctl rbac apply --operators); an agent requests a resync of itself with ReportError",
			key, err, rbac.OperatorRole))
	}
	if err != nil {
		return triggerDoc{}, written{}, fmt.Errorf("write request %s: %w", key, err)
	}
	doc := triggerDoc{Request: id, Key: key, Reason: req.Reason, Scope: req.Scope, Targets: req.Targets, RequestedBy: req.RequestedBy}
	return doc, wrote, nil
}

// reportRequested reports a request written without --wait.
func (e *env) reportRequested(doc triggerDoc, req schema.Request) error {
	if e.json {
		return writeJSON(e.stdout, doc)
	}
	fmt.Fprintf(e.stdout, "requested resync %s (scope %s): %s\n", doc.Request, req.ScopeText(), req.Reason)
	return nil
}

// awaitRound follows etcd from the request's write (wrote) until the
// round that consumed it finished, within timeout, and reads that round's
// view. Progress is output in text mode; with -o json it goes to stderr,
// so that stdout carries only the final document.
func (e *env) awaitRound(ctx, cctx context.Context, c *clientv3.Client, req schema.Request, doc triggerDoc, wrote written, timeout time.Duration) (*coordinator.RoundView, error) {
	progressOut := e.stdout
	if e.json {
		progressOut = e.stderr
	}
	fmt.Fprintf(progressOut, "requested resync %s (scope %s): %s\n", doc.Request, req.ScopeText(), req.Reason)
	w := &waiter{e: e, c: c, out: progressOut, reqKey: doc.Key, rev: wrote.rev, n0: e.resyncRevision(wrote.revision)}
	summary, err := w.wait(ctx, timeout)
	if err != nil {
		return nil, err
	}
	final, err := e.readView(cctx, c, summary.Revision)
	if err != nil {
		return nil, err
	}
	if final == nil || final.Revision != summary.Revision {
		final = &coordinator.RoundView{Round: *summary}
	}
	return final, nil
}

// reportRound reports the round that served the request; it fails with
// rcli.ExitFailure unless the round completed clean.
func (e *env) reportRound(doc triggerDoc, final *coordinator.RoundView) error {
	clean := final.Clean()
	doc.Revision, doc.Clean, doc.Round = final.Revision, &clean, final
	if e.json {
		if err := writeJSON(e.stdout, doc); err != nil {
			return err
		}
	} else {
		printFinal(e.stdout, final)
	}
	if clean {
		return nil
	}
	var bad []string
	for _, id := range final.Failed {
		bad = append(bad, "failed "+id.String())
	}
	for _, id := range final.TimedOut {
		bad = append(bad, "timed out "+id.String())
	}
	e.warn("round %d did not complete clean: %s (the coordinator plans a retry round)", final.Revision, listFirst(bad, 10))
	return exitCode(rcli.ExitFailure)
}

// written is where a request's write landed: its etcd revision, and the
// revision key as it stood then (no such key: nil).
type written struct {
	rev      int64
	revision *mvccpb.KeyValue
}

// writeRequest writes the request key once, retrying transient etcd errors
// within ctx (--command-timeout), and returns the etcd revision of the
// write and the revision key then. It is safe to retry: every attempt
// writes the same key (so a duplicate merges into the one pending
// request), and no round runs twice for it.
//
// The danger is an attempt that failed on the client (a timeout, a leader
// change) but was applied: the coordinator may consume the key (deleting
// it in the Txn that starts a round) before the retry, which would then
// write it again and cause a second round. So every attempt is a Txn that
// writes only if the key was never written and the revision key has not
// changed since this writer last read it (no round started or finished).
// The coordinator deletes a request only in or after the start Txn of the
// round that serves it, which changes the revision key: once that happened
// no attempt can apply any more. When an attempt finds the revision key
// changed and the key absent after an earlier attempt failed, it asks etcd
// whether the key existed just before the first change of the revision
// key since its read (an attempt could only apply before it): if so, a
// round consumed the request and it is done; if not, no attempt ever
// applied, and it reads again and writes. If etcd compacted that history
// away it cannot tell, and fails rather than risk a second round.
func (e *env) writeRequest(ctx context.Context, c *clientv3.Client, key, val string) (written, error) {
	// A member without a leader answers "no leader" at once (retried)
	// instead of holding the write until the budget ends.
	ctx = clientv3.WithRequireLeader(ctx)
	revKey := e.layout.Revision()
	base, err := c.Get(ctx, revKey)
	if err != nil {
		return written{}, fmt.Errorf("read %s: %w", revKey, err)
	}
	// Every attempt writes only while the revision key is as last read
	// (mod), so an applied attempt saw it as cur.
	cur, from := base.Kvs, base.Header.Revision
	mod := modRevision(cur)
	r := e.retrier()
	doubt := false // an attempt failed, and may have been applied
	var wrote int64
	err = r.do(ctx, func() error {
		for {
			resp, err := c.Txn(ctx).
				If(clientv3.Compare(clientv3.ModRevision(revKey), "=", mod), clientv3.Compare(clientv3.Version(key), "=", 0)).
				Then(clientv3.OpPut(key, val)).
				Else(clientv3.OpGet(key), clientv3.OpGet(revKey)).Commit()
			switch {
			case err != nil:
				doubt = true
				return err
			case resp.Succeeded:
				wrote = resp.Header.Revision
				return nil
			}
			if kvs := resp.Responses[0].GetResponseRange().Kvs; len(kvs) > 0 {
				wrote = kvs[0].ModRevision // an earlier attempt's write, pending
				return nil
			}
			if doubt {
				w, err := e.writtenBefore(ctx, c, key, revKey, from)
				if err != nil || w != 0 {
					wrote = w
					return err
				}
			}
			// No attempt applied: the revision key changed meanwhile.
			cur, from, doubt = resp.Responses[1].GetResponseRange().Kvs, resp.Header.Revision, false
			mod = modRevision(cur)
		}
	})
	w := written{rev: wrote}
	if len(cur) > 0 {
		w.revision = cur[0]
	}
	return w, err
}

// resyncRevision is the resync revision N a revision key holds (nil, or
// a value that does not decode: 0).
func (e *env) resyncRevision(kv *mvccpb.KeyValue) uint64 {
	if kv == nil {
		return 0
	}
	r, err := e.layout.DecodeRevision(string(kv.Key), kv.Value)
	if err != nil {
		return 0
	}
	return r.Revision
}

// writtenBefore tells whether key existed just before the first change of
// revKey after etcd revision from, and returns the revision of its write
// then (0: it did not exist).
func (e *env) writtenBefore(ctx context.Context, c *clientv3.Client, key, revKey string, from int64) (int64, error) {
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	var change int64
	for resp := range c.Watch(wctx, revKey, clientv3.WithRev(from+1)) {
		if resp.CompactRevision != 0 {
			return 0, fmt.Errorf("an earlier attempt may have been written and served by a round, and etcd cannot tell (%w): not writing it again, "+
				"which could run a second round; check resyncctl history and trigger again if no round served it", rpctypes.ErrCompacted)
		}
		if err := resp.Err(); err != nil {
			return 0, fmt.Errorf("watch %s: %w", revKey, err)
		}
		if len(resp.Events) > 0 {
			change = resp.Events[0].Kv.ModRevision
			break
		}
	}
	if change == 0 {
		return 0, fmt.Errorf("watch %s: %w", revKey, context.Cause(wctx))
	}
	resp, err := c.Get(ctx, key, clientv3.WithRev(change-1))
	if err != nil {
		return 0, fmt.Errorf("read %s at revision %d: %w", key, change-1, err)
	}
	if len(resp.Kvs) == 0 {
		return 0, nil
	}
	return resp.Kvs[0].ModRevision, nil
}

func modRevision(kvs []*mvccpb.KeyValue) int64 {
	if len(kvs) == 0 {
		return 0
	}
	return kvs[0].ModRevision
}

// checkScope fails unless every target's agent (and plugin) has live
// registrations.
func (e *env) checkScope(ctx context.Context, c *clientv3.Client, targets []schema.Scope) error {
	rows, err := e.readRegistrations(ctx, c, 0)
	if err != nil {
		return err
	}
	for _, t := range targets {
		if t.All() {
			continue
		}
		if err := checkTarget(rows, t); err != nil {
			return err
		}
	}
	return nil
}

func checkTarget(rows []regRow, scope schema.Scope) error {
	var agents, plugins []string
	for _, r := range rows {
		if len(agents) == 0 || agents[len(agents)-1] != r.Agent {
			agents = append(agents, r.Agent) // rows are sorted by agent
		}
		if r.Agent == scope.Agent {
			plugins = append(plugins, r.Plugin)
		}
	}
	if len(plugins) == 0 {
		known := "none"
		if len(agents) > 0 {
			known = listFirst(agents, 20)
		}
		return fmt.Errorf("agent %s has no live registrations (known agents: %s)", scope.Agent, known)
	}
	if scope.Plugin != "" && !slices.Contains(plugins, scope.Plugin) {
		return fmt.Errorf("plugin %s of agent %s has no live registration (its plugins: %s)", scope.Plugin, scope.Agent, listFirst(plugins, 20))
	}
	return nil
}

func printFinal(w io.Writer, r *coordinator.RoundView) {
	verdict := "clean"
	if !r.Clean() {
		verdict = "NOT clean"
	}
	fmt.Fprintf(w, "round %d finished %s in %s: %s\n", r.Revision, verdict, durationMS(r.DurationMS), countsText(r.Counts))
	tw := newTable(w)
	for _, id := range r.Failed {
		row(tw, "  failed", id, r.Errors[id.String()])
	}
	for _, id := range r.TimedOut {
		row(tw, "  timed_out", id, "")
	}
	for _, id := range r.Departed {
		row(tw, "  departed", id, "")
	}
	tw.Flush()
}

// waiter follows etcd from the request's write until the round that
// consumed the request completes.
//
// Which round consumed it: the leader deletes consumed requests in the same
// transaction that writes {N, Started}, so the deletion's etcd revision is
// that of the revision key's write; when there are too many requests for one
// transaction it deletes the rest right after, while round N runs, so a
// deletion at another etcd revision belongs to the last round started.
type waiter struct {
	e      *env
	c      *clientv3.Client
	out    io.Writer
	reqKey string
	rev    int64 // etcd revision of the request's write

	n0        uint64                       // resync revision when the request was written
	started   map[int64]uint64             // etcd revision of a {N, Started} write -> N
	last      uint64                       // last N seen Started since the request
	records   map[uint64]*schema.Round     // rounds/<N> records seen since the request
	parts     map[uint64][]schema.PluginID // rounds/<N>/agents/ records seen since the request
	consumed  uint64                       // the round that consumed the request; 0 until known
	acks      map[schema.PluginID]schema.Ack
	live      map[schema.PluginID]bool
	final     *schema.Round
	lastLine  string
	lastPrint time.Time
}

func (w *waiter) wait(ctx context.Context, timeout time.Duration) (*schema.Round, error) {
	w.started, w.records, w.parts = map[int64]uint64{}, map[uint64]*schema.Round{}, map[uint64][]schema.PluginID{}
	if err := w.load(ctx, w.rev); err != nil {
		if !errors.Is(err, rpctypes.ErrCompacted) {
			return nil, err
		}
		// etcd compacted the request's write revision before the waiter
		// read it (compaction every few seconds, a slow read): catch up
		// from the state now, as after a watch that lost its history. The
		// watch from the request's write then resets, and catches up again.
		if err := w.resync(ctx, 0); err != nil {
			return nil, err
		}
	}
	if leader, err := w.leaderNow(ctx); err == nil && leader == "" {
		w.e.warn("no coordinator leads right now: the request waits until one does (is resyncd running?)")
	}
	wctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	events, done := w.follow(wctx)
	defer func() {
		cancel()
		<-done
	}()
	tick := time.NewTicker(heartbeat)
	defer tick.Stop()
	for {
		select {
		case <-tick.C:
			w.report(true)
			continue
		case err := <-done:
			done <- err // for the deferred wait
			if wctx.Err() != nil {
				return nil, w.stopped(ctx, timeout)
			}
			return nil, err
		case ev := <-events:
			err := w.handle(wctx, ev)
			switch {
			case w.final != nil:
				return w.final, nil
			case wctx.Err() != nil:
				return nil, w.stopped(ctx, timeout)
			case err != nil:
				return nil, err
			}
		}
	}
}

// follow starts the goroutine that follows the prefix with listwatch from
// the request's write (Since: wait read the state at it), re-listing when
// compaction took the history. Its events come on events, where the
// heartbeat interleaves with them; its end comes on done, once, after
// ctx ends or on an error: the caller cancels ctx and receives from done.
func (w *waiter) follow(ctx context.Context) (<-chan listwatch.Event, chan error) {
	events := make(chan listwatch.Event)
	done := make(chan error, 1)
	go func() {
		done <- listwatch.Run(ctx, w.c, w.e.layout.Prefix(), listwatch.Options{Prefix: true, Since: w.rev}, func(ev listwatch.Event) error {
			select {
			case events <- ev:
				return nil
			case <-ctx.Done():
				return ctx.Err()
			}
		})
	}()
	return events, done
}

// handle follows one listwatch event: the changes of one watch response, or
// after the watch lost its history (compaction) a Reset, on which the
// waiter reads the state at the Reset's revision.
func (w *waiter) handle(ctx context.Context, ev listwatch.Event) error {
	if ev.Reset {
		rctx, cancel := w.e.etcd.CommandContext(ctx)
		err := w.resync(rctx, ev.Revision)
		cancel()
		if err != nil {
			return err
		}
	}
	for _, ch := range ev.Changes {
		if err := w.apply(ch); err != nil {
			return err
		}
	}
	if err := w.settle(ctx); err != nil || w.final != nil {
		return err
	}
	w.report(false)
	return nil
}

// load reads the acks and registrations at etcd revision rev (the
// revision key at the request's write came with the write: written).
func (w *waiter) load(ctx context.Context, rev int64) error {
	ctx, cancel := w.e.etcd.CommandContext(ctx)
	defer cancel()
	regs, err := w.e.readRegistrations(ctx, w.c, rev)
	if err != nil {
		return err
	}
	w.live = liveSet(regs)
	w.acks, err = w.e.readAcks(ctx, w.c, rev)
	return err
}

func (w *waiter) leaderNow(ctx context.Context) (string, error) {
	ctx, cancel := w.e.etcd.CommandContext(ctx)
	defer cancel()
	return w.e.leader(ctx, w.c)
}

// apply follows one watch event.
func (w *waiter) apply(ev *clientv3.Event) error {
	key := string(ev.Kv.Key)
	del := ev.Type == clientv3.EventTypeDelete
	if key == w.reqKey {
		return w.applyRequest(ev, del)
	}
	k, err := w.e.layout.Parse(key)
	if err != nil {
		if !del {
			w.e.skipped(err)
		}
		return nil
	}
	id := schema.PluginID{Agent: k.Agent, Plugin: k.Plugin}
	switch {
	case k.Kind == schema.KindAck && del:
		delete(w.acks, id)
	case k.Kind == schema.KindRegistration && del:
		delete(w.live, id)
	case del:
	default:
		err = w.applyPut(k.Kind, id, ev.Kv)
	}
	if err != nil {
		w.e.skipped(err)
	}
	return nil
}

// applyRequest follows the request key: its deletion names the round that
// consumed it.
func (w *waiter) applyRequest(ev *clientv3.Event, del bool) error {
	if !del || w.consumed != 0 {
		return nil
	}
	if n, ok := w.started[ev.Kv.ModRevision]; ok {
		w.consumed = n
	} else if w.last != 0 {
		w.consumed = w.last
	} else {
		return fmt.Errorf("request %s was deleted before any round started (by hand?): no round serves it", w.reqKey)
	}
	w.line(fmt.Sprintf("round %d started for the request", w.consumed))
	return nil
}

// applyPut follows the write of a key of kind (id names its plugin for
// acks and registrations); an error is a value it could not decode.
func (w *waiter) applyPut(kind schema.Kind, id schema.PluginID, kv *mvccpb.KeyValue) error {
	key := string(kv.Key)
	switch kind {
	case schema.KindRevision:
		r, err := w.e.layout.DecodeRevision(key, kv.Value)
		if err != nil {
			return err
		}
		if r.State == schema.Started {
			w.started[kv.ModRevision] = r.Revision
			w.last = max(w.last, r.Revision)
		}
	case schema.KindRound:
		r, err := w.e.layout.DecodeRound(key, kv.Value)
		if err != nil {
			return err
		}
		w.records[r.Revision] = &r
		if r.Revision == w.consumed && r.State == schema.NotActive {
			w.final = &r
		}
	case schema.KindRoundAgent:
		return w.applyRoundAgent(key, kv.Value)
	case schema.KindAck:
		_, a, err := w.e.decodeAck(kv)
		if err != nil {
			return err
		}
		w.acks[id] = a
	case schema.KindRegistration:
		if _, err := w.e.decodeRegistration(kv); err != nil {
			return err
		}
		w.live[id] = true
	}
	return nil
}

// applyRoundAgent records the participants of a round's agent record.
func (w *waiter) applyRoundAgent(key string, value []byte) error {
	ra, err := w.e.layout.DecodeRoundAgent(key, value)
	if err != nil {
		return err
	}
	if ra.State == schema.Started {
		for _, p := range ra.Plugins {
			w.parts[ra.Revision] = append(w.parts[ra.Revision], schema.PluginID{Agent: ra.Agent, Plugin: p})
		}
	}
	return nil
}

// settle completes what one response's events imply: the consumed round's
// record and, when it finished before we saw its summary, the summary.
func (w *waiter) settle(ctx context.Context) error {
	if w.consumed == 0 || w.final != nil {
		return nil
	}
	if r := w.records[w.consumed]; r != nil && r.State == schema.NotActive {
		w.final = r
		return nil
	}
	if w.last > w.consumed || w.records[w.consumed] == nil {
		// A later round started (ours finished unseen) or its record was
		// not in the stream: read it.
		rctx, cancel := w.e.etcd.CommandContext(ctx)
		defer cancel()
		r, err := w.e.readRound(rctx, w.c, w.consumed)
		if err != nil {
			return err
		}
		if r != nil {
			w.records[w.consumed] = r
			if r.State == schema.NotActive {
				w.final = r
			}
		} else if w.last > w.consumed {
			return fmt.Errorf("round %d finished but its record %s is gone or unreadable: see resyncctl history", w.consumed, w.e.layout.Round(w.consumed))
		}
	}
	return nil
}

// resync catches up after the watch lost its history: it reads the state
// at etcd revision rev (0: now; also when etcd compacted rev before the
// reads). If the request was consumed unseen, the first round after the
// request's write is taken as its round.
func (w *waiter) resync(ctx context.Context, rev int64) error {
	if rev != 0 {
		if err := w.resyncAt(ctx, rev); !errors.Is(err, rpctypes.ErrCompacted) {
			return err
		}
	}
	return etcderr.ReadAgainIfCompacted(func() error { return w.resyncAt(ctx, 0) })
}

// resyncAt is resync at rev, or (0) at the revision of its first read.
func (w *waiter) resyncAt(ctx context.Context, rev int64) error {
	resp, err := w.c.Get(ctx, w.reqKey, clientv3.WithRev(rev))
	if err != nil {
		return fmt.Errorf("read %s: %w", w.reqKey, err)
	}
	if rev == 0 {
		rev = resp.Header.Revision // the rest at the same revision
	}
	if w.consumed == 0 && len(resp.Kvs) == 0 {
		w.consumed = w.n0 + 1
		w.line(fmt.Sprintf("round %d started for the request", w.consumed))
	}
	// A request still pending at rev is taken by a round after the one
	// there: the guess of a later catch-up.
	revKey := w.e.layout.Revision()
	rresp, err := w.c.Get(ctx, revKey, clientv3.WithRev(rev))
	if err != nil {
		return fmt.Errorf("read %s: %w", revKey, err)
	}
	if len(rresp.Kvs) == 1 {
		if n := w.e.resyncRevision(rresp.Kvs[0]); n != 0 {
			w.n0 = n
		}
	}
	if err := w.load(ctx, rev); err != nil {
		return err
	}
	if w.consumed != 0 {
		delete(w.records, w.consumed) // settle reads it again
	}
	return nil
}

// report prints the state when it changed, or again on a heartbeat.
func (w *waiter) report(heartbeat bool) {
	var s string
	switch r := w.records[w.consumed]; {
	case w.consumed == 0:
		if !heartbeat {
			return
		}
		s = "waiting for the coordinator to start a round for the request"
	case r == nil:
		s = fmt.Sprintf("round %d: running (participants not known yet)", w.consumed)
	default:
		p := computeProgress(r, w.parts[w.consumed], w.acks, w.live)
		s = fmt.Sprintf("round %d: %s", w.consumed, countsText(p.Counts))
	}
	if s == w.lastLine && !heartbeat {
		return
	}
	w.line(s)
}

func (w *waiter) line(s string) {
	w.lastLine = s
	fmt.Fprintf(w.out, "%s  %s\n", time.Now().Format("15:04:05.000"), s)
}

// stopped explains why the wait ended without a result.
func (w *waiter) stopped(ctx context.Context, timeout time.Duration) error {
	if ctx.Err() != nil {
		return errors.New("interrupted while waiting: the request stays queued; follow it with resyncctl status")
	}
	if w.consumed == 0 {
		return fmt.Errorf("timed out after %v (--timeout): no round started for request %s; it stays queued: is a coordinator (resyncd) running?", timeout, w.reqKey)
	}
	if r := w.records[w.consumed]; r != nil {
		p := computeProgress(r, w.parts[w.consumed], w.acks, w.live)
		return fmt.Errorf("timed out after %v (--timeout) waiting for round %d: %s; pending: %s", timeout, w.consumed, countsText(p.Counts), ids(p.Pending))
	}
	return fmt.Errorf("timed out after %v (--timeout) waiting for round %d to finish", timeout, w.consumed)
}
