package embedetcd

import (
	"io"
	"net"
	"sync"
)

// front forwards client TCP connections to etcd's private listener and can
// cut them all at once.
type front struct {
	ln     net.Listener
	target string
	wg     sync.WaitGroup

	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed bool
}

func listenFront(addr string) (*front, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	return &front{ln: ln, conns: map[net.Conn]struct{}{}}, nil
}

func (f *front) start(target string) {
	f.target = target
	f.wg.Add(1)
	go func() {
		defer f.wg.Done()
		for {
			c, err := f.ln.Accept()
			if err != nil {
				return // closed
			}
			f.wg.Add(1)
			go func() {
				defer f.wg.Done()
				f.pipe(c)
			}()
		}
	}()
}

// track adds c unless the front is closed.
func (f *front) track(c net.Conn) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return false
	}
	f.conns[c] = struct{}{}
	return true
}

func (f *front) untrack(c net.Conn) {
	f.mu.Lock()
	delete(f.conns, c)
	f.mu.Unlock()
	c.Close()
}

func (f *front) pipe(in net.Conn) {
	if !f.track(in) {
		in.Close()
		return
	}
	defer f.untrack(in)
	out, err := net.Dial("tcp", f.target)
	if err != nil {
		return
	}
	if !f.track(out) {
		out.Close()
		return
	}
	defer f.untrack(out)
	done := make(chan struct{}, 2)
	cp := func(dst, src net.Conn) {
		io.Copy(dst, src)
		// Either side ending ends both: half-open gRPC connections are useless.
		dst.Close()
		src.Close()
		done <- struct{}{}
	}
	go cp(out, in)
	go cp(in, out)
	<-done
	<-done
}

// close stops accepting, cuts every connection and waits for the pipes.
func (f *front) close() {
	f.ln.Close()
	f.mu.Lock()
	f.closed = true
	for c := range f.conns {
		c.Close()
	}
	f.mu.Unlock()
	f.wg.Wait()
}
