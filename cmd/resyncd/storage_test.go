package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	resync "github.com/resyncd/resync"
	"github.com/resyncd/resync/cmd/resyncd/internal/metrics"
	"github.com/resyncd/resync/internal/etcderr"
	"github.com/resyncd/resync/internal/etcdspace"
	"github.com/resyncd/resync/internal/testing/etcdtest"
	"github.com/resyncd/resync/schema"
)

// startEmbedded runs resyncd on its embedded etcd (data in a temp dir) and
// returns its HTTP address, a client of its etcd and its stderr.
func startEmbedded(t *testing.T, args ...string) (string, *clientv3.Client, *etcdtest.Buffer) {
	t.Helper()
	ep := etcdtest.FreeAddr(t)
	httpAddr, stderr := startResyncd(t, append([]string{"--data-dir", t.TempDir(),
		"--listen-client-url", "http://" + ep, "--listen-peer-url", "http://" + etcdtest.FreeAddr(t)}, args...)...)
	return httpAddr, etcdtest.Client(t, ep), stderr
}

// setStorageTiming shortens the storage monitor's timing for one test.
func setStorageTiming(t *testing.T, check, defragEvery time.Duration, maintain bool) {
	oc, od, om := storageCheckInterval, storageDefragMinInterval, storageMaintain
	storageCheckInterval, storageDefragMinInterval, storageMaintain = check, defragEvery, maintain
	t.Cleanup(func() { storageCheckInterval, storageDefragMinInterval, storageMaintain = oc, od, om })
}

// startAgents starts n real agents of plugins plugins each that ack every
// round at once. Names are padded to pad characters, to make volume.
func startAgents(t *testing.T, c *clientv3.Client, n, plugins, pad int, log logrus.FieldLogger) []*resync.Plugin {
	t.Helper()
	var out []*resync.Plugin
	for a := range n {
		p, err := resync.New(resync.Deps{Client: c, Log: log}, resync.Config{Agent: padName(fmt.Sprintf("agent-%02d-", a), pad), TTL: 10 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { p.Close() })
		for k := range plugins {
			reg, err := p.RegisterE(padName(fmt.Sprintf("plugin-%02d-", k), pad))
			if err != nil {
				t.Fatal(err)
			}
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
		out = append(out, p)
	}
	layout := schema.MustLayout(schema.DefaultPrefix)
	etcdtest.WaitFor(t, 30*time.Second, "registrations", func() bool {
		resp, err := c.Get(context.Background(), layout.Registrations(), clientv3.WithPrefix(), clientv3.WithCountOnly())
		return err == nil && resp.Count == int64(n*plugins)
	})
	return out
}

func padName(s string, n int) string {
	if len(s) >= n {
		return s
	}
	return s + strings.Repeat("x", n-len(s))
}

// request writes a manual request for all agents.
func request(t *testing.T, c *clientv3.Client, reason string) error {
	t.Helper()
	now := time.Now().UTC()
	b, err := schema.Encode(schema.Request{Reason: reason, Cause: schema.CauseManual, RequestedBy: "storage-test", RequestedAt: now})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err = c.Put(ctx, schema.MustLayout(schema.DefaultPrefix).OperatorRequest(schema.NewRequestID(now)), string(b))
	return err
}

// waitFinished waits for a finished round after round last and returns it.
func waitFinished(t *testing.T, c *clientv3.Client, last uint64, within time.Duration) schema.Round {
	t.Helper()
	layout := schema.MustLayout(schema.DefaultPrefix)
	var round schema.Round
	etcdtest.WaitFor(t, within, fmt.Sprintf("a round after %d to finish", last), func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		rev, ok, err := etcdtest.ReadRevision(ctx, c, layout)
		if err != nil || !ok || rev.Revision <= last || rev.State != schema.NotActive {
			return false
		}
		r, ok, err := etcdtest.ReadRound(ctx, c, layout, rev.Revision)
		if err != nil || !ok || r.State != schema.NotActive {
			return false
		}
		round = r
		return true
	})
	return round
}

// waitReason waits for the finished round after last whose reason names
// reason; every round on the way must be clean.
func waitReason(t *testing.T, c *clientv3.Client, last uint64, reason string) schema.Round {
	t.Helper()
	for {
		r := waitFinished(t, c, last, time.Minute)
		if !r.Clean() {
			t.Fatalf("round %d not clean: %+v", r.Revision, r.Counts)
		}
		if strings.Contains(r.Reason, reason) {
			return r
		}
		last = r.Revision
	}
}

func statusStorage(t *testing.T, httpAddr string) *etcdspace.Usage {
	t.Helper()
	_, body := get(t, "http://"+httpAddr+"/status")
	var doc statusDoc
	if err := json.Unmarshal([]byte(body), &doc); err != nil {
		return nil
	}
	return doc.Storage
}

// Rounds against the embedded etcd with an 8 MiB quota and compaction every
// second write more than the quota in keys and values (a lower bound of
// what the backend would hold without compaction: etcd stores every
// revision's key and value plus its own overhead), and every round stays
// clean: no NOSPACE, agents' watchers survive the frequent compaction. (8
// MiB rather than more keeps the test within a minute under -race on a
// loaded 2-core machine; the volume per second is what limits it.)
func TestCompactionKeepsRoundsRunningPastTheQuota(t *testing.T) {
	const quota = 8 << 20
	const maxRate = 512 << 10 // bytes of live keys and values per second
	setStorageTiming(t, 250*time.Millisecond, 2*time.Second, true)
	httpAddr, c, stderr := startEmbedded(t, "--quota-backend-bytes", fmt.Sprint(quota),
		"--auto-compaction-mode", "periodic", "--auto-compaction-retention", "1s", "--coalesce-window", "1ms", "--history", "5")
	defer http.DefaultClient.CloseIdleConnections()
	agentLog := &etcdtest.Buffer{}
	log := logrus.New()
	log.SetOutput(agentLog)
	log.SetLevel(logrus.WarnLevel)
	const agents, plugins = 30, 10
	startAgents(t, c, agents, plugins, 120, log)

	prefix := schema.MustLayout(schema.DefaultPrefix).Prefix()
	reason := strings.Repeat("volume ", schema.MaxReasonLen/7)
	var written, lastRev int64
	var last uint64
	rounds := 0
	start := time.Now()
	for written < quota {
		if time.Since(start) > 3*time.Minute {
			t.Fatalf("only %d bytes written in %d rounds after %v", written, rounds, time.Since(start))
		}
		if err := request(t, c, reason); err != nil {
			t.Fatalf("round %d: request: %v", rounds+1, err)
		}
		r := waitFinished(t, c, last, time.Minute)
		last = r.Revision
		rounds++
		if r.Counts.Participants == 0 && r.Clean() {
			continue // the first leader's initial round, before any agent registered
		}
		// Every participant acks (an agent whose lease expired under load
		// rejoins and is simply not a participant of that round).
		if !r.Clean() || r.Counts.Acked != r.Counts.Participants {
			t.Fatalf("round %d not clean: %+v\nagents: %s", r.Revision, r.Counts, agentLog.String())
		}
		// Bytes written since the last round and still live: a lower
		// bound of what this round added to the uncompacted history.
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		resp, err := c.Get(ctx, prefix, clientv3.WithPrefix())
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		for _, kv := range resp.Kvs {
			if kv.ModRevision > lastRev {
				written += int64(len(kv.Key) + len(kv.Value))
			}
		}
		lastRev = resp.Header.Revision
		// Pace the load to a steady volume: the claim is that compaction
		// keeps up with a sustained write rate past the quota's volume,
		// not with whatever burst the machine allows (rounds got fast
		// enough to write 8 MiB in 6 s, faster than a 1 s compaction and
		// a 2 s defragmentation free it).
		if ahead := time.Duration(float64(written)/maxRate*float64(time.Second)) - time.Since(start); ahead > 0 {
			pace := time.NewTimer(ahead)
			<-pace.C
		}
	}
	t.Logf("%d rounds of %d participants wrote at least %s in %v", rounds, agents*plugins, etcdspace.Bytes(written), time.Since(start).Round(time.Millisecond))

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	u, err := etcdspace.Read(ctx, c)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("etcd: %s, %s in use, quota %s", etcdspace.Bytes(u.Size), etcdspace.Bytes(u.InUse), etcdspace.Bytes(u.Quota))
	if u.NoSpace || u.Quota != quota || u.Size >= quota {
		t.Fatalf("usage %+v: want no alarm, quota %d, size below it", u, quota)
	}
	if _, err := c.Get(ctx, prefix, clientv3.WithRev(2)); !errors.Is(err, rpctypes.ErrCompacted) {
		t.Fatalf("revision 2 still readable (%v): the embedded etcd did not compact", err)
	}
	for _, out := range []string{stderr.String(), agentLog.String()} {
		if strings.Contains(out, "database space exceeded") || strings.Contains(out, "NOSPACE alarm") {
			t.Fatalf("NOSPACE seen:\n%s", out)
		}
	}
	// The metrics and /status carry the usage.
	etcdtest.WaitFor(t, 10*time.Second, "db gauges", func() bool {
		return metricValue(t, httpAddr, metrics.EtcdDBQuota) == quota && metricValue(t, httpAddr, metrics.EtcdDBSize) > 0 &&
			metricValue(t, httpAddr, metrics.EtcdDBSizeInUse) > 0
	})
	// The warning follows the file's size at that moment (at 80% of the
	// quota and up): fast rounds may leave the file there between two
	// defragmentations.
	if s := statusStorage(t, httpAddr); s == nil || s.Quota != quota || (s.Warning != "") != (s.Fraction() >= etcdspace.WarnFraction) {
		t.Fatalf("/status storage %+v: want the quota %d, and a warning exactly when the size is at 80%% of it", s, quota)
	}
}

// metricValue reads one unlabelled series from /metrics (-1 if absent).
func metricValue(t *testing.T, httpAddr, name string) float64 {
	t.Helper()
	_, body := get(t, "http://"+httpAddr+"/metrics")
	for _, line := range strings.Split(body, "\n") {
		if rest, ok := strings.CutPrefix(line, name+" "); ok {
			var v float64
			if _, err := fmt.Sscan(rest, &v); err == nil {
				return v
			}
		}
	}
	return -1
}

// Filling the quota on purpose: the coordinator, agents and /status say
// what happened and what to do; after compaction, defragmentation and
// disarm (the storage monitor's recovery, which resyncd runs by itself for
// its embedded etcd) the pending round completes without any restart.
func TestNoSpaceIsExplainedAndRecovered(t *testing.T) {
	const quota = 16 << 20
	setStorageTiming(t, 200*time.Millisecond, time.Hour, false)
	httpAddr, c, stderr := startEmbedded(t, "--quota-backend-bytes", fmt.Sprint(quota),
		"--auto-compaction-retention", "0", "--coalesce-window", "8s")
	defer http.DefaultClient.CloseIdleConnections()
	agentLog := &etcdtest.Buffer{}
	log := logrus.New()
	log.SetOutput(agentLog)
	log.SetLevel(logrus.WarnLevel)
	ags := startAgents(t, c, 2, 2, 0, log)
	if err := request(t, c, "before"); err != nil {
		t.Fatal(err)
	}
	before := waitReason(t, c, 0, "before")

	// History that fills the quota, with a request written just before
	// its last puts: the coordinator (coalescing for 8 s) starts the
	// round only once etcd refuses writes. Filling all 16 MiB after the
	// request took over 5 s on a loaded machine, and the round then
	// started and completed before NOSPACE; so most of it goes first,
	// to half the quota (etcd takes writes until the quota). 4 MiB short
	// of it was too close: under load a pre-fill put already met NOSPACE
	// (the db file grows in steps that Status reports late).
	value := strings.Repeat("f", 1<<20)
	fill := func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, err := c.Put(ctx, "/filler", value)
		return err
	}
	for i := 0; i < 64; i++ {
		st, err := c.Status(context.Background(), c.Endpoints()[0])
		if err != nil {
			t.Fatal(err)
		}
		if st.DbSize >= quota/2 {
			break
		}
		if err := fill(); err != nil {
			t.Fatalf("filling up to half the quota: %v", err)
		}
	}
	if err := request(t, c, "during"); err != nil {
		t.Fatal(err)
	}
	var fillErr error
	for i := 0; i < 64 && fillErr == nil; i++ {
		fillErr = fill()
	}
	if !etcderr.IsNoSpace(fillErr) {
		t.Fatalf("filling 64 MiB of history into a 16 MiB quota: %v, want NOSPACE", fillErr)
	}
	if got := etcderr.Explain(fillErr).Error(); !strings.Contains(got, "etcdctl alarm disarm") || !strings.Contains(got, "database space exceeded") {
		t.Fatalf("explained: %q", got)
	}

	// The coordinator's round start fails, and its log says why and what to do.
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("resyncd:\n%s", stderr.String())
		}
	})
	etcdtest.WaitFor(t, 30*time.Second, "the coordinator's NOSPACE explanation", func() bool {
		for _, l := range strings.Split(stderr.String(), "\n") {
			if strings.Contains(l, "coordinator: fenced write failed") && strings.Contains(l, "etcdctl alarm disarm") {
				return true
			}
		}
		return false
	})
	// Agents' writes: an error report (request) and a new registration.
	ags[0].ReportError(padName("plugin-00-", 0), errors.New("boom"))
	late, err := ags[1].RegisterE("late")
	if err != nil {
		t.Logf("register late: %v", err)
	}
	go func() {
		for {
			select {
			case ev := <-late.StatusChan():
				ev.Ack()
			case <-ags[1].Done(): // status channels are never closed
				return
			}
		}
	}()
	for _, what := range []string{"watcher: writing acks or requests failed", "registry: writing registrations failed"} {
		etcdtest.WaitFor(t, 30*time.Second, "agent log: "+what, func() bool {
			for _, l := range strings.Split(agentLog.String(), "\n") {
				if strings.Contains(l, what) && strings.Contains(l, "compact old revisions") && strings.Contains(l, "etcdctl alarm disarm") {
					return true
				}
			}
			return false
		})
	}
	// /status and the metrics.
	etcdtest.WaitFor(t, 10*time.Second, "/status NOSPACE warning", func() bool {
		s := statusStorage(t, httpAddr)
		return s != nil && s.NoSpace && strings.Contains(s.Warning, "NOSPACE alarm raised") && s.Quota == quota
	})
	if v := metricValue(t, httpAddr, metrics.EtcdDBSize); v < 0.8*quota {
		t.Fatalf("%s = %v, want near the %d quota", metrics.EtcdDBSize, v, quota)
	}

	// Recovery: compaction, defragmentation, disarm.
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	mon := &etcdspace.Monitor{Client: c, Maintain: true}
	if _, err := mon.Check(ctx); err != nil {
		t.Fatal(err)
	}
	u, err := etcdspace.Read(ctx, c)
	if err != nil {
		t.Fatal(err)
	}
	if _, rec := mon.Counts(); rec != 1 || u.NoSpace || u.Size > quota/4 {
		t.Fatalf("after recovery (%d): %+v", rec, u)
	}
	// The pending round completes, clean, with no restart of anything.
	r := waitFinished(t, c, before.Revision, time.Minute)
	if !r.Clean() || r.Counts.Acked != r.Counts.Participants || r.Counts.Participants < 4 {
		t.Fatalf("round after recovery: %+v", r.Counts)
	}
	if err := request(t, c, "after"); err != nil {
		t.Fatal(err)
	}
	waitReason(t, c, r.Revision, "after")
	etcdtest.WaitFor(t, 10*time.Second, "/status without warning", func() bool {
		s := statusStorage(t, httpAddr)
		return s != nil && !s.NoSpace && s.Warning == ""
	})
}

// Bad compaction and quota flags (or env values) exit 2 with one line
// naming the flag and what to use.
func TestStorageFlags(t *testing.T) {
	ep := "--endpoints=" + etcdtest.FreeAddr(t)
	for _, tc := range []struct {
		name string
		args []string
		env  map[string]string
		want string
	}{
		{"mode", []string{"--auto-compaction-mode", "hourly"}, nil, "--auto-compaction-mode \"hourly\": use periodic or revision"},
		{"periodic retention", []string{"--auto-compaction-retention", "soon"}, nil, "use a duration like 1m or 1h"},
		{"negative retention", []string{"--auto-compaction-retention", "-5m"}, nil, "must not be negative"},
		{"revision retention", []string{"--auto-compaction-mode", "revision", "--auto-compaction-retention", "1m"}, nil, "use a count of revisions to keep"},
		{"zero quota", []string{"--quota-backend-bytes", "0"}, nil, "--quota-backend-bytes 0: use a byte count above 0"},
		{"huge quota", []string{"--quota-backend-bytes", "17179869184"}, nil, "at most 8589934592"},
		{"quota not a number", []string{"--quota-backend-bytes", "2GiB"}, nil, `invalid argument "2GiB" for "--quota-backend-bytes" flag`},
		{"interval on embedded", []string{"--compaction-interval", "5m"}, nil, "--compaction-interval applies to an external etcd"},
		{"embedded flag with endpoints", []string{ep, "--auto-compaction-retention", "1h"}, nil, "--auto-compaction-retention configures the embedded etcd"},
		{"negative interval", []string{ep, "--compaction-interval", "-1m"}, nil, "must not be negative"},
		{"tiny interval", []string{ep, "--compaction-interval", "10ms"}, nil, "use at least 1s"},
		{"env mode", nil, map[string]string{"RESYNC_AUTO_COMPACTION_MODE": "daily"}, "--auto-compaction-mode \"daily\""},
		{"env quota", nil, map[string]string{"RESYNC_QUOTA_BACKEND_BYTES": "lots"}, "RESYNC_QUOTA_BACKEND_BYTES"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			var stderr etcdtest.Buffer
			args := append([]string{"--data-dir", t.TempDir(), "--http-addr", "127.0.0.1:0"}, tc.args...)
			code := run(context.Background(), args, io.Discard, &stderr)
			out := stderr.String()
			if code != 2 || !strings.Contains(out, tc.want) {
				t.Fatalf("exit %d %q, want 2 and %q", code, out, tc.want)
			}
			if lines := strings.Count(strings.TrimSpace(out), "\n") + 1; lines != 1 {
				t.Errorf("%d lines, want 1: %q", lines, out)
			}
		})
	}
}

// Against an external etcd, resyncd compacts only with
// --compaction-interval (the leader, to the revision of one interval
// earlier); without it the history stays.
func TestExternalCompactionOnlyWhenAsked(t *testing.T) {
	on, off := etcdtest.Start(t), etcdtest.Start(t)
	con, coff := on.Client(t), off.Client(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	first := func(c *clientv3.Client) int64 {
		resp, err := c.Put(ctx, "/x", "1")
		if err != nil {
			t.Fatal(err)
		}
		return resp.Header.Revision
	}
	revOn, revOff := first(con), first(coff)
	_, errOn := startResyncd(t, "--endpoints", on.Endpoint(), "--compaction-interval", "1s")
	_, errOff := startResyncd(t, "--endpoints", off.Endpoint())
	// The compaction is visible in etcd before resyncd logs it: wait for
	// both.
	etcdtest.WaitFor(t, 30*time.Second, "the leader's compaction, and its log line", func() bool {
		con.Put(ctx, "/x", "2")
		coff.Put(ctx, "/x", "2")
		_, err := con.Get(ctx, "/x", clientv3.WithRev(revOn))
		return errors.Is(err, rpctypes.ErrCompacted) && strings.Contains(errOn.String(), "compacted etcd's history")
	})
	if _, err := coff.Get(ctx, "/x", clientv3.WithRev(revOff)); err != nil {
		t.Fatalf("resyncd without --compaction-interval compacted: %v", err)
	}
	etcdtest.WaitFor(t, 10*time.Second, "resyncd without --compaction-interval to log that its compaction is off", func() bool {
		return strings.Contains(errOff.String(), "compaction by resyncd is off")
	})
}

// When the live data alone fills the embedded etcd's quota, resyncd does
// not loop on compact, defragment and disarm: /status carries
// space_exhausted with a warning naming the fix, and
// resync_etcd_space_exhausted is 1 (ResyncEtcdSpaceExhausted fires on it).
// resyncd bounds automatic defragmentation by the shortest session TTL in
// use: here its --session-ttl of 2 s, a 500 ms pause.
func TestLiveDataOverQuotaIsReportedNotLooped(t *testing.T) {
	const quota = 8 << 20
	setStorageTiming(t, 100*time.Millisecond, time.Hour, true)
	httpAddr, c, stderr := startEmbedded(t, "--quota-backend-bytes", fmt.Sprint(quota), "--session-ttl", "2s",
		"--auto-compaction-retention", "0")
	defer http.DefaultClient.CloseIdleConnections()
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("resyncd:\n%s", stderr.String())
		}
	})
	// Logged as the storage monitor starts, which may come after resyncd
	// answers (two make test runs side by side saw it not yet written).
	etcdtest.WaitFor(t, 10*time.Second, "the defragmentation bound to follow --session-ttl 2s (defrag_max_pause=500ms in the log)", func() bool {
		return strings.Contains(stderr.String(), "defrag_max_pause=500ms")
	})
	if v := metricValue(t, httpAddr, metrics.EtcdSpaceExhausted); v != 0 {
		t.Fatalf("%s = %v before any NOSPACE, want 0", metrics.EtcdSpaceExhausted, v)
	}
	// Live data written as long as etcd takes it: the first NOSPACE may
	// still leave room after compaction (one recovery), the growth then
	// brings the alarm back.
	value := strings.Repeat("l", 256<<10)
	n, noSpace := 0, 0
	put := func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if _, err := c.Put(ctx, fmt.Sprintf("/live/%04d", n), value); etcderr.IsNoSpace(err) {
			noSpace++
		} else if err != nil {
			t.Fatalf("put %d: %v", n, err)
		}
		n++
	}
	etcdtest.WaitFor(t, time.Minute, "/status space_exhausted and the metric", func() bool {
		put()
		s := statusStorage(t, httpAddr)
		return s != nil && s.NoSpace && s.Exhausted && strings.Contains(s.Warning, "live data") &&
			strings.Contains(s.Warning, "--quota-backend-bytes") && metricValue(t, httpAddr, metrics.EtcdSpaceExhausted) == 1
	})
	if noSpace == 0 {
		t.Fatalf("%d puts and no NOSPACE", n)
	}
	// Standing, not looping: an observation window of about ten checks
	// (100 ms apart here), writes still refused, starts no recovery (the
	// etcdspace tests count the checks exactly).
	checks := strings.Count(stderr.String(), "NOSPACE alarm on the embedded etcd")
	window := time.Now().Add(10 * 100 * time.Millisecond)
	etcdtest.WaitFor(t, 30*time.Second, "ten checks while exhausted", func() bool {
		put()
		return time.Now().After(window)
	})
	if s := statusStorage(t, httpAddr); s == nil || !s.Exhausted {
		t.Fatalf("the exhausted state ended by itself: %+v", s)
	}
	if now := strings.Count(stderr.String(), "NOSPACE alarm on the embedded etcd"); now != checks {
		t.Fatalf("%d more recoveries started while exhausted", now-checks)
	}
	if d := strings.Count(stderr.String(), "NOSPACE alarm disarmed"); d > 1 {
		t.Fatalf("resyncd disarmed the alarm %d times with the live data filling the quota: a loop", d)
	}
}
