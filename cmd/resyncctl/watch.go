package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/pflag"
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
		// Start, or the watched history was compacted: print the current
		// revision and leader, not the whole state.
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
		return nil
	}
	for _, e := range ev.Changes {
		s.change(e)
	}
	return nil
}

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
		if del {
			s.print(watchLine{Kind: "revision", Event: "delete", Key: key}, "deleted (the leader writes it again)")
			return
		}
		r, err := s.e.layout.DecodeRevision(key, ev.Kv.Value)
		if err != nil {
			s.e.skipped(err)
			return
		}
		s.print(watchLine{Kind: "revision", Event: "put", Key: key, Revision: &r}, revisionText(&r))
	case schema.KindRound:
		if del {
			return // history pruning
		}
		r, err := s.e.layout.DecodeRound(key, ev.Kv.Value)
		if err != nil {
			s.e.skipped(err)
			return
		}
		if r.State != schema.NotActive {
			return // the revision line says it started
		}
		// rounds/<N>/agents/ and rounds/<N>/scope/ keys (KindRoundAgent,
		// KindRoundScope) are not printed: the summary counts them.
		s.print(watchLine{Kind: "round", Event: "put", Key: key, Round: &r}, roundText(&r))
	case schema.KindAck:
		if del {
			return // the agent's lease went away: registration lines say so
		}
		id, a, err := s.e.decodeAck(ev.Kv)
		if err != nil {
			s.e.skipped(err)
			return
		}
		text := fmt.Sprintf("%s revision=%d result=%s", id, a.Revision, a.Result)
		if a.Error != "" {
			text += " error=" + quote(a.Error)
		}
		s.print(watchLine{Kind: "ack", Event: "put", Key: key, Agent: id.Agent, Plugin: id.Plugin, Ack: &a}, text)
	case schema.KindRegistration:
		if del {
			s.print(watchLine{Kind: "registration", Event: "delete", Key: key, Agent: k.Agent, Plugin: k.Plugin},
				fmt.Sprintf("%s/%s gone", k.Agent, k.Plugin))
			return
		}
		r, err := s.e.decodeRegistration(ev.Kv)
		if err != nil {
			s.e.skipped(err)
			return
		}
		s.print(watchLine{Kind: "registration", Event: "put", Key: key, Agent: r.Agent, Plugin: r.Plugin, Registration: &r.Registration},
			fmt.Sprintf("%s registered order=%d lease=%x", r.ID(), r.Order, int64(r.Lease)))
	case schema.KindRequest:
		if del {
			s.print(watchLine{Kind: "request", Event: "delete", Key: key, RequestID: k.ID}, k.ID+" consumed")
			return
		}
		_, r, err := s.e.layout.DecodeRequest(key, ev.Kv.Value)
		if err != nil {
			s.e.skipped(err)
			return
		}
		s.print(watchLine{Kind: "request", Event: "put", Key: key, RequestID: k.ID, Request: &r},
			fmt.Sprintf("%s cause=%s scope=%s by=%s reason=%s", k.ID, r.Cause, strings.ReplaceAll(r.ScopeText(), " ", ":"), r.RequestedBy, quote(r.Reason)))
	}
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
	if r.Truncated {
		s += " truncated"
	}
	return s
}

func quote(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}
