package schema

import (
	"bytes"
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Status is the state of a resync revision, as seen by plugins in their
// StatusEvents and stored in the revision record.
type Status string

const (
	// Started means that a resync has started: a plugin reloads its state
	// and acks.
	Started Status = "Started"
	// NotActive means that no resync runs: none started yet, or the last one
	// finished.
	NotActive Status = "NotActive"
)

// Result is the outcome a plugin reports for one revision in its ack.
type Result string

const (
	// ResultOK: the plugin reloaded its state.
	ResultOK Result = "ok"
	// ResultError: the plugin failed to reload; Ack.Error says why.
	ResultError Result = "error"
	// ResultTimeout: the plugin did not take the event or did not ack within
	// its timeouts; written by the agent's watcher on its behalf.
	ResultTimeout Result = "timeout"
)

// Cause says why a resync was requested.
type Cause string

const (
	// CauseInitial is the first round ever.
	CauseInitial Cause = "initial"
	// CauseManual is an operator's request (resyncctl trigger).
	CauseManual Cause = "manual"
	// CauseError is a plugin's ReportError, or a round that did not complete
	// clean; such requests are planned after the retry backoff.
	CauseError Cause = "error"
	// CauseRejoin is an agent that lost its session and re-registered.
	CauseRejoin Cause = "rejoin"
)

// Limits on identities and on stored values (free text: see text.go).
const (
	// MaxIDLen bounds identities (leader id, requested_by).
	MaxIDLen = 256

	maxRegistrationValue = 4 << 10
	maxOwnerValue        = 4 << 10
	maxAckValue          = 8 << 10
	maxRequestValue      = 64 << 10
	maxRevisionValue     = 16 << 10
	maxRoundValue        = 32 << 10
)

// Scope selects the participants of a round: every live registration (both
// empty), one agent's (Agent set), or one plugin of one agent (both set).
type Scope struct {
	Agent  string `json:"agent,omitempty"`
	Plugin string `json:"plugin,omitempty"`
}

// All reports whether the scope selects every registration.
func (s Scope) All() bool { return s.Agent == "" && s.Plugin == "" }

// Includes reports whether the plugin is in the scope.
func (s Scope) Includes(agent, plugin string) bool {
	return (s.Agent == "" || s.Agent == agent) && (s.Plugin == "" || s.Plugin == plugin)
}

// Validate checks names; a plugin scope needs its agent.
func (s Scope) Validate() error {
	if s.Plugin != "" && s.Agent == "" {
		return errors.New("scope: a plugin scope needs its agent")
	}
	if s.Agent != "" {
		if err := ValidateName("agent", s.Agent); err != nil {
			return fmt.Errorf("scope: %w", err)
		}
	}
	if s.Plugin != "" {
		if err := ValidateName("plugin", s.Plugin); err != nil {
			return fmt.Errorf("scope: %w", err)
		}
	}
	return nil
}

func (s Scope) String() string {
	switch {
	case s.All():
		return "all"
	case s.Plugin == "":
		return "agent " + s.Agent
	}
	return "plugin " + s.Agent + "/" + s.Plugin
}

// PluginID names one plugin of one agent. It is stored in JSON as the string
// "agent/plugin" of the escaped names (Key), so that a "/" in a name does
// not make it ambiguous.
type PluginID struct {
	Agent  string
	Plugin string
}

// String is "agent/plugin" of the real names, for people (logs, displays).
func (p PluginID) String() string { return p.Agent + "/" + p.Plugin }

// Key is "agent/plugin" of the escaped names (EscapeName), the form stored
// in records and accepted by ParseTarget: reversible whatever the names.
func (p PluginID) Key() string { return EscapeName(p.Agent) + "/" + EscapeName(p.Plugin) }

// MarshalText encodes Key.
func (p PluginID) MarshalText() ([]byte, error) { return []byte(p.Key()), nil }

// UnmarshalText decodes and validates Key's form.
func (p *PluginID) UnmarshalText(b []byte) error {
	ea, ep, ok := strings.Cut(string(b), "/")
	if !ok {
		return fmt.Errorf("participant %q is not agent/plugin", string(b))
	}
	a, err := UnescapeName("agent", ea)
	if err != nil {
		return err
	}
	pl, err := UnescapeName("plugin", ep)
	if err != nil {
		return err
	}
	*p = PluginID{Agent: a, Plugin: pl}
	return nil
}

// Registration is the value of registrations/<agent>/<plugin>, written by the
// agent on its session lease.
type Registration struct {
	Agent  string `json:"agent"`
	Plugin string `json:"plugin"`
	// Order is the plugin's registration index within its agent, from 0.
	Order        int       `json:"order"`
	RegisteredAt time.Time `json:"registered_at"`
}

// CompareRegistrations orders registrations by agent, then registration
// order (the order in which a round's participants are listed and
// resynced).
func CompareRegistrations(a, b Registration) int {
	return cmp.Or(cmp.Compare(a.Agent, b.Agent), cmp.Compare(a.Order, b.Order), cmp.Compare(a.Plugin, b.Plugin))
}

// ID is the registration's plugin id.
func (r Registration) ID() PluginID { return PluginID{r.Agent, r.Plugin} }

// Validate checks the record.
func (r Registration) Validate() error {
	if err := ValidateName("agent", r.Agent); err != nil {
		return err
	}
	if err := ValidateName("plugin", r.Plugin); err != nil {
		return err
	}
	if r.Order < 0 {
		return fmt.Errorf("order %d is negative", r.Order)
	}
	return nil
}

// Owner is the value of owners/<agent>: the process that owns the agent
// name, written by that process's registry on its session lease.
type Owner struct {
	Agent string `json:"agent"`
	// Lease is the owner's session lease, in hex as etcdctl prints it.
	Lease string `json:"lease"`
	// Process identifies the process: random, new for every Registry.
	Process string `json:"process"`
	Host    string `json:"host,omitempty"`
	PID     int    `json:"pid,omitempty"`
	// Started is when the owning Registry was created, by its host's
	// clock: for people only. Which process is newer is decided by Born
	// and by the key's revisions, never by a host's clock.
	Started time.Time `json:"started"`
	// ClaimedAt is when it claimed the name (host clock, for people).
	ClaimedAt time.Time `json:"claimed_at"`
	// Born is the etcd revision at which the process got its first
	// session lease (the Grant's header revision): its start in etcd's
	// order. 0 in records of older versions.
	Born int64 `json:"born,omitempty"`
	// Refused counts the registrations this process refused (a name that
	// cannot be stored: see ValidateName), so that operators see a plugin
	// that will never resync (resyncctl agents).
	Refused int `json:"refused,omitempty"`
	// RefusedNames are the first MaxRefusedNames refused names, each
	// quoted by RefusedName.
	RefusedNames []string `json:"refused_names,omitempty"`
}

// MaxRefusedNames bounds Owner.RefusedNames.
const MaxRefusedNames = 5

// maxRefusedName bounds one refused name kept in an owner record, in bytes
// of the name before quoting: the record stays well under its 4 KiB.
const maxRefusedName = 64

// RefusedName is how a refused name is kept in an owner record: Go-quoted
// (control characters and invalid UTF-8 escaped) after cutting it to 64
// bytes, so any name fits in a bounded, printable record.
func RefusedName(name string) string {
	if len(name) > maxRefusedName {
		name = name[:maxRefusedName] + "..."
	}
	return strconv.Quote(name)
}

// String is like "process 3f2a... (host h, pid 12, lease 694d...)".
func (o Owner) String() string {
	return fmt.Sprintf("process %s (host %s, pid %d, lease %s, started %s, born at etcd revision %d)",
		o.Process, o.Host, o.PID, o.Lease, o.Started.Format(time.RFC3339Nano), o.Born)
}

// Validate checks the record.
func (o Owner) Validate() error {
	if err := ValidateName("agent", o.Agent); err != nil {
		return err
	}
	if o.Process == "" {
		return errors.New("no process id")
	}
	if o.Born < 0 {
		return fmt.Errorf("born at revision %d: a revision is not negative", o.Born)
	}
	if o.Refused < len(o.RefusedNames) || len(o.RefusedNames) > MaxRefusedNames {
		return fmt.Errorf("%d refused names listed for a count of %d: at most %d and no more than the count", len(o.RefusedNames), o.Refused, MaxRefusedNames)
	}
	for _, n := range o.RefusedNames {
		if len(n) > 4*maxRefusedName+8 {
			return fmt.Errorf("a refused name of %d bytes: the limit is %d", len(n), 4*maxRefusedName+8)
		}
	}
	return checkText("host", o.Host, MaxIDLen, "process", o.Process, "lease", o.Lease)
}

// Revision is the value of the revision key, written only by the leading
// coordinator, fenced by its leadership.
type Revision struct {
	Revision uint64 `json:"revision"`
	State    Status `json:"state"`
	Reason   string `json:"reason"`
	Cause    Cause  `json:"cause"`
	// Scope summarises the round's scope in a fixed size: a set scope's
	// participants learn that they take part from rounds/<N>/agents/<agent>.
	Scope ScopeSummary `json:"scope"`
	// Participants is the number of participants; their names are under
	// rounds/<N>/agents/.
	Participants int       `json:"participants"`
	StartedAt    time.Time `json:"started_at"`
	Deadline     time.Time `json:"deadline"`
	FinishedAt   time.Time `json:"finished_at,omitzero"`
	// Leader is the id of the coordinator that wrote this record.
	Leader string `json:"leader"`
	// Epoch names the history the revision belongs to: the coordinator
	// makes a new one when it finds no revision record (a new cluster, a
	// wiped prefix) and carries it over otherwise. An agent that sees a
	// new epoch forgets the revisions it handled and takes the new rounds.
	// Empty in records of older versions.
	Epoch string `json:"epoch,omitempty"`
}

// Validate checks the record.
func (r Revision) Validate() error {
	if r.Revision == 0 {
		return errors.New("revision must be > 0")
	}
	if err := r.State.validate(); err != nil {
		return err
	}
	if err := r.Scope.Validate(); err != nil {
		return err
	}
	if r.Participants < 0 {
		return errors.New("participants must be >= 0")
	}
	if r.State == NotActive && r.FinishedAt.IsZero() {
		return errors.New("a NotActive revision needs finished_at")
	}
	return checkText("reason", r.Reason, acceptLen(MaxReasonLen), "leader", r.Leader, "epoch", r.Epoch)
}

// Ack is the value of acks/<agent>/<plugin>, written by the agent's watcher on
// its session lease, overwritten each revision.
type Ack struct {
	Revision uint64    `json:"revision"`
	Result   Result    `json:"result"`
	Error    string    `json:"error,omitempty"`
	AckedAt  time.Time `json:"acked_at"`
}

// Validate checks the record.
func (a Ack) Validate() error {
	if a.Revision == 0 {
		return errors.New("revision must be > 0")
	}
	switch a.Result {
	case ResultOK, ResultError, ResultTimeout:
	default:
		return fmt.Errorf("result %q is not one of ok, error, timeout", a.Result)
	}
	return checkText("error", a.Error, acceptLen(MaxAckErrorLen))
}

// Request is the value of a request key (requests/agent/<agent>/<id> or
// requests/operator/<id>, see Layout): someone asks the coordinator for a
// resync. The leader consumes (deletes) requests.
//
// The request's scope is a set (see ScopeSet): Scope alone (one agent, one
// plugin, or all when empty), or, when Targets is set, exactly the targets
// listed there (at most MaxRequestTargets; Scope must then be empty, so a
// coordinator that predates Targets widens the request to all instead of
// narrowing it), or, when RetryOf is set without Targets, exactly the
// failed and timed-out participants of that round, named by reference and
// resolved from rounds/<N>/agents/ (the leader's retries before they
// carried their targets: such a retry is lost once its round's records
// are pruned). The leader's retries now set both: RetryOf says which
// round they retry, Targets (at most MaxRequestTargets, in as many
// requests as needed) are exactly its failed and timed-out participants,
// so that a retry is durable until its round runs, whatever was pruned
// meanwhile and whoever leads. A coordinator older than that refuses such
// a request as malformed.
type Request struct {
	Reason      string    `json:"reason"`
	Cause       Cause     `json:"cause"`
	Scope       Scope     `json:"scope"`
	Targets     []Scope   `json:"targets,omitempty"`
	RetryOf     uint64    `json:"retry_of,omitempty"`
	RequestedBy string    `json:"requested_by"`
	RequestedAt time.Time `json:"requested_at"`
	// Wave asks for the round to run in waves (schema/wave.go); merged
	// requests take the tightest of each knob.
	Wave *Wave `json:"wave,omitempty"`
	// Control is not a round: an operator's pause, resume or abort of a
	// running wave round (only under requests/operator/; the scope is
	// then empty, and nothing else is set).
	Control *Control `json:"control,omitempty"`
}

// ScopeSet is the request's scope as a set; a RetryOf request without
// Targets has its set resolved by the coordinator, here it is empty.
func (r Request) ScopeSet() ScopeSet {
	var s ScopeSet
	switch {
	case len(r.Targets) > 0:
		for _, t := range r.Targets {
			s.Add(t)
		}
	case r.RetryOf != 0:
	default:
		s.Add(r.Scope)
	}
	return s
}

// ByReference reports whether the request is a retry whose participants
// are resolved from its round's records (RetryOf without Targets).
func (r Request) ByReference() bool { return r.RetryOf != 0 && len(r.Targets) == 0 }

// ScopeText describes the request's scope in one line.
func (r Request) ScopeText() string {
	switch {
	case r.ByReference():
		return fmt.Sprintf("failed and timed-out participants of round %d", r.RetryOf)
	case r.RetryOf != 0:
		return fmt.Sprintf("%s (failed or timed out in round %d)", r.ScopeSet().Summary(), r.RetryOf)
	}
	return r.ScopeSet().Summary().String()
}

// Validate checks the record.
func (r Request) Validate() error {
	switch r.Cause {
	case CauseManual, CauseError, CauseRejoin:
	default:
		return fmt.Errorf("cause %q is not one of manual, error, rejoin", r.Cause)
	}
	if err := r.Scope.Validate(); err != nil {
		return err
	}
	if len(r.Targets) > 0 || r.RetryOf != 0 {
		if !r.Scope.All() {
			return errors.New("scope must be empty when targets or retry_of is set")
		}
	}
	if len(r.Targets) > MaxRequestTargets {
		return fmt.Errorf("%d targets: the limit is %d per request; split them over several requests", len(r.Targets), MaxRequestTargets)
	}
	if err := r.validateWave(); err != nil {
		return err
	}
	for i, t := range r.Targets {
		if t.All() {
			return fmt.Errorf("target %d is empty: name an agent (and optionally a plugin)", i)
		}
		if err := t.Validate(); err != nil {
			return fmt.Errorf("target %d: %w", i, err)
		}
	}
	return checkText("reason", r.Reason, acceptLen(MaxReasonLen), "requested_by", r.RequestedBy)
}

// validateWave checks the request's wave knobs and control.
func (r Request) validateWave() error {
	if r.Wave != nil {
		if err := r.Wave.Validate(); err != nil {
			return err
		}
	}
	if r.Control == nil {
		return nil
	}
	if r.Wave != nil || len(r.Targets) > 0 || r.RetryOf != 0 || !r.Scope.All() || r.Cause != CauseManual {
		return errors.New("a control request has cause manual and no scope, targets, retry_of or wave")
	}
	return r.Control.Validate()
}

// RoundCounts are the sizes of a round's outcome lists.
type RoundCounts struct {
	Participants int `json:"participants"`
	Acked        int `json:"acked"`
	Failed       int `json:"failed"`
	TimedOut     int `json:"timed_out"`
	Departed     int `json:"departed"`
	// Skipped: participants of a wave round that aborted before their
	// agent started (never woken, no retry).
	Skipped int `json:"skipped,omitempty"`
	Pending int `json:"pending"`
}

// Round is the value of rounds/<N>: a small summary of fixed size, whatever
// the number of participants or the length of their error texts. It is
// written only by the leader, fenced: when the round starts (State Started)
// and when it completes (State NotActive, counts final). The participants
// and their outcomes live under rounds/<N>/agents/<agent> (RoundAgent), the
// full list of a set scope's targets under rounds/<N>/scope/<i>
// (RoundScope).
type Round struct {
	Revision uint64       `json:"revision"`
	State    Status       `json:"state"`
	Reason   string       `json:"reason"`
	Cause    Cause        `json:"cause"`
	Scope    ScopeSummary `json:"scope"`
	Counts   RoundCounts  `json:"counts"`
	// Agents is the number of participating agents, one
	// rounds/<N>/agents/<agent> key each.
	Agents int `json:"agents"`
	// Examples names the first few failed, timed-out and departed
	// participants of a completed round (at most MaxExamples each) and the
	// failed ones' errors, cut to MaxExampleErrorLen; every name is under
	// rounds/<N>/agents/.
	Examples   *RoundExamples `json:"examples,omitempty"`
	StartedAt  time.Time      `json:"started_at"`
	Deadline   time.Time      `json:"deadline"`
	FinishedAt time.Time      `json:"finished_at,omitzero"`
	DurationMS float64        `json:"duration_ms"`
	StartedBy  string         `json:"started_by"`
	FinishedBy string         `json:"finished_by,omitempty"`
	// Truncated marks a round whose detail is incomplete: etcd refused a
	// write for good (too large, too many operations, permission denied),
	// so error texts were dropped or a per-agent record was not written.
	// The counts stay exact.
	Truncated bool `json:"truncated,omitempty"`
	// ViewRevision is the etcd revision of the registrations the leader
	// chose the participants from (its watch's view, which may lag the
	// start Txn's revision): a successor that finds the per-agent records
	// incomplete reads the registrations at this revision, so it resumes
	// with exactly the participants fixed at Started. 0 in records of
	// older versions (the start Txn's revision is used then).
	ViewRevision int64 `json:"view_revision,omitempty"`
	// Wave is a wave round's plan and its state (nil: no wave round).
	Wave *WavePlan `json:"wave,omitempty"`
}

// RoundExamples are the first few non-ok participants of a round.
type RoundExamples struct {
	Failed   []PluginID        `json:"failed,omitempty"`
	TimedOut []PluginID        `json:"timed_out,omitempty"`
	Departed []PluginID        `json:"departed,omitempty"`
	Skipped  []PluginID        `json:"skipped,omitempty"`
	Errors   map[string]string `json:"errors,omitempty"`
}

// Clean reports whether a completed round had no failed and no timed-out
// participant.
func (r Round) Clean() bool { return r.Counts.Failed == 0 && r.Counts.TimedOut == 0 }

// Validate checks the record, including (for a completed round) that the
// outcome counts add up to the participants.
func (r Round) Validate() error {
	if r.Revision == 0 {
		return errors.New("revision must be > 0")
	}
	if err := r.State.validate(); err != nil {
		return err
	}
	if err := r.Scope.Validate(); err != nil {
		return err
	}
	c := r.Counts
	if r.ViewRevision < 0 {
		return fmt.Errorf("view revision %d: a revision is not negative", r.ViewRevision)
	}
	if c.Participants < 0 || c.Acked < 0 || c.Failed < 0 || c.TimedOut < 0 || c.Departed < 0 || c.Skipped < 0 || c.Pending < 0 || r.Agents < 0 {
		return errors.New("counts must be >= 0")
	}
	if c.Acked+c.Failed+c.TimedOut+c.Departed+c.Skipped+c.Pending != c.Participants {
		return fmt.Errorf("counts %d acked + %d failed + %d timed_out + %d departed + %d skipped + %d pending != %d participants",
			c.Acked, c.Failed, c.TimedOut, c.Departed, c.Skipped, c.Pending, c.Participants)
	}
	if r.Wave != nil {
		if err := r.Wave.Validate(); err != nil {
			return err
		}
	}
	if r.State == NotActive && c.Pending != 0 {
		return fmt.Errorf("a completed round has %d pending participants", c.Pending)
	}
	if e := r.Examples; e != nil {
		if len(e.Failed) > MaxExamples || len(e.TimedOut) > MaxExamples || len(e.Departed) > MaxExamples || len(e.Skipped) > MaxExamples || len(e.Errors) > MaxExamples {
			return fmt.Errorf("examples: at most %d names per outcome", MaxExamples)
		}
		for k, v := range e.Errors {
			if err := checkText("example error of "+k, v, acceptLen(MaxExampleErrorLen)); err != nil {
				return err
			}
		}
	}
	return checkText("reason", r.Reason, acceptLen(MaxReasonLen), "started_by", r.StartedBy, "finished_by", r.FinishedBy)
}

func (s Status) validate() error {
	if s != Started && s != NotActive {
		return fmt.Errorf("state %q is not Started or NotActive", s)
	}
	return nil
}

// DecodeError is returned by every decoder: the key and what is wrong.
type DecodeError struct {
	Key    string
	Reason string
}

func (e *DecodeError) Error() string {
	return fmt.Sprintf("schema: key %q: %s", e.Key, e.Reason)
}

type validator interface{ Validate() error }

// decode strictly decodes value into v and validates it.
func decode(key string, value []byte, limit int, what string, v validator) error {
	if len(value) > limit {
		return &DecodeError{Key: key, Reason: fmt.Sprintf("%s value is %d bytes: the limit is %d; rewrite or delete the key", what, len(value), limit)}
	}
	d := getDecoder(value)
	if err := d.dec.Decode(v); err != nil {
		return &DecodeError{Key: key, Reason: fmt.Sprintf("%s value is not valid JSON for its record: %v", what, err)}
	}
	if d.dec.More() {
		return &DecodeError{Key: key, Reason: what + " value has data after its JSON object"}
	}
	putDecoder(d)
	if err := v.Validate(); err != nil {
		return &DecodeError{Key: key, Reason: fmt.Sprintf("%s: %v", what, err)}
	}
	return nil
}

// pooledDecoder is a json.Decoder reading from a bytes.Reader that is
// reset to each value: the leader decodes one ack per participant per
// round, and a fresh Decoder (struct and 512-byte buffer) per value was
// about 8 MB of garbage per 1000x10 round. A Decoder goes back to the pool
// only after a clean Decode and a More that read to the reader's end: then
// its buffer holds nothing and it has no sticky error, and the next Decode
// reads the next value from the reset reader. Any other outcome drops it.
type pooledDecoder struct {
	r   bytes.Reader
	dec *json.Decoder
}

var decoders = sync.Pool{New: func() any {
	d := &pooledDecoder{}
	d.dec = json.NewDecoder(&d.r)
	d.dec.DisallowUnknownFields()
	return d
}}

func getDecoder(value []byte) *pooledDecoder {
	d := decoders.Get().(*pooledDecoder)
	d.r.Reset(value)
	return d
}

// putDecoder returns d, whose last value was read to its end, to the pool.
func putDecoder(d *pooledDecoder) {
	if d.r.Len() != 0 || d.dec.Buffered().(*bytes.Reader).Len() != 0 {
		return
	}
	d.r.Reset(nil)
	decoders.Put(d)
}

// decodeAs decodes value as a T with decode.
func decodeAs[T any, P interface {
	*T
	validator
}](key string, value []byte, limit int, what string) (T, error) {
	var v T
	err := decode(key, value, limit, what, P(&v))
	return v, err
}

// The package-level Decode functions decode a record's value alone; key
// is used in errors. A reader of etcd keys uses the Layout's Decode method
// of the record's family, which also checks the key and that key and
// value agree (kv.go).

// DecodeRegistration decodes a registration value; key is used in errors.
func DecodeRegistration(key string, value []byte) (Registration, error) {
	return decodeAs[Registration](key, value, maxRegistrationValue, "registration")
}

// DecodeOwner decodes an owner value.
func DecodeOwner(key string, value []byte) (Owner, error) {
	return decodeAs[Owner](key, value, maxOwnerValue, "owner")
}

// DecodeRevision decodes the revision record.
func DecodeRevision(key string, value []byte) (Revision, error) {
	return decodeAs[Revision](key, value, maxRevisionValue, "revision")
}

// DecodeAck decodes an ack.
func DecodeAck(key string, value []byte) (Ack, error) {
	return decodeAs[Ack](key, value, maxAckValue, "ack")
}

// DecodeRequest decodes a resync request.
func DecodeRequest(key string, value []byte) (Request, error) {
	return decodeAs[Request](key, value, maxRequestValue, "request")
}

// DecodeRound decodes a round record.
func DecodeRound(key string, value []byte) (Round, error) {
	return decodeAs[Round](key, value, maxRoundValue, "round")
}

// Encode marshals a record to one line of JSON after validating it, so that
// nothing invalid is ever written.
func Encode(v validator) ([]byte, error) {
	if err := v.Validate(); err != nil {
		return nil, fmt.Errorf("schema: refusing to encode an invalid %T: %w", v, err)
	}
	return json.Marshal(v)
}

// NewRequestID returns a request id that sorts by time of creation and is
// unique across writers: <unix-nanos>-<random hex>.
func NewRequestID(now time.Time) string {
	return fmt.Sprintf("%019d-%016x", now.UnixNano(), rand.Uint64())
}
