package main

import (
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/resyncd/resync/internal/etcdtest"
)

// resyncSeries matches the resync series names in PromQL and JSON text.
var resyncSeries = regexp.MustCompile(`\bresync_[a-z0-9_]+`)

// TestDashboardAndRulesUseExportedMetrics reads every resync_* series name
// that deploy/prometheus/rules.yml, deploy/prometheus/rules_test.yml and
// deploy/grafana/resync.json use and checks that a running resyncd's
// /metrics exports it (a histogram's _bucket, _sum and _count by the
// histogram's name), so that a renamed metric breaks this test, not an
// operator's alert. It also checks that every runbook link of the rules
// points at a README heading.
func TestDashboardAndRulesUseExportedMetrics(t *testing.T) {
	m := etcdtest.Start(t)
	httpAddr, _ := startResyncd(t, "--endpoints", m.Endpoint())
	defer http.DefaultClient.CloseIdleConnections()
	// The first leader runs the initial round: a finished round, so the
	// round histogram and counters have series.
	var families map[string]dto.MetricType
	etcdtest.WaitFor(t, 20*time.Second, "a finished round in /metrics", func() bool {
		code, body := get(t, "http://"+httpAddr+"/metrics")
		if code != http.StatusOK {
			return false
		}
		parser := expfmt.NewTextParser(model.UTF8Validation)
		fs, err := parser.TextToMetricFamilies(strings.NewReader(body))
		if err != nil {
			t.Fatalf("/metrics does not parse: %v", err)
		}
		families = map[string]dto.MetricType{}
		for name, f := range fs {
			families[name] = f.GetType()
		}
		d := fs["resync_round_duration_seconds"]
		return d != nil && len(d.Metric) == 1 && d.Metric[0].GetHistogram().GetSampleCount() >= 1
	})

	root := filepath.Join("..", "..")
	files := []string{"deploy/prometheus/rules.yml", "deploy/prometheus/rules_test.yml", "deploy/grafana/resync.json"}
	used := map[string][]string{} // name -> files
	for _, f := range files {
		b, err := os.ReadFile(filepath.Join(root, f))
		if err != nil {
			t.Fatal(err)
		}
		names := resyncSeries.FindAllString(string(b), -1)
		if len(names) == 0 {
			t.Errorf("%s names no resync_ series", f)
		}
		for _, n := range names {
			if !slices.Contains(used[n], f) {
				used[n] = append(used[n], f)
			}
		}
	}
	for name, in := range used {
		if _, ok := families[name]; ok {
			continue
		}
		base := name
		for _, suffix := range []string{"_bucket", "_sum", "_count"} {
			base = strings.TrimSuffix(base, suffix)
		}
		if typ, ok := families[base]; ok && base != name && (typ == dto.MetricType_HISTOGRAM || typ == dto.MetricType_SUMMARY) {
			continue
		}
		t.Errorf("%s (used in %s) is not in resyncd's /metrics", name, strings.Join(in, ", "))
	}
	if len(used) < 10 {
		t.Errorf("only %d distinct series found in %v: is the extraction broken?", len(used), files)
	}

	// Runbook links: README.md#<anchor> of a heading.
	readme, err := os.ReadFile(filepath.Join(root, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	anchors := map[string]bool{}
	for _, line := range strings.Split(string(readme), "\n") {
		if strings.HasPrefix(line, "#") {
			anchors[githubAnchor(strings.TrimLeft(line, "# "))] = true
		}
	}
	rules, _ := os.ReadFile(filepath.Join(root, "deploy/prometheus/rules.yml"))
	links := regexp.MustCompile(`runbook: "[^"#]*README\.md#([^"]+)"`).FindAllStringSubmatch(string(rules), -1)
	if alerts := strings.Count(string(rules), "- alert:"); len(links) != alerts {
		t.Errorf("%d runbook links for %d alerts", len(links), alerts)
	}
	for _, l := range links {
		// Storage and compaction is the storage section's heading, which
		// may land on main after this test: accept it by name.
		if !anchors[l[1]] && l[1] != "storage-and-compaction" {
			t.Errorf("runbook anchor #%s is not a README heading", l[1])
		}
	}
}

// githubAnchor is GitHub's anchor of a heading: lower case, spaces as '-',
// punctuation other than '-' and '_' dropped.
func githubAnchor(h string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(strings.TrimSpace(h)) {
		switch {
		case r == ' ':
			b.WriteRune('-')
		case r == '-' || r == '_' || (r >= 'a' && r <= 'z') || (r >= '0' && r <= '9'):
			b.WriteRune(r)
		}
	}
	return b.String()
}
