package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/resyncd/resync/coordinator"
	"github.com/resyncd/resync/internal/testing/etcdtest"
	"github.com/resyncd/resync/schema"
)

// TestSIGTERMWithEmbeddedEtcdLogsNoWarning runs the resyncd binary on its
// embedded etcd with a client watching it (as agents do), sends SIGTERM and
// asserts that the whole run logged nothing above info: the embedded etcd's
// start-up notes are info lines that say what to do in production, and its
// listeners' "closed" errors while it stops are not warnings.
func TestSIGTERMWithEmbeddedEtcdLogsNoWarning(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "resyncd")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	clientAddr, peerAddr, httpAddr := etcdtest.FreeAddr(t), etcdtest.FreeAddr(t), etcdtest.FreeAddr(t)
	cmd := exec.Command(bin, "--data-dir", filepath.Join(t.TempDir(), "etcd"),
		"--listen-client-url", "http://"+clientAddr, "--listen-peer-url", "http://"+peerAddr,
		"--http-addr", httpAddr, "--session-ttl", "2s", "--id", "rd1")
	cmd.Env = cleanEnv()
	stderr := &etcdtest.Buffer{}
	cmd.Stdout, cmd.Stderr = io.Discard, stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	var waitErr error
	go func() { waitErr = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		select {
		case <-exited:
		default:
			cmd.Process.Kill()
			<-exited
		}
	})
	defer http.DefaultClient.CloseIdleConnections()
	etcdtest.WaitFor(t, 30*time.Second, "resyncd leading on its embedded etcd", func() bool {
		code, body := get(t, "http://"+httpAddr+"/readyz")
		return code == http.StatusOK && strings.Contains(body, "leading")
	})

	// A client connected with an open watch while resyncd stops, as agents are.
	c := etcdtest.Client(t, clientAddr)
	wctx, wcancel := context.WithCancel(context.Background())
	defer wcancel()
	wch := c.Watch(wctx, schema.MustLayout("").Revision())
	if _, err := c.Put(context.Background(), "/test/probe", "x"); err != nil {
		t.Fatal(err)
	}

	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-exited:
		if waitErr != nil {
			t.Fatalf("resyncd exited with %v after SIGTERM:\n%s", waitErr, stderr.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("resyncd did not exit within 30s of SIGTERM:\n%s", stderr.String())
	}
	wcancel()
	for range wch {
	}

	out := stderr.String()
	sc := bufio.NewScanner(strings.NewReader(out))
	lines := 0
	for sc.Scan() {
		line := sc.Text()
		lines++
		if !strings.Contains(line, "level=info") && !strings.Contains(line, "level=debug") {
			t.Errorf("a line above info (or not a log line):\n%s", line)
		}
	}
	for _, want := range []string{
		"embedded etcd: Running http and grpc server on single port",
		"embedded etcd: simple token is not cryptographically signed",
		"production=",
		"signal received; shutting down",
		"embedded etcd stopped",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("the log lacks %q:\n%s", want, out)
		}
	}
	if strings.Count(out, "simple token is not cryptographically signed") != 1 {
		t.Errorf("the simple-token note is not logged exactly once:\n%s", out)
	}
	if t.Failed() {
		t.Logf("full log (%d lines):\n%s", lines, out)
	}
}

// TestHelpShowsNoEndpointsDefault: --endpoints has no default (unset means
// the embedded etcd), as docs/resyncd.md's table says.
func TestHelpShowsNoEndpointsDefault(t *testing.T) {
	t.Setenv("RESYNC_ENDPOINTS", "")
	os.Unsetenv("RESYNC_ENDPOINTS")
	var stderr etcdtest.Buffer
	if code := run(context.Background(), []string{"--help"}, io.Discard, &stderr); code != 0 {
		t.Fatalf("--help exit %d", code)
	}
	help := stderr.String()
	i := strings.Index(help, "\n      --endpoints ")
	if i < 0 {
		t.Fatalf("--help lacks --endpoints:\n%s", help)
	}
	entry, _, _ := strings.Cut(help[i+1:], "\n      --")
	if strings.Contains(entry, "default") || !strings.Contains(entry, "unset: resyncd starts an embedded etcd") {
		t.Errorf("--endpoints help %q: want no default and \"unset: resyncd starts an embedded etcd\"", entry)
	}
	if i := strings.Index(help, "\n      --id "); i < 0 || !strings.Contains(help[i:], "unset: <hostname>-<pid>") {
		t.Errorf("--id help lacks \"unset: <hostname>-<pid>\" (docs/resyncd.md's default)")
	} else if entry, _, _ := strings.Cut(help[i+1:], "\n      --"); strings.Contains(entry, "default") {
		t.Errorf("--id help %q shows a per-process default", entry)
	}
	for _, want := range []string{`--http-addr string`, `(default "127.0.0.1:9090")`, `(default "resyncd.etcd")`, `(default 5s)`, `(default 2m0s)`} {
		if !strings.Contains(help, want) {
			t.Errorf("--help lacks %q (docs/resyncd.md's flag table says so)", want)
		}
	}
}

// cleanEnv is the environment without RESYNC_ variables, so that a
// developer's settings do not change the binary under test.
func cleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "RESYNC_") {
			env = append(env, kv)
		}
	}
	return env
}

// TestUnsetIDIsHostnamePID: without --id (and RESYNC_ID) the coordinator id
// is <hostname>-<pid>, as --help and docs/resyncd.md say.
func TestUnsetIDIsHostnamePID(t *testing.T) {
	t.Setenv("RESYNC_ID", "")
	os.Unsetenv("RESYNC_ID")
	o, _, err := parse(nil, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	// coordinator's default: <hostname>-<pid> (coordinator-<pid> if the
	// hostname is not a valid name).
	if want := coordinator.DefaultConfig().ID; o.coord.ID != want || !strings.HasSuffix(want, fmt.Sprintf("-%d", os.Getpid())) {
		t.Errorf("id %q, want %q", o.coord.ID, want)
	}
	if o, _, err = parse([]string{"--id", "rd7"}, io.Discard); err != nil || o.coord.ID != "rd7" {
		t.Errorf("--id rd7: %v %q", err, o.coord.ID)
	}
}
