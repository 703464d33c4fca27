package registry

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"

	"github.com/sirupsen/logrus"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/resyncd/resync/internal/backoff"
	"github.com/resyncd/resync/schema"
)

// One process per agent name.
//
// The process that owns an agent name writes owners/<agent> on its session
// lease. A new process takes the name over at once, even while an older
// process (alive, or crashed with its lease still alive) holds it: its first
// claim overwrites the owner key and deletes the agent's registrations in
// one Txn, then writes its own. Every later write of registrations is a Txn
// guarded by the owner key still being on the writer's lease, so a displaced
// process can never write over the new owner, also not after it loses its
// session: once it has owned the name, it claims it again only over an
// absent owner key (its own key vanished with its lease, or the prefix was
// wiped), its own, or a stale one (below). A process that sees the owner
// key written by another process after its own claim is displaced: its
// Registry stops (and revokes its lease), and Displaced/Err report it. A
// re-claim never deletes the process's own registrations (they are written
// again on its lease): only another process's, which a running round would
// otherwise keep.
//
// The owner watch follows the key (ownerEvent) and, at each (re)start,
// compares what etcd holds with what the process believes it owns
// (ownerState): after an etcd restore that kept the process's lease, the
// owner key and registrations it wrote may be gone with the history.
//
// Which process is newer is decided by etcd's order, never by a host's
// clock (a host whose clock is behind would otherwise lose its own name):
//
//   - A process that has owned the name remembers the revision of its last
//     claim. An owner key written after it (a higher ModRevision) is a
//     newer process's: it is displaced. An owner key written before it
//     cannot be there in one history, since the claim overwrote it: it came
//     back with an etcd restore (with or without --bump-revision, the keys
//     keep their revisions), so it is stale and the live claimant takes the
//     name over. A restore therefore never locks a live owner out of its
//     name while the restored owner's lease waits to expire.
//   - A process that never owned the name does not take it from a process
//     born after it, in etcd's order: Born is the header revision of a
//     process's first lease grant, recorded in its owner key. (A record
//     without Born, of an older version, counts as born when written.) So a
//     process that got its lease, then lost etcd before claiming, does not
//     displace the one that replaced it meanwhile. A grant writes no
//     revision: two processes born with no write in between are not
//     ordered, and the later claim wins.
//
// After a restore without --bump-revision, revisions start again below
// those a live process remembers: a read below its own claim tells it so,
// and then its claim orders nothing and births decide, as for a process
// that never owned the name. One case stays ambiguous: a process born
// after the backup, in the history the restore undid, counts as born after
// one born in the restored history at a lower revision (it takes the name,
// loudly, and one owner is left). etcd advises --bump-revision for any
// cluster whose clients remember revisions.

// Owner is the value of owners/<agent> (schema.Owner): the process that
// owns the agent name.
type Owner = schema.Owner

func newProcessID() string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func (r *Registry) ownerValue(lease clientv3.LeaseID) string {
	host, _ := os.Hostname()
	refused, names := r.Refused()
	b, _ := json.Marshal(Owner{
		Agent: r.cfg.Agent, Lease: fmt.Sprintf("%x", int64(lease)), Process: r.process,
		Host: host, PID: os.Getpid(), Started: r.started, ClaimedAt: r.clock.Now().UTC(), Born: r.born,
		Refused: refused, RefusedNames: names,
	})
	return string(b)
}

// errNotOwner: a guarded write found the owner key not on our lease; the
// loop claims again (or finds it is displaced).
var errNotOwner = errors.New("registry: the owner key is not on this session's lease")

// errRewrite: the name was taken over from another process and the agent's
// registrations deleted; the loop writes them all again.
var errRewrite = errors.New("registry: agent name taken over; writing every registration again")

// claim makes this session's lease the owner of the agent name, or finds
// that this process is displaced (then it returns ErrDisplaced). When nobody
// owns the name, first (at most schema.MaxTxnOps-1 registration writes) go in the
// same Txn, and n is len(first). When another process owns it, its owner key
// is overwritten and the agent's registrations deleted, and errRewrite asks
// the loop to write them all again.
func (r *Registry) claim(lease clientv3.LeaseID, gen uint64, first []clientv3.Op) (n int, err error) {
	key := r.layout.Owner(r.cfg.Agent)
	ctx, cancel := context.WithTimeout(r.ctx, r.cfg.OpTimeout)
	defer cancel()
	// The common case, nobody owns the name: one round trip, as many as
	// a registry without ownership.
	then := append([]clientv3.Op{clientv3.OpPut(key, r.ownerValue(lease), clientv3.WithLease(lease))}, first...)
	tresp, err := r.c.Txn(ctx).If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
		Then(then...).Else(clientv3.OpGet(key)).Commit()
	if err != nil {
		return 0, err
	}
	n = len(first)
	if !tresp.Succeeded {
		if tresp, n, err = r.takeOver(ctx, lease, tresp, first); err != nil {
			return 0, err
		}
	}
	r.mu.Lock()
	if !r.claimed && r.ownerWatch {
		// Watch from the first claim on: before it there is nothing to
		// lose, and an agent that never gets etcd costs no watch.
		r.ownerWG.Add(1)
		go func() {
			defer r.ownerWG.Done()
			r.watchOwner()
		}()
	} else {
		r.Recheck() // the watch may follow another history (a restore)
	}
	r.claimed = true
	r.ownedGen = gen
	r.claimRev = tresp.Header.Revision
	r.claims++
	if n == 0 {
		for _, e := range r.entries {
			e.written = 0 // deleted by the take-over (or never written): write again
		}
		if r.state.Connected {
			r.state.Connected = false
			r.notifyLocked()
		}
	}
	r.mu.Unlock()
	r.log.WithFields(logrus.Fields{"lease": fmt.Sprintf("%x", int64(lease)), "process": r.process, "owner_key": key}).
		Info("registry: this process owns the agent name")
	if n == 0 {
		return 0, errRewrite
	}
	return n, nil
}

// takeOver handles a claim that found the owner key (its Else read, in
// found): it judges the key in etcd's order and either takes the name over
// or returns ErrDisplaced (or errNotOwner when the key changed meanwhile:
// look again). It returns the take-over Txn's response and how many of
// first (registration writes) went in it: when the key is this process's
// own, from an older lease, they move to the new lease in the same Txn
// as the owner key, so no reader sees the owner key on one lease and the
// registrations on another (two owners, to an observer); when it takes
// the name from another process, none (the loop writes them all again).
func (r *Registry) takeOver(ctx context.Context, lease clientv3.LeaseID, found *clientv3.TxnResponse, first []clientv3.Op) (*clientv3.TxnResponse, int, error) {
	key := r.layout.Owner(r.cfg.Agent)
	kvs := found.Responses[0].GetResponseRange().Kvs
	if len(kvs) != 1 {
		return nil, 0, errNotOwner // gone meanwhile: look again
	}
	kv := kvs[0]
	o, derr := r.layout.DecodeOwner(key, kv.Value)
	v := r.judge(o, derr, kv.ModRevision, found.Header.Revision)
	switch v {
	case yield:
		return nil, 0, r.displace(o, kv.ModRevision)
	case takeOver:
		if derr != nil {
			r.log.WithError(derr).Warn("registry: overwriting a malformed owner key")
		}
	}
	// Take the name over: our owner key, and none of another process's
	// registrations (some may be of plugins we lack). Our own are never
	// deleted: they are written again on this lease, so the coordinator
	// never sees them depart (a round would record them departed) nor
	// come back.
	take := []clientv3.Op{clientv3.OpPut(key, r.ownerValue(lease), clientv3.WithLease(lease))}
	n := 0
	if v == takeBack {
		take, n = append(take, first...), len(first)
	} else {
		take = append(take, clientv3.OpDelete(r.layout.AgentRegistrations(r.cfg.Agent), clientv3.WithPrefix()))
	}
	tresp, err := r.c.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(key), "=", kv.ModRevision)).
		Then(take...).Commit()
	if err != nil {
		return nil, 0, err
	}
	if !tresp.Succeeded {
		return nil, 0, errNotOwner // changed meanwhile: look again
	}
	log := r.log.WithFields(logrus.Fields{"other_process": o.Process, "other_lease": o.Lease, "other_host": o.Host, "other_pid": o.PID})
	switch {
	case v == takeStale:
		log.WithField("owner_key_revision", kv.ModRevision).
			Warn("registry: the owner key predates this process's own claim (etcd was restored from a backup?); took the name back from the restored owner")
	case v == takeOver && derr == nil:
		log.Warn("registry: took this agent name over from another process (one process per agent name); it is told and stops")
	}
	return tresp, n, nil
}

// verdict is what a claim makes of an owner key it found.
type verdict int

const (
	takeOver  verdict = iota // another process's (or malformed), older: take the name
	takeBack                 // our own, from an older lease (or a misread watch)
	takeStale                // older than our claim: restored by an etcd restore
	yield                    // a newer process's: this one is displaced
)

// judge decides, in etcd's order, what a claim does with an owner key
// whose value is o (derr if malformed), written at modRev and read at
// readRev.
func (r *Registry) judge(o Owner, derr error, modRev, readRev int64) verdict {
	r.mu.Lock()
	claimed, claimRev, born := r.claimed, r.claimRev, r.born
	r.mu.Unlock()
	// Our claim's revision orders keys only in the history it was made
	// in: a read below it means a restore without --bump-revision took
	// the history back, and then births order the processes, as for one
	// that never owned the name.
	ordered := claimed && readRev >= claimRev
	switch {
	case derr != nil:
		return takeOver
	case o.Process == r.process:
		return takeBack
	case ordered && modRev > claimRev:
		return yield // claimed after us
	case ordered:
		return takeStale
	case bornAfter(o, modRev, born):
		return yield
	case claimed:
		return takeStale // born before us, in a history taken back
	}
	return takeOver
}

// bornAfter reports whether the owner o, whose key was written at modRev,
// came to etcd after a process born at revision born: its own Born when it
// recorded one, else the key's revision. A process not yet born (no lease
// granted: cannot happen in a claim) counts as born last.
func bornAfter(o Owner, modRev, born int64) bool {
	if born == 0 {
		return false
	}
	if o.Born != 0 {
		return o.Born > born
	}
	return modRev > born
}

// displace records that another process owns the agent name: the Registry
// stops. It returns the error Err reports.
func (r *Registry) displace(other Owner, rev int64) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.displaceLocked(other, rev)
}

func (r *Registry) displaceLocked(other Owner, rev int64) error {
	if r.displaced != nil {
		return r.displaced
	}
	r.displaced = fmt.Errorf("%w: agent %q is now owned by %s (owner key written at etcd revision %d); this process stops delivering resync events",
		ErrDisplaced, r.cfg.Agent, other, rev)
	r.log.WithFields(logrus.Fields{"process": r.process, "other_process": other.Process, "other_lease": other.Lease,
		"other_host": other.Host, "other_pid": other.PID}).
		Error("registry: another process took over this agent name; stopping (one process per agent name)")
	close(r.dispc)
	r.cancel()
	return r.displaced
}

// watchOwner follows the owner key: written by another process after our
// claim means displaced; deleted while we own it (a wiped prefix) means
// claim again.
func (r *Registry) watchOwner() {
	key := r.layout.Owner(r.cfg.Agent)
	check := func(value []byte, modRev int64, deleted bool) { r.ownerEvent(key, value, modRev, deleted) }
	// Not a list-then-watch from the list's revision: a watch that starts
	// in the past is "unsynced" in etcd and costs a scan of the history
	// each time etcd catches it up, which a thousand agents' watches on a
	// busy cluster turn into a stall. Instead: watch from now, then read
	// the key once, then follow the events.
	//
	// Each try is one watch: it ends only when the watch does, and resets
	// the pacing when the watch was healthy. Retry returns when r.ctx ends.
	bo := r.backoff()
	_ = backoff.Retry(r.ctx, nil, bo, func(ctx context.Context) error {
		wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
		wch := r.c.Watch(wctx, key, clientv3.WithCreatedNotify())
		healthy := r.followOwner(key, wch, check)
		cancel()
		for range wch {
		}
		if healthy {
			bo.Reset()
		}
		return errWatchEnded
	}, nil)
}

// errWatchEnded is how a watch of the owner key ends for backoff.Retry:
// watched again after the pause.
var errWatchEnded = errors.New("registry: owner watch ended")

// ownerEvent handles a change of the owner key seen by the watch: written
// by another process after our last claim means displaced; deleted (a wiped
// prefix) or malformed after it means claim again. Anything at or before
// our last claim is history: our old key expiring, or the one we replaced.
// The decision and what it changes are made under one lock with the claim
// revision they compare with: a delete of our old lease's key, read before
// a re-claim landed and acted on after it, would otherwise undo the fresh
// claim (issue 24 point 7).
func (r *Registry) ownerEvent(key string, value []byte, modRev int64, deleted bool) {
	var o Owner
	var derr error
	if !deleted {
		o, derr = r.layout.DecodeOwner(key, value)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.claimRev == 0 || modRev <= r.claimRev {
		return
	}
	switch {
	case deleted:
		r.log.WithField("revision", modRev).Warn("registry: the owner key vanished while this process owns the agent name (a wiped prefix?); claiming it again and writing every registration again")
		r.disownedLocked()
	case derr != nil:
		r.log.WithError(derr).Warn("registry: malformed owner key; claiming the name again")
		r.disownedLocked()
	case o.Process != r.process:
		r.displaceLocked(o, modRev)
	}
}

// followOwner reads the owner key once the watch is created, then hands
// every change to check, until the watch ends. It reports whether the
// watch got as far as its first read.
func (r *Registry) followOwner(key string, wch clientv3.WatchChan, check func([]byte, int64, bool)) bool {
	if resp, ok := <-wch; !ok || resp.Err() != nil || !resp.Created {
		return false
	}
	r.mu.Lock()
	claims := r.claims
	r.mu.Unlock()
	ctx, cancel := context.WithTimeout(r.ctx, r.cfg.OpTimeout)
	g, err := r.c.Txn(ctx).Then(clientv3.OpGet(key),
		clientv3.OpGet(r.layout.AgentRegistrations(r.cfg.Agent), clientv3.WithPrefix())).Commit()
	cancel()
	if err != nil {
		return false
	}
	var own *mvccpb.KeyValue
	if kvs := g.Responses[0].GetResponseRange().Kvs; len(kvs) == 1 {
		own = kvs[0]
	}
	r.ownerState(key, own, g.Responses[1].GetResponseRange().Kvs, g.Header.Revision, claims)
	for {
		select {
		case resp, ok := <-wch:
			if !ok {
				return true
			}
			if resp.Err() != nil {
				r.log.WithError(resp.Err()).Debug("registry: owner watch ended; watching again")
				return true
			}
			for _, e := range resp.Events {
				check(e.Kv.Value, e.Kv.ModRevision, e.Type == clientv3.EventTypeDelete)
			}
		case <-r.rewatch:
			// A claim, or Recheck: watch again from now, and read the
			// owner key and the registrations again. After a restore
			// without --bump-revision the old watch waits for
			// revisions the restored history reaches only much later,
			// and would miss a takeover meanwhile.
			return true
		}
	}
}

// ownerState compares what etcd holds at revision rev (the owner key own,
// nil if none, and the agent's registrations; a keys-only read drops their
// leases) with what this
// process believes it owns, and repairs the difference. The owner watch
// reads it at each (re)start: after every claim, a watch error (such as
// the compaction that a restore with --bump-revision --mark-compacted
// makes every resumed watch see) and Recheck. Unlike a watch event, the
// state is judged by what is there now: another process's key older than
// our claim can only have been restored by an etcd restore that kept our
// lease alive (the key we overwrote came back, our claim did not), so we
// claim the name again, and take it back from the stale key (claim); the
// registrations we wrote and the restore lost are written again.
func (r *Registry) ownerState(key string, own *mvccpb.KeyValue, regs []*mvccpb.KeyValue, rev int64, claims uint64) {
	var o Owner
	var derr error
	if own != nil {
		o, derr = r.layout.DecodeOwner(key, own.Value)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.claims != claims || r.ownedGen == 0 || r.ownedGen != r.state.Generation {
		return // read before the last claim, or a claim under way: it decides
	}
	log := r.log.WithField("revision", rev)
	switch {
	case rev < r.claimRev:
		log.WithField("own_claim_revision", r.claimRev).Warn("registry: etcd's revision is below this process's own claim: its history was taken back (an etcd restore without --bump-revision?); claiming the name again and writing every registration again")
		r.disownedLocked()
		return
	case own == nil:
		log.Warn("registry: the owner key vanished while this process owns the agent name (a wiped prefix? an etcd restore?); claiming it again and writing every registration again")
		r.disownedLocked()
		return
	case derr != nil:
		log.WithError(derr).Warn("registry: malformed owner key; claiming the name again")
		r.disownedLocked()
		return
	case o.Process != r.process && own.ModRevision > r.claimRev:
		r.displaceLocked(o, own.ModRevision)
		return
	case o.Process != r.process || clientv3.LeaseID(own.Lease) != r.state.Lease:
		log.WithFields(logrus.Fields{"other_process": o.Process, "other_lease": o.Lease, "owner_key_revision": own.ModRevision, "own_claim_revision": r.claimRev}).
			Warn("registry: the owner key predates this process's own claim (etcd was restored from a backup?); claiming the name again")
		r.disownedLocked()
		return
	}
	on := map[string]bool{}
	for _, kv := range regs {
		on[string(kv.Key)] = clientv3.LeaseID(kv.Lease) == r.state.Lease
	}
	var lost []string
	for _, e := range r.entries {
		if e.written == r.ownedGen && e.rev <= rev && !on[r.layout.Registration(e.reg.Agent, e.reg.Plugin)] {
			e.written = 0
			lost = append(lost, e.reg.Plugin)
		}
	}
	if len(lost) > 0 {
		log.WithField("plugins", lost).Warn("registry: registrations missing from etcd (an etcd restore?); writing them again")
		if r.state.Connected {
			r.state.Connected = false
			r.notifyLocked()
		}
		r.poke()
	}
}

// Recheck asks the Registry to compare the owner key and its registrations
// in etcd with what it believes it owns, and repair the difference (claim
// the name again, find itself displaced, write lost registrations again).
// A Watcher calls it when etcd refuses an ack or request because the owner
// key is not on the agent's lease, and when it sees the resync history
// reset: after an etcd restore the owner watch may not have noticed. It
// does not wait; with no owner watch (WithOwnerWatch) it does nothing.
func (r *Registry) Recheck() {
	select {
	case r.rewatch <- struct{}{}:
	default:
	}
}

// disowned makes the loop claim the name again and write every
// registration again (they may be gone with the owner key).
func (r *Registry) disowned() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.disownedLocked()
}

func (r *Registry) disownedLocked() {
	r.ownedGen = 0
	for _, e := range r.entries {
		e.written = 0
	}
	if r.state.Connected {
		r.state.Connected = false
		r.notifyLocked()
	}
	r.poke() // never blocks
}

// Displaced is closed when another process took over the agent name; Err
// then says which. The Registry has stopped by then (its lease revoked).
func (r *Registry) Displaced() <-chan struct{} { return r.dispc }

// Err is nil, or an error wrapping ErrDisplaced that names the process
// (host, pid, lease) that now owns the agent name.
func (r *Registry) Err() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.displaced
}
