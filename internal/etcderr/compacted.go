package etcderr

import (
	"errors"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
)

// compactedTries bounds ReadAgainIfCompacted's reads.
const compactedTries = 3

// ReadAgainIfCompacted runs read, which reads at one etcd revision that
// it chooses itself (that of its first read), and runs it again while it
// fails because etcd compacted that revision away between two of its
// reads: three times in all. A compaction is a moment, and its error says
// nothing about what is read; a compaction every time says something, and
// the error is returned. read must start afresh each time.
func ReadAgainIfCompacted(read func() error) error {
	for try := 1; ; try++ {
		err := read()
		if try == compactedTries || !errors.Is(err, rpctypes.ErrCompacted) {
			return err
		}
	}
}
