package schema

import (
	"strings"
	"testing"
	"unicode"
	"unicode/utf8"
)

// The fuzz targets check that decoders and parsers never panic, and that
// whatever they accept re-encodes and decodes to the same record.

func FuzzDecodeRecords(f *testing.F) {
	for _, s := range []string{
		`{"agent":"a","plugin":"p","order":0,"registered_at":"2026-01-01T00:00:00Z"}`,
		`{"revision":1,"result":"ok","acked_at":"2026-01-01T00:00:00Z"}`,
		`{"revision":2,"state":"Started","reason":"r","cause":"manual","scope":{"agent":"a"},"participants":3,"started_at":"2026-01-01T00:00:00Z","deadline":"2026-01-01T00:02:00Z","leader":"c1"}`,
		`{"reason":"x","cause":"error","scope":{"agent":"a","plugin":"p"},"requested_by":"a","requested_at":"2026-01-01T00:00:00Z"}`,
		`{"revision":1,"state":"NotActive","counts":{"participants":1,"acked":1},"participants":["a/p"],"acked":["a/p"],"finished_at":"2026-01-01T00:00:00Z"}`,
		`{"revision":1e99}`, `null`, `[]`, ``, "\xff",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		if r, err := DecodeRegistration("k", b); err == nil {
			mustRoundTrip(t, r, func(v []byte) (any, error) { return DecodeRegistration("k", v) })
		}
		if r, err := DecodeAck("k", b); err == nil {
			mustRoundTrip(t, r, func(v []byte) (any, error) { return DecodeAck("k", v) })
		}
		if r, err := DecodeRevision("k", b); err == nil {
			if _, err := Encode(r); err != nil {
				t.Fatalf("accepted revision does not re-encode: %v", err)
			}
		}
		if r, err := DecodeRequest("k", b); err == nil {
			if _, err := Encode(r); err != nil {
				t.Fatalf("accepted request does not re-encode: %v", err)
			}
		}
		if r, err := DecodeRoundAgent("k", b); err == nil {
			if _, err := Encode(r); err != nil {
				t.Fatalf("accepted round agent does not re-encode: %v", err)
			}
		}
		if r, err := DecodeRound("k", b); err == nil {
			if _, err := Encode(r); err != nil {
				t.Fatalf("accepted round does not re-encode: %v", err)
			}
		}
	})
}

func mustRoundTrip(t *testing.T, r any, dec func([]byte) (any, error)) {
	t.Helper()
	b, err := Encode(r.(validator))
	if err != nil {
		t.Fatalf("accepted %T does not re-encode: %v", r, err)
	}
	got, err := dec(b)
	if err != nil {
		t.Fatalf("re-encoded %T does not decode: %v", r, err)
	}
	// Encoding is deterministic, so a faithful decode re-encodes to the same bytes.
	b2, err := Encode(got.(validator))
	if err != nil || string(b2) != string(b) {
		t.Fatalf("%T changed through a round trip: %s -> %s (%v)", r, b, b2, err)
	}
}

func FuzzParseKey(f *testing.F) {
	l := MustLayout(DefaultPrefix)
	for _, s := range []string{l.Revision(), l.Registration("a", "p"), l.Registration("node 1", "Config VPP default plug:IF/L2/L3"), l.Owner("node 1"), l.RoundAgent(3, "a b"), l.Ack("%", ".."), l.Ack("a", "p"), l.AgentRequest("a", "1-2"), l.OperatorRequest("1-2"), l.LegacyRequest("1-2"), "/resync/requests/agent/a", l.Round(7), l.Election() + "/abc", "/resync/acks/a/", "/x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, key string) {
		k, err := l.Parse(key)
		if err != nil {
			return
		}
		var back string
		switch k.Kind {
		case KindRevision:
			back = l.Revision()
		case KindRegistration:
			back = l.Registration(k.Agent, k.Plugin)
		case KindAck:
			back = l.Ack(k.Agent, k.Plugin)
		case KindRequest:
			back = l.RequestOf(k.Writer, k.ID)
		case KindRound:
			back = l.Round(k.Round)
		case KindElection:
			back = l.Election() + "/" + k.ID
		case KindOwner:
			back = l.Owner(k.Agent)
		case KindWakeAgent:
			back = l.WakeAgent(k.Agent)
		case KindWakeShard:
			back = l.WakeShard(k.Chunk)
		case KindRoundAgent:
			back = l.RoundAgent(k.Round, k.Agent)
		case KindRoundScope:
			// The chunk number is parsed leniently (Atoi): compare what
			// the canonical key parses to.
			if k2, err := l.Parse(l.RoundScope(k.Round, k.Chunk)); err != nil || k2 != k {
				t.Fatalf("Parse(%q) = %+v, whose canonical key parses to %+v, %v", key, k, k2, err)
			}
			return
		default:
			t.Fatalf("Parse(%q) gave kind %v without error", key, k.Kind)
		}
		if back != key {
			t.Fatalf("Parse(%q) = %+v, which builds back %q", key, k, back)
		}
	})
}

func FuzzValidateName(f *testing.F) {
	for _, s := range []string{"a", "", "a/b", "..", "x.y-z_1", "K8s resources", "a\x00", "\xff"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		if ValidateName("plugin", name) != nil {
			return
		}
		if len(name) == 0 || len(name) > MaxNameLen || !utf8.ValidString(name) {
			t.Fatalf("accepted %q (%d bytes)", name, len(name))
		}
		for _, r := range name {
			if unicode.IsControl(r) {
				t.Fatalf("accepted %q with control character %U", name, r)
			}
		}
		// Every valid name makes a key that parses back to the same names.
		l := MustLayout(DefaultPrefix)
		k, err := l.Parse(l.Registration(name, name))
		if err != nil || k.Agent != name || k.Plugin != name {
			t.Fatalf("valid name %q does not round-trip through a key: %+v %v", name, k, err)
		}
	})
}

// FuzzNameEscape: decode(encode(n)) == n for every valid name; an encoded
// name has no "/" and is printable ASCII; every string that decodes is the
// encoding of what it decodes to (so no two names share a key).
func FuzzNameEscape(f *testing.F) {
	for _, s := range []string{"a", ".", "..", "%2E", "node 1", "node%201", "Config VPP default plug:IF/L2/L3", "%41", "%2a", "é", "a%"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if ValidateName("plugin", s) == nil {
			e := EscapeName(s)
			if strings.Contains(e, "/") {
				t.Fatalf("EscapeName(%q) = %q contains /", s, e)
			}
			for i := 0; i < len(e); i++ {
				if e[i] < 0x21 || e[i] > 0x7e {
					t.Fatalf("EscapeName(%q) = %q is not printable ASCII", s, e)
				}
			}
			if e == "." || e == ".." {
				t.Fatalf("EscapeName(%q) = %q is a path element", s, e)
			}
			back, err := UnescapeName("plugin", e)
			if err != nil || back != s {
				t.Fatalf("UnescapeName(EscapeName(%q)) = %q, %v", s, back, err)
			}
		}
		// Read as an escaped form: if it decodes, it is the one encoding of
		// its name (injective: two names never share a key).
		if n, err := UnescapeName("plugin", s); err == nil && EscapeName(n) != s {
			t.Fatalf("%q decodes to %q, whose encoding is %q", s, n, EscapeName(n))
		}
	})
}
