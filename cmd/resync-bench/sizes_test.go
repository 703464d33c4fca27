package main

import (
	"strings"
	"testing"
	"time"
)

func TestParseSize(t *testing.T) {
	for _, tc := range []struct {
		in     string
		want   size
		window int // with -budget-window 200
		err    string
	}{
		{in: "100x10", want: size{Agents: 100, Plugins: 10}},
		{in: "10000x10@100", want: size{Agents: 10000, Plugins: 10, Target: 100}},
		{in: "5000x10~500", want: size{Agents: 5000, Plugins: 10, Wave: "500"}, window: 500},
		{in: "5000x10~10%", want: size{Agents: 5000, Plugins: 10, Wave: "10%"}, window: 500},
		{in: "10000x10~budget", want: size{Agents: 10000, Plugins: 10, Wave: waveBudget}, window: 200},
		{in: "10000x10@100~10%", want: size{Agents: 10000, Plugins: 10, Target: 100, Wave: "10%"}, window: 10},
		{in: "20x2~50", want: size{Agents: 20, Plugins: 2, Wave: "50"}, window: 50},
		{in: "20x2~1%", want: size{Agents: 20, Plugins: 2, Wave: "1%"}, window: 1},
		{in: "10000x10@101", err: "@TARGETED must be 1 to min(AGENTS, 100)"},
		{in: "10x10@11", err: "@TARGETED"},
		{in: "10x10~0", err: "is not a window"},
		{in: "10x10~0%", err: "is not a window"},
		{in: "10x10~101%", err: "is not a window"},
		{in: "10x10~", err: "is not a window"},
		{in: "10x10~ten", err: "is not a window"},
		{in: "10x~5", err: "is not AGENTSxPLUGINS"},
		{in: "5000x10~500+10ms", want: size{Agents: 5000, Plugins: 10, Wave: "500", Reload: 10 * time.Millisecond}, window: 500},
		{in: "100x10+1.5ms", want: size{Agents: 100, Plugins: 10, Reload: 1500 * time.Microsecond}},
		{in: "100x10+0s", err: "is not a plugin reload time"},
		{in: "100x10+2m0s", err: "is not a plugin reload time"},
		{in: "100x10+fast", err: "is not a plugin reload time"},
	} {
		t.Run(tc.in, func(t *testing.T) {
			got, err := parseSize(tc.in)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Errorf("parseSize(%q) = %+v, %v; want an error with %q", tc.in, got, err, tc.err)
				}
				return
			}
			if err != nil || got != tc.want || got.String() != tc.in {
				t.Fatalf("parseSize(%q) = %+v (%q), %v; want %+v", tc.in, got, got, err, tc.want)
			}
			if w := got.window(200); w != tc.window {
				t.Errorf("%s: window %d, want %d", tc.in, w, tc.window)
			}
			req, coord := got.waves(200)
			if onRequest := req != nil; onRequest != (tc.window > 0 && got.Wave != waveBudget) || (coord.MaxInFlight != "") != (got.Wave == waveBudget) {
				t.Errorf("%s: request wave %+v, coordinator wave %+v", tc.in, req, coord)
			}
		})
	}
}
