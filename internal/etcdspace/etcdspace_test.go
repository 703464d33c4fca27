package etcdspace_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/goleak"

	"github.com/resyncd/resync/internal/embedetcd"
	"github.com/resyncd/resync/internal/etcderr"
	"github.com/resyncd/resync/internal/etcdspace"
	"github.com/resyncd/resync/internal/testing/etcdtest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m, etcdtest.LeakOptions()...) }

func TestValidateFlags(t *testing.T) {
	for _, ok := range [][2]string{{"periodic", "1m"}, {"periodic", "1"}, {"periodic", "0"}, {"periodic", "72h"}, {"revision", "10000"}, {"revision", "0"}} {
		if err := etcdspace.ValidateAutoCompaction(ok[0], ok[1]); err != nil {
			t.Errorf("%v: %v", ok, err)
		}
	}
	for _, bad := range [][2]string{{"hourly", "1m"}, {"periodic", "x"}, {"periodic", "-1"}, {"periodic", "500ms"}, {"revision", "1m"}, {"revision", "-3"}} {
		if err := etcdspace.ValidateAutoCompaction(bad[0], bad[1]); err == nil {
			t.Errorf("%v accepted", bad)
		}
	}
	if etcdspace.ValidateQuota(etcdspace.DefaultQuotaBackendBytes) != nil || etcdspace.ValidateQuota(0) == nil ||
		etcdspace.ValidateQuota(-1) == nil || etcdspace.ValidateQuota(etcdspace.MaxQuotaBackendBytes+1) == nil {
		t.Error("ValidateQuota")
	}
}

// startMember starts an embedded member with a quota and compaction.
func startMember(t *testing.T, quota int64, mode, retention string) *clientv3.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := embedetcd.Start(ctx, embedetcd.Config{Dir: t.TempDir(), ClientURL: "http://127.0.0.1:0", TickMs: etcdtest.TickMs, ElectionMs: etcdtest.ElectionMs,
		QuotaBackendBytes: quota, AutoCompactionMode: mode, AutoCompactionRetention: retention})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return etcdtest.Client(t, s.Endpoint())
}

// The Compactor compacts only while leading, to the revision it saw one
// interval earlier: younger history stays readable.
func TestCompactorCompactsOneIntervalBehindWhileLeading(t *testing.T) {
	c := etcdtest.Start(t).Client(t)
	var leading atomic.Bool
	compacted := make(chan int64, 16)
	k := &etcdspace.Compactor{Client: c, Interval: 200 * time.Millisecond, Key: "/k", Leading: leading.Load,
		Compacted: func(rev int64) { compacted <- rev }}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); k.Run(ctx) }()
	stop := func() { cancel(); <-done }
	defer stop()

	put := func() int64 {
		resp, err := c.Put(context.Background(), "/k", "v")
		if err != nil {
			t.Fatal(err)
		}
		return resp.Header.Revision
	}
	// Not leading: writes across several intervals, no compaction.
	first := put()
	deadline := time.Now().Add(time.Second)
	for time.Now().Before(deadline) {
		put()
		select {
		case rev := <-compacted:
			t.Fatalf("compacted to %d while not leading", rev)
		case <-time.After(50 * time.Millisecond):
		}
	}
	if _, err := c.Get(context.Background(), "/k", clientv3.WithRev(first)); err != nil {
		t.Fatalf("history lost while not leading: %v", err)
	}
	leading.Store(true)
	var rev int64
	for rev == 0 {
		put()
		select {
		case rev = <-compacted:
		case <-time.After(50 * time.Millisecond):
		}
	}
	stop() // no further compaction while checking
	now := put()
	if _, err := c.Get(context.Background(), "/k", clientv3.WithRev(rev-1)); !errors.Is(err, rpctypes.ErrCompacted) {
		t.Fatalf("revision %d below the compaction at %d still readable: %v", rev-1, rev, err)
	}
	if rev >= now {
		t.Fatalf("compacted to %d, not behind the current revision %d", rev, now)
	}
	if _, err := c.Get(context.Background(), "/k", clientv3.WithRev(rev)); err != nil {
		t.Fatalf("revision %d (one interval old) not readable: %v", rev, err)
	}
}

// Monitor.Run on a member whose quota fills: it raises a warning, then
// compacts, defragments and disarms by itself; writes succeed again.
func TestMonitorRecoversFromNoSpaceByItself(t *testing.T) {
	const quota = 8 << 20
	c := startMember(t, quota, "periodic", "0")
	value := strings.Repeat("v", 1<<20)
	var err error
	for i := 0; i < 32 && err == nil; i++ {
		_, err = c.Put(context.Background(), "/big", value)
	}
	if !etcderr.IsNoSpace(err) {
		t.Fatalf("filling: %v", err)
	}
	var seen []etcdspace.Usage
	published := make(chan etcdspace.Usage, 100)
	mon := &etcdspace.Monitor{Client: c, Maintain: true, Interval: 100 * time.Millisecond,
		Published: func(u etcdspace.Usage) {
			select {
			case published <- u:
			default:
			}
		}}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); mon.Run(ctx) }()
	defer func() { cancel(); <-done }()
	etcdtest.WaitFor(t, 30*time.Second, "recovery", func() bool {
		_, rec := mon.Counts()
		return rec >= 1
	})
	for len(published) > 0 {
		seen = append(seen, <-published)
	}
	if len(seen) == 0 || !seen[0].NoSpace || !strings.Contains(seen[0].Warning, "NOSPACE") {
		t.Fatalf("first usage published: %+v", seen)
	}
	if _, err := c.Put(context.Background(), "/after", "ok"); err != nil {
		t.Fatalf("write after recovery: %v", err)
	}
	u, err := etcdspace.Read(context.Background(), c)
	if err != nil || u.NoSpace || u.Size > quota/2 || u.Warning != "" {
		t.Fatalf("after recovery: %+v %v", u, err)
	}
}

// Defragmentation follows its rule: a file above DefragAbove of the quota
// with at least half free pages is defragmented, once per interval.
func TestMonitorDefragmentsByPolicy(t *testing.T) {
	const quota = 64 << 20
	c := startMember(t, quota, "periodic", "0")
	value := strings.Repeat("v", 256<<10)
	for i := range 40 {
		if _, err := c.Put(context.Background(), fmt.Sprintf("/k%d", i%4), value); err != nil {
			t.Fatal(err)
		}
	}
	mon := &etcdspace.Monitor{Client: c, Maintain: true, DefragAbove: 0.05, DefragMinInterval: time.Hour}
	// Before compaction most of the file is live history: no defrag.
	if _, err := mon.Check(context.Background()); err != nil {
		t.Fatal(err)
	}
	if d, _ := mon.Counts(); d != 0 {
		t.Fatalf("defragmented a file without free pages")
	}
	etcdtest.Compact(t, c)
	before, _ := etcdspace.Read(context.Background(), c)
	if _, err := mon.Check(context.Background()); err != nil {
		t.Fatal(err)
	}
	after, _ := etcdspace.Read(context.Background(), c)
	if d, _ := mon.Counts(); d != 1 || after.Size >= before.Size/2 {
		t.Fatalf("defrags %d; size %d -> %d", d, before.Size, after.Size)
	}
	// Rate limit: more free pages, but within the interval: no second defrag.
	for i := range 40 {
		if _, err := c.Put(context.Background(), fmt.Sprintf("/k%d", i%4), value); err != nil {
			t.Fatal(err)
		}
	}
	etcdtest.Compact(t, c)
	if _, err := mon.Check(context.Background()); err != nil {
		t.Fatal(err)
	}
	if d, _ := mon.Counts(); d != 1 {
		t.Fatalf("%d defragmentations within the rate limit", d)
	}
	t.Logf("defragmented %s -> %s", etcdspace.Bytes(before.Size), etcdspace.Bytes(after.Size))
}

// Past 80% of the quota the usage carries a warning, and the Monitor logs
// it once (until it changes or 5 minutes pass).
func TestWarningPastEightyPercent(t *testing.T) {
	// Small values against a roomy quota: bbolt's file grows in steps
	// (a 512 KiB value needs contiguous overflow pages), and with 8 MiB
	// and 512 KiB puts one step once jumped from 75% past the quota.
	const quota = 16 << 20
	c := startMember(t, quota, "periodic", "0")
	value := strings.Repeat("w", 128<<10)
	var logs etcdtest.Buffer
	log := logrus.New()
	log.SetOutput(&logs)
	mon := &etcdspace.Monitor{Client: c, Log: log}
	u, err := mon.Check(context.Background())
	if err != nil || u.Warning != "" || u.Quota != quota {
		t.Fatalf("empty member: %+v %v", u, err)
	}
	for i := 0; u.Fraction() < etcdspace.WarnFraction; i++ {
		if _, err := c.Put(context.Background(), fmt.Sprintf("/w%d", i), value); err != nil {
			t.Fatalf("put %d: %v (usage %+v)", i, err, u)
		}
		if u, err = mon.Check(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	if u.NoSpace || !strings.Contains(u.Warning, "% of its quota") || !strings.Contains(u.Warning, "compact and defragment") {
		t.Fatalf("at %.0f%%: %+v", 100*u.Fraction(), u)
	}
	mon.Check(context.Background())
	if n := strings.Count(logs.String(), "of its quota"); n != 1 {
		t.Fatalf("%d warning lines, want 1:\n%s", n, logs.String())
	}
	if !strings.Contains(logs.String(), "level=warning") {
		t.Fatalf("not a warning: %s", logs.String())
	}
}

// Past DefragMaxInUse the Monitor advises instead of blocking the member.
func TestMonitorAdvisesInsteadOfALongDefrag(t *testing.T) {
	c := startMember(t, 64<<20, "periodic", "0")
	value := strings.Repeat("v", 256<<10)
	for i := range 40 {
		if _, err := c.Put(context.Background(), fmt.Sprintf("/k%d", i%8), value); err != nil {
			t.Fatal(err)
		}
	}
	etcdtest.Compact(t, c)
	// The pages the compaction freed show in the member's status once its
	// backend commits (every 100 ms, later under load: under a second
	// make test beside it the check once ran before, and found nothing
	// to advise on). The advice needs half the file free.
	etcdtest.WaitFor(t, 10*time.Second, "half the backend free after the compaction", func() bool {
		u, err := etcdspace.Read(context.Background(), c)
		return err == nil && 2*(u.Size-u.InUse) >= u.Size
	})
	var logs etcdtest.Buffer
	log := logrus.New()
	log.SetOutput(&logs)
	mon := &etcdspace.Monitor{Client: c, Maintain: true, DefragAbove: 0.05, DefragMaxInUse: 1 << 20, Log: log}
	before, err := mon.Check(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if d, _ := mon.Counts(); d != 0 || before.InUse <= 1<<20 {
		t.Fatalf("defragmented %d times with %d bytes in use", d, before.InUse)
	}
	if !strings.Contains(logs.String(), "defragment at a quiet time") {
		t.Fatalf("no advice logged: %s", logs.String())
	}
}

// A member that does not answer (blackholed) costs Read one
// EndpointTimeout, not the caller's whole budget: the other members'
// usage is still reported. (resyncctl status with one etcd member stopped
// once spent its 10 s on that member and reported no usage.)
func TestReadSkipsAMemberThatDoesNotAnswer(t *testing.T) {
	m := etcdtest.Start(t)
	p := etcdtest.NewProxy(t, m.Endpoint())
	c := etcdtest.Client(t, m.Endpoint(), p.Endpoint)
	if _, err := c.Put(context.Background(), "/k", "v"); err != nil {
		t.Fatal(err)
	}
	p.Blackhole()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	u, err := etcdspace.Read(ctx, c)
	if err != nil {
		t.Fatalf("Read with one of two endpoints blackholed: %v", err)
	}
	if u.Endpoint != m.Endpoint() || u.Size <= 0 {
		t.Fatalf("usage %+v, want the answering member %s", u, m.Endpoint())
	}
	if ctx.Err() != nil {
		t.Fatal("Read used the caller's whole budget")
	}
}

// putUntilNoSpace writes value under keys from next() until etcd answers
// NOSPACE (at most max puts); any other error fails the test. etcd checks
// the quota against the file as of its last backend commit (every 100 ms),
// so fast puts overshoot the quota before the first NOSPACE.
func putUntilNoSpace(t *testing.T, c *clientv3.Client, max int, next func(i int) string, value string) {
	t.Helper()
	for i := range max {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		_, err := c.Put(ctx, next(i), value)
		cancel()
		if etcderr.IsNoSpace(err) {
			return
		}
		if err != nil {
			t.Fatalf("put %d: %v", i, err)
		}
	}
	u, err := etcdspace.Read(context.Background(), c)
	t.Fatalf("no NOSPACE after %d puts of %s: usage %+v %v", max, etcdspace.Bytes(int64(len(value))), u, err)
}

func monitorLog() (*etcdtest.Buffer, logrus.FieldLogger) {
	var logs etcdtest.Buffer
	log := logrus.New()
	log.SetOutput(&logs)
	return &logs, log
}

// NOSPACE recovery is bounded like a routine defragmentation: when the
// bytes in use after compaction would take longer to defragment than a
// quarter of the shortest session TTL (here 4 s at 1 MiB/s: 1 MiB), the
// Monitor does not defragment (nor disarm: without a defragmentation the
// file stays at the quota and the alarm would come back at the next
// write); it reports the state and the fix. (It used to defragment
// whatever the size: a 110 MiB defragmentation blocked the member 4.8 s,
// longer than a 5 s coordinator session survives.)
func TestNoSpaceRecoveryRefusesADefragLongerThanTheSessionsAllow(t *testing.T) {
	const quota = 16 << 20
	c := startMember(t, quota, "periodic", "0")
	live := strings.Repeat("l", 256<<10)
	for i := range 12 { // 3 MiB of live data
		if _, err := c.Put(context.Background(), fmt.Sprintf("/live/%d", i), live); err != nil {
			t.Fatal(err)
		}
	}
	putUntilNoSpace(t, c, 64, func(int) string { return "/history" }, strings.Repeat("h", 1<<20))
	logs, log := monitorLog()
	mon := &etcdspace.Monitor{Client: c, Maintain: true, SessionTTL: 4 * time.Second, DefragRate: 1 << 20, Log: log}
	u, err := mon.Check(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if d, rec := mon.Counts(); d != 0 || rec != 0 {
		t.Fatalf("%d defragmentations, %d recoveries with %s in use against a 1 MiB bound", d, rec, etcdspace.Bytes(u.InUse))
	}
	last, _, _ := mon.Last()
	if !last.NoSpace || !last.Exhausted || !strings.Contains(last.Warning, "etcdctl defrag") ||
		!strings.Contains(last.Warning, "etcdctl alarm disarm") || !strings.Contains(last.Warning, "--quota-backend-bytes") {
		t.Fatalf("state after a refused recovery: %+v", last)
	}
	if !strings.Contains(logs.String(), "session TTL") || !strings.Contains(logs.String(), "etcdctl defrag") {
		t.Fatalf("no advice logged:\n%s", logs.String())
	}
	if now, err := etcdspace.Read(context.Background(), c); err != nil || !now.NoSpace {
		t.Fatalf("the alarm was disarmed without freeing the file: %+v %v", now, err)
	}
}

// When the live data alone fills the quota, compaction frees nothing and a
// defragmentation only shrinks the file until the next write: the alarm
// comes back. The Monitor says so once and stays in that state, instead of
// compacting, defragmenting and disarming at every check (at most one
// recovery per DefragMinInterval). An operator's fix (here: delete data,
// compact, defragment, disarm) clears the state.
func TestLiveDataOverQuotaIsAStateNotALoop(t *testing.T) {
	const quota = 8 << 20
	c := startMember(t, quota, "periodic", "0")
	value := strings.Repeat("v", 256<<10)
	n := 0
	fill := func() {
		putUntilNoSpace(t, c, 256, func(int) string { n++; return fmt.Sprintf("/live/%03d", n) }, value)
	}
	fill()
	logs, log := monitorLog()
	mon := &etcdspace.Monitor{Client: c, Maintain: true, Interval: time.Hour, DefragMinInterval: time.Hour, Log: log}
	for range 3 {
		u, err := mon.Check(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("checked at %d keys: %+v", n, u)
		fill() // the live data grows again (or the alarm still stands)
	}
	if _, rec := mon.Counts(); rec > 1 {
		t.Fatalf("%d NOSPACE recoveries within DefragMinInterval: a loop", rec)
	}
	last, _, _ := mon.Last()
	if !last.NoSpace || !last.Exhausted || !strings.Contains(last.Warning, "live data") || !strings.Contains(last.Warning, "--quota-backend-bytes") {
		t.Fatalf("state: %+v\n%s", last, logs.String())
	}
	t.Logf("exhausted after %d recoveries: %s", func() int { _, r := mon.Counts(); return r }(), last.Warning)
	if k := strings.Count(logs.String(), "live data"); k != 1 {
		t.Fatalf("the state logged %d times, want once:\n%s", k, logs.String())
	}
	// The operator's fix.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := c.Delete(ctx, "/live/", clientv3.WithPrefix()); err != nil {
		t.Fatal(err)
	}
	etcdtest.Compact(t, c)
	if _, err := c.Defragment(ctx, c.Endpoints()[0]); err != nil {
		t.Fatal(err)
	}
	if _, err := c.AlarmDisarm(ctx, &clientv3.AlarmMember{}); err != nil {
		t.Fatal(err)
	}
	u, err := mon.Check(ctx)
	if err != nil || u.NoSpace || u.Exhausted || u.Warning != "" {
		t.Fatalf("after the operator's fix: %+v %v", u, err)
	}
	if last, _, _ := mon.Last(); last.Exhausted {
		t.Fatalf("Last still exhausted: %+v", last)
	}
}

// The routine defragmentation is bounded by the session TTL too: 2 MiB in
// use at 1 MiB/s would block the member 2 s, more than a quarter of a 4 s
// session; the Monitor advises instead (DefragMaxInUse, 64 MiB, alone
// allowed it).
func TestRoutineDefragRespectsTheSessionTTL(t *testing.T) {
	c := startMember(t, 64<<20, "periodic", "0")
	value := strings.Repeat("v", 256<<10)
	for i := range 40 {
		if _, err := c.Put(context.Background(), fmt.Sprintf("/k%d", i%8), value); err != nil {
			t.Fatal(err)
		}
	}
	etcdtest.Compact(t, c)
	// bbolt frees the compacted pages only when a later write transaction
	// begins: with no write after the compaction's last batch they stay
	// pending, and the file never looks worth defragmenting (the rule
	// under test is not reached). Each look writes a small key first, so
	// that a commit follows.
	etcdtest.WaitFor(t, 30*time.Second, "the compacted pages counted free", func() bool {
		if _, err := c.Put(context.Background(), "/tick", "t"); err != nil {
			return false
		}
		st, err := c.Status(context.Background(), c.Endpoints()[0])
		return err == nil && 2*st.DbSizeInUse <= st.DbSize
	})
	logs, log := monitorLog()
	mon := &etcdspace.Monitor{Client: c, Maintain: true, DefragAbove: 0.05, SessionTTL: 4 * time.Second, DefragRate: 1 << 20, Log: log}
	u, err := mon.Check(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if d, _ := mon.Counts(); d != 0 || u.InUse <= 1<<20 {
		t.Fatalf("defragmented %d times with %s in use", d, etcdspace.Bytes(u.InUse))
	}
	if !strings.Contains(logs.String(), "defragment at a quiet time") || !strings.Contains(logs.String(), "session TTL") {
		t.Fatalf("no advice naming the session bound: %s", logs.String())
	}
	// The same file with a fast enough estimate is defragmented.
	fast := &etcdspace.Monitor{Client: c, Maintain: true, DefragAbove: 0.05, SessionTTL: 4 * time.Second, DefragRate: 1 << 30}
	if _, err := fast.Check(context.Background()); err != nil {
		t.Fatal(err)
	}
	if d, _ := fast.Counts(); d != 1 {
		t.Fatalf("%d defragmentations within the bound, want 1", d)
	}
}

// A NOSPACE alarm that comes back within DefragMinInterval of a recovery
// (the live data grew into the quota again) is not recovered again at the
// next check: the Monitor reports the exhausted state instead of repeating
// compact, defragment, disarm every check.
func TestNoSpaceComingBackIsAStateNotALoop(t *testing.T) {
	const quota = 16 << 20
	c := startMember(t, quota, "periodic", "0")
	value := strings.Repeat("l", 256<<10)
	for i := range 24 { // 6 MiB of live data
		if _, err := c.Put(context.Background(), fmt.Sprintf("/live/%03d", i), value); err != nil {
			t.Fatal(err)
		}
	}
	putUntilNoSpace(t, c, 256, func(int) string { return "/history" }, strings.Repeat("h", 1<<20))
	logs, log := monitorLog()
	mon := &etcdspace.Monitor{Client: c, Maintain: true, Interval: time.Hour, DefragMinInterval: time.Hour, Log: log}
	if _, err := mon.Check(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, rec := mon.Counts(); rec != 1 {
		t.Fatalf("%d recoveries of history over quota, want 1:\n%s", rec, logs.String())
	}
	n := 24
	putUntilNoSpace(t, c, 256, func(int) string { n++; return fmt.Sprintf("/live/%03d", n) }, value)
	for range 2 {
		if _, err := mon.Check(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	if _, rec := mon.Counts(); rec != 1 {
		t.Fatalf("%d recoveries within DefragMinInterval, want 1: a loop", rec)
	}
	last, _, _ := mon.Last()
	if !last.NoSpace || !last.Exhausted || !strings.Contains(last.Warning, "raised again") || !strings.Contains(last.Warning, "--quota-backend-bytes") {
		t.Fatalf("state: %+v", last)
	}
}
