package main

import (
	"context"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/resyncd/resync/internal/testing/etcdtest"
)

// The unauthenticated HTTP endpoints stay on loopback unless --http-public.
func TestHTTPAddrLoopbackUnlessPublic(t *testing.T) {
	for _, tc := range []struct {
		addr   string
		public bool
		ok     bool
	}{
		{"127.0.0.1:9090", false, true},
		{"localhost:9090", false, true},
		{"[::1]:9090", false, true},
		{"127.0.0.2:9090", false, true},
		{"0.0.0.0:9090", false, false},
		{":9090", false, false},
		{"[::]:9090", false, false},
		{"10.1.2.3:9090", false, false},
		{"example.com:9090", false, false},
		{"0.0.0.0:9090", true, true},
		{":9090", true, true},
		{"nonsense", true, false},
	} {
		err := checkHTTPAddr(tc.addr, tc.public)
		if (err == nil) != tc.ok {
			t.Errorf("checkHTTPAddr(%q, public=%v) = %v, want ok=%v", tc.addr, tc.public, err, tc.ok)
		}
		if err != nil && tc.public == false && tc.ok == false && !strings.Contains(err.Error(), "--http-public") && tc.addr != "nonsense" {
			t.Errorf("error %q does not name --http-public", err)
		}
	}
	// With --http-public, resyncd serves on every interface.
	m := etcdtest.Start(t)
	_, port, _ := net.SplitHostPort(etcdtest.FreeAddr(t))
	var stderr etcdtest.Buffer
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, []string{"--endpoints", m.Endpoint(), "--id", "rd1", "--session-ttl", "2s", "--http-addr", "0.0.0.0:" + port, "--http-public"}, io.Discard, &stderr)
	}()
	defer func() {
		cancel()
		select {
		case code := <-done:
			if code != 0 {
				t.Errorf("resyncd exited %d: %s", code, stderr.String())
			}
		case <-time.After(15 * time.Second):
			t.Errorf("resyncd did not stop")
		}
	}()
	defer http.DefaultClient.CloseIdleConnections()
	etcdtest.WaitFor(t, 20*time.Second, "/healthz on 0.0.0.0:"+port, func() bool {
		code, _ := get(t, "http://127.0.0.1:"+port+"/healthz")
		return code == http.StatusOK
	})
	if !strings.Contains(stderr.String(), "0.0.0.0:"+port) && !strings.Contains(stderr.String(), "[::]:"+port) {
		t.Errorf("resyncd does not log its public address: %s", stderr.String())
	}
}

// The embedded etcd's TLS flags are checked together before anything
// starts.
func TestEmbedTLSFlags(t *testing.T) {
	url := "--listen-client-url"
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"cert without key", []string{url, "https://127.0.0.1:0", "--embed-cert-file", "c.pem"}, "go together"},
		{"cert on http", []string{url, "http://127.0.0.1:0", "--embed-cert-file", "c.pem", "--embed-key-file", "k.pem"}, "must be https://"},
		{"https without cert", []string{url, "https://127.0.0.1:0"}, "needs --embed-cert-file"},
		{"client auth without CA", []string{url, "https://127.0.0.1:0", "--embed-cert-file", "c.pem", "--embed-key-file", "k.pem", "--embed-client-cert-auth"}, "needs --embed-trusted-ca-file"},
		{"client auth without own cert", []string{url, "https://127.0.0.1:0", "--embed-cert-file", "c.pem", "--embed-key-file", "k.pem", "--embed-client-cert-auth", "--embed-trusted-ca-file", "ca.pem"}, "resyncd's own client needs a certificate"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var stderr etcdtest.Buffer
			args := append([]string{"--data-dir", t.TempDir(), "--http-addr", "127.0.0.1:0"}, tc.args...)
			if code := run(context.Background(), args, io.Discard, &stderr); code != 2 || !strings.Contains(stderr.String(), tc.want) {
				t.Fatalf("exit %d %q, want 2 and %q", code, stderr.String(), tc.want)
			}
		})
	}
}

func TestSelfEndpointUsesLoopbackForWildcards(t *testing.T) {
	for in, want := range map[string]string{
		"0.0.0.0:2379":   "127.0.0.1:2379",
		"[::]:2379":      "127.0.0.1:2379",
		":2379":          "127.0.0.1:2379",
		"127.0.0.1:2379": "127.0.0.1:2379",
		"10.0.0.5:2379":  "10.0.0.5:2379",
	} {
		if got := selfEndpoint(in); got != want {
			t.Errorf("selfEndpoint(%q) = %q, want %q", in, got, want)
		}
	}
}
