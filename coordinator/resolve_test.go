package coordinator

import (
	"context"
	"io"
	"strings"
	"testing"

	"github.com/sirupsen/logrus"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/resyncd/resync/schema"
)

// outcomeHooks records Resolved calls.
type outcomeHooks struct {
	NopHooks
	got map[schema.PluginID][]schema.Outcome
}

func (h *outcomeHooks) Resolved(id schema.PluginID, o schema.Outcome) {
	h.got[id] = append(h.got[id], o)
}

// TestLeaderResolvesByTheSchemaRule: the leader resolves each participant
// once, by schema.Resolve over its acks and registrations as their changes
// arrive (no etcd: the state events are fed by hand), and reports the
// typed outcome to Hooks.Resolved.
func TestLeaderResolvesByTheSchemaRule(t *testing.T) {
	const n = 7
	log := logrus.New()
	log.SetOutput(io.Discard)
	hooks := &outcomeHooks{got: map[schema.PluginID][]schema.Outcome{}}
	id := func(p string) schema.PluginID { return schema.PluginID{Agent: "a", Plugin: p} }
	parts := []schema.PluginID{id("ok"), id("err"), id("to"), id("gone"), id("stale"), id("late")}
	l := &leader{co: &Coordinator{hooks: hooks, log: log}, layout: layout, log: log, ctx: context.Background(),
		acks: map[schema.PluginID]schema.Ack{}, regs: map[schema.PluginID]schema.Registration{},
		agentLeases: map[string]clientv3.LeaseID{}, agentRegs: map[string]int{}}
	for i, p := range parts {
		l.regs[p] = schema.Registration{Agent: p.Agent, Plugin: p.Plugin, Order: i}
	}
	l.round = newRoundState(schema.Round{Revision: n}, parts)
	ack := func(p string, a schema.Ack) stateItem { return stateItem{id: id(p), ack: &a, isAck: true} }
	gone := func(p string) stateItem { return stateItem{id: id(p), deleted: true} }
	l.onState(stateEvent{items: []stateItem{
		ack("ok", schema.Ack{Revision: n, Result: schema.ResultOK}),
		ack("err", schema.Ack{Revision: n, Result: schema.ResultError, Error: "boom"}),
		ack("to", schema.Ack{Revision: n, Result: schema.ResultTimeout}),
		ack("stale", schema.Ack{Revision: n - 1, Result: schema.ResultOK}), // another round's: still pending
		gone("gone"),
		gone("ok"), // after its ack: stays acked
		ack("late", schema.Ack{Revision: n, Result: schema.ResultError}),
		ack("late", schema.Ack{Revision: n, Result: schema.ResultOK}), // resolved once: stays failed
	}})
	want := map[schema.PluginID]schema.Outcome{
		id("ok"): schema.OutcomeAcked, id("err"): schema.OutcomeFailed, id("to"): schema.OutcomeTimedOut,
		id("gone"): schema.OutcomeDeparted, id("stale"): schema.OutcomePending, id("late"): schema.OutcomeFailed,
	}
	for p, o := range want {
		if got := l.round.outcome[p]; got != o {
			t.Errorf("%s: %s, want %s", p, got, o)
		}
		if o == schema.OutcomePending {
			if len(hooks.got[p]) != 0 {
				t.Errorf("%s: Resolved called with %v while pending", p, hooks.got[p])
			}
		} else if len(hooks.got[p]) != 1 || hooks.got[p][0] != o {
			t.Errorf("%s: Resolved calls %v, want one with %s", p, hooks.got[p], o)
		}
	}
	if c := l.round.counts; c != (schema.RoundCounts{Participants: 6, Acked: 1, Failed: 2, TimedOut: 1, Departed: 1, Pending: 1}) {
		t.Errorf("counts %+v", c)
	}
	if e := l.round.errs[id("err")]; e != "boom" {
		t.Errorf("error text %q, want boom", e)
	}
	// The stale participant's registration goes: it departs.
	l.onState(stateEvent{items: []stateItem{gone("stale")}})
	if o := l.round.outcome[id("stale")]; o != schema.OutcomeDeparted || l.round.counts.Pending != 0 {
		t.Errorf("stale after its registration went: %s, pending %d", o, l.round.counts.Pending)
	}
}

// TestParticipantsFollowRegistrationChanges: the leader keeps its
// registrations in order between rounds; every change (a new plugin, a
// re-registration with another order, a departure, a whole reset) must
// show in the next round's participants, all-scope and set-scope alike.
func TestParticipantsFollowRegistrationChanges(t *testing.T) {
	log := logrus.New()
	log.SetOutput(io.Discard)
	l := &leader{co: &Coordinator{hooks: NopHooks{}, log: log}, layout: layout, log: log, ctx: context.Background(),
		acks: map[schema.PluginID]schema.Ack{}, regs: map[schema.PluginID]schema.Registration{},
		agentLeases: map[string]clientv3.LeaseID{}, agentRegs: map[string]int{}}
	reg := func(agent, plugin string, order int) stateItem {
		return stateItem{id: schema.PluginID{Agent: agent, Plugin: plugin}, reg: &schema.Registration{Agent: agent, Plugin: plugin, Order: order}}
	}
	gone := func(agent, plugin string) stateItem {
		return stateItem{id: schema.PluginID{Agent: agent, Plugin: plugin}, deleted: true}
	}
	want := func(scope schema.ScopeSet, ids ...string) {
		t.Helper()
		var got []string
		for _, p := range l.participants(scope) {
			got = append(got, p.String())
		}
		if strings.Join(got, " ") != strings.Join(ids, " ") {
			t.Fatalf("participants(%s) = %v, want %v", scope.Summary().String(), got, ids)
		}
	}
	all := schema.AllScopes()
	var b schema.ScopeSet
	b.Add(schema.Scope{Agent: "b"})

	l.onState(stateEvent{items: []stateItem{reg("b", "x", 0), reg("a", "z", 0), reg("a", "y", 1)}})
	want(all, "a/z", "a/y", "b/x")
	want(b, "b/x")
	got := l.participants(all)
	got[0] = schema.PluginID{Agent: "mutated", Plugin: "by-caller"}
	want(all, "a/z", "a/y", "b/x") // callers get their own copy

	l.onState(stateEvent{items: []stateItem{reg("b", "w", 1)}})
	want(all, "a/z", "a/y", "b/x", "b/w")
	l.onState(stateEvent{items: []stateItem{reg("a", "z", 2)}}) // re-registered after y
	want(all, "a/y", "a/z", "b/x", "b/w")
	l.onState(stateEvent{items: []stateItem{gone("b", "x")}})
	want(all, "a/y", "a/z", "b/w")
	want(b, "b/w")
	l.onState(stateEvent{reset: true, regs: map[schema.PluginID]schema.Registration{
		{Agent: "c", Plugin: "v"}: {Agent: "c", Plugin: "v"},
	}, acks: map[schema.PluginID]schema.Ack{}})
	want(all, "c/v")
	want(b)
}
