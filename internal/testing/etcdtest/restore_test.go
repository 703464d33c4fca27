package etcdtest

import (
	"context"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// TestRestoreRollsTheClusterBack: a 3-member cluster restored from a
// snapshot serves the keys of the snapshot (not those written after it) on
// the same URLs, with the revision bumped past everything seen before and
// the old revisions marked compacted.
func TestRestoreRollsTheClusterBack(t *testing.T) {
	c := StartCluster(t, 3)
	cl := Client(t, c.Endpoints()...)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := cl.Put(ctx, "before", "1"); err != nil {
		t.Fatal(err)
	}
	path, snapRev, err := SaveSnapshot(ctx, cl, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	after, err := cl.Put(ctx, "after", "2")
	if err != nil {
		t.Fatal(err)
	}
	began := time.Now()
	if err := c.Restore(path, 1000); err != nil {
		t.Fatal(err)
	}
	t.Logf("restored in %v", time.Since(began))
	resp, err := cl.Get(ctx, "before")
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("the snapshot's key after the restore: %v %v", resp, err)
	}
	if resp.Header.Revision <= after.Header.Revision {
		t.Errorf("revision %d after the restore, want past %d (bumped)", resp.Header.Revision, after.Header.Revision)
	}
	if resp, err := cl.Get(ctx, "after"); err != nil || len(resp.Kvs) != 0 {
		t.Errorf("a key written after the snapshot survived the restore: %v %v", resp, err)
	}
	if _, err := cl.Get(ctx, "before", clientv3.WithRev(snapRev)); err == nil {
		t.Errorf("reading at the snapshot's revision %d: no compaction error", snapRev)
	}
}
