package main

import (
	"context"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/resyncd/resync"
	"github.com/resyncd/resync/internal/testing/etcdtest"
	"github.com/resyncd/resync/schema"
)

// A second process with the same --name takes the name over: the first
// resync-agent exits 3 with one line naming the conflict.
func TestDisplacedAgentExitsNonZero(t *testing.T) {
	m := etcdtest.Start(t)
	c := m.Client(t)
	var stderr etcdtest.Buffer
	code := make(chan int, 1)
	go func() {
		code <- run(context.Background(), []string{"--name", "twin", "--plugins", "p", "--endpoints", m.Endpoint(), "--log-level", "error"}, io.Discard, &stderr)
	}()
	layout := schema.MustLayout(schema.DefaultPrefix)
	etcdtest.WaitFor(t, 10*time.Second, "the first agent owning the name", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		resp, err := c.Get(ctx, layout.Owner("twin"))
		return err == nil && len(resp.Kvs) == 1
	})
	p, err := resync.New(resync.Deps{Log: etcdtest.Logger(t, "error"), Client: c}, resync.DefaultConfig("twin"))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	p.Register("p")
	select {
	case got := <-code:
		out := strings.TrimSpace(stderr.String())
		lines := strings.Split(out, "\n")
		last := lines[len(lines)-1]
		if got != 3 || !strings.HasPrefix(last, "resync-agent: ") || !strings.Contains(last, "displaced") {
			t.Fatalf("exit %d, stderr %q: want 3 and one line naming the displacement", got, out)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the displaced resync-agent did not exit")
	}
}
