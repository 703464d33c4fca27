package main

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/resyncd/resync/internal/testing/etcdtest"
)

// TestStatusNamesNoLeaderForElectionGarbage: a stray key under election/
// is not a leader.
func TestStatusNamesNoLeaderForElectionGarbage(t *testing.T) {
	m := etcdtest.Start(t)
	c := m.Client(t)
	if _, err := c.Put(ctxT(t, 5*time.Second), layout.Election()+"/garbage", "x"); err != nil {
		t.Fatal(err)
	}
	code, out, _ := cli(t, ctxT(t, 20*time.Second), "--endpoints", m.Endpoint(), "status", "-o", "json")
	var doc statusDoc
	if err := json.Unmarshal([]byte(out), &doc); err != nil || code != 0 {
		t.Fatalf("status -o json: exit %d, %v", code, err)
	}
	if doc.Leader != "" {
		t.Fatalf("status names leader %q for a stray key under election/", doc.Leader)
	}
}
