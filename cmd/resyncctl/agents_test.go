package main

import (
	"encoding/json"
	"slices"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/resyncd/resync/internal/testing/etcdtest"
	"github.com/resyncd/resync/internal/testing/handagent"
	"github.com/resyncd/resync/schema"
)

// TestAgentsShowsTheAgentBehind: a running round with a1 all acked, a2 one
// plugin that never acks (behind), a3 one plugin acking an error (worst
// result error, not behind); `agents` says so in JSON and in its table.
func TestAgentsShowsTheAgentBehind(t *testing.T) {
	m := etcdtest.Start(t)
	obs := m.Client(t)
	ep := m.Endpoint()
	startHandAgent(t, ep, "a1", []string{"p1", "p2", "p3"}, nil)
	startHandAgent(t, ep, "a2", []string{"q1", "stuck"}, map[string]string{"stuck": handagent.Never})
	startHandAgent(t, ep, "a3", []string{"e1", "e2"}, map[string]string{"e2": handagent.Error})
	startCoordinator(t, ep, "c1")
	waitRound(t, obs, 1, schema.Started)

	var doc agentsDoc
	etcdtest.WaitFor(t, 15*time.Second, "every ack but a2/stuck's for round 1", func() bool {
		code, out, _ := cli(t, ctxT(t, 10*time.Second), "agents", "-o", "json", "--endpoints", ep)
		doc = agentsDoc{} // Unmarshal into a used value keeps omitted fields
		if code != 0 || json.Unmarshal([]byte(out), &doc) != nil || len(doc.Agents) != 3 {
			return false
		}
		var behind []string
		for _, a := range doc.Agents {
			behind = append(behind, a.BehindPlugins...)
		}
		return slices.Equal(behind, []string{"stuck"})
	})
	if doc.Revision != 1 || doc.State != schema.Started {
		t.Errorf("revision %d %s, want 1 Started", doc.Revision, doc.State)
	}
	byName := map[string]agentDoc{}
	for _, a := range doc.Agents {
		byName[a.Agent] = a
		// handagent's lease TTL is 2 s and kept alive.
		if a.LeaseTTLSeconds < 0 || a.LeaseTTLSeconds > 2 || a.Lease == "0" {
			t.Errorf("%s: lease %s ttl %d, want a live lease with 0-2 s left", a.Agent, a.Lease, a.LeaseTTLSeconds)
		}
	}
	for _, want := range []agentDoc{
		{Agent: "a1", Plugins: []string{"p1", "p2", "p3"}, AckedRevision: 1, Result: schema.ResultOK},
		{Agent: "a2", Plugins: []string{"q1", "stuck"}, AckedRevision: 1, Result: schema.ResultOK, Behind: true, BehindPlugins: []string{"stuck"}},
		{Agent: "a3", Plugins: []string{"e1", "e2"}, AckedRevision: 1, Result: schema.ResultError},
	} {
		got := byName[want.Agent]
		if !slices.Equal(got.Plugins, want.Plugins) || got.AckedRevision != want.AckedRevision || got.Result != want.Result ||
			got.Behind != want.Behind || !slices.Equal(got.BehindPlugins, want.BehindPlugins) {
			t.Errorf("%s: got %+v, want %+v", want.Agent, got, want)
		}
	}

	code, out, _ := cli(t, ctxT(t, 10*time.Second), "--endpoints", ep, "agents")
	if code != 0 {
		t.Fatalf("agents: exit %d", code)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 4 || !strings.HasPrefix(lines[0], "AGENT") {
		t.Fatalf("want a header and one line per agent:\n%s", out)
	}
	for i, want := range [][]string{
		{"a1", "3: p1, p2, p3", " 1 ", " ok ", " no"},
		{"a2", "2: q1, stuck", " 1 ", " ok ", "yes: stuck not at 1"},
		{"a3", "2: e1, e2", " 1 ", " error ", " no"},
	} {
		for _, w := range want {
			if !strings.Contains(lines[i+1], w) {
				t.Errorf("line %q lacks %q", lines[i+1], w)
			}
		}
	}
}

// TestAgentsBeforeAnyRound: registrations but no revision record yet: no
// agent is behind, nothing acked.
func TestAgentsBeforeAnyRound(t *testing.T) {
	m := etcdtest.Start(t)
	ep := m.Endpoint()
	startHandAgent(t, ep, "a1", []string{"p1"}, nil)
	var doc agentsDoc
	etcdtest.WaitFor(t, 10*time.Second, "a1 listed", func() bool {
		code, out, _ := cli(t, ctxT(t, 10*time.Second), "agents", "-o", "json", "--endpoints", ep)
		return code == 0 && json.Unmarshal([]byte(out), &doc) == nil && len(doc.Agents) == 1
	})
	a := doc.Agents[0]
	if doc.Revision != 0 || a.Agent != "a1" || a.AckedRevision != 0 || a.Result != "" || a.Behind {
		t.Errorf("got %+v (revision %d)", a, doc.Revision)
	}
	code, out, _ := cli(t, ctxT(t, 10*time.Second), "agents", "--endpoints", ep)
	if code != 0 || !strings.Contains(out, "1: p1") || !strings.Contains(out, " - ") {
		t.Errorf("table: exit %d\n%s", code, out)
	}
}

// TestAgentsReadAgainAfterACompaction: etcd compacts the revision that
// `agents` reads everything at between its first read and its second; it
// reads again at a newer revision and lists the agent, where it used to
// fail with "required revision has been compacted".
func TestAgentsReadAgainAfterACompaction(t *testing.T) {
	m := etcdtest.Start(t)
	ep := m.Endpoint()
	startHandAgent(t, ep, "a1", []string{"p1", "p2"}, nil)
	startCoordinator(t, ep, "c1")
	waitRound(t, m.Client(t), 1, schema.NotActive)
	var kv *compactArmedKV
	e, _, _ := testEnv(t, ep, func(inner clientv3.KV) clientv3.KV {
		kv = &compactArmedKV{KV: inner}
		return kv
	})
	kv.arm(layout.Registrations()) // read at the revision record's revision
	doc, err := e.readAgents(ctxT(t, 10*time.Second), e.client)
	if err != nil {
		t.Fatalf("agents after a compaction between its reads: %v", err)
	}
	if len(doc.Agents) != 1 || doc.Agents[0].Agent != "a1" || !slices.Equal(doc.Agents[0].Plugins, []string{"p1", "p2"}) || doc.Revision != 1 {
		t.Errorf("got %+v at revision %d, want a1 with p1, p2 at 1", doc.Agents, doc.Revision)
	}
	if n := kv.compactions(); n != 1 {
		t.Errorf("%d compactions before the registrations read, want 1", n)
	}
}
