package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/resyncd/resync/coordinator"
	"github.com/resyncd/resync/internal/etcdspace"
	"github.com/resyncd/resync/schema"
)

// statusDoc is the JSON of /status.
type statusDoc struct {
	Coordinator coordinator.Status `json:"coordinator"`
	// Leader is the leading coordinator's id, read from etcd.
	Leader string `json:"leader"`
	// Revision is the current revision record, read from etcd.
	Revision *schema.Revision `json:"revision,omitempty"`
	// Round is the current round's record (participants, outcomes so far
	// for a finished round).
	Round *schema.Round `json:"round,omitempty"`
	// Progress counts the running round's outcomes (from the leader).
	Progress *schema.RoundCounts `json:"progress,omitempty"`
	// Storage is etcd's database size against its quota, as last read
	// (every 30 s); its warning is set past 80% of the quota or with a
	// NOSPACE alarm, and space_exhausted while the alarm stands and resyncd
	// will not clear it by itself (the warning then names the fix).
	Storage *etcdspace.Usage `json:"storage,omitempty"`
	Error   string           `json:"error,omitempty"`
}

type handlers struct {
	co      *coordinator.Coordinator
	c       *clientv3.Client
	layout  schema.Layout
	reg     *prometheus.Registry
	timeout time.Duration
	storage *etcdspace.Monitor
	fatal   func() error // non-nil error: the process is unhealthy
}

func (h *handlers) mux() *http.ServeMux {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(h.reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /healthz", h.healthz)
	mux.HandleFunc("GET /readyz", h.readyz)
	mux.HandleFunc("GET /status", h.status)
	return mux
}

// healthz: the process serves and its embedded etcd (if any) has not failed.
func (h *handlers) healthz(w http.ResponseWriter, _ *http.Request) {
	if err := h.fatal(); err != nil {
		http.Error(w, "unhealthy: "+err.Error(), http.StatusServiceUnavailable)
		return
	}
	fmt.Fprintln(w, "ok")
}

// readyz: etcd answers, and a leader is known (this one or another).
func (h *handlers) readyz(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), h.timeout)
	defer cancel()
	id, _, err := coordinator.Leader(ctx, h.c, h.layout)
	switch {
	case err != nil:
		http.Error(w, "not ready: etcd unreachable: "+err.Error(), http.StatusServiceUnavailable)
	case id == "":
		http.Error(w, "not ready: no coordinator leads yet", http.StatusServiceUnavailable)
	case h.co.Status().Leading:
		fmt.Fprintf(w, "ready: leading (%s)\n", id)
	default:
		fmt.Fprintf(w, "ready: standby, leader is %s\n", id)
	}
}

func (h *handlers) status(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), h.timeout)
	defer cancel()
	doc := statusDoc{Coordinator: h.co.Status()}
	doc.Progress = doc.Coordinator.Progress
	if h.storage != nil {
		if u, at, err := h.storage.Last(); !at.IsZero() && err == nil {
			doc.Storage = &u
		}
	}
	if err := h.read(ctx, &doc); err != nil {
		doc.Error = err.Error()
	}
	w.Header().Set("Content-Type", "application/json")
	code := http.StatusOK
	if doc.Error != "" {
		code = http.StatusServiceUnavailable
	}
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(doc)
}

func (h *handlers) read(ctx context.Context, doc *statusDoc) error {
	id, _, err := coordinator.Leader(ctx, h.c, h.layout)
	if err != nil {
		return err
	}
	doc.Leader = id
	resp, err := h.c.Get(ctx, h.layout.Revision())
	if err != nil {
		return fmt.Errorf("read %s: %w", h.layout.Revision(), err)
	}
	if len(resp.Kvs) == 0 {
		return nil
	}
	rev, err := h.layout.DecodeRevision(h.layout.Revision(), resp.Kvs[0].Value)
	if err != nil {
		return err
	}
	doc.Revision = &rev
	rr, err := h.c.Get(ctx, h.layout.Round(rev.Revision))
	if err != nil {
		return fmt.Errorf("read %s: %w", h.layout.Round(rev.Revision), err)
	}
	if len(rr.Kvs) == 1 {
		round, err := h.layout.DecodeRound(h.layout.Round(rev.Revision), rr.Kvs[0].Value)
		if err != nil {
			return err
		}
		doc.Round = &round
	}
	return nil
}
