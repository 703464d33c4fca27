package etcdspace

import (
	"context"
	"errors"
	"time"

	"github.com/sirupsen/logrus"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Compactor compacts a cluster resync does not own (resyncd --endpoints
// with --compaction-interval), as kube-apiserver's --etcd-compaction-interval
// does: every Interval, while Leading reports true, it compacts to the
// revision it read one Interval earlier. History younger than one interval
// always survives, so a watcher lagging less than that never sees
// ErrCompacted (and resync's watchers re-list when they do). Only the
// leading coordinator compacts; a new leader waits one full interval before
// its first compaction.
type Compactor struct {
	Client   *clientv3.Client
	Interval time.Duration
	// Leading reports whether this process leads (nil: always).
	Leading func() bool
	// Key is read to learn the current revision (any key; its value is
	// not used).
	Key string
	// Log receives one line per compaction (nil: none).
	Log logrus.FieldLogger
	// Timeout bounds each request (default 10 s).
	Timeout time.Duration
	// Compacted is called after each compaction (optional).
	Compacted func(rev int64)
}

// Run compacts until ctx ends.
func (k *Compactor) Run(ctx context.Context) {
	t := time.NewTicker(k.Interval)
	defer t.Stop()
	var prev int64
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		prev = k.tick(ctx, prev)
	}
}

// tick compacts to prev (when leading and prev > 0) and returns the
// revision to compact to next time.
func (k *Compactor) tick(ctx context.Context, prev int64) int64 {
	if k.Leading != nil && !k.Leading() {
		return 0
	}
	timeout := k.Timeout
	if timeout <= 0 {
		timeout = 10 * time.Second
	}
	rctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	resp, err := k.Client.Get(rctx, k.Key, clientv3.WithCountOnly())
	if err != nil {
		k.logger().WithError(err).Warn("etcdspace: compaction: reading the current revision failed; trying next interval")
		return prev
	}
	cur := resp.Header.Revision
	if prev > 0 && prev < cur {
		_, err := k.Client.Compact(rctx, prev)
		switch {
		case err == nil:
			k.logger().WithField("revision", prev).WithField("interval", k.Interval).Info("etcdspace: compacted etcd's history")
			if k.Compacted != nil {
				k.Compacted(prev)
			}
		case errors.Is(err, rpctypes.ErrCompacted):
			// Someone compacted further already: fine.
		default:
			k.logger().WithError(err).WithField("revision", prev).Warn("etcdspace: compaction failed; trying next interval")
			return prev
		}
	}
	return cur
}

func (k *Compactor) logger() logrus.FieldLogger {
	if k.Log == nil {
		return discardLogger()
	}
	return k.Log
}

func discardLogger() logrus.FieldLogger {
	l := logrus.New()
	l.SetOutput(discard{})
	return l
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }

func isCompacted(err error) bool { return errors.Is(err, rpctypes.ErrCompacted) }
