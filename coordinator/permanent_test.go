package coordinator

import (
	"errors"
	"fmt"
	"testing"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// TestPermanentErrors: the errors a retry cannot fix are permanent; etcd's
// "too many requests" and NOSPACE share their gRPC code (ResourceExhausted)
// with "request too large" but pass, so they are retried, as a timeout is.
func TestPermanentErrors(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{rpctypes.ErrRequestTooLarge, true},
		{rpctypes.ErrGRPCRequestTooLarge, true},
		{rpctypes.ErrTooManyOps, true},
		{rpctypes.ErrPermissionDenied, true},
		{fmt.Errorf("write rounds/7: %w", rpctypes.ErrRequestTooLarge), true},
		{status.Error(codes.ResourceExhausted, "grpc: received message larger than max (10721061 vs. 2097152)"), true},
		{rpctypes.ErrTooManyRequests, false},
		{rpctypes.ErrGRPCRequestTooManyRequests, false},
		{fmt.Errorf("write rounds/7: %w", rpctypes.ErrTooManyRequests), false},
		{rpctypes.ErrNoSpace, false},
		{rpctypes.ErrGRPCNoSpace, false},
		{rpctypes.ErrTimeout, false},
		{status.Error(codes.Unavailable, "connection refused"), false},
		{errors.New("context deadline exceeded"), false},
	} {
		if got := permanent(tc.err); got != tc.want {
			t.Errorf("permanent(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}
