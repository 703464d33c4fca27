package metrics

import (
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/resyncd/resync/coordinator"
	"github.com/resyncd/resync/schema"
)

// TestRoundDeadlineGauge: the deadline gauge holds the running round's
// deadline in unix seconds, and 0 once it finished or leadership was lost.
func TestRoundDeadlineGauge(t *testing.T) {
	m, err := New(prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	if v := gauge(t, m.deadline); v != 0 {
		t.Fatalf("before any round: %v, want 0", v)
	}
	deadline := time.Date(2026, 1, 2, 3, 4, 5, 500_000_000, time.UTC)
	r := schema.Round{Revision: 7, State: schema.Started, StartedAt: deadline.Add(-2 * time.Minute), Deadline: deadline}
	m.RoundStarted(r, false)
	if v, want := gauge(t, m.deadline), float64(deadline.Unix())+0.5; v != want {
		t.Fatalf("running: %v, want %v", v, want)
	}
	r.State = schema.NotActive
	m.RoundFinished(r)
	if v := gauge(t, m.deadline); v != 0 {
		t.Fatalf("finished: %v, want 0", v)
	}
	m.RoundStarted(r, true)
	m.Leading(false)
	if v := gauge(t, m.deadline); v != 0 {
		t.Fatalf("after losing leadership: %v, want 0", v)
	}
}

func gauge(t *testing.T, g prometheus.Gauge) float64 { return write(t, g).GetGauge().GetValue() }

func counter(t *testing.T, c prometheus.Counter) float64 { return write(t, c).GetCounter().GetValue() }

func write(t *testing.T, m prometheus.Metric) *dto.Metric {
	t.Helper()
	var d dto.Metric
	if err := m.Write(&d); err != nil {
		t.Fatal(err)
	}
	return &d
}

// TestResolvedCountsByOutcome: every final outcome is a label from the
// start (dashboards see zeros), spelled as schema.Outcome, and Resolved
// counts under its outcome.
func TestResolvedCountsByOutcome(t *testing.T) {
	m, err := New(prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range schema.Outcomes {
		if v := counter(t, m.resolved.WithLabelValues(string(o))); v != 0 {
			t.Fatalf("%s before any round: %v", o, v)
		}
	}
	id := schema.PluginID{Agent: "a", Plugin: "p"}
	m.Resolved(id, schema.OutcomeFailed)
	m.Resolved(id, schema.OutcomeFailed)
	m.Resolved(id, schema.OutcomeDeparted)
	for o, want := range map[schema.Outcome]float64{schema.OutcomeAcked: 0, schema.OutcomeFailed: 2, schema.OutcomeTimedOut: 0, schema.OutcomeDeparted: 1} {
		if v := counter(t, m.resolved.WithLabelValues(string(o))); v != want {
			t.Errorf("%s = %v, want %v", o, v, want)
		}
	}
	if string(schema.OutcomeTimedOut) != "timed_out" {
		t.Fatal("the outcome label changed spelling")
	}
}

// The wave series: in flight and paused follow WaveChanged, skipped agents
// count each increase once, and an aborted wave round counts at its finish.
func TestWaveSeries(t *testing.T) {
	m, err := New(prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	m.RoundStarted(schema.Round{Revision: 3, Deadline: time.Unix(100, 0), Wave: &schema.WavePlan{Phase: schema.PhaseRolling}}, false)
	if v := gauge(t, m.deadline); v != 0 {
		t.Fatalf("a wave round's deadline gauge is %v, want 0: its deadline is each agent's", v)
	}
	m.WaveChanged(&coordinator.WaveStatus{Revision: 3, InFlight: 4, Phase: schema.PhaseRolling, Paused: true})
	if v := gauge(t, m.wave.inFlight); v != 4 {
		t.Fatalf("in flight %v, want 4", v)
	}
	if v := gauge(t, m.wave.paused); v != 1 {
		t.Fatalf("paused %v, want 1", v)
	}
	m.WaveChanged(&coordinator.WaveStatus{Revision: 3, InFlight: 2, Skipped: 5, Phase: schema.PhaseRolling, Aborted: "x"})
	m.WaveChanged(&coordinator.WaveStatus{Revision: 3, InFlight: 0, Skipped: 5, Phase: schema.PhaseRolling, Aborted: "x"})
	m.RoundFinished(schema.Round{Revision: 3, Wave: &schema.WavePlan{Phase: schema.PhaseRolling, Aborted: "x"}})
	m.WaveChanged(nil)
	m.WaveChanged(&coordinator.WaveStatus{Revision: 4, Skipped: 1, Phase: schema.PhaseRolling})
	if v := counter(t, m.wave.skipped); v != 6 {
		t.Errorf("skipped %v, want 6", v)
	}
	if v := counter(t, m.wave.aborted); v != 1 {
		t.Errorf("aborted %v, want 1", v)
	}
	if v := counter(t, m.resolved.WithLabelValues(string(schema.OutcomeSkipped))); v != 0 {
		t.Errorf("skipped outcome %v before any, want a zero series", v)
	}
}
