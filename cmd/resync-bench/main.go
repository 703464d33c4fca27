// Command resync-bench measures resync on an embedded, fsync-on etcd member
// in one run and prints a table (and writes JSON):
//
//   - round latency for agents x plugins (real resync.Plugin agents), beside
//     the etcd floor (the same ack writes, uncoordinated) and etcd's
//     recipes.DoubleBarrier with the same participants;
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
package main

import (
	"context"
	"encoding/json"
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
	failovers       int
	sessionTTL      time.Duration
	standbySettle   time.Duration
	memParticipants []int
	keyRounds       []int
	keySize         size
	only            map[string]bool
	out             string
	dir             string
	logFile         string
	cpuProfile      string
	memProfile      string
}

func main() {
	if len(os.Args) > 1 && os.Args[1] == childMemoryArg {
		os.Exit(childMemory(os.Args[2:]))
	}
	os.Exit(run())
}

func run() int {
	var (
		o                         options
		sizes, keyRounds, keySize string
		only                      string
	)
	flag.StringVar(&sizes, "sizes", "1x1,10x10,100x10,1000x10,1000x10@100,5000x10,10000x10", "round-latency sizes, agents x plugins per agent, comma separated; AxP@T: rounds requested for the first T agents only (T <= 100); 10000x10 needs about 4 GiB of memory")
	flag.IntVar(&o.rounds, "rounds", 20, "measured rounds per size (and floor samples)")
	flag.IntVar(&o.warmup, "warmup", 2, "unmeasured rounds per size after the initial round")
	flag.IntVar(&o.agentsPerClient, "agents-per-client", 50, "agents sharing one etcd client")
	flag.DurationVar(&o.coalesce, "coalesce", time.Millisecond, "coordinator CoalesceWindow (the default of the library is 100ms)")
	flag.IntVar(&o.barrierRounds, "barrier-rounds", 5, "DoubleBarrier samples per size (at most -rounds)")
	flag.DurationVar(&o.barrierTimeout, "barrier-timeout", 60*time.Second, "give up one DoubleBarrier sample (and the size's later ones) after this")
	flag.IntVar(&o.failovers, "failovers", 5, "failover samples of each kind")
	flag.DurationVar(&o.sessionTTL, "session-ttl", 2*time.Second, "coordinator SessionTTL in the failover test")
	flag.DurationVar(&o.standbySettle, "standby-settle", 250*time.Millisecond, "how long the standby campaigns before the leader stops (etcd catches up new watches every 100ms)")
	memParticipants := flag.String("mem-participants", "sizes", "participant counts of the memory test, comma separated; \"sizes\": those of -sizes' measured rounds (at least 1000)")
	flag.StringVar(&keyRounds, "key-rounds", "1,10,50", "count etcd keys after these rounds")
	flag.StringVar(&keySize, "key-size", "100x10", "agents x plugins of the key-count test")
	flag.StringVar(&only, "only", "rounds,failover,memory,keys", "experiments to run")
	flag.StringVar(&o.out, "out", "bench/results.json", "JSON results file (\"\" for none)")
	flag.StringVar(&o.dir, "dir", "", "parent of the temporary etcd data dir (default: the system's temp dir)")
	flag.StringVar(&o.logFile, "log", "", "file for agents' and coordinators' logs at warn level (default: discarded)")
	flag.StringVar(&o.cpuProfile, "cpuprofile", "", "write a CPU profile of each size's measured rounds to FILE.AxP")
	flag.StringVar(&o.memProfile, "memprofile", "", "write allocation profiles before and after each size's measured rounds to FILE.AxP.base and FILE.AxP (pprof -base)")
	var so soakOptions
	var soakSize string
	flag.DurationVar(&so.duration, "soak", 0, "instead of the experiments, run the soak for this long (make soak): rounds back to back, sampled")
	flag.StringVar(&soakSize, "soak-size", "200x10", "agents x plugins per agent of the soak")
	flag.DurationVar(&so.sample, "soak-sample", 5*time.Second, "sampling interval of the soak")
	flag.StringVar(&so.out, "soak-out", "bench/soak.json", "JSON of the soak")
	flag.StringVar(&so.svg, "soak-svg", "bench/soak.svg", "SVG plot of the soak (\"\" for none)")
	replot := flag.String("soak-replot", "", "redraw -soak-svg from this soak JSON and exit")
	flag.Parse()
	if *replot != "" {
		return replotSoak(*replot, so.svg)
	}
	if so.duration > 0 {
		return runSoak(so, soakSize)
	}

	var err error
	if o.sizes, err = parseSizes(sizes); err != nil {
		return fail(err)
	}
	if o.memParticipants, err = memCounts(*memParticipants, o.sizes); err != nil {
		return fail(err)
	}
	if o.keySize, err = parseSize(keySize); err != nil {
		return fail(err)
	}
	if o.keyRounds, err = parseInts(keyRounds); err != nil {
		return fail(err)
	}
	o.only = map[string]bool{}
	for _, s := range strings.Split(only, ",") {
		switch s = strings.TrimSpace(s); s {
		case "rounds", "failover", "memory", "keys":
			o.only[s] = true
		case "":
		default:
			return fail(fmt.Errorf("-only: unknown experiment %q (rounds, failover, memory, keys)", s))
		}
	}
	if o.rounds < 1 || o.agentsPerClient < 1 || o.failovers < 1 {
		return fail(fmt.Errorf("-rounds, -agents-per-client and -failovers must be >= 1"))
	}
	o.barrierRounds = min(o.barrierRounds, o.rounds)

	log := logrus.New()
	log.SetLevel(logrus.WarnLevel)
	log.SetOutput(io.Discard)
	if o.logFile != "" {
		f, err := os.Create(o.logFile)
		if err != nil {
			return fail(err)
		}
		defer f.Close()
		log.SetOutput(f)
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	res, err := runAll(ctx, o, log)
	if res != nil {
		printTable(os.Stdout, res)
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

func runSoak(so soakOptions, sizeText string) int {
	var err error
	if so.size, err = parseSize(sizeText); err != nil {
		return fail(err)
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
		printSoak(os.Stdout, res)
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
