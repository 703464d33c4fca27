package etcdflags

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"os"
	"strings"
	"syscall"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// diagnoseWithin bounds the TLS diagnosis of an unreachable etcd.
const diagnoseWithin = time.Second

// diagnoseTLS explains why an endpoint that accepts TCP connections did not
// answer, when the reason is TLS: the gRPC client only reports a dial
// timeout. It tries the first endpoint that accepts a connection, once,
// within diagnoseWithin, and returns "" when it finds nothing to say (the
// port is closed, or TLS is fine). Nothing is sent beyond a TLS handshake.
func diagnoseTLS(ctx context.Context, cfg clientv3.Config) string {
	ctx, cancel := context.WithTimeout(ctx, diagnoseWithin)
	defer cancel()
	var d net.Dialer
	for _, ep := range cfg.Endpoints {
		host := ep
		if i := strings.Index(host, "://"); i >= 0 {
			host = host[i+3:]
		}
		conn, err := d.DialContext(ctx, "tcp", host)
		if err != nil {
			continue
		}
		hint := diagnoseConn(ctx, conn, host, cfg.TLS)
		conn.Close()
		if hint != "" {
			return hint
		}
	}
	return ""
}

func diagnoseConn(ctx context.Context, conn net.Conn, host string, tc *tls.Config) string {
	deadline, _ := ctx.Deadline()
	conn.SetDeadline(deadline)
	if tc == nil {
		// A plain client: does the server speak TLS? (Only a handshake,
		// to tell the operator; no request is sent.)
		tconn := tls.Client(conn, &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS12})
		if tconn.HandshakeContext(ctx) == nil {
			return "the server speaks TLS: use an https:// endpoint, --cacert (and --cert/--key if it requires client certificates)"
		}
		return ""
	}
	tc = tc.Clone()
	if tc.ServerName == "" {
		if h, _, err := net.SplitHostPort(host); err == nil {
			tc.ServerName = h
		}
	}
	tconn := tls.Client(conn, tc)
	if err := tconn.HandshakeContext(ctx); err != nil {
		if strings.Contains(err.Error(), "does not look like a TLS handshake") || errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET) {
			return "the server closed the connection in the TLS handshake: it may not speak TLS (then use an http:// endpoint and no --cacert/--cert/--key)"
		}
		if strings.Contains(err.Error(), "x509") {
			return "TLS handshake failed: " + oneLineErr(err) + " (--cacert must be the CA that signed the server's certificate, and the certificate must name the endpoint's host)"
		}
		return "TLS handshake failed: " + oneLineErr(err) + certHint(tc)
	}
	// With TLS 1.3 the server checks the client's certificate after the
	// client's side of the handshake: a refusal arrives as an alert on the
	// first read. A server that is fine sends its HTTP/2 settings or waits.
	var b [1]byte
	conn.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	if _, err := tconn.Read(b[:]); err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			return ""
		}
		if strings.Contains(err.Error(), "remote error") {
			return "TLS: the server refused the connection: " + oneLineErr(err) + certHint(tc)
		}
	}
	return ""
}

func certHint(tc *tls.Config) string {
	if len(tc.Certificates) == 0 && tc.GetClientCertificate == nil {
		return " (no client certificate given: set --cert and --key)"
	}
	return " (check that --cert is signed by a CA the server trusts, and --cacert is the CA of the server's certificate)"
}

func oneLineErr(err error) string {
	return strings.Join(strings.Fields(err.Error()), " ")
}
