package main

import (
	"testing"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/resyncd/resync/coordinator"
	"github.com/resyncd/resync/internal/testing/etcdtest"
	"github.com/resyncd/resync/internal/testing/handagent"
	"github.com/resyncd/resync/schema"
)

var layout = schema.MustLayout(schema.DefaultPrefix)

// startCoordinator runs a real coordinator with short timings.
func startCoordinator(t *testing.T, endpoint, id string) *coordinator.Coordinator {
	t.Helper()
	c, err := etcdtest.NewClient(endpoint)
	if err != nil {
		t.Fatal(err)
	}
	cfg := coordinator.DefaultConfig()
	cfg.ID = id
	cfg.SessionTTL = 2 * time.Second
	cfg.RoundDeadline = 30 * time.Second
	cfg.BackoffMin = 200 * time.Millisecond
	cfg.BackoffMax = time.Second
	cfg.OpTimeout = 2 * time.Second
	co, err := coordinator.New(c, cfg, coordinator.WithLogger(quietLogger(t)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		co.Close()
		c.Close()
	})
	return co
}

func quietLogger(t *testing.T) logrus.FieldLogger { return etcdtest.Logger(t, "warn") }

// startHandAgent starts a hand-written agent (internal/testing/handagent) on endpoint.
func startHandAgent(t *testing.T, endpoint, name string, plugins []string, behave map[string]string) *handagent.Agent {
	t.Helper()
	return handagent.Start(t, []string{endpoint}, name, plugins, behave)
}
