package coordinator

import (
	"slices"
	"testing"

	"github.com/resyncd/resync/schema"
)

// TestRetryKeysOfAnEarlierUncleanRound: when two rounds in a row fail for
// one agent, the first one's retry (still pending when the second
// finished) is paced by that agent's streak, not the cluster-wide one (the
// chaos run of seed 1795856998238857881 started two retry rounds of one
// agent 250 ms apart under a 400 ms backoff). The remembered sets are
// bounded.
func TestRetryKeysOfAnEarlierUncleanRound(t *testing.T) {
	l := &leader{}
	var first, second schema.ScopeSet
	first.AddPlugin(schema.PluginID{Agent: "agent-07", Plugin: "ifplugin"})
	second.AddPlugin(schema.PluginID{Agent: "agent-07", Plugin: "l3plugin"})
	l.rememberRetry(432, first)
	l.rememberRetry(433, second)
	for _, n := range []uint64{432, 433} {
		if got := l.requestKeys(schema.Request{Cause: schema.CauseError, RetryOf: n}); !slices.Equal(got, []string{"agent-07"}) {
			t.Errorf("the retry of round %d is paced by %q, want agent-07's streak", n, got)
		}
	}
	for n := uint64(1000); n < 1000+2*maxRetrySets; n++ {
		l.rememberRetry(n, first)
	}
	if len(l.retries) != maxRetrySets {
		t.Errorf("%d retry sets remembered, want at most %d", len(l.retries), maxRetrySets)
	}
	if _, ok := l.retries[1000+2*maxRetrySets-1]; !ok {
		t.Error("the newest retry set was forgotten")
	}
	if _, ok := l.retries[432]; ok {
		t.Error("the oldest retry set was kept beyond the bound")
	}
}
