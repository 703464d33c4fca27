package schema

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"
)

func TestValidateName(t *testing.T) {
	for _, tc := range []struct {
		name string
		ok   bool
		want string // part of the error
	}{
		{"a", true, ""},
		{"vpp-agent_1.2", true, ""},
		{strings.Repeat("x", 128), true, ""},
		// Names real cn-infra agents register.
		{"K8s resources", true, ""},
		{"Config VPP default plug:IF/L2/L3", true, ""},
		{"a/b", true, ""},
		{".", true, ""},
		{"..", true, ""},
		{"é", true, ""},
		{"%", true, ""},
		{strings.Repeat("é", 64), true, ""}, // 128 bytes
		{"", false, "empty"},
		{strings.Repeat("x", 129), false, "129 bytes long: the limit is 128 bytes"},
		{strings.Repeat("é", 65), false, "130 bytes long"},
		{"a\xffb", false, "not valid UTF-8"},
		{"a\nb", false, "control character U+000A"},
		{"a\x00", false, "control character U+0000"},
		{"a\u0085", false, "control character U+0085"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := ValidateName("plugin", tc.name)
			if tc.ok {
				if err != nil {
					t.Fatalf("ValidateName(%q) = %v, want nil", tc.name, err)
				}
				return
			}
			if !errors.Is(err, ErrInvalidName) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("ValidateName(%q) = %v, want ErrInvalidName mentioning %q", tc.name, err, tc.want)
			}
		})
	}
}

func TestValidateToken(t *testing.T) {
	for _, s := range []string{"", ".", "..", "a b", "a/b", strings.Repeat("x", 129)} {
		if err := ValidateToken("request id", s); !errors.Is(err, ErrInvalidName) {
			t.Errorf("ValidateToken(%q) = %v, want ErrInvalidName", s, err)
		}
	}
	if err := ValidateToken("request id", "1-ab.C_d"); err != nil {
		t.Error(err)
	}
}

// Names of [A-Za-z0-9._-] keep their keys (a rolling upgrade finds the old
// keys); every other byte is %XX; "." and ".." are escaped whole.
func TestEscapeName(t *testing.T) {
	for _, tc := range []struct{ name, esc string }{
		{"vpp-agent_1.2", "vpp-agent_1.2"},
		{"node 1", "node%201"},
		{"Config VPP default plug:IF/L2/L3", "Config%20VPP%20default%20plug%3AIF%2FL2%2FL3"},
		{"100%", "100%25"},
		{"é", "%C3%A9"},
		{".", "%2E"},
		{"..", "%2E%2E"},
		{"...", "..."},
		{"a,b", "a%2Cb"},
	} {
		if got := EscapeName(tc.name); got != tc.esc {
			t.Errorf("EscapeName(%q) = %q, want %q", tc.name, got, tc.esc)
		}
		if got, err := UnescapeName("plugin", tc.esc); err != nil || got != tc.name {
			t.Errorf("UnescapeName(%q) = %q, %v, want %q", tc.esc, got, err, tc.name)
		}
	}
}

// Only the canonical escaped form decodes: one key per name.
func TestUnescapeNameRefusesNonCanonical(t *testing.T) {
	for _, tc := range []struct{ s, want string }{
		{"node%2a", "upper-case hex"},
		{"%41", "stands for itself"},
		{"a%2", "truncated"},
		{"a%", "truncated"},
		{"a b", "unescaped byte"},
		{"a/b", "unescaped byte"},
		{".", "must be escaped"},
		{"..", "must be escaped"},
		{"%2E.", "stands for itself"},
		{"", "empty"},
		{"%FF", "not valid UTF-8"},
		{"a%0A", "control character"},
	} {
		if _, err := UnescapeName("plugin", tc.s); !errors.Is(err, ErrInvalidName) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("UnescapeName(%q) = %v, want ErrInvalidName mentioning %q", tc.s, err, tc.want)
		}
	}
}

// Keys carry escaped names and parse back to the real ones; the key/value
// agreement compares real names.
func TestLayoutEscapesNames(t *testing.T) {
	l := MustLayout(DefaultPrefix)
	agent, plugin := "node 1", "Config VPP default plug:IF/L2/L3"
	key := l.Registration(agent, plugin)
	if want := "/resync/registrations/node%201/Config%20VPP%20default%20plug%3AIF%2FL2%2FL3"; key != want {
		t.Fatalf("Registration = %q, want %q", key, want)
	}
	for _, k := range []string{key, l.Ack(agent, plugin), l.Owner(agent), l.AgentRequest(agent, "1-a"), l.RoundAgent(3, agent)} {
		for _, c := range []byte(k) {
			if c < 0x21 || c > 0x7e {
				t.Fatalf("key %q is not readable ASCII", k)
			}
		}
		p, err := l.Parse(k)
		if err != nil || p.Agent != agent {
			t.Fatalf("Parse(%q) = %+v, %v; want agent %q", k, p, err, agent)
		}
	}
	if !strings.HasPrefix(key, l.AgentRegistrations(agent)) || strings.HasPrefix(l.Registration("node 10", "p"), l.AgentRegistrations(agent)) {
		t.Fatal("an agent's prefix does not hold exactly its keys")
	}
	v, _ := Encode(Registration{Agent: agent, Plugin: plugin, RegisteredAt: time.Unix(1, 0).UTC()})
	r, err := l.DecodeRegistration(key, v)
	if err != nil || r.Agent != agent || r.Plugin != plugin {
		t.Fatalf("DecodeRegistration = %+v, %v", r, err)
	}
	id := PluginID{agent, plugin}
	var back PluginID
	if err := back.UnmarshalText([]byte(id.Key())); err != nil || back != id {
		t.Fatalf("PluginID round trip: %+v, %v", back, err)
	}
	var set ScopeSet
	set.Add(Scope{Agent: "a,b"})
	set.AddPlugin(id)
	got, err := ParseTargets(set.Targets())
	if err != nil || !got.Includes("a,b", "x") || !got.Includes(agent, plugin) || got.Includes(agent, "other") {
		t.Fatalf("targets %q do not round-trip: %v", set.Targets(), err)
	}
	if s := set.Summary().String(); !strings.Contains(s, "node 1/Config VPP default plug:IF/L2/L3") {
		t.Fatalf("summary %q does not show the real names", s)
	}
}

func TestLayoutKeysParseBack(t *testing.T) {
	l := MustLayout("/x/resync")
	if l.Prefix() != "/x/resync/" {
		t.Fatalf("prefix %q", l.Prefix())
	}
	for _, tc := range []struct {
		key  string
		want Key
	}{
		{l.Revision(), Key{Kind: KindRevision}},
		{l.Registration("a1", "p.1"), Key{Kind: KindRegistration, Agent: "a1", Plugin: "p.1"}},
		{l.Ack("a1", "p-2"), Key{Kind: KindAck, Agent: "a1", Plugin: "p-2"}},
		{l.AgentRequest("a1", "123-ab"), Key{Kind: KindRequest, Agent: "a1", ID: "123-ab", Writer: Writer{Kind: WriterAgent, Agent: "a1"}}},
		{l.OperatorRequest("123-ab"), Key{Kind: KindRequest, ID: "123-ab", Writer: Writer{Kind: WriterOperator}}},
		{l.LegacyRequest("123-ab"), Key{Kind: KindRequest, ID: "123-ab", Writer: Writer{Kind: WriterLegacy}}},
		{l.Round(42), Key{Kind: KindRound, Round: 42}},
		{l.Election() + "/694d7a", Key{Kind: KindElection, ID: "694d7a"}},
	} {
		got, err := l.Parse(tc.key)
		if err != nil || got != tc.want {
			t.Errorf("Parse(%q) = %+v, %v; want %+v", tc.key, got, err, tc.want)
		}
	}
	if l.Round(42) != "/x/resync/rounds/00000000000000000042" {
		t.Errorf("Round(42) = %q", l.Round(42))
	}
	if l.Round(9) >= l.Round(10) {
		t.Errorf("round keys do not sort numerically")
	}
	for _, bad := range []string{"/other/revision", "/x/resync/nope", "/x/resync/registrations/a", "/x/resync/acks/a/b/c",
		"/x/resync/rounds/42", "/x/resync/rounds/00000000000000000000", "/x/resync/requests/", "/x/resync/election/",
		"/x/resync/requests/agent", "/x/resync/requests/operator", "/x/resync/requests/agent/a1", "/x/resync/requests/agent/a1/",
		"/x/resync/requests/agent/a/b/c", "/x/resync/requests/operator/", "/x/resync/requests/operator/a/b", "/x/resync/requests/agent/../x"} {
		_, err := l.Parse(bad)
		var de *DecodeError
		if !errors.As(err, &de) || de.Key != bad {
			t.Errorf("Parse(%q) = %v, want a DecodeError naming the key", bad, err)
		}
	}
}

func TestNewLayoutRejects(t *testing.T) {
	for _, p := range []string{"resync/", "/a//b/"} {
		if _, err := NewLayout(p); err == nil {
			t.Errorf("NewLayout(%q) accepted", p)
		}
	}
	if l, err := NewLayout(""); err != nil || l.Prefix() != DefaultPrefix {
		t.Errorf("NewLayout(\"\") = %q, %v", l.Prefix(), err)
	}
}

func TestRecordsRoundTrip(t *testing.T) {
	now := time.Now().UTC().Truncate(time.Millisecond)
	reg := Registration{Agent: "a", Plugin: "p", Order: 2, RegisteredAt: now}
	b, err := Encode(reg)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := DecodeRegistration("k", b); err != nil || got != reg {
		t.Fatalf("registration round trip: %+v %v", got, err)
	}
	round := Round{Revision: 3, State: NotActive, Cause: CauseManual, StartedBy: "c1", Agents: 1,
		Scope:    ScopeSummary{Agents: 1, First: "a"},
		Examples: &RoundExamples{Departed: []PluginID{{"a", "q"}}},
		Counts:   RoundCounts{Participants: 2, Acked: 1, Departed: 1}}
	b, err = Encode(round)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), `"departed":["a/q"]`) || strings.Contains(string(b), "\n") {
		t.Errorf("examples not encoded as agent/plugin strings on one line: %s", b)
	}
	got, err := DecodeRound("k", b)
	if err != nil || got.Counts != round.Counts || got.Examples == nil || got.Examples.Departed[0] != (PluginID{"a", "q"}) || got.Scope != round.Scope {
		t.Fatalf("round round trip: %+v %v", got, err)
	}
	ra := RoundAgent{Revision: 3, Agent: "a", State: NotActive, Plugins: []string{"p", "q"}, Acked: []string{"p"}, Failed: []string{"q"},
		Errors: map[string]string{"q": "boom"}}
	b, err = Encode(ra)
	if err != nil {
		t.Fatal(err)
	}
	if gotA, err := DecodeRoundAgent("k", b); err != nil || gotA.Outcome("q") != "failed" || gotA.Errors["q"] != "boom" {
		t.Fatalf("round agent round trip: %+v %v", gotA, err)
	}
}

// Round keys: the summary, the per-agent records and the scope chunks
// under it, all parsed; pruning's range [Round(1), Round(k)) covers every
// key of the rounds below k.
func TestRoundKeys(t *testing.T) {
	l := MustLayout(DefaultPrefix)
	for _, tc := range []struct {
		key  string
		want Key
	}{
		{l.Round(7), Key{Kind: KindRound, Round: 7}},
		{l.RoundAgent(7, "a-1"), Key{Kind: KindRoundAgent, Round: 7, Agent: "a-1"}},
		{l.RoundScope(7, 2), Key{Kind: KindRoundScope, Round: 7, Chunk: 2}},
	} {
		if got, err := l.Parse(tc.key); err != nil || got != tc.want {
			t.Errorf("Parse(%q) = %+v, %v; want %+v", tc.key, got, err, tc.want)
		}
	}
	for _, bad := range []string{l.Round(7) + "/agents/a/b", l.Round(7) + "/other/x", l.Round(7) + "/scope/x"} {
		if _, err := l.Parse(bad); err == nil {
			t.Errorf("Parse(%q) accepted", bad)
		}
	}
	if k := l.RoundAgent(6, "zzz"); !(k >= l.Round(1) && k < l.Round(7)) {
		t.Errorf("%s is outside the pruning range of rounds below 7", k)
	}
}

// Sets: union never widens, all only when asked for; the summary is
// bounded whatever the set's size.
func TestScopeSet(t *testing.T) {
	var s ScopeSet
	s.Add(Scope{Agent: "a1"})
	s.Add(Scope{Agent: "a2", Plugin: "p1"})
	var o ScopeSet
	o.Add(Scope{Agent: "a3"})
	o.Add(Scope{Agent: "a1", Plugin: "p9"}) // within a1 already
	s.Union(o)
	if s.IsAll() || !s.Includes("a1", "x") || !s.Includes("a2", "p1") || s.Includes("a2", "p2") || !s.Includes("a3", "y") || s.Includes("a4", "p") {
		t.Fatalf("union wrong: %v", s.Targets())
	}
	if got := fmt.Sprint(s.Targets()); got != "[a1 a3 a2/p1]" {
		t.Fatalf("targets %s", got)
	}
	if sum := s.Summary(); sum.Agents != 2 || sum.Plugins != 1 || sum.IsAll() || sum.String() != "3 targets (2 agents, 1 plugin): a1, a3, a2/p1" {
		t.Fatalf("summary %+v %q", sum, sum.String())
	}
	for i := range 1000 {
		s.AddPlugin(PluginID{Agent: fmt.Sprintf("agent-%04d", i), Plugin: "p"})
	}
	sum := s.Summary()
	b, err := Encode(Revision{Revision: 1, State: Started, Scope: sum, Leader: "c"})
	if err != nil || len(b) > 600 || !strings.Contains(sum.String(), "+998 more") {
		t.Fatalf("a 1003-target scope makes a %d-byte revision (%v): %s", len(b), err, sum)
	}
	var all ScopeSet
	all.Add(Scope{Agent: "a"})
	all.Add(Scope{})
	if !all.IsAll() || !all.Summary().IsAll() || all.Summary().String() != "all" {
		t.Fatal("adding the empty scope does not make all")
	}
	if (ScopeSet{}).Summary().All || !(ScopeSet{}).Empty() {
		t.Fatal("the zero set is not empty")
	}
	req := Request{Cause: CauseManual, Targets: []Scope{{Agent: "a"}, {Agent: "b", Plugin: "p"}}, RequestedBy: "x"}
	if err := req.Validate(); err != nil || !req.ScopeSet().Includes("b", "p") || req.ScopeSet().Includes("b", "q") {
		t.Fatalf("targets request: %v", err)
	}
	req.Scope = Scope{Agent: "c"}
	if err := req.Validate(); err == nil {
		t.Fatal("a request with both scope and targets is accepted")
	}
	req.Scope, req.Targets = Scope{}, make([]Scope, MaxRequestTargets+1)
	for i := range req.Targets {
		req.Targets[i] = Scope{Agent: fmt.Sprintf("a%d", i)}
	}
	if err := req.Validate(); err == nil || !strings.Contains(err.Error(), "split them") {
		t.Fatalf("too many targets: %v", err)
	}
}

func TestDecodeRejectsWithKey(t *testing.T) {
	for _, tc := range []struct {
		name, value, want string
		dec               func(string, []byte) error
	}{
		{"garbage", "not json", "not valid JSON", decAck},
		{"unknown field", `{"revision":1,"result":"ok","acked_at":"2026-01-01T00:00:00Z","x":1}`, "unknown field", decAck},
		{"trailing", `{"revision":1,"result":"ok","acked_at":"2026-01-01T00:00:00Z"} {}`, "after its JSON", decAck},
		{"zero revision", `{"revision":0,"result":"ok"}`, "revision must be > 0", decAck},
		{"bad result", `{"revision":1,"result":"maybe"}`, `result "maybe"`, decAck},
		{"bad state", `{"revision":1,"state":"Running","leader":"x"}`, `state "Running"`, decRevision},
		{"notactive without finish", `{"revision":1,"state":"NotActive"}`, "finished_at", decRevision},
		{"bad registration name", `{"agent":"a\u0001b","plugin":"p","order":0}`, "agent name", decRegistration},
		{"bad cause", `{"cause":"whim"}`, `cause "whim"`, decRequest},
		{"plugin scope without agent", `{"cause":"manual","scope":{"plugin":"p"}}`, "needs its agent", decRequest},
		{"huge", `{"reason":"` + strings.Repeat("x", 70000) + `"}`, "the limit is", decRequest},
		{"counts do not add up", `{"revision":1,"state":"NotActive","counts":{"participants":2,"acked":1}}`, "!= 2 participants", decRound},
		{"pending in a completed round", `{"revision":1,"state":"NotActive","counts":{"participants":1,"pending":1}}`, "pending", decRound},
		{"bad example", `{"revision":1,"state":"Started","counts":{},"examples":{"failed":["ap"]}}`, "not agent/plugin", decRound},
		{"double outcome", `{"revision":1,"agent":"a","state":"NotActive","plugins":["p"],"acked":["p"],"failed":["p"]}`, "both acked and failed", decRoundAgent},
		{"missing outcome", `{"revision":1,"agent":"a","state":"NotActive","plugins":["p"]}`, "no outcome", decRoundAgent},
		{"not a participant", `{"revision":1,"agent":"a","state":"Started","plugins":["p"],"acked":["q"]}`, "not a participant", decRoundAgent},
		{"bad scope target", `{"revision":1,"targets":["a/"]}`, "target", decRoundScope},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.dec("/resync/some/key", []byte(tc.value))
			var de *DecodeError
			if !errors.As(err, &de) || de.Key != "/resync/some/key" || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want a DecodeError for the key mentioning %q", err, tc.want)
			}
		})
	}
}

func decAck(k string, v []byte) error          { _, err := DecodeAck(k, v); return err }
func decRevision(k string, v []byte) error     { _, err := DecodeRevision(k, v); return err }
func decRegistration(k string, v []byte) error { _, err := DecodeRegistration(k, v); return err }
func decRequest(k string, v []byte) error      { _, err := DecodeRequest(k, v); return err }
func decRound(k string, v []byte) error        { _, err := DecodeRound(k, v); return err }
func decRoundAgent(k string, v []byte) error   { _, err := DecodeRoundAgent(k, v); return err }
func decRoundScope(k string, v []byte) error   { _, err := DecodeRoundScope(k, v); return err }

func TestEncodeRefusesInvalid(t *testing.T) {
	if _, err := Encode(Registration{Agent: "a\x01b", Plugin: "p"}); err == nil {
		t.Fatal("Encode accepted an invalid agent name")
	}
}

func TestScope(t *testing.T) {
	if !(Scope{}).Includes("a", "p") || !(Scope{Agent: "a"}).Includes("a", "p") || (Scope{Agent: "a"}).Includes("b", "p") ||
		(Scope{Agent: "a", Plugin: "q"}).Includes("a", "p") {
		t.Fatal("Scope.Includes is wrong")
	}
}

func TestNewRequestIDIsAValidKeyAndSorts(t *testing.T) {
	t0 := time.Unix(1700000000, 0)
	a, b := NewRequestID(t0), NewRequestID(t0.Add(time.Nanosecond))
	if err := ValidateToken("request id", a); err != nil {
		t.Fatal(err)
	}
	if a >= b || NewRequestID(t0) == NewRequestID(t0) {
		t.Fatalf("ids %q %q do not sort by time or are not unique", a, b)
	}
}

// The one rule of who may ask for what: an agent only for itself, an
// operator (and a legacy key) for anything.
func TestRequestAllowedFor(t *testing.T) {
	agent := func(a string) Writer { return Writer{Kind: WriterAgent, Agent: a} }
	for _, tc := range []struct {
		writer Writer
		scope  Scope
		ok     bool
	}{
		{agent("a1"), Scope{Agent: "a1"}, true},
		{agent("a1"), Scope{Agent: "a1", Plugin: "p"}, true},
		{agent("a1"), Scope{}, false},
		{agent("a1"), Scope{Agent: "a2"}, false},
		{agent("a1"), Scope{Agent: "a2", Plugin: "p"}, false},
		{Writer{Kind: WriterOperator}, Scope{}, true},
		{Writer{Kind: WriterOperator}, Scope{Agent: "a2"}, true},
		{Writer{Kind: WriterLegacy}, Scope{}, true},
		{Writer{}, Scope{Agent: "a1"}, false},
	} {
		t.Run(tc.writer.String()+" asks for "+tc.scope.String(), func(t *testing.T) {
			err := Request{Cause: CauseManual, Scope: tc.scope}.AllowedFor(tc.writer)
			if tc.ok != (err == nil) {
				t.Fatalf("AllowedFor = %v, want ok=%v", err, tc.ok)
			}
			if err != nil && (!errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), tc.scope.String()) || !strings.Contains(err.Error(), "operator")) {
				t.Fatalf("error %q does not wrap ErrRefused, name the scope and say who may", err)
			}
		})
	}
}

// TestDecodeReusesDecodersSafely interleaves rejected values (bad JSON,
// trailing data, a stray closing brace, unknown fields) with good ones:
// each good value decodes to itself, whatever decoder the pool hands out.
func TestDecodeReusesDecodersSafely(t *testing.T) {
	bad := []string{"not json", `{"revision":1,"result":"ok","acked_at":"2026-01-01T00:00:00Z"} {}`,
		`{"revision":1,"result":"ok","acked_at":"2026-01-01T00:00:00Z"}}`, `{"revision":1,"x":1}`, `{"revision":`}
	for i := range 50 {
		want := Ack{Revision: uint64(i + 1), Result: ResultError, Error: strings.Repeat("e", i*19+1), AckedAt: time.Date(2026, 1, 1, 0, 0, i, 0, time.UTC)}
		b, err := Encode(want)
		if err != nil {
			t.Fatal(err)
		}
		if i%2 == 0 {
			b = append(b, " \n"...)
		}
		got, err := DecodeAck("k", b)
		if err != nil || got != want {
			t.Fatalf("value %d: got %+v, %v; want %+v", i, got, err, want)
		}
		v := bad[i%len(bad)]
		// A stray closing brace after the object has always been accepted
		// (json.Decoder.More is false before it); it must not poison the
		// decoder for the next value either.
		if _, err := DecodeAck("k", []byte(v)); err == nil && !strings.HasSuffix(v, "}}") {
			t.Fatalf("%q decoded without error", v)
		}
	}
}

// TestRetryRequestCarriesItsTargets: the leader's retry names its round
// (RetryOf) and lists its participants (Targets): it round-trips, its set
// is exactly the targets, and only a retry without targets is resolved by
// reference. An agent may not write a retry.
func TestRetryRequestCarriesItsTargets(t *testing.T) {
	at := time.Date(2026, 12, 7, 0, 0, 0, 0, time.UTC)
	retry := Request{Reason: "retry of round 7", Cause: CauseError, RetryOf: 7, RequestedBy: "c1@42", RequestedAt: at,
		Targets: []Scope{{Agent: "a1", Plugin: "p"}, {Agent: "a2", Plugin: "q"}}}
	b, err := Encode(retry)
	if err != nil {
		t.Fatalf("a retry with targets does not encode: %v", err)
	}
	got, err := DecodeRequest("k", b)
	if err != nil || fmt.Sprint(got) != fmt.Sprint(retry) {
		t.Fatalf("round trip: %+v, %v", got, err)
	}
	s := got.ScopeSet()
	if !s.Includes("a1", "p") || !s.Includes("a2", "q") || s.Includes("a1", "q") || s.IsAll() || got.ByReference() {
		t.Fatalf("retry set %v (by reference %v): want exactly a1/p and a2/q", s.Targets(), got.ByReference())
	}
	if !strings.Contains(got.ScopeText(), "round 7") {
		t.Errorf("scope text %q does not name the round", got.ScopeText())
	}
	old := Request{Cause: CauseError, RetryOf: 7, RequestedBy: "c1@42", RequestedAt: at}
	if !old.ByReference() || !old.ScopeSet().Empty() {
		t.Errorf("a retry without targets is resolved by reference, with no set of its own")
	}
	if err := retry.AllowedFor(Writer{Kind: WriterAgent, Agent: "a1"}); !errors.Is(err, ErrRefused) {
		t.Errorf("an agent's retry request: %v, want refused", err)
	}
}
