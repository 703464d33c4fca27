package etcdspace

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/resyncd/resync/internal/etcderr"
)

// WarnFraction is the share of the quota past which resync warns (log line,
// /status and `resyncctl status` field).
const WarnFraction = 0.8

// Usage is etcd's database size against its quota, from the member with
// the largest database among the client's endpoints (each member has its
// own backend file and its own quota check).
type Usage struct {
	// Endpoint is the member reported.
	Endpoint string `json:"endpoint"`
	// Size is the backend file size in bytes: what the quota counts.
	Size int64 `json:"db_size_bytes"`
	// InUse is the part of Size holding data; Size-InUse is free pages
	// that etcd reuses, and that defragmentation returns to the disk.
	InUse int64 `json:"db_size_in_use_bytes"`
	// Quota is --quota-backend-bytes (0: the server did not say).
	Quota int64 `json:"db_quota_bytes"`
	// NoSpace is true while the cluster has a NOSPACE alarm raised.
	NoSpace bool `json:"nospace_alarm,omitempty"`
	// Exhausted is set by a Monitor while the NOSPACE alarm stands and it
	// will not clear it by itself: the live data alone fills the quota, or
	// freeing space needs a defragmentation longer than the sessions
	// allow. Warning then says which, and the fix.
	Exhausted bool `json:"space_exhausted,omitempty"`
	// Warning is set past WarnFraction of the quota, or with the alarm.
	Warning string `json:"warning,omitempty"`
}

// Fraction is Size/Quota (0 when the quota is unknown).
func (u Usage) Fraction() float64 {
	if u.Quota <= 0 {
		return 0
	}
	return float64(u.Size) / float64(u.Quota)
}

// warning words the state for operators; "" when all is well.
func (u Usage) warning() string {
	switch {
	case u.NoSpace:
		return "NOSPACE alarm raised: " + etcderr.Hint
	case u.Quota > 0 && u.Fraction() >= WarnFraction:
		return fmt.Sprintf("etcd's database is at %.0f%% of its quota (%s of %s, %s in use): "+
			"compact and defragment before it fills (NOSPACE stops every write; docs/storage.md)",
			100*u.Fraction(), Bytes(u.Size), Bytes(u.Quota), Bytes(u.InUse))
	}
	return ""
}

// EndpointTimeout bounds Read's status call to one endpoint, so that a
// member that is down costs Read this much, not the caller's whole budget.
const EndpointTimeout = 2 * time.Second

// Read asks every endpoint of c for its status (all at once, each bounded
// by EndpointTimeout) and the cluster for its alarms. An endpoint that does
// not answer is skipped; Read fails only when none answers.
func Read(ctx context.Context, c *clientv3.Client) (Usage, error) {
	eps := c.Endpoints()
	sts := make([]*clientv3.StatusResponse, len(eps))
	errs := make([]error, len(eps))
	var wg sync.WaitGroup
	for i, ep := range eps {
		wg.Go(func() {
			ectx, cancel := context.WithTimeout(ctx, EndpointTimeout)
			defer cancel()
			sts[i], errs[i] = c.Status(ectx, ep)
		})
	}
	wg.Wait()
	var u Usage
	var firstErr error
	answered := false
	for i, ep := range eps {
		st, err := sts[i], errs[i]
		if err != nil {
			if firstErr == nil {
				firstErr = fmt.Errorf("etcd status of %s: %w", ep, err)
			}
			continue
		}
		if !answered || st.DbSize > u.Size {
			u.Endpoint, u.Size, u.InUse, u.Quota = ep, st.DbSize, st.DbSizeInUse, st.DbSizeQuota
		}
		answered = true
		for _, e := range st.Errors {
			if containsNoSpace(e) {
				u.NoSpace = true
			}
		}
	}
	if !answered {
		return Usage{}, firstErr
	}
	if al, err := c.AlarmList(ctx); err == nil {
		for _, a := range al.Alarms {
			if a.Alarm == pb.AlarmType_NOSPACE {
				u.NoSpace = true
			}
		}
	}
	u.Warning = u.warning()
	return u, nil
}

func containsNoSpace(s string) bool {
	return strings.Contains(s, "NOSPACE") || strings.Contains(s, "database space exceeded")
}

// Bytes formats n in binary units (KiB, MiB, GiB), for humans.
func Bytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit && exp < 3; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGT"[exp])
}
