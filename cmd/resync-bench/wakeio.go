package main

import (
	"context"
	"strconv"
	"strings"
	"sync"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"google.golang.org/grpc"

	"github.com/resyncd/resync/schema"
)

// wakeIO counts what the fleet's etcd clients receive and read, through
// gRPC client interceptors on their connections: every watch event (each
// event of each WatchResponse on their Watch streams) and every Range RPC
// they send (each attempt: the interceptors sit inside clientv3's retry).
// A wake key holds a copy of a round's revision record, so each wake event
// is attributed to the round it carries; a read of a participation record
// (rounds/<N>/agents/<agent>) to round N. Everything else (other keys, a
// deleted or undecodable wake key, other reads) is counted apart, not per
// round. Safe for concurrent use: every client's streams call it.
type wakeIO struct {
	layout schema.Layout
	target int // the rounds' agents are the first target ones (0: all)
	// onAck, when set, is told of each ack Txn that succeeded: its agent,
	// its round, when it was sent and when it returned.
	onAck func(agent string, rev uint64, sent, done time.Time)

	mu     sync.Mutex
	rounds map[uint64]*RoundIO
	events int64 // every event, for settle
	other  otherIO
}

// RoundIO is what the fleet received and read for one round (or the sum
// over a size's measured rounds), by key: an agent's own wake key, the
// wake shards, participation records.
type RoundIO struct {
	// Events on the own wake key of an agent that takes part: a wave
	// round's entry into the window (Started) and exit (NotActive), a
	// set-scope round's start and finish.
	OwnStarted   int64 `json:"own_key_started"`
	OwnNotActive int64 `json:"own_key_not_active"`
	// Events on wake shards, each reaching the agents of one shard: an
	// all-scope round's start (Started; none in a wave round) and its
	// finish (NotActive; in a wave round after the window closed).
	ShardStarted   int64 `json:"shard_started"`
	ShardNotActive int64 `json:"shard_not_active"`
	// OutsideEvents are own-key events of agents that do not take part.
	OutsideEvents int64 `json:"outside_events"`
	// Reads are Range RPCs of a participating agent's participation record
	// (a set-scope round's, once per agent); OutsideReads those of an
	// agent that does not take part.
	Reads        int64 `json:"participation_reads"`
	OutsideReads int64 `json:"outside_reads"`
}

// Events is every watch event of the round.
func (r RoundIO) Events() int64 {
	return r.OwnStarted + r.OwnNotActive + r.ShardStarted + r.ShardNotActive + r.OutsideEvents
}

func (r *RoundIO) add(x RoundIO) {
	r.OwnStarted += x.OwnStarted
	r.OwnNotActive += x.OwnNotActive
	r.ShardStarted += x.ShardStarted
	r.ShardNotActive += x.ShardNotActive
	r.OutsideEvents += x.OutsideEvents
	r.Reads += x.Reads
	r.OutsideReads += x.OutsideReads
}

// otherIO is what no round claims: events of other keys (an owner record,
// a deleted wake key), Range RPCs of other keys (a watch's re-listing).
type otherIO struct {
	Events int64 `json:"other_events"`
	Reads  int64 `json:"other_reads"`
}

func newWakeIO(layout schema.Layout, target int) *wakeIO {
	return &wakeIO{layout: layout, target: target, rounds: map[uint64]*RoundIO{}}
}

// dialOptions install the interceptors on a client's connection.
func (w *wakeIO) dialOptions() []grpc.DialOption {
	return []grpc.DialOption{grpc.WithChainUnaryInterceptor(w.unary), grpc.WithChainStreamInterceptor(w.stream)}
}

func (w *wakeIO) unary(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	switch r := req.(type) {
	case *pb.RangeRequest:
		w.read(string(r.Key))
	case *pb.TxnRequest:
		if agent, rev, ok := w.ackOf(r); ok && w.onAck != nil {
			sent := time.Now()
			err := invoker(ctx, method, req, reply, cc, opts...)
			if resp, _ := reply.(*pb.TxnResponse); err == nil && resp != nil && resp.Succeeded {
				w.onAck(agent, rev, sent, time.Now())
			}
			return err
		}
	}
	return invoker(ctx, method, req, reply, cc, opts...)
}

// ackOf is the agent and round of an ack Txn (its first put of an ack).
func (w *wakeIO) ackOf(t *pb.TxnRequest) (agent string, rev uint64, ok bool) {
	for _, op := range t.Success {
		p := op.GetRequestPut()
		if p == nil {
			continue
		}
		key := string(p.Key)
		k, err := w.layout.Parse(key)
		if err != nil || k.Kind != schema.KindAck {
			continue
		}
		ack, err := schema.DecodeAck(key, p.Value)
		if err != nil {
			return "", 0, false
		}
		return k.Agent, ack.Revision, true
	}
	return "", 0, false
}

func (w *wakeIO) stream(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	s, err := streamer(ctx, desc, cc, method, opts...)
	if err != nil {
		return s, err
	}
	return &watchCounter{ClientStream: s, io: w}, nil
}

// watchCounter counts the events of each WatchResponse its stream
// receives (other streams' messages pass through).
type watchCounter struct {
	grpc.ClientStream
	io *wakeIO
}

func (s *watchCounter) RecvMsg(m any) error {
	err := s.ClientStream.RecvMsg(m)
	if resp, ok := m.(*pb.WatchResponse); ok && err == nil {
		for _, ev := range resp.Events {
			s.io.event(ev)
		}
	}
	return err
}

// event attributes one watch event.
func (w *wakeIO) event(ev *mvccpb.Event) {
	key := string(ev.Kv.Key)
	k, err := w.layout.Parse(key)
	var rec schema.Revision
	wake := err == nil && ev.Type == mvccpb.PUT && (k.Kind == schema.KindWakeShard || k.Kind == schema.KindWakeAgent)
	if wake {
		rec, err = schema.DecodeRevision(key, ev.Kv.Value)
		wake = err == nil
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	w.events++
	if !wake {
		w.other.Events++
		return
	}
	r := w.round(rec.Revision)
	started := rec.State == schema.Started
	switch {
	case k.Kind == schema.KindWakeShard && started:
		r.ShardStarted++
	case k.Kind == schema.KindWakeShard:
		r.ShardNotActive++
	case !w.takesPart(k.Agent):
		r.OutsideEvents++
	case started:
		r.OwnStarted++
	default:
		r.OwnNotActive++
	}
}

// read attributes one Range RPC.
func (w *wakeIO) read(key string) {
	k, err := w.layout.Parse(key)
	w.mu.Lock()
	defer w.mu.Unlock()
	switch {
	case err != nil || k.Kind != schema.KindRoundAgent:
		w.other.Reads++
	case w.takesPart(k.Agent):
		w.round(k.Round).Reads++
	default:
		w.round(k.Round).OutsideReads++
	}
}

// round is round n's counts; w.mu is held.
func (w *wakeIO) round(n uint64) *RoundIO {
	r := w.rounds[n]
	if r == nil {
		r = &RoundIO{}
		w.rounds[n] = r
	}
	return r
}

// takesPart reports whether agent is one of the rounds' agents: every
// agent, or the first target ones (the bench names them agent-%05d).
func (w *wakeIO) takesPart(agent string) bool {
	if w.target == 0 {
		return true
	}
	n, err := strconv.Atoi(strings.TrimPrefix(agent, "agent-"))
	return err == nil && n < w.target
}

// of is round n's counts so far.
func (w *wakeIO) of(n uint64) RoundIO {
	w.mu.Lock()
	defer w.mu.Unlock()
	if r := w.rounds[n]; r != nil {
		return *r
	}
	return RoundIO{}
}

// totals are every event counted and the unattributed counts.
func (w *wakeIO) totals() (events int64, other otherIO) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.events, w.other
}
