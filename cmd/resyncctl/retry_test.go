package main

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spf13/pflag"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/resyncd/resync/internal/etcdflags"
	"github.com/resyncd/resync/internal/testing/etcdtest"
	"github.com/resyncd/resync/schema"
)

// faultKV is a real etcd client's KV with faults injected at the client:
// an error for the next Gets, and hooks around each Txn that writes (the
// request write), which may fail it before it is sent or after it was
// applied (a lost response). etcd itself is real.
type faultKV struct {
	clientv3.KV
	mu      sync.Mutex
	getErrs []error
	writes  int // Txns that write, sent or not
	applied int // of them, those etcd applied (Succeeded)
	// before is called before write n (from 1) is sent; an error fails it
	// unsent.
	before func(n int) error
	// after is called after write n was committed; an error replaces its
	// result (the write stays applied).
	after func(n int, resp *clientv3.TxnResponse) error
}

func (f *faultKV) Get(ctx context.Context, key string, opts ...clientv3.OpOption) (*clientv3.GetResponse, error) {
	f.mu.Lock()
	var err error
	if len(f.getErrs) > 0 {
		err, f.getErrs = f.getErrs[0], f.getErrs[1:]
	}
	f.mu.Unlock()
	if err != nil {
		return nil, err
	}
	return f.KV.Get(ctx, key, opts...)
}

func (f *faultKV) Txn(ctx context.Context) clientv3.Txn { return &faultTxn{f: f, ctx: ctx} }

// Put is a write too (a plain Put of the request, as trigger once wrote it).
func (f *faultKV) Put(ctx context.Context, key, val string, opts ...clientv3.OpOption) (*clientv3.PutResponse, error) {
	var put *clientv3.PutResponse
	resp, err := f.write(func() (*clientv3.TxnResponse, error) {
		var err error
		if put, err = f.KV.Put(ctx, key, val, opts...); err != nil {
			return nil, err
		}
		return &clientv3.TxnResponse{Header: put.Header, Succeeded: true}, nil
	})
	if resp == nil {
		return nil, err
	}
	return put, err
}

// write runs one write through the hooks.
func (f *faultKV) write(commit func() (*clientv3.TxnResponse, error)) (*clientv3.TxnResponse, error) {
	f.mu.Lock()
	f.writes++
	n := f.writes
	f.mu.Unlock()
	if f.before != nil {
		if err := f.before(n); err != nil {
			return nil, err
		}
	}
	resp, err := commit()
	if err == nil && resp.Succeeded {
		f.mu.Lock()
		f.applied++
		f.mu.Unlock()
	}
	if err == nil && f.after != nil {
		if ferr := f.after(n, resp); ferr != nil {
			return nil, ferr
		}
	}
	return resp, err
}

type faultTxn struct {
	f           *faultKV
	ctx         context.Context
	cmps        []clientv3.Cmp
	thens, elss []clientv3.Op
}

func (t *faultTxn) If(cs ...clientv3.Cmp) clientv3.Txn   { t.cmps = append(t.cmps, cs...); return t }
func (t *faultTxn) Then(ops ...clientv3.Op) clientv3.Txn { t.thens = append(t.thens, ops...); return t }
func (t *faultTxn) Else(ops ...clientv3.Op) clientv3.Txn { t.elss = append(t.elss, ops...); return t }

func (t *faultTxn) Commit() (*clientv3.TxnResponse, error) {
	writes := false
	for _, op := range t.thens {
		writes = writes || op.IsPut()
	}
	commit := func() (*clientv3.TxnResponse, error) {
		return t.f.KV.Txn(t.ctx).If(t.cmps...).Then(t.thens...).Else(t.elss...).Commit()
	}
	if !writes {
		return commit()
	}
	return t.f.write(commit)
}

func (f *faultKV) counts() (writes, applied int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.writes, f.applied
}

// testEnv is resyncctl's env on its own client of endpoint (its KV wrapped
// by wrap, if set, below the retries), with a 30 s --command-timeout.
func testEnv(t *testing.T, endpoint string, wrap func(clientv3.KV) clientv3.KV) (*env, *etcdtest.Buffer, *etcdtest.Buffer) {
	t.Helper()
	c := etcdtest.Client(t, endpoint)
	if wrap != nil {
		c.KV = wrap(c.KV)
	}
	f := etcdflags.Default()
	f.CommandTimeout = 30 * time.Second
	var out, errb etcdtest.Buffer
	e := &env{stdout: &out, stderr: &errb, etcd: &f, layout: layout}
	e.setClient(c)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("stdout:\n%s\nstderr:\n%s", out.String(), errb.String())
		}
	})
	return e, &out, &errb
}

// readRevisionNow reads the revision record (0 if none).
func readRevisionNow(t *testing.T, c *clientv3.Client) uint64 {
	t.Helper()
	rev, ok, err := etcdtest.ReadRevision(ctxT(t, 5*time.Second), c, layout)
	if err != nil {
		t.Fatal(err)
	}
	if !ok {
		return 0
	}
	return rev.Revision
}

// oneRoundServed checks that the round n served the request (its reason)
// and that nothing is left to run another: no request pending, no later
// round. A request written again after the coordinator consumed it would
// show as one or the other when trigger returns (it writes before it
// returns).
func oneRoundServed(t *testing.T, obs *clientv3.Client, n uint64, reason string) {
	t.Helper()
	r := waitRound(t, obs, n, schema.NotActive)
	if r.Reason != reason || !r.Clean() {
		t.Fatalf("round %d = %+v, want the clean round of %q", n, r, reason)
	}
	if k := countKeys(t, obs, layout.Requests()); k != 0 {
		t.Fatalf("%d requests pending after trigger returned: the request was written again", k)
	}
	if now := readRevisionNow(t, obs); now != n {
		t.Fatalf("revision %d after trigger returned, want %d: a second round ran", now, n)
	}
}

// startFleet starts a coordinator and one agent on endpoint and waits for
// the initial round to finish.
func startFleet(t *testing.T, endpoint string, obs *clientv3.Client) {
	t.Helper()
	startHandAgent(t, endpoint, "a1", []string{"p1", "p2"}, nil)
	startCoordinator(t, endpoint, "c1")
	waitRound(t, obs, 1, schema.NotActive)
}

func TestRetryableFollowsEtcderr(t *testing.T) {
	ctx := context.Background()
	for _, err := range []error{
		rpctypes.ErrLeaderChanged, rpctypes.ErrNoLeader, rpctypes.ErrTimeout, rpctypes.ErrTimeoutDueToLeaderFail,
		rpctypes.ErrTooManyRequests, rpctypes.ErrGRPCTimeoutDueToLeaderFail, status.Error(codes.Unavailable, "connection refused"),
		fmt.Errorf("read /resync/revision: %w", rpctypes.ErrTimeoutDueToLeaderFail),
	} {
		if !retryable(ctx, err) {
			t.Errorf("%v not retried", err)
		}
	}
	for _, err := range []error{
		nil, rpctypes.ErrPermissionDenied, rpctypes.ErrGRPCPermissionDenied, rpctypes.ErrRequestTooLarge, rpctypes.ErrTooManyOps,
		rpctypes.ErrCompacted, rpctypes.ErrFutureRev, rpctypes.ErrNoSpace, context.Canceled, context.DeadlineExceeded,
		status.Error(codes.DeadlineExceeded, "context deadline exceeded"),
	} {
		if retryable(ctx, err) {
			t.Errorf("%v retried", err)
		}
	}
	done, cancel := context.WithCancel(ctx)
	cancel()
	if retryable(done, rpctypes.ErrTimeout) {
		t.Error("retried after the command's budget ended")
	}
}

// trigger while etcd has no leader (two of three members stopped: the
// third answers "etcdserver: no leader", gRPC Unavailable) retries within
// --command-timeout; once a member is back and a leader elected the write
// goes through, and one round serves it. (It used to fail at once.)
func TestTriggerRidesOutALostLeader(t *testing.T) {
	cl := etcdtest.StartCluster(t, 3)
	m0 := cl.Members[0]
	obs := m0.Client(t)
	startFleet(t, m0.Endpoint(), obs)
	e, _, errb := testEnv(t, m0.Endpoint(), nil)
	cl.Members[1].Stop()
	cl.Members[2].Stop()
	etcdtest.WaitFor(t, 30*time.Second, "member 0 without a leader", func() bool {
		st, err := obs.Status(ctxT(t, 2*time.Second), m0.Endpoint())
		return err == nil && st.Leader == 0
	})
	retries := 0
	e.retried = func(err error) {
		if retries++; retries == 1 {
			cl.Members[1].Restart()
		}
	}
	err := trigger(ctxT(t, time.Minute), e, triggerOpts{reason: "through an election", wait: true, timeout: 30 * time.Second})
	if err != nil {
		t.Fatalf("trigger: %v", err)
	}
	if retries == 0 || !strings.Contains(errb.String(), "no leader; retrying in") {
		t.Fatalf("%d retries noted; stderr:\n%s", retries, errb.String())
	}
	oneRoundServed(t, obs, 2, "through an election")
}

// The dangerous retry: the first write was applied but its answer lost
// ("request timed out, possibly due to previous leader failure"), and the
// coordinator consumed the request and ran its round before the retry.
// trigger notices that the request was served and does not write it
// again: one write applied, one round.
func TestTriggerRetryAfterAnAppliedWriteRunsNoSecondRound(t *testing.T) {
	m := etcdtest.Start(t)
	obs := m.Client(t)
	startFleet(t, m.Endpoint(), obs)
	var fkv *faultKV
	e, _, errb := testEnv(t, m.Endpoint(), func(kv clientv3.KV) clientv3.KV {
		fkv = &faultKV{KV: kv, after: func(n int, resp *clientv3.TxnResponse) error {
			if n != 1 || !resp.Succeeded {
				return nil
			}
			// The coordinator consumes the request and starts its round.
			etcdtest.WaitFor(t, 20*time.Second, "round 2 started and the request consumed", func() bool {
				return readRevisionNow(t, obs) >= 2 && countKeys(t, obs, layout.Requests()) == 0
			})
			return rpctypes.ErrTimeoutDueToLeaderFail
		}}
		return fkv
	})
	err := trigger(ctxT(t, time.Minute), e, triggerOpts{reason: "applied, answer lost", wait: true, timeout: 30 * time.Second})
	if err != nil {
		t.Fatalf("trigger: %v", err)
	}
	writes, applied := fkv.counts()
	if writes < 2 || applied != 1 || !strings.Contains(errb.String(), "possibly due to previous leader failure; retrying in") {
		t.Fatalf("%d write attempts, %d applied, want at least 2 and exactly 1; stderr:\n%s", writes, applied, errb.String())
	}
	oneRoundServed(t, obs, 2, "applied, answer lost")
}

// The first write failed unsent, and meanwhile another request's round
// started (the revision key changed): the retry finds that no attempt was
// written, and writes; its own round serves it.
func TestTriggerRetryAfterAnUnsentWriteWhileAnotherRoundRan(t *testing.T) {
	m := etcdtest.Start(t)
	obs := m.Client(t)
	startFleet(t, m.Endpoint(), obs)
	var fkv *faultKV
	e, _, _ := testEnv(t, m.Endpoint(), func(kv clientv3.KV) clientv3.KV {
		fkv = &faultKV{KV: kv, before: func(n int) error {
			if n != 1 {
				return nil
			}
			if err := request(obs, "another"); err != nil {
				t.Fatal(err)
			}
			waitRound(t, obs, 2, schema.NotActive)
			return rpctypes.ErrTimeout
		}}
		return fkv
	})
	err := trigger(ctxT(t, time.Minute), e, triggerOpts{reason: "unsent first", wait: true, timeout: 30 * time.Second})
	if err != nil {
		t.Fatalf("trigger: %v", err)
	}
	if _, applied := fkv.counts(); applied != 1 {
		t.Fatalf("%d writes applied, want 1", applied)
	}
	if r := waitRound(t, obs, 2, schema.NotActive); r.Reason != "another" {
		t.Fatalf("round 2 = %+v", r)
	}
	oneRoundServed(t, obs, 3, "unsent first")
}

// request writes a manual request directly (another operator).
func request(c *clientv3.Client, reason string) error {
	now := time.Now().UTC()
	b, err := schema.Encode(schema.Request{Reason: reason, Cause: schema.CauseManual, RequestedBy: "other", RequestedAt: now})
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err = c.Put(ctx, layout.OperatorRequest(schema.NewRequestID(now)), string(b))
	return err
}

// Reads retry too: status rides out "too many requests" (etcd's apply
// backlog, which drains).
func TestStatusRetriesTooManyRequests(t *testing.T) {
	m := etcdtest.Start(t)
	obs := m.Client(t)
	startFleet(t, m.Endpoint(), obs)
	e, out, errb := testEnv(t, m.Endpoint(), func(kv clientv3.KV) clientv3.KV {
		return &faultKV{KV: kv, getErrs: []error{rpctypes.ErrTooManyRequests, rpctypes.ErrLeaderChanged}}
	})
	if err := setupStatus(pflag.NewFlagSet("status", pflag.ContinueOnError))(ctxT(t, time.Minute), e); err != nil {
		t.Fatalf("status: %v", err)
	}
	if !strings.Contains(out.String(), "revision") || strings.Count(errb.String(), "retrying in") != 2 {
		t.Fatalf("stdout:\n%s\nstderr:\n%s", out.String(), errb.String())
	}
}

// A permanent error is not retried: a user who may read resync's prefix
// but not write requests gets the permission error at once, once.
func TestTriggerPermissionDeniedIsNotRetried(t *testing.T) {
	m := etcdtest.Start(t)
	root := m.Client(t)
	ctx := ctxT(t, time.Minute)
	for _, step := range []func() error{
		func() error { _, err := root.UserAdd(ctx, "root", "rootpw"); return err },
		func() error { _, err := root.UserGrantRole(ctx, "root", "root"); return err },
		func() error { _, err := root.RoleAdd(ctx, "reader"); return err },
		func() error {
			_, err := root.RoleGrantPermission(ctx, "reader", layout.Prefix(), clientv3.GetPrefixRangeEnd(layout.Prefix()), clientv3.PermissionType(clientv3.PermRead))
			return err
		},
		func() error { _, err := root.UserAdd(ctx, "reader", "readerpw"); return err },
		func() error { _, err := root.UserGrantRole(ctx, "reader", "reader"); return err },
		func() error { _, err := root.AuthEnable(ctx); return err },
	} {
		if err := step(); err != nil {
			t.Fatal(err)
		}
	}
	t.Setenv("RESYNC_DIAL_TIMEOUT", "30s") // bcrypt under -race on a loaded machine
	code, _, errOut := cli(t, ctxT(t, time.Minute), "trigger", "--endpoints", m.Endpoint(), "--user", "reader:readerpw", "--reason", "not mine")
	if code != 1 || !strings.Contains(errOut, "permission denied") || !strings.Contains(errOut, "trigger needs an operator's credentials") ||
		strings.Contains(errOut, "retrying") {
		t.Fatalf("exit %d, stderr %q: want 1, the permission error once, no retry", code, errOut)
	}
}
