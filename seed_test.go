package resync_test

import (
	"fmt"
	"testing"

	"github.com/resyncd/resync"
)

// The seed's interfaces, declared here in the seed's exact shape
// (ligato cn-infra datasync/resync), so that this file stops compiling if
// ours drift from them.
type (
	seedStatus string

	seedStatusEvent interface {
		ResyncStatus() resync.Status
		Ack()
	}

	seedRegistration interface {
		StatusChan() chan resync.StatusEvent
		fmt.Stringer
	}

	seedSubscriber interface {
		Register(resyncName string) resync.Registration
	}

	// cn-infra v1.3's resync.Subscriber gained DoResync.
	seedResyncer interface {
		DoResync()
	}

	// cn-infra's infra.Plugin: what an agent's plugin list holds.
	cnInfraPlugin interface {
		Init() error
		AfterInit() error
		Close() error
		fmt.Stringer
	}
)

// Assignments of ours to the seed's shapes: compiling is the test.
var (
	_ seedRegistration                                          = resync.Registration(nil)
	_ seedRegistration                                          = resync.NewRegistration("x", make(chan resync.StatusEvent))
	_ resync.Registration                                       = seedRegistration(nil)
	_ seedSubscriber                                            = (*resync.Plugin)(nil)
	_ resync.Subscriber                                         = (*resync.Plugin)(nil)
	_ resync.Reporter                                           = (*resync.Plugin)(nil)
	_ cnInfraPlugin                                             = (*resync.Plugin)(nil)
	_ seedResyncer                                              = (*resync.Plugin)(nil)
	_ seedStatusEvent                                           = resync.StatusEvent(nil)
	_ resync.StatusEvent                                        = seedStatusEvent(nil)
	_ seedStatusEvent                                           = (*resync.Event)(nil)
	_                                                           = seedStatus(resync.Started)
	_ func(string, chan resync.StatusEvent) resync.Registration = resync.NewRegistration
)

// handleResync is typed as real consumer code is (contiv/vpp's
// `go plugin.handleResync(reg.StatusChan())`).
func handleResync(resyncChan chan resync.StatusEvent) (n int) {
	for ev := range resyncChan {
		if ev.ResyncStatus() == resync.Started {
			n++
		}
		ev.Ack()
	}
	return n
}

type fakeEvent struct{ acked bool }

func (e *fakeEvent) ResyncStatus() resync.Status { return resync.Started }
func (e *fakeEvent) Ack()                        { e.acked = true }

// A consumer typed func(chan resync.StatusEvent) accepts reg.StatusChan(),
// and a plugin's own test feeds it through NewRegistration, as with the seed.
func TestSeedShapedConsumerAcceptsStatusChan(t *testing.T) {
	ch := make(chan resync.StatusEvent, 1)
	reg := resync.NewRegistration("ifplugin", ch)
	if reg.String() != "ifplugin" || reg.StatusChan() != ch {
		t.Fatalf("NewRegistration gave %q with another channel", reg)
	}
	ev := &fakeEvent{}
	ch <- ev
	close(ch)
	if n := handleResync(reg.StatusChan()); n != 1 || !ev.acked {
		t.Fatalf("consumer saw %d Started, acked=%v", n, ev.acked)
	}
	if resync.Started != "Started" || resync.NotActive != "NotActive" {
		t.Fatalf("status values %q %q", resync.Started, resync.NotActive)
	}
}
