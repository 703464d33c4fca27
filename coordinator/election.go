package coordinator

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/sirupsen/logrus"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/resyncd/resync/schema"
)

// The election is etcd's recipe (a key per candidate under election/, the
// oldest leads, each waits for the deletion of its predecessor) with two
// differences, both decided here:
//
//   - Only coordinators' keys count (see CandidateKey): a stray key under
//     election/ (an operator's etcdctl put, an old version) is logged and
//     ignored, where concurrency.Election waits for its deletion for ever.
//   - Giving up is only a cancelled ctx: no Resign runs inside the campaign
//     (concurrency.Election's Campaign calls Resign with the client's own
//     context, which blocks while etcd is unreachable). The key goes with
//     the session's lease, revoked within the close budget.

// Candidate is one coordinator's key under election/, as read from etcd.
type Candidate struct {
	Key   string
	ID    string           // the coordinator id (the key's value)
	Lease clientv3.LeaseID // the lease the key is attached to
	Term  int64            // the key's create revision: the fencing token
}

// CandidateKey decodes kv as a coordinator's election key. It is one when
// its name is the hex id of the lease it is attached to and its value is a
// valid coordinator id; anything else under election/ is an error naming
// the key and what is wrong. The campaign, Leader (and so /readyz, /status
// and resyncctl status) all use this one rule.
func CandidateKey(layout schema.Layout, kv *mvccpb.KeyValue) (Candidate, error) {
	key := string(kv.Key)
	bad := func(format string, a ...any) (Candidate, error) {
		return Candidate{}, &schema.DecodeError{Key: key, Reason: "not a coordinator's election key: " + fmt.Sprintf(format, a...) + "; delete it"}
	}
	name, ok := strings.CutPrefix(key, layout.Election()+"/")
	if !ok {
		return bad("not under %s/", layout.Election())
	}
	if kv.Lease == 0 {
		return bad("it has no lease")
	}
	lease, err := strconv.ParseUint(name, 16, 64)
	if err != nil || fmt.Sprintf("%x", lease) != name {
		return bad("name %q is not a lease id in hex", name)
	}
	if int64(lease) != kv.Lease {
		return bad("name %q is not the id of its lease %x", name, kv.Lease)
	}
	if err := schema.ValidateToken("coordinator id", string(kv.Value)); err != nil {
		return bad("value: %v", err)
	}
	return Candidate{Key: key, ID: string(kv.Value), Lease: clientv3.LeaseID(kv.Lease), Term: kv.CreateRevision}, nil
}

// Leader returns the current leader's id and the leader key's create
// revision, read from etcd: the oldest coordinator's key under election/
// ("" if none leads). Keys that are not a coordinator's are skipped.
func Leader(ctx context.Context, c *clientv3.Client, layout schema.Layout) (id string, term int64, err error) {
	resp, err := c.Get(ctx, layout.Election()+"/", clientv3.WithPrefix(),
		clientv3.WithSort(clientv3.SortByCreateRevision, clientv3.SortAscend))
	if err != nil {
		return "", 0, fmt.Errorf("coordinator: read leader: %w", err)
	}
	for _, kv := range resp.Kvs {
		if cand, err := CandidateKey(layout, kv); err == nil {
			return cand.ID, cand.Term, nil
		}
	}
	return "", 0, nil
}

// candidate campaigns with one session's lease.
type candidate struct {
	c      *clientv3.Client
	layout schema.Layout
	id     string
	lease  clientv3.LeaseID
	log    logrus.FieldLogger
	warned map[string]bool // stray keys already logged

	key  string
	term int64
}

func newCandidate(c *clientv3.Client, layout schema.Layout, id string, lease clientv3.LeaseID, log logrus.FieldLogger) *candidate {
	return &candidate{c: c, layout: layout, id: id, lease: lease, log: log, warned: map[string]bool{},
		key: fmt.Sprintf("%s/%x", layout.Election(), int64(lease))}
}

// campaign puts our key on the lease and waits until no older coordinator
// key exists. It returns when elected, when ctx ends, when lost is closed,
// or on an etcd error; each etcd call is bounded by opTimeout.
func (cd *candidate) campaign(ctx context.Context, lost <-chan struct{}, opTimeout time.Duration) error {
	tctx, cancel := context.WithTimeout(ctx, opTimeout)
	resp, err := cd.c.Txn(tctx).
		If(clientv3.Compare(clientv3.CreateRevision(cd.key), "=", 0)).
		Then(clientv3.OpPut(cd.key, cd.id, clientv3.WithLease(cd.lease))).
		Else(clientv3.OpGet(cd.key)).Commit()
	cancel()
	if err != nil {
		return err
	}
	cd.term = resp.Header.Revision
	if !resp.Succeeded {
		kvs := resp.Responses[0].GetResponseRange().Kvs
		if len(kvs) != 1 || string(kvs[0].Value) != cd.id {
			return fmt.Errorf("%w: election key %s exists with another value", ErrDeposed, cd.key)
		}
		cd.term = kvs[0].CreateRevision
	}
	for {
		tctx, cancel := context.WithTimeout(ctx, opTimeout)
		pred, rev, err := cd.predecessor(tctx)
		cancel()
		if err != nil {
			return err
		}
		if pred == "" {
			return nil
		}
		cd.log.WithField("predecessor", pred).Debug("coordinator: standing by")
		if err := cd.waitGone(ctx, lost, pred, rev); err != nil {
			return err
		}
	}
}

// predecessor is the newest coordinator key older than ours ("" if none),
// and the revision it was read at.
func (cd *candidate) predecessor(ctx context.Context) (string, int64, error) {
	resp, err := cd.c.Get(ctx, cd.layout.Election()+"/", clientv3.WithPrefix(),
		clientv3.WithMaxCreateRev(cd.term-1), clientv3.WithSort(clientv3.SortByCreateRevision, clientv3.SortDescend))
	if err != nil {
		return "", 0, err
	}
	for _, kv := range resp.Kvs {
		if _, err := CandidateKey(cd.layout, kv); err != nil {
			if !cd.warned[string(kv.Key)] {
				cd.warned[string(kv.Key)] = true
				cd.log.WithError(err).WithField("key", string(kv.Key)).Warn("coordinator: ignoring a stray key under election/")
			}
			continue
		}
		return string(kv.Key), resp.Header.Revision, nil
	}
	return "", resp.Header.Revision, nil
}

// waitGone waits for any change of key after rev (its deletion, or a
// rewrite that may make it stray): the caller then looks again.
func (cd *candidate) waitGone(ctx context.Context, lost <-chan struct{}, key string, rev int64) error {
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	wch := cd.c.Watch(wctx, key, clientv3.WithRev(rev+1))
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-lost:
			return fmt.Errorf("%w: session expired while campaigning", ErrDeposed)
		case wr, ok := <-wch:
			if !ok {
				return fmt.Errorf("coordinator: watch of %s ended", key)
			}
			if wr.CompactRevision != 0 {
				return nil // compacted past rev: look again
			}
			if err := wr.Err(); err != nil {
				return fmt.Errorf("coordinator: watch of %s: %w", key, err)
			}
			if len(wr.Events) > 0 {
				return nil
			}
		}
	}
}
