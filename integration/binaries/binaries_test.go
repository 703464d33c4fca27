package binaries

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/resyncd/resync/internal/testing/etcdtest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m, etcdtest.LeakOptions()...) }

// build compiles the commands once per test binary.
var (
	buildOnce sync.Once
	binDir    string
	buildErr  error
)

func bins(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		binDir, buildErr = os.MkdirTemp("", "resync-bins-")
		if buildErr != nil {
			return
		}
		for _, pkg := range []string{"../../cmd/resyncd", "../../cmd/resync-agent", "../../cmd/resyncctl", "go.etcd.io/etcd/etcdctl/v3"} {
			name := filepath.Base(pkg)
			if strings.Contains(pkg, "etcdctl") {
				name = "etcdctl"
			}
			out, err := exec.Command("go", "build", "-o", filepath.Join(binDir, name), pkg).CombinedOutput()
			if err != nil {
				buildErr = fmt.Errorf("build %s: %v\n%s", pkg, err, out)
				return
			}
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binDir
}

// proc is a running command whose output is collected.
type proc struct {
	cmd    *exec.Cmd
	out    *etcdtest.Buffer
	done   chan error    // Wait's result, once
	exited chan struct{} // closed when Wait returned
}

func start(t *testing.T, dir string, name string, args ...string) *proc {
	t.Helper()
	cmd := exec.Command(filepath.Join(bins(t), name), args...)
	cmd.Dir = dir
	p := &proc{cmd: cmd, out: &etcdtest.Buffer{}, done: make(chan error, 1), exited: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = p.out, p.out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		p.done <- cmd.Wait()
		close(p.exited)
	}()
	t.Cleanup(func() {
		// Not cmd.ProcessState: Wait writes it on its own goroutine.
		select {
		case <-p.exited:
		default:
			cmd.Process.Kill()
			<-p.exited
		}
		if t.Failed() {
			t.Logf("%s output:\n%s", name, p.out.String())
		}
	})
	return p
}

// stop sends SIGTERM and waits up to within for the exit.
func (p *proc) stop(t *testing.T, within time.Duration) (time.Duration, error) {
	t.Helper()
	began := time.Now()
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-p.done:
		return time.Since(began), err
	case <-time.After(within):
		p.cmd.Process.Kill()
		<-p.done
		return time.Since(began), fmt.Errorf("still running %v after SIGTERM", within)
	}
}

func runCmd(t *testing.T, timeout time.Duration, env []string, name string, args ...string) (string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(bins(t), name), args...)
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("%s %v: %v", name, args, err)
	}
	return string(out), code
}

func TestProcessesEndToEnd(t *testing.T) {
	dir := t.TempDir()
	client := etcdtest.FreeAddr(t)
	httpAddr := etcdtest.FreeAddr(t)
	rdArgs := []string{"--listen-client-url", "http://" + client, "--listen-peer-url", "http://" + etcdtest.FreeAddr(t),
		"--http-addr", httpAddr, "--id", "rd1", "--session-ttl", "2s"}
	rd := start(t, dir, "resyncd", rdArgs...)
	ctl := func(args ...string) (string, int) {
		return runCmd(t, 60*time.Second, nil, "resyncctl", append([]string{"--endpoints", client}, args...)...)
	}
	etcdtest.WaitFor(t, 60*time.Second, "resyncd to serve", func() bool {
		out, code := ctl("status", "-o", "json")
		return code == 0 && strings.Contains(out, `"revision"`)
	})
	for _, a := range []string{"agent-a", "agent-b"} {
		start(t, dir, "resync-agent", "--endpoints", client, "--name", a, "--plugins", "ifplugin,l3plugin", "--reload-time", "10ms", "--ttl", "2s")
	}
	etcdtest.WaitFor(t, 30*time.Second, "both agents registered", func() bool {
		out, code := ctl("registrations", "-o", "json")
		return code == 0 && strings.Count(out, `"plugin"`) == 4
	})
	out, code := ctl("trigger", "--reason", "end-to-end", "--wait", "--timeout", "60s")
	if code != 0 || !strings.Contains(out, "finished clean") {
		t.Fatalf("trigger --wait exited %d:\n%s", code, out)
	}
	out, code = ctl("status", "-o", "json")
	var st struct {
		Revision uint64 `json:"revision"`
		State    string `json:"state"`
		Progress struct {
			Counts struct {
				Participants, Acked, Pending int
			} `json:"counts"`
		} `json:"progress"`
	}
	if code != 0 || json.Unmarshal([]byte(out), &st) != nil {
		t.Fatalf("status -o json exited %d: %s", code, out)
	}
	if st.State != "NotActive" || st.Progress.Counts.Participants != 4 || st.Progress.Counts.Acked != 4 {
		t.Fatalf("status after the round: %+v", st)
	}
	// History shows summaries: the round of both agents, all acked (the
	// names are under rounds/<N>/agents/).
	out, _ = ctl("history", "-o", "json")
	if !strings.Contains(out, `"agents": 2`) || !strings.Contains(out, `"acked": 4`) {
		t.Fatalf("history does not show a round of both agents, all acked: %s", out)
	}

	took, err := rd.stop(t, 5*time.Second)
	if err != nil {
		t.Fatalf("SIGTERM: %v", err)
	}
	t.Logf("resyncd stopped %v after SIGTERM", took.Round(time.Millisecond))
	if strings.Contains(rd.out.String(), "panic") {
		t.Fatalf("resyncd panicked:\n%s", rd.out.String())
	}
	// The data dir is reusable: a new resyncd serves the same history.
	start(t, dir, "resyncd", rdArgs...)
	etcdtest.WaitFor(t, 60*time.Second, "the restarted resyncd to serve the old revision", func() bool {
		out, code := ctl("status", "-o", "json")
		var again struct {
			Revision uint64 `json:"revision"`
		}
		return code == 0 && json.Unmarshal([]byte(out), &again) == nil && again.Revision >= st.Revision
	})
}

func TestUnreachableEndpointsFailFast(t *testing.T) {
	dead := etcdtest.DeadAddr(t)
	bins(t) // build first: the timing below is of the commands alone
	for _, name := range []string{"resyncd", "resync-agent", "resyncctl"} {
		args := []string{"--endpoints", dead, "--dial-timeout", "1s"}
		if name == "resyncctl" {
			args = append(args, "status")
		}
		began := time.Now()
		out, code := runCmd(t, 20*time.Second, nil, name, args...)
		if code == 0 || strings.Count(strings.TrimSpace(out), "\n") != 0 || !strings.Contains(out, "cannot reach etcd at "+dead) {
			t.Errorf("%s: exit %d, output %q: want one clear line and a non-zero exit", name, code, out)
		}
		if d := time.Since(began); d > 10*time.Second {
			t.Errorf("%s took %v to give up with a 1s dial timeout", name, d)
		}
	}
	out, code := runCmd(t, 20*time.Second, nil, "resync-agent", "--name", "a\x01b")
	if code != 2 || !strings.Contains(out, "agent name") || !strings.Contains(out, "control character") {
		t.Errorf("resync-agent --name a\\x01b: exit %d %q", code, out)
	}
}

// readmeEtcdctl returns the etcdctl command lines of the ```sh blocks of
// README.md and docs/*.md (the key layout page holds the examples). It
// fails if there are no docs pages: a moved or renamed docs/ would
// otherwise run nothing.
func readmeEtcdctl(t *testing.T) [][]string {
	t.Helper()
	pages, err := filepath.Glob("../../docs/*.md")
	if err != nil {
		t.Fatal(err)
	}
	if len(pages) == 0 {
		t.Fatal("no ../../docs/*.md: the documentation whose etcdctl examples this test runs is missing")
	}
	var cmds [][]string
	for _, name := range append([]string{"../../README.md"}, pages...) {
		b, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		in := false
		for _, line := range strings.Split(string(b), "\n") {
			line = strings.TrimSpace(line)
			switch {
			case strings.HasPrefix(line, "```"):
				in = !in && line == "```sh"
			case in && strings.HasPrefix(line, "etcdctl "):
				cmds = append(cmds, strings.Fields(line)[1:])
			}
		}
	}
	return cmds
}

func TestReadmeEtcdctlExamples(t *testing.T) {
	cmds := readmeEtcdctl(t)
	if len(cmds) < 2 {
		t.Fatalf("README.md and docs/*.md have %d etcdctl examples in ```sh blocks, want the get and watch ones (docs/keys.md)", len(cmds))
	}
	dir := t.TempDir()
	client := etcdtest.FreeAddr(t)
	start(t, dir, "resyncd", "--listen-client-url", "http://"+client, "--listen-peer-url", "http://"+etcdtest.FreeAddr(t),
		"--http-addr", etcdtest.FreeAddr(t), "--session-ttl", "2s")
	start(t, dir, "resync-agent", "--endpoints", client, "--name", "agent-a", "--plugins", "p1", "--ttl", "2s")
	env := []string{"ETCDCTL_ENDPOINTS=" + client}
	etcdtest.WaitFor(t, 60*time.Second, "round 1 and a registration", func() bool {
		out, code := runCmd(t, 10*time.Second, env, "etcdctl", "get", "--prefix", "/resync/", "--keys-only")
		return code == 0 && strings.Contains(out, "/resync/revision") && strings.Contains(out, "/resync/registrations/agent-a/p1")
	})
	for _, args := range cmds {
		t.Run(strings.Join(args, " "), func(t *testing.T) {
			if args[0] == "watch" {
				checkWatch(t, env, args, client)
				return
			}
			out, code := runCmd(t, 10*time.Second, env, "etcdctl", args...)
			if code != 0 {
				t.Fatalf("exit %d: %s", code, out)
			}
			if containsFlag(args, "json") {
				keys, err := etcdtest.EtcdctlKVs([]byte(out))
				if err != nil {
					t.Fatal(err)
				}
				if !strings.Contains(keys["/resync/revision"], `"revision":1`) {
					t.Fatalf("no revision record in %v", keys)
				}
				if _, ok := keys["/resync/registrations/agent-a/p1"]; !ok {
					t.Fatalf("no registration in %v", keys)
				}
				return
			}
			if !strings.Contains(out, "/resync/") {
				t.Fatalf("output names no key: %s", out)
			}
		})
	}
}

func containsFlag(args []string, v string) bool {
	for _, a := range args {
		if a == v || strings.HasSuffix(a, "="+v) {
			return true
		}
	}
	return false
}

// checkWatch runs the watch example while a round is triggered, and expects
// the round's writes in its output.
func checkWatch(t *testing.T, env, args []string, client string) {
	cmd := exec.Command(filepath.Join(bins(t), "etcdctl"), args...)
	cmd.Env = append(os.Environ(), env...)
	out := &etcdtest.Buffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		cmd.Process.Kill()
		cmd.Wait()
		if t.Failed() {
			t.Logf("etcdctl %v output:\n%s", args, out.String())
		}
	}()
	etcdtest.WaitFor(t, 30*time.Second, "the watch to show a triggered round", func() bool {
		if !strings.Contains(out.String(), "/resync/requests/") {
			runCmd(t, 10*time.Second, nil, "resyncctl", "--endpoints", client, "trigger", "--reason", "readme watch")
		}
		return strings.Contains(out.String(), "/resync/revision") && strings.Contains(out.String(), "/resync/acks/agent-a/p1")
	})
}
