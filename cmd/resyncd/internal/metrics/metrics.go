// Package metrics exports a Coordinator's activity as Prometheus metrics. It
// implements coordinator.Hooks; nothing here is global: every Metrics
// registers on the Registerer it is given.
package metrics

import (
	"errors"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/resyncd/resync/coordinator"
	"github.com/resyncd/resync/schema"
)

// Metrics is a coordinator.Hooks that records Prometheus series. Safe for
// concurrent use.
type Metrics struct {
	coordinator.NopHooks

	rounds       *prometheus.CounterVec
	duration     prometheus.Histogram
	participants prometheus.Gauge
	resolved     *prometheus.CounterVec
	leader       prometheus.Gauge
	requests     *prometheus.CounterVec
	backoff      prometheus.Gauge
	revision     prometheus.Gauge
	resumed      prometheus.Counter
	dbSize       prometheus.Gauge
	dbInUse      prometheus.Gauge
	dbQuota      prometheus.Gauge
	exhausted    prometheus.Gauge
	deadline     prometheus.Gauge
	refused      prometheus.Gauge
	wave         waveSeries
}

// waveSeries are the wave rounds' series (WaveChanged).
type waveSeries struct {
	inFlight, paused prometheus.Gauge
	aborted, skipped prometheus.Counter
	// The running wave round's revision and its skipped agents counted so
	// far (under mu): skipped counts the increase.
	mu          sync.Mutex
	rev         uint64
	skippedSeen int
}

// Series names, for documentation and tests.
const (
	RoundsTotal        = "resync_rounds_total"
	RoundDuration      = "resync_round_duration_seconds"
	RoundParticipants  = "resync_round_participants"
	ParticipantsTotal  = "resync_participants_resolved_total"
	Leader             = "resync_leader"
	RequestsTotal      = "resync_requests_total"
	BackoffSeconds     = "resync_backoff_seconds"
	Revision           = "resync_revision"
	RoundsResumedTotal = "resync_rounds_resumed_total"
	EtcdDBSize         = "resync_etcd_db_size_bytes"
	EtcdDBSizeInUse    = "resync_etcd_db_size_in_use_bytes"
	EtcdDBQuota        = "resync_etcd_db_quota_bytes"
	EtcdSpaceExhausted = "resync_etcd_space_exhausted"
	RoundDeadline      = "resync_round_deadline_timestamp_seconds"
	LeaderTerm         = "resync_leader_term"
	RefusedRegs        = "resync_registrations_refused"
	WaveInFlight       = "resync_wave_agents_in_flight"
	WavePaused         = "resync_wave_paused"
	RoundsAborted      = "resync_rounds_aborted_total"
	AgentsSkipped      = "resync_agents_skipped_total"
)

// RegisterTerm registers resync_leader_term on reg, read from term at each
// scrape (the coordinator's Status().Term: the election term while it
// leads, else 0).
func RegisterTerm(reg prometheus.Registerer, term func() int64) error {
	return reg.Register(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: LeaderTerm,
		Help: "Election term (the leader key's create revision) while this coordinator leads, else 0."},
		func() float64 { return float64(term()) }))
}

// newWaveSeries creates the wave rounds' series.
func newWaveSeries() waveSeries {
	return waveSeries{
		inFlight: prometheus.NewGauge(prometheus.GaugeOpts{Name: WaveInFlight,
			Help: "Agents in flight in the running wave round (from their Started until each of their plugins resolved); 0 when none runs."}),
		paused: prometheus.NewGauge(prometheus.GaugeOpts{Name: WavePaused,
			Help: "1 while the running wave round is paused by an operator or waits in its canary pause, else 0."}),
		aborted: prometheus.NewCounter(prometheus.CounterOpts{Name: RoundsAborted,
			Help: "Wave rounds this coordinator finished aborted (past max_failed, a failed canary, the progress deadline, or an operator's abort)."}),
		skipped: prometheus.NewCounter(prometheus.CounterOpts{Name: AgentsSkipped,
			Help: "Agents of aborted wave rounds never started (skipped: never woken, no retry)."}),
	}
}

// New creates the series and registers them on reg.
func New(reg prometheus.Registerer) (*Metrics, error) {
	m := &Metrics{
		rounds: prometheus.NewCounterVec(prometheus.CounterOpts{Name: RoundsTotal,
			Help: "Rounds finished by this coordinator, by result (clean: no failed or timed-out participant)."}, []string{"result"}),
		duration: prometheus.NewHistogram(prometheus.HistogramOpts{Name: RoundDuration,
			Help:    "Duration of finished rounds, from Started to NotActive.",
			Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120, 300}}),
		participants: prometheus.NewGauge(prometheus.GaugeOpts{Name: RoundParticipants,
			Help: "Participants of the round started or resumed last."}),
		resolved: prometheus.NewCounterVec(prometheus.CounterOpts{Name: ParticipantsTotal,
			Help: "Participants resolved, by outcome (acked, failed, timed_out, departed)."}, []string{"outcome"}),
		leader: prometheus.NewGauge(prometheus.GaugeOpts{Name: Leader,
			Help: "1 while this coordinator leads, else 0."}),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Name: RequestsTotal,
			Help: "Resync requests consumed by this coordinator, by cause (manual, error, rejoin; malformed, or refused: wider than its writer may ask for)."}, []string{"cause"}),
		backoff: prometheus.NewGauge(prometheus.GaugeOpts{Name: BackoffSeconds,
			Help: "The last retry backoff planned, in seconds."}),
		revision: prometheus.NewGauge(prometheus.GaugeOpts{Name: Revision,
			Help: "The last resync revision started or resumed by this coordinator."}),
		resumed: prometheus.NewCounter(prometheus.CounterOpts{Name: RoundsResumedTotal,
			Help: "Rounds this coordinator resumed after a failover."}),
		dbSize: prometheus.NewGauge(prometheus.GaugeOpts{Name: EtcdDBSize,
			Help: "Size of etcd's backend database file (the largest of the members resyncd reaches), in bytes; counts against the quota."}),
		dbInUse: prometheus.NewGauge(prometheus.GaugeOpts{Name: EtcdDBSizeInUse,
			Help: "Bytes of etcd's backend database in use; size minus in-use is what defragmentation would reclaim."}),
		dbQuota: prometheus.NewGauge(prometheus.GaugeOpts{Name: EtcdDBQuota,
			Help: "etcd's backend quota in bytes (--quota-backend-bytes); past it etcd raises NOSPACE and refuses writes. 0 if unknown."}),
		exhausted: prometheus.NewGauge(prometheus.GaugeOpts{Name: EtcdSpaceExhausted,
			Help: "1 while the embedded etcd's NOSPACE alarm stands and resyncd will not clear it by itself (the live data fills the quota, or freeing space needs a defragmentation longer than the sessions allow); /status says which and the fix. Else 0."}),
		deadline: prometheus.NewGauge(prometheus.GaugeOpts{Name: RoundDeadline,
			Help: "Deadline of the round this coordinator runs, as unix seconds; 0 when it runs none (an alert compares it with time())."}),
		refused: prometheus.NewGauge(prometheus.GaugeOpts{Name: RefusedRegs,
			Help: "Registrations the live agents refused (names that cannot be stored: those plugins never resync), from their owner records, while this coordinator leads; else 0. resyncctl agents names them."}),
		wave: newWaveSeries(),
	}
	for _, c := range []prometheus.Collector{m.rounds, m.duration, m.participants, m.resolved, m.leader, m.requests, m.backoff, m.revision, m.resumed, m.dbSize, m.dbInUse, m.dbQuota, m.exhausted, m.deadline, m.refused,
		m.wave.inFlight, m.wave.paused, m.wave.aborted, m.wave.skipped} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	// Expose every label value from the start, so dashboards see zeros.
	for _, r := range []string{"clean", "unclean"} {
		m.rounds.WithLabelValues(r)
	}
	for _, o := range append(schema.Outcomes[:], schema.OutcomeSkipped) {
		m.resolved.WithLabelValues(string(o))
	}
	for _, c := range []schema.Cause{schema.CauseManual, schema.CauseError, schema.CauseRejoin} {
		m.requests.WithLabelValues(string(c))
	}
	m.requests.WithLabelValues("malformed")
	m.requests.WithLabelValues("refused")
	return m, nil
}

// Leading implements coordinator.Hooks.
func (m *Metrics) Leading(l bool) {
	if l {
		m.leader.Set(1)
	} else {
		m.leader.Set(0)
		m.deadline.Set(0) // a round left Started is the next leader's
		m.refused.Set(0)  // the next leader reports them
		m.WaveChanged(nil)
	}
}

// RefusedRegistrations implements coordinator.RefusalHooks.
func (m *Metrics) RefusedRegistrations(total int) { m.refused.Set(float64(total)) }

// RoundStarted implements coordinator.Hooks.
func (m *Metrics) RoundStarted(r schema.Round, resumed bool) {
	m.participants.Set(float64(r.Counts.Participants))
	m.revision.Set(float64(r.Revision))
	m.deadline.Set(unixSeconds(r.Deadline))
	if r.Wave != nil {
		// A wave round may run for hours: its deadline is each agent's
		// (its start plus --round-deadline), enforced by the leader.
		m.deadline.Set(0)
	}
	if resumed {
		m.resumed.Inc()
	}
}

// RoundFinished implements coordinator.Hooks.
func (m *Metrics) RoundFinished(r schema.Round) {
	if r.Clean() {
		m.rounds.WithLabelValues("clean").Inc()
	} else {
		m.rounds.WithLabelValues("unclean").Inc()
	}
	m.duration.Observe(r.DurationMS / 1000)
	m.deadline.Set(0)
	if r.Wave != nil && r.Wave.Aborted != "" {
		m.wave.aborted.Inc()
	}
}

// WaveChanged implements coordinator.WaveHooks.
func (m *Metrics) WaveChanged(s *coordinator.WaveStatus) {
	w := &m.wave
	w.mu.Lock()
	defer w.mu.Unlock()
	if s == nil {
		w.inFlight.Set(0)
		w.paused.Set(0)
		return
	}
	if s.Revision != w.rev {
		w.rev, w.skippedSeen = s.Revision, 0
	}
	if s.Skipped > w.skippedSeen {
		w.skipped.Add(float64(s.Skipped - w.skippedSeen))
		w.skippedSeen = s.Skipped
	}
	w.inFlight.Set(float64(s.InFlight))
	if s.Paused || (s.Phase == schema.PhaseCanaryPause && s.Aborted == "") {
		w.paused.Set(1)
	} else {
		w.paused.Set(0)
	}
}

// unixSeconds is t as unix seconds with sub-second precision, 0 when zero.
func unixSeconds(t time.Time) float64 {
	if t.IsZero() {
		return 0
	}
	return float64(t.UnixNano()) / 1e9
}

// Resolved implements coordinator.Hooks.
func (m *Metrics) Resolved(_ schema.PluginID, outcome schema.Outcome) {
	m.resolved.WithLabelValues(string(outcome)).Inc()
}

// Request implements coordinator.Hooks.
func (m *Metrics) Request(r schema.Request, err error) {
	switch {
	case errors.Is(err, schema.ErrRefused):
		m.requests.WithLabelValues("refused").Inc()
	case err != nil:
		m.requests.WithLabelValues("malformed").Inc()
	default:
		m.requests.WithLabelValues(string(r.Cause)).Inc()
	}
}

// Backoff implements coordinator.Hooks.
func (m *Metrics) Backoff(d time.Duration) { m.backoff.Set(d.Seconds()) }

// EtcdDB records etcd's database size, bytes in use and quota (0: unknown),
// and whether its space is exhausted (etcdspace.Usage.Exhausted).
func (m *Metrics) EtcdDB(size, inUse, quota int64, exhausted bool) {
	m.dbSize.Set(float64(size))
	m.dbInUse.Set(float64(inUse))
	m.dbQuota.Set(float64(quota))
	if exhausted {
		m.exhausted.Set(1)
	} else {
		m.exhausted.Set(0)
	}
}
