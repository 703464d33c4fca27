package schema

import "fmt"

// The Layout's Decode methods are the one decoder of each record family for
// a reader of etcd keys: each parses the key, checks that it is of the
// family, decodes the value (with the package-level Decode function of the
// record) and checks that key and value agree. Every error is a
// *DecodeError naming the key and what is wrong.

// family parses key and checks that it is of kind.
func (l Layout) family(key string, kind Kind) (Key, error) {
	k, err := l.Parse(key)
	if err != nil {
		return Key{}, err
	}
	if k.Kind != kind {
		return Key{}, &DecodeError{Key: key, Reason: "not " + article(kind) + " key"}
	}
	return k, nil
}

func article(k Kind) string {
	switch k {
	case KindAck, KindElection, KindOwner, KindWakeAgent:
		return "an " + k.String()
	}
	return "a " + k.String()
}

// decodeKV is every Decode method: key of kind, value decoded by dec, then
// agree (nil: nothing to check) says what in the value contradicts the key,
// "" if nothing.
func decodeKV[T any](l Layout, key string, value []byte, kind Kind, dec func(string, []byte) (T, error), agree func(Key, T) string) (Key, T, error) {
	var zero T
	k, err := l.family(key, kind)
	if err != nil {
		return Key{}, zero, err
	}
	v, err := dec(key, value)
	if err != nil {
		return Key{}, zero, err
	}
	if agree != nil {
		if why := agree(k, v); why != "" {
			return Key{}, zero, &DecodeError{Key: key, Reason: why}
		}
	}
	return k, v, nil
}

// DecodeRevision decodes the revision record read from key.
func (l Layout) DecodeRevision(key string, value []byte) (Revision, error) {
	_, r, err := decodeKV(l, key, value, KindRevision, DecodeRevision, nil)
	return r, err
}

// DecodeWake decodes a wake key (a wake shard or an agent's wake key): a
// copy of a revision record.
func (l Layout) DecodeWake(key string, value []byte) (Revision, error) {
	k, err := l.Parse(key)
	if err != nil {
		return Revision{}, err
	}
	if k.Kind != KindWakeShard && k.Kind != KindWakeAgent {
		return Revision{}, &DecodeError{Key: key, Reason: "not a wake key"}
	}
	return DecodeRevision(key, value)
}

// DecodeRegistration decodes registrations/<agent>/<plugin>; the value must
// name the key's agent and plugin.
func (l Layout) DecodeRegistration(key string, value []byte) (Registration, error) {
	_, r, err := decodeKV(l, key, value, KindRegistration, DecodeRegistration, func(k Key, r Registration) string {
		if r.Agent != k.Agent || r.Plugin != k.Plugin {
			return fmt.Sprintf("value names %s/%s, the key %s/%s", r.Agent, r.Plugin, k.Agent, k.Plugin)
		}
		return ""
	})
	return r, err
}

// DecodeOwner decodes owners/<agent>; the value must name the key's agent.
func (l Layout) DecodeOwner(key string, value []byte) (Owner, error) {
	_, o, err := decodeKV(l, key, value, KindOwner, DecodeOwner, func(k Key, o Owner) string {
		if o.Agent != k.Agent {
			return fmt.Sprintf("value names agent %s, the key %s", o.Agent, k.Agent)
		}
		return ""
	})
	return o, err
}

// DecodeAck decodes acks/<agent>/<plugin>; the plugin is named by the key
// alone (the value does not repeat it).
func (l Layout) DecodeAck(key string, value []byte) (PluginID, Ack, error) {
	k, a, err := decodeKV(l, key, value, KindAck, DecodeAck, nil)
	return PluginID{Agent: k.Agent, Plugin: k.Plugin}, a, err
}

// DecodeRequest decodes a request key and returns its writer (from the key)
// with the request. Whether the writer may ask for the request's scope is
// Request.AllowedFor's business.
func (l Layout) DecodeRequest(key string, value []byte) (Writer, Request, error) {
	k, r, err := decodeKV(l, key, value, KindRequest, DecodeRequest, nil)
	return k.Writer, r, err
}

// holdsRound is the agreement of a round's records with their key: the
// value's revision is the key's N.
func holdsRound(k Key, rev uint64) string {
	if rev != k.Round {
		return fmt.Sprintf("holds round %d", rev)
	}
	return ""
}

// DecodeRound decodes rounds/<N>; the value must be round N's.
func (l Layout) DecodeRound(key string, value []byte) (Round, error) {
	_, r, err := decodeKV(l, key, value, KindRound, DecodeRound, func(k Key, r Round) string { return holdsRound(k, r.Revision) })
	return r, err
}

// DecodeRoundAgent decodes rounds/<N>/agents/<agent>; the value must be
// round N's record of that agent.
func (l Layout) DecodeRoundAgent(key string, value []byte) (RoundAgent, error) {
	_, r, err := decodeKV(l, key, value, KindRoundAgent, DecodeRoundAgent, func(k Key, r RoundAgent) string {
		if r.Revision != k.Round || r.Agent != k.Agent {
			return fmt.Sprintf("holds round %d of agent %s", r.Revision, r.Agent)
		}
		return ""
	})
	return r, err
}

// DecodeRoundScope decodes rounds/<N>/scope/<i>; the value must be round
// N's.
func (l Layout) DecodeRoundScope(key string, value []byte) (RoundScope, error) {
	_, r, err := decodeKV(l, key, value, KindRoundScope, DecodeRoundScope, func(k Key, r RoundScope) string { return holdsRound(k, r.Revision) })
	return r, err
}
