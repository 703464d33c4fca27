package etcdtest

import (
	"net"
	"testing"
	"time"
)

// TestProxyAcceptsAfterManyFailedDials: a member that was down for a while
// leaves the proxy with more failed dials than its error channel holds
// (16); the proxy must still accept and forward once the member is back (a
// 30-minute chaos run lost an agent for good when it stopped accepting).
func TestProxyAcceptsAfterManyFailedDials(t *testing.T) {
	target := FreeAddr(t) // nothing listens there yet: every dial fails
	p := NewProxy(t, target)
	for i := 0; i < 40; i++ {
		c, err := net.DialTimeout("tcp", p.Endpoint, time.Second)
		if err != nil {
			t.Fatalf("dial %d to the proxy: %v", i, err)
		}
		c.Close()
	}
	ln, err := net.Listen("tcp", target)
	if err != nil {
		t.Fatalf("the member's address: %v", err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		if c, err := ln.Accept(); err == nil {
			accepted <- c
		}
	}()
	// The proxy may still be working through the failed dials: connect
	// until one reaches the member.
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	var got net.Conn
	WaitFor(t, 10*time.Second, "a connection through the proxy to reach the member", func() bool {
		select {
		case got = <-accepted:
			return true
		default:
		}
		if c, err := net.DialTimeout("tcp", p.Endpoint, time.Second); err == nil {
			conns = append(conns, c)
		}
		return false
	})
	got.Close()
}
