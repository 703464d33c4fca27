package coordinator

import (
	"context"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/resyncd/resync/schema"
)

// A rejoin request is written by an agent after it re-registered every
// plugin on its new session, but the leader follows registrations and
// requests on two watches: the request may arrive first. So when the leader
// sees a rejoin request it reads the agent's registrations (a linearizable
// Get: every registration written before the request), and the round the
// request asks for waits until the watch has delivered all of them, at
// most OpTimeout: the rejoin round includes every re-registered plugin.

// rejoinWait is what a pending rejoin request waits for.
type rejoinWait struct {
	expect []schema.PluginID
	until  time.Time
}

// rejoinSeen records the registrations a new rejoin request expects.
func (l *leader) rejoinSeen(key string, req schema.Request, now time.Time) {
	if req.Scope.Agent == "" {
		return
	}
	ctx, cancel := context.WithTimeout(l.ctx, l.cfg.OpTimeout)
	defer cancel()
	resp, err := l.c.Get(ctx, l.layout.AgentRegistrations(req.Scope.Agent), clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		l.log.WithError(err).WithField("agent", req.Scope.Agent).Warn("coordinator: cannot read a rejoining agent's registrations; its round takes those seen")
		return
	}
	var w rejoinWait
	for _, kv := range resp.Kvs {
		k, err := l.layout.Parse(string(kv.Key))
		if err == nil && k.Kind == schema.KindRegistration {
			w.expect = append(w.expect, schema.PluginID{Agent: k.Agent, Plugin: k.Plugin})
		}
	}
	w.until = now.Add(l.cfg.OpTimeout)
	l.rejoins[key] = w
}

// rejoinDue is when the pending rejoin requests stop waiting: zero when
// every expected registration is known (or none waits).
func (l *leader) rejoinDue() time.Time {
	var due time.Time
	for key, w := range l.rejoins {
		if _, pending := l.requests[key]; !pending {
			delete(l.rejoins, key)
			continue
		}
		for _, id := range w.expect {
			if _, ok := l.regs[id]; !ok {
				due = maxTime(due, w.until)
				break
			}
		}
	}
	return due
}
