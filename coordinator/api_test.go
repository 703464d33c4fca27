package coordinator

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/resyncd/resync/internal/testing/etcdtest"
	"github.com/resyncd/resync/schema"
)

// pageHookKV runs before(n, rev) before the n-th Get (from 1) of keys
// under prefix, rev the etcd revision that Get asks for (0: now), and
// records each Get's revision.
type pageHookKV struct {
	clientv3.KV
	prefix string
	before func(n int, rev int64)
	mu     sync.Mutex
	revs   []int64
}

func (k *pageHookKV) Get(ctx context.Context, key string, opts ...clientv3.OpOption) (*clientv3.GetResponse, error) {
	if len(key) >= len(k.prefix) && key[:len(k.prefix)] == k.prefix {
		rev := clientv3.OpGet(key, opts...).Rev()
		k.mu.Lock()
		k.revs = append(k.revs, rev)
		n := len(k.revs)
		k.mu.Unlock()
		k.before(n, rev)
	}
	return k.KV.Get(ctx, key, opts...)
}

// ReadRoundAgents reads every page at its first page's etcd revision,
// whatever changes meanwhile, and reads again from the start at a newer
// revision when etcd compacts that one between pages.
func TestReadRoundAgentsReadsOneRevision(t *testing.T) {
	m := etcdtest.Start(t)
	c := m.Client(t)
	ctx := ctxT(t, 10*time.Second)
	var agents []string
	for i := 1; i <= 5; i++ {
		a := fmt.Sprintf("a%d", i)
		agents = append(agents, a)
		v, err := schema.Encode(schema.RoundAgent{Revision: 7, Agent: a, State: schema.Started, Plugins: []string{"p1"}})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.Put(ctx, layout.RoundAgent(7, a), string(v)); err != nil {
			t.Fatal(err)
		}
	}
	names := func(recs []schema.RoundAgent) []string {
		var out []string
		for _, r := range recs {
			out = append(out, r.Agent)
		}
		return out
	}

	t.Run("changes between pages", func(t *testing.T) {
		// a5's record is deleted after the first page: the read is at
		// the first page's revision, so a5 is still in it.
		kv := &pageHookKV{KV: c.KV, prefix: layout.RoundAgents(7)}
		kv.before = func(n int, _ int64) {
			if n == 2 {
				if _, err := c.Delete(ctx, layout.RoundAgent(7, "a5")); err != nil {
					t.Error(err)
				}
			}
		}
		recs, bad, err := ReadRoundAgents(ctx, kv, layout, 7, 2)
		if err != nil || len(bad) > 0 {
			t.Fatalf("read: %v %v", err, bad)
		}
		if got := names(recs); !slices.Equal(got, agents) {
			t.Errorf("agents %v, want %v (as at the first page)", got, agents)
		}
		if len(kv.revs) != 3 || kv.revs[0] != 0 || kv.revs[1] == 0 || kv.revs[2] != kv.revs[1] {
			t.Errorf("pages read at %v: want now, then twice the first page's revision", kv.revs)
		}
	})

	t.Run("compacted between pages", func(t *testing.T) {
		// a4's record goes and etcd compacts after the first page: the
		// read starts again, all of it at a revision without a4.
		kv := &pageHookKV{KV: c.KV, prefix: layout.RoundAgents(7)}
		kv.before = func(n int, _ int64) {
			if n == 2 {
				resp, err := c.Delete(ctx, layout.RoundAgent(7, "a4"))
				if err == nil {
					_, err = c.Compact(ctx, resp.Header.Revision)
				}
				if err != nil {
					t.Error(err)
				}
			}
		}
		recs, bad, err := ReadRoundAgents(ctx, kv, layout, 7, 2)
		if err != nil || len(bad) > 0 {
			t.Fatalf("read after a compaction between pages: %v %v", err, bad)
		}
		if got, want := names(recs), []string{"a1", "a2", "a3"}; !slices.Equal(got, want) {
			t.Errorf("agents %v, want %v (read again after the compaction)", got, want)
		}
		if len(kv.revs) != 4 || kv.revs[2] != 0 {
			t.Errorf("pages read at %v: want now, the compacted revision, then now again and on", kv.revs)
		}
	})
}
