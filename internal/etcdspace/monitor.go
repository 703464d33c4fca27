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
	// defragFreeShare: defragment only when at least this share of the
	// file is free pages (in-use at most half the size).
	defragFreeShare = 0.5
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
//     loop resumes by itself; watchers re-list after the compaction. If the
//     live data alone exceeds the quota, etcd raises the alarm again on the
//     next write: the quota is too small (raise --quota-backend-bytes).
//   - Otherwise defragment when the file takes at least DefragAbove of the
//     quota, at least half of it is free pages and at most DefragMaxInUse
//     bytes are in use, at most once per DefragMinInterval. Defragmentation
//     blocks the member (every read and write, lease keepalives included,
//     waits) while it copies the live data into a new file: its length is
//     proportional to the bytes in use, which this rule bounds. Past the
//     bound the Monitor logs advice (defragment at a quiet time) instead.
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
	// DefragMaxInUse: no automatic defragmentation with more bytes in use
	// (default DefaultDefragMaxInUse); NOSPACE recovery ignores it.
	DefragMaxInUse int64
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
	return u, nil
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
	maxInUse := m.DefragMaxInUse
	if maxInUse <= 0 {
		maxInUse = DefaultDefragMaxInUse
	}
	m.mu.Lock()
	due := m.lastDefrag.IsZero() || time.Since(m.lastDefrag) >= every
	if due && u.InUse > maxInUse {
		m.lastDefrag = time.Now() // advise at the same rate
		m.mu.Unlock()
		m.log().WithFields(logrus.Fields{"db_size": Bytes(u.Size), "db_in_use": Bytes(u.InUse), "endpoint": u.Endpoint}).
			Warn("etcdspace: half of etcd's database file is free, but defragmenting it would block the member for seconds " +
				"(its time grows with the bytes in use): defragment at a quiet time (etcdctl defrag --endpoints=" + u.Endpoint + ")")
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
// older than now, defragment, disarm.
func (m *Monitor) recover(ctx context.Context, before Usage) error {
	log := m.log().WithFields(logrus.Fields{"db_size": Bytes(before.Size), "db_in_use": Bytes(before.InUse), "db_quota": Bytes(before.Quota)})
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
