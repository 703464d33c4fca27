package etcdtest

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/etcdutl/v3/snapshot"
	"go.uber.org/zap"
)

// SaveSnapshot writes a snapshot of the cluster's keyspace, read through c
// with Maintenance().Snapshot (the server's snapshot API, with its
// integrity hash), to a new file in dir and returns its path and the
// etcd revision read just before it (the snapshot holds at least that).
func SaveSnapshot(ctx context.Context, c *clientv3.Client, dir string) (string, int64, error) {
	resp, err := c.Get(ctx, "etcdtest-snapshot-probe")
	if err != nil {
		return "", 0, fmt.Errorf("etcdtest: snapshot: reading the revision: %w", err)
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
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(f.Name())
		return "", 0, fmt.Errorf("etcdtest: snapshot: %w", err)
	}
	return f.Name(), resp.Header.Revision, nil
}

// Restore restores the whole cluster from a snapshot file, as an operator
// restores a backup with `etcdutl snapshot restore`: every member is
// stopped, its data is restored from the snapshot into a new data dir
// (the same member names, peer URLs and initial cluster: a new cluster of
// the same shape), with etcd's revision bumped by bump and marked
// compacted there, so that watchers see a compaction instead of
// revisions going back; then all members start again on their old URLs
// and Restore waits until they serve. Leases are restored from the
// snapshot: keys on leases granted after it are gone, those on older
// leases are back until their leases expire.
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
		dir := filepath.Join(m.t.TempDir(), "restored")
		err := snapshot.NewV3(zap.NewNop()).Restore(snapshot.RestoreConfig{
			SnapshotPath: path, Name: m.Name, OutputDataDir: dir, PeerURLs: []string{m.PeerURL},
			InitialCluster: m.cluster, InitialClusterToken: "resync", RevisionBump: bump, MarkCompacted: bump > 0,
		})
		if err != nil {
			return fmt.Errorf("etcdtest: restore %s from %s: %w", m.Name, path, err)
		}
		m.mu.Lock()
		m.dir, m.restarted = dir, true
		m.mu.Unlock()
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
