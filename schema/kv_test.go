package schema

import (
	"errors"
	"strings"
	"testing"
	"time"
)

// TestLayoutDecodeChecksKeyAndValue: each family's Layout decoder accepts
// its own record and refuses, with a *DecodeError naming the key and what is
// wrong, a key of another family, a malformed value, and a value that
// disagrees with its key.
func TestLayoutDecodeChecksKeyAndValue(t *testing.T) {
	l := MustLayout("/t/")
	at := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	enc := func(v validator) string {
		b, err := Encode(v)
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	reg := enc(Registration{Agent: "a", Plugin: "p", RegisteredAt: at})
	ack := enc(Ack{Revision: 3, Result: ResultOK, AckedAt: at})
	req := enc(Request{Reason: "r", Cause: CauseManual, RequestedBy: "me", RequestedAt: at})
	round := enc(Round{Revision: 3, State: Started, Counts: RoundCounts{}, StartedAt: at, Deadline: at})
	ra := enc(RoundAgent{Revision: 3, Agent: "a", State: Started, Plugins: []string{"p"}})
	scope := enc(RoundScope{Revision: 3, Targets: []string{"a"}})
	rev := enc(Revision{Revision: 3, State: Started, StartedAt: at, Deadline: at})
	owner := enc(Owner{Agent: "a", Lease: "694d", Process: "3f2a", Started: at, ClaimedAt: at})

	dec := map[Kind]func(key, value string) error{
		KindRevision:     func(k, v string) error { _, err := l.DecodeRevision(k, []byte(v)); return err },
		KindRegistration: func(k, v string) error { _, err := l.DecodeRegistration(k, []byte(v)); return err },
		KindAck:          func(k, v string) error { _, _, err := l.DecodeAck(k, []byte(v)); return err },
		KindRequest:      func(k, v string) error { _, _, err := l.DecodeRequest(k, []byte(v)); return err },
		KindRound:        func(k, v string) error { _, err := l.DecodeRound(k, []byte(v)); return err },
		KindRoundAgent:   func(k, v string) error { _, err := l.DecodeRoundAgent(k, []byte(v)); return err },
		KindRoundScope:   func(k, v string) error { _, err := l.DecodeRoundScope(k, []byte(v)); return err },
		KindOwner:        func(k, v string) error { _, err := l.DecodeOwner(k, []byte(v)); return err },
		KindWakeShard:    func(k, v string) error { _, err := l.DecodeWake(k, []byte(v)); return err },
		KindWakeAgent:    func(k, v string) error { _, err := l.DecodeWake(k, []byte(v)); return err },
	}
	for _, tc := range []struct {
		kind       Kind
		key, value string
		want       string // "" for ok, else part of the error
	}{
		{KindRevision, l.Revision(), rev, ""},
		{KindRevision, l.Round(3), rev, "not a revision key"},
		{KindWakeShard, l.WakeShard(7), rev, ""},
		{KindWakeAgent, l.WakeAgent("node 1"), rev, ""},
		{KindWakeAgent, l.Revision(), rev, "not a wake key"},
		{KindWakeShard, l.Prefix() + "wake/shards/64", rev, "wake shard key must be"},
		{KindWakeShard, l.Prefix() + "wake/shards/7", rev, "wake shard key must be"},
		{KindRegistration, l.Registration("a", "p"), reg, ""},
		{KindRegistration, l.Registration("a", "q"), reg, "value names a/p, the key a/q"},
		{KindRegistration, l.Registration("b", "p"), reg, "value names a/p, the key b/p"},
		{KindRegistration, l.Ack("a", "p"), reg, "not a registration key"},
		{KindRegistration, l.Registration("a", "p"), "{not json", "not valid JSON"},
		{KindRegistration, "/other/registrations/a/p", reg, "not under the prefix"},
		{KindAck, l.Ack("a", "p"), ack, ""},
		{KindAck, l.Registration("a", "p"), ack, "not an ack key"},
		{KindAck, l.Ack("a", "p"), `{"revision":3}`, "result"},
		{KindRequest, l.OperatorRequest("x1"), req, ""},
		{KindRequest, l.Revision(), req, "not a request key"},
		{KindRound, l.Round(3), round, ""},
		{KindRound, l.Round(4), round, "holds round 3"},
		{KindRound, l.RoundAgent(3, "a"), round, "not a round key"},
		{KindRoundAgent, l.RoundAgent(3, "a"), ra, ""},
		{KindRoundAgent, l.RoundAgent(3, "b"), ra, "holds round 3 of agent a"},
		{KindRoundAgent, l.RoundAgent(4, "a"), ra, "holds round 3 of agent a"},
		{KindRoundAgent, l.Round(3), ra, "not a round agent key"},
		{KindRoundScope, l.RoundScope(3, 0), scope, ""},
		{KindRoundScope, l.RoundScope(4, 0), scope, "holds round 3"},
		{KindOwner, l.Owner("a"), owner, ""},
		{KindOwner, l.Owner("b"), owner, "value names agent a, the key b"},
		{KindOwner, l.Owner("a"), `{"agent":"a","lease":"1","process":"","started":"2026-01-01T00:00:00Z","claimed_at":"2026-01-01T00:00:00Z"}`, "no process id"},
		{KindOwner, l.Registration("a", "p"), owner, "not an owner key"},
	} {
		t.Run(tc.kind.String()+" "+tc.key, func(t *testing.T) {
			err := dec[tc.kind](tc.key, tc.value)
			if tc.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			var de *DecodeError
			if !errors.As(err, &de) || de.Key != tc.key || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want a DecodeError of key %s saying %q", err, tc.key, tc.want)
			}
		})
	}
}

// TestLayoutDecodeReturnsKeyParts: the plugin of an ack and the writer of a
// request come from the key.
func TestLayoutDecodeReturnsKeyParts(t *testing.T) {
	l := MustLayout("/t/")
	id, a, err := l.DecodeAck(l.Ack("a", "p"), []byte(`{"revision":2,"result":"error","error":"boom","acked_at":"2026-01-01T00:00:00Z"}`))
	if err != nil || id != (PluginID{"a", "p"}) || a.Revision != 2 || a.Error != "boom" {
		t.Fatalf("ack: %v %+v %v", id, a, err)
	}
	w, r, err := l.DecodeRequest(l.AgentRequest("a", "x1"), []byte(`{"reason":"r","cause":"error","scope":{"agent":"a"},"requested_by":"a","requested_at":"2026-01-01T00:00:00Z"}`))
	if err != nil || w != (Writer{Kind: WriterAgent, Agent: "a"}) || r.Scope.Agent != "a" {
		t.Fatalf("request: %+v %+v %v", w, r, err)
	}
}
