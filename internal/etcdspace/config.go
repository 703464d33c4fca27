package etcdspace

import (
	"fmt"
	"strconv"
	"time"
)

// Defaults of resyncd's embedded etcd (flags named as etcd names them).
const (
	// DefaultAutoCompactionMode: compact by age of history.
	DefaultAutoCompactionMode = "periodic"
	// DefaultAutoCompactionRetention keeps one minute of history: etcd
	// compacts every minute to the revision of a minute ago. resync keeps
	// only current values; history serves watchers catching up after a
	// reconnect (milliseconds to seconds), and a watcher that lags more
	// re-lists (internal/listwatch). A short window bounds the database
	// to about two minutes of writes, whatever the round rate.
	DefaultAutoCompactionRetention = "1m"
	// DefaultQuotaBackendBytes is etcd's own default, 2 GiB.
	DefaultQuotaBackendBytes int64 = 2 << 30
	// MaxQuotaBackendBytes is etcd's recommended maximum, 8 GiB.
	MaxQuotaBackendBytes int64 = 8 << 30
)

// ValidateAutoCompaction checks --auto-compaction-mode and
// --auto-compaction-retention as etcd reads them: periodic takes a duration
// ("1m", "1h"; a bare integer is hours), revision a count of revisions to
// keep; "0" turns compaction off.
func ValidateAutoCompaction(mode, retention string) error {
	switch mode {
	case "periodic":
		if n, err := strconv.Atoi(retention); err == nil {
			if n < 0 {
				return fmt.Errorf("--auto-compaction-retention %q: must not be negative (0 turns compaction off)", retention)
			}
			return nil
		}
		d, err := time.ParseDuration(retention)
		if err != nil {
			return fmt.Errorf("--auto-compaction-retention %q: with --auto-compaction-mode periodic use a duration like 1m or 1h (0 turns compaction off)", retention)
		}
		if d < 0 {
			return fmt.Errorf("--auto-compaction-retention %q: must not be negative (0 turns compaction off)", retention)
		}
		if d > 0 && d < time.Second {
			return fmt.Errorf("--auto-compaction-retention %q: use at least 1s (0 turns compaction off)", retention)
		}
	case "revision":
		n, err := strconv.ParseInt(retention, 10, 64)
		if err != nil || n < 0 {
			return fmt.Errorf("--auto-compaction-retention %q: with --auto-compaction-mode revision use a count of revisions to keep, like 10000 (0 turns compaction off)", retention)
		}
	default:
		return fmt.Errorf("--auto-compaction-mode %q: use periodic or revision", mode)
	}
	return nil
}

// ValidateQuota checks --quota-backend-bytes.
func ValidateQuota(q int64) error {
	if q <= 0 || q > MaxQuotaBackendBytes {
		return fmt.Errorf("--quota-backend-bytes %d: use a byte count above 0 and at most %d (8 GiB, etcd's recommended maximum); the default is %d (2 GiB)", q, MaxQuotaBackendBytes, DefaultQuotaBackendBytes)
	}
	return nil
}
