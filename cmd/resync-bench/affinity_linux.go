package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// allowedCPUs is the CPUs the calling thread may run on, ascending: the
// process's set while nothing has pinned it.
func allowedCPUs() ([]int, error) {
	var set unix.CPUSet
	if err := unix.SchedGetaffinity(0, &set); err != nil {
		return nil, fmt.Errorf("sched_getaffinity: %w", err)
	}
	var cpus []int
	for c := 0; len(cpus) < set.Count(); c++ {
		if set.IsSet(c) {
			cpus = append(cpus, c)
		}
	}
	return cpus, nil
}

// pinProcess sets the CPU affinity of every thread of this process to
// cpus; each process of the agents-apart mode pins itself with it, the
// bench before it starts the agents' child, the child first thing.
//
// sched_setaffinity acts on one thread, and a new thread takes the mask of
// the thread that creates it. A Go process has threads before main runs
// and the runtime adds more at any time, so pinning one thread (say a
// LockOSThread'ed goroutine's) pins nothing else, and nothing can run
// before the runtime's own threads start (taskset would, but need not be
// installed). So it pins every thread in /proc/self/task, then lists
// again until a listing shows no thread it has not pinned: a thread
// created after that listing was created by a pinned one. A thread that
// exits meanwhile is skipped.
func pinProcess(cpus []int) error {
	var set unix.CPUSet
	for _, c := range cpus {
		set.Set(c)
	}
	pinned := map[int]bool{}
	for {
		tids, err := threadIDs(os.Getpid())
		if err != nil {
			return err
		}
		fresh := 0
		for _, tid := range tids {
			if pinned[tid] {
				continue
			}
			if err := unix.SchedSetaffinity(tid, &set); err != nil && !errors.Is(err, unix.ESRCH) {
				return fmt.Errorf("pin thread %d to CPUs %s: %w", tid, formatCPUs(cpus), err)
			}
			pinned[tid] = true
			fresh++
		}
		if fresh == 0 {
			return nil
		}
	}
}

// threadIDs lists the threads of process pid.
func threadIDs(pid int) ([]int, error) {
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		return nil, fmt.Errorf("list threads: %w", err)
	}
	tids := make([]int, 0, len(ents))
	for _, e := range ents {
		if tid, err := strconv.Atoi(e.Name()); err == nil {
			tids = append(tids, tid)
		}
	}
	return tids, nil
}

// threadCPUs reads the Cpus_allowed_list of every thread of process pid:
// the distinct lists, joined by " / " (one list when every thread has the
// same), and the number of threads read.
func threadCPUs(pid int) (string, int, error) {
	tids, err := threadIDs(pid)
	if err != nil {
		return "", 0, err
	}
	var lists []string
	n := 0
	for _, tid := range tids {
		b, err := os.ReadFile(filepath.Join(fmt.Sprintf("/proc/%d/task/%d", pid, tid), "status"))
		if err != nil {
			continue // the thread exited
		}
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "Cpus_allowed_list:"); ok {
				n++
				if v = strings.TrimSpace(v); !slices.Contains(lists, v) {
					lists = append(lists, v)
				}
			}
		}
	}
	if n == 0 {
		return "", 0, fmt.Errorf("no Cpus_allowed_list in /proc/%d/task/*/status", pid)
	}
	slices.Sort(lists)
	return strings.Join(lists, " / "), n, nil
}

// apartProcAttr makes the agents' child die with SIGKILL when the bench
// dies. The kernel sends it when the thread that started the child exits;
// Go ends a thread only when a goroutine locked to it returns, which the
// bench never does, and the child also exits when its stdin closes, which
// the bench's death does too.
func apartProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
