package schema

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
)

// keysOfEveryKind returns keys of l of every Kind but KindUnknown, by
// kind, with names from the smallest to the largest escaped bytes.
func keysOfEveryKind(l Layout) map[Kind][]string {
	names := []string{"-", "0", "A", "a", "z", "~", "%", "/", "é", "node 1", strings.Repeat("z", MaxNameLen), strings.Repeat("\U0010FFFF", MaxNameLen/4)}
	keys := map[Kind][]string{KindRevision: {l.Revision()}}
	for _, a := range names {
		keys[KindOwner] = append(keys[KindOwner], l.Owner(a))
		keys[KindWakeAgent] = append(keys[KindWakeAgent], l.WakeAgent(a))
		keys[KindRequest] = append(keys[KindRequest], l.AgentRequest(a, "0-0"), l.AgentRequest(a, strings.Repeat("z", 64)))
		keys[KindRoundAgent] = append(keys[KindRoundAgent], l.RoundAgent(1, a), l.RoundAgent(1<<63, a))
		for _, p := range names {
			keys[KindRegistration] = append(keys[KindRegistration], l.Registration(a, p))
			keys[KindAck] = append(keys[KindAck], l.Ack(a, p))
		}
	}
	for _, id := range []string{"0", "1-a", "694d7a", strings.Repeat("f", 16), "zzzz"} {
		keys[KindElection] = append(keys[KindElection], l.Election()+"/"+id)
		keys[KindRequest] = append(keys[KindRequest], l.OperatorRequest(id), l.LegacyRequest(id))
	}
	keys[KindWakeShard] = []string{l.WakeShard(0), l.WakeShard(WakeShards - 1)}
	for _, n := range []uint64{1, 42, 1<<64 - 1} {
		keys[KindRound] = append(keys[KindRound], l.Round(n))
		keys[KindRoundScope] = append(keys[KindRoundScope], l.RoundScope(n, 0), l.RoundScope(n, 999999))
	}
	return keys
}

// The leader's one range watch relies on the order of the key families:
// StateRange holds every key of StateKinds, in that order, and no key of
// any other kind, whatever the prefix (odd bytes included: 0x00, 0x7f,
// 0xff, invalid UTF-8, bytes above the families' letters).
func TestStateRange(t *testing.T) {
	prefixes := []string{DefaultPrefix, "/", "/x/resync/", "/\x00/", "/\xff/", "/\xff\xff\xff/", "/a\x7fb/", "/\xc3(/", "/registrations/", "/zzz/acks/", "/" + strings.Repeat("\xfe", 200) + "/"}
	rnd := rand.New(rand.NewPCG(1, 2))
	for range 20 {
		b := []byte{'/'}
		for range 1 + rnd.IntN(30) {
			c := byte(rnd.IntN(256))
			if c == '/' && b[len(b)-1] == '/' {
				continue
			}
			b = append(b, c)
		}
		prefixes = append(prefixes, string(b))
	}
	inside := StateKinds()
	for _, p := range prefixes {
		l, err := NewLayout(p)
		if err != nil {
			t.Fatalf("NewLayout(%q): %v", p, err)
		}
		start, end := l.StateRange()
		if !strings.HasPrefix(start, l.Prefix()) || !strings.HasPrefix(end, l.Prefix()) || start >= end {
			t.Fatalf("prefix %q: StateRange [%q, %q) is not a range under the prefix", l.Prefix(), start, end)
		}
		if want := l.Prefix() + "registrations0"; end != want {
			t.Fatalf("prefix %q: StateRange ends at %q, want %q (the end of the registrations/ prefix)", l.Prefix(), end, want)
		}
		keys := keysOfEveryKind(l)
		var last string // the largest key of the previous kind in StateKinds
		for k := KindUnknown + 1; int(k) < len(kindNames); k++ {
			if len(keys[k]) == 0 {
				t.Fatalf("no keys of kind %s to check: add them to keysOfEveryKind", k)
			}
			for _, key := range keys[k] {
				if got, err := l.Parse(key); err != nil || got.Kind != k {
					t.Fatalf("Parse(%q) = %v, %v; want kind %s", key, got.Kind, err, k)
				}
				if in, want := start <= key && key < end, slices.Contains(inside, k); in != want {
					t.Errorf("prefix %q: %s key %q is inside StateRange: %v, want %v", l.Prefix(), k, key, in, want)
				}
			}
		}
		for _, k := range inside {
			if min := slices.Min(keys[k]); min <= last {
				t.Errorf("prefix %q: %s key %q sorts before a key of the kind before it in StateKinds (%q)", l.Prefix(), k, min, last)
			}
			last = slices.Max(keys[k])
		}
	}
}

func TestPrefixEnd(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"/resync/registrations/", "/resync/registrations0"},
		{"a\xff", "b"},
		{"a\xfe\xff\xff", "a\xff"},
		{"\xff\xff", "\x00"},
	} {
		if got := prefixEnd(tc.in); got != tc.want {
			t.Errorf("prefixEnd(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

// Agents spread over the wake shards evenly enough that the fan-out bound
// of a shard holds: at 10,000 agents named as a fleet names them (node-N),
// no shard has more than twice its mean.
func TestWakeShardsSpreadAFleet(t *testing.T) {
	count := make([]int, WakeShards)
	const agents = 10000
	for i := range agents {
		s := WakeShardOf(fmt.Sprintf("node-%d", i))
		if s < 0 || s >= WakeShards {
			t.Fatalf("WakeShardOf(node-%d) = %d, outside [0, %d)", i, s, WakeShards)
		}
		count[s]++
	}
	mean := agents / WakeShards
	for s, n := range count {
		if n > 2*mean || n == 0 {
			t.Errorf("shard %d has %d agents (mean %d)", s, n, mean)
		}
	}
	// Agents and coordinators must agree on it: a changed hash would
	// make every agent watch another shard than its coordinator writes.
	if got := WakeShardOf("node 1"); got != 18 {
		t.Errorf("WakeShardOf(%q) = %d: the hash changed (FNV-1a mod %d gives 18); it is part of the protocol", "node 1", got, WakeShards)
	}
}
