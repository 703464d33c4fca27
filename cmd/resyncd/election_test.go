package main

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/resyncd/resync/coordinator"
	"github.com/resyncd/resync/internal/testing/etcdtest"
	"github.com/resyncd/resync/schema"
)

// TestReadyzAndStatusIgnoreElectionGarbage: with only stray keys under
// election/ (no coordinator reaches etcd), /readyz is 503 and /status names
// no leader; once a coordinator leads, both name it.
func TestReadyzAndStatusIgnoreElectionGarbage(t *testing.T) {
	m := etcdtest.Start(t)
	c := m.Client(t)
	layout := schema.MustLayout(schema.DefaultPrefix)
	ctx := t.Context()
	if _, err := c.Put(ctx, layout.Election()+"/garbage", "x"); err != nil {
		t.Fatal(err)
	}
	lease, err := c.Grant(ctx, 60)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Put(ctx, layout.Election()+"/x", "impostor", clientv3.WithLease(lease.ID)); err != nil {
		t.Fatal(err)
	}
	// This process's coordinator cannot reach etcd: none leads.
	proxy := etcdtest.NewProxy(t, m.Endpoint())
	proxy.Cut()
	pc, err := etcdtest.NewClient(proxy.Endpoint)
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	cfg := coordinator.DefaultConfig()
	cfg.ID, cfg.OpTimeout, cfg.SessionTTL = "rd1", time.Second, 2*time.Second
	co, err := coordinator.New(pc, cfg, coordinator.WithLogger(quiet()))
	if err != nil {
		t.Fatal(err)
	}
	defer co.Close()
	h := &handlers{co: co, c: c, layout: layout, reg: prometheus.NewRegistry(), timeout: 2 * time.Second, fatal: func() error { return nil }}
	mux := h.mux()
	serve := func(path string) (int, string) {
		rec := httptest.NewRecorder()
		mux.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
		return rec.Code, rec.Body.String()
	}
	if code, body := serve("/readyz"); code != http.StatusServiceUnavailable || !strings.Contains(body, "no coordinator leads") {
		t.Fatalf("/readyz with only garbage under election/ = %d %q; want 503 no coordinator leads", code, body)
	}
	code, body := serve("/status")
	var doc statusDoc
	if err := json.Unmarshal([]byte(body), &doc); err != nil || code != http.StatusOK || doc.Leader != "" {
		t.Fatalf("/status = %d %s (%v); want leader empty", code, body, err)
	}

	proxy.Restore()
	etcdtest.WaitFor(t, 20*time.Second, "rd1 to lead despite the garbage", func() bool { return co.Status().Leading })
	if code, body := serve("/readyz"); code != http.StatusOK || !strings.Contains(body, "leading (rd1)") {
		t.Fatalf("/readyz = %d %q; want 200 leading (rd1)", code, body)
	}
}
