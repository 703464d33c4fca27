package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"go.uber.org/goleak"

	resync "github.com/resyncd/resync"
	"github.com/resyncd/resync/cmd/resyncd/internal/metrics"
	"github.com/resyncd/resync/internal/testing/etcdtest"
	"github.com/resyncd/resync/schema"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m, etcdtest.LeakOptions()...) }

// startResyncd runs resyncd in-process until the test ends.
func startResyncd(t *testing.T, args ...string) (httpAddr string, stderr *etcdtest.Buffer) {
	t.Helper()
	httpAddr = etcdtest.FreeAddr(t)
	stderr = &etcdtest.Buffer{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, append([]string{"--http-addr", httpAddr, "--session-ttl", "2s", "--id", "rd1"}, args...), io.Discard, stderr)
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case code := <-done:
			if code != 0 {
				t.Errorf("resyncd exited %d: %s", code, stderr.String())
			}
		case <-time.After(15 * time.Second):
			t.Errorf("resyncd did not stop within 15s")
		}
	})
	etcdtest.WaitFor(t, 20*time.Second, "resyncd /readyz", func() bool {
		code, _ := get(t, "http://"+httpAddr+"/readyz")
		return code == http.StatusOK
	})
	return httpAddr, stderr
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestServesMetricsStatusAndHealthAfterARound(t *testing.T) {
	m := etcdtest.Start(t)
	httpAddr, _ := startResyncd(t, "--endpoints", m.Endpoint(), "--backoff-min", "100ms")
	base := "http://" + httpAddr
	defer http.DefaultClient.CloseIdleConnections()

	// A real agent through the public API, one plugin failing once.
	c := m.Client(t)
	p, err := resync.New(resync.Deps{Client: c, Log: quiet()}, resync.Config{Agent: "a1", TTL: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	var failed sync.Once
	for _, name := range []string{"ok", "flaky"} {
		reg := p.Register(name)
		go func() {
			for {
				var ev resync.StatusEvent
				select {
				case ev = <-reg.StatusChan():
				case <-p.Done(): // status channels are never closed
					return
				}
				e := ev.(*resync.Event)
				if name == "flaky" && e.ResyncStatus() == resync.Started && !e.Join() {
					done := false
					failed.Do(func() { e.AckError(fmt.Errorf("boom")); done = true })
					if done {
						continue
					}
				}
				ev.Ack()
			}
		}()
	}
	p.Register("bad\x00name") // refused: a control character; counted in /metrics
	// A manual request, then wait for the failure's retry round to be clean.
	b, _ := schema.Encode(schema.Request{Reason: "test", Cause: schema.CauseManual, RequestedBy: "test", RequestedAt: time.Now().UTC()})
	if _, err := c.Put(context.Background(), schema.MustLayout("").OperatorRequest(schema.NewRequestID(time.Now())), string(b)); err != nil {
		t.Fatal(err)
	}
	var doc statusDoc
	etcdtest.WaitFor(t, 20*time.Second, "a clean retry round after the failure", func() bool {
		code, body := get(t, base+"/status")
		if code != 200 || json.Unmarshal([]byte(body), &doc) != nil {
			return false
		}
		return doc.Revision != nil && doc.Revision.Revision >= 3 && doc.Revision.State == schema.NotActive &&
			doc.Round != nil && doc.Round.Clean()
	})
	if doc.Leader != "rd1" || !doc.Coordinator.Leading {
		t.Errorf("status leader %q leading %v", doc.Leader, doc.Coordinator.Leading)
	}

	// The metrics hear of a finished round after /status does (the
	// coordinator's hooks run after its status is set): scraped until
	// they count the retry round.
	var families map[string]*dto.MetricFamily
	etcdtest.WaitFor(t, 10*time.Second, "/metrics to count the retry round", func() bool {
		code, body := get(t, base+"/metrics")
		if code != 200 {
			t.Fatalf("/metrics: %d", code)
		}
		parser := expfmt.NewTextParser(model.UTF8Validation)
		var err error
		if families, err = parser.TextToMetricFamilies(strings.NewReader(body)); err != nil {
			t.Fatalf("/metrics does not parse: %v", err)
		}
		f := families[metrics.RoundDuration]
		return f != nil && len(f.Metric) > 0 && f.Metric[0].Histogram != nil && f.Metric[0].Histogram.GetSampleCount() >= 3
	})
	value := func(name, label, lv string) float64 {
		f := families[name]
		if f == nil {
			t.Fatalf("/metrics lacks %s", name)
		}
		for _, m := range f.Metric {
			ok := label == ""
			for _, l := range m.Label {
				if l.GetName() == label && l.GetValue() == lv {
					ok = true
				}
			}
			if !ok {
				continue
			}
			switch {
			case m.Counter != nil:
				return m.Counter.GetValue()
			case m.Gauge != nil:
				return m.Gauge.GetValue()
			case m.Histogram != nil:
				return float64(m.Histogram.GetSampleCount())
			}
		}
		t.Fatalf("%s{%s=%q} not found", name, label, lv)
		return 0
	}
	if v := value(metrics.RoundsTotal, "result", "unclean"); v < 1 {
		t.Errorf("unclean rounds = %v, want >= 1", v)
	}
	if v := value(metrics.RoundsTotal, "result", "clean"); v < 2 {
		t.Errorf("clean rounds = %v, want >= 2 (initial and the retry)", v)
	}
	if v := value(metrics.RoundDuration, "", ""); v < 3 {
		t.Errorf("round duration samples = %v", v)
	}
	if v := value(metrics.ParticipantsTotal, "outcome", "failed"); v != 1 {
		t.Errorf("failed participants = %v, want 1", v)
	}
	if v := value(metrics.ParticipantsTotal, "outcome", "acked"); v < 2 {
		t.Errorf("acked participants = %v", v)
	}
	etcdtest.WaitFor(t, 10*time.Second, "the refused registration in /metrics", func() bool {
		_, body := get(t, base+"/metrics")
		return strings.Contains(body, "\n"+metrics.RefusedRegs+" 1\n")
	})
	if v := value(metrics.Leader, "", ""); v != 1 {
		t.Errorf("leader gauge = %v", v)
	}
	if v := value(metrics.RequestsTotal, "cause", "manual"); v != 1 {
		t.Errorf("manual requests = %v", v)
	}
	if v := value(metrics.RequestsTotal, "cause", "error"); v < 1 {
		t.Errorf("error requests = %v (the retry)", v)
	}
	if v := value(metrics.BackoffSeconds, "", ""); v <= 0 {
		t.Errorf("backoff gauge = %v", v)
	}
	value(metrics.RoundParticipants, "", "")
	if code, body := get(t, base+"/healthz"); code != 200 || !strings.Contains(body, "ok") {
		t.Errorf("/healthz: %d %s", code, body)
	}
	if code, body := get(t, base+"/readyz"); code != 200 || !strings.Contains(body, "leading") {
		t.Errorf("/readyz: %d %s", code, body)
	}
}

func TestBadFlagsAndUnreachableEtcd(t *testing.T) {
	dead := etcdtest.DeadAddr(t)
	for _, tc := range []struct {
		name string
		args []string
		code int
		want string
	}{
		{"unknown flag", []string{"--nope"}, 2, "unknown flag: --nope (run 'resyncd --help' for the flags)"},
		{"unknown single-dash flag", []string{"-nope"}, 2, "unknown flag: --nope"},
		{"single-dash long flag", []string{"-http-addr", "0.0.0.0:0"}, 2, "add --http-public"},
		{"single-dash long flag with =", []string{"-http-addr=0.0.0.0:0"}, 2, "add --http-public"},
		{"bad duration", []string{"--session-ttl", "soon"}, 2, `invalid argument "soon" for "--session-ttl" flag`},
		{"short ttl", []string{"--session-ttl", "10ms"}, 2, "below the 1s minimum"},
		{"bad log format", []string{"--log-format", "xml"}, 2, "use text or json"},
		{"public http", []string{"--http-addr", "0.0.0.0:0"}, 2, "add --http-public"},
		{"argument", []string{"extra"}, 2, "unexpected argument"},
		{"unreachable", []string{"--endpoints", dead, "--dial-timeout", "1s", "--http-addr", "127.0.0.1:0"}, 1, "cannot reach etcd at " + dead + " within 1s"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var stderr etcdtest.Buffer
			start := time.Now()
			code := run(context.Background(), tc.args, io.Discard, &stderr)
			out := stderr.String()
			if code != tc.code || !strings.Contains(out, tc.want) {
				t.Fatalf("exit %d, stderr %q; want exit %d mentioning %q", code, out, tc.code, tc.want)
			}
			if strings.Contains(out, "goroutine ") || strings.Contains(out, "panic") {
				t.Fatalf("stack trace in %q", out)
			}
			if tc.code == 1 {
				if lines := strings.Count(strings.TrimSpace(out), "\n") + 1; lines != 1 {
					t.Errorf("%d lines of error, want 1: %q", lines, out)
				}
				if d := time.Since(start); d > 5*time.Second {
					t.Errorf("took %v for a 1s dial timeout", d)
				}
			}
		})
	}
	t.Setenv("RESYNC_SESSION_TTL", "nonsense")
	var stderr etcdtest.Buffer
	if code := run(context.Background(), nil, io.Discard, &stderr); code != 2 || !strings.Contains(stderr.String(), "RESYNC_SESSION_TTL") {
		t.Fatalf("bad env value: exit %d %q", code, stderr.String())
	}
}

func TestProbe(t *testing.T) {
	m := etcdtest.Start(t)
	httpAddr, _ := startResyncd(t, "--endpoints", m.Endpoint())
	defer http.DefaultClient.CloseIdleConnections()
	var out bytes.Buffer
	if code := run(context.Background(), []string{"--probe", "http://" + httpAddr + "/readyz"}, &out, io.Discard); code != 0 || !strings.Contains(out.String(), "ready") {
		t.Fatalf("probe of a ready resyncd: %d %q", code, out.String())
	}
	if code := run(context.Background(), []string{"--probe", "http://" + etcdtest.FreeAddr(t) + "/readyz"}, io.Discard, io.Discard); code != 1 {
		t.Fatalf("probe of nothing: %d", code)
	}
}
