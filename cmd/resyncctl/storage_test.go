package main

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	resync "github.com/resyncd/resync"
	"github.com/resyncd/resync/coordinator"
	"github.com/resyncd/resync/internal/embedetcd"
	"github.com/resyncd/resync/internal/etcderr"
	"github.com/resyncd/resync/internal/etcdspace"
	"github.com/resyncd/resync/internal/testing/etcdtest"
	"github.com/resyncd/resync/schema"
)

// `resyncctl watch` and `trigger --wait`, and a real agent's watcher,
// keep working while etcd's history is compacted every 20 ms (each of them
// re-lists or re-reads when its watch loses its history).
func TestWatchAndTriggerWaitSurviveFrequentCompaction(t *testing.T) {
	m := etcdtest.Start(t)
	ep := m.Endpoint()
	c := m.Client(t)
	p, err := resync.New(resync.Deps{Client: c, Log: quietLogger(t)}, resync.Config{Agent: "a1", TTL: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	for _, name := range []string{"p1", "p2"} {
		reg := p.Register(name)
		go func() {
			for {
				select {
				case ev := <-reg.StatusChan():
					ev.Ack()
				case <-p.Done(): // status channels are never closed
					return
				}
			}
		}()
	}
	startCoordinator(t, ep, "c1")
	waitRound(t, c, 1, schema.NotActive)

	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var compactions atomic.Int64
	wg.Add(1)
	go func() {
		defer wg.Done()
		tk := time.NewTicker(20 * time.Millisecond)
		defer tk.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tk.C:
			}
			resp, err := c.Get(ctx, "compact-probe")
			if err == nil {
				if _, err := c.Compact(ctx, resp.Header.Revision); err == nil {
					compactions.Add(1)
				}
			}
		}
	}()
	var text etcdtest.Buffer
	var errText etcdtest.Buffer
	done := make(chan int, 1)
	go func() { done <- run(ctx, []string{"watch", "--endpoints", ep}, &text, &errText) }()
	// At least 5 rounds, and more until 10 compactions ran during them (a
	// compaction needs a new revision: fast rounds leave few).
	rounds := 0
	for rounds < 5 || compactions.Load() < 10 {
		if rounds == 100 {
			t.Fatalf("only %d compactions in %d rounds", compactions.Load(), rounds)
		}
		rounds++
		code, out, _ := cli(t, ctxT(t, 30*time.Second), "trigger", "--endpoints", ep, "--wait", "--timeout", "20s", "--reason", fmt.Sprintf("compacted %d", rounds))
		if code != 0 || !strings.Contains(out, "clean") {
			t.Fatalf("trigger --wait %d under compaction: exit %d\n%s", rounds, code, out)
		}
	}
	etcdtest.WaitFor(t, 20*time.Second, fmt.Sprintf("watch lines of the %d rounds", rounds), func() bool {
		return strings.Count(text.String(), "finished clean") >= rounds
	})
	cancel()
	wg.Wait()
	if code := <-done; code != 0 {
		t.Errorf("watch exited %d: %s", code, errText.String())
	}
	t.Logf("%d compactions in %d rounds; watch:\n%s", compactions.Load(), rounds, text.String())
}

// trigger --wait finds the round that served its request when etcd
// compacted the request's write revision before the waiter first read the
// state there: the round already served it (and it was deleted unseen),
// and the request still pending for a coordinator that is not there yet;
// and when etcd compacts again the revision its watch re-listed at,
// before the waiter reads the state there.
func TestTriggerWaitAfterItsWriteWasCompacted(t *testing.T) {
	m := etcdtest.Start(t)
	ep := m.Endpoint()
	c := m.Client(t)
	startHandAgent(t, ep, "a1", []string{"p1"}, nil)
	co := startCoordinator(t, ep, "c1")
	waitRound(t, c, 1, schema.NotActive)
	var kv *compactArmedKV
	e, _, errb := testEnv(t, ep, func(inner clientv3.KV) clientv3.KV {
		kv = &compactArmedKV{KV: inner}
		return kv
	})
	ctx := ctxT(t, 30*time.Second)
	compactNow := func() {
		t.Helper()
		resp, err := c.Put(ctx, "compact-probe", "x")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.Compact(ctx, resp.Header.Revision); err != nil {
			t.Fatal(err)
		}
	}
	request := func(reason string) (schema.Request, triggerDoc, written) {
		t.Helper()
		o := triggerOpts{reason: reason}
		req, val, err := o.request()
		if err != nil {
			t.Fatal(err)
		}
		doc, wrote, err := e.submit(ctx, e.client, req, val)
		if err != nil {
			t.Fatal(err)
		}
		return req, doc, wrote
	}
	check := func(final *coordinator.RoundView, err error, doc triggerDoc, want uint64) {
		t.Helper()
		if err != nil {
			t.Fatalf("wait for the round of %s: %v", doc.Key, err)
		}
		if final.Revision != want || !final.Clean() {
			t.Fatalf("round %d (clean %v) reported for %s, want round %d clean", final.Revision, final.Clean(), doc.Key, want)
		}
	}

	// Served and deleted before the waiter reads.
	req, doc, wrote := request("served before the wait")
	waitRound(t, c, 2, schema.NotActive)
	compactNow()
	final, err := e.awaitRound(ctx, ctx, e.client, req, doc, wrote, 20*time.Second)
	check(final, err, doc, 2)

	// Still pending when the waiter has caught up: no coordinator runs
	// until it says so.
	co.Close()
	req, doc, wrote = request("pending at the wait")
	compactNow()
	type result struct {
		final *coordinator.RoundView
		err   error
	}
	res := make(chan result, 1)
	go func() {
		final, err := e.awaitRound(ctx, ctx, e.client, req, doc, wrote, 20*time.Second)
		res <- result{final, err}
	}()
	noLeader := func(times int) {
		t.Helper()
		etcdtest.WaitFor(t, 10*time.Second, "the waiter caught up and found no coordinator", func() bool {
			return strings.Count(errb.String(), "no coordinator leads right now") == times
		})
	}
	noLeader(1)
	co = startCoordinator(t, ep, "c2")
	r := <-res
	check(r.final, r.err, doc, 3)

	// Pending again, and etcd compacts once more just before the waiter
	// reads the state at the revision its watch re-listed at (after the
	// watch from the request's write found that history gone).
	co.Close()
	req, doc, wrote = request("compacted at the catch-up")
	compactNow()
	compactNow() // past the revision the watch starts from, too
	kv.arm(doc.Key)
	go func() {
		final, err := e.awaitRound(ctx, ctx, e.client, req, doc, wrote, 20*time.Second)
		res <- result{final, err}
	}()
	noLeader(2)
	startCoordinator(t, ep, "c3")
	r = <-res
	check(r.final, r.err, doc, 4)
	if n := kv.compactions(); n != 1 {
		t.Errorf("%d compactions before a read of the request at a revision, want 1", n)
	}
}

// compactArmedKV, once armed with a key, compacts etcd's whole history
// just before the next Get of that key at a given revision (once).
type compactArmedKV struct {
	clientv3.KV
	mu    sync.Mutex
	key   string
	fired int
}

func (k *compactArmedKV) arm(key string) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.key = key
}

func (k *compactArmedKV) compactions() int {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.fired
}

func (k *compactArmedKV) Get(ctx context.Context, key string, opts ...clientv3.OpOption) (*clientv3.GetResponse, error) {
	k.mu.Lock()
	fire := k.key != "" && key == k.key && clientv3.OpGet(key, opts...).Rev() != 0
	if fire {
		k.key = ""
		k.fired++
	}
	k.mu.Unlock()
	if fire {
		resp, err := k.KV.Put(ctx, "compact-probe", "x")
		if err != nil {
			return nil, err
		}
		if _, err := k.KV.Compact(ctx, resp.Header.Revision); err != nil {
			return nil, err
		}
	}
	return k.KV.Get(ctx, key, opts...)
}

// With etcd's quota full, resyncctl's error is one line saying what
// happened and what to do, and status shows the alarm.
func TestNoSpaceIsOneClearLine(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	s, err := embedetcd.Start(ctx, embedetcd.Config{Dir: t.TempDir(), ClientURL: "http://127.0.0.1:0", TickMs: etcdtest.TickMs, ElectionMs: etcdtest.ElectionMs,
		QuotaBackendBytes: 8 << 20})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	ep := s.Endpoint()
	c := etcdtest.Client(t, ep)
	value := strings.Repeat("f", 1<<20)
	for i := 0; ; i++ {
		if _, err := c.Put(ctx, "/filler", value); err != nil {
			if !etcderr.IsNoSpace(err) {
				t.Fatal(err)
			}
			break
		}
		if i > 32 {
			t.Fatal("no NOSPACE after 32 MiB in an 8 MiB quota")
		}
	}
	code, _, errOut := cli(t, ctxT(t, 20*time.Second), "trigger", "--endpoints", ep, "--reason", "full")
	if code != 1 || strings.Count(strings.TrimSpace(errOut), "\n") != 0 ||
		!strings.Contains(errOut, "database space exceeded") || !strings.Contains(errOut, "etcdctl alarm disarm") || !strings.Contains(errOut, "etcdctl defrag") {
		t.Fatalf("trigger on a full etcd: exit %d, stderr %q", code, errOut)
	}
	code, out, errOut := cli(t, ctxT(t, 20*time.Second), "status", "--endpoints", ep)
	if code != 0 || !strings.Contains(out, "etcd db") || !strings.Contains(out, "NOSPACE alarm raised") || !strings.Contains(errOut, "NOSPACE") {
		t.Fatalf("status on a full etcd: exit %d\n%s\n%s", code, out, errOut)
	}
	code, out, _ = cli(t, ctxT(t, 20*time.Second), "status", "-o", "json", "--endpoints", ep)
	var d statusDoc
	if code != 0 || json.Unmarshal([]byte(out), &d) != nil || d.Storage == nil || !d.Storage.NoSpace || d.Storage.Quota != 8<<20 {
		t.Fatalf("status -o json: %d %s", code, out)
	}
	// After compaction, defragmentation and disarm, trigger works again.
	if _, err := (&etcdspace.Monitor{Client: c, Maintain: true}).Check(ctx); err != nil {
		t.Fatal(err)
	}
	if code, _, errOut := cli(t, ctxT(t, 20*time.Second), "trigger", "--endpoints", ep, "--reason", "after"); code != 0 {
		t.Fatalf("trigger after recovery: %d %s", code, errOut)
	}
}
