package coordinator

import (
	"context"
	"fmt"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/resyncd/resync/internal/etcderr"
	"github.com/resyncd/resync/schema"
)

// The read API: what readers of the round records (resyncctl, the checker,
// a successor resuming a round) may call. Each read takes a clientv3.KV
// and the layout; none needs a Coordinator.

// ReadRoundAgents reads round n's per-agent records (rounds/<N>/agents/),
// in pages of at most page keys, in agent name order, at one etcd
// revision (that of its first page; read again from the start at a newer
// one when etcd compacts it away between pages, up to three times). A
// malformed record is returned in bad and skipped. Readers (resyncctl, the
// checker, a successor resuming a round) use it; it never reads the whole
// prefix in one response.
func ReadRoundAgents(ctx context.Context, kv clientv3.KV, layout schema.Layout, n uint64, page int) (recs []schema.RoundAgent, bad []error, err error) {
	if page <= 0 {
		page = 100 // at most ~100 x 15 KB (10 plugins with 128-character names and 1 KiB errors)
	}
	err = etcderr.ReadAgainIfCompacted(func() error {
		recs, bad, err = readRoundAgents(ctx, kv, layout, n, page)
		return err
	})
	return recs, bad, err
}

func readRoundAgents(ctx context.Context, kv clientv3.KV, layout schema.Layout, n uint64, page int) (recs []schema.RoundAgent, bad []error, err error) {
	prefix := layout.RoundAgents(n)
	end := clientv3.GetPrefixRangeEnd(prefix)
	from := prefix
	var rev int64
	for {
		opts := []clientv3.OpOption{clientv3.WithRange(end), clientv3.WithLimit(int64(page)),
			clientv3.WithSort(clientv3.SortByKey, clientv3.SortAscend)}
		if rev != 0 {
			opts = append(opts, clientv3.WithRev(rev))
		}
		resp, err := kv.Get(ctx, from, opts...)
		if err != nil {
			return nil, nil, fmt.Errorf("read %s: %w", prefix, err)
		}
		if rev == 0 {
			// Not every page's: a header is etcd's revision now, not the
			// one read at.
			rev = resp.Header.Revision
		}
		for _, item := range resp.Kvs {
			r, err := layout.DecodeRoundAgent(string(item.Key), item.Value)
			if err != nil {
				bad = append(bad, err)
				continue
			}
			recs = append(recs, r)
		}
		if !resp.More || len(resp.Kvs) == 0 {
			return recs, bad, nil
		}
		from = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	}
}

// ReadRoundScope reads round n's scope targets (rounds/<N>/scope/), in
// chunk order; none for an all-scope round.
func ReadRoundScope(ctx context.Context, kv clientv3.KV, layout schema.Layout, n uint64) (targets []string, bad []error, err error) {
	prefix := layout.RoundScopes(n)
	resp, err := kv.Get(ctx, prefix, clientv3.WithPrefix(), clientv3.WithSort(clientv3.SortByKey, clientv3.SortAscend))
	if err != nil {
		return nil, nil, fmt.Errorf("read %s: %w", prefix, err)
	}
	for _, item := range resp.Kvs {
		r, err := layout.DecodeRoundScope(string(item.Key), item.Value)
		if err != nil {
			bad = append(bad, err)
			continue
		}
		targets = append(targets, r.Targets...)
	}
	return targets, bad, nil
}

// RoundView is a round's summary with its participants and their outcomes
// from rounds/<N>/agents/: what a reader shows or checks. Lists are in
// agent and registration order. Outcome lists are empty while the round
// runs (the leader writes them when it completes), except a wave round's:
// each agent's are there once it is done or skipped.
type RoundView struct {
	schema.Round
	Participants []schema.PluginID `json:"participants"`
	Acked        []schema.PluginID `json:"acked,omitempty"`
	Failed       []schema.PluginID `json:"failed,omitempty"`
	TimedOut     []schema.PluginID `json:"timed_out,omitempty"`
	Departed     []schema.PluginID `json:"departed,omitempty"`
	Skipped      []schema.PluginID `json:"skipped,omitempty"`
	// Errors maps "agent/plugin" of failed participants (escaped names, as
	// the participants' JSON: schema.PluginID.Key) to their error.
	Errors map[string]string `json:"errors,omitempty"`
}

// NewRoundView joins a summary and its per-agent records.
func NewRoundView(r schema.Round, agents []schema.RoundAgent) RoundView {
	v := RoundView{Round: r}
	ids := func(agent string, names []string) []schema.PluginID {
		out := make([]schema.PluginID, len(names))
		for i, n := range names {
			out[i] = schema.PluginID{Agent: agent, Plugin: n}
		}
		return out
	}
	for _, a := range agents {
		v.Participants = append(v.Participants, ids(a.Agent, a.Plugins)...)
		v.Acked = append(v.Acked, ids(a.Agent, a.Acked)...)
		v.Failed = append(v.Failed, ids(a.Agent, a.Failed)...)
		v.TimedOut = append(v.TimedOut, ids(a.Agent, a.TimedOut)...)
		v.Departed = append(v.Departed, ids(a.Agent, a.Departed)...)
		v.Skipped = append(v.Skipped, ids(a.Agent, a.Skipped)...)
		for p, e := range a.Errors {
			if v.Errors == nil {
				v.Errors = map[string]string{}
			}
			v.Errors[schema.PluginID{Agent: a.Agent, Plugin: p}.Key()] = e
		}
	}
	return v
}

// ReadRoundView reads round n's summary and per-agent records; ok is false
// when the summary is absent. A malformed summary or per-agent record is an
// error.
func ReadRoundView(ctx context.Context, kv clientv3.KV, layout schema.Layout, n uint64) (v RoundView, ok bool, err error) {
	resp, err := kv.Get(ctx, layout.Round(n))
	if err != nil || len(resp.Kvs) == 0 {
		return RoundView{}, false, err
	}
	r, err := layout.DecodeRound(string(resp.Kvs[0].Key), resp.Kvs[0].Value)
	if err != nil {
		return RoundView{}, false, err
	}
	recs, bad, err := ReadRoundAgents(ctx, kv, layout, n, 0)
	if err != nil {
		return RoundView{}, false, err
	}
	if len(bad) > 0 {
		return RoundView{}, false, bad[0]
	}
	return NewRoundView(r, recs), true, nil
}
