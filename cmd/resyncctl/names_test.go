package main

import (
	"context"
	"encoding/json"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/resyncd/resync"
	"github.com/resyncd/resync/internal/testing/etcdtest"
	"github.com/resyncd/resync/schema"
)

// TestRealNamesEndToEnd: a plugin named as real cn-infra ones are, on an
// agent named with a space, registers, resyncs and acks; registrations,
// agents, status, history and watch show the real names; trigger takes the
// agent in its key form; every key under the prefix is readable ASCII.
func TestRealNamesEndToEnd(t *testing.T) {
	const agent, plugin = "node 1", "Config VPP default plug:IF/L2/L3"
	m := etcdtest.Start(t)
	obs := m.Client(t)
	ep := m.Endpoint()
	startHandAgent(t, ep, agent, []string{plugin, "K8s resources"}, nil)
	startCoordinator(t, ep, "c1")
	waitRound(t, obs, 1, schema.NotActive)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var watched, errText etcdtest.Buffer
	done := make(chan int, 1)
	go func() { done <- run(ctx, []string{"watch", "--endpoints", ep}, &watched, &errText) }()
	etcdtest.WaitFor(t, 10*time.Second, "the watch to print the current revision", func() bool {
		return strings.Contains(watched.String(), "1 NotActive")
	})
	code, out, errOut := cli(t, ctxT(t, 40*time.Second), "trigger", "--endpoints", ep, "--agent", "node%201",
		"--reason", "names", "--wait", "--timeout", "30s")
	if code != 0 || !strings.Contains(out, "round 2 finished clean") {
		t.Fatalf("trigger --agent node%%201 --wait: exit %d\n%s\n%s", code, out, errOut)
	}
	etcdtest.WaitFor(t, 10*time.Second, "the watch to show the ack", func() bool {
		return strings.Contains(watched.String(), agent+"/"+plugin+" revision=2 result=ok")
	})
	// The same names as typed: the plugin's "/" needs no escape under the
	// one --agent.
	code, out, errOut = cli(t, ctxT(t, 40*time.Second), "trigger", "--endpoints", ep, "--agent", agent,
		"--plugin", plugin, "--reason", "names as typed", "--wait", "--timeout", "30s")
	if code != 0 || !strings.Contains(out, "round 3 finished clean") {
		t.Fatalf("trigger --agent %q --plugin %q --wait: exit %d\n%s\n%s", agent, plugin, code, out, errOut)
	}
	etcdtest.WaitFor(t, 10*time.Second, "the watch to show the plugin's ack of round 3", func() bool {
		return strings.Contains(watched.String(), agent+"/"+plugin+" revision=3 result=ok")
	})
	if strings.Contains(watched.String(), agent+"/K8s resources revision=3") {
		t.Errorf("a plugin outside the trigger's scope acked round 3:\n%s", watched.String())
	}
	cancel()
	if c := <-done; c != 0 {
		t.Errorf("watch exited %d", c)
	}

	code, out, _ = cli(t, ctxT(t, 10*time.Second), "registrations", "-o", "json", "--endpoints", ep)
	var regs struct{ Registrations []registrationDoc }
	if err := json.Unmarshal([]byte(out), &regs); err != nil || code != 0 || len(regs.Registrations) != 2 ||
		regs.Registrations[0].Agent != agent || regs.Registrations[0].Plugin != plugin {
		t.Fatalf("registrations -o json: %d %v\n%s", code, err, out)
	}
	for _, tc := range []struct {
		args []string
		want []string
	}{
		{[]string{"registrations"}, []string{agent, plugin, "K8s resources"}},
		{[]string{"agents"}, []string{agent, "2: " + plugin + ", K8s resources"}},
		{[]string{"status"}, []string{"plugin " + agent + "/" + plugin}},
		{[]string{"history"}, []string{"agent " + agent, "plugin " + agent + "/" + plugin}},
	} {
		code, out, _ := cli(t, ctxT(t, 10*time.Second), append(tc.args, "--endpoints", ep)...)
		for _, w := range tc.want {
			if code != 0 || !strings.Contains(out, w) {
				t.Errorf("%s: exit %d, output lacks %q:\n%s", tc.args[0], code, w, out)
			}
		}
	}
	code, out, _ = cli(t, ctxT(t, 10*time.Second), "agents", "-o", "json", "--endpoints", ep)
	var ad agentsDoc
	if err := json.Unmarshal([]byte(out), &ad); err != nil || code != 0 || len(ad.Agents) != 1 || ad.Agents[0].Agent != agent ||
		ad.Agents[0].AckedRevision != 3 || ad.Agents[0].Result != schema.ResultOK {
		t.Fatalf("agents -o json: %d %v\n%s", code, err, out)
	}

	// A refused registration (a name that cannot be stored) shows in
	// agents, also for an agent with no other registration.
	p, err := resync.New(resync.Deps{Client: obs, Log: quietLogger(t)}, resync.DefaultConfig("bad names"))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	p.Register("a\x00b")
	etcdtest.WaitFor(t, 10*time.Second, "the refusal listed by agents", func() bool {
		code, out, _ := cli(t, ctxT(t, 10*time.Second), "agents", "-o", "json", "--endpoints", ep)
		ad = agentsDoc{}
		return code == 0 && json.Unmarshal([]byte(out), &ad) == nil && len(ad.Agents) == 2 && ad.Agents[0].Agent == "bad names" &&
			ad.Agents[0].Refused == 1 && len(ad.Agents[0].RefusedNames) == 1 && ad.Agents[0].RefusedNames[0] == `"a\x00b"`
	})
	if code, out, _ := cli(t, ctxT(t, 10*time.Second), "agents", "--endpoints", ep); code != 0 || !strings.Contains(out, "REFUSED") ||
		!strings.Contains(out, `1: "a\x00b"`) {
		t.Errorf("agents table lacks the refusal:\n%s", out)
	}

	resp, err := obs.Get(ctxT(t, 5*time.Second), layout.Prefix(), clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		t.Fatal(err)
	}
	seen := false
	for _, kv := range resp.Kvs {
		for _, b := range kv.Key {
			if b < 0x21 || b > 0x7e {
				t.Fatalf("key %q is not readable ASCII", kv.Key)
			}
		}
		seen = seen || string(kv.Key) == "/resync/acks/node%201/Config%20VPP%20default%20plug%3AIF%2FL2%2FL3"
	}
	if !seen {
		t.Errorf("no ack key in its escaped form among the keys")
	}
}

// TestRBACApplyAgentNamedWithASpace: `rbac apply --agents "node 1,node 10"`
// makes users of those names (passwords in node%201.password and
// node%2010.password); a resync agent logged in as "node 1" registers a
// plugin named as real ones are, and may write none of node 10's keys
// (whose escaped name starts with node 1's).
func TestRBACApplyAgentNamedWithASpace(t *testing.T) {
	m := etcdtest.Start(t)
	ep := m.Endpoint()
	dir := filepath.Join(t.TempDir(), "secrets")
	t.Setenv("RESYNC_DIAL_TIMEOUT", "30s")
	t.Setenv("RESYNC_COMMAND_TIMEOUT", "30s")
	code, out, errOut := cli(t, ctxT(t, 60*time.Second), "rbac", "apply", "--endpoints", ep, "--agents", "node 1,node 10", "--secrets-dir", dir)
	if code != 0 || !strings.Contains(out, "role resync-agent-node 1: granted readwrite prefix /resync/acks/node%201/") {
		t.Fatalf("rbac apply: exit %d\n%s\n%s", code, out, errOut)
	}
	pw := readSecret(t, dir, "node%201")
	readSecret(t, dir, "node%2010")
	// Logging in costs etcd a bcrypt check: seconds under -race on a
	// loaded machine, so the clients get the CLI's 30 s too.
	agentClient := etcdtest.ClientWith(t, clientv3.Config{Endpoints: []string{ep}, Username: "node 1", Password: pw, DialTimeout: 30 * time.Second})
	p, err := resync.New(resync.Deps{Client: agentClient, Log: quietLogger(t)}, resync.DefaultConfig("node 1"))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	const plugin = "Config VPP default plug:IF/L2/L3"
	p.Register(plugin)
	root := etcdtest.ClientWith(t, clientv3.Config{Endpoints: []string{ep}, Username: "root", Password: readSecret(t, dir, "root"), DialTimeout: 30 * time.Second})
	etcdtest.WaitFor(t, 20*time.Second, "node 1's registration", func() bool {
		resp, err := root.Get(ctxT(t, 5*time.Second), layout.Registration("node 1", plugin))
		return err == nil && len(resp.Kvs) == 1
	})
	for _, key := range []string{layout.Registration("node 10", plugin), layout.Ack("node 10", plugin), layout.Owner("node 10"), layout.AgentRequest("node 10", "1-a")} {
		if _, err := agentClient.Put(ctxT(t, 10*time.Second), key, "{}"); !errors.Is(err, rpctypes.ErrPermissionDenied) {
			t.Errorf("node 1 writes %s: %v, want permission denied", key, err)
		}
	}
}

// TestTriggerTargetsTakeNamesAsTypedOrEscaped: --agent and --plugin read a
// name as typed or in its key form; one --agent scopes every --plugin.
func TestTriggerTargetsTakeNamesAsTypedOrEscaped(t *testing.T) {
	const vpp = "Config VPP default plug:IF/L2/L3"
	for _, tc := range []struct {
		name            string
		agents, plugins []string
		want            []schema.Scope
		err             string
	}{
		{"agent as typed", []string{"node 1"}, nil, []schema.Scope{{Agent: "node 1"}}, ""},
		{"agent escaped", []string{"node%201"}, nil, []schema.Scope{{Agent: "node 1"}}, ""},
		{"plugin of the one agent, slashes kept", []string{"node 1"}, []string{vpp, "K8s resources"},
			[]schema.Scope{{Agent: "node 1", Plugin: vpp}, {Agent: "node 1", Plugin: "K8s resources"}}, ""},
		{"plugin escaped under the one agent", []string{"node%201"}, []string{"Config%20VPP%20default%20plug%3AIF%2FL2%2FL3"},
			[]schema.Scope{{Agent: "node 1", Plugin: vpp}}, ""},
		{"agent/plugin split at the first slash", nil, []string{"node 1/" + vpp}, []schema.Scope{{Agent: "node 1", Plugin: vpp}}, ""},
		{"several agents and agent/plugin", []string{"n1", "n2"}, []string{"n3/p2"},
			[]schema.Scope{{Agent: "n1"}, {Agent: "n2"}, {Agent: "n3", Plugin: "p2"}}, ""},
		{"a percent that is no escape is a name", []string{"100%"}, nil, []schema.Scope{{Agent: "100%"}}, ""},
		{"duplicates merge", []string{"a"}, []string{"p", "p"}, []schema.Scope{{Agent: "a", Plugin: "p"}}, ""},
		{"plugin without agent", nil, []string{"p1"}, nil, "--plugin needs --agent"},
		{"control character", []string{"a\x01"}, nil, nil, "control character"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := triggerOpts{agents: tc.agents, plugins: tc.plugins}.targets()
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("error %v, want one containing %q", err, tc.err)
				}
				return
			}
			if err != nil || len(got) != len(tc.want) {
				t.Fatalf("targets %v, %v; want %v", got, err, tc.want)
			}
			for i := range got {
				if got[i] != tc.want[i] {
					t.Fatalf("targets %v; want %v", got, tc.want)
				}
			}
		})
	}
}
