package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/pflag"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/resyncd/resync/internal/listwatch"
	"github.com/resyncd/resync/schema"
)

// watchLine is one line of `watch -o json` (JSON lines).
type watchLine struct {
	Time time.Time `json:"time"`
	// Kind: revision, round, ack, registration, request, leader.
	Kind string `json:"kind"`
	// Event: current (the state when the watch starts or re-syncs), put,
	// delete.
	Event        string               `json:"event"`
	Key          string               `json:"key,omitempty"`
	Revision     *schema.Revision     `json:"revision,omitempty"`
	Round        *schema.Round        `json:"round,omitempty"`
	Agent        string               `json:"agent,omitempty"`
	Plugin       string               `json:"plugin,omitempty"`
	Ack          *schema.Ack          `json:"ack,omitempty"`
	Registration *schema.Registration `json:"registration,omitempty"`
	RequestID    string               `json:"request_id,omitempty"`
	Request      *schema.Request      `json:"request,omitempty"`
	Leader       *string              `json:"leader,omitempty"`
}

func setupWatch(fs *pflag.FlagSet) func(context.Context, *env) error {
	return func(ctx context.Context, e *env) error {
		c, err := e.dial(ctx)
		if err != nil {
			return err
		}
		w := &streamer{ctx: ctx, e: e, c: c}
		err = listwatch.Run(ctx, c, e.layout.Prefix(), listwatch.Options{Prefix: true}, w.handle)
		if ctx.Err() != nil {
			return nil // Ctrl-C or SIGTERM: the normal end
		}
		return err
	}
}

// streamer prints one line per interesting change.
type streamer struct {
	ctx    context.Context
	e      *env
	c      *clientv3.Client
	leader string
	synced bool
}

func (s *streamer) handle(ev listwatch.Event) error {
	if ev.Reset {
		s.reset(ev)
		return nil
	}
	for _, e := range ev.Changes {
		s.change(e)
	}
	return nil
}

// reset follows the start, or a compaction of the watched history: it
// prints the current revision and leader, not the whole state.
func (s *streamer) reset(ev listwatch.Event) {
	if s.synced {
		s.print(watchLine{Kind: "note", Event: "current"}, "history compacted: re-synced at etcd revision "+itoa(int(ev.Revision)))
	}
	s.synced = true
	found := false
	for _, kv := range ev.Kvs {
		if string(kv.Key) != s.e.layout.Revision() {
			continue
		}
		r, err := s.e.layout.DecodeRevision(string(kv.Key), kv.Value)
		if err != nil {
			s.e.skipped(err)
			break
		}
		found = true
		s.print(watchLine{Kind: "revision", Event: "current", Key: string(kv.Key), Revision: &r}, revisionText(&r))
	}
	if !found {
		s.print(watchLine{Kind: "revision", Event: "current"}, "none yet")
	}
	s.leader = ""
	s.checkLeader(true)
}

// change prints one change of a key, by its kind. A value that does not
// decode is skipped with a warning.
func (s *streamer) change(ev *clientv3.Event) {
	key := string(ev.Kv.Key)
	del := ev.Type == clientv3.EventTypeDelete
	k, err := s.e.layout.Parse(key)
	if err != nil {
		if !del {
			s.e.skipped(err)
		}
		return
	}
	switch k.Kind {
	case schema.KindElection:
		s.checkLeader(false)
	case schema.KindRevision:
		err = s.changeRevision(key, ev.Kv, del)
	case schema.KindRound:
		// rounds/<N>/agents/ and rounds/<N>/scope/ keys (KindRoundAgent,
		// KindRoundScope) are not printed: the summary counts them.
		if !del { // a delete is history pruning
			err = s.changeRound(key, ev.Kv)
		}
	case schema.KindAck:
		if !del { // a delete: the agent's lease went away; registration lines say so
			err = s.changeAck(key, ev.Kv)
		}
	case schema.KindRegistration:
		err = s.changeRegistration(k, key, ev.Kv, del)
	case schema.KindRequest:
		err = s.changeRequest(k, key, ev.Kv, del)
	}
	if err != nil {
		s.e.skipped(err)
	}
}

func (s *streamer) changeRevision(key string, kv *mvccpb.KeyValue, del bool) error {
	if del {
		s.print(watchLine{Kind: "revision", Event: "delete", Key: key}, "deleted (the leader writes it again)")
		return nil
	}
	r, err := s.e.layout.DecodeRevision(key, kv.Value)
	if err != nil {
		return err
	}
	s.print(watchLine{Kind: "revision", Event: "put", Key: key, Revision: &r}, revisionText(&r))
	return nil
}

// changeRound prints a round's summary when it finished (the revision
// line says it started), and a wave round's plan each time it changes
// (its start, the canary phase, pause, resume, abort).
func (s *streamer) changeRound(key string, kv *mvccpb.KeyValue) error {
	r, err := s.e.layout.DecodeRound(key, kv.Value)
	if err != nil {
		return err
	}
	if r.State != schema.NotActive {
		if r.Wave != nil {
			s.print(watchLine{Kind: "wave", Event: "put", Key: key, Round: &r}, fmt.Sprintf("%d %s", r.Revision, waveDoc{WavePlan: *r.Wave}.planString()))
		}
		return nil
	}
	s.print(watchLine{Kind: "round", Event: "put", Key: key, Round: &r}, roundText(&r))
	return nil
}

func (s *streamer) changeAck(key string, kv *mvccpb.KeyValue) error {
	id, a, err := s.e.decodeAck(kv)
	if err != nil {
		return err
	}
	text := fmt.Sprintf("%s revision=%d result=%s", id, a.Revision, a.Result)
	if a.Error != "" {
		text += " error=" + quote(a.Error)
	}
	s.print(watchLine{Kind: "ack", Event: "put", Key: key, Agent: id.Agent, Plugin: id.Plugin, Ack: &a}, text)
	return nil
}

func (s *streamer) changeRegistration(k schema.Key, key string, kv *mvccpb.KeyValue, del bool) error {
	if del {
		s.print(watchLine{Kind: "registration", Event: "delete", Key: key, Agent: k.Agent, Plugin: k.Plugin},
			fmt.Sprintf("%s/%s gone", k.Agent, k.Plugin))
		return nil
	}
	r, err := s.e.decodeRegistration(kv)
	if err != nil {
		return err
	}
	s.print(watchLine{Kind: "registration", Event: "put", Key: key, Agent: r.Agent, Plugin: r.Plugin, Registration: &r.Registration},
		fmt.Sprintf("%s registered order=%d lease=%x", r.ID(), r.Order, int64(r.Lease)))
	return nil
}

func (s *streamer) changeRequest(k schema.Key, key string, kv *mvccpb.KeyValue, del bool) error {
	if del {
		s.print(watchLine{Kind: "request", Event: "delete", Key: key, RequestID: k.ID}, k.ID+" consumed")
		return nil
	}
	_, r, err := s.e.layout.DecodeRequest(key, kv.Value)
	if err != nil {
		return err
	}
	s.print(watchLine{Kind: "request", Event: "put", Key: key, RequestID: k.ID, Request: &r},
		fmt.Sprintf("%s cause=%s scope=%s by=%s reason=%s", k.ID, r.Cause, strings.ReplaceAll(r.ScopeText(), " ", ":"), r.RequestedBy, quote(r.Reason)))
	return nil
}

// checkLeader prints the leader when it changed (or always when force).
func (s *streamer) checkLeader(force bool) {
	ctx, cancel := s.e.etcd.CommandContext(s.ctx)
	defer cancel()
	l, err := s.e.leader(ctx, s.c)
	if err != nil {
		if !errors.Is(err, context.Canceled) {
			s.e.warn("reading the leader: %v", err)
		}
		return
	}
	if l == s.leader && !force {
		return
	}
	s.leader = l
	text := l
	if l == "" {
		text = "none"
	}
	event := "put"
	if force {
		event = "current"
	}
	s.print(watchLine{Kind: "leader", Event: event, Leader: &l}, text)
}

func (s *streamer) print(l watchLine, text string) {
	l.Time = time.Now()
	if s.e.json {
		b, err := json.Marshal(l)
		if err != nil {
			s.e.warn("encoding a line: %v", err)
			return
		}
		fmt.Fprintf(s.e.stdout, "%s\n", b)
		return
	}
	fmt.Fprintf(s.e.stdout, "%s  %-12s  %s\n", l.Time.Format("2006-01-02T15:04:05.000Z07:00"), l.Kind, cell(text))
}

func revisionText(r *schema.Revision) string {
	s := fmt.Sprintf("%d %s cause=%s scope=%s participants=%d leader=%s reason=%s",
		r.Revision, r.State, r.Cause, strings.ReplaceAll(r.Scope.String(), " ", ":"), r.Participants, r.Leader, quote(r.Reason))
	return s
}

func roundText(r *schema.Round) string {
	verdict := "clean"
	if !r.Clean() {
		verdict = "unclean"
	}
	s := fmt.Sprintf("%d finished %s in %s participants=%d acked=%d failed=%d timed_out=%d departed=%d",
		r.Revision, verdict, durationMS(r.DurationMS), r.Counts.Participants, r.Counts.Acked, r.Counts.Failed, r.Counts.TimedOut, r.Counts.Departed)
	if ex := r.Examples; ex != nil {
		more := func(n, shown int) string {
			if n > shown {
				return fmt.Sprintf(",+%d", n-shown)
			}
			return ""
		}
		if len(ex.Failed) > 0 {
			s += " failed:" + strings.ReplaceAll(ids(ex.Failed), " ", "") + more(r.Counts.Failed, len(ex.Failed))
		}
		if len(ex.TimedOut) > 0 {
			s += " timed_out:" + strings.ReplaceAll(ids(ex.TimedOut), " ", "") + more(r.Counts.TimedOut, len(ex.TimedOut))
		}
	}
	if r.Counts.Skipped > 0 {
		s += fmt.Sprintf(" skipped=%d", r.Counts.Skipped)
	}
	if r.Wave != nil && r.Wave.Aborted != "" {
		s += " aborted=" + quote(r.Wave.Aborted)
	}
	if r.Truncated {
		s += " truncated"
	}
	return s
}

func quote(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}
