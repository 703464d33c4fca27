package main

import (
	"github.com/resyncd/resync/schema"

	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"
)

// size is a fleet of Agents x Plugins; with Target > 0 the measured rounds
// are requested for the first Target agents only (AxP@T); with Wave set
// they run in waves (AxP~W, AxP~W%, AxP~budget: waves.go).
type size struct {
	Agents, Plugins, Target int
	// Wave is the window as written after "~": a count ("500"), a
	// percentage of the round's agents ("10%"), both asked on the request,
	// or waveBudget: -budget-window agents, set on the coordinator; "": no
	// waves.
	Wave string
	// Reload is how long each plugin takes to reload before it acks a
	// Started (written "+10ms"); 0: it acks at once. A real plugin
	// re-reads its state and reprograms its dataplane; an instant one
	// makes a round measure only the protocol.
	Reload time.Duration
}

func (s size) String() string {
	out := fmt.Sprintf("%dx%d", s.Agents, s.Plugins)
	if s.Target > 0 {
		out += fmt.Sprintf("@%d", s.Target)
	}
	if s.Wave != "" {
		out += "~" + s.Wave
	}
	if s.Reload > 0 {
		out += "+" + s.Reload.String()
	}
	return out
}
func (s size) participants() int         { return s.Agents * s.Plugins }
func (s size) clients(perClient int) int { return (s.Agents + perClient - 1) / perClient }

// measured is the part of the fleet a measured round reaches.
func (s size) measured() size {
	if s.Target > 0 {
		return size{Agents: s.Target, Plugins: s.Plugins}
	}
	return size{Agents: s.Agents, Plugins: s.Plugins}
}

// fleet is the size without its wave: the agents that run.
func (s size) fleet() size {
	return size{Agents: s.Agents, Plugins: s.Plugins, Target: s.Target, Reload: s.Reload}
}

const sizeSyntax = "AGENTSxPLUGINS[@TARGETED][~WINDOW|~WINDOW%|~budget][+RELOAD] (e.g. 100x10, 1000x10@100, 5000x10~500, 5000x10~10%, 10000x10~budget, 5000x10~500+10ms)"

func parseSize(s string) (size, error) {
	spec, reload, hasReload := strings.Cut(strings.TrimSpace(s), "+")
	spec, wave, hasWave := strings.Cut(spec, "~")
	spec, target, hasTarget := strings.Cut(spec, "@")
	a, p, ok := strings.Cut(spec, "x")
	na, err1 := strconv.Atoi(a)
	np, err2 := strconv.Atoi(p)
	if !ok || err1 != nil || err2 != nil || na < 1 || np < 1 {
		return size{}, fmt.Errorf("size %q is not %s", s, sizeSyntax)
	}
	z := size{Agents: na, Plugins: np}
	if hasTarget {
		nt, err := strconv.Atoi(target)
		if err != nil || nt < 1 || nt > na || nt > schema.MaxRequestTargets {
			return size{}, fmt.Errorf("size %q: @TARGETED must be 1 to min(AGENTS, %d)", s, schema.MaxRequestTargets)
		}
		z.Target = nt
	}
	if hasWave {
		if err := checkWave(wave); err != nil {
			return size{}, fmt.Errorf("size %q: %w", s, err)
		}
		z.Wave = wave
	}
	if hasReload {
		d, err := time.ParseDuration(reload)
		if err != nil || d <= 0 || d > time.Minute {
			return size{}, fmt.Errorf("size %q: +%s is not a plugin reload time: give a duration above 0 and at most 1m (+10ms)", s, reload)
		}
		z.Reload = d
	}
	return z, nil
}

// checkWave checks a size's window: waveBudget, or a max_in_flight limit
// the coordinator accepts, above 0.
func checkWave(w string) error {
	if w == waveBudget {
		return nil
	}
	err := (schema.Wave{MaxInFlight: schema.Limit(w)}).Validate()
	if err == nil && w == "" {
		err = errors.New("empty")
	}
	if err != nil {
		return fmt.Errorf("~%s is not a window: give ~COUNT (~500), ~PERCENT%% (~10%%) or ~%s (%v)", w, waveBudget, err)
	}
	return nil
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
