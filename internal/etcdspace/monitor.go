package etcdspace

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/sirupsen/logrus"
	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Monitor defaults.
const (
	// DefaultCheckInterval is how often the Monitor reads the usage.
	DefaultCheckInterval = 30 * time.Second
	// DefaultDefragAbove: defragment only a file that takes at least this
	// share of the quota (below it, free pages cost disk but no risk).
	DefaultDefragAbove = 0.1
	// DefaultDefragMinInterval rate-limits defragmentation.
	DefaultDefragMinInterval = 10 * time.Minute
	// DefaultDefragMaxInUse bounds how long an automatic defragmentation
	// blocks the member: its time grows with the bytes in use (measured
	// 2.6-4.8 s for 90-110 MiB in use on a loaded 2-core machine; the
	// 4.8 s one expired a coordinator's 5 s session). Above it the Monitor
	// only advises.
	DefaultDefragMaxInUse int64 = 64 << 20
	// DefaultSessionTTL is the shortest session TTL assumed when the
	// Monitor is not told (Monitor.SessionTTL): the coordinator's default
	// (the agents' is 10 s).
	DefaultSessionTTL = 5 * time.Second
	// DefragSessionShare is the share of the shortest session TTL a
	// defragmentation may be estimated to take. A session's keepalive runs
	// every TTL/3 and the lease lives a whole TTL without one, so a pause of
	// a quarter of it delays one keepalive and leaves the rest of the TTL as
	// margin for a machine slower than the estimate.
	DefragSessionShare = 0.25
	// DefaultDefragRate is the conservative estimate of how many bytes in
	// use a defragmentation copies per second: below the slowest measured
	// on a loaded 2-core machine (90 MiB in 4.5 s, 110 MiB in 4.8 s: 20 and
	// 23 MiB/s; 108 MiB in 2.6 s less loaded; an idle machine did 150 MiB
	// in 1.3 s, 119 MiB/s). With the coordinator's 5 s TTL it allows
	// 1.25 s: 20 MiB in use.
	DefaultDefragRate int64 = 16 << 20
	// defragFreeShare: defragment only when at least this share of the
	// file is free pages (in-use at most half the size).
	defragFreeShare = 0.5
	// liveFullShare: after compacting away all history, bytes in use at
	// this share of the quota mean the live data alone fills it: a
	// defragmentation would shrink the file only until the next writes.
	liveFullShare = 0.9
	// warnEvery repeats a standing warning at most this often.
	warnEvery = 5 * time.Minute
)

// Monitor reads etcd's usage every Interval, publishes it (Published, Last)
// and warns past WarnFraction of the quota. With Maintain (resyncd's
// embedded etcd, which resync owns alone) it also keeps the member's file
// small and recovers from NOSPACE:
//
//   - NOSPACE alarm raised: compact to the current revision, defragment,
//     disarm the alarm. Writes then succeed again and every writer's retry
//     loop resumes by itself; watchers re-list after the compaction. At
//     most once per DefragMinInterval, and only within the defragmentation
//     bound below. When the live data alone fills the quota (after the
//     compaction at least 90% of it is in use, or the alarm comes back
//     within DefragMinInterval of a recovery) or the defragmentation would
//     exceed the bound, the Monitor leaves the alarm standing and enters
//     the exhausted state (Usage.Exhausted, its Warning naming the fix),
//     logged once, instead of compacting, defragmenting and disarming at
//     every check. The state ends when the alarm is gone (an operator's
//     fix); after DefragMinInterval the Monitor assesses again.
//   - Otherwise defragment when the file takes at least DefragAbove of the
//     quota, at least half of it is free pages and the bytes in use are
//     within the bound, at most once per DefragMinInterval. Past the bound
//     the Monitor logs advice (defragment at a quiet time) instead.
//
// The defragmentation bound: defragmentation blocks the member (every read
// and write, lease keepalives included, waits) while it copies the live
// data into a new file, for a time proportional to the bytes in use. No
// defragmentation may be estimated (bytes in use / DefragRate) to take more
// than DefragSessionShare (1/4) of SessionTTL, the shortest session TTL in
// use, nor copy more than DefragMaxInUse bytes.
//
// A Monitor is safe for concurrent use (Last and Counts while Run runs);
// Check and Run must not run concurrently.
type Monitor struct {
	Client *clientv3.Client
	// Interval between checks (default DefaultCheckInterval).
	Interval time.Duration
	// Maintain: defragment and recover from NOSPACE (embedded etcd only).
	Maintain bool
	// DefragAbove is the share of the quota a file must reach before it is
	// defragmented (default DefaultDefragAbove).
	DefragAbove float64
	// DefragMinInterval rate-limits defragmentation (default
	// DefaultDefragMinInterval).
	DefragMinInterval time.Duration
	// DefragMaxInUse: no automatic defragmentation (routine or NOSPACE
	// recovery) with more bytes in use (default DefaultDefragMaxInUse),
	// whatever the session bound allows.
	DefragMaxInUse int64
	// SessionTTL is the shortest etcd session (lease) TTL in use: the
	// coordinator's and the agents' (resyncd passes the smaller of its
	// --session-ttl and the agents' default). No defragmentation, routine
	// or NOSPACE recovery, may be estimated to take more than
	// DefragSessionShare of it (default DefaultSessionTTL).
	SessionTTL time.Duration
	// DefragRate is the conservative estimate of how many bytes in use a
	// defragmentation copies per second (default DefaultDefragRate).
	DefragRate int64
	// Timeout bounds each request; defragmentation gets 10x (default 10 s).
	Timeout time.Duration
	// Published receives each usage read (metrics); optional.
	Published func(Usage)
	Log       logrus.FieldLogger

	mu         sync.Mutex
	last       Usage
	lastErr    error
	lastAt     time.Time
	lastDefrag time.Time
	warnedAt   time.Time
	warned     string
	errAt      time.Time
	defrags    int
	recoveries int
	// lastRecovery: when the last NOSPACE recovery (or its assessment)
	// ran; recoveries are rate-limited like defragmentations.
	lastRecovery time.Time
	// exhausted: the exhausted state's warning ("" when not exhausted).
	exhausted string
}

// Last is the last usage read (zero time: none yet) and its error.
func (m *Monitor) Last() (Usage, time.Time, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.last, m.lastAt, m.lastErr
}

// Counts returns how many defragmentations and NOSPACE recoveries ran.
func (m *Monitor) Counts() (defrags, recoveries int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.defrags, m.recoveries
}

// Run checks at once, then every Interval, until ctx ends.
func (m *Monitor) Run(ctx context.Context) {
	iv := m.Interval
	if iv <= 0 {
		iv = DefaultCheckInterval
	}
	t := time.NewTicker(iv)
	defer t.Stop()
	for {
		m.Check(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Check runs one step: read, publish, warn and (with Maintain) maintain.
func (m *Monitor) Check(ctx context.Context) (Usage, error) {
	u, err := m.read(ctx)
	if err != nil || !m.Maintain {
		return u, err
	}
	switch {
	case u.NoSpace:
		if err := m.recover(ctx, u); err != nil {
			m.log().WithError(err).Error("etcdspace: recovering the embedded etcd from NOSPACE failed; retrying next check")
			return u, err
		}
	case m.defragDue(u):
		before := u
		start := time.Now()
		if err := m.defrag(ctx, u.Endpoint); err != nil {
			m.log().WithError(err).Warn("etcdspace: defragmentation failed; retrying after the rate limit")
			return u, err
		}
		u, _ = m.read(ctx)
		m.log().WithFields(logrus.Fields{"size_before": Bytes(before.Size), "in_use": Bytes(before.InUse),
			"size_after": Bytes(u.Size), "took": time.Since(start).Round(time.Millisecond)}).
			Info("etcdspace: defragmented the embedded etcd (it paused requests meanwhile)")
	}
	return u, nil
}

func (m *Monitor) read(ctx context.Context) (Usage, error) {
	rctx, cancel := context.WithTimeout(ctx, m.timeout())
	u, err := Read(rctx, m.Client)
	cancel()
	now := time.Now()
	m.mu.Lock()
	m.lastAt, m.lastErr = now, err
	clearedExhausted := ""
	if err == nil && !u.NoSpace && m.exhausted != "" {
		clearedExhausted, m.exhausted = m.exhausted, ""
	}
	if err == nil && u.NoSpace && m.exhausted != "" {
		u.Exhausted, u.Warning = true, m.exhausted
	}
	if err == nil {
		m.last = u
	}
	warn := ""
	if err == nil && u.Warning != "" && (u.Warning != m.warned || now.Sub(m.warnedAt) >= warnEvery) {
		warn, m.warned, m.warnedAt = u.Warning, u.Warning, now
	}
	cleared := err == nil && u.Warning == "" && m.warned != ""
	if cleared {
		m.warned = ""
	}
	logErr := err != nil && now.Sub(m.errAt) >= warnEvery
	if logErr {
		m.errAt = now
	}
	m.mu.Unlock()
	if err != nil {
		if logErr {
			m.log().WithError(err).Warn("etcdspace: reading etcd's database size failed; /status and the metrics keep the last value (with etcd auth, the user needs the maintenance Status permission)")
		}
		return u, err
	}
	if m.Published != nil {
		m.Published(u)
	}
	fields := logrus.Fields{"db_size": Bytes(u.Size), "db_in_use": Bytes(u.InUse), "db_quota": Bytes(u.Quota), "endpoint": u.Endpoint}
	if warn != "" {
		m.log().WithFields(fields).Warn("etcdspace: " + warn)
	}
	if cleared {
		m.log().WithFields(fields).Info("etcdspace: etcd's database is below the warning level again")
	}
	if clearedExhausted != "" {
		m.log().WithFields(fields).Info("etcdspace: the NOSPACE alarm is gone: etcd's space is no longer exhausted")
	}
	return u, nil
}

// exhaust enters the exhausted state with warning w: the last usage shows
// it (and is published again), and it is logged once.
func (m *Monitor) exhaust(w string, fields logrus.Fields) {
	m.mu.Lock()
	changed := m.exhausted != w
	m.exhausted = w
	m.last.Exhausted, m.last.Warning = true, w
	m.warned, m.warnedAt = w, time.Now() // read logs it no more
	last := m.last
	m.mu.Unlock()
	if m.Published != nil {
		m.Published(last)
	}
	if changed {
		m.log().WithFields(fields).Error("etcdspace: " + w)
	}
}

// DefragLimit is the most bytes in use an automatic defragmentation may
// copy, and the pause it is allowed: DefragSessionShare of SessionTTL at
// DefragRate, at most DefragMaxInUse.
func (m *Monitor) DefragLimit() (limit int64, pause time.Duration) {
	ttl := m.SessionTTL
	if ttl <= 0 {
		ttl = DefaultSessionTTL
	}
	pause = time.Duration(DefragSessionShare * float64(ttl))
	limit = int64(pause.Seconds() * float64(m.rate()))
	maxInUse := m.DefragMaxInUse
	if maxInUse <= 0 {
		maxInUse = DefaultDefragMaxInUse
	}
	return min(limit, maxInUse), pause
}

// estimate is how long a defragmentation of inUse bytes is expected to
// block the member, at DefragRate.
func (m *Monitor) estimate(inUse int64) time.Duration {
	return time.Duration(float64(inUse) / float64(m.rate()) * float64(time.Second)).Round(10 * time.Millisecond)
}

func (m *Monitor) rate() int64 {
	if m.DefragRate > 0 {
		return m.DefragRate
	}
	return DefaultDefragRate
}

func (m *Monitor) sessionTTL() time.Duration {
	if m.SessionTTL > 0 {
		return m.SessionTTL
	}
	return DefaultSessionTTL
}

// tooLong words why a defragmentation of u's bytes in use is refused.
func (m *Monitor) tooLong(u Usage) string {
	limit, pause := m.DefragLimit()
	return fmt.Sprintf("defragmenting it (%s in use) would block the member about %s at %s/s, past the automatic bound of %s in use "+
		"(%s: 1/4 of the shortest session TTL, %s, beyond which leases and the coordinator's session may expire)",
		Bytes(u.InUse), m.estimate(u.InUse), Bytes(m.rate()), Bytes(limit), pause, m.sessionTTL())
}

func (m *Monitor) defragDue(u Usage) bool {
	above := m.DefragAbove
	if above <= 0 {
		above = DefaultDefragAbove
	}
	every := m.DefragMinInterval
	if every <= 0 {
		every = DefaultDefragMinInterval
	}
	if u.Quota <= 0 || u.Size == 0 || float64(u.Size) < above*float64(u.Quota) {
		return false
	}
	if float64(u.Size-u.InUse) < defragFreeShare*float64(u.Size) {
		return false
	}
	limit, _ := m.DefragLimit()
	m.mu.Lock()
	due := m.lastDefrag.IsZero() || time.Since(m.lastDefrag) >= every
	if due && u.InUse > limit {
		m.lastDefrag = time.Now() // advise at the same rate
		m.mu.Unlock()
		m.log().WithFields(logrus.Fields{"db_size": Bytes(u.Size), "db_in_use": Bytes(u.InUse), "endpoint": u.Endpoint}).
			Warn("etcdspace: half of etcd's database file is free, but " + m.tooLong(u) +
				": defragment at a quiet time (etcdctl defrag --endpoints=" + u.Endpoint + ")")
		return false
	}
	m.mu.Unlock()
	return due
}

func (m *Monitor) defrag(ctx context.Context, endpoint string) error {
	m.mu.Lock()
	m.lastDefrag = time.Now()
	m.mu.Unlock()
	dctx, cancel := context.WithTimeout(ctx, 10*m.timeout())
	defer cancel()
	if _, err := m.Client.Defragment(dctx, endpoint); err != nil {
		return fmt.Errorf("defragment %s: %w", endpoint, err)
	}
	m.mu.Lock()
	m.defrags++
	m.mu.Unlock()
	return nil
}

// recover frees the embedded member after NOSPACE: compact everything
// older than now, defragment, disarm; within the defragmentation bound, at
// most once per DefragMinInterval, and not when the live data alone fills
// the quota (then: the exhausted state).
func (m *Monitor) recover(ctx context.Context, before Usage) error {
	every := m.DefragMinInterval
	if every <= 0 {
		every = DefaultDefragMinInterval
	}
	fields := logrus.Fields{"db_size": Bytes(before.Size), "db_in_use": Bytes(before.InUse), "db_quota": Bytes(before.Quota), "endpoint": before.Endpoint}
	m.mu.Lock()
	last, exhausted := m.lastRecovery, m.exhausted
	m.mu.Unlock()
	if !last.IsZero() && time.Since(last) < every {
		// Raised again soon after a recovery (or after the alarm an
		// earlier assessment left standing was cleared by hand).
		if exhausted == "" {
			m.exhaust(fmt.Sprintf("NOSPACE alarm raised again %s after resyncd last freed space: the live data fills the quota (%s in use of %s); "+
				"resyncd leaves the alarm standing (writes stay refused) and looks again %s after its last recovery: %s",
				time.Since(last).Round(time.Second), Bytes(before.InUse), Bytes(before.Quota), every, exhaustedFix), fields)
		}
		return nil
	}
	log := m.log().WithFields(fields)
	log.Warn("etcdspace: NOSPACE alarm on the embedded etcd: compacting, defragmenting and disarming it")
	rctx, cancel := context.WithTimeout(ctx, m.timeout())
	resp, err := m.Client.Get(rctx, "\x00", clientv3.WithCountOnly())
	cancel()
	if err != nil {
		return fmt.Errorf("read the current revision: %w", err)
	}
	rev := resp.Header.Revision
	rctx, cancel = context.WithTimeout(ctx, 10*m.timeout())
	_, err = m.Client.Compact(rctx, rev, clientv3.WithCompactPhysical())
	cancel()
	if err != nil && !isCompacted(err) {
		return fmt.Errorf("compact to revision %d: %w", rev, err)
	}
	compacted, err := m.read(ctx)
	if err != nil {
		return fmt.Errorf("read the usage after compaction: %w", err)
	}
	m.mu.Lock()
	m.lastRecovery = time.Now() // assessed: the next one after DefragMinInterval
	m.mu.Unlock()
	fields["compacted_to"], fields["db_in_use_after_compaction"] = rev, Bytes(compacted.InUse)
	limit, _ := m.DefragLimit()
	switch {
	case compacted.Quota > 0 && float64(compacted.InUse) >= liveFullShare*float64(compacted.Quota):
		m.exhaust(fmt.Sprintf("NOSPACE alarm raised and the live data alone fills the quota: %s in use of %s after compacting all history, "+
			"so defragmenting would free nothing lasting; resyncd leaves the alarm standing (writes stay refused) and looks again in %s: %s",
			Bytes(compacted.InUse), Bytes(compacted.Quota), every, exhaustedFix), fields)
		return nil
	case compacted.InUse > limit:
		m.exhaust(fmt.Sprintf("NOSPACE alarm raised; resyncd compacted all history, but %s, so it leaves the alarm standing (writes stay refused): "+
			"at a quiet time run etcdctl defrag --endpoints=%s, then etcdctl alarm disarm; or raise --quota-backend-bytes (restart resyncd with it) "+
			"(docs/resyncd.md, Runbook: ResyncEtcdSpaceExhausted)", m.tooLong(compacted), compacted.Endpoint), fields)
		return nil
	}
	if err := m.defrag(ctx, before.Endpoint); err != nil {
		return err
	}
	rctx, cancel = context.WithTimeout(ctx, m.timeout())
	defer cancel()
	al, err := m.Client.AlarmList(rctx)
	if err != nil {
		return fmt.Errorf("list alarms: %w", err)
	}
	for _, a := range al.Alarms {
		if a.Alarm != pb.AlarmType_NOSPACE {
			continue
		}
		if _, err := m.Client.AlarmDisarm(rctx, (*clientv3.AlarmMember)(a)); err != nil {
			return fmt.Errorf("disarm NOSPACE: %w", err)
		}
	}
	after, _ := m.read(ctx)
	m.mu.Lock()
	m.recoveries++
	m.mu.Unlock()
	log.WithFields(logrus.Fields{"compacted_to": rev, "db_size_after": Bytes(after.Size), "db_in_use_after": Bytes(after.InUse)}).
		Warn("etcdspace: NOSPACE alarm disarmed after compaction and defragmentation; writes resume")
	return nil
}

// exhaustedFix is the operator's fix when the live data fills the quota.
const exhaustedFix = "raise --quota-backend-bytes (restart resyncd with it; at most 8 GiB) or delete data (lower --history), " +
	"then etcdctl defrag and etcdctl alarm disarm (docs/resyncd.md, Runbook: ResyncEtcdSpaceExhausted)"

func (m *Monitor) timeout() time.Duration {
	if m.Timeout > 0 {
		return m.Timeout
	}
	return 10 * time.Second
}

func (m *Monitor) log() logrus.FieldLogger {
	if m.Log == nil {
		return discardLogger()
	}
	return m.Log
}
