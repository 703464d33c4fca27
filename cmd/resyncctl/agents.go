package main

import (
	"context"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/spf13/pflag"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/resyncd/resync/internal/etcderr"
	"github.com/resyncd/resync/schema"
)

// agentDoc is one row of `agents -o json`.
type agentDoc struct {
	Agent string `json:"agent"`
	// Plugins are the agent's registered plugins in registration order.
	Plugins []string `json:"plugins"`
	// Lease is the agent session's lease, in hex as etcdctl prints it.
	Lease string `json:"lease"`
	// LeaseTTLSeconds is what is left of the lease (-1: expired, the
	// registrations go with it).
	LeaseTTLSeconds int64 `json:"lease_ttl_seconds"`
	// AckedRevision is the latest revision any of its plugins acked (0:
	// none), Result the worst result among its plugins' acks of that
	// revision (error, then timeout, then ok).
	AckedRevision uint64        `json:"acked_revision"`
	Result        schema.Result `json:"result,omitempty"`
	// Behind: some plugin that takes part in the current revision (in its
	// scope and registered before it started) has not acked it; those are
	// BehindPlugins.
	Behind        bool     `json:"behind"`
	BehindPlugins []string `json:"behind_plugins,omitempty"`
	// Refused counts the registrations the agent's process refused (names
	// that cannot be stored): those plugins never resync. RefusedNames are
	// the first few, quoted. From the agent's owner record.
	Refused      int      `json:"refused,omitempty"`
	RefusedNames []string `json:"refused_names,omitempty"`
}

// agentsDoc is `agents -o json`.
type agentsDoc struct {
	// Revision and State are the current revision record's (0 and "" when
	// there is none yet).
	Revision uint64        `json:"revision"`
	State    schema.Status `json:"state,omitempty"`
	Agents   []agentDoc    `json:"agents"`
}

func setupAgents(*pflag.FlagSet) func(context.Context, *env) error {
	return agents
}

// agents is the agents command: read every agent's state, then print it.
func agents(ctx context.Context, e *env) error {
	c, ctx, cancel, err := e.connect(ctx)
	if err != nil {
		return err
	}
	defer cancel()
	doc, err := e.readAgents(ctx, c)
	if err != nil {
		return err
	}
	if e.json {
		return writeJSON(e.stdout, doc)
	}
	return printAgents(e.stdout, doc)
}

func printAgents(w io.Writer, doc agentsDoc) error {
	tw := newTable(w)
	row(tw, "AGENT", "PLUGINS", "LEASE_TTL", "ACKED", "RESULT", "BEHIND", "REFUSED")
	for _, a := range doc.Agents {
		ttl := "expired"
		if a.LeaseTTLSeconds >= 0 {
			ttl = (time.Duration(a.LeaseTTLSeconds) * time.Second).String()
		}
		acked := "-"
		if a.AckedRevision != 0 {
			acked = fmt.Sprint(a.AckedRevision)
		}
		behind := "no"
		if a.Behind {
			behind = fmt.Sprintf("yes: %s not at %d", listFirst(a.BehindPlugins, 3), doc.Revision)
		}
		refused := "-"
		if a.Refused > 0 {
			refused = fmt.Sprintf("%d: %s", a.Refused, strings.Join(a.RefusedNames, " "))
		}
		row(tw, a.Agent, fmt.Sprintf("%d: %s", len(a.Plugins), listFirst(a.Plugins, 3)), ttl, acked, string(a.Result), behind, refused)
	}
	return tw.Flush()
}

// resultRank orders ack results from best to worst.
func resultRank(r schema.Result) int {
	switch r {
	case schema.ResultOK:
		return 0
	case schema.ResultTimeout:
		return 1
	}
	return 2 // error, or unknown
}

// readAgents reads the revision record, registrations and acks at one etcd
// revision and the TTL left on each agent's lease. When etcd compacts
// that revision between the reads, it reads again at a newer one: a
// compaction is a moment, and its error says nothing about the agents.
func (e *env) readAgents(ctx context.Context, c *clientv3.Client) (doc agentsDoc, err error) {
	err = etcderr.ReadAgainIfCompacted(func() error {
		doc, err = e.readAgentsAt(ctx, c)
		return err
	})
	return doc, err
}

func (e *env) readAgentsAt(ctx context.Context, c *clientv3.Client) (agentsDoc, error) {
	rev, at, err := e.readRevision(ctx, c)
	if err != nil {
		return agentsDoc{}, err
	}
	regs, err := e.readRegistrations(ctx, c, at)
	if err != nil {
		return agentsDoc{}, err
	}
	acks, err := e.readAcks(ctx, c, at)
	if err != nil {
		return agentsDoc{}, err
	}
	owners, err := e.readOwners(ctx, c, at)
	if err != nil {
		return agentsDoc{}, err
	}
	doc := agentsDoc{Agents: []agentDoc{}}
	inRound, err := e.roundMembers(ctx, c, rev)
	if err != nil {
		return agentsDoc{}, err
	}
	if rev != nil {
		doc.Revision, doc.State = rev.Revision, rev.State
	}
	ttls := leaseTTLs{c: c, ttl: map[clientv3.LeaseID]int64{}}
	// readRegistrations sorts by agent, then registration order.
	for i := 0; i < len(regs); {
		j := i
		for j < len(regs) && regs[j].Agent == regs[i].Agent {
			j++
		}
		a, lease := agentOf(regs[i:j], acks, rev, inRound)
		if o, ok := owners[a.Agent]; ok {
			a.Refused, a.RefusedNames = o.Refused, o.RefusedNames
			delete(owners, a.Agent)
		}
		if a.LeaseTTLSeconds, err = ttls.left(ctx, lease, a.Agent); err != nil {
			return agentsDoc{}, err
		}
		doc.Agents = append(doc.Agents, a)
		i = j
	}
	// An agent whose every registration was refused has only its owner
	// record: list it, so that the refusals show.
	for _, o := range owners {
		if o.Refused > 0 {
			doc.Agents = append(doc.Agents, agentDoc{Agent: o.Agent, Plugins: []string{}, Lease: o.Lease, LeaseTTLSeconds: -1,
				Refused: o.Refused, RefusedNames: o.RefusedNames})
		}
	}
	slices.SortFunc(doc.Agents, func(a, b agentDoc) int { return strings.Compare(a.Agent, b.Agent) })
	return doc, nil
}

// roundMembers tells whether a plugin takes part in the round of rev: every
// plugin in an all-scope round (or none ran); a set scope's participants
// are read from rounds/<N>/agents/.
func (e *env) roundMembers(ctx context.Context, c *clientv3.Client, rev *schema.Revision) (func(schema.PluginID) bool, error) {
	if rev == nil || rev.Scope.IsAll() {
		return func(schema.PluginID) bool { return true }, nil
	}
	_, parts, err := e.readParticipants(ctx, c, rev.Revision)
	if err != nil {
		return nil, err
	}
	in := make(map[schema.PluginID]bool, len(parts))
	for _, p := range parts {
		in[p] = true
	}
	return func(id schema.PluginID) bool { return in[id] }, nil
}

// agentOf makes one agent's row from its registrations (regs, in
// registration order): its last acked revision and the worst result at
// it, the plugins behind the round of rev, and its lowest lease (0: none).
// LeaseTTLSeconds is left at -1 (unknown).
func agentOf(regs []regRow, acks map[schema.PluginID]schema.Ack, rev *schema.Revision, inRound func(schema.PluginID) bool) (agentDoc, clientv3.LeaseID) {
	a := agentDoc{Agent: regs[0].Agent, LeaseTTLSeconds: -1}
	var lease clientv3.LeaseID
	for _, r := range regs {
		a.Plugins = append(a.Plugins, r.Plugin)
		if ack, ok := acks[r.ID()]; ok && ack.Revision > a.AckedRevision {
			a.AckedRevision = ack.Revision
		}
		if lease == 0 || r.Lease < lease {
			lease = r.Lease
		}
	}
	for _, r := range regs {
		if ack, ok := acks[r.ID()]; ok && ack.Revision == a.AckedRevision && (a.Result == "" || resultRank(ack.Result) > resultRank(a.Result)) {
			a.Result = ack.Result
		}
		if rev != nil && inRound(r.ID()) && !r.RegisteredAt.After(rev.StartedAt) {
			if ack, ok := acks[r.ID()]; !ok || ack.Revision < rev.Revision {
				a.Behind = true
				a.BehindPlugins = append(a.BehindPlugins, r.Plugin)
			}
		}
	}
	a.Lease = fmt.Sprintf("%x", int64(lease))
	return a, lease
}

// leaseTTLs reads the TTL left on leases, each once.
type leaseTTLs struct {
	c   *clientv3.Client
	ttl map[clientv3.LeaseID]int64
}

// left returns the seconds left on lease of agent, -1 for no lease.
func (l *leaseTTLs) left(ctx context.Context, lease clientv3.LeaseID, agent string) (int64, error) {
	if lease == 0 {
		return -1, nil
	}
	if ttl, seen := l.ttl[lease]; seen {
		return ttl, nil
	}
	resp, err := l.c.TimeToLive(ctx, lease)
	if err != nil {
		return 0, fmt.Errorf("lease %x of agent %s: %w", int64(lease), agent, err)
	}
	l.ttl[lease] = resp.TTL
	return resp.TTL, nil
}
