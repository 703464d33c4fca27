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

	"github.com/resyncd/resync/internal/testing/etcdtest"
)

// resyncSeries matches the resync series names in PromQL and JSON text.
var resyncSeries = regexp.MustCompile(`\bresync_[a-z0-9_]+`)

// TestDashboardAndRulesUseExportedMetrics reads every resync_* series name
// that deploy/prometheus/rules.yml, deploy/prometheus/rules_test.yml and
// deploy/grafana/resync.json use and checks that a running resyncd's
// /metrics exports it (a histogram's _bucket, _sum and _count by the
// histogram's name), so that a renamed metric breaks this test, not an
// operator's alert. The rules' runbook links are checked with the other
// links of the documentation, by docs_test.go at the repository's root.
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
}
