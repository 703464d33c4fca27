package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The shard Txns of a wake never wake more than 512 watchers, and cover
// every shard once.
func TestShardWakesAreBounded(t *testing.T) {
	for _, w := range []int{1, 100, 1000, 5000, 10000, 40000} {
		groups := shardWakes(w)
		per := (w + shapeShardCount - 1) / shapeShardCount
		seen := map[string]bool{}
		for _, g := range groups {
			if len(g) > 1 && len(g)*per > shapeMaxWake {
				t.Errorf("%d watchers: a Txn of %d shards wakes up to %d watchers, over %d", w, len(g), len(g)*per, shapeMaxWake)
			}
			for _, k := range g {
				if seen[k] {
					t.Errorf("%d watchers: shard %s written twice in one wake", w, k)
				}
				seen[k] = true
			}
		}
		if len(seen) != shapeShardCount {
			t.Errorf("%d watchers: %d shards written, want %d", w, len(seen), shapeShardCount)
		}
	}
}

// -only shapes measures each shape against a real etcd: every wake
// reaches every watcher, the shards' wake is bounded Txns, and the gRPC
// proxy holds the watchers' identical watches as fewer etcd watchers.
func TestSmokeShapes(t *testing.T) {
	out := filepath.Join(t.TempDir(), "shapes.json")
	var stdout bytes.Buffer
	if code := run([]string{"-only", "shapes", "-shape-watchers", "120", "-shape-wakes", "2", "-out", out}, &stdout); code != 0 {
		t.Fatalf("resync-bench -only shapes exited %d", code)
	}
	if !strings.Contains(stdout.String(), "Wake-up shapes") {
		t.Errorf("no wake-up shapes table:\n%s", stdout.String())
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	var res Results
	if err := json.Unmarshal(b, &res); err != nil {
		t.Fatal(err)
	}
	if len(res.Shapes) != 3 {
		t.Fatalf("%d shape rows, want 3: %+v", len(res.Shapes), res.Shapes)
	}
	for _, r := range res.Shapes {
		if r.Watchers != 120 || r.Write.N != 2 || r.Delivered.N != 2 || r.Delivered.Min < r.Write.Min || r.TenantIdle.N == 0 {
			t.Errorf("%s: watchers %d, writes %d, deliveries %d (min %.2f ms, write min %.2f ms), idle tenant samples %d: want 120, 2, 2, delivery after the write, > 0",
				r.Shape, r.Watchers, r.Write.N, r.Delivered.N, r.Delivered.Min, r.Write.Min, r.TenantIdle.N)
		}
		switch r.Shape {
		case shapeOneKey, shapeShards:
			if r.EtcdWatchers != 120 || r.WritesPerWake != 1 {
				t.Errorf("%s: etcd held %d watchers, %d writes a wake: want 120, 1", r.Shape, r.EtcdWatchers, r.WritesPerWake)
			}
		case shapeProxy:
			if r.EtcdWatchers < 1 || r.EtcdWatchers >= 120 || r.WritesPerWake != 1 {
				t.Errorf("%s: etcd held %d watchers, %d writes a wake: want the proxy's coalesced few, 1", r.Shape, r.EtcdWatchers, r.WritesPerWake)
			}
		}
	}
}
