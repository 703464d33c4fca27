//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"text/tabwriter"
	"time"

	"github.com/resyncd/resync/internal/testing/etcdtest"
	"github.com/resyncd/resync/schema"
)

const (
	project    = "resync-e2e"
	endpoints  = "127.0.0.1:23791,127.0.0.1:23792,127.0.0.1:23793"
	sessionTTL = 3 * time.Second // RESYNC_SESSION_TTL in docker-compose.yml
	promURL    = "http://127.0.0.1:19090"
	// noLeaderFor is the `for` of ResyncNoLeader in deploy/prometheus/rules.yml.
	noLeaderFor = 30 * time.Second
	agentTTL    = 3 * time.Second // RESYNC_TTL of the agents
)

var root, _ = filepath.Abs("../..")

type stepTime struct {
	name string
	took time.Duration
	note string
}

type env struct {
	t       *testing.T
	compose []string
	steps   []stepTime
}

func newEnv(t *testing.T) *env {
	e := &env{t: t}
	if exec.Command("docker", "compose", "version").Run() == nil {
		e.compose = []string{"docker", "compose"}
	} else {
		e.compose = []string{"docker-compose"}
	}
	e.compose = append(e.compose, "-p", project, "-f", filepath.Join(root, "docker-compose.yml"))
	return e
}

func (e *env) run(timeout time.Duration, name string, args ...string) (string, error) {
	var out bytes.Buffer
	err := e.runTo(&out, &out, timeout, name, args...)
	return out.String(), err
}

// runTo runs a command with its stdout and stderr going to the writers given.
func (e *env) runTo(stdout, stderr *bytes.Buffer, timeout time.Duration, name string, args ...string) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "AGENT_RELOAD_TIME=1s")
	cmd.Stdout, cmd.Stderr = stdout, stderr
	return cmd.Run()
}

func (e *env) must(timeout time.Duration, name string, args ...string) string {
	e.t.Helper()
	out, err := e.run(timeout, name, args...)
	if err != nil {
		e.t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return out
}

func (e *env) dc(args ...string) string {
	e.t.Helper()
	return e.must(3*time.Minute, e.compose[0], append(e.compose[1:], args...)...)
}

// id is the container id of a compose service.
func (e *env) id(service string) string {
	e.t.Helper()
	return strings.TrimSpace(e.dc("ps", "-q", service))
}

func (e *env) ctl(args ...string) (string, error) {
	return e.run(2*time.Minute, filepath.Join(root, "bin/resyncctl"), append([]string{"--endpoints", endpoints, "--dial-timeout", "3s"}, args...)...)
}

// ctlJSON decodes resyncctl's JSON document from its stdout alone: stderr
// may carry warnings (an etcd member down while a step stops one).
func (e *env) ctlJSON(v any, args ...string) error {
	var stdout, stderr bytes.Buffer
	args = append([]string{"--endpoints", endpoints, "--dial-timeout", "3s"}, append(args, "-o", "json")...)
	if err := e.runTo(&stdout, &stderr, 2*time.Minute, filepath.Join(root, "bin/resyncctl"), args...); err != nil {
		return fmt.Errorf("%v: %s%s", err, stdout.String(), stderr.String())
	}
	if err := json.Unmarshal(stdout.Bytes(), v); err != nil {
		return fmt.Errorf("resyncctl %s -o json: %v (stderr: %s)", args[4], err, stderr.String())
	}
	return nil
}

type status struct {
	Revision uint64 `json:"revision"`
	State    string `json:"state"`
	Leader   string `json:"leader"`
	Progress struct {
		Counts schema.RoundCounts `json:"counts"`
	} `json:"progress"`
}

func (e *env) status() (status, error) {
	var s status
	return s, e.ctlJSON(&s, "status")
}

func (e *env) round(n uint64) (schema.Round, bool) {
	var h struct {
		Rounds []schema.Round `json:"rounds"`
	}
	if err := e.ctlJSON(&h, "history", "-n", "20"); err != nil {
		return schema.Round{}, false
	}
	for _, r := range h.Rounds {
		if r.Revision == n {
			return r, true
		}
	}
	return schema.Round{}, false
}

func (e *env) registrations() map[string]int {
	var doc struct {
		Registrations []schema.Registration `json:"registrations"`
	}
	per := map[string]int{}
	if e.ctlJSON(&doc, "registrations") == nil {
		for _, r := range doc.Registrations {
			per[r.Agent]++
		}
	}
	return per
}

func (e *env) ready(port int) string {
	out, _ := e.run(10*time.Second, filepath.Join(root, "bin/resyncd"), "--probe", fmt.Sprintf("http://127.0.0.1:%d/readyz", port))
	return out
}

func (e *env) waitFor(timeout time.Duration, what string, cond func() bool) time.Duration {
	e.t.Helper()
	began := time.Now()
	for !cond() {
		if time.Since(began) > timeout {
			e.t.Fatalf("E2E FAILED: timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(250 * time.Millisecond)
	}
	return time.Since(began)
}

func (e *env) step(name string, f func() string) {
	e.t.Helper()
	e.t.Logf("== %s", name)
	began := time.Now()
	note := f()
	took := time.Since(began)
	e.steps = append(e.steps, stepTime{name, took, note})
	e.t.Logf("   ok in %v %s", took.Round(time.Millisecond), note)
}

// startedRound triggers a round and waits until it is Started.
func (e *env) startedRound(reason string) uint64 {
	e.t.Helper()
	before, err := e.status()
	if err != nil {
		e.t.Fatal(err)
	}
	if out, err := e.ctl("trigger", "--reason", reason); err != nil {
		e.t.Fatalf("trigger: %v %s", err, out)
	}
	var s status
	e.waitFor(30*time.Second, "the round to start", func() bool {
		s, err = e.status()
		return err == nil && s.Revision > before.Revision && s.State == "Started"
	})
	return s.Revision
}

func (e *env) finished(n uint64, within time.Duration) schema.Round {
	e.t.Helper()
	var r schema.Round
	e.waitFor(within, fmt.Sprintf("round %d to finish", n), func() bool {
		var ok bool
		r, ok = e.round(n)
		return ok && r.State == schema.NotActive
	})
	return r
}

func (e *env) triggerWait(reason string) schema.Round {
	e.t.Helper()
	out, err := e.ctl("trigger", "--reason", reason, "--wait", "--timeout", "90s")
	if err != nil {
		e.t.Fatalf("E2E FAILED: trigger --wait: %v\n%s", err, out)
	}
	s, err := e.status()
	if err != nil {
		e.t.Fatal(err)
	}
	r, _ := e.round(s.Revision)
	return r
}

// prom GETs path (with query parameters q) from Prometheus' HTTP API and
// decodes its data into v.
func (e *env) prom(path string, q url.Values, v any) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	u := promURL + path
	if q != nil {
		u += "?" + q.Encode()
	}
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	var doc struct {
		Status string          `json:"status"`
		Error  string          `json:"error"`
		Data   json.RawMessage `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&doc); err != nil {
		return fmt.Errorf("%s: %d: %v", u, resp.StatusCode, err)
	}
	if doc.Status != "success" {
		return fmt.Errorf("%s: %s", u, doc.Error)
	}
	return json.Unmarshal(doc.Data, v)
}

// promTargets is the health of each resyncd scrape target ("up", "down",
// "unknown") by instance.
func (e *env) promTargets() map[string]string {
	var d struct {
		ActiveTargets []struct {
			Labels    map[string]string `json:"labels"`
			Health    string            `json:"health"`
			LastError string            `json:"lastError"`
		} `json:"activeTargets"`
	}
	health := map[string]string{}
	if e.prom("/api/v1/targets", nil, &d) != nil {
		return health
	}
	for _, t := range d.ActiveTargets {
		if t.Labels["job"] == "resyncd" {
			health[t.Labels["instance"]] = t.Health
		}
	}
	return health
}

// promScalar evaluates an instant query that yields one sample.
func (e *env) promScalar(query string) (float64, bool) {
	var d struct {
		Result []struct {
			Value [2]any `json:"value"`
		} `json:"result"`
	}
	if e.prom("/api/v1/query", url.Values{"query": {query}}, &d) != nil || len(d.Result) != 1 {
		return 0, false
	}
	str, _ := d.Result[0].Value[1].(string)
	var v float64
	if _, err := fmt.Sscan(str, &v); err != nil {
		return 0, false
	}
	return v, true
}

// alertState is the state of alert name in Prometheus ("firing",
// "pending"), "" when it is not active.
func (e *env) alertState(name string) string {
	var d struct {
		Alerts []struct {
			Labels map[string]string `json:"labels"`
			State  string            `json:"state"`
		} `json:"alerts"`
	}
	if e.prom("/api/v1/alerts", nil, &d) != nil {
		return "?"
	}
	for _, a := range d.Alerts {
		if a.Labels["alertname"] == name {
			return a.State
		}
	}
	return ""
}

func TestE2E(t *testing.T) {
	e := newEnv(t)
	e.run(3*time.Minute, e.compose[0], append(e.compose[1:], "down", "-v", "--remove-orphans")...)
	t.Cleanup(func() {
		if t.Failed() {
			out, _ := e.run(time.Minute, e.compose[0], append(e.compose[1:], "logs", "--tail", "60")...)
			t.Logf("compose logs:\n%s", out)
		}
		out, err := e.run(3*time.Minute, e.compose[0], append(e.compose[1:], "down", "-v", "--remove-orphans")...)
		if err != nil {
			t.Errorf("compose down: %v\n%s", err, out)
		}
		var b strings.Builder
		w := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
		fmt.Fprintln(w, "STEP\tTOOK\tNOTE")
		for _, s := range e.steps {
			fmt.Fprintf(w, "%s\t%v\t%s\n", s.name, s.took.Round(time.Millisecond), s.note)
		}
		w.Flush()
		t.Logf("steps:\n%s", b.String())
	})

	e.step("cluster up: 3 etcd, 2 resyncd, 3 agents x 3 plugins, all healthy", func() string {
		e.dc("up", "-d")
		e.waitFor(3*time.Minute, "9 registrations and both resyncd ready", func() bool {
			regs := e.registrations()
			return regs["agent1"] == 3 && regs["agent2"] == 3 && regs["agent3"] == 3 &&
				strings.Contains(e.ready(19091), "ready") && strings.Contains(e.ready(19092), "ready")
		})
		return ""
	})

	e.step("Prometheus: both resyncd targets up, sum(resync_leader) == 1, every alert rule of deploy/ loaded", func() string {
		defer http.DefaultClient.CloseIdleConnections()
		e.waitFor(time.Minute, "Prometheus to scrape resyncd1 and resyncd2 (up) with one leader", func() bool {
			h := e.promTargets()
			v, ok := e.promScalar("sum(resync_leader)")
			return h["resyncd1:9090"] == "up" && h["resyncd2:9090"] == "up" && ok && v == 1
		})
		var rules struct {
			Groups []struct {
				Rules []struct {
					Type string `json:"type"`
				} `json:"rules"`
			} `json:"groups"`
		}
		if err := e.prom("/api/v1/rules", nil, &rules); err != nil {
			t.Fatalf("E2E FAILED: rules: %v", err)
		}
		alerting := 0
		for _, g := range rules.Groups {
			for _, r := range g.Rules {
				if r.Type == "alerting" {
					alerting++
				}
			}
		}
		if want := alertRules(t); alerting != want {
			t.Fatalf("E2E FAILED: Prometheus loaded %d alerting rules, want the %d of deploy/prometheus/rules.yml", alerting, want)
		}
		// Pending (or firing) while the cluster started without a leader:
		// the next evaluations with a leader clear it.
		e.waitFor(30*time.Second, "ResyncNoLeader inactive with a leader", func() bool { return e.alertState("ResyncNoLeader") == "" })
		return fmt.Sprintf("(%d alerting rules)", alerting)
	})

	e.step("resyncctl trigger --wait: every agent x plugin acked", func() string {
		r := e.triggerWait("e2e: first round")
		if r.Counts.Participants != 9 || r.Counts.Acked != 9 {
			t.Fatalf("E2E FAILED: round %d counts %+v, want 9 acked", r.Revision, r.Counts)
		}
		return fmt.Sprintf("(round %d, %.0f ms)", r.Revision, r.DurationMS)
	})

	e.step("docker kill the leading resyncd mid-round: the standby completes the same revision", func() string {
		// Leader and container ids first: a round takes ~4 s, and under load
		// docker-compose ps alone can take seconds.
		s, err := e.status()
		if err != nil {
			t.Fatal(err)
		}
		leader, _, _ := strings.Cut(s.Leader, "@")
		standby, port := "resyncd2", 19092
		if leader == "resyncd2" {
			standby, port = "resyncd1", 19091
		}
		leaderID := e.id(leader)
		n := e.startedRound("e2e: leader crash")
		e.must(time.Minute, "docker", "kill", leaderID)
		took := e.waitFor(30*time.Second, standby+" to lead", func() bool { return strings.Contains(e.ready(port), "leading") })
		if took > sessionTTL+2*time.Second {
			t.Fatalf("E2E FAILED: %s took %v to take over, more than TTL %v + 2s", standby, took, sessionTTL)
		}
		r := e.finished(n, 90*time.Second)
		if !strings.HasPrefix(r.FinishedBy, standby+"@") || r.Counts.Participants != 9 || r.Counts.Acked != 9 {
			t.Fatalf("E2E FAILED: round %d finished by %s with %+v", n, r.FinishedBy, r.Counts)
		}
		e.dc("start", leader)
		e.waitFor(time.Minute, leader+" back as standby", func() bool {
			p := 19091
			if leader == "resyncd2" {
				p = 19092
			}
			return strings.Contains(e.ready(p), "standby")
		})
		return fmt.Sprintf("(killed %s; %s led after %v; round %d finished by %s)", leader, standby, took.Round(time.Millisecond), n, r.FinishedBy)
	})

	e.step("docker kill an agent mid-round: the round completes with it departed", func() string {
		agent3 := e.id("agent3") // before the round: it takes ~4 s
		n := e.startedRound("e2e: agent crash")
		e.must(time.Minute, "docker", "kill", agent3)
		r := e.finished(n, 90*time.Second)
		departed := 0
		if r.Examples != nil { // the first 5 departed: agent3 has 3 plugins
			for _, p := range r.Examples.Departed {
				if p.Agent == "agent3" {
					departed++
				}
			}
		}
		if departed == 0 || r.Counts.Pending != 0 || r.Counts.TimedOut != 0 || r.Counts.Acked+r.Counts.Departed != 9 {
			t.Fatalf("E2E FAILED: round %d after killing agent3: %+v examples %+v", n, r.Counts, r.Examples)
		}
		e.waitFor(agentTTL+30*time.Second, "agent3's registrations to expire", func() bool { return e.registrations()["agent3"] == 0 })
		next := e.triggerWait("e2e: after agent crash")
		if next.Counts.Participants != 6 || next.Counts.Acked != 6 {
			t.Fatalf("E2E FAILED: round without agent3: %+v", next.Counts)
		}
		return fmt.Sprintf("(round %d: %d of agent3 departed; round %d: 6 acked)", n, departed, next.Revision)
	})

	e.step("docker network disconnect an agent past its TTL, reconnect: it re-registers and resyncs", func() string {
		id := e.id("agent2")
		network := project + "_resync"
		before, _ := e.status()
		e.must(time.Minute, "docker", "network", "disconnect", network, id)
		gone := e.waitFor(agentTTL+30*time.Second, "agent2's registrations to expire", func() bool { return e.registrations()["agent2"] == 0 })
		e.must(time.Minute, "docker", "network", "connect", network, id)
		var rejoin schema.Round
		e.waitFor(2*time.Minute, "agent2 back and a rejoin round for it acked", func() bool {
			if e.registrations()["agent2"] != 3 {
				return false
			}
			s, err := e.status()
			if err != nil {
				return false
			}
			for n := before.Revision + 1; n <= s.Revision; n++ {
				if r, ok := e.round(n); ok && r.State == schema.NotActive && r.Cause == schema.CauseRejoin && r.Scope.String() == "agent agent2" && r.Counts.Acked == 3 {
					rejoin = r
					return true
				}
			}
			return false
		})
		return fmt.Sprintf("(keys gone after %v; rejoin round %d acked 3)", gone.Round(time.Millisecond), rejoin.Revision)
	})

	e.step("restart the killed agent: it registers again and gets a join resync", func() string {
		e.dc("start", "agent3")
		e.waitFor(time.Minute, "agent3 registered and its join resync acked", func() bool {
			logs, _ := e.run(time.Minute, "docker", "logs", e.id("agent3"))
			return e.registrations()["agent3"] == 3 && strings.Count(logs, "join=true") >= 3 && strings.Contains(logs, "reloaded and acked")
		})
		return ""
	})

	e.step("stop the etcd raft leader: rounds still complete; start it: it rejoins", func() string {
		leader := ""
		for _, m := range []string{"etcd1", "etcd2", "etcd3"} {
			out, err := e.run(time.Minute, "docker", "exec", e.id(m), "etcdctl", "--endpoints=http://127.0.0.1:2379", "endpoint", "status", "-w", "json")
			if err != nil {
				continue
			}
			var st []struct {
				Status struct {
					Header struct {
						MemberID uint64 `json:"member_id"`
					} `json:"header"`
					Leader uint64 `json:"leader"`
				} `json:"Status"`
			}
			if json.Unmarshal([]byte(out), &st) == nil && len(st) == 1 && st[0].Status.Leader == st[0].Status.Header.MemberID {
				leader = m
			}
		}
		if leader == "" {
			t.Fatal("E2E FAILED: no etcd member says it leads")
		}
		e.dc("stop", leader)
		r := e.triggerWait("e2e: etcd leader down")
		if r.Counts.Acked != 9 {
			t.Fatalf("E2E FAILED: round with %s down: %+v", leader, r.Counts)
		}
		e.dc("start", leader)
		e.waitFor(2*time.Minute, leader+" healthy again", func() bool {
			out, err := e.run(30*time.Second, "docker", "exec", e.id(leader), "etcdctl", "--endpoints=http://127.0.0.1:2379", "endpoint", "health")
			return err == nil && strings.Contains(out, "is healthy")
		})
		r2 := e.triggerWait("e2e: etcd leader back")
		if r2.Counts.Acked != 9 {
			t.Fatalf("E2E FAILED: round after %s rejoined: %+v", leader, r2.Counts)
		}
		return fmt.Sprintf("(stopped %s; rounds %d and %d clean)", leader, r.Revision, r2.Revision)
	})

	e.step("docker kill the leading resyncd, docker pause the standby past the no-leader threshold: ResyncNoLeader fires, then resolves", func() string {
		defer http.DefaultClient.CloseIdleConnections()
		s, err := e.status()
		if err != nil {
			t.Fatal(err)
		}
		leader, _, _ := strings.Cut(s.Leader, "@")
		standby, leaderPort, standbyPort := "resyncd2", 19091, 19092
		if leader == "resyncd2" {
			standby, leaderPort, standbyPort = "resyncd1", 19092, 19091
		}
		e.must(time.Minute, "docker", "pause", e.id(standby))
		paused := true
		defer func() {
			if paused {
				e.run(time.Minute, "docker", "unpause", e.id(standby))
			}
		}()
		e.must(time.Minute, "docker", "kill", e.id(leader))
		fired := e.waitFor(noLeaderFor+time.Minute, "ResyncNoLeader to fire", func() bool { return e.alertState("ResyncNoLeader") == "firing" })
		if fired < noLeaderFor {
			t.Fatalf("E2E FAILED: ResyncNoLeader fired %v after the kill, before its for: %v", fired, noLeaderFor)
		}
		e.must(time.Minute, "docker", "unpause", e.id(standby))
		paused = false
		led := e.waitFor(time.Minute, standby+" to lead after its pause", func() bool { return strings.Contains(e.ready(standbyPort), "leading") })
		resolved := e.waitFor(time.Minute, "ResyncNoLeader to resolve", func() bool {
			v, ok := e.promScalar("sum(resync_leader)")
			return ok && v == 1 && e.alertState("ResyncNoLeader") == ""
		})
		e.dc("start", leader)
		e.waitFor(time.Minute, leader+" back as standby and both targets up", func() bool {
			h := e.promTargets()
			return strings.Contains(e.ready(leaderPort), "standby") && h["resyncd1:9090"] == "up" && h["resyncd2:9090"] == "up"
		})
		r := e.triggerWait("e2e: after the no-leader alert")
		if r.Counts.Acked != 9 {
			t.Fatalf("E2E FAILED: round after the no-leader window: %+v", r.Counts)
		}
		return fmt.Sprintf("(killed %s, paused %s: firing after %v; %s led %v after unpause; resolved %v later; round %d clean)",
			leader, standby, fired.Round(time.Second), standby, led.Round(time.Millisecond), resolved.Round(time.Second), r.Revision)
	})

	e.step("etcdctl get --prefix /resync/ -w json from inside the network", func() string {
		out := e.must(time.Minute, "docker", "exec", e.id("etcd1"), "etcdctl", "--endpoints=etcd1:2379,etcd2:2379,etcd3:2379", "get", "--prefix", "/resync/", "-w", "json")
		kvs, err := etcdtest.EtcdctlKVs([]byte(out))
		if err != nil {
			t.Fatalf("E2E FAILED: %v", err)
		}
		families := map[string]int{}
		for k := range kvs {
			fam, _, _ := strings.Cut(strings.TrimPrefix(k, "/resync/"), "/")
			families[fam]++
		}
		if families["revision"] != 1 || families["registrations"] != 9 || families["acks"] != 9 || families["rounds"] == 0 || families["election"] != 2 {
			t.Fatalf("E2E FAILED: keys by family %v", families)
		}
		return fmt.Sprintf("%v", families)
	})
}

// alertRules counts the alerting rules in deploy/prometheus/rules.yml (the
// file the compose cluster's Prometheus loads).
func alertRules(t *testing.T) int {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "..", "deploy", "prometheus", "rules.yml"))
	if err != nil {
		t.Fatalf("E2E FAILED: %v", err)
	}
	n := 0
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(strings.TrimSpace(line), "- alert:") {
			n++
		}
	}
	if n == 0 {
		t.Fatal("E2E FAILED: no alerting rule in deploy/prometheus/rules.yml")
	}
	return n
}
