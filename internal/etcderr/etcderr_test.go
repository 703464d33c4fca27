package etcderr

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// TestPermanent: the errors a retry cannot fix are permanent, in the
// client's and the server's form, however wrapped; etcd's "too many
// requests" and NOSPACE share their gRPC code (ResourceExhausted) with a
// message too large for gRPC but pass, so they are not, nor is a timeout
// or an unreachable etcd.
func TestPermanent(t *testing.T) {
	wrap := func(err error) error { return fmt.Errorf("write rounds/7: %w", err) }
	for _, tc := range []struct {
		name string
		err  error
		want bool
	}{
		{"request too large", rpctypes.ErrRequestTooLarge, true},
		{"request too large, server form", rpctypes.ErrGRPCRequestTooLarge, true},
		{"request too large, wrapped", wrap(rpctypes.ErrRequestTooLarge), true},
		{"too many ops", rpctypes.ErrTooManyOps, true},
		{"too many ops, server form", rpctypes.ErrGRPCTooManyOps, true},
		{"duplicate key", rpctypes.ErrDuplicateKey, true},
		{"duplicate key, server form", rpctypes.ErrGRPCDuplicateKey, true},
		{"permission denied", rpctypes.ErrPermissionDenied, true},
		{"permission denied, server form", rpctypes.ErrGRPCPermissionDenied, true},
		{"permission denied, wrapped", wrap(rpctypes.ErrPermissionDenied), true},
		{"permission denied, gRPC code", status.Error(codes.PermissionDenied, "denied by a proxy"), true},
		{"client message limit", status.Error(codes.ResourceExhausted, "grpc: trying to send message larger than max (2097253 vs. 2097152)"), true},
		{"server message limit", status.Error(codes.ResourceExhausted, "grpc: received message larger than max (10721061 vs. 2097152)"), true},
		{"message limit, wrapped", wrap(status.Error(codes.ResourceExhausted, "grpc: trying to send message larger than max (2097253 vs. 2097152)")), true},

		{"nil", nil, false},
		{"too many requests", rpctypes.ErrTooManyRequests, false},
		{"too many requests, server form", rpctypes.ErrGRPCRequestTooManyRequests, false},
		{"too many requests, wrapped", wrap(rpctypes.ErrTooManyRequests), false},
		{"NOSPACE", rpctypes.ErrNoSpace, false},
		{"NOSPACE, server form", rpctypes.ErrGRPCNoSpace, false},
		{"NOSPACE, wrapped", wrap(rpctypes.ErrNoSpace), false},
		{"NOSPACE, server form wrapped", wrap(rpctypes.ErrGRPCNoSpace), false},
		{"etcd timeout", rpctypes.ErrTimeout, false},
		{"no leader", rpctypes.ErrNoLeader, false},
		{"leader changed", rpctypes.ErrLeaderChanged, false},
		{"lease not found", rpctypes.ErrLeaseNotFound, false},
		{"unavailable", status.Error(codes.Unavailable, "connection refused"), false},
		{"unavailable, wrapped", wrap(status.Error(codes.Unavailable, "connection refused")), false},
		{"deadline exceeded, gRPC code", status.Error(codes.DeadlineExceeded, "context deadline exceeded"), false},
		{"deadline exceeded", context.DeadlineExceeded, false},
		{"deadline exceeded, wrapped", wrap(context.DeadlineExceeded), false},
		{"canceled", context.Canceled, false},
		{"plain error", errors.New("context deadline exceeded"), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := Permanent(tc.err); got != tc.want {
				t.Errorf("Permanent(%v) = %v, want %v", tc.err, got, tc.want)
			}
		})
	}
}

func TestIsNoSpaceAndExplain(t *testing.T) {
	for _, err := range []error{
		rpctypes.ErrNoSpace, rpctypes.ErrGRPCNoSpace,
		fmt.Errorf("watcher: write acks: %w", rpctypes.ErrNoSpace),
		errors.New("put: etcdserver: mvcc: database space exceeded"),
	} {
		if !IsNoSpace(err) {
			t.Errorf("IsNoSpace(%v) = false", err)
		}
		ex := Explain(err)
		if !errors.Is(ex, err) || !strings.HasPrefix(ex.Error(), err.Error()) || !strings.Contains(ex.Error(), "etcdctl alarm disarm") ||
			!strings.Contains(ex.Error(), "etcdctl defrag") || !strings.Contains(ex.Error(), "etcdctl compact") {
			t.Errorf("Explain(%v) = %q", err, ex)
		}
		if twice := Explain(ex); twice.Error() != ex.Error() {
			t.Errorf("explained twice: %q", twice)
		}
	}
	for _, err := range []error{nil, rpctypes.ErrCompacted, context.DeadlineExceeded, errors.New("no space left on device")} {
		if IsNoSpace(err) || Explain(err) != err {
			t.Errorf("%v taken for NOSPACE", err)
		}
	}
}
