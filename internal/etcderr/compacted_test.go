package etcderr

import (
	"errors"
	"fmt"
	"testing"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
)

func TestReadAgainIfCompacted(t *testing.T) {
	other := errors.New("unreachable")
	for _, c := range []struct {
		name  string
		errs  []error // what each read returns, in turn
		reads int
		want  error
	}{
		{"clean", []error{nil}, 1, nil},
		{"compacted once", []error{fmt.Errorf("read x: %w", rpctypes.ErrCompacted), nil}, 2, nil},
		{"compacted every time", []error{rpctypes.ErrCompacted, rpctypes.ErrCompacted, rpctypes.ErrCompacted, nil}, 3, rpctypes.ErrCompacted},
		{"another error", []error{other, nil}, 1, other},
	} {
		t.Run(c.name, func(t *testing.T) {
			reads := 0
			err := ReadAgainIfCompacted(func() error {
				reads++
				return c.errs[reads-1]
			})
			if reads != c.reads || !errors.Is(err, c.want) || (c.want == nil && err != nil) {
				t.Errorf("%d reads, error %v; want %d reads, error %v", reads, err, c.reads, c.want)
			}
		})
	}
}
