// Package dialopt holds the gRPC dial options of every etcd client the
// module makes (internal/etcdflags, the test harness): how a client
// reconnects after it lost its connection.
package dialopt

import (
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
)

// Reconnect is how a client reconnects after its connection to etcd was
// lost: attempts at most ReconnectMaxDelay apart, each given at least
// ReconnectTimeout. gRPC's defaults (attempts up to 120 s apart, each
// given 20 s) left an agent cut off for 25 s after a partition healed
// while a connection attempt begun during it hung (chaos seed 20261216),
// its agent name unowned all that time. Every client this module makes
// dials with it; a client passed in (resync.Deps.Client) may too.
func Reconnect() grpc.DialOption {
	return grpc.WithConnectParams(grpc.ConnectParams{
		Backoff:           backoff.Config{BaseDelay: 250 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: ReconnectMaxDelay},
		MinConnectTimeout: ReconnectTimeout,
	})
}

// Reconnect's bounds: after a partition heals, a client is back within
// about their sum.
const (
	ReconnectMaxDelay = 3 * time.Second
	ReconnectTimeout  = 5 * time.Second
)
