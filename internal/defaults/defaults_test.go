package defaults

import (
	"testing"
	"time"
)

type conf struct {
	Name     string
	TTL      time.Duration
	Min, Max time.Duration
	Count    int
	hidden   int
}

func TestFill(t *testing.T) {
	d := conf{Name: "d", TTL: 10 * time.Second, Min: 100 * time.Millisecond, Max: 5 * time.Second, Count: 64, hidden: 7}
	for _, tc := range []struct {
		name string
		in   conf
		want conf
	}{
		{"zero takes every default", conf{}, conf{Name: "d", TTL: 10 * time.Second, Min: 100 * time.Millisecond, Max: 5 * time.Second, Count: 64}},
		{"set fields are kept", conf{Name: "a", Min: 10 * time.Second}, conf{Name: "a", TTL: 10 * time.Second, Min: 10 * time.Second, Max: 5 * time.Second, Count: 64}},
		{"negative values are kept for Validate", conf{TTL: -time.Second, Count: -1}, conf{Name: "d", TTL: -time.Second, Min: 100 * time.Millisecond, Max: 5 * time.Second, Count: -1}},
		{"unexported fields are left alone", conf{hidden: 1}, conf{Name: "d", TTL: 10 * time.Second, Min: 100 * time.Millisecond, Max: 5 * time.Second, Count: 64, hidden: 1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := Fill(tc.in, d); got != tc.want {
				t.Fatalf("Fill(%+v) = %+v, want %+v", tc.in, got, tc.want)
			}
		})
	}
}
