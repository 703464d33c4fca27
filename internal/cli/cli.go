// Package cli holds what resync's binaries (resyncd, resyncctl,
// resync-agent) share: the main wrapper (a context cancelled by SIGINT or
// SIGTERM, then os.Exit with run's status), the exit statuses, the RESYNC_
// environment prefix and its fallbacks for flags, the log flags and the
// logger they build, and the reading of single-dash long flags.
//
// Flags are spf13/pflag flags (as etcdctl and kubectl have them): a long
// flag is --name or --name=value, a one-letter shorthand is -n. Go's flag
// package, which these binaries used before, also accepted -name; Normalize
// keeps that spelling working so that operators' scripts do not break: an
// argument -name or -name=value whose name is a known long flag becomes
// --name (-name=value becomes --name=value).
package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"

	"github.com/sirupsen/logrus"
	"github.com/spf13/pflag"
	"sigs.k8s.io/yaml"
)

// Exit statuses, the same for every binary.
const (
	// ExitOK: success, or a signal asked for the stop.
	ExitOK = 0
	// ExitFailure: a run-time failure (etcd unreachable, a round not clean,
	// a timeout, ...).
	ExitFailure = 1
	// ExitUsage: bad flags or arguments; nothing was done.
	ExitUsage = 2
	// ExitDisplaced: resync-agent only: another process took its agent name
	// over.
	ExitDisplaced = 3
)

// EnvPrefix is the prefix of the environment variables that back flags:
// --dial-timeout reads RESYNC_DIAL_TIMEOUT (see EnvName).
const EnvPrefix = "RESYNC_"

// Run is a binary's body: it returns the exit status. Results go to stdout,
// errors and logs to stderr.
type Run func(ctx context.Context, args []string, stdout, stderr io.Writer) int

// Main runs run with the process's arguments and a context cancelled by
// SIGINT or SIGTERM, then exits with its status.
func Main(run Run) {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// EnvName is the environment variable of flag name:
// EnvName("dial-timeout") is "RESYNC_DIAL_TIMEOUT".
func EnvName(name string) string {
	return EnvPrefix + strings.ToUpper(strings.ReplaceAll(name, "-", "_"))
}

// ApplyEnv sets every flag of fs that was not given on the command line
// (not Changed) from its variable EnvName(name), when lookup finds it (pass
// os.LookupEnv). An empty variable counts as set. The command line wins over
// the environment, which wins over the default. A value the flag rejects is
// an error naming the variable. Flags set from the environment count as
// Changed afterwards.
func ApplyEnv(fs *pflag.FlagSet, lookup func(string) (string, bool)) error {
	var errs []error
	fs.VisitAll(func(fl *pflag.Flag) {
		if fl.Changed || fl.Name == "help" {
			return
		}
		name := EnvName(fl.Name)
		v, ok := lookup(name)
		if !ok {
			return
		}
		if err := fs.Set(fl.Name, v); err != nil {
			errs = append(errs, fmt.Errorf("environment variable %s=%q: %v", name, v, err))
		}
	})
	return errors.Join(errs...)
}

// Normalize rewrites the single-dash long flags of args (Go's flag package
// spelling) to pflag's: an argument -name or -name=value whose name is a
// long flag that lookup knows (a name of two letters or more) becomes
// --name or --name=value. It leaves alone shorthands (-o), unknown names
// (pflag then reports them), the values of flags that take one (the argument
// after --reason or -o), and everything after "--".
func Normalize(args []string, lookup func(name string) *pflag.Flag) []string {
	out := make([]string, 0, len(args))
	value := false // args[i] is the value of the flag before it
	for i, a := range args {
		if value {
			value = false
			out = append(out, a)
			continue
		}
		if a == "--" {
			return append(out, args[i:]...)
		}
		if !strings.HasPrefix(a, "-") || len(a) < 2 {
			out = append(out, a)
			continue
		}
		var fl *pflag.Flag
		name, _, hasValue := strings.Cut(strings.TrimLeft(a, "-"), "=")
		switch {
		case strings.HasPrefix(a, "--"):
			fl = lookup(name)
		case len(name) > 1:
			// -name: a long flag, or unknown to both (then --name gets
			// pflag's clear "unknown flag: --name"); -ojson stays shorthand.
			if fl = lookup(name); fl != nil || shorthand(name[:1], lookup) == nil {
				a = "-" + a
			}
		default: // a shorthand: -o
			fl = shorthand(name, lookup)
		}
		if fl != nil && !hasValue && fl.NoOptDefVal == "" {
			value = true
		}
		out = append(out, a)
	}
	return out
}

// shorthand finds the flag whose one-letter shorthand is s, through the
// long-name lookup (pflag's ShorthandLookup is per FlagSet).
func shorthand(s string, lookup func(string) *pflag.Flag) *pflag.Flag {
	if fl := lookup("\x00" + s); fl != nil {
		return fl
	}
	return nil
}

// Lookup returns a lookup for Normalize over sets: a long name, or a
// shorthand passed as "\x00"+letter.
func Lookup(sets ...*pflag.FlagSet) func(string) *pflag.Flag {
	return func(name string) *pflag.Flag {
		for _, fs := range sets {
			var fl *pflag.Flag
			if s, ok := strings.CutPrefix(name, "\x00"); ok {
				fl = fs.ShorthandLookup(s)
			} else if len(name) > 1 {
				fl = fs.Lookup(name)
			}
			if fl != nil {
				return fl
			}
		}
		return nil
	}
}

// LogFlags are --log-level and --log-format.
type LogFlags struct {
	Level, Format string
}

// Register defines --log-level (default info) and --log-format (default
// text) on fs.
func (l *LogFlags) Register(fs *pflag.FlagSet) {
	fs.StringVar(&l.Level, "log-level", "info", "debug, info, warn or error")
	fs.StringVar(&l.Format, "log-format", "text", "text or json")
}

// Logger builds the logrus logger the flags ask for, writing to out; a bad
// level or format is an error naming the flag and the values it takes.
func (l *LogFlags) Logger(out io.Writer) (*logrus.Logger, error) {
	log := logrus.New()
	log.SetOutput(out)
	lv, err := logrus.ParseLevel(l.Level)
	if err != nil {
		return nil, fmt.Errorf("--log-level %q: use debug, info, warn or error", l.Level)
	}
	log.SetLevel(lv)
	switch l.Format {
	case "text":
		log.SetFormatter(&logrus.TextFormatter{FullTimestamp: true})
	case "json":
		log.SetFormatter(&logrus.JSONFormatter{})
	default:
		return nil, fmt.Errorf("--log-format %q: use text or json", l.Format)
	}
	return log, nil
}

// FlagError adds a hint to pflag's error about an unknown shorthand, which
// is most often a long flag with one dash too few (-ojson is -o json, but
// -nope is -n ope).
func FlagError(err error) error {
	if strings.Contains(err.Error(), "unknown shorthand flag") {
		return fmt.Errorf("%w (long flags take two dashes: --name)", err)
	}
	return err
}

// SetUsage makes fs's --help print "Usage: <synopsis>", the flags, and the
// environment fallback, on fs's output.
func SetUsage(fs *pflag.FlagSet, synopsis string) {
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: %s\n\nFlags (each also read from %s<FLAG>, e.g. %s, when not given):\n%s",
			synopsis, EnvPrefix, EnvName("endpoints"), fs.FlagUsages())
	}
}

// Parse parses args on fs after Normalize, then applies the environment
// (ApplyEnv with os.LookupEnv). Its errors name the flag and end with a hint
// to run name --help; pflag.ErrHelp is returned as is (fs printed the
// usage).
func Parse(fs *pflag.FlagSet, name string, args []string) error {
	if err := fs.Parse(Normalize(args, Lookup(fs))); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return err
		}
		return fmt.Errorf("%v (run '%s --help' for the flags)", FlagError(err), name)
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q (%s takes only flags; run '%s --help')", fs.Arg(0), name, name)
	}
	return ApplyEnv(fs, os.LookupEnv)
}

// ApplyFile sets every flag of fs that is not yet Changed (by the command
// line or ApplyEnv) from the configuration file at path: a YAML or JSON
// object whose keys are flag names ("endpoints", "dial-timeout", ...) and
// whose values are scalars (a list is joined with commas). So the order is
// command line, then environment, then file, then default. An unknown key
// or a value the flag rejects is an error naming the file and the key.
func ApplyFile(fs *pflag.FlagSet, path string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("config file: %w", err)
	}
	j, err := yaml.YAMLToJSON(b)
	if err != nil {
		return fmt.Errorf("config file %s: not YAML or JSON: %w", path, err)
	}
	var m map[string]any
	if err := json.Unmarshal(j, &m); err != nil {
		return fmt.Errorf("config file %s: want an object of flag names and values: %w", path, err)
	}
	var errs []error
	for _, k := range slices.Sorted(maps.Keys(m)) {
		fl := fs.Lookup(k)
		if fl == nil || k == "help" {
			errs = append(errs, fmt.Errorf("config file %s: unknown setting %q", path, k))
			continue
		}
		if fl.Changed {
			continue
		}
		v := m[k]
		var s string
		switch x := v.(type) {
		case string:
			s = x
		case []any:
			parts := make([]string, len(x))
			for i, e := range x {
				parts[i] = fmt.Sprint(e)
			}
			s = strings.Join(parts, ",")
		case nil:
			continue
		default:
			s = fmt.Sprint(x)
		}
		if err := fs.Set(k, s); err != nil {
			errs = append(errs, fmt.Errorf("config file %s: %s: %q: %v", path, k, s, err))
		}
	}
	return errors.Join(errs...)
}
