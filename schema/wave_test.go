package schema

import (
	"testing"
	"time"
)

func TestLimitOf(t *testing.T) {
	for _, tc := range []struct {
		l     Limit
		total int
		want  int
		ok    bool
	}{
		{"", 100, 0, false},
		{"3", 100, 3, true},
		{"10%", 1000, 100, true},
		{"10%", 5, 0, true},
		{"2%", 160, 3, true},
		{"0", 10, 0, true},
	} {
		if got, ok := tc.l.Of(tc.total); got != tc.want || ok != tc.ok {
			t.Errorf("Limit(%q).Of(%d) = %d, %v; want %d, %v", tc.l, tc.total, got, ok, tc.want, tc.ok)
		}
	}
	for _, bad := range []Limit{"x", "-1", "101%", "1.5", "%"} {
		if bad.Validate() == nil {
			t.Errorf("Limit(%q) validates", bad)
		}
	}
}

func TestWaveValidate(t *testing.T) {
	for _, tc := range []struct {
		name string
		w    Wave
		ok   bool
	}{
		{"none", Wave{}, true},
		{"all knobs", Wave{MaxInFlight: "10%", Canary: "3", CanaryPause: "30s", MaxFailed: "2%", ProgressDeadline: "5m"}, true},
		{"manual pause", Wave{Canary: "1", CanaryPause: CanaryPauseManual}, true},
		{"zero in flight", Wave{MaxInFlight: "0"}, false},
		{"bad pause", Wave{CanaryPause: "soon"}, false},
		{"bad deadline", Wave{ProgressDeadline: "-1s"}, false},
		{"count and list", Wave{Canary: "1", CanaryAgents: []string{"a"}}, false},
		{"bad canary name", Wave{CanaryAgents: []string{""}}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := tc.w.Validate(); (err == nil) != tc.ok {
				t.Fatalf("Validate() = %v, want ok %v", err, tc.ok)
			}
		})
	}
}

// Plan takes the tightest of each knob, whatever the order.
func TestPlanTakesTheTightest(t *testing.T) {
	coord := Wave{MaxInFlight: "10%", MaxFailed: "5", ProgressDeadline: "10m"}
	req := Wave{MaxInFlight: "50", Canary: "3", CanaryPause: "1m", MaxFailed: "2%", ProgressDeadline: "5m"}
	for _, ws := range [][]Wave{{coord, req}, {req, coord}} {
		p, list, ok := Plan(200, ws...)
		want := WavePlan{MaxInFlight: 20, Canaries: 3, CanaryPauseMS: time.Minute.Milliseconds(), ProgressDeadlineMS: (5 * time.Minute).Milliseconds(), Phase: PhaseRolling}
		if !ok || list != nil || p.MaxFailed == nil || *p.MaxFailed != 4 {
			t.Fatalf("Plan = %+v, %v, %v; want max_failed 4", p, list, ok)
		}
		p.MaxFailed = nil
		if p != want {
			t.Fatalf("Plan = %+v, want %+v", p, want)
		}
	}
	if _, _, ok := Plan(10, Wave{}, Wave{}); ok {
		t.Fatal("Plan of no knob is a wave")
	}
	if p, _, _ := Plan(3, Wave{MaxInFlight: "10%"}); p.MaxInFlight != 1 {
		t.Fatalf("10%% of 3 agents is a window of %d, want at least 1", p.MaxInFlight)
	}
	if p, _, _ := Plan(3, Wave{CanaryPause: "1m"}, Wave{CanaryPause: CanaryPauseManual}); !p.CanaryManual {
		t.Fatal("manual is tighter than any pause")
	}
}

func TestControlRequest(t *testing.T) {
	now := time.Now().UTC()
	ok := Request{Reason: "r", Cause: CauseManual, Control: &Control{Round: 3, Action: ActionPause}, RequestedBy: "op", RequestedAt: now}
	if err := ok.Validate(); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []Request{
		{Reason: "r", Cause: CauseManual, Control: &Control{Round: 3, Action: "stop"}, RequestedAt: now},
		{Reason: "r", Cause: CauseManual, Control: &Control{Action: ActionAbort}, RequestedAt: now},
		{Reason: "r", Cause: CauseManual, Scope: Scope{Agent: "a"}, Control: &Control{Round: 3, Action: ActionAbort}, RequestedAt: now},
		{Reason: "r", Cause: CauseManual, Wave: &Wave{MaxInFlight: "1"}, Control: &Control{Round: 3, Action: ActionAbort}, RequestedAt: now},
	} {
		if bad.Validate() == nil {
			t.Errorf("%+v validates", bad)
		}
	}
	if err := ok.AllowedFor(Writer{Kind: WriterAgent, Agent: "a"}); err == nil {
		t.Error("an agent may send a control")
	}
}
