// Package listwatch keeps a consumer in sync with a key or a key prefix of
// etcd: it lists the current state at one revision, then watches from the
// next revision, and when the watch cannot continue (its history compacted,
// its member lost the raft leader, the stream broken) it re-watches from the
// last revision seen, or re-lists when that history is gone. This is what
// Kubernetes calls a reflector.
//
// Watches use clientv3.WithRequireLeader, so a member cut off from its
// cluster cancels the watch instead of serving stale silence.
package listwatch

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/sirupsen/logrus"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/resyncd/resync/internal/backoff"
	"github.com/resyncd/resync/internal/etcderr"
)

// Event is one delivery to the handler.
type Event struct {
	// Reset: Kvs is the whole state under the key at Revision; the handler
	// replaces what it knew. The first event of Run is always a Reset,
	// unless Options.Since is set.
	Reset bool
	Kvs   []*mvccpb.KeyValue
	// Changes (when !Reset) are the watch events of one response, in order.
	Changes []*clientv3.Event
	// Revision is the etcd revision the handler is now in sync with.
	Revision int64
}

// Pauses after a failed list or watch (Options.Retry).
const (
	// defaultRetry: most failures are brief (an etcd leader change, a
	// dropped stream), so the first retry comes soon.
	defaultRetry = 100 * time.Millisecond
	// maxRetryFactor caps the doubling at 1.6 s by default: a watch that
	// keeps failing costs etcd little, and a recovered etcd is noticed
	// within about two seconds.
	maxRetryFactor = 16
)

// Options tune Run. The zero value works.
type Options struct {
	// Prefix watches every key under Key instead of Key alone.
	Prefix bool
	// End, if set, watches the key range [Key, End) (overrides Prefix).
	End string
	// PageSize bounds one page of a list (default 1000).
	PageSize int64
	// Retry is the pause after a failed list or watch, doubled up to
	// maxRetryFactor x Retry and back to Retry once events flow (default
	// 100 ms).
	Retry time.Duration
	// Log receives retries and resets (default: discarded).
	Log logrus.FieldLogger
	// OnListError, if set, sees every failed list (for metrics or readiness).
	OnListError func(error)
	// Since, if positive, is the revision the handler is already in sync
	// with (it read the state itself): Run skips the first list and
	// watches from Since+1. If that history is compacted, Run lists and
	// delivers a Reset as usual.
	Since int64
}

// Run lists and watches until ctx ends or the handler returns an error. It
// returns ctx's error or the handler's. The handler runs on Run's goroutine,
// one event at a time.
func Run(ctx context.Context, c *clientv3.Client, key string, o Options, handler func(Event) error) error {
	if o.PageSize <= 0 {
		o.PageSize = 1000
	}
	if o.Retry <= 0 {
		o.Retry = defaultRetry
	}
	log := o.Log
	if log == nil {
		l := logrus.New()
		l.SetOutput(discard{})
		log = l
	}
	log = log.WithField("watch", key)
	bo := backoff.New(o.Retry, maxRetryFactor*o.Retry)
	end := o.End
	if end == "" && o.Prefix {
		end = clientv3.GetPrefixRangeEnd(key)
	}
	rev := max(o.Since, 0) // last revision the handler is in sync with; 0 = must list
	var herr error         // the handler's error, which ends Run
	handle := func(ev Event) error {
		if err := handler(ev); err != nil {
			herr = err
			return backoff.Permanent(err)
		}
		return nil
	}
	// One try lists if it must, then watches until the watch ends: it
	// lists again at once after a compaction, and otherwise fails, to be
	// tried again after the pause (reset by every event delivered).
	try := func(ctx context.Context) error {
		for {
			if rev == 0 {
				kvs, r, err := ListRange(ctx, c, key, end, o.PageSize)
				if err != nil {
					if ctx.Err() == nil {
						if o.OnListError != nil {
							o.OnListError(err)
						}
						log.WithError(err).Warn("list failed; retrying")
					}
					return err
				}
				if err := handle(Event{Reset: true, Kvs: kvs, Revision: r}); err != nil {
					return err
				}
				rev = r
			}
			if err := watch(ctx, c, key, end, &rev, bo, log, handle); err != nil {
				return err
			}
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if rev != 0 {
				return errWatchEnded
			}
		}
	}
	_ = backoff.Retry(ctx, nil, bo, try, nil) // ends with ctx or herr
	if herr != nil {
		return herr
	}
	return ctx.Err()
}

// errWatchEnded is a watch that ended for backoff.Retry: watched again
// after the pause.
var errWatchEnded = errors.New("listwatch: watch ended")

// watch watches [key, end) from *rev+1 and hands the events to handle
// until the watch ends, keeping *rev the last revision handled (0 when
// the history is compacted: list again) and resetting bo on events. It
// returns handle's error.
func watch(ctx context.Context, c *clientv3.Client, key, end string, rev *int64, bo *backoff.Backoff, log logrus.FieldLogger, handle func(Event) error) error {
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	// No WithPrevKV: no handler reads Event.PrevKv, and it costs etcd a
	// Range of the old value per event per watch (10,000 per round of
	// the leader's ack watch at 1000x10) and doubles each event's size.
	opts := []clientv3.OpOption{clientv3.WithRev(*rev + 1)}
	if end != "" {
		opts = append(opts, clientv3.WithRange(end))
	}
	wch := c.Watch(wctx, key, opts...)
	err := func() error {
		for resp := range wch {
			if resp.CompactRevision != 0 || errors.Is(resp.Err(), rpctypes.ErrCompacted) {
				log.WithField("compact_revision", resp.CompactRevision).Info("watched history compacted; re-listing")
				*rev = 0
				return nil
			}
			if err := resp.Err(); err != nil {
				log.WithError(err).Info("watch ended; re-watching")
				return nil
			}
			if len(resp.Events) == 0 {
				continue
			}
			bo.Reset()
			last := resp.Events[len(resp.Events)-1].Kv.ModRevision
			if err := handle(Event{Changes: resp.Events, Revision: last}); err != nil {
				return err
			}
			*rev = last
		}
		return nil
	}()
	cancel()
	// Drain: the client closes wch after cancel.
	for range wch {
	}
	return err
}

// List reads every key under key (or key alone) at one revision, in pages,
// and returns them in key order with that revision.
func List(ctx context.Context, c clientv3.KV, key string, prefix bool, pageSize int64) ([]*mvccpb.KeyValue, int64, error) {
	end := ""
	if prefix {
		end = clientv3.GetPrefixRangeEnd(key)
	}
	return ListRange(ctx, c, key, end, pageSize)
}

// ListRange reads the keys in [key, end) (key alone when end is "") at one
// revision, in pages, in key order, with that revision. When etcd compacts
// that revision between two pages (100,000 keys are 100 pages) it lists
// again from the start at a newer one, up to three times.
func ListRange(ctx context.Context, c clientv3.KV, key, end string, pageSize int64) (kvs []*mvccpb.KeyValue, rev int64, err error) {
	err = etcderr.ReadAgainIfCompacted(func() error {
		kvs, rev, err = listRange(ctx, c, key, end, pageSize)
		return err
	})
	return kvs, rev, err
}

func listRange(ctx context.Context, c clientv3.KV, key, end string, pageSize int64) ([]*mvccpb.KeyValue, int64, error) {
	if end == "" {
		resp, err := c.Get(ctx, key)
		if err != nil {
			return nil, 0, fmt.Errorf("get %s: %w", key, err)
		}
		return resp.Kvs, resp.Header.Revision, nil
	}
	var (
		out []*mvccpb.KeyValue
		rev int64
		cur = key
	)
	for {
		opts := []clientv3.OpOption{clientv3.WithRange(end), clientv3.WithLimit(pageSize), clientv3.WithSort(clientv3.SortByKey, clientv3.SortAscend)}
		if rev != 0 {
			opts = append(opts, clientv3.WithRev(rev))
		}
		resp, err := c.Get(ctx, cur, opts...)
		if err != nil {
			return nil, 0, fmt.Errorf("list %s: %w", key, err)
		}
		if rev == 0 {
			rev = resp.Header.Revision
		}
		out = append(out, resp.Kvs...)
		if !resp.More || len(resp.Kvs) == 0 {
			return out, rev, nil
		}
		cur = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	}
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }
