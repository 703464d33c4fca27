//go:build !linux

package main

import (
	"errors"
	"syscall"
)

// errNoAffinity is returned by every function of this file: the
// agents-apart mode pins its processes with Linux's sched_setaffinity.
var errNoAffinity = errors.New("-agents-apart needs Linux (it pins processes with sched_setaffinity)")

func allowedCPUs() ([]int, error)         { return nil, errNoAffinity }
func pinProcess([]int) error              { return errNoAffinity }
func threadCPUs(int) (string, int, error) { return "", 0, errNoAffinity }
func apartProcAttr() *syscall.SysProcAttr { return nil }
