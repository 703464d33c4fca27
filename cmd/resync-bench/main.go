// Command resync-bench measures resync on an embedded, fsync-on etcd member
// in one run and prints a table (and writes JSON):
//
//   - round latency for agents x plugins (real resync.Plugin agents), beside
//     the etcd floor (the same ack writes, uncoordinated) and etcd's
//     recipes.DoubleBarrier with the same participants; with -agents-apart,
//     also with the agents in a child process on a CPU of their own (see
//     apart.go);
//   - coordinator failover, crash and graceful;
//   - coordinator heap per participant (in a child process, see memory.go);
//   - etcd keys per participant after a number of rounds.
//
// Every number is measured in the run that prints it. Run it on a quiet
// machine: other load on the CPUs or the disk shows in every column.
//
// Usage:
//
//	go run ./cmd/resync-bench                   # the full run (make bench)
//	go run ./cmd/resync-bench -sizes 1x1,10x10 -rounds 5 -only rounds
//	go run ./cmd/resync-bench -sizes 1x1,10x10 -rounds 5 -only rounds -agents-apart
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"

	"github.com/sirupsen/logrus"
)

type options struct {
	sizes           []size
	rounds          int
	warmup          int
	agentsPerClient int
	coalesce        time.Duration
	barrierRounds   int
	barrierTimeout  time.Duration
	barrierMax      int
	failovers       int
	sessionTTL      time.Duration
	standbySettle   time.Duration
	memParticipants []int
	keyRounds       []int
	shapeWatchers   []int
	shapeWakes      int
	keySize         size
	only            map[string]bool
	out             string
	dir             string
	logFile         string
	cpuProfile      string
	memProfile      string
	// budgetWindow is the window of the sizes written AxP~budget, set on
	// the coordinator (waves.go).
	budgetWindow int
	// apart is the agents-apart mode's CPUs (-agents-apart), nil without it.
	apart *cpuSplit
}

func main() {
	if len(os.Args) > 1 && os.Args[1] == childMemoryArg {
		os.Exit(childMemory(os.Args[2:]))
	}
	if len(os.Args) > 1 && os.Args[1] == childAgentsArg {
		os.Exit(childAgents(os.Args[2:]))
	}
	os.Exit(run(os.Args[1:], os.Stdout))
}

// run is the command: it parses args, then redraws a soak plot, runs the
// soak or runs the experiments, printing tables to stdout and progress to
// stderr. It returns the exit status.
func run(args []string, stdout io.Writer) int {
	f, err := parseFlags(args)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		return 2
	}
	if f.replot != "" {
		return replotSoak(f.replot, f.soak.svg)
	}
	if f.soak.duration > 0 {
		return runSoak(f.soak, f.soakSize, stdout)
	}
	o, err := f.options()
	if err != nil {
		return fail(err)
	}
	return runExperiments(o, stdout)
}

// flags holds the command line as given; options() checks and converts
// the experiments' part of it.
type flags struct {
	o                                 options
	sizes, keyRounds, keySize, only   string
	shapeWatchers                     string
	memParticipants, soakSize, replot string
	soak                              soakOptions
	agentsApart                       bool
}

// parseFlags parses args; on a bad flag the flag package has already
// printed the error and the usage to stderr.
func parseFlags(args []string) (*flags, error) {
	var f flags
	fs := flag.NewFlagSet(os.Args[0], flag.ContinueOnError)
	experimentFlags(fs, &f)
	soakFlags(fs, &f)
	return &f, fs.Parse(args)
}

func experimentFlags(fs *flag.FlagSet, f *flags) {
	o := &f.o
	fs.StringVar(&f.sizes, "sizes", "1x1,10x10,100x10,1000x10,1000x10@100,5000x10,5000x10~500,5000x10~500+10ms,5000x10~500+50ms,10000x10,10000x10~budget,10000x10@100", "round-latency sizes, agents x plugins per agent, comma separated; AxP@T: rounds requested for the first T agents only (T <= 100); AxP~W or AxP~W%: rounds requested in waves of at most W agents in flight (W% of the round's agents); AxP~budget: waves of -budget-window agents set on the coordinator for every round (resyncd --max-in-flight); a +RELOAD suffix (5000x10~500+10ms): each plugin reloads that long before it acks (no floors then); 10000x10 needs about 4 GiB of memory")
	fs.IntVar(&o.budgetWindow, "budget-window", 50, "the window, in agents, of the sizes written AxP~budget: the coordinator's write budget (coordinator.Config.Wave.MaxInFlight, resyncd --max-in-flight)")
	fs.IntVar(&o.rounds, "rounds", 20, "measured rounds per size (and floor samples)")
	fs.IntVar(&o.warmup, "warmup", 2, "unmeasured rounds per size after the initial round")
	fs.IntVar(&o.agentsPerClient, "agents-per-client", 50, "agents sharing one etcd client")
	fs.DurationVar(&o.coalesce, "coalesce", time.Millisecond, "coordinator CoalesceWindow (the default of the library is 100ms)")
	fs.IntVar(&o.barrierRounds, "barrier-rounds", 5, "DoubleBarrier samples per size (at most -rounds)")
	fs.DurationVar(&o.barrierTimeout, "barrier-timeout", 60*time.Second, "give up one DoubleBarrier sample (and the size's later ones) after this")
	fs.IntVar(&o.barrierMax, "barrier-max", 50000, "skip the DoubleBarrier of sizes with more participants than this (0: no limit): each Leave reads every waiter, so its memory grows as participants squared (100,000 ran a 24 GiB machine out of memory)")
	fs.IntVar(&o.failovers, "failovers", 5, "failover samples of each kind")
	fs.DurationVar(&o.sessionTTL, "session-ttl", 2*time.Second, "coordinator SessionTTL in the failover test")
	fs.DurationVar(&o.standbySettle, "standby-settle", 250*time.Millisecond, "how long the standby campaigns before the leader stops (etcd catches up new watches every 100ms)")
	fs.StringVar(&f.memParticipants, "mem-participants", "sizes", "participant counts of the memory test, comma separated; \"sizes\": those of -sizes' measured rounds (at least 1000)")
	fs.StringVar(&f.keyRounds, "key-rounds", "1,10,50", "count etcd keys after these rounds")
	fs.StringVar(&f.keySize, "key-size", "100x10", "agents x plugins of the key-count test")
	fs.BoolVar(&f.agentsApart, "agents-apart", false, "also run each size's rounds with the agents in a child process pinned to one CPU, etcd, the coordinator and the tenant probe on the others (Linux, 2 CPUs or more); rows labelled agents-apart, without floors")
	fs.StringVar(&f.only, "only", "rounds,failover,memory,keys", "experiments to run (also: shapes, the wake-up shapes of issue #26 with raw clientv3)")
	fs.StringVar(&f.shapeWatchers, "shape-watchers", "1000,5000,10000", "watcher counts of -only shapes, comma separated")
	fs.IntVar(&o.shapeWakes, "shape-wakes", 10, "wakes (one a second) per shape and watcher count of -only shapes")
	fs.StringVar(&o.out, "out", "bench/results.json", "JSON results file (\"\" for none)")
	fs.StringVar(&o.dir, "dir", "", "parent of the temporary etcd data dir (default: the system's temp dir)")
	fs.StringVar(&o.logFile, "log", "", "file for agents' and coordinators' logs at warn level (default: discarded)")
	fs.StringVar(&o.cpuProfile, "cpuprofile", "", "write a CPU profile of each size's measured rounds to FILE.AxP")
	fs.StringVar(&o.memProfile, "memprofile", "", "write allocation profiles before and after each size's measured rounds to FILE.AxP.base and FILE.AxP (pprof -base)")
}

func soakFlags(fs *flag.FlagSet, f *flags) {
	fs.DurationVar(&f.soak.duration, "soak", 0, "instead of the experiments, run the soak for this long (make soak): rounds back to back, sampled")
	fs.StringVar(&f.soakSize, "soak-size", "200x10", "agents x plugins per agent of the soak")
	fs.DurationVar(&f.soak.sample, "soak-sample", 5*time.Second, "sampling interval of the soak")
	fs.StringVar(&f.soak.out, "soak-out", "bench/soak.json", "JSON of the soak")
	fs.StringVar(&f.soak.svg, "soak-svg", "bench/soak.svg", "SVG plot of the soak (\"\" for none)")
	fs.StringVar(&f.replot, "soak-replot", "", "redraw -soak-svg from this soak JSON and exit")
}

// options checks the experiments' flags and converts them.
func (f *flags) options() (options, error) {
	o := f.o
	var err error
	if o.sizes, err = parseSizes(f.sizes); err != nil {
		return o, err
	}
	if o.memParticipants, err = memCounts(f.memParticipants, o.sizes); err != nil {
		return o, err
	}
	if o.keySize, err = parseSize(f.keySize); err != nil {
		return o, err
	}
	if o.keySize.Wave != "" || o.budgetWindow < 1 {
		return o, fmt.Errorf("-key-size takes no ~WINDOW, and -budget-window must be >= 1")
	}
	if o.keyRounds, err = parseInts(f.keyRounds); err != nil {
		return o, err
	}
	if o.shapeWatchers, err = parseInts(f.shapeWatchers); err != nil {
		return o, fmt.Errorf("-shape-watchers: %w", err)
	}
	if o.shapeWakes < 1 {
		return o, fmt.Errorf("-shape-wakes must be >= 1")
	}
	if o.only, err = parseOnly(f.only); err != nil {
		return o, err
	}
	if o.rounds < 1 || o.agentsPerClient < 1 || o.failovers < 1 {
		return o, fmt.Errorf("-rounds, -agents-per-client and -failovers must be >= 1")
	}
	o.barrierRounds = min(o.barrierRounds, o.rounds)
	if f.agentsApart {
		cpus, err := allowedCPUs()
		if err != nil {
			return o, err
		}
		if o.apart, err = splitCPUs(cpus); err != nil {
			return o, err
		}
	}
	return o, nil
}

// parseOnly parses -only: the experiments to run.
func parseOnly(only string) (map[string]bool, error) {
	set := map[string]bool{}
	for _, s := range strings.Split(only, ",") {
		switch s = strings.TrimSpace(s); s {
		case "rounds", "failover", "memory", "keys", "shapes":
			set[s] = true
		case "":
		default:
			return nil, fmt.Errorf("-only: unknown experiment %q (rounds, failover, memory, keys, shapes)", s)
		}
	}
	return set, nil
}

// runExperiments runs the experiments o selects, prints their table to
// stdout and writes their JSON to o.out.
func runExperiments(o options, stdout io.Writer) int {
	log, closeLog, err := experimentLog(o.logFile)
	if err != nil {
		return fail(err)
	}
	defer closeLog()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	res, err := runAll(ctx, o, log)
	if res != nil {
		printTable(stdout, res)
		if o.out != "" {
			if werr := writeJSON(o.out, res); werr != nil {
				fmt.Fprintln(os.Stderr, "resync-bench:", werr)
				return 1
			}
			fmt.Fprintf(os.Stderr, "results written to %s\n", o.out)
		}
	}
	if err != nil {
		return fail(err)
	}
	return 0
}

// experimentLog is the agents' and coordinators' logger at warn level:
// into file, or discarded when file is "".
func experimentLog(file string) (*logrus.Logger, func(), error) {
	log := logrus.New()
	log.SetLevel(logrus.WarnLevel)
	log.SetOutput(io.Discard)
	if file == "" {
		return log, func() {}, nil
	}
	f, err := os.Create(file)
	if err != nil {
		return nil, nil, err
	}
	log.SetOutput(f)
	return log, func() { f.Close() }, nil
}

func runSoak(so soakOptions, sizeText string, stdout io.Writer) int {
	var err error
	if so.size, err = parseSize(sizeText); err != nil {
		return fail(err)
	}
	if so.size.Wave != "" {
		return fail(fmt.Errorf("-soak-size %s: the soak takes no ~WINDOW", so.size))
	}
	if so.sample <= 0 || so.duration < 6*so.sample {
		return fail(fmt.Errorf("-soak %v must be at least 6 samples of -soak-sample %v", so.duration, so.sample))
	}
	log := logrus.New()
	log.SetLevel(logrus.WarnLevel)
	log.SetOutput(os.Stderr)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	res, err := soak(ctx, so, log)
	if res != nil {
		printSoak(stdout, res)
		if so.out != "" {
			if werr := writeJSON(so.out, res); werr != nil {
				return fail(werr)
			}
			fmt.Fprintf(os.Stderr, "soak written to %s and %s\n", so.out, so.svg)
		}
	}
	if err != nil {
		return fail(err)
	}
	if !res.Pass {
		return 1
	}
	return 0
}

func fail(err error) int {
	fmt.Fprintln(os.Stderr, "resync-bench:", err)
	return 1
}

func writeJSON(path string, v any) error {
	if dir := filepath.Dir(path); dir != "" {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
	}
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}

// progress prints what the run is doing to stderr, so that stdout is the
// table alone.
func progress(format string, a ...any) {
	fmt.Fprintf(os.Stderr, "%s  "+format+"\n", append([]any{time.Now().Format("15:04:05")}, a...)...)
}

func machine() Machine {
	host, _ := os.Hostname()
	return Machine{GOOS: runtime.GOOS, GOARCH: runtime.GOARCH, NumCPU: runtime.NumCPU(), GOMAXPROCS: runtime.GOMAXPROCS(0),
		GoVersion: runtime.Version(), Hostname: host}
}
