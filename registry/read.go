package registry

import (
	"cmp"
	"context"
	"fmt"
	"slices"

	"github.com/sirupsen/logrus"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/resyncd/resync/internal/listwatch"
	"github.com/resyncd/resync/schema"
)

// Snapshot is every registration at one etcd revision.
type Snapshot struct {
	// Revision is the etcd revision the snapshot was read at.
	Revision int64
	// Registrations, sorted by agent, then registration order.
	Registrations []schema.Registration
	// Malformed holds one *schema.DecodeError per skipped key.
	Malformed []error
}

// ReadSnapshot reads all registrations under layout at one revision (in
// pages, so it scales to many thousands of agents).
func ReadSnapshot(ctx context.Context, kv clientv3.KV, layout schema.Layout) (Snapshot, error) {
	kvs, rev, err := listwatch.List(ctx, kv, layout.Registrations(), true, 1000)
	if err != nil {
		return Snapshot{}, fmt.Errorf("registry: snapshot: %w", err)
	}
	return decodeSnapshot(layout, kvs, rev), nil
}

func decodeSnapshot(layout schema.Layout, kvs []*mvccpb.KeyValue, rev int64) Snapshot {
	s := Snapshot{Revision: rev, Registrations: make([]schema.Registration, 0, len(kvs))}
	for _, kv := range kvs {
		reg, err := DecodeKV(layout, kv)
		if err != nil {
			s.Malformed = append(s.Malformed, err)
			continue
		}
		s.Registrations = append(s.Registrations, reg)
	}
	SortRegistrations(s.Registrations)
	return s
}

// SortRegistrations sorts by agent, then registration order.
func SortRegistrations(regs []schema.Registration) {
	slices.SortFunc(regs, func(a, b schema.Registration) int {
		return cmp.Or(cmp.Compare(a.Agent, b.Agent), cmp.Compare(a.Order, b.Order), cmp.Compare(a.Plugin, b.Plugin))
	})
}

// DecodeKV decodes a registration and checks that its key and value agree.
func DecodeKV(layout schema.Layout, kv *mvccpb.KeyValue) (schema.Registration, error) {
	key := string(kv.Key)
	k, err := layout.Parse(key)
	if err != nil {
		return schema.Registration{}, err
	}
	if k.Kind != schema.KindRegistration {
		return schema.Registration{}, &schema.DecodeError{Key: key, Reason: "not a registration key"}
	}
	reg, err := schema.DecodeRegistration(key, kv.Value)
	if err != nil {
		return reg, err
	}
	if reg.Agent != k.Agent || reg.Plugin != k.Plugin {
		return reg, &schema.DecodeError{Key: key, Reason: fmt.Sprintf("value names %s/%s, the key %s/%s", reg.Agent, reg.Plugin, k.Agent, k.Plugin)}
	}
	return reg, nil
}

// Change is one delivery of Watch.
type Change struct {
	// Revision is the etcd revision the receiver is in sync with after it.
	Revision int64
	// Reset, when set, replaces everything the receiver knew: the first
	// change, and the one after the watched history was compacted.
	Reset *Snapshot
	// Put is a registration added or rewritten (e.g. after its agent's
	// session was re-created).
	Put *schema.Registration
	// Deleted is a registration that vanished (deregistered, lease revoked
	// or expired).
	Deleted *schema.PluginID
	// Malformed is a skipped record (a *schema.DecodeError with its key).
	Malformed error
}

// Watch delivers the registrations under layout and then every change to
// them, until ctx ends or handle returns an error (which Watch returns). It
// survives compaction (a new Reset), lost raft leaders and reconnects.
func Watch(ctx context.Context, c *clientv3.Client, layout schema.Layout, log logrus.FieldLogger, handle func(Change) error) error {
	return listwatch.Run(ctx, c, layout.Registrations(), listwatch.Options{Prefix: true, Log: log}, func(ev listwatch.Event) error {
		if ev.Reset {
			s := decodeSnapshot(layout, ev.Kvs, ev.Revision)
			return handle(Change{Revision: ev.Revision, Reset: &s})
		}
		for _, e := range ev.Changes {
			ch := Change{Revision: e.Kv.ModRevision}
			if e.Type == clientv3.EventTypeDelete {
				k, err := layout.Parse(string(e.Kv.Key))
				if err != nil || k.Kind != schema.KindRegistration {
					continue // a garbage key went away: nothing to report
				}
				ch.Deleted = &schema.PluginID{Agent: k.Agent, Plugin: k.Plugin}
			} else if reg, err := DecodeKV(layout, e.Kv); err != nil {
				ch.Malformed = err
			} else {
				ch.Put = &reg
			}
			if err := handle(ch); err != nil {
				return err
			}
		}
		return nil
	})
}
