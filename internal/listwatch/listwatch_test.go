package listwatch

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/goleak"

	"github.com/resyncd/resync/internal/testing/etcdtest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m, etcdtest.LeakOptions()...) }

// pagedKeys starts etcd with the keys /p/k00 to /p/k24.
func pagedKeys(t *testing.T) (*clientv3.Client, context.Context) {
	t.Helper()
	m := etcdtest.Start(t)
	c := m.Client(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	for i := 0; i < 25; i++ {
		if _, err := c.Put(ctx, fmt.Sprintf("/p/k%02d", i), "v"); err != nil {
			t.Fatal(err)
		}
	}
	return c, ctx
}

func TestListPagesAtOneRevision(t *testing.T) {
	c, ctx := pagedKeys(t)
	if _, err := c.Put(ctx, "/q", "outside"); err != nil {
		t.Fatal(err)
	}
	kvs, rev, err := List(ctx, c, "/p/", true, 7) // 4 pages
	if err != nil {
		t.Fatal(err)
	}
	if len(kvs) != 25 || string(kvs[0].Key) != "/p/k00" || string(kvs[24].Key) != "/p/k24" {
		t.Fatalf("listed %d keys", len(kvs))
	}
	for _, kv := range kvs {
		if kv.ModRevision > rev {
			t.Fatalf("%s at %d is newer than the list revision %d", kv.Key, kv.ModRevision, rev)
		}
	}
	kvs, _, err = ListRange(ctx, c, "/p/k10", "/p/k13", 2)
	if err != nil || len(kvs) != 3 {
		t.Fatalf("range: %d keys, %v", len(kvs), err)
	}
}

func TestRunResetsAfterCompactionAndReturnsHandlerErrors(t *testing.T) {
	m := etcdtest.Start(t)
	c := m.Client(t)
	proxy := etcdtest.NewProxy(t, m.Endpoint())
	wc := etcdtest.Client(t, proxy.Endpoint)
	ctx, cancel := context.WithCancel(context.Background())
	events := make(chan Event, 100)
	done := make(chan error, 1)
	stop := errors.New("stop")
	go func() {
		done <- Run(ctx, wc, "/w/", Options{Prefix: true, Retry: 20 * time.Millisecond}, func(ev Event) error {
			events <- ev
			for _, e := range ev.Changes {
				if string(e.Kv.Key) == "/w/stop" {
					return stop
				}
			}
			return nil
		})
	}()
	defer cancel()
	next := func(what string) Event {
		t.Helper()
		select {
		case ev := <-events:
			return ev
		case <-time.After(20 * time.Second):
			t.Fatalf("no event: %s", what)
		}
		return Event{}
	}
	if ev := next("initial reset"); !ev.Reset || len(ev.Kvs) != 0 {
		t.Fatalf("first event %+v", ev)
	}
	put := func(k string) {
		if _, err := c.Put(context.Background(), k, "v"); err != nil {
			t.Fatal(err)
		}
	}
	put("/w/a")
	if ev := next("put a"); ev.Reset || string(ev.Changes[0].Kv.Key) != "/w/a" {
		t.Fatalf("event %+v", ev)
	}
	proxy.Cut()
	put("/w/b")
	put("/w/c")
	etcdtest.Compact(t, c)
	proxy.Restore()
	ev := next("reset after compaction")
	if !ev.Reset || len(ev.Kvs) != 3 {
		t.Fatalf("after compaction: reset=%v with %d keys, want a reset with a, b, c", ev.Reset, len(ev.Kvs))
	}
	put("/w/stop")
	next("put stop")
	select {
	case err := <-done:
		if !errors.Is(err, stop) {
			t.Fatalf("Run returned %v, want the handler's error", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return the handler's error")
	}
}

// With Since, Run does not list: it delivers the changes after Since, and
// lists (a Reset) only when that history is compacted.
func TestRunSinceWatchesFromThere(t *testing.T) {
	m := etcdtest.Start(t)
	c := m.Client(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	put := func(k string) int64 {
		t.Helper()
		resp, err := c.Put(ctx, k, "v")
		if err != nil {
			t.Fatal(err)
		}
		return resp.Header.Revision
	}
	first := func(since int64) Event {
		t.Helper()
		var got Event
		stop := errors.New("stop")
		err := Run(ctx, c, "/s/", Options{Prefix: true, Since: since}, func(ev Event) error {
			got = ev
			return stop
		})
		if !errors.Is(err, stop) {
			t.Fatalf("Run(Since %d) = %v", since, err)
		}
		return got
	}
	r1 := put("/s/a")
	r2 := put("/s/b")
	if ev := first(r1); ev.Reset || len(ev.Changes) != 1 || string(ev.Changes[0].Kv.Key) != "/s/b" || ev.Revision != r2 {
		t.Fatalf("Since %d: first event %+v, want the change of /s/b at %d", r1, ev, r2)
	}
	put("/s/c")
	etcdtest.Compact(t, c)
	if ev := first(r1); !ev.Reset || len(ev.Kvs) != 3 {
		t.Fatalf("Since %d after compaction: reset=%v with %d keys, want a reset with a, b, c", r1, ev.Reset, len(ev.Kvs))
	}
}

// compactAtPageKV compacts etcd's history before the Get of page n (from
// 1) of a list: the revision the list reads at is gone by then.
type compactAtPageKV struct {
	clientv3.KV
	page      int
	gets      int
	compacted int64 // the revision compacted at
}

func (k *compactAtPageKV) Get(ctx context.Context, key string, opts ...clientv3.OpOption) (*clientv3.GetResponse, error) {
	if k.gets++; k.gets == k.page {
		resp, err := k.KV.Delete(ctx, "/p/k24")
		if err == nil {
			k.compacted = resp.Header.Revision
			_, err = k.KV.Compact(ctx, resp.Header.Revision)
		}
		if err != nil {
			return nil, err
		}
	}
	return k.KV.Get(ctx, key, opts...)
}

// A compaction between two pages of a list lists again from the start,
// at a revision after it, instead of failing the list.
func TestListAgainAfterCompactionBetweenPages(t *testing.T) {
	c, ctx := pagedKeys(t)
	kv := &compactAtPageKV{KV: c.KV, page: 3}
	kvs, rev, err := ListRange(ctx, kv, "/p/", "/p0", 7) // 4 pages
	if err != nil {
		t.Fatalf("list with a compaction before its third page: %v", err)
	}
	// The second listing is at or after the delete: 24 keys.
	if len(kvs) != 24 || string(kvs[23].Key) != "/p/k23" {
		t.Fatalf("listed %d keys, want the 24 left after the compaction", len(kvs))
	}
	if kv.gets != 3+4 {
		t.Errorf("%d Gets: want 3 of the first listing (the third refused), then 4 pages again", kv.gets)
	}
	if rev < kv.compacted {
		t.Errorf("list revision %d: want one at or after the compaction at %d", rev, kv.compacted)
	}
}
