package main

import (
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/resyncd/resync/schema"
)

// writeJSON writes v as one indented JSON document.
func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// newTable returns an aligned table writer; Flush it.
func newTable(w io.Writer) *tabwriter.Writer {
	return tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
}

// row writes one tab-separated table row.
func row(tw io.Writer, cells ...any) {
	s := make([]string, len(cells))
	for i, c := range cells {
		s[i] = cell(fmt.Sprint(c))
	}
	fmt.Fprintln(tw, strings.Join(s, "\t"))
}

// cell keeps a value on one table line: control characters (tabs, newlines)
// of free text would break the alignment.
func cell(s string) string {
	if s == "" {
		return "-"
	}
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return ' '
		}
		return r
	}, s)
}

// timestamp formats t as stored (RFC 3339, seconds), "-" when zero.
func timestamp(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.Format(time.RFC3339)
}

// ago is a human duration relative to now: "12s ago", "in 1m48s".
func ago(t, now time.Time) string {
	if t.IsZero() {
		return ""
	}
	d := now.Sub(t)
	if d >= 0 {
		return roundDuration(d).String() + " ago"
	}
	return "in " + roundDuration(-d).String()
}

// roundDuration rounds for display: ms below a second, then 0.1 s, then s.
func roundDuration(d time.Duration) time.Duration {
	switch {
	case d < time.Second:
		return d.Round(time.Millisecond)
	case d < time.Minute:
		return d.Round(100 * time.Millisecond)
	}
	return d.Round(time.Second)
}

func durationMS(ms float64) string {
	return roundDuration(time.Duration(ms * float64(time.Millisecond))).String()
}

func ids(l []schema.PluginID) string {
	s := make([]string, len(l))
	for i, id := range l {
		s[i] = id.String()
	}
	return strings.Join(s, ", ")
}

// listFirst joins at most n names and says how many more there are.
func listFirst(names []string, n int) string {
	if len(names) <= n {
		return strings.Join(names, ", ")
	}
	return fmt.Sprintf("%s and %d more", strings.Join(names[:n], ", "), len(names)-n)
}

// scopeText is a scope for tables.
func scopeText(s schema.ScopeSummary) string { return s.String() }

// countsText is a one-line summary of outcome counts.
func countsText(c schema.RoundCounts) string {
	return fmt.Sprintf("%d participants: %d acked, %d pending, %d failed, %d timed out, %d departed",
		c.Participants, c.Acked, c.Pending, c.Failed, c.TimedOut, c.Departed)
}

func itoa(n int) string { return strconv.Itoa(n) }
