// Command resync-agent is a demo agent: it registers N simulated plugins with
// resync through the public API (exactly as a user's agent would), logs every
// event it gets, "reloads" for a configurable time and acks, failing at a
// configurable rate.
//
// Every flag can also be set by RESYNC_<FLAG> (RESYNC_NAME, RESYNC_PLUGINS,
// RESYNC_ENDPOINTS, ...); the command line wins. Exit status: 0 after a
// signal, 1 etcd unreachable, 2 usage error, 3 displaced by another process
// with the same --name (internal/cli's Exit*).
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/spf13/pflag"

	resync "github.com/resyncd/resync"
	"github.com/resyncd/resync/internal/cli"
	"github.com/resyncd/resync/internal/etcdflags"
	"github.com/resyncd/resync/schema"
)

func main() { cli.Main(run) }

type options struct {
	etcd        *etcdflags.Flags
	cfg         resync.Config
	plugins     []string
	reload      time.Duration
	jitter      time.Duration
	failureRate float64
	log         cli.LogFlags
}

func parse(args []string, stderr io.Writer) (*options, error) {
	fs := pflag.NewFlagSet("resync-agent", pflag.ContinueOnError)
	fs.SetOutput(stderr)
	host, _ := os.Hostname()
	ef := etcdflags.Default()
	o := &options{etcd: &ef, cfg: resync.DefaultConfig(host)}
	o.etcd.Register(fs)
	plugins := o.register(fs)
	o.log.Register(fs)
	cli.SetUsage(fs, "resync-agent --name A --plugins p1,p2 [flags]")
	if err := cli.Parse(fs, "resync-agent", args); err != nil {
		return nil, err
	}
	var err error
	if o.plugins, err = parsePlugins(*plugins); err != nil {
		return nil, err
	}
	if o.failureRate < 0 || o.failureRate > 1 {
		return nil, fmt.Errorf("--failure-rate %v: use a probability between 0 and 1", o.failureRate)
	}
	if err := o.cfg.Validate(); err != nil {
		return nil, err
	}
	return o, nil
}

// register registers the agent's and the simulated reload's flags; it
// returns --plugins as given.
func (o *options) register(fs *pflag.FlagSet) *string {
	fs.StringVar(&o.cfg.Agent, "name", o.cfg.Agent, "agent name, unique in the cluster (UTF-8, 1-128 bytes, no control characters)")
	plugins := fs.String("plugins", "ifplugin,l3plugin,aclplugin", "comma-separated plugin names, in registration order")
	fs.StringVar(&o.cfg.Prefix, "prefix", o.cfg.Prefix, "etcd key prefix")
	fs.DurationVar(&o.cfg.TTL, "ttl", o.cfg.TTL, "session lease TTL: registrations vanish this long after a crash")
	fs.DurationVar(&o.cfg.AcceptTimeout, "accept-timeout", o.cfg.AcceptTimeout, "time a plugin has to take an event")
	fs.DurationVar(&o.cfg.AckTimeout, "ack-timeout", o.cfg.AckTimeout, "time a plugin has to ack a Started event")
	fs.DurationVar(&o.reload, "reload-time", 50*time.Millisecond, "simulated reload time per plugin")
	fs.DurationVar(&o.jitter, "reload-jitter", 50*time.Millisecond, "random extra reload time, up to this")
	fs.Float64Var(&o.failureRate, "failure-rate", 0, "probability (0-1) that a reload fails (acked with an error)")
	return plugins
}

// parsePlugins parses --plugins: valid names, at least one.
func parsePlugins(list string) ([]string, error) {
	var out []string
	for _, p := range strings.Split(list, ",") {
		if p = strings.TrimSpace(p); p != "" {
			if err := schema.ValidateName("plugin", p); err != nil {
				return nil, fmt.Errorf("--plugins: %w", err)
			}
			out = append(out, p)
		}
	}
	if len(out) == 0 {
		return nil, errors.New("--plugins: give at least one plugin name")
	}
	return out, nil
}

// run is resync-agent; it returns the exit status (cli.Exit*).
func run(ctx context.Context, args []string, _, stderr io.Writer) int {
	o, err := parse(args, stderr)
	if errors.Is(err, pflag.ErrHelp) {
		return cli.ExitOK
	}
	if err != nil {
		fmt.Fprintln(stderr, "resync-agent:", err)
		return cli.ExitUsage
	}
	log, err := o.log.Logger(stderr)
	if err != nil {
		fmt.Fprintln(stderr, "resync-agent:", err)
		return cli.ExitUsage
	}
	c, err := o.etcd.Dial(ctx)
	if err != nil {
		fmt.Fprintln(stderr, "resync-agent:", err)
		return cli.ExitFailure
	}
	defer c.Close()

	// The user's agent: construct the resync plugin, register plugins in
	// Init order, and run each plugin's seed-style loop.
	p, err := resync.New(resync.Deps{Log: log, Client: c}, o.cfg)
	if err != nil {
		fmt.Fprintln(stderr, "resync-agent:", err)
		return cli.ExitUsage
	}
	if err := o.serve(ctx, p, log); err != nil {
		fmt.Fprintf(stderr, "resync-agent: %v\n", err)
		return cli.ExitDisplaced
	}
	return cli.ExitOK
}

// serve registers the plugins and runs their loops until a signal (ctx) or
// until p is displaced (another process took the agent name over); then it
// closes p, waits for the loops and returns p's error.
func (o *options) serve(ctx context.Context, p *resync.Plugin, log logrus.FieldLogger) error {
	var wg sync.WaitGroup
	for _, name := range o.plugins {
		reg := p.Register(name)
		wg.Add(1)
		go func() {
			defer wg.Done()
			o.loop(reg, p.Done(), log.WithField("agent", o.cfg.Agent).WithField("plugin", name))
		}()
	}
	log.WithField("agent", o.cfg.Agent).WithField("plugins", strings.Join(o.plugins, ",")).Info("resync-agent: running")
	select {
	case <-ctx.Done():
		log.Info("resync-agent: signal received; closing")
	case <-p.Done(): // displaced: another process took the agent name over
	}
	p.Close() // closes Done: the loops end (status channels are never closed)
	wg.Wait()
	return p.Err()
}

// loop is a seed-style plugin: reload on Started, then Ack, until done
// (the resync plugin's Done: status channels are never closed).
func (o *options) loop(reg resync.Registration, done <-chan struct{}, log logrus.FieldLogger) {
	for {
		var ev resync.StatusEvent
		select {
		case ev = <-reg.StatusChan():
		case <-done:
			return
		}
		o.handle(ev, log)
	}
}

// handle logs one event and acks it: a Started event after the simulated
// reload, with an error at --failure-rate.
func (o *options) handle(ev resync.StatusEvent, log logrus.FieldLogger) {
	e, _ := ev.(*resync.Event)
	fields := logrus.Fields{"status": ev.ResyncStatus()}
	if e != nil {
		fields["revision"], fields["reason"], fields["join"] = e.Revision(), e.Reason(), e.Join()
	}
	log.WithFields(fields).Info("resync-agent: event")
	if ev.ResyncStatus() != resync.Started {
		ev.Ack()
		return
	}
	time.Sleep(o.reload + time.Duration(rand.Int64N(int64(o.jitter)+1))) // the simulated reload
	if rand.Float64() < o.failureRate {
		err := errors.New("simulated reload failure")
		log.WithError(err).Warn("resync-agent: reload failed")
		if e != nil {
			e.AckError(err)
			return
		}
	}
	ev.Ack()
	log.WithFields(fields).Info("resync-agent: reloaded and acked")
}
