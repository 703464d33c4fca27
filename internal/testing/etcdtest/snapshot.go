package etcdtest

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/etcdutl/v3/snapshot"
	"go.uber.org/zap"
)

// Backups and restores, done the way an operator does them: a snapshot
// through the server's snapshot API (etcdctl snapshot save), and a restore
// with etcdutl's snapshot restore into new data dirs, the members started
// again on their old URLs so that clients reconnect to the restored data.
// Leases in the snapshot come back with their full TTL; keys keep their
// revisions. bump > 0 is etcdutl's --bump-revision bump --mark-compacted
// (etcd's advice for clusters whose clients cache revisions): the restored
// history is compacted and its next revision is the snapshot's plus bump.

// SaveSnapshot writes a snapshot of the cluster's keyspace, read through c
// with Maintenance().Snapshot (the server's snapshot API, with its
// integrity hash), to a new file in dir and returns its path and the
// etcd revision read just before it (the snapshot holds at least that).
func SaveSnapshot(ctx context.Context, c *clientv3.Client, dir string) (string, int64, error) {
	resp, err := c.Get(ctx, "etcdtest-snapshot-probe")
	if err != nil {
		return "", 0, fmt.Errorf("etcdtest: snapshot: reading the revision: %w", err)
	}
	if err := waitApplied(ctx, c); err != nil {
		return "", 0, fmt.Errorf("etcdtest: snapshot: %w", err)
	}
	f, err := os.CreateTemp(dir, "snapshot-*.db")
	if err != nil {
		return "", 0, err
	}
	rc, err := c.Snapshot(ctx)
	if err == nil {
		_, err = io.Copy(f, rc)
		rc.Close()
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(f.Name())
		return "", 0, fmt.Errorf("etcdtest: snapshot: %w", err)
	}
	return f.Name(), resp.Header.Revision, nil
}

// waitApplied waits until every endpoint of c that answers has applied
// what its cluster had committed when it was called. The snapshot API
// serves the member that the client's balancer picks, and a follower under
// load can be behind the write that the caller just saw succeed: its
// snapshot would lack it. A member that does not answer (stopped by a
// fault test) serves no snapshot either and is not waited for.
func waitApplied(ctx context.Context, c *clientv3.Client) error {
	status := func(ep string) (applied, committed uint64, ok bool) {
		sctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		st, err := c.Status(sctx, ep)
		if err != nil {
			return 0, 0, false
		}
		return st.RaftAppliedIndex, st.RaftIndex, true
	}
	var committed uint64
	var live []string
	for _, ep := range c.Endpoints() {
		if _, ci, ok := status(ep); ok {
			committed, live = max(committed, ci), append(live, ep)
		}
	}
	for _, ep := range live {
		for {
			applied, _, ok := status(ep)
			if !ok || applied >= committed {
				break
			}
			select {
			case <-ctx.Done():
				return fmt.Errorf("%s applied index %d, waiting for %d: %w", ep, applied, committed, ctx.Err())
			case <-time.After(10 * time.Millisecond):
			}
		}
	}
	return nil
}

// Snapshot takes a backup of the member's data (SaveSnapshot) and returns
// the path of the file, in a t.TempDir.
func (m *Member) Snapshot(t testing.TB) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	path, _, err := SaveSnapshot(ctx, Client(t, m.Endpoint()), t.TempDir())
	if err != nil {
		t.Fatalf("etcdtest: snapshot of %s: %v", m.Name, err)
	}
	return path
}

// RestoreSnapshot brings a single-member etcd back to the backup at path:
// it stops the member, restores the snapshot into a new data dir and starts
// the member again on the same URLs.
func (m *Member) RestoreSnapshot(t testing.TB, path string, bump uint64) {
	t.Helper()
	if strings.Contains(m.cluster, ",") {
		t.Fatalf("etcdtest: RestoreSnapshot restores a single-member etcd; %s is in %s (use Cluster.Restore)", m.Name, m.cluster)
	}
	m.Stop()
	if err := m.restoreInto(path, bump); err != nil {
		t.Fatal(err)
	}
	m.Restart()
}

// Restore restores the whole cluster from a snapshot file: every member is
// stopped, its data is restored from the snapshot into a new data dir (the
// same member names, peer URLs and initial cluster: a new cluster of the
// same shape), then all members start again on their old URLs and Restore
// waits until they serve. Keys on leases granted after the snapshot are
// gone; those on older leases are back until their leases expire.
func (c *Cluster) Restore(path string, bump uint64) error {
	// All at once: a member stopped after its peers waits for them in
	// vain (raft's leader transfer, its in-flight requests).
	var wg sync.WaitGroup
	for _, m := range c.Members {
		wg.Add(1)
		go func() {
			defer wg.Done()
			m.Stop()
		}()
	}
	wg.Wait()
	for _, m := range c.Members {
		if err := m.restoreInto(path, bump); err != nil {
			return err
		}
	}
	errc := make(chan error, len(c.Members))
	for _, m := range c.Members {
		go func() { errc <- m.start() }()
	}
	var first error
	for range c.Members {
		if err := <-errc; err != nil && first == nil {
			first = err
		}
	}
	if first != nil {
		return fmt.Errorf("etcdtest: restart after restore: %w", first)
	}
	return nil
}

// restoreInto restores the snapshot at path into a new data dir of the
// stopped member m (etcdutl snapshot restore), which its next start uses.
func (m *Member) restoreInto(path string, bump uint64) error {
	dir := filepath.Join(m.t.TempDir(), "restored")
	err := snapshot.NewV3(zap.NewNop()).Restore(snapshot.RestoreConfig{
		SnapshotPath: path, Name: m.Name, OutputDataDir: dir, PeerURLs: []string{m.PeerURL},
		InitialCluster: m.cluster, InitialClusterToken: "resync", // embedetcd's
		RevisionBump: bump, MarkCompacted: bump > 0,
	})
	if err != nil {
		return fmt.Errorf("etcdtest: restore %s from %s: %w", m.Name, path, err)
	}
	m.mu.Lock()
	m.dir, m.restarted = dir, true
	m.mu.Unlock()
	return nil
}
