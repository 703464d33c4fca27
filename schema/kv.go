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
	case KindAck, KindElection, KindOwner:
		return "an " + k.String()
	}
	return "a " + k.String()
}

// DecodeRevision decodes the revision record read from key.
func (l Layout) DecodeRevision(key string, value []byte) (Revision, error) {
	if _, err := l.family(key, KindRevision); err != nil {
		return Revision{}, err
	}
	return DecodeRevision(key, value)
}

// DecodeRegistration decodes registrations/<agent>/<plugin>; the value must
// name the key's agent and plugin.
func (l Layout) DecodeRegistration(key string, value []byte) (Registration, error) {
	k, err := l.family(key, KindRegistration)
	if err != nil {
		return Registration{}, err
	}
	reg, err := DecodeRegistration(key, value)
	if err != nil {
		return Registration{}, err
	}
	if reg.Agent != k.Agent || reg.Plugin != k.Plugin {
		return Registration{}, &DecodeError{Key: key, Reason: fmt.Sprintf("value names %s/%s, the key %s/%s", reg.Agent, reg.Plugin, k.Agent, k.Plugin)}
	}
	return reg, nil
}

// DecodeAck decodes acks/<agent>/<plugin>; the plugin is named by the key
// alone (the value does not repeat it).
func (l Layout) DecodeAck(key string, value []byte) (PluginID, Ack, error) {
	k, err := l.family(key, KindAck)
	if err != nil {
		return PluginID{}, Ack{}, err
	}
	a, err := DecodeAck(key, value)
	if err != nil {
		return PluginID{}, Ack{}, err
	}
	return PluginID{Agent: k.Agent, Plugin: k.Plugin}, a, nil
}

// DecodeRequest decodes a request key and returns its writer (from the key)
// with the request. Whether the writer may ask for the request's scope is
// Request.AllowedFor's business.
func (l Layout) DecodeRequest(key string, value []byte) (Writer, Request, error) {
	k, err := l.family(key, KindRequest)
	if err != nil {
		return Writer{}, Request{}, err
	}
	r, err := DecodeRequest(key, value)
	if err != nil {
		return Writer{}, Request{}, err
	}
	return k.Writer, r, nil
}

// DecodeRound decodes rounds/<N>; the value must be round N's.
func (l Layout) DecodeRound(key string, value []byte) (Round, error) {
	k, err := l.family(key, KindRound)
	if err != nil {
		return Round{}, err
	}
	r, err := DecodeRound(key, value)
	if err != nil {
		return Round{}, err
	}
	if r.Revision != k.Round {
		return Round{}, &DecodeError{Key: key, Reason: fmt.Sprintf("holds round %d", r.Revision)}
	}
	return r, nil
}

// DecodeRoundAgent decodes rounds/<N>/agents/<agent>; the value must be
// round N's record of that agent.
func (l Layout) DecodeRoundAgent(key string, value []byte) (RoundAgent, error) {
	k, err := l.family(key, KindRoundAgent)
	if err != nil {
		return RoundAgent{}, err
	}
	r, err := DecodeRoundAgent(key, value)
	if err != nil {
		return RoundAgent{}, err
	}
	if r.Revision != k.Round || r.Agent != k.Agent {
		return RoundAgent{}, &DecodeError{Key: key, Reason: fmt.Sprintf("holds round %d of agent %s", r.Revision, r.Agent)}
	}
	return r, nil
}

// DecodeRoundScope decodes rounds/<N>/scope/<i>; the value must be round
// N's.
func (l Layout) DecodeRoundScope(key string, value []byte) (RoundScope, error) {
	k, err := l.family(key, KindRoundScope)
	if err != nil {
		return RoundScope{}, err
	}
	r, err := DecodeRoundScope(key, value)
	if err != nil {
		return RoundScope{}, err
	}
	if r.Revision != k.Round {
		return RoundScope{}, &DecodeError{Key: key, Reason: fmt.Sprintf("holds round %d", r.Revision)}
	}
	return r, nil
}
