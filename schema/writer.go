package schema

import (
	"errors"
	"fmt"
)

// ErrRefused is wrapped by the error Request.AllowedFor returns: the request
// asks for more than its writer may.
var ErrRefused = errors.New("request refused")

// WriterKind is the kind of writer a request key belongs to.
type WriterKind int

// The kinds of writers, by the request key's sub-prefix. The zero
// WriterKind is no writer: AllowedFor refuses everything for it.
const (
	// WriterLegacy wrote requests/<id>, the layout before per-writer keys.
	// Such a request may have any scope: once `resyncctl rbac apply` has
	// run, only root and the coordinator may write there (an agent's role
	// covers only requests/agent/<agent>/), and without authentication
	// anyone may write anywhere, requests/operator/ included, so refusing
	// it would protect nothing.
	WriterLegacy WriterKind = iota + 1
	// WriterAgent wrote requests/agent/<agent>/<id>: the agent itself
	// (ReportError, rejoin).
	WriterAgent
	// WriterOperator wrote requests/operator/<id>: an operator
	// (resyncctl trigger) or the coordinator (its retry requests).
	WriterOperator
)

// Writer is who may have written a request, as its key says.
type Writer struct {
	Kind WriterKind
	// Agent is the agent of a WriterAgent.
	Agent string
}

func (w Writer) String() string {
	switch w.Kind {
	case WriterAgent:
		return "agent " + w.Agent
	case WriterOperator:
		return "operator"
	case WriterLegacy:
		return "legacy"
	}
	return "unknown"
}

// AllowedFor checks the rule of who may ask for what: an agent may request
// rounds only for itself (its agent, or one of its own plugins); only an
// operator (or a legacy key, see WriterLegacy) may request a round of other
// agents or of all. The error wraps ErrRefused and says what was asked and
// who may ask it. The coordinator ignores a request that fails it, and
// writers check it before writing.
func (r Request) AllowedFor(w Writer) error {
	switch w.Kind {
	case WriterOperator, WriterLegacy:
		return nil
	case WriterAgent:
		targets := r.Targets
		if len(targets) == 0 {
			targets = []Scope{r.Scope}
		}
		for _, t := range targets {
			if r.RetryOf != 0 || t.All() || t.Agent != w.Agent {
				return fmt.Errorf("%w: agent %q may request a resync only of its own plugins, not of %s; "+
					"only an operator (resyncctl trigger, under requests/operator/) may request that", ErrRefused, w.Agent, r.ScopeText())
			}
		}
		return nil
	}
	return fmt.Errorf("%w: no writer known for a request of %s; only an operator (resyncctl trigger, under requests/operator/) may request that", ErrRefused, r.ScopeText())
}
