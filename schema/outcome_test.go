package schema

import (
	"encoding/json"
	"testing"
)

// TestResolve is the resolution rule, case by case: an ack for the round
// decides whatever else holds; without one, a participant that is gone
// departed, one past the deadline timed out, else it is pending.
func TestResolve(t *testing.T) {
	const n = 7
	ok := Ack{Revision: n, Result: ResultOK}
	failed := Ack{Revision: n, Result: ResultError, Error: "boom"}
	timeout := Ack{Revision: n, Result: ResultTimeout}
	old := Ack{Revision: n - 1, Result: ResultOK}
	newer := Ack{Revision: n + 1, Result: ResultOK}
	for _, tc := range []struct {
		name                string
		ack                 Ack
		registered, expired bool
		want                Outcome
	}{
		{"no ack, registered", Ack{}, true, false, OutcomePending},
		{"no ack, gone", Ack{}, false, false, OutcomeDeparted},
		{"no ack, expired", Ack{}, true, true, OutcomeTimedOut},
		{"no ack, gone and expired", Ack{}, false, true, OutcomeDeparted},
		{"ok", ok, true, false, OutcomeAcked},
		{"ok, then gone", ok, false, false, OutcomeAcked},
		{"ok, expired", ok, true, true, OutcomeAcked},
		{"error", failed, true, false, OutcomeFailed},
		{"error, gone and expired", failed, false, true, OutcomeFailed},
		{"timeout ack", timeout, true, false, OutcomeTimedOut},
		{"timeout ack, gone", timeout, false, false, OutcomeTimedOut},
		{"ack of an older round", old, true, false, OutcomePending},
		{"ack of an older round, gone", old, false, false, OutcomeDeparted},
		{"ack of an older round, expired", old, true, true, OutcomeTimedOut},
		{"ack of another round", newer, true, false, OutcomePending},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := Resolve(n, tc.ack, tc.registered, tc.expired); got != tc.want {
				t.Fatalf("Resolve(%d, %+v, registered %v, expired %v) = %s, want %s", n, tc.ack, tc.registered, tc.expired, got, tc.want)
			}
		})
	}
}

// TestOutcomeSpelling: outcomes are spelled as the round records' JSON
// fields and resyncctl's rows, which must not change.
func TestOutcomeSpelling(t *testing.T) {
	b, err := json.Marshal(RoundCounts{})
	if err != nil {
		t.Fatal(err)
	}
	var fields map[string]int
	if err := json.Unmarshal(b, &fields); err != nil {
		t.Fatal(err)
	}
	for _, o := range append(Outcomes[:], OutcomePending) {
		if _, ok := fields[string(o)]; !ok {
			t.Errorf("outcome %q is not a RoundCounts field (%s)", o, b)
		}
	}
	if got := []Outcome{OutcomeAcked, OutcomeFailed, OutcomeTimedOut, OutcomeDeparted}; [4]Outcome(got) != Outcomes {
		t.Fatalf("Outcomes = %v", Outcomes)
	}
	if OutcomeAcked != "acked" || OutcomeFailed != "failed" || OutcomeTimedOut != "timed_out" || OutcomeDeparted != "departed" || OutcomePending != "pending" {
		t.Fatal("an outcome's spelling changed")
	}
}
