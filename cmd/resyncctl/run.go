package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	rcli "github.com/resyncd/resync/internal/cli"
	"github.com/resyncd/resync/internal/etcderr"
	"github.com/resyncd/resync/internal/etcdflags"
	"github.com/resyncd/resync/schema"
)

// globals are the flags accepted before and after the command (cobra's
// persistent flags of the root command).
type globals struct {
	output string
	prefix string
	etcd   etcdflags.Flags
}

// register defines the global flags on fs, bound to g.
func (g *globals) register(fs *pflag.FlagSet) {
	fs.StringVarP(&g.output, "output", "o", g.output, "output format: text or json")
	fs.StringVar(&g.prefix, "prefix", g.prefix, "etcd key prefix of resync")
	g.etcd.Register(fs)
}

// command is one subcommand. setup defines its flags on fs and returns the
// function that runs it once the flags are parsed.
type command struct {
	name    string
	args    string // synopsis of its own flags
	summary string
	setup   func(fs *pflag.FlagSet) func(ctx context.Context, e *env) error
}

func commands() []command {
	return []command{
		{"status", "", "show the current round: revision, state, leader, progress", setupStatus},
		{"trigger", "[--agent A [--plugin P]] --reason R [--wait] [--timeout D] [--who W] [--max-in-flight N|P%] [--canary N|list] [--canary-pause D|manual] [--max-failed N|P%] [--progress-deadline D]", "ask the coordinator for a resync round, optionally in waves", setupTrigger},
		{"pause", "--round N [--who W]", "pause a running wave round: no new agent starts, those in flight finish", setupControl(schema.ActionPause)},
		{"resume", "--round N [--who W]", "resume a paused wave round, or end its manual canary pause", setupControl(schema.ActionResume)},
		{"abort", "--round N [--who W]", "abort a running wave round: no new agent starts, the rest are skipped", setupControl(schema.ActionAbort)},
		{"registrations", "", "list the live plugin registrations in order", setupRegistrations},
		{"agents", "", "one line per agent: plugins, lease TTL left, last revision acked and its result, behind or not", setupAgents},
		{"history", "[-n N | --round N]", "show the last N round summaries, or round N plugin by plugin", setupHistory},
		{"watch", "", "stream revision changes, round summaries and acks until interrupted", setupWatch},
		{"rbac apply", "--agents A,B [--coordinator-user U] [--secrets-dir D] [--root-password P] [--no-passwords]", "create least-privilege etcd roles and users for resyncd and the agents, then enable etcd auth (idempotent)", setupRBACApply},
		{"rbac status", "", "show etcd's users, roles and permissions (as root)", setupRBACStatus},
	}
}

// env is what a command runs with.
type env struct {
	stdout, stderr io.Writer
	json           bool
	layout         schema.Layout
	etcd           *etcdflags.Flags
	client         *clientv3.Client // set by dial (setClient)
	// retried, if set, hears of each retry of a transient etcd error
	// (tests).
	retried func(err error)
}

// usageError is a bad invocation: reported with a hint, exit rcli.ExitUsage.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usagef(format string, a ...any) error { return &usageError{fmt.Sprintf(format, a...)} }

// exitCode is a failure already reported on the command's output: run only
// exits with code.
type exitCode int

func (e exitCode) Error() string { return fmt.Sprintf("exit status %d", int(e)) }

// dial connects to etcd (once) and proves it answers within the dial
// timeout. The client's reads retry transient etcd errors within each
// call's ctx (setClient).
func (e *env) dial(ctx context.Context) (*clientv3.Client, error) {
	if e.client != nil {
		return e.client, nil
	}
	c, err := e.etcd.Dial(ctx)
	if err != nil {
		return nil, err
	}
	e.setClient(c)
	return c, nil
}

// connect is the preamble of a command that makes a few etcd calls and
// returns: the client (dial) and ctx bounded by --command-timeout
// (etcdflags.Flags.CommandContext), whose cancel the caller defers.
func (e *env) connect(ctx context.Context) (*clientv3.Client, context.Context, context.CancelFunc, error) {
	c, err := e.dial(ctx)
	if err != nil {
		return nil, nil, nil, err
	}
	cctx, cancel := e.etcd.CommandContext(ctx)
	return c, cctx, cancel, nil
}

// warn prints one line on stderr.
func (e *env) warn(format string, a ...any) {
	fmt.Fprintf(e.stderr, "resyncctl: "+format+"\n", a...)
}

// skipped reports a malformed record (its error names its key) that was
// skipped.
func (e *env) skipped(err error) {
	e.warn("skipping a malformed record: %v", err)
}

func defaultGlobals() globals {
	return globals{output: "text", prefix: schema.DefaultPrefix, etcd: etcdflags.Default()}
}

// run is resyncctl: it parses args, runs one command and returns the exit
// status. Results go to stdout, errors and progress notes to stderr.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	g := defaultGlobals()
	var (
		ran bool // a command's own code ran: its errors are failures
		e   *env
	)
	defer func() {
		if e != nil && e.client != nil {
			e.client.Close()
		}
	}()
	exec := func(c *cobra.Command, runCmd func(context.Context, *env) error) error {
		ce, err := newEnv(c, &g, stdout, stderr)
		if err != nil {
			return err
		}
		e, ran = ce, true
		return runCmd(ctx, e)
	}
	root := newRoot(&g, stdout, stderr, exec)
	root.SetArgs(rcli.Normalize(args, flagLookup(root)))
	c, err := root.ExecuteC()
	return exitStatus(err, c, ran, stderr)
}

// newEnv checks the global flags of command c (given on the line, or from
// the environment) and makes the env its code runs in; every error is a
// usage error.
func newEnv(c *cobra.Command, g *globals, stdout, stderr io.Writer) (*env, error) {
	// Environment fallbacks for global flags not given on the line.
	if err := rcli.ApplyEnv(c.Root().PersistentFlags(), os.LookupEnv); err != nil {
		return nil, usagef("%s", oneLine(err.Error()))
	}
	e := &env{stdout: stdout, stderr: stderr, etcd: &g.etcd}
	switch g.output {
	case "text":
	case "json":
		e.json = true
	default:
		return nil, usagef("-o %q: use text or json", g.output)
	}
	layout, err := schema.NewLayout(g.prefix)
	if err != nil {
		return nil, usagef("--prefix: %v", err)
	}
	e.layout = layout
	if err := g.etcd.Validate(); err != nil {
		return nil, usagef("%v", err)
	}
	return e, nil
}

// exitStatus prints the error err of command c, if any, and returns the
// exit status: a usage error (ours, pflag's, cobra's, or any error before
// the command's code ran), a command's own exit code, or a failure.
func exitStatus(err error, c *cobra.Command, ran bool, stderr io.Writer) int {
	var ue *usageError
	var code exitCode
	switch {
	case err == nil:
		return rcli.ExitOK
	case errors.As(err, &code):
		return int(code)
	case errors.As(err, &ue) || !ran:
		// Usage errors: ours, pflag's (unknown flag, bad value) and
		// cobra's (unknown command).
		msg := err.Error()
		if ue != nil {
			msg = ue.msg
		}
		path := c.CommandPath()
		fmt.Fprintf(stderr, "%s: %s\nRun '%s --help' for usage.\n", path, msg, path)
		return rcli.ExitUsage
	}
	msg := oneLine(etcderr.Explain(err).Error())
	var hinted *hintedError
	if errors.Is(err, rpctypes.ErrPermissionDenied) && !errors.As(err, &hinted) {
		msg += " (with etcd auth on, resyncctl's commands read the whole prefix: use an operator's user (rbac apply --operators), the coordinator's user or root)"
	}
	fmt.Fprintf(stderr, "resyncctl: %s\n", msg)
	return rcli.ExitFailure
}

// hintedError is an error whose message already says which credentials
// the command needs, so run adds no generic permission hint to it.
type hintedError struct{ err error }

func (h *hintedError) Error() string { return h.err.Error() }
func (h *hintedError) Unwrap() error { return h.err }

// permissionHint marks err as carrying its own permission hint.
func permissionHint(err error) error { return &hintedError{err: err} }

// oneLine keeps an error message on one line.
func oneLine(s string) string {
	return strings.Join(strings.Fields(strings.ReplaceAll(s, "\n", " ")), " ")
}
