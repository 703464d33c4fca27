package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sync"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/resyncd/resync/coordinator"
	"github.com/resyncd/resync/internal/etcdspace"
	"github.com/resyncd/resync/internal/svgplot"
)

// The soak (make soak): resyncd's production setup in one process — the
// embedded etcd with its default compaction and quota (fsync on), the
// storage monitor resyncd runs (defragmentation, NOSPACE recovery), a
// coordinator with the default config — and an in-process fleet of real
// resync.Plugin agents, running rounds back to back for a bounded time and
// sampling the database, the heap, goroutines and round latency.
//
// Heap: coordinator, agents and etcd share the process, so the heap is the
// process's (Go runtime's live heap after the last GC, and the allocated
// heap); a leak in any of them shows there.

type soakOptions struct {
	duration time.Duration
	sample   time.Duration
	size     size
	out, svg string
}

// SoakSample is one sample.
type SoakSample struct {
	AtS        float64 `json:"at_s"`
	DBSize     int64   `json:"db_size_bytes"`
	DBInUse    int64   `json:"db_size_in_use_bytes"`
	HeapLive   uint64  `json:"heap_live_bytes"`
	HeapAlloc  uint64  `json:"heap_alloc_bytes"`
	Goroutines int     `json:"goroutines"`
	// Rounds finished since the previous sample and their latency.
	Rounds   int     `json:"rounds"`
	RoundP50 float64 `json:"round_p50_ms,omitempty"`
	RoundMax float64 `json:"round_max_ms,omitempty"`
}

// SoakThird summarises a third of the run.
type SoakThird struct {
	DBSize     int64   `json:"db_size_bytes_median"`
	DBInUse    int64   `json:"db_size_in_use_bytes_median"`
	HeapLive   uint64  `json:"heap_live_bytes_median"`
	HeapAlloc  uint64  `json:"heap_alloc_bytes_median"`
	Goroutines int     `json:"goroutines_median"`
	Rounds     int     `json:"rounds"`
	RoundP50   float64 `json:"round_p50_ms"`
	RoundP99   float64 `json:"round_p99_ms"`
}

// SoakResult is bench/soak.json.
type SoakResult struct {
	Machine  Machine   `json:"machine"`
	Start    time.Time `json:"start"`
	Duration float64   `json:"duration_s"`
	Settings struct {
		Etcd             string  `json:"etcd"`
		AutoCompaction   string  `json:"auto_compaction"`
		QuotaBytes       int64   `json:"quota_backend_bytes"`
		Agents           int     `json:"agents"`
		PluginsPerAgent  int     `json:"plugins_per_agent"`
		SampleS          float64 `json:"sample_interval_s"`
		Coordinator      string  `json:"coordinator"`
		HeapNote         string  `json:"heap_note"`
		Method           string  `json:"growth_method"`
		LoadNote         string  `json:"load_note"`
		LoadAvgAtStart   string  `json:"loadavg_at_start,omitempty"`
		LoadAvgAtEnd     string  `json:"loadavg_at_end,omitempty"`
		DefragsRun       int     `json:"defragmentations"`
		NoSpaceRecovered int     `json:"nospace_recoveries"`
		RoundsPerSecond  float64 `json:"rounds_per_second"`
	} `json:"settings"`
	// FinalDefrag: one defragmentation after the run, timed: how long
	// the member blocks at the plateau's size.
	FinalDefrag struct {
		SizeBefore int64   `json:"db_size_before_bytes"`
		InUse      int64   `json:"db_in_use_before_bytes"`
		SizeAfter  int64   `json:"db_size_after_bytes"`
		TookMs     float64 `json:"took_ms"`
		Error      string  `json:"error,omitempty"`
	} `json:"final_defrag"`
	Rounds       int       `json:"rounds"`
	FailedRounds int       `json:"failed_rounds"`
	FirstError   string    `json:"first_error,omitempty"`
	FirstThird   SoakThird `json:"first_third"`
	LastThird    SoakThird `json:"last_third"`
	// Growth over the last third, in percent (see Settings.Method).
	GrowthDBSize   float64 `json:"last_third_growth_db_size_pct"`
	GrowthHeapLive float64 `json:"last_third_growth_heap_live_pct"`
	// LatencyDrift: the trend of round latency over the last third, in
	// percent of its mean (see Settings.Method).
	LatencyDrift float64      `json:"last_third_latency_drift_pct"`
	Pass         bool         `json:"pass"`
	Verdict      []string     `json:"verdict"`
	Samples      []SoakSample `json:"samples"`
}

func soak(ctx context.Context, o soakOptions, log logrus.FieldLogger) (*SoakResult, error) {
	res := &SoakResult{Machine: machine(), Start: time.Now().UTC()}
	s := &res.Settings
	s.Etcd = "embedded v3.7.3 as resyncd starts it: single member, default ticks, fsync on, resyncd's storage monitor"
	s.AutoCompaction = etcdspace.DefaultAutoCompactionMode + " " + etcdspace.DefaultAutoCompactionRetention
	s.QuotaBytes = etcdspace.DefaultQuotaBackendBytes
	s.Agents, s.PluginsPerAgent, s.SampleS = o.size.Agents, o.size.Plugins, o.sample.Seconds()
	s.Coordinator = "coordinator.DefaultConfig (resyncd's defaults); a request is written as soon as the previous round finished"
	s.HeapNote = "one process: etcd, the coordinator and the agents share the Go heap; heap_live is the heap after a forced GC at each sample (runtime.GC, then HeapAlloc), heap_alloc the allocated heap just before it"
	s.Method = "growth over the last third = least-squares slope of its samples x its duration / its mean (a trend, insensitive to sample noise); latency drift: the same over every round's latency in the last third"
	s.LoadNote = "latency includes whatever else ran on the machine: compare loadavg_at_start and loadavg_at_end"
	s.LoadAvgAtStart = loadavg()

	progress("soak: starting embedded etcd (compaction %s, quota %s)", s.AutoCompaction, etcdspace.Bytes(s.QuotaBytes))
	e, err := startEnv(ctx, "")
	if err != nil {
		return nil, err
	}
	defer e.Close()
	mctx, mstop := context.WithCancel(ctx)
	var mwg sync.WaitGroup
	defer func() { mstop(); mwg.Wait() }()
	mon := &etcdspace.Monitor{Client: e.kv, Maintain: true, Log: log}
	mwg.Add(1)
	go func() { defer mwg.Done(); mon.Run(mctx) }()

	const prefix = "/resync/"
	progress("soak: starting %d agents x %d plugins", o.size.Agents, o.size.Plugins)
	f, err := startFleet(ctx, e, o.size, prefix, 50, log)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	cfg := coordinator.DefaultConfig()
	cfg.ID, cfg.Prefix = "soak", prefix
	k, err := startCoord(e, cfg, log)
	if err != nil {
		return nil, err
	}
	defer k.Close()
	want := o.size.participants()
	if _, err := waitRound(ctx, k.hooks.finished, 5*time.Minute, "initial RoundFinished"); err != nil {
		return nil, err
	}

	// Rounds back to back, sampled by a second goroutine.
	lat := &soakLatency{start: time.Now()}
	sctx, sstop := context.WithCancel(ctx)
	var swg sync.WaitGroup
	swg.Add(1)
	go func() {
		defer swg.Done()
		lat.sample(ctx, sctx, e, o.sample, res)
	}()
	soakRounds(ctx, e, f, k, want, lat.start.Add(o.duration), lat, res)
	sstop()
	swg.Wait()
	start, all := lat.start, lat.all
	res.Duration = time.Since(start).Seconds()
	s.LoadAvgAtEnd = loadavg()
	s.DefragsRun, s.NoSpaceRecovered = mon.Counts()
	s.RoundsPerSecond = float64(res.Rounds) / res.Duration
	summarise(res, all)
	finalDefrag(ctx, e, res)
	if o.svg != "" {
		if err := writeSoakSVG(o.svg, res); err != nil {
			return res, err
		}
	}
	return res, ctx.Err()
}

// soakLatency collects the soak's round latencies: those since the last
// sample, and every round's for the summary. Safe for concurrent use.
type soakLatency struct {
	start time.Time
	mu    sync.Mutex
	lat   []time.Duration // since the last sample
	all   []struct {
		at  float64
		lat float64
	}
}

// add records a round that finished at, d after its request.
func (l *soakLatency) add(at time.Time, d time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lat = append(l.lat, d)
	l.all = append(l.all, struct{ at, lat float64 }{at.Sub(l.start).Seconds(), ms(d)})
}

// sample appends a sample to res.Samples at once, every interval, and
// once more when sctx ends (ctx bounds the samples' reads).
func (l *soakLatency) sample(ctx, sctx context.Context, e *env, every time.Duration, res *SoakResult) {
	t := time.NewTicker(every)
	defer t.Stop()
	sample := func() {
		l.mu.Lock()
		lat := l.lat
		l.lat = nil
		l.mu.Unlock()
		res.Samples = append(res.Samples, takeSample(ctx, e, time.Since(l.start), lat))
	}
	sample()
	for {
		select {
		case <-sctx.Done():
			sample()
			return
		case <-t.C:
			sample()
		}
	}
}

// soakRounds runs rounds back to back until deadline or ctx ends: each a
// request, the wait for its RoundFinished, and a check that it was clean
// with want participants. It counts rounds and failures in res.
func soakRounds(ctx context.Context, e *env, f *fleet, k *coord, want int, deadline time.Time, lat *soakLatency, res *SoakResult) {
	lastProgress := time.Now()
	for time.Now().Before(deadline) && ctx.Err() == nil {
		t0 := time.Now()
		rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err := request(rctx, e.kv, f.layout, "soak", 0)
		cancel()
		if err == nil {
			var ev roundEvent
			ev, err = waitRound(ctx, k.hooks.finished, 2*time.Minute, "RoundFinished")
			if err == nil {
				err = checkClean(ev.round, want)
				lat.add(ev.at, ev.at.Sub(t0))
			}
		}
		res.Rounds++
		if err != nil {
			res.FailedRounds++
			if res.FirstError == "" {
				res.FirstError = err.Error()
			}
			progress("soak: round %d failed: %v", res.Rounds, err)
			if ctx.Err() != nil {
				break
			}
		}
		if time.Since(lastProgress) > time.Minute {
			lastProgress = time.Now()
			progress("soak: %d rounds, %d failed, %v left", res.Rounds, res.FailedRounds, time.Until(deadline).Round(time.Second))
		}
	}
}

func finalDefrag(ctx context.Context, e *env, res *SoakResult) {
	fd := &res.FinalDefrag
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	before, err := etcdspace.Read(ctx, e.kv)
	if err != nil {
		fd.Error = err.Error()
		return
	}
	fd.SizeBefore, fd.InUse = before.Size, before.InUse
	t0 := time.Now()
	if _, err := e.kv.Defragment(ctx, e.ep); err != nil {
		fd.Error = err.Error()
		return
	}
	fd.TookMs = ms(time.Since(t0))
	if after, err := etcdspace.Read(ctx, e.kv); err == nil {
		fd.SizeAfter = after.Size
	}
}

func takeSample(ctx context.Context, e *env, at time.Duration, lat []time.Duration) SoakSample {
	s := SoakSample{AtS: at.Seconds(), Goroutines: runtime.NumGoroutine(), Rounds: len(lat)}
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	if u, err := etcdspace.Read(rctx, e.kv); err == nil {
		s.DBSize, s.DBInUse = u.Size, u.InUse
	}
	cancel()
	var ms2 runtime.MemStats
	runtime.ReadMemStats(&ms2)
	s.HeapAlloc = ms2.HeapAlloc
	runtime.GC()
	runtime.ReadMemStats(&ms2)
	s.HeapLive = ms2.HeapAlloc
	if len(lat) > 0 {
		d := dist(lat)
		s.RoundP50, s.RoundMax = d.P50, d.Max
	}
	return s
}

// soakRound is one round of the soak: when it finished (seconds since the
// start) and its latency (ms).
type soakRound = struct{ at, lat float64 }

// summarise fills the soak's thirds, growth, drift and verdict from its
// samples and every round's latency.
func summarise(res *SoakResult, all []soakRound) {
	if len(res.Samples) < 6 {
		res.Verdict = append(res.Verdict, "too few samples")
		return
	}
	first, lo0, hi0 := soakThird(res, 0)
	last, lo2, hi2 := soakThird(res, 2)
	res.FirstThird, res.LastThird = sumThird(first, all, lo0, hi0), sumThird(last, all, lo2, hi2+1)
	growth := func(f func(SoakSample) int64) float64 {
		var xs, ys []float64
		for _, s := range last {
			xs, ys = append(xs, s.AtS), append(ys, float64(f(s)))
		}
		return trend(xs, ys, res.Duration-lo2)
	}
	res.GrowthDBSize = growth(func(s SoakSample) int64 { return s.DBSize })
	res.GrowthHeapLive = growth(func(s SoakSample) int64 { return int64(s.HeapLive) })
	var xs, ys []float64
	for _, r := range all {
		if r.at >= lo2 {
			xs, ys = append(xs, r.at), append(ys, r.lat)
		}
	}
	res.LatencyDrift = trend(xs, ys, res.Duration-lo2)
	verdict(res)
}

// soakThird returns the samples of third i (0, 1, 2) of the soak and its
// bounds in seconds; the last third includes its end.
func soakThird(res *SoakResult, i int) ([]SoakSample, float64, float64) {
	lo, hi := res.Duration*float64(i)/3, res.Duration*float64(i+1)/3
	var out []SoakSample
	for _, s := range res.Samples {
		if s.AtS >= lo && (s.AtS < hi || i == 2) {
			out = append(out, s)
		}
	}
	return out, lo, hi
}

// sumThird summarises a third: the medians of its samples ss and the
// latency of the rounds of all that finished in [lo, hi].
func sumThird(ss []SoakSample, all []soakRound, lo, hi float64) SoakThird {
	t := SoakThird{
		DBSize: medianOf(ss, func(s SoakSample) int64 { return s.DBSize }), DBInUse: medianOf(ss, func(s SoakSample) int64 { return s.DBInUse }),
		HeapLive: uint64(medianOf(ss, func(s SoakSample) int64 { return int64(s.HeapLive) })), HeapAlloc: uint64(medianOf(ss, func(s SoakSample) int64 { return int64(s.HeapAlloc) })),
		Goroutines: int(medianOf(ss, func(s SoakSample) int64 { return int64(s.Goroutines) })),
	}
	var l []float64
	for _, r := range all {
		if r.at >= lo && r.at < hi+1e-9 {
			l = append(l, r.lat)
		}
	}
	t.Rounds = len(l)
	if len(l) > 0 {
		slices.Sort(l)
		t.RoundP50, t.RoundP99 = rank(l, 50), rank(l, 99)
	}
	return t
}

// verdict passes the soak unless, over the last third, db size or live
// heap grew 5% or more, a round failed, or latency drifted up 25% or more.
func verdict(res *SoakResult) {
	res.Pass = true
	check := func(ok bool, format string, args ...any) {
		v := "ok: "
		if !ok {
			v, res.Pass = "FAIL: ", false
		}
		res.Verdict = append(res.Verdict, v+fmt.Sprintf(format, args...))
	}
	check(res.GrowthDBSize < 5, "db size grew %.1f%% over the last third (limit 5%%)", res.GrowthDBSize)
	check(res.GrowthHeapLive < 5, "live heap grew %.1f%% over the last third (limit 5%%)", res.GrowthHeapLive)
	check(res.FailedRounds == 0, "%d failed rounds of %d", res.FailedRounds, res.Rounds)
	check(res.LatencyDrift < 25, "round latency trend %+.1f%% over the last third (flat: below +25%%)", res.LatencyDrift)
}

// trend is the least-squares slope of ys over xs, times span, in percent
// of the mean of ys: how much the series grows over span, its noise
// averaged out.
func trend(xs, ys []float64, span float64) float64 {
	n := float64(len(xs))
	if n < 3 {
		return 0
	}
	var mx, my float64
	for i := range xs {
		mx, my = mx+xs[i], my+ys[i]
	}
	mx, my = mx/n, my/n
	var sxy, sxx float64
	for i := range xs {
		sxy += (xs[i] - mx) * (ys[i] - my)
		sxx += (xs[i] - mx) * (xs[i] - mx)
	}
	if sxx == 0 || my == 0 {
		return 0
	}
	return 100 * sxy / sxx * span / my
}

func medianOf(ss []SoakSample, f func(SoakSample) int64) int64 {
	if len(ss) == 0 {
		return 0
	}
	v := make([]int64, len(ss))
	for i, s := range ss {
		v[i] = f(s)
	}
	slices.Sort(v)
	return v[len(v)/2]
}

func writeSoakSVG(path string, res *SoakResult) error {
	var x, size, inUse, live, alloc, gor, p50, pmax, rounds []float64
	for _, s := range res.Samples {
		x = append(x, s.AtS/60)
		size = append(size, float64(s.DBSize)/(1<<20))
		inUse = append(inUse, float64(s.DBInUse)/(1<<20))
		live = append(live, float64(s.HeapLive)/(1<<20))
		alloc = append(alloc, float64(s.HeapAlloc)/(1<<20))
		gor = append(gor, float64(s.Goroutines))
		rounds = append(rounds, float64(s.Rounds))
		if s.Rounds > 0 {
			p50, pmax = append(p50, s.RoundP50), append(pmax, s.RoundMax)
		} else {
			p50, pmax = append(p50, nan()), append(pmax, nan())
		}
	}
	st := res.Settings
	p := svgplot.Plot{
		Title: fmt.Sprintf("resync soak: %dx%d agents x plugins, %d rounds (%d failed) in %.1f min, compaction %s",
			st.Agents, st.PluginsPerAgent, res.Rounds, res.FailedRounds, res.Duration/60, st.AutoCompaction),
		XLabel: "minutes since the first sample", Shade: [2]float64{res.Duration * 2 / 3 / 60, res.Duration / 60}, ShadeLabel: "last third (acceptance window)",
		Panels: []svgplot.Panel{
			{Title: "etcd database (quota " + etcdspace.Bytes(st.QuotaBytes) + ")", YLabel: "MiB", Series: []svgplot.Series{{Name: "db size", X: x, Y: size}, {Name: "db in use", X: x, Y: inUse}}},
			{Title: "Go heap of the process (etcd + coordinator + agents)", YLabel: "MiB", Series: []svgplot.Series{{Name: "live heap (after GC)", X: x, Y: live}, {Name: "allocated heap", X: x, Y: alloc}}},
			{Title: "goroutines", YLabel: "count", Series: []svgplot.Series{{Name: "goroutines", X: x, Y: gor}}},
			{Title: "round latency (request written to round finished), per sample", YLabel: "ms", Series: []svgplot.Series{{Name: "p50", X: x, Y: p50}, {Name: "max", X: x, Y: pmax}}},
			{Title: fmt.Sprintf("rounds finished per %v sample (the write rate: the db plateau follows its peak)", time.Duration(st.SampleS*float64(time.Second))), YLabel: "rounds", Series: []svgplot.Series{{Name: "rounds", X: x, Y: rounds}}},
		},
	}
	return writeSVG(path, p)
}

// writeSVG draws p into the file path, creating its directory.
func writeSVG(path string, p svgplot.Plot) error {
	if dir := filepath.Dir(path); dir != "" {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
	}
	fl, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := svgplot.Write(fl, p); err != nil {
		fl.Close()
		return err
	}
	return fl.Close()
}

func printSoak(w io.Writer, r *SoakResult) {
	fmt.Fprintf(w, "soak: %d rounds (%d failed) of %dx%d in %.0f s, %.2f rounds/s; %d defragmentations, %d NOSPACE recoveries\n",
		r.Rounds, r.FailedRounds, r.Settings.Agents, r.Settings.PluginsPerAgent, r.Duration, r.Settings.RoundsPerSecond, r.Settings.DefragsRun, r.Settings.NoSpaceRecovered)
	fmt.Fprintf(w, "%-12s %12s %12s %12s %12s %10s %10s %10s\n", "third", "db size", "db in use", "heap live", "heap alloc", "goroutines", "p50 ms", "p99 ms")
	for _, t := range []struct {
		name string
		v    SoakThird
	}{{"first", r.FirstThird}, {"last", r.LastThird}} {
		fmt.Fprintf(w, "%-12s %12s %12s %12s %12s %10d %10.1f %10.1f\n", t.name, etcdspace.Bytes(t.v.DBSize), etcdspace.Bytes(t.v.DBInUse),
			etcdspace.Bytes(int64(t.v.HeapLive)), etcdspace.Bytes(int64(t.v.HeapAlloc)), t.v.Goroutines, t.v.RoundP50, t.v.RoundP99)
	}
	fmt.Fprintf(w, "final defragmentation: %s (%s in use) -> %s in %.0f ms %s\n", etcdspace.Bytes(r.FinalDefrag.SizeBefore),
		etcdspace.Bytes(r.FinalDefrag.InUse), etcdspace.Bytes(r.FinalDefrag.SizeAfter), r.FinalDefrag.TookMs, r.FinalDefrag.Error)
	for _, v := range r.Verdict {
		fmt.Fprintln(w, v)
	}
}

func loadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return ""
	}
	return string(b[:len(b)-1])
}

func nan() float64 { return math.NaN() }

// replotSoak redraws the plot of a soak's JSON.
func replotSoak(jsonPath, svgPath string) int {
	b, err := os.ReadFile(jsonPath)
	if err != nil {
		return fail(err)
	}
	var res SoakResult
	if err := json.Unmarshal(b, &res); err != nil {
		return fail(fmt.Errorf("%s: %w", jsonPath, err))
	}
	if err := writeSoakSVG(svgPath, &res); err != nil {
		return fail(err)
	}
	return 0
}
