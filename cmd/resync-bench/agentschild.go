package main

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime"
	"strconv"
	"strings"
)

const childAgentsArg = "internal-child-agents"

// agentsChild is the agents-apart mode's child process: the fleet of
// apartFleet, run by startFleet as the in-process mode runs it.
type agentsChild struct {
	ep, prefix, logFile string
	size                size
	perClient, cpu      int
}

// childAgents is the child's main: it parses args, runs the fleet until
// its stdin ends, and returns the exit status. A failure is reported as an
// apartReport with Error on stdout, where the bench reads it.
func childAgents(args []string) int {
	var c agentsChild
	var sizeText string
	fs := flag.NewFlagSet(childAgentsArg, flag.ContinueOnError)
	fs.StringVar(&c.ep, "endpoint", "", "etcd endpoint")
	fs.StringVar(&c.prefix, "prefix", "", "key prefix")
	fs.StringVar(&sizeText, "size", "", "agents x plugins")
	fs.IntVar(&c.perClient, "agents-per-client", 50, "agents sharing one etcd client")
	fs.IntVar(&c.cpu, "cpu", 0, "the CPU to pin the process to")
	fs.StringVar(&c.logFile, "log", "", "file for the agents' logs at warn level (default: discarded)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	// Ctrl-C reaches the whole process group: the bench stops the child
	// itself, by closing its stdin, after its own cleanup.
	signal.Ignore(os.Interrupt)
	var err error
	if c.size, err = parseSize(sizeText); err == nil {
		err = c.run(os.Stdin, os.Stdout)
	}
	if err != nil {
		json.NewEncoder(os.Stdout).Encode(apartReport{Error: err.Error()})
		return 1
	}
	return 0
}

// run pins the process to c.cpu, starts the fleet and reports once its
// agents are registered, then once for each line read from in ("counts",
// or "round <rev>": the counts and that round's span and events), until
// in ends (the bench closed it, or died); then it closes the fleet.
func (c *agentsChild) run(in io.Reader, out io.Writer) error {
	if err := pinProcess([]int{c.cpu}); err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// The stdin reader ends at EOF, which also cancels ctx (a fleet still
	// starting gives up); when run returns early, the process exits.
	lines := make(chan string)
	go func() {
		defer cancel()
		defer close(lines)
		sc := bufio.NewScanner(in)
		for sc.Scan() {
			select {
			case lines <- sc.Text():
			case <-ctx.Done():
				return
			}
		}
	}()
	log, closeLog, err := experimentLog(c.logFile)
	if err != nil {
		return err
	}
	defer closeLog()
	e := &env{ep: c.ep}
	if e.kv, err = e.client(); err != nil {
		return err
	}
	defer e.kv.Close()
	f, err := startFleet(ctx, e, c.size, c.prefix, c.perClient, log)
	if err != nil {
		return err
	}
	defer f.Close()
	enc := json.NewEncoder(out)
	if err := enc.Encode(report(f)); err != nil {
		return err
	}
	for line := range lines {
		rep := report(f)
		if rev, ok := strings.CutPrefix(line, "round "); ok {
			n, err := strconv.ParseUint(rev, 10, 64)
			if err != nil {
				return fmt.Errorf("line %q: %w", line, err)
			}
			r, _ := f.round(ctx, n)
			rep.Round = &r
		}
		if err := enc.Encode(rep); err != nil {
			return fmt.Errorf("report: %w", err)
		}
	}
	return nil
}

// report is the fleet's counts, the process's CPU time and GOMAXPROCS.
func report(f *fleet) apartReport {
	c, _ := f.counts(context.Background())
	c.CPU = cpuTime()
	return apartReport{fleetCounts: c, GOMAXPROCS: runtime.GOMAXPROCS(0)}
}
