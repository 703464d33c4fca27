package main

import (
	"github.com/resyncd/resync/schema"

	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"
)

// size is agents x plugins per agent.
// size is a fleet of Agents x Plugins; with Target > 0 the measured rounds
// are requested for the first Target agents only (AxP@T).
type size struct{ Agents, Plugins, Target int }

func (s size) String() string {
	if s.Target > 0 {
		return fmt.Sprintf("%dx%d@%d", s.Agents, s.Plugins, s.Target)
	}
	return fmt.Sprintf("%dx%d", s.Agents, s.Plugins)
}
func (s size) participants() int         { return s.Agents * s.Plugins }
func (s size) clients(perClient int) int { return (s.Agents + perClient - 1) / perClient }

// measured is the part of the fleet a measured round reaches.
func (s size) measured() size {
	if s.Target > 0 {
		return size{Agents: s.Target, Plugins: s.Plugins}
	}
	return s
}

func parseSize(s string) (size, error) {
	spec, target, hasTarget := strings.Cut(strings.TrimSpace(s), "@")
	a, p, ok := strings.Cut(spec, "x")
	na, err1 := strconv.Atoi(a)
	np, err2 := strconv.Atoi(p)
	if !ok || err1 != nil || err2 != nil || na < 1 || np < 1 {
		return size{}, fmt.Errorf("size %q is not AGENTSxPLUGINS or AGENTSxPLUGINS@TARGETED (e.g. 100x10, 1000x10@100)", s)
	}
	z := size{Agents: na, Plugins: np}
	if hasTarget {
		nt, err := strconv.Atoi(target)
		if err != nil || nt < 1 || nt > na || nt > schema.MaxRequestTargets {
			return size{}, fmt.Errorf("size %q: @TARGETED must be 1 to min(AGENTS, %d)", s, schema.MaxRequestTargets)
		}
		z.Target = nt
	}
	return z, nil
}

func parseSizes(s string) ([]size, error) {
	var out []size
	for _, f := range strings.Split(s, ",") {
		if strings.TrimSpace(f) == "" {
			continue
		}
		z, err := parseSize(f)
		if err != nil {
			return nil, err
		}
		out = append(out, z)
	}
	return out, nil
}

func parseInts(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		n, err := strconv.Atoi(f)
		if err != nil || n < 1 {
			return nil, fmt.Errorf("%q is not a positive integer", f)
		}
		out = append(out, n)
	}
	slices.Sort(out)
	return slices.Compact(out), nil
}

// Dist summarises samples in milliseconds. Percentiles are nearest-rank: with
// 20 samples p99 is the largest.
type Dist struct {
	N    int       `json:"n"`
	P50  float64   `json:"p50_ms"`
	P99  float64   `json:"p99_ms"`
	Min  float64   `json:"min_ms"`
	Max  float64   `json:"max_ms"`
	Mean float64   `json:"mean_ms"`
	All  []float64 `json:"samples_ms"`
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func dist(samples []time.Duration) Dist {
	if len(samples) == 0 {
		return Dist{}
	}
	all := make([]float64, len(samples))
	var sum float64
	for i, s := range samples {
		all[i] = ms(s)
		sum += all[i]
	}
	sorted := slices.Clone(all)
	slices.Sort(sorted)
	return Dist{N: len(all), P50: rank(sorted, 50), P99: rank(sorted, 99), Min: sorted[0], Max: sorted[len(sorted)-1],
		Mean: sum / float64(len(all)), All: all}
}

// rank is the nearest-rank percentile of sorted.
func rank(sorted []float64, p float64) float64 {
	i := int(p/100*float64(len(sorted))+0.999999) - 1
	return sorted[max(0, min(i, len(sorted)-1))]
}

func ratio(a, b float64) float64 {
	if b <= 0 {
		return 0
	}
	return a / b
}
