package main

import (
	"encoding/json"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/resyncd/resync/internal/testing/etcdtest"
	"github.com/resyncd/resync/internal/testing/handagent"
	"github.com/resyncd/resync/schema"
)

// history --round N shows each participant's outcome: from the per-agent
// records once the round finished (a failed plugin with its error), from
// the acks while it runs (a plugin still holding its ack is pending), in
// text and in JSON; an unknown or zero round and a second selector are
// clear errors.
func TestHistoryRoundShowsEachParticipant(t *testing.T) {
	m := etcdtest.Start(t)
	obs := m.Client(t)
	ep := m.Endpoint()
	a := startHandAgent(t, ep, "a1", []string{"good", "bad", "slow"}, map[string]string{"bad": handagent.Error})
	startCoordinator(t, ep, "c1")
	waitRound(t, obs, 1, schema.NotActive)

	code, out, _ := cli(t, ctxT(t, 10*time.Second), "--endpoints", ep, "history", "--round", "1")
	if code != 0 {
		t.Fatalf("history --round 1 exited %d", code)
	}
	for _, want := range []string{"round 1: NotActive", "a1     good    acked", "a1     bad     failed", "reload failed: boom", "a1     slow    acked"} {
		if !strings.Contains(out, want) {
			t.Errorf("history --round 1 lacks %q:\n%s", want, out)
		}
	}

	// A running round: slow holds its ack until released.
	a.SetBehaviour("slow", handagent.Hold)
	a.SetBehaviour("bad", handagent.OK)
	if code, _, _ := cli(t, ctxT(t, 10*time.Second), "--endpoints", ep, "trigger", "--agent", "a1", "--reason", "detail"); code != 0 {
		t.Fatalf("trigger exited %d", code)
	}
	var n uint64
	etcdtest.WaitFor(t, 20*time.Second, "a round with slow holding", func() bool {
		for k := uint64(2); k < 6; k++ {
			if r, ok := readRound(t, obs, k); ok && r.State == schema.Started {
				n = k
				return true
			}
		}
		return false
	})
	var doc struct {
		Round   schema.Round    `json:"round"`
		Plugins []pluginOutcome `json:"plugins"`
	}
	etcdtest.WaitFor(t, 20*time.Second, "good and bad acked, slow pending", func() bool {
		code, out, _ := cli(t, ctxT(t, 10*time.Second), "--endpoints", ep, "-o", "json", "history", "--round", strconv.FormatUint(n, 10))
		if code != 0 || json.Unmarshal([]byte(out), &doc) != nil || len(doc.Plugins) != 3 {
			return false
		}
		got := map[string]schema.Outcome{}
		for _, p := range doc.Plugins {
			got[p.Plugin] = p.Outcome
		}
		return got["good"] == schema.OutcomeAcked && got["bad"] == schema.OutcomeAcked && got["slow"] == schema.OutcomePending
	})
	if doc.Round.Revision != n || doc.Round.State != schema.Started {
		t.Errorf("the JSON's round is %d %s, want %d Started", doc.Round.Revision, doc.Round.State, n)
	}
	a.Release()
	waitRound(t, obs, n, schema.NotActive)

	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"history", "--round", "999"}, 1, "round 999 has no record"},
		{[]string{"history", "--round", "0"}, 2, "--round 0"},
		{[]string{"history", "-n", "3", "--round", "1"}, 2, "give one"},
	} {
		code, _, errOut := cli(t, ctxT(t, 10*time.Second), append([]string{"--endpoints", ep}, tc.args...)...)
		if code != tc.code || !strings.Contains(errOut, tc.want) {
			t.Errorf("%v: exit %d, stderr %q; want %d and %q", tc.args, code, errOut, tc.code, tc.want)
		}
	}
}
