package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/resyncd/resync/internal/etcdflags"
	"github.com/resyncd/resync/internal/etcdspace"
	"github.com/resyncd/resync/schema"
)

// envPrefix is the prefix of the environment variables of global flags.
const envPrefix = "RESYNC_"

// Exit statuses.
const (
	exitOK      = 0
	exitFailure = 1
	exitUsage   = 2
)

// globals are the flags accepted before and after the command.
type globals struct {
	output string
	prefix string
	etcd   etcdflags.Flags
}

// register defines the global flags on fs, bound to g; g's current values
// are the defaults, so registering on a command's FlagSet after the global
// parse keeps what was parsed.
func (g *globals) register(fs *flag.FlagSet) {
	fs.StringVar(&g.output, "o", g.output, "output format: text or json (same as --output)")
	fs.StringVar(&g.output, "output", g.output, "output format: text or json")
	fs.StringVar(&g.prefix, "prefix", g.prefix, "etcd key prefix of resync")
	g.etcd.Register(fs)
}

// command is one subcommand. setup defines its flags on fs and returns the
// function that runs it once the flags are parsed.
type command struct {
	name    string
	args    string // synopsis of its own flags
	summary string
	setup   func(fs *flag.FlagSet) func(ctx context.Context, e *env) error
}

func commands() []command {
	return []command{
		{"status", "", "show the current round: revision, state, leader, progress", setupStatus},
		{"trigger", "[--agent A [--plugin P]] --reason R [--wait] [--timeout D] [--who W]", "ask the coordinator for a resync round", setupTrigger},
		{"registrations", "", "list the live plugin registrations in order", setupRegistrations},
		{"agents", "", "one line per agent: plugins, lease TTL left, last revision acked and its result, behind or not", setupAgents},
		{"history", "[-n N]", "show the last N round summaries", setupHistory},
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
	client         *clientv3.Client // set by dial
}

// usageError is a bad invocation: reported with a hint, exit 2.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usagef(format string, a ...any) error { return &usageError{fmt.Sprintf(format, a...)} }

// exitCode is a failure already reported on the command's output: run only
// exits with code.
type exitCode int

func (e exitCode) Error() string { return fmt.Sprintf("exit status %d", int(e)) }

// dial connects to etcd (once) and proves it answers within the dial timeout.
func (e *env) dial(ctx context.Context) (*clientv3.Client, error) {
	if e.client != nil {
		return e.client, nil
	}
	c, err := e.etcd.Dial(ctx)
	if err != nil {
		return nil, err
	}
	e.client = c
	return c, nil
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

func printUsage(w io.Writer) {
	fmt.Fprint(w, `Usage: resyncctl [global flags] <command> [flags]

Commands:
`)
	for _, c := range commands() {
		fmt.Fprintf(w, "  %-16s %s\n", c.name, c.summary)
	}
	fmt.Fprint(w, `  help [command]   show this help, or a command's flags

Global flags (before or after the command; each also read from RESYNC_<NAME>,
e.g. RESYNC_ENDPOINTS, RESYNC_OUTPUT, when not given):
`)
	fs := flag.NewFlagSet("resyncctl", flag.ContinueOnError)
	g := defaultGlobals()
	g.register(fs)
	fs.SetOutput(w)
	fs.PrintDefaults()
}

func defaultGlobals() globals {
	return globals{output: "text", prefix: schema.DefaultPrefix, etcd: etcdflags.Default()}
}

// run is resyncctl: it parses args, runs one command and returns the exit
// status. Results go to stdout, errors and progress notes to stderr.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	g := defaultGlobals()
	gfs := flag.NewFlagSet("resyncctl", flag.ContinueOnError)
	gfs.SetOutput(io.Discard)
	g.register(gfs)
	if err := gfs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			printUsage(stdout)
			return exitOK
		}
		fmt.Fprintf(stderr, "resyncctl: %v\n\n", err)
		printUsage(stderr)
		return exitUsage
	}
	rest := gfs.Args()
	if len(rest) == 0 {
		fmt.Fprint(stderr, "resyncctl: no command given\n\n")
		printUsage(stderr)
		return exitUsage
	}
	name := rest[0]
	if name == "rbac" {
		// Two-word commands: rbac apply, rbac status.
		if len(rest) < 2 || strings.HasPrefix(rest[1], "-") {
			fmt.Fprint(stderr, "resyncctl: rbac needs a command: apply or status\n\n")
			printUsage(stderr)
			return exitUsage
		}
		name, rest = "rbac "+rest[1], append([]string{"rbac " + rest[1]}, rest[2:]...)
	}
	if name == "help" {
		if len(rest) > 1 {
			return run(ctx, append(rest[1:], "-h"), stdout, stderr)
		}
		printUsage(stdout)
		return exitOK
	}
	var cmd *command
	for _, c := range commands() {
		if c.name == name {
			cmd = &c
			break
		}
	}
	if cmd == nil {
		fmt.Fprintf(stderr, "resyncctl: unknown command %q\n\n", name)
		printUsage(stderr)
		return exitUsage
	}

	fs := flag.NewFlagSet("resyncctl "+cmd.name, flag.ContinueOnError)
	g.register(fs)
	runCmd := cmd.setup(fs)
	fs.Usage = func() {
		w := fs.Output()
		fmt.Fprintf(w, "Usage: resyncctl %s %s\n\n%s.\n\nFlags (global flags included):\n", cmd.name, cmd.args, cmd.summary)
		fs.PrintDefaults()
	}
	fs.SetOutput(stderr)
	for _, a := range rest[1:] {
		if a == "-h" || a == "-help" || a == "--help" {
			fs.SetOutput(stdout) // asked-for help is output, not an error
		}
	}
	if err := fs.Parse(rest[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return exitOK
		}
		return exitUsage // flag printed the error and the usage
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "resyncctl %s: unexpected argument %q\n", cmd.name, fs.Arg(0))
		fs.Usage()
		return exitUsage
	}

	// Environment fallbacks for global flags not given anywhere.
	set := etcdflags.Visited(gfs, fs)
	if set["o"] {
		set["output"] = true
	}
	efs := flag.NewFlagSet("env", flag.ContinueOnError)
	efs.SetOutput(io.Discard)
	g.register(efs)
	if err := etcdflags.ApplyEnv(efs, envPrefix, os.LookupEnv, set); err != nil {
		fmt.Fprintf(stderr, "resyncctl: %s\n", oneLine(err.Error()))
		return exitUsage
	}

	e := &env{stdout: stdout, stderr: stderr, etcd: &g.etcd}
	badUsage := func(format string, a ...any) int {
		fmt.Fprintf(stderr, "resyncctl %s: %s\nRun 'resyncctl %s -h' for usage.\n", cmd.name, fmt.Sprintf(format, a...), cmd.name)
		return exitUsage
	}
	switch g.output {
	case "text":
	case "json":
		e.json = true
	default:
		return badUsage("-o %q: use text or json", g.output)
	}
	layout, err := schema.NewLayout(g.prefix)
	if err != nil {
		return badUsage("--prefix: %v", err)
	}
	e.layout = layout
	if err := g.etcd.Validate(); err != nil {
		return badUsage("%v", err)
	}
	defer func() {
		if e.client != nil {
			e.client.Close()
		}
	}()

	err = runCmd(ctx, e)
	var ue *usageError
	var code exitCode
	switch {
	case err == nil:
		return exitOK
	case errors.As(err, &ue):
		return badUsage("%s", ue.msg)
	case errors.As(err, &code):
		return int(code)
	default:
		msg := oneLine(etcdspace.Explain(err).Error())
		if errors.Is(err, rpctypes.ErrPermissionDenied) && !strings.Contains(msg, "needs root") && !strings.Contains(msg, "needs an operator") {
			msg += " (with etcd auth on, resyncctl's commands read the whole prefix: use an operator's user (rbac apply --operators), the coordinator's user or root)"
		}
		fmt.Fprintf(stderr, "resyncctl: %s\n", msg)
		return exitFailure
	}
}

// oneLine keeps an error message on one line.
func oneLine(s string) string {
	return strings.Join(strings.Fields(strings.ReplaceAll(s, "\n", " ")), " ")
}
