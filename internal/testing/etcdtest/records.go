package etcdtest

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/resyncd/resync/schema"
)

// ReadRevision reads the revision record; ok is false when the key is
// absent. An etcd error or a malformed record is returned as err, so each
// test decides whether garbage is a failure (coordinator tests) or expected
// (chaos tests write it on purpose).
func ReadRevision(ctx context.Context, c *clientv3.Client, l schema.Layout) (rec schema.Revision, ok bool, err error) {
	resp, err := c.Get(ctx, l.Revision())
	if err != nil || len(resp.Kvs) == 0 {
		return schema.Revision{}, false, err
	}
	rec, err = l.DecodeRevision(l.Revision(), resp.Kvs[0].Value)
	return rec, err == nil, err
}

// PutRecord plays the leader's write of a revision record: in one Txn the
// revision key and its wake keys (every wake shard for an all-scope
// record, the own wake key of each agent of agents otherwise), without
// fencing or leases. It is for tests whose agents follow records written
// by hand.
func PutRecord(ctx context.Context, c *clientv3.Client, l schema.Layout, rec schema.Revision, agents ...string) error {
	b, err := schema.Encode(rec)
	if err != nil {
		return err
	}
	ops := []clientv3.Op{clientv3.OpPut(l.Revision(), string(b))}
	if rec.Scope.IsAll() {
		for i := range schema.WakeShards {
			ops = append(ops, clientv3.OpPut(l.WakeShard(i), string(b)))
		}
	}
	for _, a := range agents {
		ops = append(ops, clientv3.OpPut(l.WakeAgent(a), string(b)))
	}
	_, err = c.Txn(ctx).Then(ops...).Commit()
	return err
}

// ReadRound reads rounds/<n>, with ReadRevision's conventions.
func ReadRound(ctx context.Context, c *clientv3.Client, l schema.Layout, n uint64) (rec schema.Round, ok bool, err error) {
	resp, err := c.Get(ctx, l.Round(n))
	if err != nil || len(resp.Kvs) == 0 {
		return schema.Round{}, false, err
	}
	rec, err = l.DecodeRound(l.Round(n), resp.Kvs[0].Value)
	return rec, err == nil, err
}

// EtcdctlKVs decodes the output of `etcdctl get ... -w json` into keys and
// values (etcdctl prints both base64-encoded).
func EtcdctlKVs(out []byte) (map[string]string, error) {
	var doc struct {
		Kvs []struct {
			Key   string `json:"key"`
			Value string `json:"value"`
		} `json:"kvs"`
	}
	if err := json.Unmarshal(out, &doc); err != nil {
		return nil, fmt.Errorf("etcdctl -w json output does not parse: %w", err)
	}
	kvs := make(map[string]string, len(doc.Kvs))
	for _, kv := range doc.Kvs {
		k, err := base64.StdEncoding.DecodeString(kv.Key)
		if err != nil {
			return nil, fmt.Errorf("etcdctl key %q is not base64: %w", kv.Key, err)
		}
		v, err := base64.StdEncoding.DecodeString(kv.Value)
		if err != nil {
			return nil, fmt.Errorf("etcdctl value of %q is not base64: %w", k, err)
		}
		kvs[string(k)] = string(v)
	}
	return kvs, nil
}
