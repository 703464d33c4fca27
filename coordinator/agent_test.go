package coordinator

import (
	"context"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/resyncd/resync/internal/testing/etcdtest"
	"github.com/resyncd/resync/schema"
)

var layout = schema.MustLayout(schema.DefaultPrefix)

func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func testLogger(t *testing.T) logrus.FieldLogger  { return etcdtest.Logger(t, "info") }
func quietLogger(t *testing.T) logrus.FieldLogger { return etcdtest.Logger(t, "error") }
func clientv3WithPrefix() clientv3.OpOption       { return clientv3.WithPrefix() }
