package main

import (
	"reflect"
	"testing"

	"github.com/resyncd/resync/schema"
)

// TestComputeProgressResolvesAsTheCoordinator: a running round's progress
// puts each participant where schema.Resolve does (never timed out by the
// deadline: that is the coordinator's call), keeping the participants'
// order and the failed ones' errors.
func TestComputeProgressResolvesAsTheCoordinator(t *testing.T) {
	id := func(p string) schema.PluginID { return schema.PluginID{Agent: "a", Plugin: p} }
	parts := []schema.PluginID{id("ok"), id("err"), id("to"), id("gone"), id("wait"), id("old"), id("oldgone")}
	acks := map[schema.PluginID]schema.Ack{
		id("ok"):      {Revision: 5, Result: schema.ResultOK},
		id("err"):     {Revision: 5, Result: schema.ResultError, Error: "boom"},
		id("to"):      {Revision: 5, Result: schema.ResultTimeout},
		id("old"):     {Revision: 4, Result: schema.ResultOK},
		id("oldgone"): {Revision: 4, Result: schema.ResultError},
	}
	live := map[schema.PluginID]bool{id("ok"): true, id("err"): true, id("to"): true, id("wait"): true, id("old"): true}
	got := computeProgress(&schema.Round{Revision: 5}, parts, acks, live)
	want := progress{
		Counts:   schema.RoundCounts{Participants: 7, Acked: 1, Failed: 1, TimedOut: 1, Departed: 2, Pending: 2},
		Pending:  []schema.PluginID{id("wait"), id("old")},
		Failed:   []schema.PluginID{id("err")},
		TimedOut: []schema.PluginID{id("to")},
		Departed: []schema.PluginID{id("gone"), id("oldgone")},
		Errors:   map[string]string{"a/err": "boom"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %+v\nwant %+v", got, want)
	}
}
