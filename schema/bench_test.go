package schema

import (
	"fmt"
	"testing"
	"time"
)

// Hot paths: every ack is encoded by an agent and decoded by the leader;
// every revision record is decoded by every agent; every key the leader
// watches is parsed.

var benchNow = time.Date(2026, 11, 25, 14, 0, 0, 123456789, time.UTC)

func BenchmarkEncodeAck(b *testing.B) {
	a := Ack{Revision: 1234, Result: ResultOK, AckedAt: benchNow}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Encode(a); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkDecodeAck(b *testing.B) {
	v, err := Encode(Ack{Revision: 1234, Result: ResultOK, AckedAt: benchNow})
	if err != nil {
		b.Fatal(err)
	}
	key := MustLayout(DefaultPrefix).Ack("agent-00001", "plugin-001")
	b.SetBytes(int64(len(v)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := DecodeAck(key, v); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkDecodeRevision(b *testing.B) {
	v, err := Encode(Revision{Revision: 1234, State: Started, Reason: "manual resync", Cause: CauseManual,
		Participants: 10000, StartedAt: benchNow, Deadline: benchNow.Add(2 * time.Minute), Leader: "coordinator-1@42"})
	if err != nil {
		b.Fatal(err)
	}
	key := MustLayout(DefaultPrefix).Revision()
	b.SetBytes(int64(len(v)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := DecodeRevision(key, v); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkDecodeRegistration(b *testing.B) {
	v, err := Encode(Registration{Agent: "agent-00001", Plugin: "plugin-001", Order: 1, RegisteredAt: benchNow})
	if err != nil {
		b.Fatal(err)
	}
	key := MustLayout(DefaultPrefix).Registration("agent-00001", "plugin-001")
	b.SetBytes(int64(len(v)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := DecodeRegistration(key, v); err != nil {
			b.Fatal(err)
		}
	}
}

// benchAgent is one agent's round record with n plugins, all acked.
func benchAgent(n int) RoundAgent {
	r := RoundAgent{Revision: 1234, Agent: "agent-00001", State: NotActive}
	for i := range n {
		p := fmt.Sprintf("plugin-%03d", i)
		r.Plugins = append(r.Plugins, p)
		r.Acked = append(r.Acked, p)
	}
	return r
}

// The leader encodes one record per participating agent twice per round
// (Started, then with outcomes); a successor decodes them to resume.
func BenchmarkEncodeRoundAgent(b *testing.B) {
	for _, n := range []int{10, 100} {
		r := benchAgent(n)
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				v, err := Encode(r)
				if err != nil {
					b.Fatal(err)
				}
				b.SetBytes(int64(len(v)))
			}
		})
	}
}

func BenchmarkDecodeRoundAgent(b *testing.B) {
	for _, n := range []int{10, 100} {
		v, err := Encode(benchAgent(n))
		if err != nil {
			b.Fatal(err)
		}
		key := MustLayout(DefaultPrefix).RoundAgent(1234, "agent-00001")
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			b.SetBytes(int64(len(v)))
			b.ReportAllocs()
			for b.Loop() {
				if _, err := DecodeRoundAgent(key, v); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkParseKey(b *testing.B) {
	l := MustLayout(DefaultPrefix)
	for _, k := range []struct{ name, key string }{
		{"ack", l.Ack("agent-00001", "plugin-001")},
		{"registration", l.Registration("agent-00001", "plugin-001")},
		{"request", l.AgentRequest("agent-1", NewRequestID(benchNow))},
		{"round", l.Round(1234)},
	} {
		b.Run(k.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := l.Parse(k.key); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkNewRequestID(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		_ = NewRequestID(benchNow)
	}
}
