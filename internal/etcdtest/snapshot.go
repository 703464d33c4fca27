package etcdtest

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/etcdutl/v3/snapshot"
	"go.uber.org/zap"
)

// Snapshot takes a backup of the member's data the way an operator does
// (the Maintenance API's Snapshot, as etcdctl snapshot save) and returns the
// path of the file, in a t.TempDir.
func (m *Member) Snapshot(t testing.TB) string {
	t.Helper()
	c := Client(t, m.Endpoint())
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	rc, err := c.Snapshot(ctx)
	if err != nil {
		t.Fatalf("etcdtest: snapshot of %s: %v", m.Name, err)
	}
	defer rc.Close()
	path := filepath.Join(t.TempDir(), "snapshot.db")
	f, err := os.Create(path)
	if err != nil {
		t.Fatalf("etcdtest: snapshot: %v", err)
	}
	defer f.Close()
	if _, err := io.Copy(f, rc); err != nil {
		t.Fatalf("etcdtest: snapshot of %s: %v", m.Name, err)
	}
	if err := f.Sync(); err != nil {
		t.Fatalf("etcdtest: snapshot: %v", err)
	}
	return path
}

// RestoreSnapshot does what an operator does to bring a single-member etcd
// back to a backup: it stops the member, restores the snapshot at path
// into a new data dir (etcdutl snapshot restore) and starts the member
// again on the same URLs, so that clients reconnect to the restored data.
// Leases in the snapshot come back with their full TTL; keys keep their
// revisions. bump > 0 is etcdutl's --bump-revision bump --mark-compacted
// (etcd's advice for clusters whose clients cache revisions): the restored
// history is compacted and its next revision is the snapshot's plus bump.
func (m *Member) RestoreSnapshot(t testing.TB, path string, bump uint64) {
	t.Helper()
	if strings.Contains(m.cluster, ",") {
		t.Fatalf("etcdtest: RestoreSnapshot restores a single-member etcd; %s is in %s", m.Name, m.cluster)
	}
	m.Stop()
	dir := filepath.Join(t.TempDir(), "restored")
	err := snapshot.NewV3(zap.NewNop()).Restore(snapshot.RestoreConfig{
		SnapshotPath:        path,
		Name:                m.Name,
		OutputDataDir:       dir,
		PeerURLs:            []string{m.PeerURL},
		InitialCluster:      m.cluster,
		InitialClusterToken: "resync", // embedetcd's
		RevisionBump:        bump,
		MarkCompacted:       bump > 0,
	})
	if err != nil {
		t.Fatalf("etcdtest: restore %s from %s: %v", m.Name, path, err)
	}
	m.dir = dir
	m.Restart()
}
