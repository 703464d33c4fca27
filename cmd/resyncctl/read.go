package main

import (
	"context"
	"fmt"
	"slices"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/resyncd/resync/coordinator"
	"github.com/resyncd/resync/schema"
)

// getPrefix reads every key under prefix at rev (0: the current revision).
func getPrefix(ctx context.Context, c *clientv3.Client, prefix string, rev int64) ([]*mvccpb.KeyValue, int64, error) {
	opts := []clientv3.OpOption{clientv3.WithPrefix(), clientv3.WithSort(clientv3.SortByKey, clientv3.SortAscend)}
	if rev != 0 {
		opts = append(opts, clientv3.WithRev(rev))
	}
	resp, err := c.Get(ctx, prefix, opts...)
	if err != nil {
		return nil, 0, fmt.Errorf("read %s: %w", prefix, err)
	}
	return resp.Kvs, resp.Header.Revision, nil
}

// readRevision reads the revision record: nil when there is none yet. A
// malformed record is reported and treated as absent.
func (e *env) readRevision(ctx context.Context, c *clientv3.Client) (*schema.Revision, int64, error) {
	key := e.layout.Revision()
	resp, err := c.Get(ctx, key)
	if err != nil {
		return nil, 0, fmt.Errorf("read %s: %w", key, err)
	}
	if len(resp.Kvs) == 0 {
		return nil, resp.Header.Revision, nil
	}
	r, err := e.layout.DecodeRevision(key, resp.Kvs[0].Value)
	if err != nil {
		e.skipped(err)
		return nil, resp.Header.Revision, nil
	}
	return &r, resp.Header.Revision, nil
}

// readRound reads rounds/<n>: nil when missing or malformed (reported).
func (e *env) readRound(ctx context.Context, c *clientv3.Client, n uint64) (*schema.Round, error) {
	key := e.layout.Round(n)
	resp, err := c.Get(ctx, key)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", key, err)
	}
	if len(resp.Kvs) == 0 {
		return nil, nil
	}
	r, err := e.layout.DecodeRound(key, resp.Kvs[0].Value)
	if err != nil {
		e.skipped(err)
		return nil, nil
	}
	return &r, nil
}

// leader returns "<id>@<term>" of the current coordinator leader, or "".
func (e *env) leader(ctx context.Context, c *clientv3.Client) (string, error) {
	id, term, err := coordinator.Leader(ctx, c, e.layout)
	if err != nil || id == "" {
		return "", err
	}
	return fmt.Sprintf("%s@%d", id, term), nil
}

// regRow is one registration with the lease that holds it.
type regRow struct {
	schema.Registration
	Lease clientv3.LeaseID
}

// decodeRegistration decodes a registration key-value (schema's decoder)
// with the lease that holds it.
func (e *env) decodeRegistration(kv *mvccpb.KeyValue) (regRow, error) {
	reg, err := e.layout.DecodeRegistration(string(kv.Key), kv.Value)
	if err != nil {
		return regRow{}, err
	}
	return regRow{Registration: reg, Lease: clientv3.LeaseID(kv.Lease)}, nil
}

// decodeAck decodes an ack key-value (schema's decoder).
func (e *env) decodeAck(kv *mvccpb.KeyValue) (schema.PluginID, schema.Ack, error) {
	return e.layout.DecodeAck(string(kv.Key), kv.Value)
}

// readRegistrations reads the live registrations at rev (0: now), sorted by
// agent and registration order; malformed ones are reported and skipped.
func (e *env) readRegistrations(ctx context.Context, c *clientv3.Client, rev int64) ([]regRow, error) {
	kvs, _, err := getPrefix(ctx, c, e.layout.Registrations(), rev)
	if err != nil {
		return nil, err
	}
	rows := make([]regRow, 0, len(kvs))
	for _, kv := range kvs {
		r, err := e.decodeRegistration(kv)
		if err != nil {
			e.skipped(err)
			continue
		}
		rows = append(rows, r)
	}
	slices.SortFunc(rows, func(a, b regRow) int { return schema.CompareRegistrations(a.Registration, b.Registration) })
	return rows, nil
}

// readOwners reads the owner records at rev (0: now) by agent; malformed
// ones are reported and skipped.
func (e *env) readOwners(ctx context.Context, c *clientv3.Client, rev int64) (map[string]schema.Owner, error) {
	kvs, _, err := getPrefix(ctx, c, e.layout.Owners(), rev)
	if err != nil {
		return nil, err
	}
	owners := make(map[string]schema.Owner, len(kvs))
	for _, kv := range kvs {
		o, err := e.layout.DecodeOwner(string(kv.Key), kv.Value)
		if err != nil {
			e.skipped(err)
			continue
		}
		owners[o.Agent] = o
	}
	return owners, nil
}

// readAcks reads every ack at rev (0: now); malformed ones are reported and
// skipped.
func (e *env) readAcks(ctx context.Context, c *clientv3.Client, rev int64) (map[schema.PluginID]schema.Ack, error) {
	kvs, _, err := getPrefix(ctx, c, e.layout.Acks(), rev)
	if err != nil {
		return nil, err
	}
	acks := make(map[schema.PluginID]schema.Ack, len(kvs))
	for _, kv := range kvs {
		id, a, err := e.decodeAck(kv)
		if err != nil {
			e.skipped(err)
			continue
		}
		acks[id] = a
	}
	return acks, nil
}

// progress is where a running round stands: each participant's outcome by
// schema.Resolve, the coordinator's rule (never timed out by the deadline
// here: only the coordinator decides that).
type progress struct {
	Counts   schema.RoundCounts `json:"counts"`
	Pending  []schema.PluginID  `json:"pending,omitempty"`
	Failed   []schema.PluginID  `json:"failed,omitempty"`
	TimedOut []schema.PluginID  `json:"timed_out,omitempty"`
	Departed []schema.PluginID  `json:"departed,omitempty"`
	Errors   map[string]string  `json:"errors,omitempty"`
}

func computeProgress(round *schema.Round, parts []schema.PluginID, acks map[schema.PluginID]schema.Ack, live map[schema.PluginID]bool) progress {
	p := progress{Counts: schema.RoundCounts{Participants: len(parts)}}
	for _, id := range parts {
		a := acks[id]
		switch schema.Resolve(round.Revision, a, live[id], false) {
		case schema.OutcomeAcked:
			p.Counts.Acked++
		case schema.OutcomeFailed:
			p.Counts.Failed++
			p.Failed = append(p.Failed, id)
			if p.Errors == nil {
				p.Errors = map[string]string{}
			}
			p.Errors[id.String()] = a.Error
		case schema.OutcomeTimedOut:
			p.Counts.TimedOut++
			p.TimedOut = append(p.TimedOut, id)
		case schema.OutcomeDeparted:
			p.Counts.Departed++
			p.Departed = append(p.Departed, id)
		default:
			p.Counts.Pending++
			p.Pending = append(p.Pending, id)
		}
	}
	return p
}

// summaryProgress is the progress view of a finished round's summary: its
// counts and its first few non-ok participants (the summary's examples).
func summaryProgress(r *schema.Round) progress {
	p := progress{Counts: r.Counts}
	if ex := r.Examples; ex != nil {
		p.Failed, p.TimedOut, p.Departed, p.Errors = ex.Failed, ex.TimedOut, ex.Departed, ex.Errors
	}
	return p
}

// viewProgress is the progress view of a finished round with every
// participant's outcome (from rounds/<N>/agents/).
func viewProgress(v *coordinator.RoundView) progress {
	return progress{Counts: v.Counts, Failed: v.Failed, TimedOut: v.TimedOut, Departed: v.Departed, Errors: v.Errors}
}

// readParticipants reads round n's participants from rounds/<N>/agents/
// (paged); malformed records are reported and skipped.
func (e *env) readParticipants(ctx context.Context, c *clientv3.Client, n uint64) ([]schema.RoundAgent, []schema.PluginID, error) {
	recs, bad, err := coordinator.ReadRoundAgents(ctx, c, e.layout, n, 0)
	if err != nil {
		return nil, nil, err
	}
	for _, b := range bad {
		e.skipped(b)
	}
	var parts []schema.PluginID
	for _, r := range recs {
		for _, p := range r.Plugins {
			parts = append(parts, schema.PluginID{Agent: r.Agent, Plugin: p})
		}
	}
	return recs, parts, nil
}

// readView reads round n's summary and per-agent records: nil when the
// summary is missing or malformed (reported).
func (e *env) readView(ctx context.Context, c *clientv3.Client, n uint64) (*coordinator.RoundView, error) {
	r, err := e.readRound(ctx, c, n)
	if err != nil || r == nil {
		return nil, err
	}
	recs, _, err := e.readParticipants(ctx, c, n)
	if err != nil {
		return nil, err
	}
	v := coordinator.NewRoundView(*r, recs)
	return &v, nil
}

// readScopeTargets reads every target of round n's set scope (none for
// all, or when the round's detail was pruned).
func (e *env) readScopeTargets(ctx context.Context, c *clientv3.Client, r *schema.Round) ([]string, error) {
	if r == nil || r.Scope.IsAll() {
		return nil, nil
	}
	t, bad, err := coordinator.ReadRoundScope(ctx, c, e.layout, r.Revision)
	for _, b := range bad {
		e.skipped(b)
	}
	return t, err
}

// readSummaries reads the summaries rounds/<N> of the latest n rounds,
// oldest first, without reading the per-agent records under them: it scans
// keys only, newest first, and jumps over each round's rounds/<N>/ keys,
// then reads the summaries by key, several per Txn.
func (e *env) readSummaries(ctx context.Context, c *clientv3.Client, n int) ([]schema.Round, error) {
	nums, err := e.latestRounds(ctx, c, n)
	if err != nil {
		return nil, err
	}
	var rounds []schema.Round
	for len(nums) > 0 {
		batch := nums[:min(len(nums), 100)]
		nums = nums[len(batch):]
		if rounds, err = e.readRoundBatch(ctx, c, batch, rounds); err != nil {
			return nil, err
		}
	}
	slices.Reverse(rounds) // oldest first, the latest next to the prompt
	return rounds, nil
}

// latestRounds returns the numbers of the latest n rounds with a summary,
// newest first, scanning keys only and jumping over each round's
// rounds/<N>/ keys.
func (e *env) latestRounds(ctx context.Context, c *clientv3.Client, n int) ([]uint64, error) {
	var nums []uint64
	from, end := e.layout.Rounds(), clientv3.GetPrefixRangeEnd(e.layout.Rounds())
	for len(nums) < n {
		resp, err := c.Get(ctx, from, clientv3.WithRange(end), clientv3.WithKeysOnly(),
			clientv3.WithSort(clientv3.SortByKey, clientv3.SortDescend), clientv3.WithLimit(16))
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", e.layout.Rounds(), err)
		}
		if len(resp.Kvs) == 0 {
			break
		}
		end = string(resp.Kvs[len(resp.Kvs)-1].Key)
		for _, kv := range resp.Kvs {
			k, err := e.layout.Parse(string(kv.Key))
			if err != nil {
				continue // reported when a summary is read; other garbage is no round
			}
			if k.Kind == schema.KindRound {
				if nums = append(nums, k.Round); len(nums) == n {
					break
				}
				continue
			}
			// A key under rounds/<N>/: skip the rest of them.
			end = e.layout.RoundDir(k.Round)
			break
		}
	}
	return nums, nil
}

// readRoundBatch reads the summaries of rounds nums in one Txn and appends
// them to rounds, skipping those that do not decode.
func (e *env) readRoundBatch(ctx context.Context, c *clientv3.Client, nums []uint64, rounds []schema.Round) ([]schema.Round, error) {
	ops := make([]clientv3.Op, len(nums))
	for i, k := range nums {
		ops[i] = clientv3.OpGet(e.layout.Round(k))
	}
	resp, err := c.Txn(ctx).Then(ops...).Commit()
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", e.layout.Rounds(), err)
	}
	for _, r := range resp.Responses {
		for _, kv := range r.GetResponseRange().Kvs {
			rd, err := e.layout.DecodeRound(string(kv.Key), kv.Value)
			if err != nil {
				e.skipped(err)
				continue
			}
			rounds = append(rounds, rd)
		}
	}
	return rounds, nil
}

func liveSet(rows []regRow) map[schema.PluginID]bool {
	live := make(map[schema.PluginID]bool, len(rows))
	for _, r := range rows {
		live[r.ID()] = true
	}
	return live
}
