package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"
)

// The round table's modes: where the agents run.
const (
	modeInProcess = "in-process"   // agents, coordinator and etcd share the bench process and every CPU
	modeApart     = "agents-apart" // agents in a child process on a CPU of their own (apart.go)
)

// ApartInfo is how an agents-apart row ran. The CPU lists are every
// thread's Cpus_allowed_list, read from /proc/<pid>/task/*/status after
// the measured rounds (distinct lists joined by " / ": one list means
// every thread was pinned).
type ApartInfo struct {
	BenchCPUs        string `json:"bench_cpus"` // etcd, the coordinator, the tenant probe
	BenchThreads     int    `json:"bench_threads"`
	BenchGOMAXPROCS  int    `json:"bench_gomaxprocs"`
	AgentsPID        int    `json:"agents_pid"`
	AgentsCPUs       string `json:"agents_cpus"`
	AgentsThreads    int    `json:"agents_threads"`
	AgentsGOMAXPROCS int    `json:"agents_gomaxprocs"`
	// AgentsExitCode is the child's exit status (0: it closed its agents
	// and exited when the bench closed its stdin; -1: killed).
	AgentsExitCode int `json:"agents_exit_code"`
}

// cpuSplit is the agents-apart mode's CPUs: the agents' child gets the
// last CPU the bench may use, the bench keeps the others (one each on a
// 2-CPU machine).
type cpuSplit struct {
	all    []int // the bench's CPUs before the split, restored after
	bench  []int
	agents int
}

// splitCPUs splits the CPUs the bench may use (allowedCPUs) for the
// agents-apart mode; it refuses fewer than 2.
func splitCPUs(allowed []int) (*cpuSplit, error) {
	if len(allowed) < 2 {
		return nil, fmt.Errorf("-agents-apart needs 2 CPUs or more (the agents on one, etcd and the coordinator on the others); this process may use %d (CPUs %s)",
			len(allowed), formatCPUs(allowed))
	}
	n := len(allowed) - 1
	return &cpuSplit{all: allowed, bench: allowed[:n:n], agents: allowed[n]}, nil
}

func formatCPUs(cpus []int) string {
	s := make([]string, len(cpus))
	for i, c := range cpus {
		s[i] = strconv.Itoa(c)
	}
	return strings.Join(s, ",")
}

// apartReport is one line the agents' child writes on its stdout: the
// first when its agents are registered, then one for each line it reads on
// its stdin. Error is set, and alone, when the child failed.
type apartReport struct {
	fleetCounts
	// Round answers a "round <rev>" line (fleet.round).
	Round      *fleetRound `json:"round,omitempty"`
	GOMAXPROCS int         `json:"gomaxprocs,omitempty"`
	Error      string      `json:"error,omitempty"`
}

// apartStopTimeout bounds the child's shutdown (closing its agents, each
// revoking its lease) before it is killed.
const apartStopTimeout = 5 * time.Minute

// apartFleet is a fleet run by a child process (this binary with
// childAgentsArg, agentschild.go), pinned to a CPU of its own, against the
// bench's etcd. The bench asks for counts by writing a line on the child's
// stdin and reading the child's report on its stdout; closing the stdin
// stops the child. Not safe for concurrent use.
type apartFleet struct {
	cmd      *exec.Cmd
	stdin    io.WriteCloser
	reports  chan apartReport // the child's reports; closed when its output ends or is not a report
	readErr  error            // why reports closed; read after it is closed
	closing  chan struct{}    // closed by Close: the reader drops reports
	readDone chan struct{}    // closed when the reader has read the child's output to its end
	last     apartReport
	stop     sync.Once
	exitCode int
}

// startApartFleet starts the child with sz's agents under prefix and waits
// until it reports them registered.
func startApartFleet(ctx context.Context, e *env, o options, sz size, prefix string) (*apartFleet, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	args := []string{childAgentsArg, "-endpoint", e.ep, "-prefix", prefix, "-size", sz.fleet().String(),
		"-agents-per-client", strconv.Itoa(o.agentsPerClient), "-cpu", strconv.Itoa(o.apart.agents)}
	if o.logFile != "" {
		args = append(args, "-log", o.logFile+".agents")
	}
	cmd := exec.Command(exe, args...)
	cmd.SysProcAttr = apartProcAttr()
	cmd.Stderr = os.Stderr
	a := &apartFleet{cmd: cmd, reports: make(chan apartReport, 1), closing: make(chan struct{}), readDone: make(chan struct{})}
	if a.stdin, err = cmd.StdinPipe(); err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("agents child: %w", err)
	}
	go a.read(stdout)
	if _, err := a.next(ctx, 6*time.Minute); err != nil {
		a.Close()
		return nil, err
	}
	return a, nil
}

// read decodes the child's reports until its output ends; it owns
// a.reports and is waited for by Close (a.readDone).
func (a *apartFleet) read(stdout io.Reader) {
	defer close(a.readDone)
	dec := json.NewDecoder(stdout)
	for {
		var rep apartReport
		if err := dec.Decode(&rep); err != nil {
			a.readErr = err
			close(a.reports)
			io.Copy(io.Discard, stdout) // never leave the child blocked on a full pipe
			return
		}
		select {
		case a.reports <- rep:
		case <-a.closing:
		}
	}
}

// next waits at most d for the child's next report.
func (a *apartFleet) next(ctx context.Context, d time.Duration) (apartReport, error) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case rep, ok := <-a.reports:
		switch {
		case !ok && errors.Is(a.readErr, io.EOF):
			return rep, errors.New("agents child: exited (its error, if any, is above)")
		case !ok:
			return rep, fmt.Errorf("agents child: reading its reports: %w", a.readErr)
		case rep.Error != "":
			return rep, fmt.Errorf("agents child: %s", rep.Error)
		}
		a.last = rep
		return rep, nil
	case <-t.C:
		return apartReport{}, fmt.Errorf("agents child: no report within %v", d)
	case <-ctx.Done():
		return apartReport{}, ctx.Err()
	}
}

func (a *apartFleet) counts(ctx context.Context) (fleetCounts, error) {
	if _, err := io.WriteString(a.stdin, "counts\n"); err != nil {
		return fleetCounts{}, fmt.Errorf("agents child: %w", err)
	}
	rep, err := a.next(ctx, time.Minute)
	return rep.fleetCounts, err
}

func (a *apartFleet) round(ctx context.Context, rev uint64) (fleetRound, error) {
	if _, err := fmt.Fprintf(a.stdin, "round %d\n", rev); err != nil {
		return fleetRound{}, fmt.Errorf("agents child: %w", err)
	}
	rep, err := a.next(ctx, time.Minute)
	if err == nil && rep.Round == nil {
		err = fmt.Errorf("agents child: no round %d in its report", rev)
	}
	if err != nil {
		return fleetRound{}, err
	}
	return *rep.Round, nil
}

// info reads where both processes ran, as the JSON reports it.
func (a *apartFleet) info() *ApartInfo {
	in := &ApartInfo{AgentsPID: a.cmd.Process.Pid, AgentsGOMAXPROCS: a.last.GOMAXPROCS, BenchGOMAXPROCS: runtime.GOMAXPROCS(0)}
	var err error
	if in.BenchCPUs, in.BenchThreads, err = threadCPUs(os.Getpid()); err != nil {
		in.BenchCPUs = err.Error()
	}
	if in.AgentsCPUs, in.AgentsThreads, err = threadCPUs(in.AgentsPID); err != nil {
		in.AgentsCPUs = err.Error()
	}
	return in
}

// Close stops the child, in order: it closes the child's stdin, on which
// the child closes its agents and exits; kills the child if its output has
// not ended within apartStopTimeout; waits for the reader and the child.
// Idempotent.
func (a *apartFleet) Close() {
	a.stop.Do(func() {
		close(a.closing)
		a.stdin.Close()
		t := time.NewTimer(apartStopTimeout)
		defer t.Stop()
		select {
		case <-a.readDone:
		case <-t.C:
			progress("agents child %d: still running %v after its stdin closed; killing it", a.cmd.Process.Pid, apartStopTimeout)
			a.cmd.Process.Kill()
			<-a.readDone
		}
		if err := a.cmd.Wait(); err != nil {
			progress("agents child %d: %v", a.cmd.Process.Pid, err)
		}
		a.exitCode = a.cmd.ProcessState.ExitCode()
	})
}
