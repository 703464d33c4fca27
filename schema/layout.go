package schema

import (
	"fmt"
	"hash/fnv"
	"strconv"
	"strings"
)

// DefaultPrefix is the key prefix used when none is configured.
const DefaultPrefix = "/resync/"

// MaxTxnOps is etcd's default --max-txn-ops: the most operations one Txn may
// carry. Every writer (the leader, an agent's registry and outbox) splits
// its writes into Txns of at most this many operations.
const MaxTxnOps = 128

// Key families under the prefix.
const (
	electionDir      = "election"
	revisionKey      = "revision"
	registrationsDir = "registrations/"
	acksDir          = "acks/"
	requestsDir      = "requests/"
	// Under requestsDir: one sub-prefix per kind of writer.
	agentRequestsDir    = "agent/"
	operatorRequestsDir = "operator/"
	roundsDir           = "rounds/"
	ownersDir           = "owners/"
	wakeShardsDir       = "wake/shards/"
	wakeAgentsDir       = "wake/agents/"
)

// WakeShards is how many wake shard keys an all-scope round writes
// (wake/shards/00 to 63): an agent watches the one of its shard
// (WakeShardOf), so that no single write notifies the whole fleet. It is
// part of the protocol: agents and coordinators must agree on it. At 64
// shards a fleet of 10,000 agents has about 156 per shard, and a shard
// passes 512 watchers only beyond about 30,000 agents.
const WakeShards = 64

// WakeShardOf is agent's wake shard: FNV-1a of its real name, modulo
// WakeShards.
func WakeShardOf(agent string) int {
	h := fnv.New32a()
	h.Write([]byte(agent))
	return int(h.Sum32() % WakeShards)
}

// roundDigits is the width of the zero-padded round number in rounds/<N>, so
// that etcd's lexical key order is the numeric order of rounds.
const roundDigits = 20

// Layout is the etcd key layout under one prefix. The zero value is not
// usable; build one with NewLayout. A Layout is an immutable value, safe for
// concurrent use.
//
// Its methods take real agent and plugin names and put their escaped form
// (EscapeName) in the keys; Parse returns the real names. No caller builds
// or splits a key by hand.
type Layout struct {
	prefix string
}

// NewLayout returns the layout under prefix. An empty prefix means
// DefaultPrefix; a missing trailing "/" is added. The prefix must start with
// "/" and must not contain empty path elements.
func NewLayout(prefix string) (Layout, error) {
	if prefix == "" {
		prefix = DefaultPrefix
	}
	if !strings.HasPrefix(prefix, "/") {
		return Layout{}, fmt.Errorf("schema: key prefix %q must start with \"/\" (for example %q)", prefix, DefaultPrefix)
	}
	if !strings.HasSuffix(prefix, "/") {
		prefix += "/"
	}
	if strings.Contains(prefix, "//") && prefix != "/" {
		return Layout{}, fmt.Errorf("schema: key prefix %q has an empty element (\"//\")", prefix)
	}
	if len(prefix) > 256 {
		return Layout{}, fmt.Errorf("schema: key prefix is %d bytes long: the limit is 256", len(prefix))
	}
	return Layout{prefix: prefix}, nil
}

// MustLayout is NewLayout for constant prefixes known to be valid (tests,
// DefaultPrefix). It panics on an invalid prefix: never pass it user input.
func MustLayout(prefix string) Layout {
	l, err := NewLayout(prefix)
	if err != nil {
		panic(err)
	}
	return l
}

// Prefix is the layout's prefix, ending in "/".
func (l Layout) Prefix() string { return l.prefix }

// Election is the prefix given to concurrency.NewElection; the candidates'
// keys are Election()+"/"+<lease-hex>.
func (l Layout) Election() string { return l.prefix + electionDir }

// Revision is the key of the current resync revision record.
func (l Layout) Revision() string { return l.prefix + revisionKey }

// Registrations is the prefix of all registration keys.
func (l Layout) Registrations() string { return l.prefix + registrationsDir }

// AgentRegistrations is the prefix of one agent's registration keys.
func (l Layout) AgentRegistrations(agent string) string {
	return l.prefix + registrationsDir + EscapeName(agent) + "/"
}

// Registration is the key of one plugin's registration.
func (l Layout) Registration(agent, plugin string) string {
	return l.prefix + registrationsDir + EscapeName(agent) + "/" + EscapeName(plugin)
}

// Acks is the prefix of all ack keys.
func (l Layout) Acks() string { return l.prefix + acksDir }

// AgentAcks is the prefix of one agent's ack keys.
func (l Layout) AgentAcks(agent string) string { return l.prefix + acksDir + EscapeName(agent) + "/" }

// Ack is the key of one plugin's ack.
func (l Layout) Ack(agent, plugin string) string {
	return l.prefix + acksDir + EscapeName(agent) + "/" + EscapeName(plugin)
}

// Requests is the prefix of every resync request key, whoever wrote it.
func (l Layout) Requests() string { return l.prefix + requestsDir }

// AgentRequests is the prefix of agent's own resync requests
// (requests/agent/<agent>/): only that agent (and the coordinator) may write
// there once `resyncctl rbac apply` secured etcd.
func (l Layout) AgentRequests(agent string) string {
	return l.prefix + requestsDir + agentRequestsDir + EscapeName(agent) + "/"
}

// AgentRequest is the key of one request written by agent for itself
// (ReportError, rejoin).
func (l Layout) AgentRequest(agent, id string) string { return l.AgentRequests(agent) + id }

// OperatorRequests is the prefix of operators' resync requests
// (requests/operator/): written by resyncctl trigger with an operator's
// credentials, and by the coordinator's own retry requests.
func (l Layout) OperatorRequests() string { return l.prefix + requestsDir + operatorRequestsDir }

// OperatorRequest is the key of one operator's request.
func (l Layout) OperatorRequest(id string) string { return l.OperatorRequests() + id }

// RequestOf is the key of request id written by w: AgentRequest,
// OperatorRequest or LegacyRequest.
func (l Layout) RequestOf(w Writer, id string) string {
	switch w.Kind {
	case WriterAgent:
		return l.AgentRequest(w.Agent, id)
	case WriterOperator:
		return l.OperatorRequest(id)
	}
	return l.LegacyRequest(id)
}

// LegacyRequest is the key of a request in the layout before per-writer
// keys (requests/<id>). Nothing in resync writes it any more; the
// coordinator still consumes such keys (see WriterLegacy).
func (l Layout) LegacyRequest(id string) string { return l.prefix + requestsDir + id }

// Rounds is the prefix of round records.
func (l Layout) Rounds() string { return l.prefix + roundsDir }

// Round is the key of round n's record, zero-padded so keys sort numerically.
func (l Layout) Round(n uint64) string {
	s := strconv.FormatUint(n, 10)
	return l.prefix + roundsDir + strings.Repeat("0", roundDigits-len(s)) + s
}

// Owners is the prefix of agent owner keys.
func (l Layout) Owners() string { return l.prefix + ownersDir }

// Owner is the key naming the one process that owns agent's name: written
// by that process on its session lease (see package registry).
func (l Layout) Owner(agent string) string { return l.prefix + ownersDir + EscapeName(agent) }

// Wakes is the prefix of every wake key.
func (l Layout) Wakes() string { return l.prefix + "wake/" }

// WakeShard is the key of wake shard i (0 <= i < WakeShards): a copy of
// the revision record of the last all-scope round, written by the leader
// for the agents of that shard to watch.
func (l Layout) WakeShard(i int) string { return fmt.Sprintf("%s%s%02d", l.prefix, wakeShardsDir, i) }

// WakeShards is the prefix of the wake shard keys.
func (l Layout) WakeShards() string { return l.prefix + wakeShardsDir }

// WakeAgent is the key of agent's own wake key: a copy of the revision
// record of the last set-scope round that agent takes part in, written by
// the leader on the agent's session lease (it goes when the agent does).
func (l Layout) WakeAgent(agent string) string { return l.prefix + wakeAgentsDir + EscapeName(agent) }

// StateRange is the key range [start, end) that the leading coordinator
// lists and watches with one watch, so that acks, registrations and
// owners' records reach it in etcd's revision order (an ack put before
// its lease expired is seen before its registration vanishes). The range
// holds exactly the keys of StateKinds, and those in the order listed
// there: acks/ < election/ < owners/ < registrations/; the revision,
// requests and rounds lie outside it. The names of the key families make
// it so, whatever the prefix; TestStateRange pins it. A new key family
// must be named to fall inside or outside on purpose.
func (l Layout) StateRange() (start, end string) {
	return l.prefix + acksDir, prefixEnd(l.prefix + registrationsDir)
}

// StateKinds are the kinds of the keys inside StateRange, in key order.
// The leader decodes acks and registrations, reads owners for their
// refused registrations, and skips the few election keys.
func StateKinds() []Kind { return []Kind{KindAck, KindElection, KindOwner, KindRegistration} }

// prefixEnd is the end of the range of every key that starts with p, as
// etcd's clientv3.GetPrefixRangeEnd computes it.
func prefixEnd(p string) string {
	b := []byte(p)
	for i := len(b) - 1; i >= 0; i-- {
		if b[i] < 0xff {
			b[i]++
			return string(b[:i+1])
		}
	}
	return "\x00" // every key
}

// RoundDir is the prefix of every key of round n: its summary's detail
// (rounds/<N>/agents/, rounds/<N>/scope/). Pruning a round deletes
// Round(n) and RoundDir(n).
func (l Layout) RoundDir(n uint64) string { return l.Round(n) + "/" }

// RoundAgents is the prefix of round n's per-agent participation records.
func (l Layout) RoundAgents(n uint64) string { return l.Round(n) + "/" + roundAgentsDir }

// RoundAgent is the key of one agent's participation record in round n.
func (l Layout) RoundAgent(n uint64, agent string) string {
	return l.Round(n) + "/" + roundAgentsDir + EscapeName(agent)
}

// RoundScopes is the prefix of round n's scope target chunks.
func (l Layout) RoundScopes(n uint64) string { return l.Round(n) + "/" + roundScopeDir }

// RoundScope is the key of the i-th chunk of round n's scope targets.
func (l Layout) RoundScope(n uint64, i int) string {
	return fmt.Sprintf("%s/%s%06d", l.Round(n), roundScopeDir, i)
}

const (
	roundAgentsDir = "agents/"
	roundScopeDir  = "scope/"
)

// Kind is the family of a key under the prefix.
type Kind int

// The key families.
const (
	KindUnknown Kind = iota
	KindElection
	KindRevision
	KindRegistration
	KindAck
	KindRequest
	KindRound
	KindRoundAgent
	KindRoundScope
	KindOwner
	KindWakeShard
	KindWakeAgent
)

var kindNames = [...]string{"unknown", "election", "revision", "registration", "ack", "request", "round", "round agent", "round scope", "owner", "wake shard", "agent wake"}

func (k Kind) String() string {
	if int(k) < len(kindNames) {
		return kindNames[k]
	}
	return "Kind(" + strconv.Itoa(int(k)) + ")"
}

// Key is a parsed key. Only the fields of its Kind are set.
type Key struct {
	Kind   Kind
	Agent  string // registration, ack, owner, an agent's request (its writer), round agent
	Plugin string // registration, ack
	ID     string // request id, election lease
	Round  uint64 // round, round agent, round scope
	Chunk  int    // round scope, wake shard (its number)
	// Writer is, for a request, the writer its key belongs to.
	Writer Writer
}

// Parse splits a key of this layout into its parts. A key outside the prefix,
// of an unknown family, or with invalid names is an error naming the key.
func (l Layout) Parse(key string) (Key, error) {
	rest, ok := strings.CutPrefix(key, l.prefix)
	if !ok {
		return Key{}, &DecodeError{Key: key, Reason: fmt.Sprintf("not under the prefix %q", l.prefix)}
	}
	bad := func(format string, a ...any) (Key, error) {
		return Key{}, &DecodeError{Key: key, Reason: fmt.Sprintf(format, a...)}
	}
	switch {
	case rest == revisionKey:
		return Key{Kind: KindRevision}, nil
	case strings.HasPrefix(rest, electionDir+"/"):
		id := rest[len(electionDir)+1:]
		if id == "" || strings.Contains(id, "/") {
			return bad("election key must be election/<lease-hex>")
		}
		return Key{Kind: KindElection, ID: id}, nil
	case strings.HasPrefix(rest, registrationsDir), strings.HasPrefix(rest, acksDir):
		kind, dir := KindRegistration, registrationsDir
		if strings.HasPrefix(rest, acksDir) {
			kind, dir = KindAck, acksDir
		}
		ea, ep, ok := strings.Cut(rest[len(dir):], "/")
		if !ok {
			return bad("%s key must be %s<agent>/<plugin>", kind, dir)
		}
		agent, err := UnescapeName("agent", ea)
		if err != nil {
			return bad("%v", err)
		}
		plugin, err := UnescapeName("plugin", ep)
		if err != nil {
			return bad("%v", err)
		}
		return Key{Kind: kind, Agent: agent, Plugin: plugin}, nil
	case strings.HasPrefix(rest, ownersDir):
		agent, err := UnescapeName("agent", rest[len(ownersDir):])
		if err != nil {
			return bad("%v", err)
		}
		return Key{Kind: KindOwner, Agent: agent}, nil
	case strings.HasPrefix(rest, requestsDir):
		return l.parseRequest(key, rest[len(requestsDir):])
	case strings.HasPrefix(rest, wakeShardsDir), strings.HasPrefix(rest, wakeAgentsDir):
		return parseWake(key, rest)
	case strings.HasPrefix(rest, roundsDir):
		s, sub, hasSub := strings.Cut(rest[len(roundsDir):], "/")
		n, err := strconv.ParseUint(s, 10, 64)
		if err != nil || len(s) != roundDigits || n == 0 {
			return bad("round key must be rounds/<N>[/agents/<agent>|/scope/<i>] with N > 0 zero-padded to %d digits", roundDigits)
		}
		switch {
		case !hasSub:
			return Key{Kind: KindRound, Round: n}, nil
		case strings.HasPrefix(sub, roundAgentsDir):
			agent, err := UnescapeName("agent", sub[len(roundAgentsDir):])
			if err != nil {
				return bad("round agent key: %v", err)
			}
			return Key{Kind: KindRoundAgent, Round: n, Agent: agent}, nil
		case strings.HasPrefix(sub, roundScopeDir):
			i, err := strconv.Atoi(sub[len(roundScopeDir):])
			if err != nil || i < 0 {
				return bad("round scope key must be rounds/<N>/scope/<i>")
			}
			return Key{Kind: KindRoundScope, Round: n, Chunk: i}, nil
		}
		return bad("unknown key under rounds/<N>/: want agents/<agent> or scope/<i>")
	}
	return bad("unknown key family under the prefix")
}

// parseWake parses a wake key: rest is wake/shards/<NN> or
// wake/agents/<agent>.
func parseWake(key, rest string) (Key, error) {
	if s, ok := strings.CutPrefix(rest, wakeShardsDir); ok {
		i, err := strconv.Atoi(s)
		if err != nil || len(s) != 2 || i < 0 || i >= WakeShards {
			return Key{}, &DecodeError{Key: key, Reason: fmt.Sprintf("wake shard key must be %s<NN> with NN from 00 to %02d", wakeShardsDir, WakeShards-1)}
		}
		return Key{Kind: KindWakeShard, Chunk: i}, nil
	}
	agent, err := UnescapeName("agent", rest[len(wakeAgentsDir):])
	if err != nil {
		return Key{}, &DecodeError{Key: key, Reason: err.Error()}
	}
	return Key{Kind: KindWakeAgent, Agent: agent}, nil
}

// parseRequest parses what follows requests/: agent/<agent>/<id>,
// operator/<id> or a legacy <id>.
func (l Layout) parseRequest(key, rest string) (Key, error) {
	bad := func(format string, a ...any) (Key, error) {
		return Key{}, &DecodeError{Key: key, Reason: fmt.Sprintf(format, a...)}
	}
	const forms = "requests/agent/<agent>/<id>, requests/operator/<id> or (legacy) requests/<id>"
	k := Key{Kind: KindRequest}
	switch {
	case strings.HasPrefix(rest, agentRequestsDir):
		ea, id, ok := strings.Cut(rest[len(agentRequestsDir):], "/")
		if !ok {
			return bad("request key must be one of %s", forms)
		}
		agent, err := UnescapeName("agent", ea)
		if err != nil {
			return bad("%v", err)
		}
		k.Agent, k.ID, k.Writer = agent, id, Writer{Kind: WriterAgent, Agent: agent}
	case strings.HasPrefix(rest, operatorRequestsDir):
		k.ID, k.Writer = rest[len(operatorRequestsDir):], Writer{Kind: WriterOperator}
	case rest+"/" == agentRequestsDir || rest+"/" == operatorRequestsDir:
		return bad("request id %q is reserved: request keys are %s", rest, forms)
	default:
		k.ID, k.Writer = rest, Writer{Kind: WriterLegacy}
	}
	if err := ValidateToken("request id", k.ID); err != nil {
		return bad("%v (request keys are %s)", err, forms)
	}
	return k, nil
}
